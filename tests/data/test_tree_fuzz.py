"""The file-tree fuzzer of issue 16: Hypothesis draws image folders with symbolic-link loops,
links to other folders and files, hard links, FIFOs, /dev/zero, broken links, odd and
non-UTF-8 names, empty, truncated, junk and oversize files, hidden entries, strays beside the
class folders and sometimes a labels file naming only some classes; `incept build-data` runs
on each (in this process, through the command's entry point, with a small --max-file-mb).

What must hold whatever the tree: exit status 0, no traceback, no hang; every entry of the
tree is in dataset.json exactly once, as a record or a skip with its reason (or lies under a
folder listed as skipped); no real file is recorded twice, so none is in both splits; every
good image is recorded and nothing else is; the shards hold exactly the listed records.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from incept.cli import main
from incept.data.example import decode_example
from incept.data.sources import open_source
from incept.data.tfrecord import iter_records
from tests.data.test_hostile_trees import deadline

MAX_FILE_MB = "0.01"  # 10,485 bytes: the oversize files stay small and fast to write
GOOD = ("jpeg", "png")
KINDS = GOOD + ("truncated", "empty", "junk", "oversize", "sparse", "fifo", "dev_zero", "broken")
LINKS = ("self", "parent", "root", "other_class", "earlier_file", "hard_link")
# Name pieces: ASCII, UTF-8 letters, bytes that are not UTF-8, and characters shells mangle.
PIECES = [b"a", b"Z", b"7", b" ", b"-", b".", b"\xc3\xa9", b"\xe2\x98\x83", b"\xff", b"\xe9"]
PIECES += [b"\n", b"'", b'"', b"\\", b"%", b"*", b":", b"\t"]


def _image(kind: str, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    pixels = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG" if kind == "png" else "JPEG")
    return buffer.getvalue()


names = (
    st.lists(st.sampled_from(PIECES), min_size=1, max_size=6)
    .map(b"".join)
    .filter(lambda name: name not in (b".", b".."))
)
files = st.tuples(st.just("file"), st.sampled_from(KINDS), names)
links = st.tuples(st.just("link"), st.sampled_from(LINKS), names)


def folders(depth: int):
    entries = st.one_of(files, links) if depth == 0 else st.one_of(files, links, folders(depth - 1))
    return st.tuples(st.just("dir"), st.lists(entries, max_size=5), names)


trees = st.fixed_dictionaries(
    {
        "classes": st.lists(folders(1), min_size=1, max_size=3),
        "strays": st.lists(st.one_of(files, folders(0)), max_size=2),
        "labels_file": st.booleans(),
    }
)


class Planted:
    """What the tree holds, by real file: (st_dev, st_ino) -> kind."""

    def __init__(self, root: bytes):
        self.root = root
        self.kinds: dict[tuple[int, int], str] = {}
        self.real_files: list[bytes] = []
        self.count = 0

    def make(self, folder: bytes, entry: tuple, class_folders: list[bytes]) -> None:
        what, kind_or_items, name = entry
        path = os.path.join(folder, name)
        if os.path.lexists(path):
            return  # the name was drawn twice in this folder
        self.count += 1
        if what == "dir":
            os.mkdir(path)
            for child in kind_or_items:
                self.make(path, child, class_folders)
        elif what == "link":
            self._link(kind_or_items, path, class_folders)
        else:
            self._file(kind_or_items, path)

    def _file(self, kind: str, path: bytes) -> None:
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "dev_zero":
            os.symlink(b"/dev/zero", path)
        elif kind == "broken":
            os.symlink(b"nowhere", path)
            return
        else:
            data = {
                "truncated": _image("jpeg", self.count)[:200],
                "empty": b"",
                "junk": b"a note, not a picture\n",
                "oversize": _image("jpeg", self.count) + bytes(11_000),
                "sparse": b"",
            }.get(kind)
            data = _image(kind, self.count) if data is None else data
            with open(path, "wb") as file:
                file.write(data)
                if kind == "sparse":
                    file.truncate(16 * 2**30)
            self.real_files.append(path)
        status = os.stat(path)
        self.kinds.setdefault((status.st_dev, status.st_ino), kind)

    def _link(self, kind: str, path: bytes, class_folders: list[bytes]) -> None:
        if kind == "hard_link" and self.real_files:
            os.link(self.real_files[self.count % len(self.real_files)], path)
            return
        target = {
            "self": b".",
            "parent": b"..",
            "root": self.root,
            "other_class": class_folders[self.count % len(class_folders)],
        }.get(kind)
        if target is None:  # a link to a file made earlier, if any
            target = self.real_files[self.count % len(self.real_files)] if self.real_files else b"."
        os.symlink(target, path)


def _entries(root: bytes) -> list[bytes]:
    """Every entry of the tree as the oracle sees it: all but real folders, which it enters
    (not through links, and not hidden ones, which are entries themselves)."""
    found = []
    for folder, dirs, others in os.walk(root):
        for name in list(dirs):
            path = os.path.join(folder, name)
            if os.path.islink(path) or name.startswith(b"."):
                found.append(path)
                dirs.remove(name)
        found += [os.path.join(folder, name) for name in others]
    return [os.path.relpath(path, root) for path in found]


def _identity(path: bytes) -> tuple[int, int]:
    status = os.stat(path)
    return status.st_dev, status.st_ino


@settings(
    max_examples=25,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(trees)
def test_build_data_puts_every_entry_of_any_tree_in_exactly_one_place(tree):
    with tempfile.TemporaryDirectory() as workspace:
        root = os.path.join(os.fsencode(workspace), b"photos")
        os.mkdir(root)
        planted = Planted(root)
        classes = []
        for _, _, name in tree["classes"]:
            name = name.lstrip(b".") or b"class"  # a hidden folder is no class
            if name not in classes:
                classes.append(name)
                os.mkdir(os.path.join(root, name))
        class_folders = [os.path.join(root, name) for name in classes]
        for (_, items, _), folder in zip(tree["classes"], class_folders):
            for entry in items:
                planted.make(folder, entry, class_folders)
        for entry in tree["strays"]:
            planted.make(root, entry, class_folders)

        flags = ["--workers", "1", "--max-file-mb", MAX_FILE_MB]
        named = [c.decode() for c in classes if _fits_a_labels_file(c)][::2]
        if tree["labels_file"] and named:
            labels = Path(workspace) / "labels.txt"
            labels.write_text("".join(f"{name}\n" for name in named), encoding="utf-8")
            flags += ["--labels-file", str(labels)]
        out = Path(workspace) / "out"
        stdout, stderr = io.StringIO(), io.StringIO()
        with (
            deadline(120),
            contextlib.redirect_stdout(stdout),
            contextlib.redirect_stderr(stderr),
            pytest.raises(SystemExit) as exit_info,
        ):
            main(["build-data", os.fsdecode(root), str(out), *flags])
        assert exit_info.value.code == 0, stderr.getvalue()
        assert "Traceback" not in stderr.getvalue() + stdout.getvalue()
        _check_dataset(root, out, planted)
        if "--labels-file" not in flags:
            _check_folder_source(root, out, planted)


def _fits_a_labels_file(name: bytes) -> bool:
    try:
        text = name.decode()
    except UnicodeDecodeError:
        return False
    return text == text.strip() and "\n" not in text and "\r" not in text and text != ""


def _check_dataset(root: bytes, out: Path, planted: Planted) -> None:
    info = json.loads((out / "dataset.json").read_text())
    records = [name for names in info["records"].values() for name in names]
    skipped = {}
    for entry in info["skipped"]:
        assert entry["file"] not in skipped, f"{entry['file']!r} skipped twice"
        assert isinstance(entry["reason"], str) and entry["reason"]
        skipped[entry["file"]] = entry["reason"]
    assert len(records) == len(set(records)), "a name recorded twice"
    assert not set(records) & set(skipped), "a name both recorded and skipped"

    # Every entry is listed, or lies under a folder listed as skipped, or is a link to a
    # folder that was entered (what lies below it is listed) or is empty.
    listed = set(records) | set(skipped)
    entered = {
        "/".join(name.split("/")[:i]) for name in listed for i in range(1, name.count("/") + 1)
    }
    for entry in map(os.fsdecode, _entries(root)):
        parts = entry.split("/")
        above = {"/".join(parts[:i]) for i in range(1, len(parts))}
        path = os.path.join(root, os.fsencode(entry))
        empty_folder = os.path.isdir(path) and not os.listdir(path)
        accounted = entry in listed or above & set(skipped) or entry in entered or empty_folder
        assert accounted, f"{entry!r} is in no list"

    # No real file is recorded twice (so none is in both splits); the good ones all are,
    # unless hidden or outside the named classes; nothing else is.
    recorded = [_identity(os.path.join(root, os.fsencode(name))) for name in records]
    assert len(recorded) == len(set(recorded)), "one file recorded under two names"
    for identity, kind in planted.kinds.items():
        if kind not in GOOD:
            assert identity not in recorded, f"a {kind} file was recorded"
    for path in planted.real_files:
        relative = os.fsdecode(os.path.relpath(path, root))
        excluded = any(part.startswith(".") for part in relative.split("/"))
        excluded |= relative.split("/")[0] not in info["classes"] or "/" not in relative
        if planted.kinds[_identity(path)] in GOOD and not excluded:
            assert _identity(path) in recorded, f"good image {relative!r} not recorded"

    # The shards hold exactly the records dataset.json lists, names as bytes on disk.
    in_shards = [
        decode_example(data)["image/filename"][0]
        for shard in sorted(out.glob("*-of-*"))
        for data in iter_records(shard)
    ]
    assert sorted(in_shards) == sorted(os.fsencode(name) for name in records)


def _check_folder_source(root: bytes, out: Path, planted: Planted) -> None:
    """Training on the folder itself (`--data IMAGE_FOLDER`, without build-data's small file
    limit) reads the same files, plus the oversize ones and the truncated ones that only a
    full decode reveals; never a FIFO or a device, and it does not hang."""
    info = json.loads((out / "dataset.json").read_text())
    records = {name for names in info["records"].values() for name in names}
    names = set()
    with deadline(60):
        for subset in ("train", "validation"):
            source = open_source(os.fsdecode(root), subset)
            names |= {source.read(i).name for i in range(len(source))}
    assert records <= names
    for name in names - records:
        kind = planted.kinds[_identity(os.path.join(root, os.fsencode(name)))]
        assert kind in ("truncated", "oversize"), (name, kind)
