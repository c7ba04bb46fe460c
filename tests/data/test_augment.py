"""RandAugment, TrivialAugment Wide and random erasing (incept.data.augment) against
torchvision's own transforms, their draws' statistics, and the loader that applies them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from incept.data import make_loader
from incept.data.augment import (
    OPERATIONS,
    Augment,
    auto_augment,
    draw_augment_params,
    random_erase,
)
from incept.errors import UserError

FIXTURE = Path(__file__).parents[1] / "fixtures" / "fashion_mnist"
SIZE = 75


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A real photograph at the training size, colour added so every operation shows."""
    path = sorted((FIXTURE / "train").rglob("*.*"))[0]
    grey = np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE)), dtype=np.int16)
    tint = np.linspace(0, 90, SIZE, dtype=np.int16)
    grey[..., 0] = grey[..., 0] * 2 // 3 + tint[None, :]
    grey[..., 2] = grey[..., 2] * 2 // 3 + tint[:, None]
    return torch.from_numpy(grey.clip(0, 255).astype(np.uint8)).permute(2, 0, 1).contiguous()


def ours(photo, augment: Augment, draws: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    params = torch.stack([draw_augment_params(rng, augment, SIZE) for _ in range(draws)])
    batch = photo.expand(draws, -1, -1, -1)
    return [image.numpy().tobytes() for image in auto_augment(batch, params, augment.layers)]


def torchvisions(photo, transform, draws: int) -> set[bytes]:
    found = set()
    for seed in range(draws):
        torch.manual_seed(seed)
        found.add(transform(photo).numpy().tobytes())
    return found


@pytest.mark.parametrize("magnitude", [9, 30])
def test_randaugment_gives_exactly_the_images_torchvisions_randaugment_gives(photo, magnitude):
    """One operation at a fixed magnitude: 23 possible images (9 signed operations, 5
    without a sign). Both draw every one of them and nothing else."""
    expected = torchvisions(photo, v2.RandAugment(num_ops=1, magnitude=magnitude), 600)
    got = set(ours(photo, Augment("ra", ra_num_ops=1, ra_magnitude=magnitude), 600))
    assert len(expected) >= 20
    assert got == expected


def test_trivialaugment_wide_draws_what_torchvisions_draws(photo):
    """About 600 possible images (11 operations with 31 magnitudes, most signed): 4,000 of
    torchvision's draws find most, so nearly all of ours are among them; a wrong magnitude
    table would match only the 3 operations without one (about 20%)."""
    expected = torchvisions(photo, v2.TrivialAugmentWide(), 4000)
    got = ours(photo, Augment("ta_wide"), 400)
    found = sum(image in expected for image in got) / len(got)
    assert found > 0.85, found


def test_two_operations_in_a_batch_equal_the_same_draws_image_by_image(photo):
    rng = np.random.default_rng(3)
    augment = Augment("ra", ra_num_ops=2, ra_magnitude=12)
    params = torch.stack([draw_augment_params(rng, augment, SIZE) for _ in range(24)])
    shifted = torch.stack([photo.roll(k, dims=-1) for k in range(24)])
    batched = auto_augment(shifted, params, 2)
    for image, row, out in zip(shifted, params, batched):
        assert torch.equal(auto_augment(image[None], row[None], 2)[0], out)


def test_randaugment_draws_each_operation_equally_often():
    rng = np.random.default_rng(0)
    augment = Augment("ra", ra_num_ops=2)
    rows = torch.stack([draw_augment_params(rng, augment, SIZE) for _ in range(7000)])
    counts = np.bincount(rows[:, [0, 2]].flatten().int().numpy(), minlength=len(OPERATIONS))
    expected = 14000 / len(OPERATIONS)
    assert np.all(np.abs(counts - expected) < 4.5 * np.sqrt(expected)), counts


def test_random_erasing_draws_rectangles_of_the_documented_sizes():
    rng = np.random.default_rng(0)
    augment = Augment(random_erase=0.4)
    rows = torch.stack([draw_augment_params(rng, augment, SIZE) for _ in range(3000)])
    erased = rows[:, 0] == 1
    assert abs(erased.float().mean().item() - 0.4) < 4.5 * np.sqrt(0.24 / 3000)
    top, left, height, width = rows[erased, 1:].T
    assert (top >= 0).all() and (top + height <= SIZE).all() and (height >= 1).all()
    assert (left >= 0).all() and (left + width <= SIZE).all() and (width >= 1).all()
    area = height * width / SIZE**2
    assert area.min() > 0.015 and area.max() < 0.36  # 2% to 33%, to the pixel
    ratio = (height / width).log()
    assert ratio.min() > np.log(0.3) - 0.15 and ratio.max() < np.log(3.3) + 0.15
    assert abs(ratio.mean().item()) < 0.05  # log-uniform over a range symmetric about 0

    images = torch.rand(4, 3, SIZE, SIZE) + 0.5
    chosen = rows[erased][:4]
    erased_images = random_erase(images.clone(), chosen, 0)
    for image, (_, t, left, h, w) in zip(erased_images, chosen.int().tolist()):
        inside = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        inside[t : t + h, left : left + w] = True
        assert (image[:, inside] == 0).all() and (image[:, ~inside] > 0).all()


def test_the_loader_augments_the_same_whatever_the_workers_and_not_unasked(tmp_path):
    from tests.train.conftest import make_image_folder

    folder = make_image_folder(tmp_path / "images")
    keys = dict(batch_size=8, image_size=SIZE, seed=1)
    plain = next(iter(make_loader(folder, workers=0, **keys)))[0]
    off = next(iter(make_loader(folder, workers=0, auto_augment="", random_erase=0.0, **keys)))
    assert torch.equal(plain, off[0])  # off draws nothing more: the original's batches
    wide = dict(auto_augment="ta_wide", random_erase=0.5, **keys)
    here = next(iter(make_loader(folder, workers=0, **wide)))[0]
    workers = next(iter(make_loader(folder, workers=2, **wide)))[0]
    assert torch.equal(here, workers)
    assert not torch.equal(here, plain)
    # Erased rectangles are exact zeros, which the original's colour pass never makes in a
    # whole 3 x 4 x 4 block of these noisy images.
    blocks = (here == 0).all(dim=1).float().unfold(1, 4, 1).unfold(2, 4, 1).amin(dim=(-1, -2))
    assert blocks.flatten(1).amax(dim=1).sum() >= 1


@pytest.mark.parametrize(
    "keys, message",
    [
        (dict(auto_augment="autoaugment"), "auto_augment must be one of 'ra'"),
        (dict(auto_augment="ra", ra_magnitude=31), "ra_magnitude must be in [0, 30]"),
        (dict(random_erase=1.5), "random_erase must be in [0, 1]"),
    ],
)
def test_make_loader_refuses_unknown_augmentation_in_one_line(tmp_path, keys, message):
    from tests.train.conftest import make_image_folder

    folder = make_image_folder(tmp_path / "images", classes=2, per_class=4)
    with pytest.raises(UserError, match=message.replace("[", r"\[").replace("(", r"\(")):
        make_loader(folder, image_size=SIZE, **keys)
