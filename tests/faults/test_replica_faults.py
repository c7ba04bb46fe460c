"""A replica of `incept train --nproc-per-node 2 --max-restarts 1` (torchrun, gloo on CPU) killed
mid-run: torchrun restarts the group, it resumes from the last checkpoint and ends as an
uninterrupted two-replica run, bit for bit."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.faults.conftest import environment, incept_command, run_incept, train_args

REPLICA_FLAGS = ["--batch-size", "8", "--max-steps", "6", "--save-every", "1",
                 "--keep-checkpoints", "6", "--nproc-per-node", "2"]  # fmt: skip


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, waiting = [], [pid]
    while waiting:
        for child in children.get(waiting.pop(), []):
            found.append(child)
            waiting.append(child)
    return found


def replica_of_rank(pid: int, rank: int) -> int | None:
    wanted = f"RANK={rank}".encode()
    for candidate in descendants(pid):
        try:
            variables = Path(f"/proc/{candidate}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted in variables and b"TORCHELASTIC_RUN_ID" in b"\0".join(variables):
            return candidate
    return None


def final_weights(train_dir: Path) -> dict:
    return load_file(train_dir / "checkpoints" / "step-00000006" / "model.safetensors")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the replica through /proc")
def test_a_killed_replica_is_restarted_and_the_job_ends_as_if_uninterrupted(shards, tmp_path):
    reference = tmp_path / "reference"
    done = run_incept(*train_args(shards[0], reference, *REPLICA_FLAGS))
    assert done.returncode == 0, done.stderr[-3000:]

    train_dir = tmp_path / "killed"
    log = tmp_path / "killed.log"
    command = incept_command(
        *train_args(shards[0], train_dir, *REPLICA_FLAGS), "--max-restarts", "1"
    )
    with open(log, "w") as output:
        launcher = subprocess.Popen(
            command, env=environment(), stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            # Mid-run: once step 2 is saved, the second replica dies.
            deadline = time.monotonic() + 180
            while not (train_dir / "checkpoints" / "step-00000002").is_dir():
                assert launcher.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.02)
            victim = replica_of_rank(launcher.pid, 1)
            assert victim is not None, log.read_text()[-3000:]
            os.kill(victim, signal.SIGKILL)
            assert launcher.wait(timeout=240) == 0, log.read_text()[-3000:]
        finally:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
    text = log.read_text()
    assert "resuming from" in text, text[-3000:]
    expected, actual = final_weights(reference), final_weights(train_dir)
    assert set(expected) == set(actual)
    assert all(expected[name].equal(actual[name]) for name in expected)
