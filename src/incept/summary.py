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


@dataclass
class Row:
    name: str
    shape: tuple[int, ...]  # one example, NCHW without N
    parameters: int
    mult_adds: int


def summarize(model_name: str, *, image_size: int, **kwargs) -> list[Row]:
    """Rows for every end point of `model_name` at `image_size` (batch of one)."""
    if image_size < 75:
        raise UserError(f"--image-size must be at least 75, got {image_size}")
    with torch.device("meta"):
        model = nets.create(model_name, **kwargs).eval()
    mult_adds: dict[str, int] = {}

    stage_of = {}
    for stage, _ in model.stages:
        for module in model._modules[stage].modules():
            stage_of[module] = stage

    def count_conv(module, inputs, output):
        per_output = module.in_channels // module.groups
        per_output *= module.kernel_size[0] * module.kernel_size[1]
        stage = stage_of[module]
        mult_adds[stage] = mult_adds.get(stage, 0) + output.numel() * per_output

    hooks = [
        m.register_forward_hook(count_conv) for m in model.modules() if isinstance(m, nn.Conv2d)
    ]
    for module in model.modules():  # fully connected layers: fixed cost per example
        if isinstance(module, nn.Linear):
            stage = stage_of[module]
            mult_adds[stage] = mult_adds.get(stage, 0) + module.in_features * module.out_features
    with torch.no_grad():
        points = model.end_points(torch.empty(1, 3, image_size, image_size, device="meta"))
    for hook in hooks:
        hook.remove()

    stage_params = {
        stage: sum(p.numel() for p in model._modules[stage].parameters())
        for stage, _ in model.stages
    }
    head = next((s for s, kind in model.stages if kind == "head"), None)
    rows = []
    for name, value in points.items():
        key = name if name in stage_params else (head if name == "Logits" else None)
        rows.append(
            Row(
                name,
                tuple(value.shape[1:]),
                stage_params.get(key, 0) if key else 0,
                mult_adds.get(key, 0) if key else 0,
            )
        )
    return rows


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
