"""`incept summary --diagram`: the network drawn from its spec, as an SVG schematic.

One row per end point, top to bottom: a stem layer is one box; a block shows its branches side
by side, each a column of layers, meeting in a concatenation (or a residual sum); the aux head
hangs off the side. Each row is labelled with its end-point name and output shape.
"""

from __future__ import annotations

import os
from html import escape

import torch

from incept import nets
from incept.files import write_atomically
from incept.spec.nodes import AuxHead, Classifier, Concat, Conv, Net, Residual, Seq, _Pool

BOX_W, BOX_H, GAP, COLUMN_GAP = 118, 20, 6, 10
LEFT, SHAPE_W, TOP = 150, 130, 50
COLOURS = {
    "conv": "#cfe2f3",
    "pool": "#fce5cd",
    "concat": "#d9d9d9",
    "sum": "#d9d2e9",
    "fc": "#d9ead3",
}


def _label(node, width: float, min_depth: int) -> tuple[str, str]:
    """(kind, text) for a leaf."""
    if isinstance(node, Conv):
        k = f"{node.kernel[0]}x{node.kernel[1]}"
        if node.out is None:
            channels = "shortcut"
        else:
            channels = max(int(node.out * width), min_depth) if node.scaled else node.out
        stride = f" /{node.stride}" if node.stride > 1 else ""
        return "conv", f"conv {k}{stride}, {channels}"
    if isinstance(node, _Pool):
        stride = f" /{node.stride}" if node.stride > 1 else ""
        op = "max" if node.op == "MaxPool" else "avg"
        return "pool", f"{op} pool {node.kernel[0]}x{node.kernel[1]}{stride}"
    if not node.num_classes:
        return "pool", "global avg pool"  # a net without logits
    return "fc", f"fc {node.num_classes}"


def _column(node, width, min_depth) -> list[tuple[str, str]]:
    """A branch as one column of boxes; parallel layers inside it share one box."""
    if isinstance(node, (Conv, _Pool, Classifier)):
        return [_label(node, width, min_depth)]
    if isinstance(node, Concat):
        labels = [text for item in node.items for _, text in _column(item, width, min_depth)]
        kernels = [text.split(",")[0].removeprefix("conv ") for text in labels]
        channels = {text.split(", ")[-1] for text in labels}
        if len(channels) == 1 and all(text.startswith("conv") for text in labels):
            return [("conv", f"conv {' | '.join(kernels)}, {channels.pop()}")]
        return [("conv", " | ".join(labels))]
    return [box for item in node.items for box in _column(item, width, min_depth)]


def _segments(node, width, min_depth) -> list:
    """A top-level node as stacked segments: ("box", kind, text) spanning the row, or
    ("parallel", columns) for branches side by side."""
    if isinstance(node, (Conv, _Pool, Classifier)):
        return [("box", *_label(node, width, min_depth))]
    if isinstance(node, Concat):
        columns = [_column(item, width, min_depth) for item in node.items]
        return [("parallel", columns), ("box", "concat", "concatenate")]
    segments = [seg for item in node.items for seg in _segments(item, width, min_depth)]
    if isinstance(node, Residual):
        segments.append(("box", "sum", f"x + {node.scale} * (above)"))
    return segments


def _top_level(body):
    for node in body:
        if isinstance(node, Seq) and node.name is None:
            yield from _top_level(node.items)
        else:
            yield node


def render(spec: Net, shapes: dict, *, width: float, min_depth: int) -> str:
    """The SVG text for `spec`, with `shapes` ({end point: shape without batch}) as labels."""
    parts, y, right = [], TOP, 0
    for node in _top_level(spec.body):
        if isinstance(node, AuxHead) and "AuxLogits" not in shapes:
            continue
        segments = _segments(node, width, min_depth)
        x0 = LEFT + (BOX_W + COLUMN_GAP if isinstance(node, AuxHead) else 0)
        columns = max((len(seg[1]) for seg in segments if seg[0] == "parallel"), default=1)
        span = columns * (BOX_W + COLUMN_GAP) - COLUMN_GAP
        top = y
        for segment in segments:
            if segment[0] == "box":
                parts.append(_box(x0, y + GAP, segment[1], segment[2], span))
                y += BOX_H + GAP
                continue
            for index, column in enumerate(segment[1]):
                x = x0 + index * (BOX_W + COLUMN_GAP)
                for row, (kind, text) in enumerate(column):
                    parts.append(_box(x, y + GAP + row * (BOX_H + GAP), kind, text))
            y += max(len(column) for column in segment[1]) * (BOX_H + GAP)
        y += GAP
        middle = (top + y) / 2 + 4
        name = node.name
        if isinstance(node, Classifier):
            name = "Logits" if node.num_classes else "global_pool"
        shape = " x ".join(str(d) for d in shapes.get(name, ()))
        right = max(right, x0 + span)
        parts.append(
            f'<rect x="4" y="{top + 2}" width="{LEFT - 12}" height="{y - top - 4}" class="frame"/>'
            f'<text x="10" y="{middle}" class="name">{escape(name)}</text>'
            f'<text x="{x0 + span + 14}" y="{middle}" class="shape">{escape(shape)}</text>'
        )
        y += GAP
    total_w = right + SHAPE_W + 20
    title = f"{spec.scope}: width {width}, input {shapes.get('input', '')}"
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{y + 20}" '
        f'viewBox="0 0 {total_w} {y + 20}" font-family="sans-serif" font-size="11">'
        "<style>.name{font-weight:bold}.shape{fill:#444}.frame{fill:none;stroke:#ddd}"
        "rect.box{stroke:#555;stroke-width:0.8}</style>"
        '<rect width="100%" height="100%" fill="white"/>'
        f'<text x="10" y="28" font-size="15" font-weight="bold">{escape(title)}</text>'
        + "".join(parts)
        + "</svg>\n"
    )


def _box(x, y, kind, text, width=BOX_W) -> str:
    return (
        f'<rect x="{x}" y="{y}" width="{width}" height="{BOX_H}" rx="3" class="box {kind}" '
        f'fill="{COLOURS[kind]}"/>'
        f'<text x="{x + width / 2}" y="{y + BOX_H / 2 + 4}" text-anchor="middle">'
        f"{escape(text)}</text>"
    )


def write_diagram(path: str | os.PathLike, model_name: str, *, image_size: int, **kwargs) -> None:
    """Draws `model_name` (built with `kwargs`) at `image_size` into the SVG file `path`."""
    with torch.device("meta"):
        model = nets.create(model_name, **kwargs).eval()
        points = model.end_points(torch.empty(1, 3, image_size, image_size))
    shapes = {k: tuple(v.shape[1:]) for k, v in points.items()}
    shapes["input"] = f"{image_size}x{image_size}"
    entry = nets.registry.entry(model_name)
    config = model.config
    spec = entry.spec(
        num_classes=config["num_classes"], dropout=config["dropout"], **entry.defaults
    )
    svg = render(spec, shapes, width=config["width"], min_depth=config["min_depth"])
    write_atomically(path, svg)
