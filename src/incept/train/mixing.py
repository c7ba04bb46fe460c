"""Mixup and CutMix on the training batch (recipe keys `mixup`, `cutmix`, `mixup_prob`,
`mixup_switch_prob`; timm's names and meanings, its "batch" mode).

A mixed batch pairs image i with image n-1-i (the batch reversed) and one share `lam` for the
whole batch, drawn from Beta(alpha, alpha):
- mixup: pixels lam * x_i + (1 - lam) * x_(n-1-i);
- CutMix: a box of area (1 - lam) of the image, its centre uniform and the box clipped to
  the image, filled from the partner; lam is then the share of the image left uncovered
  (timm's `correct_lam`).
The target is lam of the image's label and 1 - lam of the partner's (each smoothed as the
recipe's label_smoothing says): cross entropy is linear in the target, so the loss is
lam * CE(y_i) + (1 - lam) * CE(y_(n-1-i)), with class weights each term weighed by its
class's.

`mixup_prob` is the chance that a batch is mixed at all; with both on, `mixup_switch_prob` the
chance that a mixed batch is CutMix rather than mixup. Every draw comes from a generator keyed
by (seed, step, replica, micro-batch), so a resumed run mixes exactly as the first time and
the draws do not depend on anything else in the run. Each replica mixes within its own share
of the global batch, and under --accumulate each micro-batch on its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Keeps the mixing draws apart from any other generator keyed by the same step.
_STREAM = 0x6D6978


@dataclass(frozen=True)
class Mixed:
    """The targets of a mixed batch: `share` of `labels` and 1 - share of `partners`."""

    labels: torch.Tensor
    partners: torch.Tensor
    share: float


def mixing_on(recipe) -> bool:
    return recipe.mixup_prob > 0 and (recipe.mixup > 0 or recipe.cutmix > 0)


def mixing_line(recipe) -> str:
    """What the run says of its mixing, in one line."""
    kinds = []
    if recipe.mixup > 0:
        kinds.append(f"mixup (alpha {recipe.mixup:g})")
    if recipe.cutmix > 0:
        kinds.append(f"CutMix (alpha {recipe.cutmix:g})")
    switch = f", CutMix in {recipe.mixup_switch_prob:g} of them" if len(kinds) == 2 else ""
    return f"{' and '.join(kinds)} on {recipe.mixup_prob:g} of the batches{switch}"


def mix_batch(
    images: torch.Tensor, labels: torch.Tensor, recipe, step: int, rank: int, micro: int
) -> tuple[torch.Tensor, Mixed | None]:
    """The batch mixed as the recipe asks (in place), and its targets; None: left unmixed."""
    rng = np.random.default_rng([recipe.seed, step, rank, micro, _STREAM])
    if rng.random() >= recipe.mixup_prob or len(images) < 2:
        return images, None
    use_cutmix = recipe.cutmix > 0 and (
        recipe.mixup <= 0 or rng.random() < recipe.mixup_switch_prob
    )
    alpha = recipe.cutmix if use_cutmix else recipe.mixup
    lam = float(rng.beta(alpha, alpha))
    partners = labels.flip(0)
    if use_cutmix:
        height, width = images.shape[-2:]
        top, bottom, left, right = cut_box(rng, height, width, lam)
        images[..., top:bottom, left:right] = images.flip(0)[..., top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (height * width)
    else:
        partner = images.flip(0)  # a copy, taken before the batch changes
        images.mul_(lam).add_(partner, alpha=1.0 - lam)
    return images, Mixed(labels, partners, lam)


def cut_box(rng: np.random.Generator, height: int, width: int, lam: float):
    """CutMix's box (top, bottom, left, right): sides sqrt(1 - lam) of the image's, its
    centre uniform over the image, clipped to it."""
    cut = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    centre_y, centre_x = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = max(centre_y - cut_h // 2, 0), min(centre_y + (cut_h + 1) // 2, height)
    left, right = max(centre_x - cut_w // 2, 0), min(centre_x + (cut_w + 1) // 2, width)
    return top, bottom, left, right
