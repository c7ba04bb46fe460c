"""Sources: the three shard layouts (TensorFlow-written fixtures) and image folders."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from incept.data.example import encode_example
from incept.data.sources import ImageFolderSource, ShardSource, open_source
from incept.data.tfrecord import CorruptRecordError, write_records
from incept.errors import UserError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tfrecord"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.fixture()
def original(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURES / "original", tmp_path / "original"))


@pytest.fixture()
def tfds(tmp_path) -> Path:
    return Path(shutil.copytree(FIXTURES / "tfds", tmp_path / "tfds"))


def expected_records(prefix: str, subset: str) -> list[dict]:
    names = sorted(n for n in EXPECTED if n.startswith(f"{prefix}/") and f"{subset}" in n)
    return [record for name in names for record in EXPECTED[name]]


def test_original_shards_read_as_tensorflow_wrote_them(original):
    for subset in ("train", "validation"):
        source = open_source(original, subset)
        expected = expected_records("original", subset)
        assert isinstance(source, ShardSource) and len(source) == len(expected)
        assert source.classes == ["daisy", "roses", "tulips"] and source.num_classes == 3
        # The original stores labels 1..N; users see 0..N-1.
        assert list(source.labels) == [r["image/class/label"][0] - 1 for r in expected]
        for i, theirs in enumerate(expected):
            record = source.read(i)
            assert hashlib.sha256(record.image).hexdigest() == theirs["image/encoded"]["sha256"]
            assert record.label == theirs["image/class/label"][0] - 1
            assert record.name == theirs["image/filename"][0]
            keys = ["ymin", "xmin", "ymax", "xmax"]
            columns = [theirs[f"image/object/bbox/{k}"] for k in keys]
            assert record.boxes.dtype == np.float32 and record.boxes.shape == (len(columns[0]), 4)
            assert record.boxes.T.tolist() == columns or not columns[0]


def test_original_class_names_come_from_records_without_labels_file(original):
    (original / "labels.txt").unlink()
    source = open_source(original, "train")
    assert source.classes == ["daisy", "roses", "tulips"]
    assert list(source.labels) == [0, 1, 2, 0]
    # Validation holds only "roses"; the class count and names still come out whole.
    validation = open_source(original, "validation")
    assert validation.classes == ["daisy", "roses", "tulips"] and list(validation.labels) == [1]


def test_tfds_shards(tfds):
    source = open_source(tfds, "train")
    expected = expected_records("tfds", "train")
    assert list(source.labels) == [r["label"][0] for r in expected]  # already 0-based
    assert source.classes == ["daisy", "roses", "tulips"]
    record = source.read(4)
    assert hashlib.sha256(record.image).hexdigest() == expected[4]["image"]["sha256"]
    assert record.boxes.shape == (0, 4)
    (tfds / "label.labels.txt").unlink()
    assert open_source(tfds, "train").classes == ["class_0", "class_1", "class_2"]


def write_shards(folder: Path, labels: list[int], subset: str = "train") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    records = [
        encode_example({"image/encoded": b"jpeg%d" % i, "image/class/label": label})
        for i, label in enumerate(labels)
    ]
    write_records(folder / f"{subset}-00000-of-00001", records)


def test_zero_based_shards_with_original_keys(tmp_path):
    write_shards(tmp_path, [0, 1, 2, 1])
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    source = open_source(tmp_path, "train")
    assert list(source.labels) == [0, 1, 2, 1] and source.num_classes == 3


def test_mixed_label_conventions_are_refused(tmp_path):
    write_shards(tmp_path, [0, 1, 2, 3])
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    with pytest.raises(UserError, match="mixed label conventions"):
        open_source(tmp_path, "train")


def test_labels_beyond_the_labels_file_are_refused(tmp_path):
    write_shards(tmp_path, [1, 5])
    (tmp_path / "labels.txt").write_text("a\nb\n")
    with pytest.raises(UserError, match="outside"):
        open_source(tmp_path, "train")


def test_folder_errors(original, tfds, tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        open_source(tmp_path / "missing", "train")
    (original / "validation-00000-of-00001").unlink()
    with pytest.raises(UserError, match="no validation shards"):
        open_source(original, "validation")
    (original / "train-00001-of-00002").unlink()
    with pytest.raises(UserError, match="1 of 2 shards"):
        open_source(original, "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no shards"):
        open_source(tmp_path / "empty", "train")
    shutil.copy(tfds / "mini-train.tfrecord-00000-of-00002", original)
    with pytest.raises(UserError, match="mixed shard layouts"):
        open_source(original, "train")


def test_random_access_does_not_touch_other_records(original):
    source = open_source(original, "train")
    first = source.read(0)
    # Damage record 1 only: records 0, 2, 3 still read; record 1 names its file and offset.
    offset = int(source._offsets[1])
    shard = Path(source.shards[int(source._shard_of[1])])
    stat = shard.stat()
    raw = bytearray(shard.read_bytes())
    raw[offset + 40] ^= 0xFF
    shard.write_bytes(bytes(raw))
    os.utime(shard, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # keep the stored index valid
    reopened = open_source(original, "train")
    assert reopened.read(0).image == first.image
    reopened.read(2), reopened.read(3)
    with pytest.raises(CorruptRecordError, match=f"byte offset {offset}"):
        reopened.read(1)
    # Once the index is rebuilt (as for a changed shard), the damage shows with its offset.
    shutil.rmtree(original / ".incept-index")
    with pytest.raises(CorruptRecordError, match=f"byte offset {offset}"):
        open_source(original, "train")


def _read_labels_and_digests(args):
    source, indices = args
    return [
        (source.read(i).label, hashlib.sha256(source.read(i).image).hexdigest()) for i in indices
    ]


def test_reads_in_forked_worker_processes(original):
    source = open_source(original, "train")
    in_parent = _read_labels_and_digests((source, range(len(source))))  # opens files here
    with multiprocessing.get_context("fork").Pool(2) as pool:
        parts = pool.map(_read_labels_and_digests, [(source, [0, 1]), (source, [2, 3])])
    assert parts[0] + parts[1] == in_parent


def make_image_folder(root: Path, counts: dict[str, int]) -> None:
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 6), (i, 0, 0)).save(root / name / f"{i:03d}.png")


def test_image_folder_split_is_stratified_and_deterministic(tmp_path):
    make_image_folder(tmp_path, {"cats": 20, "dogs": 10, "owls": 1})
    train = open_source(tmp_path, "train")
    validation = open_source(tmp_path, "validation")
    assert isinstance(train, ImageFolderSource)
    assert train.classes == validation.classes == ["cats", "dogs", "owls"]
    assert np.bincount(validation.labels, minlength=3).tolist() == [2, 1, 0]
    assert np.bincount(train.labels, minlength=3).tolist() == [18, 9, 1]
    train_names = {train.read(i).name for i in range(len(train))}
    validation_names = {validation.read(i).name for i in range(len(validation))}
    assert not train_names & validation_names and len(train_names | validation_names) == 31
    again = open_source(tmp_path, "validation")
    assert [again.read(i).name for i in range(len(again))] == sorted(validation_names)
    other_seed = open_source(tmp_path, "validation", seed=1)
    assert {other_seed.read(i).name for i in range(len(other_seed))} != validation_names
    record = train.read(0)
    assert record.image == (tmp_path / record.name).read_bytes() and record.boxes.shape == (0, 4)


def test_image_folder_leaves_out_what_is_not_an_image(tmp_path):
    make_image_folder(tmp_path, {"cats": 3, "dogs": 3})
    (tmp_path / "cats" / "notes.txt").write_text("a note, not a picture")
    (tmp_path / "dogs" / "empty.png").write_bytes(b"")
    Image.new("RGB", (8, 6)).save(tmp_path / "dogs" / "odd.tga")  # no signature: Pillow decides
    source = open_source(tmp_path, "train", validation_fraction=0)
    assert sorted(source.skipped) == [
        ("cats/notes.txt", "not an image (content of no known image format)"),
        ("dogs/empty.png", "empty file"),
    ]
    assert len(source) == 7 and "dogs/odd.tga" in {source.read(i).name for i in range(7)}
