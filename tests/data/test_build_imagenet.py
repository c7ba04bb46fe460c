"""`incept build-imagenet` on a miniature ImageNet tree made here."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from incept.data.example import decode_example
from incept.data.imagenet import build_imagenet, class_texts, clean_box
from incept.data.sources import open_source
from incept.data.tfrecord import iter_records
from incept.errors import UserError

FIXTURE_KINDS = json.loads(
    (Path(__file__).resolve().parent.parent / "fixtures" / "tfrecord" / "expected.json").read_text()
)["kinds"]
IMAGENET_KEYS = {k for k in FIXTURE_KINDS if k.startswith("image/")}  # the TF-written schema
SYNSETS = ["n01440764", "n01443537", "n01484850"]


def jpeg(seed: int, mode: str = "RGB", fmt: str = "JPEG", size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    buffer = io.BytesIO()
    image.convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def annotation(width: int, height: int, objects: list[tuple[str, int, int, int, int]]) -> str:
    parts = [f"<annotation><size><width>{width}</width><height>{height}</height>"
             "<depth>3</depth></size>"]  # fmt: skip
    for name, xmin, ymin, xmax, ymax in objects:
        parts.append(
            f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
            f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
        )
    return "".join(parts) + "</annotation>"


@pytest.fixture()
def tree(tmp_path) -> Path:
    """train/: two synset folders and one per-synset tar; val/: flat files + labels."""
    root = tmp_path / "ilsvrc"
    train = root / "train"
    (train / SYNSETS[0]).mkdir(parents=True)
    (train / SYNSETS[0] / f"{SYNSETS[0]}_1.JPEG").write_bytes(jpeg(1))
    (train / SYNSETS[0] / f"{SYNSETS[0]}_2.JPEG").write_bytes(jpeg(2, mode="CMYK"))
    (train / SYNSETS[1]).mkdir()
    (train / SYNSETS[1] / f"{SYNSETS[1]}_3.JPEG").write_bytes(jpeg(3))
    (train / SYNSETS[1] / f"{SYNSETS[1]}_2933.JPEG").write_bytes(jpeg(4, fmt="PNG"))
    with tarfile.open(train / f"{SYNSETS[2]}.tar", "w") as archive:
        for i in (5, 6):
            data = jpeg(i)
            member = tarfile.TarInfo(f"{SYNSETS[2]}_{i}.JPEG")
            member.size = len(data)
            archive.addfile(member, io.BytesIO(data))
    val = root / "val"
    val.mkdir()
    for i in (1, 2, 3):
        (val / f"ILSVRC2012_val_0000000{i}.JPEG").write_bytes(jpeg(10 + i))
    (root / "val_labels.txt").write_text(f"{SYNSETS[2]}\n{SYNSETS[0]}\n{SYNSETS[1]}\n")
    boxes = root / "Annotation"
    (boxes / SYNSETS[0]).mkdir(parents=True)
    (boxes / SYNSETS[0] / f"{SYNSETS[0]}_1.xml").write_text(annotation(40, 30, [
        (SYNSETS[0], 4, 3, 20, 15),     # a plain box
        (SYNSETS[0], 30, 20, 50, 40),   # reaches past the image: clamped
        (SYNSETS[0], 10, 10, 10, 20),   # no width: dropped
        (SYNSETS[1], 0, 0, 40, 30),     # another synset's box: dropped
    ]))  # fmt: skip
    # The annotators saw 80x60: corners are fractions of that size.
    (boxes / SYNSETS[0] / f"{SYNSETS[0]}_2.xml").write_text(
        annotation(80, 60, [(SYNSETS[0], 20, 15, 60, 45)])
    )
    (boxes / SYNSETS[1]).mkdir()
    (boxes / SYNSETS[1] / f"{SYNSETS[1]}_3.xml").write_text("<annotation><size>")  # broken
    (boxes / "val").mkdir()
    (boxes / "val" / "ILSVRC2012_val_00000002.xml").write_text(
        annotation(40, 30, [(SYNSETS[0], 0, 0, 20, 30)])
    )
    return root


def read_all(folder: Path, subset: str) -> dict[str, dict]:
    records = {}
    for shard in sorted(folder.glob(f"{subset}-?????-of-?????")):
        for data in iter_records(shard):
            record = decode_example(data)
            records[record["image/filename"][0].decode()] = record
    return records


def boxes_of(record: dict) -> list[list[float]]:
    keys = ["ymin", "xmin", "ymax", "xmax"]
    columns = [record[f"image/object/bbox/{k}"] for k in keys]
    return np.asarray(columns, dtype=np.float64).T.round(6).tolist()


def test_miniature_imagenet(tree, tmp_path):
    out = tmp_path / "shards"
    info, summary = build_imagenet(
        out,
        train_dir=tree / "train",
        validation_dir=tree / "val",
        validation_labels=tree / "val_labels.txt",
        bounding_boxes=tree / "Annotation",
        train_shards=2,
        validation_shards=1,
        workers=2,
    )
    assert sorted(p.name for p in out.glob("*-of-*")) == [
        "train-00000-of-00002", "train-00001-of-00002", "validation-00000-of-00001",
    ]  # fmt: skip
    assert (out / "labels.txt").read_text().split() == SYNSETS
    assert info["synsets"] == SYNSETS and info["classes"] == SYNSETS  # ids: not the full 1000
    train, val = read_all(out, "train"), read_all(out, "validation")
    assert len(train) == 6 and len(val) == 3
    for record in [*train.values(), *val.values()]:
        assert set(record) == IMAGENET_KEYS
        for key, values in record.items():
            if values:
                kind = {bytes: "bytes", int: "int64", float: "float"}[type(values[0])]
                assert kind == FIXTURE_KINDS[key], key
        synset = record["image/class/synset"][0].decode()
        label = record["image/class/label"][0]
        assert label == SYNSETS.index(synset) + 1  # 1..N in sorted synset order
        assert record["image/object/bbox/label"] == [label] * len(record["image/object/bbox/xmin"])
        image = Image.open(io.BytesIO(record["image/encoded"][0]))
        assert (image.format, image.mode) == ("JPEG", "RGB")
        assert (record["image/height"][0], record["image/width"][0]) == (30, 40)
    assert train["n01484850_5.JPEG"]["image/encoded"][0] == jpeg(5)  # read from the tar as is
    assert train["n01440764_1.JPEG"]["image/encoded"][0] == jpeg(1)
    assert boxes_of(train["n01440764_1.JPEG"]) == [[0.1, 0.1, 0.5, 0.5], [0.666667, 0.75, 1.0, 1.0]]
    assert boxes_of(train["n01440764_2.JPEG"]) == [[0.25, 0.25, 0.75, 0.75]]
    assert boxes_of(train["n01443537_3.JPEG"]) == []
    assert boxes_of(val["ILSVRC2012_val_00000002.JPEG"]) == [[0.0, 0.0, 1.0, 0.5]]
    assert [val[f"ILSVRC2012_val_0000000{i}.JPEG"]["image/class/synset"][0].decode()
            for i in (1, 2, 3)] == [SYNSETS[2], SYNSETS[0], SYNSETS[1]]  # fmt: skip
    reencoded = {entry["file"]: entry["from"] for entry in info["reencoded"]}
    assert reencoded == {"n01440764/n01440764_2.JPEG": "JPEG CMYK",
                         "n01443537/n01443537_2933.JPEG": "PNG RGB"}  # fmt: skip
    assert [n["file"] for n in info["notes"]] == ["n01443537/n01443537_3.JPEG"]
    assert "unreadable annotation" in info["notes"][0]["note"]
    assert summary[-1] == "4 input images matched to box annotations"

    source = open_source(out, "train")
    assert source.num_classes == 3 and sorted(source.labels.tolist()) == [0, 0, 1, 1, 2, 2]
    with_boxes = [source.read(i) for i in range(len(source))]
    assert sorted(len(r.boxes) for r in with_boxes) == [0, 0, 0, 0, 1, 2]


def test_csv_boxes_and_synset_folders_for_validation(tree, tmp_path):
    val = tree / "val_folders"
    for i, synset in enumerate(SYNSETS):
        (val / synset).mkdir(parents=True)
        (val / synset / f"v{i}.JPEG").write_bytes(jpeg(30 + i))
    rows = "v0.JPEG,0.1,0.2,0.3,0.4\nv0.JPEG,-0.5,0.5,1.5,0.5\nv1.JPEG,0.9,0.9,0.1,0.1\n"
    (tree / "boxes.csv").write_text(rows)
    info, _ = build_imagenet(tmp_path / "out", validation_dir=val,
                             bounding_boxes=tree / "boxes.csv", workers=1)  # fmt: skip
    records = read_all(tmp_path / "out", "validation")
    assert boxes_of(records["v0.JPEG"]) == [[0.2, 0.1, 0.4, 0.3]]  # the flat box is dropped
    assert boxes_of(records["v1.JPEG"]) == [[0.1, 0.1, 0.9, 0.9]]  # corners put in order
    assert boxes_of(records["v2.JPEG"]) == []
    assert len(list((tmp_path / "out").glob("validation-*"))) == 128  # the original's count
    assert not list((tmp_path / "out").glob("train-*"))


def test_clean_box():
    assert clean_box(0.2, 0.1, 0.6, 0.5) == (0.1, 0.2, 0.5, 0.6)
    assert clean_box(-1, -1, 2, 2) == (0.0, 0.0, 1.0, 1.0)
    assert clean_box(0.5, 0.1, 0.5, 0.9) is None
    assert clean_box(1.2, 0.1, 1.5, 0.9) is None  # entirely outside: no area after clamping


def test_class_texts(tmp_path):
    synsets = [f"n{i:08d}" for i in range(1000)]
    texts = class_texts(synsets)
    assert texts[0] == "tench" and texts[1] == "goldfish" and len(texts) == 1000
    assert class_texts(SYNSETS) == SYNSETS
    metadata = tmp_path / "imagenet_metadata.txt"
    metadata.write_text(f"{SYNSETS[0]}\ttench, Tinca tinca\n{SYNSETS[1]}\tgoldfish\n")
    assert class_texts(SYNSETS, metadata) == ["tench, Tinca tinca", "goldfish", SYNSETS[2]]


def test_user_mistakes(tree, tmp_path):
    with pytest.raises(UserError, match="--train-dir, --validation-dir"):
        build_imagenet(tmp_path / "out")
    with pytest.raises(UserError, match="--validation-labels"):
        build_imagenet(tmp_path / "out", validation_dir=tree / "val")
    (tree / "short.txt").write_text(f"{SYNSETS[0]}\n")
    with pytest.raises(UserError, match="1 lines for 3 files"):
        build_imagenet(tmp_path / "out", validation_dir=tree / "val",
                       validation_labels=tree / "short.txt")  # fmt: skip
    with pytest.raises(UserError, match="no synset folders"):
        build_imagenet(tmp_path / "out", train_dir=tree / "val")
    (tree / "bad.csv").write_text("a.JPEG,0.1,zero,0.5,0.5\n")
    with pytest.raises(UserError, match="line 1"):
        build_imagenet(tmp_path / "out", train_dir=tree / "train", bounding_boxes=tree / "bad.csv")
