"""The demo's data, drawn on the spot: two related tasks of textured images.

Each image blends two random colours through a pattern (a grating, a checkerboard, rings, ...)
with random frequency, phase and centre, then adds a lighting gradient, blur and sensor-like
noise, and is saved as a JPEG in an image folder `OUT/<class>/<n>.jpg`, so the demo walks the
same path as a user's photos. A pattern fills the frame, so the original's aggressive random
crops keep the class visible (small objects would often be cropped away), and a left-right flip
never turns one class into another. The same seed always draws the same images.

`TASK_PATTERNS` (six classes, to learn from scratch) and `TASK_MORE_PATTERNS` (four others,
fewer images: the fine-tuning task) share the low-level features: edges of every orientation
and frequency.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

TASK_PATTERNS = ("horizontal", "vertical", "diagonal", "checker", "rings", "dots")
TASK_MORE_PATTERNS = ("grid", "waves", "plaid", "spokes")


def _field(pattern: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """The pattern as values in [0, 1] on a size x size grid."""
    y, x = np.mgrid[0:size, 0:size] / size
    cycles = rng.uniform(3, 8)  # across the image
    phase = rng.uniform(0, 2 * np.pi)
    cy, cx = rng.uniform(0.2, 0.8, 2)
    wave = lambda t: 0.5 + 0.5 * np.sin(2 * np.pi * cycles * t + phase)  # noqa: E731
    if pattern == "horizontal":
        return wave(y)
    if pattern == "vertical":
        return wave(x)
    if pattern == "diagonal":  # either direction, so a left-right flip keeps the class
        return wave((x + y) / np.sqrt(2) if rng.random() < 0.5 else (x - y) / np.sqrt(2))
    if pattern == "checker":
        return (np.sign(np.sin(2 * np.pi * cycles * x + phase) * np.sin(2 * np.pi * cycles * y))
                + 1) / 2  # fmt: skip
    if pattern == "rings":
        return wave(np.hypot(x - cx, y - cy))
    if pattern == "dots":
        return (wave(x) * wave(y)) ** 2
    if pattern == "grid":
        lines = lambda t: np.abs(np.sin(np.pi * cycles * t + phase)) < 0.25  # noqa: E731
        return (lines(x) | lines(y)).astype(float)
    if pattern == "waves":
        return wave(y + 0.08 * np.sin(2 * np.pi * rng.uniform(1, 3) * x))
    if pattern == "plaid":
        other = rng.uniform(3, 8)
        return (wave(x) + 0.5 + 0.5 * np.sin(2 * np.pi * other * y)) / 2
    if pattern == "spokes":
        angle = np.arctan2(y - cy, x - cx)
        return 0.5 + 0.5 * np.sin(int(rng.integers(4, 12)) * angle + phase)
    raise ValueError(f"unknown pattern {pattern!r}")


def draw_image(pattern: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """One image of `pattern`."""
    field = _field(pattern, rng, size)[..., None]
    first, second = rng.integers(0, 256, (2, 3))
    pixels = first * (1 - field) + second * field
    light = np.linspace(rng.uniform(0.7, 1.0), rng.uniform(0.7, 1.0), size)[:, None, None]
    pixels = pixels * (light if rng.random() < 0.5 else light.transpose(1, 0, 2))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.2)))
    noise = rng.normal(0, rng.uniform(2, 10), (size, size, 3))
    return Image.fromarray(np.clip(np.asarray(image) + noise, 0, 255).astype(np.uint8))


def make_task(out_dir: str | Path, patterns, per_class: int, *, size: int = 128, seed: int = 0):
    """Writes `per_class` JPEGs of each pattern into `out_dir/<pattern>/`; returns `out_dir`."""
    out_dir = Path(out_dir)
    for label, pattern in enumerate(patterns):
        folder = out_dir / pattern
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, label])
        for index in range(per_class):
            image = draw_image(pattern, rng, size)
            image.save(folder / f"{pattern}_{index:04d}.jpg", quality=90)
    return out_dir
