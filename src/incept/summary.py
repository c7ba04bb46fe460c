"""What a network is made of: each end point's output shape, parameters and multiply-adds.

Runs the network once on PyTorch's "meta" device, so shapes and counts come without memory
or arithmetic, even for full-size models.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from incept import nets
from incept.errors import UserError
from incept.limits import MIN_IMAGE_SIZE


@dataclass
class Row:
    name: str
    shape: tuple[int, ...]  # one example, NCHW without N
    parameters: int
    mult_adds: int


def summarize(model_name: str, *, image_size: int, **kwargs) -> list[Row]:
    """Rows for every end point of `model_name` at `image_size` (batch of one)."""
    if image_size < MIN_IMAGE_SIZE:
        raise UserError(f"--image-size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    with torch.device("meta"):
        model = nets.create(model_name, **kwargs).eval()
    # Each stage's cost goes to its end point's row: a level that is not an end point (slim's
    # Repeat stacks) to the next one, the classifier to Logits.
    row_of, waiting = {}, []
    for stage, kind in model.stages:
        if kind == "hidden":
            waiting.append(stage)
            continue
        row_of[stage] = {"head": "Logits", "pool": "global_pool"}.get(kind, stage)
        if kind != "aux":  # the aux head branches off: the main path's levels are not its
            row_of.update(dict.fromkeys(waiting, row_of[stage]))
            waiting = []
    stage_of = {}
    for stage, _ in model.stages:
        for module in model._modules[stage].modules():
            stage_of[module] = stage
    mult_adds: dict[str, int] = {}
    parameters: dict[str, int] = {}

    def count_conv(module, inputs, output):
        per_output = module.in_channels // module.groups
        per_output *= module.kernel_size[0] * module.kernel_size[1]
        row = row_of[stage_of[module]]
        mult_adds[row] = mult_adds.get(row, 0) + output.numel() * per_output

    hooks = [
        m.register_forward_hook(count_conv) for m in model.modules() if isinstance(m, nn.Conv2d)
    ]
    for module in model.modules():  # fully connected layers: fixed cost per example
        if isinstance(module, nn.Linear):
            row = row_of[stage_of[module]]
            mult_adds[row] = mult_adds.get(row, 0) + module.in_features * module.out_features
    with torch.no_grad():
        points = model.end_points(torch.empty(1, 3, image_size, image_size, device="meta"))
    for hook in hooks:
        hook.remove()
    for stage, _ in model.stages:
        row = row_of[stage]
        parameters[row] = parameters.get(row, 0) + sum(
            p.numel() for p in model._modules[stage].parameters()
        )
    return [
        Row(name, tuple(value.shape[1:]), parameters.get(name, 0), mult_adds.get(name, 0))
        for name, value in points.items()
    ]


def format_table(rows: list[Row]) -> str:
    width = max(len(r.name) for r in rows + [Row("Total", (), 0, 0)])
    lines = [f"{'end point':<{width}}  {'output shape':>18}  {'parameters':>12}  {'mult-adds':>15}"]
    lines.append("-" * len(lines[0]))
    for row in rows:
        shape = " x ".join(str(d) for d in row.shape)
        lines.append(
            f"{row.name:<{width}}  {shape:>18}  {row.parameters:>12,}  {row.mult_adds:>15,}"
        )
    lines.append("-" * len(lines[0]))
    total_params = sum(r.parameters for r in rows)
    total_macs = sum(r.mult_adds for r in rows)
    lines.append(f"{'Total':<{width}}  {'':>18}  {total_params:>12,}  {total_macs:>15,}")
    lines.append(
        f"{total_params / 1e6:.2f} M parameters, {total_macs / 1e9:.2f} G multiply-adds per image"
    )
    return "\n".join(lines)
