"""Augmentation beyond the original's: RandAugment, TrivialAugment and random erasing
(recipe keys `auto_augment`, `ra_num_ops`, `ra_magnitude`, `random_erase`; the names of
torchvision's reference scripts), all off in the shipped recipes.

- `auto_augment = "ra"`: RandAugment (Cubuk et al. 2019) as torchvision defines it: each
  image gets `ra_num_ops` operations, each drawn uniformly from the 14 below, at the fixed
  magnitude bin `ra_magnitude` of 31, the signed ones negated with probability 1/2.
- `auto_augment = "ta_wide"`: TrivialAugment Wide (Mueller and Hutter 2021): one operation a
  image, drawn uniformly, at a magnitude bin drawn uniformly from 31, from the wider ranges.
- `random_erase = p`: with probability p, one rectangle of the image, 2% to 33% of its area
  with an aspect ratio log-uniform in [0.3, 3.3] (ten tries to fit), set to 0 (the middle of
  the model's [-1, 1] range, as torchvision's reference erases normalised images with 0).

Each image's draws (operations, magnitudes, signs, rectangle) come from its example generator
after its geometry and colour draws (preprocess.py), so they depend only on (seed, epoch,
record) and a run resumes exactly; a run without them draws nothing more. The operations
are torchvision's own kernels (transforms.v2.functional) on uint8, nearest interpolation and
a black fill for the geometric ones, applied after the crop, resize and flip and before the
original's colour distortion; the erasing comes last, on the float batch. On a CPU the
operations run in the loader's workers, image by image; with a CUDA device on the batch
there, grouped by (operation, magnitude).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

POLICIES = ("", "ra", "ta_wide")
OPERATIONS = (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
    "Color", "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize",
)  # fmt: skip
BINS = 31
_SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
           "Contrast", "Sharpness"}  # fmt: skip
ERASE_AREA = (0.02, 1 / 3)
ERASE_RATIO = (0.3, 3.3)
ERASE_TRIES = 10
_ERASE_COLUMNS = 5  # erased (0/1), top, left, height, width


def magnitudes(policy: str, operation: str, size: int) -> np.ndarray | None:
    """The 31 magnitudes of `operation` under `policy` for a size x size image, as float32
    (torchvision's tables); None for the operations without one."""
    wide = policy == "ta_wide"
    bins = np.arange(BINS, dtype=np.float32)
    linear = {
        "ShearX": 0.99 if wide else 0.3,
        "ShearY": 0.99 if wide else 0.3,
        "TranslateX": 32.0 if wide else 150.0 / 331.0 * size,
        "TranslateY": 32.0 if wide else 150.0 / 331.0 * size,
        "Rotate": 135.0 if wide else 30.0,
        "Brightness": 0.99 if wide else 0.9,
        "Color": 0.99 if wide else 0.9,
        "Contrast": 0.99 if wide else 0.9,
        "Sharpness": 0.99 if wide else 0.9,
    }
    if operation in linear:
        return torch.linspace(0.0, linear[operation], BINS).numpy()
    if operation == "Posterize":
        return np.round(8 - bins / ((BINS - 1) / (6 if wide else 4))).astype(np.float32)
    if operation == "Solarize":
        return torch.linspace(1.0, 0.0, BINS).numpy()
    return None


@dataclass(frozen=True)
class Augment:
    """What a training loader adds to the original's distortions (see the module)."""

    auto_augment: str = ""
    ra_num_ops: int = 2
    ra_magnitude: int = 9
    random_erase: float = 0.0

    @property
    def layers(self) -> int:
        """Operations an image gets."""
        return {"": 0, "ra": self.ra_num_ops, "ta_wide": 1}[self.auto_augment]

    @property
    def enabled(self) -> bool:
        return self.layers > 0 or self.random_erase > 0

    @property
    def columns(self) -> int:
        """Parameters an image carries: (operation, magnitude) a layer, then the rectangle."""
        return 2 * self.layers + _ERASE_COLUMNS

    def describe(self) -> str:
        parts = []
        if self.auto_augment == "ra":
            parts.append(f"RandAugment ({self.ra_num_ops} ops at magnitude {self.ra_magnitude})")
        elif self.auto_augment == "ta_wide":
            parts.append("TrivialAugment Wide")
        if self.random_erase > 0:
            parts.append(f"random erasing (p {self.random_erase:g})")
        return " and ".join(parts)


def check_augment(augment: Augment) -> None:
    from incept.errors import UserError

    if augment.auto_augment not in POLICIES:
        raise UserError(
            f"auto_augment must be one of 'ra' (RandAugment), 'ta_wide' (TrivialAugment Wide) "
            f"or '' (off), got {augment.auto_augment!r}"
        )
    if not (isinstance(augment.ra_num_ops, int) and 1 <= augment.ra_num_ops <= 16):
        raise UserError(f"ra_num_ops must be in [1, 16], got {augment.ra_num_ops!r}")
    if not (isinstance(augment.ra_magnitude, int) and 0 <= augment.ra_magnitude < BINS):
        raise UserError(f"ra_magnitude must be in [0, {BINS - 1}], got {augment.ra_magnitude!r}")
    if not (isinstance(augment.random_erase, (int, float)) and 0 <= augment.random_erase <= 1):
        raise UserError(f"random_erase must be in [0, 1], got {augment.random_erase!r}")


def draw_augment_params(rng: np.random.Generator, augment: Augment, size: int) -> torch.Tensor:
    """One image's row of `augment.columns` parameters, drawn from its example generator."""
    row: list[float] = []
    for _ in range(augment.layers):
        index = int(rng.integers(len(OPERATIONS)))
        operation = OPERATIONS[index]
        table = magnitudes(augment.auto_augment, operation, size)
        value = 0.0
        if table is not None:
            place = augment.ra_magnitude if augment.auto_augment == "ra" else rng.integers(BINS)
            value = float(table[int(place)])
            if operation in _SIGNED and rng.random() < 0.5:
                value = -value
        row += [float(index), value]
    row += _erase_box(rng, augment.random_erase, size)
    return torch.tensor(row, dtype=torch.float32)


def _erase_box(rng: np.random.Generator, probability: float, size: int) -> list[float]:
    if probability <= 0 or rng.random() >= probability:
        return [0.0] * _ERASE_COLUMNS
    area = size * size
    log_ratio = (math.log(ERASE_RATIO[0]), math.log(ERASE_RATIO[1]))
    for _ in range(ERASE_TRIES):
        target = area * rng.uniform(*ERASE_AREA)
        ratio = math.exp(rng.uniform(*log_ratio))
        height = int(round(math.sqrt(target * ratio)))
        width = int(round(math.sqrt(target / ratio)))
        if height < size and width < size:
            top = int(rng.integers(0, size - height + 1))
            left = int(rng.integers(0, size - width + 1))
            return [1.0, float(top), float(left), float(height), float(width)]
    return [0.0] * _ERASE_COLUMNS


def apply_operation(images: torch.Tensor, operation: str, magnitude: float) -> torch.Tensor:
    """One operation at one magnitude on uint8 images (... x 3 x H x W), torchvision's kernels."""
    nearest = InterpolationMode.NEAREST
    if operation == "ShearX":
        shear = [math.degrees(math.atan(magnitude)), 0.0]
        return F.affine(images, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                        interpolation=nearest, fill=None, center=[0, 0])  # fmt: skip
    if operation == "ShearY":
        shear = [0.0, math.degrees(math.atan(magnitude))]
        return F.affine(images, angle=0.0, translate=[0, 0], scale=1.0, shear=shear,
                        interpolation=nearest, fill=None, center=[0, 0])  # fmt: skip
    if operation in ("TranslateX", "TranslateY"):
        shift = [int(magnitude), 0] if operation == "TranslateX" else [0, int(magnitude)]
        return F.affine(images, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0],
                        interpolation=nearest, fill=None)  # fmt: skip
    if operation == "Rotate":
        return F.rotate(images, angle=magnitude, interpolation=nearest, fill=None)
    if operation == "Brightness":
        return F.adjust_brightness(images, brightness_factor=1.0 + magnitude)
    if operation == "Color":
        return F.adjust_saturation(images, saturation_factor=1.0 + magnitude)
    if operation == "Contrast":
        return F.adjust_contrast(images, contrast_factor=1.0 + magnitude)
    if operation == "Sharpness":
        return F.adjust_sharpness(images, sharpness_factor=1.0 + magnitude)
    if operation == "Posterize":
        return F.posterize(images, bits=int(magnitude))
    if operation == "Solarize":
        return F.solarize(images, threshold=255.0 * magnitude)
    if operation == "AutoContrast":
        return F.autocontrast(images)
    if operation == "Equalize":
        return F.equalize(images)
    return images  # Identity


def auto_augment(images: torch.Tensor, params: torch.Tensor, layers: int) -> torch.Tensor:
    """The drawn operations on a uint8 N x 3 x H x W batch (row i of `params` is image i's),
    layer by layer, each layer's images grouped by (operation, magnitude)."""
    if layers == 0:
        return images
    out = images.clone()
    table = params[:, : 2 * layers].cpu().tolist()
    for layer in range(layers):
        groups: dict[tuple[int, float], list[int]] = {}
        for image, row in enumerate(table):
            groups.setdefault((int(row[2 * layer]), row[2 * layer + 1]), []).append(image)
        for (index, magnitude), members in groups.items():
            if OPERATIONS[index] == "Identity":
                continue
            chosen = torch.tensor(members, device=images.device)
            out[chosen] = apply_operation(out[chosen], OPERATIONS[index], magnitude)
    return out


def random_erase(images: torch.Tensor, params: torch.Tensor, layers: int) -> torch.Tensor:
    """Sets each image's drawn rectangle of a float batch to 0, in place."""
    boxes = params[:, 2 * layers : 2 * layers + _ERASE_COLUMNS].cpu().tolist()
    for image, (erased, top, left, height, width) in enumerate(boxes):
        if erased:
            top, left = int(top), int(left)
            images[image, :, top : top + int(height), left : left + int(width)] = 0.0
    return images
