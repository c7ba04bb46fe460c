"""TFRecord files, byte-compatible with TensorFlow, and per-shard indexes for random access.

A record on disk is: uint64 length (little-endian), masked CRC-32C of those 8 bytes, the
data, masked CRC-32C of the data. Both checksums are verified on every read.

An index lists (offset, length, label) for every record of a shard, so a reader can fetch
record i without reading the records before it. Indexes never sit beside the shards under a
name that the original's `train-*` / `validation-*` globs would pick up: they live in the
shard folder's `.incept-index/` subfolder or, when that folder is read-only, under the user's
cache folder. An index remembers the size and modification time of its shard and is rebuilt
when either changes.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from incept.data.crc32c import masked_crc32c
from incept.errors import UserError
from incept.files import TEMPORARY_SUFFIX, AtomicFile, write_atomically

_HEADER = struct.Struct("<QI")  # length, masked CRC of the length
_FOOTER = struct.Struct("<I")  # masked CRC of the data
INDEX_FOLDER = ".incept-index"
_log = logging.getLogger(__name__)


class CorruptRecordError(UserError):
    """A record whose checksum does not match, or a file that ends inside a record."""

    def __init__(self, path: str | os.PathLike, offset: int, problem: str):
        self.path = str(path)
        self.offset = offset
        self.problem = problem
        super().__init__(
            f"{self.path}: corrupt record at byte offset {offset} ({problem}); "
            "restore or rebuild the shard"
        )


# ---------------------------------------------------------------------------------------------
# Writing


def frame(data: bytes) -> bytes:
    """One record as it sits in the file."""
    header = struct.pack("<Q", len(data))
    return (
        header + struct.pack("<I", masked_crc32c(header)) + data + _FOOTER.pack(masked_crc32c(data))
    )


def temporary_name(path: str | os.PathLike) -> Path:
    """Where a shard is written before it is complete: same folder, hidden, so that no glob
    of final names (`train-*`) can match it, and fixed, so that a rerun finds and removes what
    a killed build left."""
    path = Path(path)
    return path.with_name(f".{path.name}{TEMPORARY_SUFFIX}")


class RecordWriter:
    """Streams records into a temporary file; `commit()` fsyncs and renames it into place.

    Used as a context manager, an exception (or a missing commit) removes the temporary file,
    so a partial shard never carries its final name.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.temporary = temporary_name(self.path)
        self._file = AtomicFile(self.path, temporary=self.temporary.name)
        self.positions: list[tuple[int, int]] = []  # (offset, length) of each record

    def write(self, data: bytes) -> None:
        self.positions.append((self._file.tell(), len(data)))
        self._file.write(frame(data))

    def commit(self) -> os.stat_result:
        self._file.commit()
        return os.stat(self.path)

    def discard(self) -> None:
        self._file.discard()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        if not self._file.committed:
            self.discard()


def write_records(path: str | os.PathLike, records: Iterable[bytes]) -> list[tuple[int, int]]:
    """Write a TFRecord file atomically; returns (offset, length) of each record."""
    with RecordWriter(path) as writer:
        for data in records:
            writer.write(data)
        writer.commit()
    return writer.positions


# ---------------------------------------------------------------------------------------------
# Reading


def _check_header(path, offset: int, header: bytes) -> int:
    if len(header) < _HEADER.size:
        raise CorruptRecordError(path, offset, "file ends inside a record header")
    length, length_crc = _HEADER.unpack(header)
    if masked_crc32c(header[:8]) != length_crc:
        raise CorruptRecordError(path, offset, "length checksum mismatch")
    return length


def _check_data(path, offset: int, data: bytes, footer: bytes, length: int) -> None:
    if len(data) < length or len(footer) < _FOOTER.size:
        raise CorruptRecordError(path, offset, "file ends inside a record")
    if masked_crc32c(data) != _FOOTER.unpack(footer)[0]:
        raise CorruptRecordError(path, offset, "data checksum mismatch")


def _scan(
    path: str | os.PathLike, *, verify_data: bool, skipped: list[CorruptRecordError] | None
) -> Iterator[tuple[int, bytes, bytes]]:
    """Yield (offset, data, footer) for each record, the footer holding the data checksum.

    With `skipped`, a record whose data checksum fails is appended there and passed over;
    a broken header ends the file (the records after it cannot be located)."""
    with open(path, "rb") as file:
        offset = 0
        while True:
            header = file.read(_HEADER.size)
            if not header:
                return
            try:
                length = _check_header(path, offset, header)
                data = file.read(length)
                footer = file.read(_FOOTER.size)
                if verify_data:
                    _check_data(path, offset, data, footer, length)
                elif len(data) < length or len(footer) < _FOOTER.size:
                    raise CorruptRecordError(path, offset, "file ends inside a record")
            except CorruptRecordError as error:
                if skipped is None:
                    raise
                skipped.append(error)
                _log.warning("skipping: %s", error)
                if error.problem != "data checksum mismatch":
                    return
            else:
                yield offset, data, footer
            offset += _HEADER.size + length + _FOOTER.size


def iter_records(
    path: str | os.PathLike,
    *,
    skip_corrupt: bool = False,
    skipped: list[CorruptRecordError] | None = None,
) -> Iterator[bytes]:
    """Yield the data of each record in file order, checksums verified.

    A bad record raises `CorruptRecordError` naming the file and byte offset. With
    `skip_corrupt=True` bad records are passed over and appended to `skipped` (give a list
    to count and report them); a broken length field ends the file, since the records after
    it cannot be located.
    """
    if skip_corrupt and skipped is None:
        skipped = []
    for _, data, _ in _scan(path, verify_data=True, skipped=skipped if skip_corrupt else None):
        yield data


def read_record(fd: int, offset: int, length: int, path: str | os.PathLike) -> bytes:
    """The data of the record at `offset` (whose data is `length` bytes), checksums verified.

    Uses `os.pread`, so file descriptors shared with other threads keep no seek position.
    """
    size = _HEADER.size + length + _FOOTER.size
    raw = os.pread(fd, size, offset)
    stored_length = _check_header(path, offset, raw[: _HEADER.size])
    if stored_length != length:
        raise CorruptRecordError(path, offset, "length differs from the index; delete the index")
    start = _HEADER.size
    _check_data(path, offset, raw[start : start + length], raw[start + length :], length)
    return raw[start : start + length]


# ---------------------------------------------------------------------------------------------
# Indexes


@dataclass(frozen=True)
class ShardIndex:
    """Where each record of one shard starts, how long its data is, and its stored label."""

    offsets: np.ndarray  # int64, byte offset of each record's header
    lengths: np.ndarray  # int64, length of each record's data
    labels: np.ndarray  # int64, the label as stored in the record (no offset applied)

    def __len__(self) -> int:
        return len(self.offsets)

    @classmethod
    def from_columns(cls, positions: list[tuple[int, int]], labels: list[int]) -> ShardIndex:
        table = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
        return cls(table[:, 0].copy(), table[:, 1].copy(), np.asarray(labels, dtype=np.int64))


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "incept" / "index"


def index_locations(shard: str | os.PathLike) -> list[Path]:
    """Where the index of `shard` may be: beside it in a hidden subfolder, else in the cache."""
    shard = Path(shard).resolve()
    folder_key = hashlib.sha256(str(shard.parent).encode()).hexdigest()[:16]
    name = f"{shard.name}.index.npz"
    return [shard.parent / INDEX_FOLDER / name, _cache_root() / folder_key / name]


def _stamp(shard: Path) -> np.ndarray:
    stat = os.stat(shard)
    return np.asarray([stat.st_size, stat.st_mtime_ns], dtype=np.int64)


def save_index(shard: str | os.PathLike, index: ShardIndex) -> Path | None:
    """Store the index of `shard` in the first writable location; None when none is."""
    buffer = _npz_bytes(index, _stamp(Path(shard)))
    for location in index_locations(shard):
        try:
            location.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(location, buffer)
            return location
        except OSError:
            continue
    return None


def _npz_bytes(index: ShardIndex, stamp: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, offsets=index.offsets, lengths=index.lengths, labels=index.labels, stamp=stamp)
    return buffer.getvalue()


def _load_fresh(location: Path, stamp: np.ndarray) -> ShardIndex | None:
    try:
        with np.load(location) as stored:
            if not np.array_equal(stored["stamp"], stamp):
                return None
            return ShardIndex(stored["offsets"], stored["lengths"], stored["labels"])
    except (OSError, KeyError, ValueError):
        return None  # missing or unreadable: rebuild


def build_index(shard: str | os.PathLike, label_of: Callable[[bytes], int]) -> ShardIndex:
    """Read a whole shard once and list its records with their labels.

    Data checksums are left to the reads, except for a record whose label cannot be read:
    then the checksum tells a damaged record from a foreign one.
    """
    positions, labels = [], []
    for offset, data, footer in _scan(shard, verify_data=False, skipped=None):
        positions.append((offset, len(data)))
        try:
            labels.append(label_of(data))
        except UserError as error:
            _check_data(shard, offset, data, footer, len(data))
            raise UserError(f"{shard}: record at byte offset {offset}: {error}") from None
    return ShardIndex.from_columns(positions, labels)


def stored_index(shard: str | os.PathLike) -> ShardIndex | None:
    """The stored index of `shard` if there is one and the shard is unchanged since."""
    stamp = _stamp(Path(shard))
    for location in index_locations(shard):
        index = _load_fresh(location, stamp)
        if index is not None:
            return index
    return None


def load_index(shard: str | os.PathLike, label_of: Callable[[bytes], int]) -> ShardIndex:
    """The index of `shard`: a stored one if its shard is unchanged, else built and stored."""
    index = stored_index(shard)
    if index is None:
        index = build_index(shard, label_of)
        save_index(shard, index)
    return index
