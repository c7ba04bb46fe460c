"""The end-of-run picture: loss, accuracy and learning-rate curves from metrics.jsonl, in a PNG.

Drawn with Pillow (already a dependency) rather than matplotlib: three panels of polylines with
their value ranges written on the axes, which is all a glance at a run needs.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, ImageDraw

from incept.files import AtomicFile
from incept.train.progress import read_metrics

PANEL = (420, 300)
MARGIN = 48
COLOURS = {"train": (31, 119, 180), "eval": (214, 39, 40)}


def _series(records: list[dict], key: str) -> list[tuple[float, float]]:
    return [(r["step"], r[key]) for r in records if r.get(key) is not None]


def _draw_panel(draw: ImageDraw.ImageDraw, left: int, title: str, lines: dict) -> None:
    width, height = PANEL
    box = (left + MARGIN, MARGIN // 2 + 12, left + width - 12, height - MARGIN)
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((left + MARGIN, 6), title, fill=(0, 0, 0))
    points = [point for series in lines.values() for point in series]
    if not points:
        draw.text((box[0] + 8, box[1] + 8), "no data", fill=(0, 0, 0))
        return
    x_low, x_high = min(p[0] for p in points), max(p[0] for p in points)
    y_low, y_high = min(p[1] for p in points), max(p[1] for p in points)
    x_span = (x_high - x_low) or 1
    y_span = (y_high - y_low) or abs(y_high) or 1

    def place(x: float, y: float) -> tuple[float, float]:
        return (
            box[0] + (x - x_low) / x_span * (box[2] - box[0]),
            box[3] - (y - y_low) / y_span * (box[3] - box[1]),
        )

    for label, series in lines.items():
        coords = [place(x, y) for x, y in series]
        if len(coords) == 1:
            x, y = coords[0]
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=COLOURS[label])
        else:
            draw.line(coords, fill=COLOURS[label], width=2)
    draw.text((left + 4, box[1]), f"{y_high:.3g}", fill=(0, 0, 0))
    draw.text((left + 4, box[3] - 10), f"{y_low:.3g}", fill=(0, 0, 0))
    draw.text((box[0], box[3] + 4), f"step {x_low:g}", fill=(0, 0, 0))
    draw.text((box[2] - 70, box[3] + 4), f"step {x_high:g}", fill=(0, 0, 0))
    legend_y = box[3] + 20
    for index, label in enumerate(name for name, series in lines.items() if series):
        draw.text((box[0] + 90 * index, legend_y), label, fill=COLOURS[label])


def draw_curves(train_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Writes TRAIN_DIR/curves.png (or `out`) atomically; returns its path."""
    records = read_metrics(train_dir)
    image = Image.new("RGB", (PANEL[0] * 3, PANEL[1]), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    panels = [
        ("loss", {"train": _series(records, "loss"), "eval": _series(records, "eval_loss")}),
        (
            "precision @ 1",
            {"train": _series(records, "top1"), "eval": _series(records, "eval_top1")},
        ),
        ("learning rate", {"train": _series(records, "lr")}),
    ]
    for index, (title, lines) in enumerate(panels):
        _draw_panel(draw, index * PANEL[0], title, lines)
    path = Path(out) if out is not None else Path(train_dir) / "curves.png"
    with AtomicFile(path) as file:
        image.save(file.file, format="PNG")
    return path
