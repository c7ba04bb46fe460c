"""Mixup and CutMix (--mixup, --cutmix, --mixup-prob, --mixup-switch-prob): the pixels and
the targets against hand-made expectations and timm's own target and loss, the draws'
statistics, and exact resume through the CLI (with RandAugment and random erasing too)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from timm.data.mixup import mixup_target
from timm.loss import SoftTargetCrossEntropy

from incept.train.loop import compute_loss
from incept.train.mixing import mix_batch
from incept.train.recipe import load_recipe
from incept.weights.checkpoint import read_checkpoint
from tests.train.conftest import as_if_killed_after, train_in_process


def recipe(**keys):
    return load_recipe("small_data_cpu").with_overrides(**keys)


def batch(n=6, size=20):
    """Images whose every pixel says which image it is (i + 1 in channel 0) and where it is."""
    images = torch.zeros(n, 3, size, size)
    images[:, 0] = torch.arange(1, n + 1, dtype=torch.float32)[:, None, None]
    images[:, 1] = torch.arange(size * size, dtype=torch.float32).view(size, size)
    return images, torch.arange(n) % 4


def test_mixup_blends_each_image_with_its_mirror_in_the_batch_by_the_share():
    images, labels = batch()
    original = images.clone()
    mixed_images, mixed = mix_batch(images, labels, recipe(mixup=0.8), 7, 0, 0)
    lam = mixed.share
    assert 0 < lam < 1
    expected = lam * original + (1 - lam) * original.flip(0)
    torch.testing.assert_close(mixed_images, expected)
    assert torch.equal(mixed.labels, labels) and torch.equal(mixed.partners, labels.flip(0))


def test_cutmix_pastes_one_box_of_the_partner_and_the_share_is_what_is_left():
    size = 20
    for step in range(20):
        images, labels = batch(size=size)
        original = images.clone()
        out, mixed = mix_batch(images, labels, recipe(cutmix=1.0), step, 0, 0)
        # Each pixel is its own image's or its partner's, never a blend.
        own = (out == original).all(dim=1)
        partner = (out == original.flip(0)).all(dim=1)
        assert (own | partner).all()
        pasted = partner[0] & ~own[0]
        if pasted.any():  # one rectangle, the same in every image
            rows, cols = pasted.any(dim=1).nonzero(), pasted.any(dim=0).nonzero()
            box = pasted[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
            assert box.all()
            assert all(torch.equal(p & ~o, pasted) for p, o in zip(partner, own))
        assert mixed.share == pytest.approx(1 - pasted.float().mean().item())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_mixed_loss_is_timms_soft_target_cross_entropy(smoothing):
    """timm's mixup_target (the image's label lam, its mirror's 1 - lam, both smoothed) and
    SoftTargetCrossEntropy, on both heads with the aux weight."""
    torch.manual_seed(0)
    logits, aux = torch.randn(8, 5), torch.randn(8, 5)
    images, labels = torch.zeros(8, 3, 4, 4), torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    keys = recipe(mixup=0.4, label_smoothing=smoothing, aux_weight=0.4)
    _, mixed = mix_batch(images, labels, keys, 3, 0, 0)
    loss, _ = compute_loss((logits, aux), labels, keys, mixed=mixed)
    target = mixup_target(labels, 5, lam=mixed.share, smoothing=smoothing)
    reference = SoftTargetCrossEntropy()
    expected = reference(logits, target) + 0.4 * reference(aux, target)
    torch.testing.assert_close(loss, expected)


def test_with_class_weights_each_half_of_the_target_counts_its_class_weight():
    torch.manual_seed(1)
    logits, labels = torch.randn(6, 3), torch.tensor([0, 0, 1, 2, 2, 2])
    weights = torch.tensor([0.5, 2.0, 1.5])
    keys = recipe(cutmix=1.0, label_smoothing=0.0, aux_weight=0.0)
    _, mixed = mix_batch(torch.zeros(6, 3, 8, 8), labels, keys, 11, 0, 0)
    loss, _ = compute_loss(logits, labels, keys, weights, mixed)
    log_p = torch.log_softmax(logits, dim=1)
    by_row = -(
        mixed.share * weights[labels] * log_p[range(6), labels]
        + (1 - mixed.share) * weights[labels.flip(0)] * log_p[range(6), labels.flip(0)]
    )
    torch.testing.assert_close(loss, by_row.mean())


def test_the_draws_follow_the_recipes_probabilities_and_beta():
    """Over 3,000 steps: the share of mixed batches (mixup_prob 0.3), of CutMix among them
    (switch 0.5), and mixup's shares as Beta(0.8, 0.8): mean 1/2, variance 1/(4 (2 a + 1))."""
    keys = recipe(mixup=0.8, cutmix=1.0, mixup_prob=0.3, mixup_switch_prob=0.5)
    labels = torch.arange(2)
    n, mixed_count, cut_count, shares = 3000, 0, 0, []
    for step in range(n):
        images = torch.zeros(2, 1, 1, 50)
        images[1] = 1.0
        out, mixed = mix_batch(images, labels, keys, step, 0, 0)
        if mixed is None:
            assert torch.equal(out[0], torch.zeros(1, 1, 50))
            continue
        mixed_count += 1
        values = out[0].flatten()  # CutMix: 0s and 1s; mixup: 1 - share everywhere
        if ((values == 0) | (values == 1)).all():
            cut_count += 1
        else:
            shares.append(mixed.share)
    # Binomial bounds at about 4.5 standard deviations.
    assert abs(mixed_count / n - 0.3) < 4.5 * np.sqrt(0.3 * 0.7 / n)
    assert abs(cut_count / mixed_count - 0.5) < 4.5 * np.sqrt(0.25 / mixed_count)
    shares = np.array(shares)
    variance = 1 / (4 * (2 * 0.8 + 1))
    assert abs(shares.mean() - 0.5) < 4.5 * np.sqrt(variance / len(shares))
    assert abs(shares.var() - variance) < 0.2 * variance


def test_the_draws_are_a_function_of_seed_step_replica_and_micro_batch():
    def share(keys, *where):
        return mix_batch(torch.zeros(2, 1, 2, 2), torch.arange(2), keys, *where)[1].share

    keys = recipe(mixup=1.0)
    assert share(keys, 5, 0, 0) == share(keys, 5, 0, 0)
    draws = {share(keys, 5, 0, 0), share(keys, 6, 0, 0), share(keys, 5, 1, 0)}
    assert len(draws | {share(keys, 5, 0, 1), share(recipe(mixup=1.0, seed=3), 5, 0, 0)}) == 5


def test_off_by_default_in_every_shipped_recipe_and_nothing_is_mixed():
    from incept.train.recipe import recipe_names

    for name in recipe_names():
        keys = load_recipe(name)
        assert keys.mixup == 0 and keys.cutmix == 0, name


MIXING = ["--mixup", "0.8", "--cutmix", "1.0", "--auto-augment", "ra", "--random-erase", "0.5",
          "--max-steps", "4", "--save-every", "2"]  # fmt: skip


def test_a_run_mixing_and_augmenting_says_so_and_resumes_bit_identical(
    image_folder, tmp_path, tiny_flags, capsys
):
    whole = train_in_process(image_folder, tmp_path / "whole", tiny_flags, *MIXING)
    printed = capsys.readouterr().out
    assert "mixup (alpha 0.8) and CutMix (alpha 1) on 1 of the batches, CutMix in 0.5 of them" in (
        printed
    )
    assert "augmentation: RandAugment (2 ops at magnitude 9) and random erasing (p 0.5)" in (
        printed
    )
    assert read_checkpoint(whole).meta["recipe"]["cutmix"] == 1.0

    resumed = as_if_killed_after(whole, tmp_path / "resumed", 2, "step-00000004")
    train_in_process(image_folder, resumed, tiny_flags, *MIXING)
    final = "checkpoints/step-00000004/model.safetensors"
    expected, again = load_file(whole / final), load_file(resumed / final)
    assert all(torch.equal(expected[k], again[k]) for k in expected)

    # And they changed the training: the same run without them ends elsewhere.
    plain = train_in_process(image_folder, tmp_path / "plain", tiny_flags, *MIXING[-4:])
    unmixed = load_file(plain / final)
    assert not all(torch.equal(expected[k], unmixed[k]) for k in expected)
