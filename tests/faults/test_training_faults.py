"""Faults during `incept train`: SIGKILL at chosen moments, `incept eval` while a checkpoint is
being written, a full disk during a checkpoint write, a loss that turns NaN."""

from __future__ import annotations

import contextlib
import json
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import incept
from incept.evaluate import evaluate_source
from incept.weights.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint
from tests.faults.conftest import assert_one_line_error, run_incept, train_args


def step_dir(train_dir: Path, step: int) -> Path:
    return train_dir / "checkpoints" / f"step-{step:08d}"


def assert_same_tensors(expected: dict, actual: dict, what: str) -> None:
    assert set(expected) == set(actual), what
    for name, tensor in expected.items():
        assert torch.equal(tensor, actual[name]), (what, name)


def assert_same_state(expected, actual, where: str = "state") -> None:
    """Nested containers of tensors and plain values, equal bit for bit."""
    if isinstance(expected, torch.Tensor):
        assert torch.equal(expected, actual), where
    elif isinstance(expected, dict):
        assert set(expected) == set(actual), where
        for key in expected:
            assert_same_state(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, (list, tuple)):
        assert len(expected) == len(actual), where
        for index, (left, right) in enumerate(zip(expected, actual)):
            assert_same_state(left, right, f"{where}[{index}]")
    else:
        assert expected == actual, where


def assert_same_checkpoint(expected_dir: Path, actual_dir: Path) -> None:
    for name in ("model.safetensors", "ema.safetensors"):
        assert_same_tensors(load_file(expected_dir / name), load_file(actual_dir / name), name)
    expected, actual = read_checkpoint(expected_dir), read_checkpoint(actual_dir)
    assert_same_state(expected.state, actual.state)


def losses(train_dir: Path) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    return [(record["step"], record["loss"]) for record in records if "loss" in record]


def test_sigkill_at_three_moments_then_the_same_command_ends_bit_identical(
    shards, baseline, tmp_path, frozen
):
    """Killed before the first checkpoint, in the middle of writing one (while frozen there,
    `incept eval` reads the previous one), and between two; each time the same command goes
    on, and the end is the uninterrupted run's, bit for bit."""
    train_dir = tmp_path / "run"
    args = train_args(shards[0], train_dir)
    checkpoints = train_dir / "checkpoints"

    # 1. Before the first checkpoint: steps 1 and 2 done, step 2's directory not yet made.
    run = frozen(args, event="os.mkdir", pattern=f"{checkpoints}/.partial-step-00000002-*")
    run.wait_until_frozen()
    run.kill()
    assert list_checkpoints(train_dir) == []

    # 2. In the middle of writing step 4: the weights are in its temporary directory, its
    #    meta.json is being opened. Meanwhile eval on the train dir takes step 2.
    run = frozen(args, event="open", pattern=f"{checkpoints}/.partial-step-00000004-*/meta.json")
    run.wait_until_stopped()
    (partial,) = checkpoints.glob(".partial-step-00000004-*")
    assert (partial / "model.safetensors").is_file()
    assert latest_checkpoint(train_dir) == step_dir(train_dir, 2)
    during = run_incept(
        "eval", "--data", shards[0], "--checkpoint", train_dir, "--workers", "0", "--json"
    )
    run.kill()
    assert during.returncode == 0, during.stderr
    expected = evaluate_source(str(shards[0]), str(step_dir(baseline, 2)), workers=0)
    # Step 2's figures, not step 4's (training moves the loss by far more than 1e-5); the loss
    # is summed in another process, whose rounding differed by 1.4e-6 relative in one CI run.
    assert json.loads(during.stdout.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-5)

    # 3. Between checkpoints: step 4 saved, steps 5 and 6 done, step 6's save not begun.
    run = frozen(args, event="os.mkdir", pattern=f"{checkpoints}/.partial-step-00000006-*")
    run.wait_until_frozen()
    run.kill()
    assert latest_checkpoint(train_dir) == step_dir(train_dir, 4)
    assert not list(checkpoints.glob(".partial-step-00000004-*"))  # cleaned at the next save

    # 4. The same command, to the end.
    done = run_incept(*args)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout and "at step 4" in done.stdout
    assert [path.name for path in list_checkpoints(train_dir)] == [
        path.name for path in list_checkpoints(baseline)
    ]
    for step in (4, 6):
        assert_same_checkpoint(step_dir(baseline, step), step_dir(train_dir, step))
    assert losses(train_dir) == losses(baseline)
    assert not list(checkpoints.glob(".partial-*"))


@contextlib.contextmanager
def small_disk(folder: Path, size: int):
    """`folder` on a file system of `size` bytes (a tmpfs, when this process may mount one);
    yields the preexec_fn the writing process needs: none for the tmpfs, else a per-file size
    limit (RLIMIT_FSIZE) of `size // 4`, which fails writes with EFBIG instead of ENOSPC."""
    folder.mkdir(parents=True)
    try:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
        ).returncode == 0  # fmt: skip
    except FileNotFoundError:  # no mount command here
        mounted = False
    if mounted:
        try:
            yield None
        finally:
            subprocess.run(["umount", "-l", str(folder)], check=True)
    else:
        limit = size // 4
        yield lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(shards, baseline, tmp_path):
    # The run resumes from the baseline's step 2 on a disk 1.5 times its size: step 4 cannot fit.
    train_dir = tmp_path / "small_disk"
    args = train_args(shards[0], train_dir)
    one_checkpoint = sum(path.stat().st_size for path in step_dir(baseline, 2).iterdir())
    with small_disk(train_dir, one_checkpoint * 3 // 2 + 2**18) as limit:
        shutil.copytree(step_dir(baseline, 2), step_dir(train_dir, 2))
        done = run_incept(*args, preexec_fn=limit)
        assert done.returncode != 0
        assert "step 4," in done.stdout  # it failed writing step 4, not before
        assert [path.name for path in list_checkpoints(train_dir)] == ["step-00000002"]
        assert_same_checkpoint(step_dir(baseline, 2), step_dir(train_dir, 2))
        model = incept.nets.load(train_dir)  # complete and loadable
        assert model.num_classes == 3
        left = {path.name for path in (train_dir / "checkpoints").iterdir()} - {"step-00000002"}
        assert all(name.startswith(".partial-") for name in left), left  # no final name
    assert_one_line_error(done, "train", "step-00000002")


def test_a_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(shards, tmp_path):
    # An honest NaN: a learning rate of 1e30 makes step 1's update overflow the activations
    # of step 2. Step 1 is saved first (its loss was finite).
    train_dir = tmp_path / "nan"
    args = train_args(shards[0], train_dir, "--learning-rate", "1e30", "--save-every", "1")
    done = run_incept(*args)
    assert_one_line_error(done, "train", "loss is nan at step 2", str(step_dir(train_dir, 1)))
    assert len(done.stderr.strip().splitlines()) == 1
    assert [path.name for path in list_checkpoints(train_dir)] == ["step-00000001"]
    assert not list((train_dir / "checkpoints").glob(".partial-*"))
    checkpoint = read_checkpoint(train_dir)
    assert checkpoint.state["step"] == 1
    assert all(tensor.isfinite().all() for tensor in checkpoint.model.values())
    incept.nets.load(train_dir)
