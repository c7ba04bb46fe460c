"""The command line's last word on errors: out of memory is one line with the fix, any other
unexpected error keeps its traceback (a bug to report, not a mistake to fix)."""

from __future__ import annotations

import pytest
import torch

import incept.cli
from incept.cli import eval as eval_command


@pytest.mark.parametrize(
    "error, reason",
    [
        (
            torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of "
                "79.19 GiB of which 1.23 GiB is free."
            ),
            "CUDA out of memory",
        ),
        (
            RuntimeError(
                "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
                "memory: you tried to allocate 107374182400 bytes. Error code 12"
            ),
            "DefaultCPUAllocator: can't allocate memory: you tried to allocate 107374182400 bytes",
        ),
        (MemoryError(), "MemoryError"),
    ],
)
def test_out_of_memory_is_one_line_with_the_fix(error, reason, monkeypatch, capsys):
    def run(args):
        raise error

    monkeypatch.setattr(eval_command, "run", run)
    with pytest.raises(SystemExit) as stop:
        incept.cli.main(["eval", "--data", "d", "--checkpoint", "c"])
    assert stop.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines == [
        f"incept eval: error: out of memory ({reason}): lower --batch-size or --image-size, or "
        "use --precision bf16 (training: --nproc-per-node spreads the batch over more GPUs)"
    ]


def test_other_runtime_errors_keep_their_traceback(monkeypatch):
    def run(args):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")

    monkeypatch.setattr(eval_command, "run", run)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        incept.cli.main(["eval", "--data", "d", "--checkpoint", "c"])
