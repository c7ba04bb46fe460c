"""Issue 16, item 10: one `incept train` at a time in a train dir; the second says which process
holds it, and a run killed by SIGKILL leaves the dir free."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from incept.train.lock import LOCK_FILE, TrainDirLock
from tests.user_errors import one_error_line


def test_a_held_lock_refuses_a_second_holder_until_released(tmp_path):
    first = TrainDirLock(tmp_path / "run")
    assert (tmp_path / "run" / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    with pytest.raises(
        Exception, match=rf"in use by another `incept train` \(process {os.getpid()}\)"
    ):
        TrainDirLock(tmp_path / "run")
    first.release()
    TrainDirLock(tmp_path / "run").release()


def test_a_second_train_names_the_first_and_sigkill_frees_the_dir(
    image_folder, tmp_path, tiny_flags, incept_env, capsys
):
    train_dir = tmp_path / "run"
    argv = ["train", "--data", str(image_folder), "--train-dir", str(train_dir), *tiny_flags]
    first = subprocess.Popen(
        [sys.executable, "-m", "incept", *argv, "--max-steps", "100000"],
        env=incept_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lock = train_dir / LOCK_FILE
        deadline = time.monotonic() + 120
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        line = one_error_line(capsys, [*argv, "--max-steps", "1"])
        assert line == (
            f"incept train: error: {train_dir} is in use by another `incept train` (process "
            f"{first.pid}): wait for it to end or stop it, or use another --train-dir"
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    TrainDirLock(train_dir).release()  # the kernel dropped the dead run's lock
