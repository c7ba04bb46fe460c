"""What the loader reads: shard folders of three layouts, or a folder of class folders.

`open_source(path, subset)` recognises:
- our shards: `train-00000-of-00004` ... beside a `dataset.json` (written by build-data);
- the original's shards: the same names, labels 1..N with 0 the unused background class,
  class names from `labels.txt` or from the records' `image/class/text`;
- TensorFlow-Datasets shards: `NAME-train.tfrecord-00000-of-00004`, keys `image` and
  `label`, labels 0..N-1, class names from `label.labels.txt`;
- an image folder `PATH/<class>/<files>`, split into train and validation the way
  build-data splits it for the same seed and fraction.

Every source speaks 0-based labels; the background offset never reaches the user. Records
are read by index through per-shard indexes (see tfrecord.py), with files opened lazily in
each process, so a source can be handed to forked DataLoader workers.
"""

from __future__ import annotations

import json
import os
import random
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from incept.data.example import MalformedExampleError, decode_example
from incept.data.images import (
    MAX_FILE_BYTES,
    ImageError,
    read_file_bytes,
    why_not_an_image,
    why_not_readable,
)
from incept.data.tfrecord import ShardIndex, load_index, read_record, stored_index
from incept.errors import UserError

SUBSETS = ("train", "validation")
DATASET_FILE = "dataset.json"
_ORIGINAL_NAME = re.compile(r"^(?P<subset>[A-Za-z]+)-(?P<index>\d{5})-of-(?P<count>\d{5})$")
_TFDS_NAME = re.compile(
    r"^(?P<dataset>.+)-(?P<subset>[A-Za-z]+)\.tfrecord-(?P<index>\d{5})-of-(?P<count>\d{5})$"
)
_BOX_KEYS = (
    "image/object/bbox/ymin",
    "image/object/bbox/xmin",
    "image/object/bbox/ymax",
    "image/object/bbox/xmax",
)


@dataclass(frozen=True)
class Record:
    image: bytes  # encoded image (JPEG in shards; any format in an image folder)
    label: int  # 0-based
    boxes: np.ndarray  # float32 (K, 4): ymin, xmin, ymax, xmax as fractions; K may be 0
    name: str


class Source:
    """A list of labelled images with cheap random access."""

    classes: list[str]
    labels: np.ndarray  # int64, 0-based, one per record

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, i: int) -> Record:
        raise NotImplementedError

    def where(self, i: int) -> str:
        """Where record i lies, for messages: a file, or a shard and byte offset."""
        return f"record {i}"


def _no_boxes() -> np.ndarray:
    return np.zeros((0, 4), dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# Image folders


@dataclass
class FolderListing:
    """The files of an image folder: per class, relative paths in sorted order."""

    root: Path
    classes: list[str]
    files: list[list[str]]
    strays: list[tuple[str, str]] = field(default_factory=list)  # (path, why not an input)


# Real folders and files already listed: (st_dev, st_ino) -> (root, name as listed).
Seen = dict[tuple[int, int], tuple[Path, str]]


def _identity(status: os.stat_result) -> tuple[int, int]:
    return status.st_dev, status.st_ino


def _as_listed(seen_as: tuple[Path, str], root: Path) -> str:
    first_root, name = seen_as
    return name if first_root == root else str(first_root / name)


def _walk_files(
    folder: Path, root: Path, seen: Seen, strays: list, max_file_bytes: int
) -> list[str]:
    """The input files under `folder` (sorted, depth first) as paths relative to `root`;
    whatever is not an input goes to `strays` with the reason.

    Links are followed, but each real folder and file is listed once: a symbolic-link loop,
    a second link to a folder, or a hard link to a file already listed is a stray naming the
    first, so no file can land in two places (or two splits). Only regular files within
    `max_file_bytes` are inputs; FIFOs, devices and huge files are strays. Names are kept as
    the filesystem gives them (bytes that are not UTF-8 as surrogate escapes).
    """
    found = []
    seen.setdefault(_identity(folder.stat()), (root, os.path.relpath(folder, root)))
    stack = [str(folder)]
    while stack:
        directory = stack.pop()
        try:
            entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
        except OSError as error:
            strays.append(
                (os.path.relpath(directory, root), f"unreadable folder: {error.strerror}")
            )
            continue
        subfolders = []
        for entry in entries:
            name = os.path.relpath(entry.path, root)
            try:
                status = os.stat(entry.path)  # through links: what they lead to counts
            except OSError as error:
                broken = entry.is_symlink() and isinstance(error, FileNotFoundError)
                strays.append(
                    (name, "broken symbolic link" if broken else f"unreadable: {error.strerror}")
                )
                continue
            is_folder = stat.S_ISDIR(status.st_mode)
            kind = "folder" if is_folder else "file"
            if entry.name.startswith("."):  # .DS_Store, .git and the like are not inputs
                strays.append((name, f"hidden {kind}"))
                continue
            first = seen.get(_identity(status))
            if first is not None:
                again = f"reached again by a link: the same {kind} as {_as_listed(first, root)}"
                strays.append((name, again))
                continue
            seen[_identity(status)] = (root, name)
            if is_folder:
                subfolders.append(entry.path)
                continue
            reason = why_not_readable(status, max_file_bytes)
            if reason is None:
                found.append(name)
            else:
                strays.append((name, reason))
        stack += reversed(subfolders)  # depth first, in sorted order
    return found


def list_image_folder(
    root: str | os.PathLike,
    classes: list[str] | None = None,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    seen: Seen | None = None,
) -> FolderListing:
    """List `root/<class>/<files>` (subfolders of a class included).

    `classes` fixes the class order (a labels file); by default the sorted folder names.
    Everything that is not an input (hidden, outside the listed class folders, not a
    regular file, too large, reached twice through links) is returned among the strays with
    the reason. `seen` shares the record of listed folders and files between listings
    (a validation folder and the training one), so that none holds a file of the other.
    """
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"no such directory: {root}")
    seen = {} if seen is None else seen
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = folders
    missing = [c for c in classes if c not in folders]
    if missing:
        raise UserError(
            f"{root}: no folder for class {missing[0]!r} "
            f"({len(missing)} of {len(classes)} classes missing); fix the labels file or folders"
        )
    if not classes:
        raise UserError(f"{root}: no class folders found (expected {root}/<class>/<image files>)")
    seen.setdefault(_identity(root.stat()), (root, "."))
    for name in classes:  # before any walk: a link into another class folder is a stray
        first = seen.setdefault(_identity((root / name).stat()), (root, name))
        if first != (root, name):
            raise UserError(
                f"class folder {root / name} is the same folder as {first[0] / first[1]} "
                "(a link, or the same path given twice); remove one"
            )
    listing = FolderListing(root, list(classes), [])
    for name in classes:
        listing.files.append(_walk_files(root / name, root, seen, listing.strays, max_file_bytes))
    for entry in sorted(root.iterdir()):
        if entry.name in classes:
            continue
        if entry.name.startswith("."):
            listing.strays.append(
                (entry.name, "hidden " + ("folder" if entry.is_dir() else "file"))
            )
        elif entry.is_dir():
            reason = f"folder {entry.name!r} is not a class in the labels file"
            outside: list = []
            listing.strays += [
                (path, reason) for path in _walk_files(entry, root, seen, outside, max_file_bytes)
            ]
            listing.strays += outside
        else:
            listing.strays.append((entry.name, "not inside a class folder"))
    return listing


def validation_count(total: int, fraction: float) -> int:
    """How many of a class's `total` files go to validation (at least one of each kind when
    the class has two or more files and the fraction is above zero)."""
    if fraction <= 0 or total < 2:
        return 0
    return min(total - 1, max(1, round(total * fraction)))


def split_validation(
    listing: FolderListing, fraction: float, seed: int
) -> tuple[list[list[str]], list[list[str]]]:
    """Stratified split: per class, a seeded shuffle of the sorted files, the first part
    to validation. It depends only on (seed, class name, file names), not on class order."""
    if not 0 <= fraction < 1:
        raise UserError(f"validation fraction must be in [0, 1), got {fraction}")
    train, validation = [], []
    for name, files in zip(listing.classes, listing.files):
        shuffled = list(files)
        # As bytes: the same seed as the text for UTF-8 names, and any other name works too.
        random.Random(os.fsencode(f"{seed}/{name}")).shuffle(shuffled)
        count = validation_count(len(shuffled), fraction)
        validation.append(sorted(shuffled[:count]))
        train.append(sorted(shuffled[count:]))
    return train, validation


class ImageFolderSource(Source):
    """Files read as they are; any image format that `decode_rgb` takes.

    Files that are plainly not images (empty, or content of no image format) are left out
    and listed in `skipped` as (name, reason): the same files build-data would skip, so
    the records match those of shards built from the folder (truncated images aside,
    which only a full decode reveals).
    """

    def __init__(self, root: Path, classes: list[str], files: list[list[str]]):
        self.root = root
        self.classes = classes
        self.skipped: list[tuple[str, str]] = []
        self._names: list[str] = []
        labels = []
        for label, per_class in enumerate(files):
            for name in per_class:
                reason = why_not_an_image(root / name)
                if reason is None:
                    self._names.append(name)
                    labels.append(label)
                else:
                    self.skipped.append((name, reason))
        self.labels = np.asarray(labels, dtype=np.int64)

    def read(self, i: int) -> Record:
        name = self._names[i]
        try:
            image = read_file_bytes(self.root / name)
        except ImageError as error:  # replaced by a FIFO or a huge file since it was listed
            raise UserError(f"cannot read {self.root / name}: {error}") from None
        except OSError as error:
            raise UserError(f"cannot read {self.root / name}: {error.strerror}") from None
        return Record(image, int(self.labels[i]), _no_boxes(), name)

    def where(self, i: int) -> str:
        return str(self.root / self._names[i])


# ---------------------------------------------------------------------------------------------
# Shards


@dataclass(frozen=True)
class _Layout:
    """How records of one shard family are keyed."""

    name: str
    image_key: str
    label_key: str
    name_keys: tuple[str, ...]


_ORIGINAL = _Layout("original", "image/encoded", "image/class/label", ("image/filename",))
_TFDS = _Layout("tfds", "image", "label", ("image/filename", "file_name", "filename"))


class ShardSource(Source):
    def __init__(self, shards: list[Path], indexes: list[ShardIndex], layout: _Layout):
        self._fds: dict[int, int] = {}  # opened lazily, per process
        self._pid = os.getpid()
        self.shards = [str(p) for p in shards]
        self._layout = layout
        self._offsets = np.concatenate([ix.offsets for ix in indexes] or [np.zeros(0, np.int64)])
        self._lengths = np.concatenate([ix.lengths for ix in indexes] or [np.zeros(0, np.int64)])
        self._shard_of = np.repeat(np.arange(len(shards)), [len(ix) for ix in indexes])
        self._stored = np.concatenate([ix.labels for ix in indexes] or [np.zeros(0, np.int64)])
        self.set_convention([], 0)

    def set_convention(self, classes: list[str], label_offset: int) -> None:
        """Name the classes and say where stored labels start (1 with a background class)."""
        self.classes = list(classes)
        self.label_offset = label_offset
        self.labels = (self._stored - label_offset).astype(np.int64)

    def close(self) -> None:
        """Close the files this process opened (reads reopen them when needed)."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        self.close()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_fds"] = {}  # descriptors do not travel to other processes
        return state

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # a forked worker: open our own descriptors
            self._fds, self._pid = {}, os.getpid()
        if shard not in self._fds:
            try:
                self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
            except OSError as error:
                raise UserError(f"cannot open {self.shards[shard]}: {error.strerror}") from None
        return self._fds[shard]

    def read(self, i: int) -> Record:
        if not -len(self) <= i < len(self):
            raise IndexError(f"record {i} of a source with {len(self)} records")
        i = int(i) % len(self)
        shard, offset = int(self._shard_of[i]), int(self._offsets[i])
        path = self.shards[shard]
        data = read_record(self._fd(shard), offset, int(self._lengths[i]), path)
        try:
            features = decode_example(data)
        except MalformedExampleError as error:
            raise UserError(
                f"{path}: record at byte offset {offset} is not an Example: {error}"
            ) from None
        image = features.get(self._layout.image_key)
        if not image:
            raise UserError(
                f"{path}: record at byte offset {offset} has no {self._layout.image_key!r}"
            )
        return Record(
            image[0],
            int(self.labels[i]),
            _boxes(features, path, offset),
            _record_name(features, self._layout, path, offset),
        )

    def where(self, i: int) -> str:
        i = int(i) % len(self)
        return f"{self.shards[int(self._shard_of[i])]}: record at byte offset {self._offsets[i]}"


def _boxes(features: dict, path: str, offset: int) -> np.ndarray:
    columns = [features.get(key, []) for key in _BOX_KEYS]
    if not any(columns):
        return _no_boxes()
    if len({len(c) for c in columns}) != 1:
        raise UserError(f"{path}: record at byte offset {offset} has bbox lists of unequal length")
    return np.asarray(columns, dtype=np.float32).T.copy()


def _record_name(features: dict, layout: _Layout, path: str, offset: int) -> str:
    for key in layout.name_keys:
        if features.get(key):
            return features[key][0].decode(errors="replace")
    return f"{Path(path).name}@{offset}"


def _label_reader(layout: _Layout):
    def label_of(data: bytes) -> int:
        try:
            values = decode_example(data).get(layout.label_key)
        except MalformedExampleError as error:
            raise UserError(f"a record is not a tf.train.Example ({error})") from None
        if not values:
            raise UserError(f"a record has no integer {layout.label_key!r} feature")
        return int(values[0])

    return label_of


def _find_shards(folder: Path) -> dict[tuple[str, str], list[tuple[Path, int, int]]]:
    """{(layout name, subset): [(path, index, count)]} for every shard-named file."""
    found: dict[tuple[str, str], list[tuple[Path, int, int]]] = {}
    for entry in sorted(folder.iterdir()):
        match = _ORIGINAL_NAME.match(entry.name) or _TFDS_NAME.match(entry.name)
        if match and entry.is_file():
            layout = "tfds" if "dataset" in match.groupdict() else "original"
            found.setdefault((layout, match["subset"]), []).append(
                (entry, int(match["index"]), int(match["count"]))
            )
    return found


def _complete_shard_list(folder: Path, subset: str, shards: list[tuple[Path, int, int]]):
    counts = {count for _, _, count in shards}
    if len(counts) != 1:
        raise UserError(f"{folder}: {subset} shards of different sets ({sorted(counts)} shards)")
    count = counts.pop()
    if len(shards) != count:
        raise UserError(
            f"{folder}: incomplete {subset} set, {len(shards)} of {count} shards present; "
            "rebuild or copy the missing shards"
        )
    return [path for path, _, _ in sorted(shards, key=lambda s: s[1])]


def read_text_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The stripped, non-empty lines of a UTF-8 text file (a leading BOM, as some Windows
    editors write, dropped), or one clear error naming the file and the first bad byte."""
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {what} {path}: {error.strerror}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        raise UserError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}); "
            "save it as UTF-8"
        ) from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_names(path: Path) -> list[str]:
    """Class names, one a line; "3:roses" (slim's form) is read as "roses"."""
    names = read_text_lines(path, "class names file")
    return [n.split(":", 1)[1] if re.match(r"^\d+:", n) else n for n in names]


def _read_dataset_json(folder: Path) -> dict:
    try:
        info = json.loads((folder / DATASET_FILE).read_text(encoding="utf-8"))
        return {"classes": list(info["classes"]), "label_offset": int(info["label_offset"])}
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise UserError(
            f"{folder / DATASET_FILE}: unreadable ({error}); rebuild the shards"
        ) from None


def _names_from_records(sources: list[ShardSource], count: int) -> list[str]:
    """Class names from one record of each label's `image/class/text` (the original's)."""
    names: list[str | None] = [None] * count
    for source in sources:
        for label in np.unique(source.labels):
            if not 0 <= label < count or names[label] is not None:
                continue
            i = int(np.argmax(source.labels == label))
            shard, offset = int(source._shard_of[i]), int(source._offsets[i])
            data = read_record(
                source._fd(shard), offset, int(source._lengths[i]), source.shards[shard]
            )
            text = decode_example(data).get("image/class/text")
            if text:
                names[label] = text[0].decode(errors="replace")
    return [name if name is not None else f"class_{i}" for i, name in enumerate(names)]


def _label_convention(folder: Path, labels: np.ndarray, named: int | None) -> int:
    """The original's offset (1, background 0) or none (0), from the labels and class count."""
    if labels.size == 0:
        return 1
    low, high = int(labels.min()), int(labels.max())
    if named is None:
        return 0 if low == 0 else 1
    if low >= 1 and high <= named:
        return 1
    if low >= 0 and high <= named - 1:
        return 0
    if low == 0 and high == named:
        raise UserError(
            f"{folder}: mixed label conventions, labels run 0..{high} but labels.txt names "
            f"{named} classes (1..{named} with background 0, or 0..{named - 1}); fix labels.txt"
        )
    raise UserError(f"{folder}: labels run {low}..{high}, outside the {named} classes named")


def _indexed(folder: Path, found: dict, layout: _Layout, subset: str) -> ShardSource:
    shards = _complete_shard_list(folder, subset, found[(layout.name, subset)])
    indexes = [stored_index(shard) for shard in shards]
    missing = [i for i, index in enumerate(indexes) if index is None]
    if missing:
        # Foreign or changed shards are read once, whole; on ImageNet that takes minutes.
        print(f"indexing {len(missing)} {subset} shards in {folder} (once)", file=sys.stderr)
        label_of = _label_reader(layout)
        for i in missing:
            indexes[i] = load_index(shards[i], label_of)
    return ShardSource(shards, indexes, layout)


def _open_shards(folder: Path, subset: str) -> ShardSource | None:
    found = _find_shards(folder)
    if not found:
        return None
    layouts = {layout for layout, s in found if s == subset}
    if len(layouts) > 1:
        raise UserError(
            f"{folder}: mixed shard layouts for {subset} (original train-* and TFDS "
            "NAME-train.tfrecord-*); keep one kind per folder"
        )
    if not layouts:
        present = sorted({s for _, s in found})
        raise UserError(f"{folder}: no {subset} shards (found: {', '.join(present)})")
    layout = _ORIGINAL if layouts.pop() == "original" else _TFDS
    source = _indexed(folder, found, layout, subset)

    if layout is _ORIGINAL and (folder / DATASET_FILE).exists():
        info = _read_dataset_json(folder)
        source.set_convention(info["classes"], info["label_offset"])
    else:
        # Without our dataset.json, the class count and the label convention are read from
        # every subset, so that train and validation agree on them.
        siblings = [source] + [
            _indexed(folder, found, layout, other)
            for kind, other in found
            if kind == layout.name and other != subset
        ]
        stored = np.concatenate([sibling.labels for sibling in siblings])
        names_file = folder / ("label.labels.txt" if layout is _TFDS else "labels.txt")
        classes = _read_names(names_file) if names_file.exists() else None
        offset = (
            0
            if layout is _TFDS
            else _label_convention(folder, stored, len(classes) if classes else None)
        )
        if classes is None:
            count = int(stored.max()) + 1 - offset if stored.size else 0
            if layout is _ORIGINAL:
                for sibling in siblings:
                    sibling.set_convention([], offset)
                classes = _names_from_records(siblings, count)
            else:
                classes = [f"class_{i}" for i in range(count)]
        source.set_convention(classes, offset)
    bad = (source.labels < 0) | (source.labels >= len(source.classes))
    if bad.any():
        shown = int(source.labels[bad][0]) + source.label_offset
        raise UserError(
            f"{folder}: label {shown} outside the {len(source.classes)} classes "
            f"(labels {source.label_offset}..{len(source.classes) - 1 + source.label_offset}); "
            "fix the labels file"
        )
    return source


def open_source(
    path: str | os.PathLike, subset: str, *, validation_fraction: float = 0.1, seed: int = 0
) -> Source:
    """The records of `subset` ("train" or "validation") in a shard folder or image folder.

    For an image folder, `validation_fraction` and `seed` choose the same stratified split
    that `incept build-data` makes with the same values.
    """
    folder = Path(path)
    if not folder.exists():
        raise UserError(f"no such directory: {folder}")
    if not folder.is_dir():
        raise UserError(f"{folder} is not a directory (give a shard folder or an image folder)")
    if subset not in SUBSETS:
        raise UserError(f"unknown subset {subset!r}; use one of: {', '.join(SUBSETS)}")
    shards = _open_shards(folder, subset)
    if shards is not None:
        return shards
    if not any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir()):
        raise UserError(
            f"{folder}: no shards (train-*, validation-*, NAME-train.tfrecord-*) and no class "
            "folders (<class>/<image files>) found"
        )
    listing = list_image_folder(folder)
    train, validation = split_validation(listing, validation_fraction, seed)
    files = train if subset == "train" else validation
    return ImageFolderSource(folder, listing.classes, files)
