"""`incept demo`: its data, and every step end to end with the figures it reports."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from PIL import Image

from incept.demo.patterns import TASK_MORE_PATTERNS, TASK_PATTERNS, draw_image, make_task
from incept.demo.run import run_demo


def test_patterns_are_repeatable_and_distinct(tmp_path):
    first = make_task(tmp_path / "a", TASK_PATTERNS[:2], 3, size=64, seed=5)
    again = make_task(tmp_path / "b", TASK_PATTERNS[:2], 3, size=64, seed=5)
    for path in sorted(first.rglob("*.jpg")):
        assert path.read_bytes() == (again / path.relative_to(first)).read_bytes()
    with Image.open(next(first.rglob("*.jpg"))) as image:
        assert image.size == (64, 64) and image.mode == "RGB"
    assert not set(TASK_PATTERNS) & set(TASK_MORE_PATTERNS)  # two tasks, no shared class


def test_horizontal_and_vertical_gratings_vary_along_one_axis():
    rng = np.random.default_rng(0)
    for pattern, axis in [("horizontal", 1), ("vertical", 0)]:
        along = across = 0.0
        for _ in range(8):
            pixels = np.asarray(draw_image(pattern, rng, 96), dtype=float).mean(axis=2)
            along += pixels.mean(axis=axis).var()  # the profile across the stripes
            across += pixels.mean(axis=1 - axis).var()  # along them: noise and lighting only
        assert along > 4 * across, pattern


@pytest.mark.slow
def test_demo_runs_every_step_and_fine_tuning_beats_scratch(tmp_path, capsys):
    """The full demo (three to six minutes on two cores): every step, and the transfer-learning
    claim on real training: the model fine-tuned from task 1 beats the one trained from
    scratch on task 2 with the same 120 steps (measured 0.88 against 0.65 with the recipe's
    0.35 crops, 0.80 against 0.48 with the original's)."""
    out = tmp_path / "demo"
    figures = run_demo(out)
    printed = capsys.readouterr().out
    for command in ["build-data", "train", "eval", "classify", "export"]:
        assert f"$ incept {command} " in printed
    assert "--init-from" in printed and "Everything is in" in printed
    assert figures["task1"]["top1"] > 0.5  # 6 classes: chance is 0.17
    # Over four seeds fine-tuning led by 0.20 to 0.33 (tiny runs swing with any change of
    # floating-point rounding, so the margin leaves room).
    assert figures["finetuned"]["top1"] >= figures["scratch"]["top1"] + 0.15
    assert figures["task1"]["examples"] == 90 and figures["finetuned"]["examples"] == 40
    assert (out / "report.png").is_file()
    onnx.checker.check_model(onnx.load(out / "more_patterns.onnx"))
    predictions = [json.loads(x) for x in printed.splitlines() if x.startswith('{"image"')]
    right = [p["top"][0]["label"] == c for p, c in zip(predictions, TASK_MORE_PATTERNS)]
    # One image per class, from a model right on about three in four: chance is one in four.
    assert len(right) == 4 and sum(right) >= 2


def test_demo_refuses_a_folder_that_is_not_a_previous_demos(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("keep me")
    refused = subprocess.run(
        [sys.executable, "-m", "incept", "demo", "--quick", "--out", str(foreign)],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "not a previous demo's" in refused.stderr
    assert (foreign / "thesis.txt").read_text() == "keep me"
