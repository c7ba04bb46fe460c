"""Faults in the data and the inputs: `incept build-data` killed midway, bad image files given
to build-data and classify, a flipped bit in a shard, a weight file that would run code."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from incept.data.tfrecord import CorruptRecordError, iter_records
from tests.faults.conftest import (
    REENCODED,
    SHARD_FLAGS,
    SKIPPED,
    TINY,
    assert_one_line_error,
    flip_bit,
    record_spans,
    run_incept,
)


def shard_files(folder: Path) -> dict[str, bytes]:
    return {
        path.name: path.read_bytes()
        for pattern in ("train-*", "validation-*", "labels.txt")
        for path in folder.glob(pattern)
    }


def test_bad_files_each_end_in_one_place_in_build_data(photos, shards):
    out, done = shards
    info = json.loads((out / "dataset.json").read_text())
    skipped = {entry["file"]: entry["reason"] for entry in info["skipped"]}
    reencoded = {entry["file"]: entry["from"] for entry in info["reencoded"]}
    assert set(skipped) == set(SKIPPED)
    for name, reason in SKIPPED.items():
        assert reason in skipped[name], (name, skipped[name])
    assert reencoded == REENCODED
    records = [name for subset in ("train", "validation") for name in info["records"][subset]]
    every_file = {str(p.relative_to(photos)) for p in photos.rglob("*") if p.is_file()}
    assert sorted(records + list(skipped)) == sorted(every_file)  # each once, in one place
    assert "Traceback" not in done.stderr
    assert f"skipped {len(SKIPPED)} files" in done.stdout


def test_build_data_killed_midway_then_rerun_completes_with_the_same_shards(
    photos, shards, tmp_path, frozen
):
    out = tmp_path / "out"
    args = ["build-data", photos, out, *SHARD_FLAGS]
    # Freeze the worker as it opens the 4th input of the second train shard, then kill all.
    order = json.loads((shards[0] / "dataset.json").read_text())["records"]["train"]
    in_second_shard = order[len(order) // 2 + 3]
    run = frozen(args, event="open", pattern=str(photos / in_second_shard))
    run.wait_until_frozen()
    run.kill()
    partial = out / ".train-00001-of-00002.partial"
    assert partial.is_file() and partial.stat().st_size > 0  # killed in the middle of it
    assert not (out / "train-00001-of-00002").exists()
    assert not (out / "dataset.json").exists()
    first = out / "train-00000-of-00002"
    assert len(record_spans(first)) == len(order) // 2  # a final name: complete
    assert sum(1 for _ in iter_records(first)) == len(order) // 2  # and every checksum holds

    done = run_incept(*args)
    assert done.returncode == 0, done.stderr
    assert "kept 1 shard written by an earlier identical run" in done.stdout
    assert not list(out.glob(".*.partial"))
    assert shard_files(out) == shard_files(shards[0])
    rebuilt, clean = (json.loads((f / "dataset.json").read_text()) for f in (out, shards[0]))
    assert rebuilt == clean


@pytest.fixture(scope="module")
def damaged(shards, tmp_path_factory) -> dict:
    """A copy of the shards with one bit flipped in the data of the second validation record
    and one in the data of every record of the first train shard."""
    folder = tmp_path_factory.mktemp("damaged") / "shards"
    shutil.copytree(shards[0], folder)
    validation = folder / "validation-00000-of-00001"
    second, length = record_spans(validation)[1]
    flip_bit(validation, second + 12 + length // 2)  # 12: the length and its checksum
    train = folder / "train-00000-of-00002"
    train_offsets = []
    for offset, length in record_spans(train):
        flip_bit(train, offset + 12 + length // 3)
        train_offsets.append(offset)
    return {"folder": folder, "validation": (validation, second), "train": (train, train_offsets)}


@pytest.mark.parametrize("workers", ["0", "2"])
def test_a_flipped_bit_stops_eval_naming_the_shard_and_offset(damaged, baseline, workers):
    shard, offset = damaged["validation"]
    done = run_incept(
        "eval", "--data", damaged["folder"], "--checkpoint", baseline, "--workers", workers
    )
    assert_one_line_error(done, "eval", str(shard), f"byte offset {offset} ", "checksum")


def test_a_flipped_bit_stops_train_naming_the_shard_and_offset(damaged, tmp_path):
    shard, offsets = damaged["train"]
    train_dir = tmp_path / "run"
    done = run_incept(
        "train", "--data", damaged["folder"], "--train-dir", train_dir, *TINY, "--max-steps", "6"
    )
    assert_one_line_error(done, "train", str(shard), "data checksum mismatch")
    named = int(done.stderr.split("byte offset ")[1].split()[0])
    assert named in offsets
    assert not (train_dir / "checkpoints").exists() or not any(
        path.name.startswith("step-") for path in (train_dir / "checkpoints").iterdir()
    )


def test_the_skip_option_passes_over_and_counts_the_bad_records(damaged, shards):
    shard, offset = damaged["validation"]
    skipped: list[CorruptRecordError] = []
    kept = list(iter_records(shard, skip_corrupt=True, skipped=skipped))
    intact = list(iter_records(shards[0] / shard.name))
    assert [(error.offset, error.problem) for error in skipped] == [
        (offset, "data checksum mismatch")
    ]
    assert kept == intact[:1] + intact[2:]  # every other record, unchanged, in order


def test_classify_gives_each_bad_image_one_error_line_and_classifies_the_rest(photos, baseline):
    names = ["class_0/00.jpg", *SKIPPED, *REENCODED]
    done = run_incept("classify", *(photos / name for name in names), "--checkpoint", baseline,
                      "--json")  # fmt: skip
    assert done.returncode == 1 and "Traceback" not in done.stderr
    results = [json.loads(line) for line in done.stdout.splitlines()]
    assert [result["image"] for result in results] == [str(photos / name) for name in names]
    errors = done.stderr.strip().splitlines()
    assert len(errors) == len(SKIPPED)
    for name, result in zip(names, results):
        if name in SKIPPED:
            line = f"incept classify: error: {photos / name}: {result['error']}"
            assert line in errors
        else:
            assert "error" not in result, result
            assert sum(entry["probability"] for entry in result["top"]) == pytest.approx(1, 1e-5)


class RunsCode:
    """Unpickling this runs a shell command: the classic malicious weight file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def malicious(tmp_path) -> tuple[Path, Path]:
    """(a .pth whose unpickling would create a marker file, that marker's path)."""
    marker, evil = tmp_path / "code-ran", tmp_path / "weights.pth"
    torch.save({"fc.weight": torch.zeros(3, 8), "hook": RunsCode(marker)}, evil)
    assert b"system" in evil.read_bytes()
    return evil, marker


def test_a_malicious_pickle_as_checkpoint_is_refused_unrun(malicious, shards):
    evil, marker = malicious
    done = run_incept("eval", "--data", shards[0], "--checkpoint", evil, "--workers", "0")
    assert_one_line_error(done, "eval", str(evil), "refuse")
    assert not marker.exists() and done.stdout == ""


def test_a_malicious_pickle_as_init_from_is_refused_unrun(malicious, shards, tmp_path):
    evil, marker = malicious
    train_dir = tmp_path / "run"
    done = run_incept(
        "train", "--data", shards[0], "--train-dir", train_dir, *TINY, "--init-from", evil
    )
    assert_one_line_error(done, "train", str(evil), "refuse")
    assert not marker.exists()
    assert not (train_dir / "checkpoints").exists()


def test_eval_skip_corrupt_leaves_out_the_bad_record_and_says_so(damaged, baseline, shards):
    shard, offset = damaged["validation"]
    clean = run_incept("eval", "--data", shards[0], "--checkpoint", baseline, "--json")
    assert clean.returncode == 0, clean.stderr
    total = json.loads(clean.stdout.splitlines()[-1])["examples"]
    done = run_incept(
        "eval", "--data", damaged["folder"], "--checkpoint", baseline, "--skip-corrupt"
    )
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    warnings = [line for line in done.stderr.splitlines() if "skipped a corrupt record" in line]
    assert len(warnings) == 1 and str(shard) in warnings[0]
    assert f"byte offset {offset} " in warnings[0]
    lines = done.stdout.splitlines()
    assert lines[-2] == "left out 1 corrupt records (listed above)"
    assert lines[-1].endswith(f"[{total - 1} examples]")


def test_train_skip_corrupt_trains_through_a_damaged_shard(damaged, tmp_path):
    """Every record of the first train shard is damaged: each is logged and replaced by the
    next readable record, and the run completes its steps."""
    shard, offsets = damaged["train"]
    train_dir = tmp_path / "run"
    done = run_incept(
        "train", "--data", damaged["folder"], "--train-dir", train_dir, *TINY,
        "--max-steps", "3", "--skip-corrupt",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    named = [
        int(line.split("byte offset ")[1].split()[0])
        for line in done.stderr.splitlines()
        if "skipped a corrupt record" in line
    ]
    assert named and set(named) <= set(offsets)
    assert (train_dir / "checkpoints").is_dir()
