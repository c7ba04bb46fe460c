"""`incept build-data`: every file accounted for, the original schema, determinism, restarts."""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from incept import cli
from incept.cli import build_data as build_data_cli
from incept.data.build import build_data
from incept.data.example import decode_example
from incept.data.sources import open_source
from incept.data.tfrecord import iter_records
from incept.errors import UserError

FIXTURE_KINDS = json.loads(
    (Path(__file__).resolve().parent.parent / "fixtures" / "tfrecord" / "expected.json").read_text()
)["kinds"]
# build_image_data.py's keys (the fixture has them, written by TensorFlow, plus ImageNet's).
ORIGINAL_KEYS = {
    "image/height", "image/width", "image/colorspace", "image/channels", "image/class/label",
    "image/class/text", "image/format", "image/filename", "image/encoded",
}  # fmt: skip
SRC = str(Path(__file__).resolve().parents[2] / "src")


def save(image: Image.Image, path: Path, fmt: str, **options) -> None:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    path.write_bytes(buffer.getvalue())


def noise(seed: int, size=(40, 30)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture()
def folder(tmp_path) -> Path:
    """Three classes of 8 JPEGs, plus one file of each awkward kind."""
    root = tmp_path / "photos"
    for c, name in enumerate(["tulips", "daisy", "roses"]):
        (root / name).mkdir(parents=True)
        for i in range(8):
            save(noise(10 * c + i), root / name / f"{i}.jpg", "JPEG")
    save(noise(90).convert("CMYK"), root / "daisy" / "cmyk.jpg", "JPEG")
    save(noise(91), root / "daisy" / "actually_png.JPEG", "PNG")
    save(noise(92).convert("RGBA"), root / "roses" / "alpha.png", "PNG")
    save(noise(93).convert("P"), root / "roses" / "anim.gif", "GIF")
    save(noise(94), root / "roses" / "jpeg_named.png", "JPEG")
    (root / "tulips" / "empty.jpg").write_bytes(b"")
    (root / "tulips" / "notes.txt").write_text("not a picture")
    (root / "tulips" / "cut.jpg").write_bytes((root / "tulips" / "0.jpg").read_bytes()[:500])
    (root / "tulips" / ".DS_Store").write_bytes(b"hidden files are not inputs")
    (root / "LICENSE").write_text("outside every class folder")
    return root


def all_inputs(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def records_of(folder: Path, subset: str) -> list[dict]:
    return [
        decode_example(data)
        for shard in sorted(folder.glob(f"{subset}-?????-of-?????"))
        for data in iter_records(shard)
    ]


def test_every_file_ends_in_one_place_in_the_original_schema(folder, tmp_path):
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("roses\ntulips\ndaisy\n")  # not sorted: the file decides
    out = tmp_path / "shards"
    info, summary = build_data(folder, out, labels_file=labels_file, train_shards=2, workers=2)
    assert (out / "labels.txt").read_text() == "roses\ntulips\ndaisy\n"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "dataset.json", "labels.txt", "train-00000-of-00002", "train-00001-of-00002",
        "validation-00000-of-00001",
    ]  # fmt: skip
    stored = json.loads((out / "dataset.json").read_text())
    assert (
        stored == info
        and info["label_offset"] == 1
        and info["classes"] == ["roses", "tulips", "daisy"]
    )
    recorded = info["records"]["train"] + info["records"]["validation"]
    skipped = {entry["file"]: entry["reason"] for entry in info["skipped"]}
    assert len(recorded) == len(set(recorded)) and not set(recorded) & set(skipped)
    assert set(recorded) | set(skipped) == all_inputs(folder)
    assert skipped["tulips/empty.jpg"] == "empty file"
    assert skipped["tulips/notes.txt"].startswith("not an image")
    assert skipped["tulips/cut.jpg"].startswith("truncated")
    assert skipped["LICENSE"] == "not inside a class folder"
    assert skipped["tulips/.DS_Store"] == "hidden file"
    reencoded = {entry["file"]: entry["from"] for entry in info["reencoded"]}
    assert reencoded == {
        "daisy/cmyk.jpg": "JPEG CMYK", "daisy/actually_png.JPEG": "PNG RGB",
        "roses/alpha.png": "PNG RGBA", "roses/anim.gif": "GIF P",
    }  # fmt: skip
    assert any("re-encoded 4 files" in line for line in summary)
    assert any("skipped 5 files" in line for line in summary)

    records = records_of(out, "train") + records_of(out, "validation")
    assert [r["image/filename"][0].decode() for r in records] == recorded
    for record in records:
        assert set(record) == ORIGINAL_KEYS
        for key, values in record.items():  # the types TensorFlow wrote in the fixtures
            kind = {bytes: "bytes", int: "int64", float: "float"}[type(values[0])]
            assert kind == FIXTURE_KINDS[key], key
        name = record["image/filename"][0].decode()
        label = record["image/class/label"][0]
        assert (
            name.split("/")[0]
            == info["classes"][label - 1]
            == record["image/class/text"][0].decode()
        )
        image = Image.open(io.BytesIO(record["image/encoded"][0]))
        assert image.format == "JPEG" and image.mode in ("RGB", "L")
        assert (record["image/height"][0], record["image/width"][0]) == (30, 40)
        if name not in reencoded:  # plain JPEGs are kept byte for byte, whatever their name
            assert record["image/encoded"][0] == (folder / name).read_bytes()


def test_output_reads_back_with_the_image_folder_split(folder, tmp_path):
    out = tmp_path / "shards"
    build_data(folder, out, workers=1, seed=3, validation_fraction=0.25)
    for subset in ("train", "validation"):
        from_shards = open_source(out, subset)
        from_folder = open_source(folder, subset, validation_fraction=0.25, seed=3)
        assert from_shards.classes == from_folder.classes == ["daisy", "roses", "tulips"]
        folder_names = {from_folder.read(i).name for i in range(len(from_folder))}
        shard_names = {from_shards.read(i).name for i in range(len(from_shards))}
        # The folder source leaves out what is plainly no image; a truncated file only
        # shows when decoded (build-data decodes everything, the folder source does not).
        assert {name for name, _ in from_folder.skipped} <= {"tulips/empty.jpg", "tulips/notes.txt"}
        assert shard_names == folder_names - {"tulips/cut.jpg"}
        labels = {
            from_shards.read(i).name: from_shards.read(i).label for i in range(len(from_shards))
        }
        assert all(
            from_shards.classes[label] == name.split("/")[0] for name, label in labels.items()
        )


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*-of-*"))}


def test_same_seed_same_bytes_whatever_the_workers(folder, tmp_path):
    build_data(folder, tmp_path / "one", train_shards=3, workers=1)
    build_data(folder, tmp_path / "three", train_shards=3, workers=3)
    assert shard_bytes(tmp_path / "one") == shard_bytes(tmp_path / "three")
    build_data(folder, tmp_path / "other", train_shards=3, workers=1, seed=1)
    assert shard_bytes(tmp_path / "other") != shard_bytes(tmp_path / "one")


def test_rerun_keeps_matching_shards_and_rebuilds_the_rest(folder, tmp_path):
    out = tmp_path / "shards"
    build_data(folder, out, train_shards=2, workers=1)
    reference = shard_bytes(out)
    # As after a kill: one shard missing, a temporary file left over, no dataset.json.
    (out / "train-00001-of-00002").unlink()
    (out / ".train-00001-of-00002.partial").write_bytes(b"half a shard")
    (out / "dataset.json").unlink()
    _, summary = build_data(folder, out, train_shards=2, workers=1)
    assert "kept 2 shards written by an earlier identical run" in summary
    assert shard_bytes(out) == reference and (out / "dataset.json").exists()
    assert not list(out.glob(".*.partial"))
    # A changed input makes its shard stale; a new shard count replaces the old set.
    save(noise(500), folder / "daisy" / "0.jpg", "JPEG")
    _, summary = build_data(folder, out, train_shards=3, workers=1)
    assert "kept 2 shards" not in " ".join(summary)
    changed = [r for r in records_of(out, "*") if r["image/filename"] == [b"daisy/0.jpg"]]
    assert changed[0]["image/encoded"][0] == (folder / "daisy" / "0.jpg").read_bytes()
    assert sorted(shard_bytes(out)) == [
        "train-00000-of-00003", "train-00001-of-00003", "train-00002-of-00003",
        "validation-00000-of-00001",
    ]  # fmt: skip
    assert len(open_source(out, "train")) == len(
        json.loads((out / "dataset.json").read_text())["records"]["train"]
    )


def test_killed_build_leaves_no_partial_shard_and_rerun_completes(tmp_path):
    source = tmp_path / "big"
    for c in range(2):
        (source / f"class{c}").mkdir(parents=True)
        for i in range(24):  # PNGs: each is re-encoded, which takes a moment
            save(noise(c * 100 + i, size=(320, 240)), source / f"class{c}" / f"{i}.png", "PNG")
    out = tmp_path / "out"
    script = (
        "import sys; from incept.data.build import build_data; "
        "build_data(sys.argv[1], sys.argv[2], train_shards=6, workers=1)"
    )
    command = [sys.executable, "-c", script, str(source), str(out)]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not list(out.glob(".train-*.partial")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    for shard in out.glob("train-*"):  # whatever carries a final name is complete
        assert sum(1 for _ in iter_records(shard)) > 0
    assert not (out / "dataset.json").exists()
    build_data(source, out, train_shards=6, workers=1)  # the same plan, run again
    build_data(source, tmp_path / "clean", train_shards=6, workers=2)
    assert shard_bytes(out) == shard_bytes(tmp_path / "clean")


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    build_data_cli.add_arguments(parser)
    return build_data_cli.run(parser.parse_args(list(argv)))


def test_user_mistakes_are_one_line_errors(folder, tmp_path, capsys, monkeypatch):
    with pytest.raises(UserError, match="no such directory"):
        run_cli(str(tmp_path / "nowhere"), str(tmp_path / "out"))
    labels = tmp_path / "labels.txt"
    labels.write_text("daisy\nlilies\n")
    with pytest.raises(UserError, match="no folder for class 'lilies'"):
        run_cli(str(folder), str(tmp_path / "out"), "--labels-file", str(labels))
    with pytest.raises(UserError, match="inside the source"):
        run_cli(str(folder), str(folder / "daisy" / "out"))
    (tmp_path / "a_file").write_text("")
    with pytest.raises(UserError, match="not a folder"):
        run_cli(str(folder), str(tmp_path / "a_file"))
    with pytest.raises(UserError, match="--train-shards must be at least 1"):
        run_cli(str(folder), str(tmp_path / "out"), "--train-shards", "0")
    # Through the command line's entry point: one line on stderr, exit status 2.
    monkeypatch.setattr(cli, "COMMANDS", [("build-data", "build_data", "build data")])
    with pytest.raises(SystemExit) as exit_status:
        cli.main(["build-data", str(tmp_path / "nowhere"), str(tmp_path / "out")])
    stderr = capsys.readouterr().err
    assert exit_status.value.code == 2 and stderr.count("\n") == 1
    assert stderr.startswith("incept build-data: error: no such directory")


def test_validation_dir(folder, tmp_path):
    held_out = tmp_path / "held_out"
    for name in ("daisy", "roses", "tulips"):
        (held_out / name).mkdir(parents=True)
        save(noise(700), held_out / name / "v.jpg", "JPEG")
    info, _ = build_data(folder, tmp_path / "out", validation_dir=held_out, workers=1)
    assert sorted(info["records"]["validation"]) == ["daisy/v.jpg", "roses/v.jpg", "tulips/v.jpg"]
    assert info["splits"]["train"]["records"] == 8 * 3 + 5  # every readable source image
