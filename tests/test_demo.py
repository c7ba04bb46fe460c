"""`incept demo`: its data and, in the quick mode, every step end to end."""

import json
import subprocess
import sys

import numpy as np
import onnx
from PIL import Image

from incept.demo.patterns import TASK_MORE_PATTERNS, TASK_PATTERNS, draw_image, make_task


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


def test_quick_demo_runs_every_step(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "incept", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for command in ["build-data", "train", "eval", "classify", "export"]:
        assert f"$ incept {command} " in result.stdout
    assert "--init-from" in result.stdout  # the fine-tuning step
    assert (out / "report.png").is_file()
    onnx.checker.check_model(onnx.load(out / "more_patterns.onnx"))
    predictions = [json.loads(x) for x in result.stdout.splitlines() if x.startswith('{"image"')]
    assert len(predictions) == len(TASK_MORE_PATTERNS)
    assert "Everything is in" in result.stdout and "Traceback" not in result.stderr
    # a second run replaces the first demo's results; a foreign folder is refused
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
