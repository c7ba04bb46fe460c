"""Shared pieces of the training tests: a tiny image folder and a way to run `incept`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.subprocess_env import environment

# Tiny and fast: a tenth of the channels, the smallest input the network takes, fp32 (exact
# and the same on every processor), no loader processes.
TINY = [
    "--recipe", "small_data_cpu", "--width", "0.1", "--image-size", "75", "--batch-size", "8",
    "--workers", "0", "--precision", "fp32", "--eval-every", "0",
]  # fmt: skip


def make_image_folder(root: Path, classes: int = 3, per_class: int | tuple = 12) -> Path:
    """64x48 JPEGs, each class a different dominant colour plus noise; `per_class` may give
    each class its own count (an imbalanced set)."""
    rng = np.random.default_rng(0)
    counts = per_class if isinstance(per_class, tuple) else (per_class,) * classes
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(counts[c]):
            pixels = rng.integers(0, 90, size=(48, 64, 3), dtype=np.uint8)
            pixels[..., c % 3] += 150
            Image.fromarray(pixels).save(folder / f"{i:02d}.jpg", quality=90)
    return root


@pytest.fixture(scope="session")
def image_folder_factory():
    """`image_folder_factory(root, classes=3, per_class=12)` makes another image folder."""
    return make_image_folder


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """3 classes of 12 images: 33 for training, 3 held out (the split build-data makes)."""
    return make_image_folder(tmp_path_factory.mktemp("images"))


def train_in_process(data: Path, train_dir: Path, tiny_flags, *flags: str) -> Path:
    """`incept train` with the tiny flags in this process; fails the test unless it exits 0."""
    from incept.cli import main

    argv = ["train", "--data", str(data), "--train-dir", str(train_dir), *tiny_flags, *flags]
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    return train_dir


def run_incept(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "incept", *args],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def incept_env() -> dict:
    """The environment a subprocess running incept gets (this checkout's package first)."""
    return environment()


@pytest.fixture(scope="session")
def incept_cli():
    """`incept_cli(*args)`: runs `python -m incept ARGS` in a fresh process."""
    return run_incept


@pytest.fixture(scope="session")
def tiny_flags() -> list[str]:
    return list(TINY)


def as_if_killed_after(whole: Path, copy: Path, step: int, later: str) -> Path:
    """`whole`'s train dir as it stood after the checkpoint of `step`: a copy without the
    later checkpoint folder `later` and without the metrics logged after `step`."""
    import json
    import shutil

    shutil.copytree(whole, copy)
    shutil.rmtree(copy / "checkpoints" / later)
    records = (whole / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in records if json.loads(line).get("step", 0) <= step]
    (copy / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    return copy
