"""Raw ILSVRC-2012 to shards with bounding boxes, as the original build_imagenet_data.py.

Train images come as synset folders (`n01440764/n01440764_10026.JPEG`) or as the per-synset
tar files found inside ILSVRC2012_img_train.tar (read in place, nothing extracted).
Validation images come in synset folders, or flat with a labels file: one synset a line,
in the sorted order of the validation file names (the original's
imagenet_2012_validation_synset_labels.txt).

Labels are 1..N in sorted synset order (0 is the background class, as in the original).
Bounding boxes come from the per-image XML annotations (a folder tree, matched by file
name) or from the original's CSV `filename,xmin,ymin,xmax,ymax` in fractions. They are
stored as fractions of the displayed image size, clamped to [0, 1]; a box with no area is
dropped, and so is a box labelled with another synset than its image.
"""

from __future__ import annotations

import csv
import os
import re
import tarfile
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import numpy as np

from incept.data.build import (
    LABEL_OFFSET,
    InputFile,
    SplitPlan,
    build_shards,
    seeded_order,
    summary_lines,
    write_dataset_files,
)
from incept.data.images import ShardImage
from incept.errors import UserError

TRAIN_SHARDS = 1024
VALIDATION_SHARDS = 128
_SYNSET = re.compile(r"^n\d{8}$")
Box = tuple[float, float, float, float]  # ymin, xmin, ymax, xmax fractions


# ---------------------------------------------------------------------------------------------
# Boxes


def clean_box(xmin: float, ymin: float, xmax: float, ymax: float) -> Box | None:
    """Corners in order, clamped to [0, 1]; None for a box without area."""
    xmin, xmax = sorted((min(max(xmin, 0.0), 1.0), min(max(xmax, 0.0), 1.0)))
    ymin, ymax = sorted((min(max(ymin, 0.0), 1.0), min(max(ymax, 0.0), 1.0)))
    if xmin >= xmax or ymin >= ymax:
        return None
    return (ymin, xmin, ymax, xmax)


def boxes_from_xml(path: str, synset: str, width: int, height: int) -> list[Box]:
    """The boxes of `synset` in one ImageNet annotation file, as fractions.

    Pixel corners are divided by the size the annotation states (the size the annotators
    saw); `width` and `height` (the decoded image's displayed size) stand in when it has none.
    Raises ValueError for a file that is not such an annotation.
    """
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as error:
        raise ValueError(f"unreadable annotation {os.path.basename(path)}: {error}") from None
    size = root.find("size")
    if size is not None:
        width = int(float(size.findtext("width", "0") or 0)) or width
        height = int(float(size.findtext("height", "0") or 0)) or height
    boxes = []
    for item in root.iter("object"):
        box = item.find("bndbox")
        if box is None or (item.findtext("name") or "").strip() != synset:
            continue
        try:
            corners = [float(box.findtext(k) or "") for k in ("xmin", "ymin", "xmax", "ymax")]
        except ValueError:
            raise ValueError(
                f"annotation {os.path.basename(path)} has a non-number corner"
            ) from None
        cleaned = clean_box(
            corners[0] / width, corners[1] / height, corners[2] / width, corners[3] / height
        )
        if cleaned is not None:
            boxes.append(cleaned)
    return boxes


def _boxes_from_csv(path: Path) -> dict[str, list[Box]]:
    """{image file name: boxes} from the original's `filename,xmin,ymin,xmax,ymax` CSV."""
    boxes: dict[str, list[Box]] = defaultdict(list)
    with open(path, newline="", encoding="utf-8") as file:
        for number, row in enumerate(csv.reader(file), start=1):
            if not row or not "".join(row).strip():
                continue
            try:
                name, *corners = row
                xmin, ymin, xmax, ymax = (float(v) for v in corners)
            except ValueError:
                raise UserError(
                    f"{path}, line {number}: expected filename,xmin,ymin,xmax,ymax "
                    "(fractions of the image size)"
                ) from None
            cleaned = clean_box(xmin, ymin, xmax, ymax)
            if cleaned is not None:
                boxes[os.path.basename(name.strip())].append(cleaned)
    return boxes


class BoundingBoxes:
    """Where each image's boxes come from: an XML file found by name, or CSV rows."""

    def __init__(self, source: str | os.PathLike | None):
        self.xml: dict[str, str] = {}
        self.csv: dict[str, list[Box]] = {}
        if source is None:
            return
        source = Path(source)
        if source.is_dir():
            for folder, _, names in os.walk(source):
                for name in names:
                    if name.lower().endswith(".xml"):
                        self.xml[os.path.splitext(name)[0]] = os.path.join(folder, name)
        elif source.is_file():
            self.csv = _boxes_from_csv(source)
        else:
            raise UserError(f"--bounding-boxes: no such file or folder: {source}")

    def attach(self, item: InputFile) -> InputFile:
        basename = os.path.basename(item.name)
        xml = self.xml.get(os.path.splitext(basename)[0])
        if xml is not None:
            return replace(item, boxes_xml=xml)
        if self.csv:
            return replace(item, boxes=tuple(self.csv.get(basename, ())))
        return item


def imagenet_features(item: InputFile, image: ShardImage, class_text: str, notes: list) -> dict:
    """The keys of the original's build_imagenet_data.py."""
    boxes: list[Box] = list(item.boxes or ())
    if item.boxes_xml is not None:
        try:
            boxes = boxes_from_xml(item.boxes_xml, item.synset, image.width, image.height)
        except ValueError as error:
            notes.append(f"no boxes: {error}")
    columns = np.asarray(boxes, dtype=np.float32).reshape(-1, 4).T  # ymin, xmin, ymax, xmax
    return {
        "image/height": image.height,
        "image/width": image.width,
        "image/colorspace": b"RGB",
        "image/channels": 3,
        "image/class/label": item.label,
        "image/class/synset": item.synset,
        "image/class/text": class_text,
        "image/object/bbox/xmin": columns[1],
        "image/object/bbox/xmax": columns[3],
        "image/object/bbox/ymin": columns[0],
        "image/object/bbox/ymax": columns[2],
        "image/object/bbox/label": np.full(len(boxes), item.label, dtype=np.int64),
        "image/format": b"JPEG",
        "image/filename": os.path.basename(item.name),
        "image/encoded": image.jpeg,
    }


# ---------------------------------------------------------------------------------------------
# Listing the raw files


def _visible_files(folder: Path) -> list[str]:
    return sorted(
        name
        for name in os.listdir(folder)
        if not name.startswith(".") and (folder / name).is_file()
    )


def _tar_members(path: Path) -> list[tuple[str, tuple[int, int]]]:
    try:
        with tarfile.open(path) as archive:
            return sorted(
                (os.path.basename(m.name), (m.offset_data, m.size))
                for m in archive
                if m.isfile() and not os.path.basename(m.name).startswith(".")
            )
    except (tarfile.TarError, OSError) as error:
        raise UserError(f"cannot read {path} as a tar archive: {error}") from None


def list_train(train_dir: Path) -> dict[str, list[tuple[str, str, tuple[int, int] | None]]]:
    """{synset: [(name, path, tar member)]} from synset folders or per-synset tar files."""
    if not train_dir.is_dir():
        raise UserError(
            f"--train-dir: {train_dir} is not a folder (give the folder of synset folders or "
            "of the per-synset .tar files inside ILSVRC2012_img_train.tar)"
        )
    found: dict[str, list[tuple[str, str, tuple[int, int] | None]]] = {}
    for entry in sorted(train_dir.iterdir()):
        synset = entry.name.removesuffix(".tar")
        if not _SYNSET.match(synset) or synset in found:
            continue  # a folder and a tar of one synset: the folder (sorted first) wins
        if entry.is_dir():
            found[synset] = [(f"{synset}/{n}", str(entry / n), None) for n in _visible_files(entry)]
        elif entry.suffix == ".tar":
            members = _tar_members(entry)
            found[synset] = [(f"{synset}/{n}", str(entry), span) for n, span in members]
    if not found:
        raise UserError(
            f"--train-dir: no synset folders or .tar files (named like n01440764) in {train_dir}"
        )
    return found


def list_validation(validation_dir: Path, labels_file: Path | None) -> list[tuple[str, str, str]]:
    """[(name, path, synset)] from synset folders, or flat files plus a labels file."""
    if not validation_dir.is_dir():
        raise UserError(f"--validation-dir: no such folder: {validation_dir}")
    folders = sorted(p for p in validation_dir.iterdir() if p.is_dir() and _SYNSET.match(p.name))
    if folders and labels_file is None:
        return [(f"{f.name}/{n}", str(f / n), f.name) for f in folders for n in _visible_files(f)]
    files = _visible_files(validation_dir)
    if labels_file is None:
        raise UserError(
            f"{validation_dir} holds no synset folders: give --validation-labels FILE "
            "(one synset a line, in sorted file order)"
        )
    try:
        synsets = [s.strip() for s in Path(labels_file).read_text().splitlines() if s.strip()]
    except OSError as error:
        raise UserError(
            f"cannot read --validation-labels {labels_file}: {error.strerror}"
        ) from None
    bad = [s for s in synsets if not _SYNSET.match(s)]
    if bad:
        raise UserError(f"--validation-labels {labels_file}: {bad[0]!r} is not a synset id")
    if len(synsets) != len(files):
        raise UserError(
            f"--validation-labels {labels_file} has {len(synsets)} lines for {len(files)} "
            f"files in {validation_dir}; they must match one to one"
        )
    return [(name, str(validation_dir / name), s) for name, s in zip(files, synsets)]


def _read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The original's imagenet_metadata.txt: `synset<TAB>human-readable text` lines."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise UserError(f"cannot read --metadata {path}: {error.strerror}") from None
    texts = {}
    for line in lines:
        synset, _, text = line.partition("\t")
        if _SYNSET.match(synset.strip()) and text.strip():
            texts[synset.strip()] = text.strip()
    return texts


def class_texts(synsets: list[str], metadata: str | os.PathLike | None = None) -> list[str]:
    """Human-readable labels: from a metadata file; else, for the 1000 ILSVRC synsets,
    torchvision's ImageNet category names (listed in sorted synset order); else the ids."""
    if metadata is not None:
        texts = _read_metadata(metadata)
        return [texts.get(s, s) for s in synsets]
    if len(synsets) == 1000 and synsets == sorted(synsets):
        from torchvision.models import Inception_V3_Weights

        return list(Inception_V3_Weights.IMAGENET1K_V1.meta["categories"])
    return list(synsets)


# ---------------------------------------------------------------------------------------------
# The command


def build_imagenet(
    output: str | os.PathLike,
    *,
    train_dir: str | os.PathLike | None = None,
    validation_dir: str | os.PathLike | None = None,
    validation_labels: str | os.PathLike | None = None,
    bounding_boxes: str | os.PathLike | None = None,
    metadata: str | os.PathLike | None = None,
    train_shards: int = TRAIN_SHARDS,
    validation_shards: int = VALIDATION_SHARDS,
    workers: int = 1,
    seed: int = 0,
) -> tuple[dict, list[str]]:
    """Raw ImageNet to shards; returns dataset.json's content and the summary lines."""
    if train_dir is None and validation_dir is None:
        raise UserError("give --train-dir, --validation-dir, or both")
    for flag, value in (
        ("--train-shards", train_shards),
        ("--validation-shards", validation_shards),
    ):
        if value < 1:
            raise UserError(f"{flag} must be at least 1, got {value}")
    output = Path(output)
    train = list_train(Path(train_dir)) if train_dir is not None else {}
    validation = (
        list_validation(
            Path(validation_dir), Path(validation_labels) if validation_labels else None
        )
        if validation_dir is not None
        else []
    )
    synsets = sorted(train) if train else sorted({s for _, _, s in validation})
    label_of = {s: i for i, s in enumerate(synsets, start=LABEL_OFFSET)}
    strangers = sorted({s for _, _, s in validation} - set(label_of))
    if strangers:
        raise UserError(f"validation synset {strangers[0]} has no train folder in {train_dir}")
    boxes = BoundingBoxes(bounding_boxes)

    def inputs(entries) -> list[InputFile]:
        return [
            boxes.attach(
                InputFile(
                    name=name, path=path, label=label_of[synset], member=member, synset=synset
                )
            )
            for name, path, member, synset in entries
        ]

    train_files = inputs(
        (name, path, member, synset)
        for synset, files in train.items()
        for name, path, member in files
    )
    validation_files = inputs((name, path, None, synset) for name, path, synset in validation)
    splits = [
        SplitPlan(subset, seeded_order(files, seed), shards)
        for subset, files, shards in (
            ("train", train_files, train_shards),
            ("validation", validation_files, validation_shards),
        )
        if (train_dir if subset == "train" else validation_dir) is not None
    ]
    texts = class_texts(synsets, metadata)
    results = build_shards(
        output, splits, texts, imagenet_features, workers=workers, command="build-imagenet"
    )
    settings = {
        "synsets": synsets,
        "seed": seed,
        "train_dir": str(Path(train_dir).resolve()) if train_dir else None,
        "validation_dir": str(Path(validation_dir).resolve()) if validation_dir else None,
        "bounding_boxes": str(Path(bounding_boxes).resolve()) if bounding_boxes else None,
    }
    info = write_dataset_files(output, texts, results, [], settings, labels_txt=synsets)
    annotated = sum(1 for f in train_files + validation_files if f.boxes_xml or f.boxes)
    lines = summary_lines(info, results, output)
    return info, [*lines, f"{annotated:,} input images matched to box annotations"]
