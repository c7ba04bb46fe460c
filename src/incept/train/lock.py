"""One run at a time in a train dir: an advisory lock on TRAIN_DIR/.lock.

Two runs writing the same checkpoints would interleave their steps silently. The first
replica of a run (rank 0: under torchrun the others share its train dir, and the launcher
`--nproc-per-node` process takes none, or its own replica would find it taken) holds
`fcntl.flock` on the file for the whole run. The kernel drops a flock with the last
descriptor of the process, so a run killed by SIGKILL leaves no stale lock behind; the file
itself stays and records the holder's process id, which the refused run names.
"""

from __future__ import annotations

import os
from pathlib import Path

from incept.errors import UserError

try:
    import fcntl
except ModuleNotFoundError:  # Windows: no flock; runs there are not guarded
    fcntl = None

LOCK_FILE = ".lock"


class TrainDirLock:
    """Held from construction until `release()` (or the process's end)."""

    def __init__(self, train_dir: str | os.PathLike):
        self.path = Path(train_dir) / LOCK_FILE
        self.descriptor = None
        if fcntl is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as error:
            raise UserError(f"cannot use {self.path.parent} as a train dir: {error}") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(descriptor, 32).decode("ascii", "replace").strip() or "unknown"
            os.close(descriptor)
            raise UserError(
                f"{self.path.parent} is in use by another `incept train` (process {holder}): "
                "wait for it to end or stop it, or use another --train-dir"
            ) from None
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"{os.getpid()}\n".encode())
        self.descriptor = descriptor

    def release(self) -> None:
        if self.descriptor is not None:
            os.close(self.descriptor)  # closing the only descriptor drops the flock
            self.descriptor = None
