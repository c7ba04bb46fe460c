"""The demo's data, drawn on the spot: photographs of nothing, but not trivial either.

Each image is a filled shape of random colour, size, position and rotation on a cluttered
background (a colour gradient, stray lines and blobs, sensor-like noise), saved as a JPEG in
an image folder `OUT/<class>/<n>.jpg`, so the demo walks the same path as a user's photos.
The same seed always draws the same images. Two related tasks share the drawing code:
`TASK_SHAPES` (six shapes, to learn from scratch) and `TASK_MORE_SHAPES` (four others, fewer
images: the fine-tuning task).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

TASK_SHAPES = ("circle", "square", "triangle", "star", "cross", "hexagon")
TASK_MORE_SHAPES = ("ring", "pentagon", "diamond", "arrow")


def _polygon(points: int, radius: float, inner: float | None = None, turn: float = 0.0):
    """Vertices of a regular polygon (or a star, with `inner` radius) around the origin."""
    corners = []
    steps = points * 2 if inner else points
    for i in range(steps):
        angle = turn + 2 * math.pi * i / steps - math.pi / 2
        r = (inner if inner and i % 2 else radius) if inner else radius
        corners.append((r * math.cos(angle), r * math.sin(angle)))
    return corners


def _outline(shape: str, radius: float) -> list[tuple[float, float]] | None:
    """The shape as a polygon around the origin (None for the round ones)."""
    r = radius
    if shape == "square":
        return _polygon(4, r, turn=math.pi / 4)
    if shape == "diamond":
        return [(0, -r), (0.6 * r, 0), (0, r), (-0.6 * r, 0)]
    if shape == "triangle":
        return _polygon(3, r)
    if shape == "pentagon":
        return _polygon(5, r)
    if shape == "hexagon":
        return _polygon(6, r)
    if shape == "star":
        return _polygon(5, r, inner=0.42 * r)
    if shape == "cross":
        a, b = 0.33 * r, r
        return [(-a, -b), (a, -b), (a, -a), (b, -a), (b, a), (a, a), (a, b), (-a, b),
                (-a, a), (-b, a), (-b, -a), (-a, -a)]  # fmt: skip
    if shape == "arrow":
        return [(-r, -0.25 * r), (0.1 * r, -0.25 * r), (0.1 * r, -0.7 * r), (r, 0),
                (0.1 * r, 0.7 * r), (0.1 * r, 0.25 * r), (-r, 0.25 * r)]  # fmt: skip
    return None


def _rotate(points, angle: float, centre: tuple[float, float]):
    c, s = math.cos(angle), math.sin(angle)
    return [(centre[0] + x * c - y * s, centre[1] + x * s + y * c) for x, y in points]


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    start, end = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    ramp = np.linspace(0, 1, size)[:, None, None]
    pixels = start * (1 - ramp) + end * ramp
    pixels = np.broadcast_to(pixels, (size, size, 3))
    if rng.random() < 0.5:
        pixels = pixels.transpose(1, 0, 2)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(0, 3)):  # clutter: lines and small blobs
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        x0, y0, x1, y1 = (int(v) for v in rng.integers(0, size, 4))
        if rng.random() < 0.5:
            draw.line((x0, y0, x1, y1), fill=colour, width=int(rng.integers(1, 4)))
        else:
            r = int(rng.integers(2, size // 12))
            draw.ellipse((x0 - r, y0 - r, x0 + r, y0 + r), fill=colour)
    return image


def draw_image(shape: str, rng: np.random.Generator, size: int = 128) -> Image.Image:
    """One image of `shape`."""
    image = _background(rng, size)
    draw = ImageDraw.Draw(image)
    radius = size * rng.uniform(0.24, 0.4)
    centre = tuple(size / 2 + rng.uniform(-0.12, 0.12, 2) * size)
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    outline = _outline(shape, radius)
    if outline is not None:
        draw.polygon(_rotate(outline, rng.uniform(0, 2 * math.pi), centre), fill=colour)
    else:
        box = (centre[0] - radius, centre[1] - radius, centre[0] + radius, centre[1] + radius)
        if shape == "ring":
            draw.ellipse(box, outline=colour, width=max(2, int(radius * 0.35)))
        else:
            draw.ellipse(box, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.0)))
    noise = rng.normal(0, rng.uniform(2, 6), (size, size, 3))
    pixels = np.clip(np.asarray(image, dtype=np.float32) + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_task(out_dir: str | Path, shapes, per_class: int, *, size: int = 128, seed: int = 0):
    """Writes `per_class` JPEGs of each shape into `out_dir/<shape>/`; returns `out_dir`."""
    out_dir = Path(out_dir)
    for label, shape in enumerate(shapes):
        folder = out_dir / shape
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, label])
        for index in range(per_class):
            draw_image(shape, rng, size).save(folder / f"{shape}_{index:04d}.jpg", quality=90)
    return out_dir
