"""The original's preprocessing against TensorFlow's outputs and against its definitions.

Fixtures: tests/fixtures/make_preprocess_fixtures.py, run once with TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from incept.data import colour_kernel
from incept.data import preprocess as P

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "preprocess"


def hwc(tensor: torch.Tensor) -> np.ndarray:
    return tensor.permute(1, 2, 0).numpy()


def chw(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def test_evaluation_matches_tensorflow_within_one_level():
    stored = np.load(FIXTURES / "eval.npz")
    for i in range(4):
        image, expected = stored[f"image_{i}"], stored[f"expected_{i}"]
        size = expected.shape[0]
        ours = P.to_unit_range(P.center_crop_resize(chw(image), size).unsqueeze(0))[0]
        assert ours.shape == (3, size, size) and ours.dtype == torch.float32
        # In [0, 1] units: the uint8 result is TF's float result rounded, so half a level.
        error = np.abs(hwc(ours) - expected).max() / 2
        assert error <= 0.5 / 255 + 1e-6, (i, error * 255)


def test_central_box_is_tensorflows_rounding():
    # int((h - 0.875 h) / 2) cut from both sides (hand-computed).
    assert P.central_box(48, 64) == P.Box(3, 4, 42, 56)
    assert P.central_box(53, 37) == P.Box(3, 2, 47, 33)
    assert P.central_box(7, 8) == P.Box(0, 0, 7, 8)


@pytest.fixture(params=["compiled", "tensors"])
def colour_path(request, monkeypatch):
    """distort_colour's two CPU implementations: the compiled loop (numba, the default) and
    the tensor operations (what an accelerator runs, and the CPU's fallback)."""
    if request.param == "compiled":
        assert colour_kernel.kernel() is not None, "numba is a dependency: it must work here"
    else:
        monkeypatch.setattr(colour_kernel, "apply", lambda *args: False)
    return request.param


def test_colour_distortion_matches_tensorflow(colour_path):
    """Each adjust_* alone and whole chains in both orders, out-of-range values included.

    Tolerance 1e-5 in [-1, 1] units: float32 rounding of a different but equal formula.
    """
    stored = np.load(FIXTURES / "colour.npz")
    images = torch.from_numpy(stored["images"]).permute(0, 3, 1, 2)
    params = torch.from_numpy(stored["params"])
    batch = images[torch.from_numpy(stored["image_index"])]
    ours = P.distort_colour(batch, params).permute(0, 2, 3, 1).numpy()
    errors = np.abs(ours - stored["expected"]).reshape(len(params), -1).max(1)
    assert errors.max() < 1e-5, errors
    # The fixture exercises real changes, not near-identities.
    neutral = (batch.permute(0, 2, 3, 1).numpy() / 255.0 - 0.5) * 2
    assert np.abs(stored["expected"] - neutral).reshape(len(params), -1).max(1).min() > 0.05


def test_colour_distortion_is_per_image_and_chunk_independent(colour_path):
    rng = np.random.default_rng(3)
    images = torch.from_numpy(rng.integers(0, 256, (7, 3, 9, 11), dtype=np.uint8))
    params = torch.stack([P.draw_colour_params(rng) for _ in range(7)])
    whole = P.distort_colour(images, params)
    single = torch.cat([P.distort_colour(images[i : i + 1], params[i : i + 1]) for i in range(7)])
    assert torch.equal(whole, single)
    assert whole.min() >= -1 and whole.max() <= 1


def test_compiled_and_tensor_colour_passes_agree(monkeypatch):
    """On photo-like and extreme inputs (grey, black, saturated, out of range after
    brightness), into a strided output too; an empty batch is fine."""
    rng = np.random.default_rng(5)
    images = torch.from_numpy(rng.integers(0, 256, (12, 3, 23, 17), dtype=np.uint8))
    images[0] = 128  # grey: no chroma, hue undefined
    images[1] = 0
    images[2, 0], images[2, 1:] = 255, 0  # pure red at the wrap-around of the hue
    images[3] = torch.tensor([255, 254, 0], dtype=torch.uint8).view(3, 1, 1)
    params = torch.stack([P.draw_colour_params(rng) for _ in range(12)])
    params[:4, P.BRIGHTNESS] = torch.tensor([0.125, -0.125, 0.125, -0.125])
    params[4:8, P.ORDER] = torch.tensor([0.0, 1.0, 0.0, 1.0])
    strided = torch.empty(12, 3, 17, 23).transpose(2, 3)
    compiled = P.distort_colour(images, params, strided)
    assert compiled is strided and colour_kernel.kernel() is not None
    monkeypatch.setattr(colour_kernel, "apply", lambda *args: False)
    tensors = P.distort_colour(images, params)
    assert (compiled - tensors).abs().max() < 2e-6
    assert (compiled[:, :, :, :] != compiled[:1]).any()  # not a constant result
    assert P.distort_colour(images[:0], params[:0]).shape == (0, 3, 23, 17)


def test_colour_parameters_cover_the_original_ranges():
    rng = np.random.default_rng(0)
    params = torch.stack([P.draw_colour_params(rng) for _ in range(4000)]).numpy()
    ranges = [
        (-32 / 255, 32 / 255),
        P.SATURATION_RANGE,
        (-P.HUE_MAX_DELTA, P.HUE_MAX_DELTA),
        P.CONTRAST_RANGE,
    ]
    for column, (low, high) in enumerate(ranges):
        values = params[:, column]
        assert values.min() >= low and values.max() < high
        # Uniform: the extreme deciles are both populated (mean of a uniform is the middle).
        assert (values < low + 0.1 * (high - low)).mean() > 0.07
        assert (values > high - 0.1 * (high - low)).mean() > 0.07
        assert abs(values.mean() - (low + high) / 2) < 0.02 * (high - low)
    orders = params[:, P.ORDER]
    assert set(np.unique(orders)) == {0.0, 1.0}
    assert abs(orders.mean() - 0.5) < 0.04  # 4000 fair coin flips: sd 0.008


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance between empirical distributions."""
    points = np.union1d(a, b)
    cdf_a = np.searchsorted(np.sort(a), points, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), points, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def our_crops(height: int, width: int, boxes: np.ndarray, count: int) -> np.ndarray:
    crops = [
        P.sample_distorted_box(height, width, boxes, P.example_rng(7, 0, i)) for i in range(count)
    ]
    return np.array(crops)


@pytest.mark.parametrize("case", ["plain", "boxed"])
def test_crop_distribution_matches_tensorflow(case):
    """Same distributions of top, left, height, width and area as TF's own sampler.

    4000 draws each: the KS critical value at alpha = 0.001 is 1.95 * sqrt(2 / 4000) = 0.044.
    """
    stored = np.load(FIXTURES / "crops.npz")
    height, width = (int(v) for v in stored[f"{case}_shape"])
    boxes = stored[f"{case}_boxes"]
    theirs = stored[f"{case}_crops"].astype(np.int64)
    ours = our_crops(height, width, boxes, len(theirs))
    for column in range(4):
        assert ks_statistic(ours[:, column], theirs[:, column]) < 0.044, column
    area = lambda crops: crops[:, 2] * crops[:, 3]
    assert ks_statistic(area(ours), area(theirs)) < 0.044


def test_crops_obey_the_definition():
    height, width = 120, 90
    box = np.array([[0.1, 0.6, 0.4, 0.95]], np.float32)  # a small object in a corner
    crops = our_crops(height, width, box, 3000)
    top, left, crop_h, crop_w = crops.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + crop_h <= height).all() and (left + crop_w <= width).all()
    whole = (crop_h == height) & (crop_w == width)
    sampled = ~whole
    # TF never lets a partial crop touch the far edges (its corner is drawn from [0, size - crop)).
    assert (top[sampled & (crop_h < height)] + crop_h[sampled & (crop_h < height)] < height).all()
    area = crop_h * crop_w / (height * width)
    assert (area[sampled] >= 0.05 - 1e-9).all() and (area <= 1).all()
    # width = round(height * aspect) with aspect in [0.75, 1.33]: within rounding of the range.
    aspect = crop_w / crop_h
    assert (aspect[sampled] >= 0.75 - 0.5 / crop_h[sampled]).all()
    assert (aspect[sampled] <= 1.33 + 0.5 / crop_h[sampled]).all()
    # Coverage: at least 10% of the object's pixel rectangle (TF truncates the box to pixels).
    ymin, xmin, ymax, xmax = 12, 54, 48, 85
    inter_h = np.clip(np.minimum(top + crop_h, ymax) - np.maximum(top, ymin), 0, None)
    inter_w = np.clip(np.minimum(left + crop_w, xmax) - np.maximum(left, xmin), 0, None)
    covered = inter_h * inter_w / ((ymax - ymin) * (xmax - xmin))
    assert (covered[sampled] >= 0.1).all()
    assert sampled.mean() > 0.9  # 100 attempts nearly always succeed here


def test_impossible_constraints_fall_back_to_the_whole_image():
    # A box without area is ignored (as TF does), so no crop can cover an object.
    empty = np.array([[0.5, 0.5, 0.5, 0.5]], np.float32)
    crop = P.sample_distorted_box(40, 30, empty, P.example_rng(0, 0, 0))
    assert crop == P.Box(0, 0, 40, 30)


def test_geometry_is_a_function_of_seed_epoch_and_index():
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.integers(0, 256, (3, 48, 64), dtype=np.uint8))
    none = np.zeros((0, 4), np.float32)

    def run(seed, epoch, index):
        return P.distort_geometry(image, none, 75, P.example_rng(seed, epoch, index))

    pixels, colour = run(5, 2, 9)
    again_pixels, again_colour = run(5, 2, 9)
    assert torch.equal(pixels, again_pixels) and torch.equal(colour, again_colour)
    assert pixels.shape == (3, 75, 75) and pixels.dtype == torch.uint8
    for other in [(5, 2, 10), (5, 3, 9), (6, 2, 9)]:
        assert not torch.equal(run(*other)[1], colour)


@pytest.mark.parametrize("method", P.RESIZE_METHODS)
def test_every_resize_method_keeps_uint8_and_constants(method):
    flat = torch.full((3, 30, 40), 77, dtype=torch.uint8)
    out = P.resize(flat, 83, method)
    assert out.shape == (3, 83, 83) and out.dtype == torch.uint8
    assert (out == 77).all()
    ramp = torch.arange(40, dtype=torch.uint8).repeat(3, 30, 1) * 6
    out = P.resize(ramp, 80, method).int()
    assert (out[:, :, 1:] >= out[:, :, :-1] - 1).all()  # a ramp stays a ramp


def test_a_larger_minimum_crop_area_keeps_every_crop_at_least_that_large():
    # min_crop_area (the recipe key) replaces the original's 0.05 and nothing else: a crop is
    # never below it, yet still random in size and place; at 1 only the whole image is left.
    height, width, none = 60, 80, np.zeros((0, 4), np.float32)

    def areas(min_area):
        crops = [
            P.sample_distorted_box(height, width, none, P.example_rng(3, 0, i), min_area)
            for i in range(2000)
        ]
        return np.array([c.height * c.width for c in crops]) / (height * width), crops

    original, _ = areas(P.AREA_RANGE[0])
    assert original.min() < 0.15  # the original reaches 0.1 (what min_object_covered allows)
    mild, crops = areas(0.35)
    assert mild.min() >= 0.35 and np.quantile(mild, 0.1) < 0.5
    assert len({(c.top, c.left) for c in crops}) > 200
    # With no boxes the crop's height is uniform between the bounds at its aspect ratio, so its
    # area is spread above the minimum: the median is well above the original's.
    assert np.median(mild) > np.median(original) + 0.1
    whole, crops = areas(1.0)
    assert (whole == 1.0).all() and {c[:2] for c in crops} == {(0, 0)}


def test_geometry_draws_every_resize_method_and_flips_half():
    image = torch.zeros((3, 20, 20), dtype=torch.uint8)
    image[:, :, :10] = 255  # bright left half: a flip moves it to the right
    none = np.zeros((0, 4), np.float32)
    flipped = 0
    for index in range(400):
        rng = P.example_rng(0, 0, index)
        box = P.sample_distorted_box(20, 20, none, rng)
        method = P.RESIZE_METHODS[int(rng.integers(4))]
        flip = rng.random() < 0.5
        pixels, _ = P.distort_geometry(image, none, 16, P.example_rng(0, 0, index))
        expected = P.resize(P.crop(image, box), 16, method)
        assert torch.equal(pixels, expected.flip(-1) if flip else expected)
        flipped += flip
    assert 160 < flipped < 240


def _exact_bilinear_reference(window: np.ndarray, size: int) -> np.ndarray:
    """Half-pixel bilinear resize in exact rational arithmetic, rounded half up (by hand)."""
    from fractions import Fraction

    channels, height, width = window.shape

    def taps(n_in, position):
        source = max(Fraction(2 * position + 1, 2 * size) * n_in - Fraction(1, 2), Fraction(0))
        lower = int(source)
        return lower, min(lower + 1, n_in - 1), source - lower

    out = np.zeros((channels, size, size), np.uint8)
    for y in range(size):
        top, bottom, down = taps(height, y)
        for x in range(size):
            left, right, across = taps(width, x)
            for c in range(channels):
                p = window[c].astype(int)
                value = (1 - down) * (
                    (1 - across) * p[top, left] + across * p[top, right]
                ) + down * ((1 - across) * p[bottom, left] + across * p[bottom, right])
                out[c, y, x] = int(value + Fraction(1, 2))  # floor(v + 1/2): ties go up
    return out


def test_evaluation_resize_is_exact_and_the_same_for_any_thread_count():
    """Values on a half level are frequent (bilinear weights are multiples of 1 / (2 size)):
    torch's float32 kernel put some a level apart between 1 and 2 threads."""
    rng = np.random.default_rng(11)
    cases = [(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), size) for h, w, size in
             ((16, 20, 13), (9, 7, 16), (24, 33, 21), (40, 30, 45))]  # fmt: skip
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)
            results.append([P.center_crop_resize(chw(image), size) for image, size in cases])
    finally:
        torch.set_num_threads(threads)
    ties = 0
    for (image, size), one, two in zip(cases, *results):
        window = hwc(P.crop(chw(image), P.central_box(*image.shape[:2]))).transpose(2, 0, 1)
        expected = _exact_bilinear_reference(window, size)
        assert np.array_equal(one.numpy(), expected) and np.array_equal(two.numpy(), expected)
        exact_float = F.interpolate(
            torch.from_numpy(window.copy())[None].double(), size=(size, size), mode="bilinear"
        )[0]
        ties += int(((exact_float * 2) % 2 == 1).sum())
    assert ties > 0  # the cases hold values exactly on a half level


def test_without_numba_the_tensor_path_runs_and_says_so(monkeypatch, caplog):
    def unavailable():
        raise ImportError("No module named 'numba'")

    monkeypatch.setattr(colour_kernel, "_kernel", None)
    monkeypatch.setattr(colour_kernel, "_make_kernel", unavailable)
    rng = np.random.default_rng(2)
    images = torch.from_numpy(rng.integers(0, 256, (3, 3, 8, 9), dtype=np.uint8))
    params = torch.stack([P.draw_colour_params(rng) for _ in range(3)])
    with caplog.at_level("WARNING"):
        fallback = P.distort_colour(images, params)
        P.distort_colour(images, params)
    assert [r.getMessage() for r in caplog.records] == [
        "the compiled CPU colour pass is unavailable (ImportError: No module named 'numba'); "
        "using the slower tensor path"
    ]  # once, not per batch
    monkeypatch.undo()  # numba back: the compiled pass gives the same result
    assert (fallback - P.distort_colour(images, params)).abs().max() < 2e-6
