"""`incept eval --report DIR`: per-class figures, confusion matrix and misclassified files,
checked against counts made by hand from the same model's predictions; the default precision.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import inspect
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import incept
from incept.cli import build_parser, main
from incept.data import make_loader
from incept.data.build import build_data
from incept.data.example import decode_example
from incept.data.tfrecord import iter_records
from incept.evaluate import evaluate_source
from incept.report import FILES, confused_pairs, per_class
from incept.runtime.precision import resolve_precision
from incept.weights.checkpoint import save_checkpoint
from tests.subprocess_env import environment

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["ant", "bee", "cat", "dog"]
IMAGE_SIZE = 80


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """4 classes of 6 photos-like JPEGs (a flat colour plus noise), half of them held out."""
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("images")
    for name in CLASSES:
        (folder / name).mkdir()
        for i in range(6):
            colour = rng.integers(0, 256, 3)
            pixels = (colour + rng.normal(0, 30, (60, 70, 3))).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{name}{i}.jpg", quality=90)
    out = tmp_path_factory.mktemp("shards")
    build_data(folder, out, validation_fraction=0.5, workers=1)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A tiny Inception-v3 whose predictions depend on the image, saved as our checkpoint."""
    torch.manual_seed(0)
    model = incept.nets.create("inception_v3", num_classes=len(CLASSES), width=0.1)
    # Batch-norm statistics of real activations (a fresh net's shrink the signal to nothing)
    # and a spread-out head, as the classify tests make theirs.
    for norm in model.modules():
        if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
            norm.reset_running_stats()
            norm.momentum = None
    with torch.no_grad():
        colours = torch.rand(16, 3, 1, 1) * 2 - 1
        model.train()((colours + 0.2 * torch.randn(16, 3, IMAGE_SIZE, IMAGE_SIZE)).clamp(-1, 1))
        model.fc.weight.normal_(0, 0.5)
    meta = {
        "model": "inception_v3",
        "model_kwargs": {k: v for k, v in model.config.items() if k != "model"},
        "class_names": CLASSES,
        "image_size": IMAGE_SIZE,
        "recipe": {},
    }
    train_dir = tmp_path_factory.mktemp("run")
    save_checkpoint(train_dir, 7, model.state_dict(), {}, meta)
    return train_dir


@pytest.fixture(scope="module")
def by_hand(shards, run_dir) -> dict:
    """The model's own predictions, record by record, and the figures counted from them."""
    model = incept.nets.load(run_dir)
    loader = make_loader(
        shards, "validation", training=False, batch_size=5, image_size=IMAGE_SIZE, workers=0
    )
    with torch.no_grad():
        outputs = [(model(images).softmax(1), labels) for images, labels in loader]
    probabilities = torch.cat([p for p, _ in outputs])
    labels = torch.cat([y for _, y in outputs]).tolist()
    predicted = probabilities.argmax(1).tolist()
    # The names as the shards store them, read straight from the records.
    names = [
        decode_example(record)["image/filename"][0].decode()
        for shard in sorted(shards.glob("validation-*"))
        for record in iter_records(shard)
    ]
    count = len(CLASSES)
    confusion = [[0] * count for _ in range(count)]
    for true, guess in zip(labels, predicted):
        confusion[true][guess] += 1
    precision, recall = [], []
    for c in range(count):
        said_c = sum(1 for guess in predicted if guess == c)
        is_c = sum(1 for true in labels if true == c)
        right = sum(1 for true, guess in zip(labels, predicted) if true == guess == c)
        precision.append(right / said_c if said_c else None)
        recall.append(right / is_c if is_c else None)
    wrong = [
        (names[i], CLASSES[labels[i]], CLASSES[predicted[i]], probabilities[i, predicted[i]].item())
        for i in range(len(labels))
        if labels[i] != predicted[i]
    ]
    return {
        "confusion": confusion,
        "precision": precision,
        "recall": recall,
        "support": [labels.count(c) for c in range(count)],
        "misclassified": wrong,
        "examples": len(labels),
    }


def run_eval(*args: str, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as finished:
        main(["eval", *args])
    out, err = capsys.readouterr()
    return finished.value.code, out, err


@pytest.fixture(scope="module")
def report(shards, run_dir, tmp_path_factory) -> tuple[dict, Path, str]:
    """`incept eval --report DIR --json` once: its JSON object, DIR and stderr."""
    folder = tmp_path_factory.mktemp("report") / "nested" / "report"  # made as needed
    out, err = io.StringIO(), io.StringIO()
    redirected = contextlib.redirect_stdout(out), contextlib.redirect_stderr(err)
    with redirected[0], redirected[1], pytest.raises(SystemExit) as finished:
        main([
                "eval", "--data", str(shards), "--checkpoint", str(run_dir), "--workers", "0",
                "--batch-size", "3", "--precision", "fp32", "--report", str(folder), "--json",
            ])  # fmt: skip
    assert finished.value.code == 0, err.getvalue()
    return json.loads(out.getvalue().strip().splitlines()[-1]), folder, err.getvalue()


def test_the_report_counts_are_the_models_own(report, by_hand):
    result, _, _ = report
    # A meaningful check: some records right, some wrong.
    assert 0 < len(by_hand["misclassified"]) < by_hand["examples"] == result["examples"] == 12
    assert result["classes"] == CLASSES and result["precision"] == "fp32"
    assert result["confusion"] == by_hand["confusion"]
    for row, c in zip(result["per_class"], range(len(CLASSES))):
        assert row["class"] == CLASSES[c] and row["support"] == by_hand["support"][c]
        for key in ("precision", "recall"):
            expected = by_hand[key][c]
            assert row[key] == (None if expected is None else pytest.approx(expected))
    right = sum(by_hand["confusion"][c][c] for c in range(len(CLASSES)))
    assert result["top1"] == pytest.approx(right / 12)
    # Misclassified: exactly the records whose prediction differs, in record order.
    listed = [(m["file"], m["true"], m["predicted"]) for m in result["misclassified"]]
    assert listed == [m[:3] for m in by_hand["misclassified"]]
    assert all(name.startswith(f"{true}/{true}") for name, true, _ in listed)  # build-data's
    for m, expected in zip(result["misclassified"], by_hand["misclassified"]):
        # channels_last and other batch sizes move fp32 sums in the last digits
        assert m["probability"] == pytest.approx(expected[3], rel=1e-3)
    pairs = [(p["true"], p["predicted"], p["count"]) for p in result["confused_pairs"]]
    expected_pairs = sorted(
        ((t, g, n) for t, row in enumerate(by_hand["confusion"]) for g, n in enumerate(row)
         if t != g and n),
        key=lambda pair: (-pair[2], pair[0], pair[1]),
    )  # fmt: skip
    assert pairs == [(CLASSES[t], CLASSES[g], n) for t, g, n in expected_pairs]


def test_the_report_files_say_the_same(report, by_hand):
    result, folder, err = report
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)  # no temporary left
    assert err.splitlines()[0] == "evaluating in fp32 (precision fp32)"
    assert f"report written to {folder}" in err
    assert json.loads((folder / "report.json").read_text()) == result
    with open(folder / "per_class.csv") as file:
        rows = list(csv.DictReader(file))
    assert [r["class"] for r in rows] == CLASSES
    assert [int(r["support"]) for r in rows] == by_hand["support"]
    for r, recall in zip(rows, by_hand["recall"]):
        assert r["recall"] == ("" if recall is None else f"{recall:.4f}")
    with open(folder / "confusion.csv") as file:
        matrix = list(csv.reader(file))
    assert matrix[0][1:] == CLASSES and [row[0] for row in matrix[1:]] == CLASSES
    assert [[int(v) for v in row[1:]] for row in matrix[1:]] == by_hand["confusion"]
    text = (folder / "confusion.txt").read_text().splitlines()
    assert [[int(v) for v in line.split()[1:]] for line in text[1:]] == by_hand["confusion"]
    with open(folder / "misclassified.csv") as file:
        wrong = [tuple(row) for row in csv.reader(file)][1:]
    assert [row[:3] for row in wrong] == [m[:3] for m in by_hand["misclassified"]]
    summary = (folder / "summary.txt").read_text()
    assert summary.startswith(
        f"precision @ 1 = {result['top1']:.4f} recall @ 5 = {result['top5']:.4f} [12 examples]"
    )


def test_the_confusion_picture_is_a_png_of_the_matrix(report, by_hand):
    _, folder, _ = report
    data = (folder / "confusion.png").read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(folder / "confusion.png") as picture:
        picture.verify()
    picture = Image.open(folder / "confusion.png").convert("RGB")
    # 4 classes: 40-pixel cells whose top-right corner (clear of the count) shows the shade.
    cell, side = 40, picture.width
    margin = side - 10 - cell * len(CLASSES)
    for true, row in enumerate(by_hand["confusion"]):
        for guess, count in enumerate(row):
            r, g, b = picture.getpixel((margin + guess * cell + cell - 3, margin + true * cell + 3))
            if count == 0:
                assert (r, g, b) == (255, 255, 255)
            elif true == guess:
                assert b == 255 and r == g < 255  # blue: right answers
            else:
                assert r == 255 and g == b < 255  # red: confusions


def test_without_report_the_json_keeps_its_keys_and_stderr_names_the_precision(
    shards, run_dir, capsys
):
    code, out, err = run_eval(
        "--data", str(shards), "--checkpoint", str(run_dir), "--workers", "0", "--json",
        capsys=capsys,
    )  # fmt: skip
    assert code == 0
    assert set(json.loads(out.strip().splitlines()[-1])) == {"top1", "top5", "examples", "loss"}
    said = []
    plain = evaluate_source(str(shards), str(run_dir), workers=0, say=said.append)
    assert set(plain) == {"top1", "top5", "examples", "loss"}  # as before the reports
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert said == [f"evaluating in {resolve_precision('auto', device)} (precision auto)"]
    assert err.splitlines()[0] == said[0]


def test_a_report_path_that_is_a_file_fails_before_evaluating(shards, run_dir, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("mine")
    code, out, err = run_eval(
        "--data", str(shards), "--checkpoint", str(run_dir), "--report", str(taken),
        capsys=capsys,
    )  # fmt: skip
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        f"incept eval: error: --report {taken} is a file; give a folder"
    ]
    assert taken.read_text() == "mine"


def test_per_class_and_pairs_by_hand():
    confusion = [[3, 1, 0], [2, 0, 0], [0, 2, 0]]  # nothing was predicted as c
    rows = per_class(confusion, ["a", "b", "c"])
    assert rows[0] == {"class": "a", "precision": 3 / 5, "recall": 3 / 4, "support": 4}
    assert rows[1] == {"class": "b", "precision": 0.0, "recall": 0.0, "support": 2}
    assert rows[2] == {"class": "c", "precision": None, "recall": 0.0, "support": 2}
    assert per_class([[0, 0], [0, 1]], ["x", "y"])[0]["recall"] is None  # no record of x
    assert confused_pairs(confusion, ["a", "b", "c"]) == [
        {"true": "b", "predicted": "a", "count": 2},
        {"true": "c", "predicted": "b", "count": 2},
        {"true": "a", "predicted": "b", "count": 1},
    ]


def test_eval_default_precision_is_the_one_the_benchmark_measures():
    """`incept eval`, `evaluate_source` and benchmarks/eval_classify.py default to the same."""
    default = build_parser().parse_args(["eval", "--data", "d", "--checkpoint", "c"]).precision
    assert default == "auto"
    assert inspect.signature(evaluate_source).parameters["precision"].default == default
    spec = importlib.util.spec_from_file_location(
        "eval_classify", ROOT / "benchmarks" / "eval_classify.py"
    )
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    cpu = torch.device("cpu")
    assert benchmark.measured_precision(cpu) == resolve_precision(default, cpu)
    assert "`incept eval`'s default precision" in (ROOT / "BENCHMARKS.md").read_text()


@pytest.mark.slow
def test_under_torchrun_the_report_sums_and_gathers(shards, run_dir, report, tmp_path):
    """Two replicas (6 records each) give the single process's report."""
    single, _, _ = report
    folder = tmp_path / "replicated"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "incept", "eval", "--data", str(shards), "--checkpoint", str(run_dir),
        "--workers", "0", "--batch-size", "4", "--precision", "fp32", "--report", str(folder),
        "--json",
    ]  # fmt: skip
    done = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1  # only the first replica prints
    result = json.loads(printed[0])
    assert result["examples"] == 12
    assert result["confusion"] == single["confusion"]
    assert result["per_class"] == single["per_class"]
    listed = [(m["file"], m["true"], m["predicted"]) for m in result["misclassified"]]
    assert listed == [(m["file"], m["true"], m["predicted"]) for m in single["misclassified"]]
    assert json.loads((folder / "report.json").read_text()) == result


def test_a_failing_eval_makes_no_report_folder(tmp_path, capsys):
    # Found by tests/test_cli_fuzz.py: the folder was made before the data was opened.
    with pytest.raises(SystemExit) as stop:
        main([
            "eval", "--data", str(tmp_path / "missing"), "--checkpoint", str(tmp_path / "none"),
            "--report", str(tmp_path / "nothing" / "deeper"),
        ])  # fmt: skip
    assert stop.value.code != 0
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "nothing").exists()
