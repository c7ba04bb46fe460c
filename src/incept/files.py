"""Files that appear under their name complete or not at all.

Every file incept writes for later (shards and their indexes, checkpoints, ONNX graphs,
curves, metrics, the demo's results) goes through `AtomicFile` or `write_atomically`: the
bytes go into a hidden temporary file in the destination's folder (so the final rename never
crosses a file system), the file is fsynced, renamed over the destination, and the folder is
fsynced so that the rename itself survives a power cut. An error or an interruption removes
the temporary file. New files get the permissions the umask gives (0644 under umask 022),
as any other program's would; `tempfile.mkstemp` would make them 0600.

Temporary names start with "." and end in ".partial", so no glob of final names matches
them and a later run can recognise a killed one's leftovers.

Imports nothing of incept and no third-party package: every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path

TEMPORARY_SUFFIX = ".partial"


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a file that another library wrote (safetensors, torch.save) to the disk."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_folder(folder: str | os.PathLike) -> None:
    """Make the names created, renamed or removed in `folder` durable (POSIX records a
    rename in the folder, which has to be synced as a file is)."""
    if os.name == "nt":  # a folder cannot be opened as a file there; NTFS journals renames
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    except OSError as error:
        # Some file systems (certain network and FUSE ones) cannot sync a folder at all.
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(descriptor)


class AtomicFile:
    """A binary file written under a temporary name; `commit()` puts it in place.

    `AtomicFile(path, temporary=NAME)` fixes the temporary name (in the same folder), for a
    writer whose leftovers a later run looks for by name; by default the name is unique, so
    that two processes writing the same file never share a temporary file.

    As a context manager it commits when the block ends normally and discards the temporary
    file when the block raises.
    """

    def __init__(self, path: str | os.PathLike, *, temporary: str | None = None):
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_BINARY", 0)
        if temporary is None:
            unique = f"{os.getpid()}.{secrets.token_hex(4)}"
            temporary = f".{self.path.name}.{unique}{TEMPORARY_SUFFIX}"
            flags |= os.O_EXCL
        else:
            flags |= os.O_TRUNC  # a fixed name may hold a killed run's leftover
        self.temporary = self.path.with_name(temporary)
        # 0o666 lets the umask decide the permissions, as for any new file.
        descriptor = os.open(self.temporary, flags, 0o666)
        self.file = os.fdopen(descriptor, "wb")
        self.committed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        return self.file.write(data)

    def tell(self) -> int:
        return self.file.tell()

    def commit(self) -> None:
        """Flush the data to the disk, rename it into place, and make the rename durable."""
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            os.replace(self.temporary, self.path)
        except BaseException:
            self.discard()
            raise
        self.committed = True
        fsync_folder(self.path.parent)

    def discard(self) -> None:
        """Close and remove the temporary file; the destination is left as it was."""
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.temporary)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if self.committed:
            return
        if exc_type is None:
            self.commit()
        else:
            self.discard()


def write_atomically(path: str | os.PathLike, data: bytes | str) -> None:
    """Write a whole file atomically; text is written as UTF-8."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    with AtomicFile(path) as file:
        file.write(data)
