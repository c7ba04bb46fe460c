"""The loader's training order under the class-balanced sampler and gradient accumulation:
class frequencies (a chi-square check against the uniform and the data's own), determinism
from (seed, epoch), resume mid-epoch, replicas partitioning each global batch, and epochs of
whole accumulation groups that are the large batch's batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from incept.data import make_loader
from incept.data.loader import _Plan
from incept.data.sources import open_source
from tests.train.conftest import make_image_folder

SIZE = 75
# The chi-square statistic's 1-in-a-million upper tail for one degree of freedom (two
# classes): a draw that is truly uniform passes with probability 1 - 1e-6.
CHI2_1DF_P1E6 = 23.93


def imbalanced_labels(minority: int = 100, majority: int = 900) -> np.ndarray:
    """A 1:9 data set, its classes interleaved as a real file order might be."""
    labels = np.array([0] * minority + [1] * majority)
    return np.random.default_rng(7).permutation(labels)


def drawn_records(labels: np.ndarray, balanced: bool, epochs: int) -> np.ndarray:
    """The records a one-replica plan of batch 10 reads in `epochs` epochs, in order."""
    plan = _Plan(len(labels), 10, True, 0, 0, 1, labels=labels if balanced else None)
    drawn = []
    for epoch in range(epochs):
        plan.epoch = epoch
        drawn += list(plan.batch_indices())
    return np.concatenate(drawn)


def chi_square(observed: np.ndarray, expected: np.ndarray) -> float:
    return float(((observed - expected) ** 2 / expected).sum())


def test_the_balanced_sampler_draws_the_classes_uniformly_on_a_1_to_9_set():
    labels = imbalanced_labels()
    records = drawn_records(labels, balanced=True, epochs=5)
    assert len(records) == 5 * len(labels)  # the epoch keeps its length
    counts = np.bincount(labels[records], minlength=2)
    uniform = np.full(2, len(records) / 2)
    assert chi_square(counts, uniform) < CHI2_1DF_P1E6, counts
    # Against the data's own 1:9 the same counts are far out: the check tells the two apart.
    assert chi_square(counts, len(records) * np.array([0.1, 0.9])) > 1000, counts
    # About 2,500 minority draws spread over its 100 records (with replacement), not a few.
    assert len(np.unique(records[labels[records] == 0])) == 100


def test_without_the_sampler_the_classes_follow_the_data():
    labels = imbalanced_labels()
    counts = np.bincount(labels[drawn_records(labels, balanced=False, epochs=5)], minlength=2)
    assert counts.tolist() == [500, 4500]  # each record once an epoch
    assert chi_square(counts, np.full(2, counts.sum() / 2)) > 1000


def test_the_draw_is_a_function_of_seed_and_epoch():
    labels = imbalanced_labels()

    def epoch_indices(seed, epoch):
        plan = _Plan(len(labels), 10, True, seed, 0, 1, labels=labels)
        plan.epoch = epoch
        return np.concatenate(list(plan.batch_indices()))

    first = epoch_indices(3, 0)
    assert np.array_equal(first, epoch_indices(3, 0))
    assert not np.array_equal(first, epoch_indices(3, 1))
    assert not np.array_equal(first, epoch_indices(4, 0))
    assert len(np.unique(first)) < len(first)  # with replacement: some records twice


@pytest.mark.parametrize("accumulate", [1, 3])
def test_replicas_partition_each_global_batch_of_the_balanced_draw(accumulate):
    labels = imbalanced_labels(30, 270)
    single = _Plan(len(labels), 12, True, 5, 0, 1, accumulate, labels)
    parts = [_Plan(len(labels), 4, True, 5, rank, 3, accumulate, labels) for rank in range(3)]
    for plan in (single, *parts):
        plan.epoch = 2
    assert single.steps_per_epoch == len(parts[0]) == 300 // (12 * accumulate) * accumulate
    wholes = list(single.batch_indices())
    reads = [list(part.batch_indices()) for part in parts]
    for step, whole in enumerate(wholes):
        assert np.array_equal(np.concatenate([read[step] for read in reads]), whole)


@pytest.fixture(scope="module")
def imbalanced_folder(tmp_path_factory):
    """21 training images, 2, 6 and 13 a class (one of each held out for validation)."""
    return make_image_folder(tmp_path_factory.mktemp("imbalanced"), per_class=(3, 7, 14))


def balanced_loader(folder, **keys):
    return make_loader(
        folder, batch_size=2, image_size=SIZE, workers=0, seed=4, balanced_sampler=True, **keys
    )


def test_a_resumed_epoch_of_the_balanced_draw_continues_exactly(imbalanced_folder):
    full = list(balanced_loader(imbalanced_folder, epoch=1))
    assert len(full) == 21 // 2  # 21 training images (one of each class held out)
    resumed = balanced_loader(imbalanced_folder, epoch=1, start_batch=6)
    tail = list(resumed)
    assert len(tail) == len(full) - 6
    for (x, y), (x_full, y_full) in zip(tail, full[6:]):
        assert torch.equal(x, x_full) and torch.equal(y, y_full)
    assert resumed.epoch == 2


def test_a_record_drawn_twice_in_an_epoch_is_distorted_differently(imbalanced_folder):
    loader = balanced_loader(imbalanced_folder)
    order = np.concatenate(list(loader.batch_indices()))
    images = torch.cat([x for x, _ in loader])
    first = {}
    twice = None
    for place, record in enumerate(order.tolist()):
        if record in first:
            twice = (first[record], place)
            break
        first[record] = place
    assert twice is not None, order
    assert not torch.equal(images[twice[0]], images[twice[1]])


def test_an_accumulation_group_is_the_large_batch(imbalanced_folder):
    """Batches 2k and 2k+1 of a loader with accumulate=2 hold batch k of one with twice the
    batch size, and the epoch stops at whole groups (21 images: 5 batches of 4, 2 groups)."""
    grouped = make_loader(
        imbalanced_folder, batch_size=4, image_size=SIZE, workers=0, seed=2, accumulate=2
    )
    large = make_loader(imbalanced_folder, batch_size=8, image_size=SIZE, workers=0, seed=2)
    assert (grouped.steps_per_epoch, large.steps_per_epoch) == (4, 2)
    micro, whole = list(grouped.batch_indices()), list(large.batch_indices())
    for step, indices in enumerate(whole):
        assert np.array_equal(np.concatenate(micro[2 * step : 2 * step + 2]), indices)
    assert open_source(imbalanced_folder, "train").labels.tolist().count(0) == 2
