"""The original's image preprocessing: training distortions and evaluation crops.

The work is split in two, so that each half runs where it is cheapest:

- per example, on a loader worker, in uint8: the distorted crop (TensorFlow's
  `sample_distorted_bounding_box` rules), the resize with a random method, the random flip, and
  the drawing of the colour parameters (`distort_geometry`); or the evaluation's central crop and
  bilinear resize (`center_crop_resize`);
- per batch, where the batch lands (the accelerator when there is one): the colour distortion
  in one of the original's two orders, clipping and scaling to [-1, 1] (`distort_colour`), or the
  plain scaling for evaluation (`to_unit_range`).

Every random choice for an example comes from a generator seeded by (seed, epoch, example
index) alone (`example_rng`), so an image gets the same distortion whichever worker or replica
prepares it.
"""

from __future__ import annotations

import math
import threading
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from incept.data import colour_kernel

# research/inception image_processing.py: distort_image and distort_color.
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (0.75, 1.33)
AREA_RANGE = (0.05, 1.0)
MAX_ATTEMPTS = 100
BRIGHTNESS_MAX_DELTA = 32.0 / 255.0
SATURATION_RANGE = (0.5, 1.5)
HUE_MAX_DELTA = 0.2
CONTRAST_RANGE = (0.5, 1.5)
# research/inception image_processing.py: eval_image.
CENTRAL_FRACTION = 0.875

# The original's resize methods 0..3 (tf.image.ResizeMethod), with torch's uint8 kernels.
# torch has no box-filter resize for uint8, so "area" is the antialiased (triangle-filter)
# bilinear resize: like TF's area method it averages every source pixel when shrinking instead
# of sampling a few. torch's bicubic uses a = -0.75 where TF uses -0.5.
RESIZE_METHODS = ("bilinear", "nearest", "bicubic", "area")

# Columns of the per-example colour parameters that travel with a batch.
BRIGHTNESS, SATURATION, HUE, CONTRAST, ORDER = range(5)
COLOUR_PARAMS = 5
# ORDER is 0 for brightness, saturation, hue, contrast (the original's ordering 0) and 1 for
# brightness, contrast, saturation, hue (its ordering 1).
ORDER_CONTRAST_FIRST = 1.0


class Box(NamedTuple):
    """A crop window in pixels."""

    top: int
    left: int
    height: int
    width: int


def example_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one example's random choices, from (seed, epoch, index) only."""
    return np.random.default_rng((seed, epoch, index))


def _random_crop(
    height: int, width: int, aspect_ratio: float, rng: np.random.Generator, min_fraction: float
) -> Box | None:
    """One attempt of TF's GenerateRandomCrop: None when the constraints cannot be met.

    The crop's height (not its area) is uniform between the heights that give the smallest and
    the largest allowed area at this aspect ratio; its width is round(height * aspect_ratio);
    its corner is uniform over [0, size - crop) (TF never lets a crop smaller than the image
    touch the bottom or right edge).
    """
    min_area = min_fraction * width * height
    max_area = AREA_RANGE[1] * width * height
    crop_height = round(math.sqrt(min_area / aspect_ratio))
    max_height = round(math.sqrt(max_area / aspect_ratio))
    if round(max_height * aspect_ratio) > width:
        max_height = int((width + 0.5 - 1e-7) / aspect_ratio)
        if round(max_height * aspect_ratio) > width:
            max_height -= 1
    max_height = min(max_height, height)
    crop_height = min(crop_height, max_height)
    if crop_height < max_height:
        crop_height += int(rng.integers(max_height - crop_height + 1))
    crop_width = round(crop_height * aspect_ratio)
    area = crop_width * crop_height
    # TF's own nudges for rounding: one row more when too small, one less when too large.
    if area < min_area:
        crop_height += 1
        crop_width = round(crop_height * aspect_ratio)
        area = crop_width * crop_height
    if area > max_area:
        crop_height -= 1
        crop_width = round(crop_height * aspect_ratio)
        area = crop_width * crop_height
    if (
        area < min_area
        or area > max_area
        or not 0 < crop_width <= width
        or not 0 < crop_height <= height
    ):
        return None
    top = int(rng.integers(height - crop_height)) if crop_height < height else 0
    left = int(rng.integers(width - crop_width)) if crop_width < width else 0
    return Box(top, left, crop_height, crop_width)


def _pixel_boxes(boxes: np.ndarray, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """[0, 1] ymin, xmin, ymax, xmax boxes to TF's truncated pixel rectangles."""
    scale = np.array([height, width, height, width], dtype=np.float32)
    pixels = (np.asarray(boxes, dtype=np.float32).reshape(-1, 4) * scale).astype(np.int64)
    return [tuple(int(v) for v in box) for box in pixels]


def _covers(crop: Box, objects: list[tuple[int, int, int, int]]) -> bool:
    """TF's overlap rule: the crop holds at least MIN_OBJECT_COVERED of some object's area.

    Objects without area are ignored; with none left, no crop qualifies. (Plain Python: there
    are one or two objects, and numpy's per-call cost would dominate.)
    """
    if crop.height * crop.width < 1:
        return False
    bottom, right = crop.top + crop.height, crop.left + crop.width
    for ymin, xmin, ymax, xmax in objects:
        object_area = (ymax - ymin) * (xmax - xmin)
        if object_area < 1:
            continue
        inter_h = min(ymax, bottom) - max(ymin, crop.top)
        inter_w = min(xmax, right) - max(xmin, crop.left)
        # TF gives a zero rectangle to boxes that do not meet (a shared edge has 0 area).
        intersection = inter_h * inter_w if inter_h >= 0 and inter_w >= 0 else 0
        if intersection / object_area >= MIN_OBJECT_COVERED:
            return True
    return False


def sample_distorted_box(
    height: int,
    width: int,
    boxes: np.ndarray | None,
    rng: np.random.Generator,
    min_area: float = AREA_RANGE[0],
) -> Box:
    """TF's sample_distorted_bounding_box with the original's settings.

    `boxes` are the human boxes (K x 4, ymin, xmin, ymax, xmax in [0, 1]); with none the whole
    image is the object. Up to MAX_ATTEMPTS crops are drawn, each with an aspect ratio uniform
    in ASPECT_RATIO_RANGE and an area of at least `min_area` of the image's (the original's
    0.05 by default); the first that covers enough of one object wins, else the whole image.
    """
    objects = _pixel_boxes(boxes, height, width) if boxes is not None else []
    if not objects:
        objects = [(0, 0, height, width)]
    low, high = ASPECT_RATIO_RANGE
    for _ in range(MAX_ATTEMPTS):
        aspect_ratio = float(np.float32(rng.random() * (high - low) + low))
        crop = _random_crop(height, width, aspect_ratio, rng, min_area)
        if crop is not None and _covers(crop, objects):
            return crop
    return Box(0, 0, height, width)


def central_box(height: int, width: int, fraction: float = CENTRAL_FRACTION) -> Box:
    """tf.image.central_crop's window: the same margin is cut from both sides, rounded down."""
    top = int((height - height * fraction) / 2)
    left = int((width - width * fraction) / 2)
    return Box(top, left, height - 2 * top, width - 2 * left)


def resize(image: torch.Tensor, size: int, method: str = "bilinear") -> torch.Tensor:
    """Resize a uint8 3 x H x W image to 3 x size x size, ignoring the aspect ratio.

    Half-pixel sampling as TF 2's tf.image.resize; no antialiasing except for "area".
    """
    batch = image.unsqueeze(0)
    if method == "nearest":
        out = F.interpolate(batch, size=(size, size), mode="nearest-exact")
    elif method == "area":
        out = F.interpolate(batch, size=(size, size), mode="bilinear", antialias=True)
    else:
        out = F.interpolate(batch, size=(size, size), mode=method, align_corners=False)
    return out.squeeze(0)


def crop(image: torch.Tensor, box: Box) -> torch.Tensor:
    return image[:, box.top : box.top + box.height, box.left : box.left + box.width]


def center_crop_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Evaluation geometry: central 87.5% of each side, bilinear resize; uint8 in and out.

    Each pixel is the bilinear value rounded half up, so within half a level of TensorFlow's
    float pipeline, and the same in every process whatever its thread count. (torch's float32
    kernel errs by up to 1e-3 of a level and rounds differently with different thread counts,
    which moved values on a half level by a whole level between loader workers and the main
    process.) The exact values are rationals over (2 * size)^2, so a value that is not on a half
    level lies at least 1 / (2 * size)^2 from one, far more than float64's error (1e-11): adding
    0.5 + 1e-9 and rounding down gives the exact result, ties rounded up.
    """
    window = crop(image, central_box(image.shape[1], image.shape[2]))
    # Pixels interleaved (as decoding leaves them): torch's fast layout for this kernel.
    pixels = window.unsqueeze(0).to(torch.float64, memory_format=torch.channels_last)
    out = F.interpolate(pixels, size=(size, size), mode="bilinear")[0]
    return out.add_(0.5 + 1e-9).floor_().clamp_(0, 255).to(torch.uint8)


def draw_colour_params(rng: np.random.Generator) -> torch.Tensor:
    """One example's colour distortion: the row that `distort_colour` applies."""
    row = [
        rng.uniform(-BRIGHTNESS_MAX_DELTA, BRIGHTNESS_MAX_DELTA),
        rng.uniform(*SATURATION_RANGE),
        rng.uniform(-HUE_MAX_DELTA, HUE_MAX_DELTA),
        rng.uniform(*CONTRAST_RANGE),
        float(rng.integers(2)),
    ]
    return torch.tensor(row, dtype=torch.float32)


def distort_geometry(
    image: torch.Tensor,
    boxes: np.ndarray | None,
    size: int,
    rng: np.random.Generator,
    min_area: float = AREA_RANGE[0],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Training geometry for one uint8 3 x H x W image, plus its colour parameters; `min_area`:
    the smallest crop, as a fraction of the image's area.

    Returns the distorted uint8 3 x size x size image and the row of colour parameters.
    """
    box = sample_distorted_box(image.shape[1], image.shape[2], boxes, rng, min_area)
    method = RESIZE_METHODS[int(rng.integers(len(RESIZE_METHODS)))]
    out = resize(crop(image, box), size, method)
    if rng.random() < 0.5:
        out = out.flip(-1)
    return out, draw_colour_params(rng)


def to_unit_range(images: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 images to float in [-1, 1], the model's input ((x / 255 - 0.5) * 2).

    `out`: a float tensor of the same shape to write into (default: a new one).
    """
    if out is None:
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    return out.copy_(images).mul_(2.0 / 255.0).sub_(1.0)


# Images a CPU colour pass works on at once: enough to amortise the per-operation overhead,
# few enough that the float temporaries stay in the cache.
_CPU_CHUNK = 4
# Scratch planes of the CPU colour pass, kept per thread: fresh multi-megabyte buffers cost
# more in page faults than the arithmetic done in them.
_scratch = threading.local()


def _scratch_planes(count: int, like: torch.Tensor) -> torch.Tensor:
    shape = (count, like.shape[0], 1, *like.shape[2:])
    planes = getattr(_scratch, "planes", None)
    if planes is None or planes.shape != shape or planes.device != like.device:
        planes = torch.empty(shape, dtype=torch.float32, device=like.device)
        if like.device.type == "cpu":
            _scratch.planes = planes
    return planes


def distort_colour(
    images: torch.Tensor, params: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """The original's colour distortion of a uint8 N x 3 x H x W batch, then [-1, 1].

    Row i of `params` (N x COLOUR_PARAMS, from `draw_colour_params`) holds image i's brightness
    delta, saturation factor, hue delta, contrast factor and order. The result equals
    TensorFlow's adjust_brightness, adjust_saturation, adjust_hue and adjust_contrast applied in
    that order on the image in [0, 1], clip_by_value(0, 1) and (x - 0.5) * 2, to float rounding.
    Runs on the batch's device: on a CPU as one compiled loop per image (`colour_kernel`), or,
    where that cannot run, with tensor operations a few images at a time. `out`: a float
    tensor of the same shape to write into (default: a new one).
    """
    if out is None:
        out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    if images.device.type == "cpu" and colour_kernel.apply(images, params, out):
        return out
    params = params.to(device=images.device, dtype=torch.float32)
    chunk = _CPU_CHUNK if images.device.type == "cpu" else max(1, len(images))
    for start in range(0, len(images), chunk):
        part = slice(start, start + chunk)
        _distort_colour_into(out[part], images[part], params[part])
    return out


def _distort_colour_into(x: torch.Tensor, images: torch.Tensor, params: torch.Tensor) -> None:
    """`distort_colour` on a few images, written into the float buffer `x`.

    All four of TF's operations are affine per channel or act on each pixel only through its
    maximum v, its range v - min and its hexcone hue h, so the chain is evaluated in closed form:
    - brightness adds delta to every channel;
    - contrast is f * (x - mean) + mean per channel (in ordering 1 it comes first, and as it is
      affine it merges with brightness);
    - saturation keeps v and h and scales the chroma (v - min) by the factor, capped at v (TF
      clamps s = chroma / v to [0, 1]);
    - hue keeps v and the chroma and adds 6 * delta to h in [0, 6);
    and a pixel with maximum v, chroma c and hue h is, channel by channel,
    v - c + c * ramp_channel(h).
    Every step writes into `x` or a scratch plane: no allocation per step.
    """
    n = len(images)
    shape = (n, 1, 1, 1)
    saturation = params[:, SATURATION].view(shape)
    contrast = params[:, CONTRAST].view(shape)
    contrast_first = params[:, ORDER].view(shape) == ORDER_CONTRAST_FIRST
    ones, zeros = torch.ones_like(contrast), torch.zeros_like(contrast)

    # The work runs in the images' 0..255 scale (hue and the saturation cap do not depend on
    # it); the final pass scales to [-1, 1].
    x.copy_(images)
    # Ordering 1: brightness then contrast = f * x + (1 - f) * mean(x) + delta.
    # (Skipping the mean when no image needs it pays on a CPU; on an accelerator the test
    # would cost a synchronisation.)
    brightness = params[:, BRIGHTNESS].view(shape) * 255.0
    if x.device.type != "cpu" or bool(contrast_first.any()):
        offset = torch.where(contrast_first, 1 - contrast, zeros) * x.mean((2, 3), keepdim=True)
        x.mul_(torch.where(contrast_first, contrast, ones)).add_(offset.add_(brightness))
    else:
        x.add_(brightness)

    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
    top, chroma, hue, not_red, not_green = _scratch_planes(5, x)
    torch.maximum(r, g, out=top)
    torch.maximum(top, b, out=top)
    torch.minimum(r, g, out=chroma)
    torch.minimum(chroma, b, out=chroma)
    torch.sub(top, chroma, out=chroma)

    # Hue in [-1, 5) from whichever channel is the maximum, red first, then green, as TF:
    # (g - b) / chroma, 2 + (b - r) / chroma or 4 + (r - g) / chroma. Selecting with 0/1
    # float masks (sign of top - channel) is several times faster on a CPU than torch.where.
    # Minus the numerator is not_red * ((s - 3b) + not_green * (s - 3r)) + (b - g), with
    # s = r + g + b - 2 * chroma.
    torch.add(r, g, out=hue).add_(b).sub_(chroma, alpha=2.0)
    torch.sub(hue, r, alpha=3.0, out=not_red)
    torch.sub(top, g, out=not_green).sign_()
    hue.sub_(b, alpha=3.0).addcmul_(not_red, not_green)
    hue.mul_(torch.sub(top, r, out=not_red).sign_())
    hue.sub_(g).add_(b)
    hue.div_(torch.clamp_min(chroma, 1e-30, out=not_red).neg_())
    hue.add_(params[:, HUE].view(shape) * 6.0)
    hue.sub_(torch.div(hue, 6.0, out=not_red).floor_().mul_(6.0))

    # Saturation: chroma * factor, at most v; a pixel with v <= 0 turns grey (TF's s = 0).
    chroma.mul_(saturation)
    torch.minimum(chroma, top, out=chroma).clamp_min_(0.0)
    top.sub_(chroma)

    # Each channel's share of the chroma is a ramp of the hue (the hexcone's trapezoids).
    torch.sub(hue, 3.0, out=r).abs_().sub_(1.0)
    torch.sub(hue, 2.0, out=g).abs_().neg_().add_(2.0)
    torch.sub(hue, 4.0, out=b).abs_().neg_().add_(2.0)
    x.clamp_(0.0, 1.0)
    for channel in (r, g, b):  # per channel: broadcasting over channels is slower on a CPU
        torch.addcmul(top, channel, chroma, out=channel)

    # Ordering 0 ends with contrast; then clip to [0, 1] and scale to [-1, 1], in one pass.
    slope = torch.where(contrast_first, ones, contrast)
    offset = (1 - slope) * x.mean((2, 3), keepdim=True)
    x.mul_(slope * (2.0 / 255.0)).add_(offset.mul_(2.0 / 255.0).sub_(1.0)).clamp_(-1.0, 1.0)
