"""Batch-norm moving statistics with the moving averages' warm-up: the formula against
PyTorch's own update, frozen layers bit for bit, and every shipped recipe evaluating like it
trains after 20 steps (which the original's 0.9997 without the warm-up does not)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from incept.cli import main
from incept.data import make_loader
from incept.nets import load
from incept.train import batch_norm
from incept.train.batch_norm import MovingStatistics
from incept.train.ema import warmup_decay
from incept.train.recipe import load_recipe, recipe_names
from incept.weights.checkpoint import read_checkpoint


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.BatchNorm2d(4))


def test_the_blend_is_pytorchs_update_at_the_warmed_up_momentum():
    torch.manual_seed(0)
    ours, reference = small_net(), small_net()
    reference.load_state_dict(ours.state_dict())
    statistics = MovingStatistics(ours, decay=0.9997)
    for step in range(25):
        x = torch.randn(6, 3, 9, 9) * (1 + step) + step  # statistics that keep moving
        decay = warmup_decay(0.9997, step)
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.momentum = 1 - decay  # PyTorch's convention
        reference(x)
        statistics.before_forward()
        ours(x).sum().backward()
        assert statistics.after_forward(step) == decay
    for name, value in reference.state_dict().items():
        if "running" in name:
            torch.testing.assert_close(ours.state_dict()[name], value, rtol=1e-5, atol=1e-5)
    assert statistics.decay == 0.9997 and warmup_decay(0.9997, 24) == pytest.approx(25 / 34)


def test_a_batch_norm_in_eval_mode_keeps_its_statistics_bit_for_bit():
    torch.manual_seed(0)
    model = small_net()
    statistics = MovingStatistics(model, decay=0.9)
    model.train()
    model[3].eval()  # a frozen layer (--freeze-bn)
    before = model[3].running_var.clone(), model[3].running_mean.clone()
    moving_before = model[1].running_mean.clone()
    for step in range(3):
        statistics.before_forward()
        model(torch.randn(4, 3, 8, 8) + 3)
        statistics.after_forward(step)
    assert torch.equal(model[3].running_var, before[0])
    assert torch.equal(model[3].running_mean, before[1])
    assert not torch.equal(model[1].running_mean, moving_before)


def eval_vs_train_gap(train_dir, image_folder, image_size: int) -> float:
    """Relative difference between the raw weights' logits in eval mode and in train mode
    (dropout off) on training images."""
    model = load(train_dir, ema=False)
    images, _ = next(
        iter(
            make_loader(
                image_folder, "train", training=False, batch_size=16, image_size=image_size,
                workers=0,
            )
        )
    )  # fmt: skip
    with torch.no_grad():
        evaluated = model.eval()(images)
        model.train()
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.eval()
        trained = model(images)
        trained = trained[0] if isinstance(trained, tuple) else trained
    return ((evaluated - trained).norm() / trained.norm()).item()


def short_run(recipe: str, train_dir, image_folder) -> int:
    image_size = 75
    flags = [
        "train", "--data", str(image_folder), "--train-dir", str(train_dir),
        "--recipe", recipe, "--width", "0.1", "--image-size", str(image_size),
        "--batch-size", "8", "--workers", "0", "--precision", "fp32", "--max-steps", "20",
        "--save-every", "20", "--eval-every", "0", "--log-every", "10",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as finished:
        main(flags)
    assert finished.value.code == 0
    return image_size


@pytest.mark.parametrize("recipe", recipe_names())
def test_after_20_steps_of_every_recipe_eval_mode_matches_train_mode(
    recipe, image_folder, tmp_path
):
    image_size = short_run(recipe, tmp_path, image_folder)
    assert read_checkpoint(tmp_path).state["step"] == 20
    gap = eval_vs_train_gap(tmp_path, image_folder, image_size)
    # Measured: 0.04-0.2 with the warm-up over the recipes; the original's 0.9997 without it
    # gives 1.1-1.4 (the test below), and so does any run whose statistics lag.
    print("GAP", recipe, gap)
    assert gap < 0.35, (recipe, gap)


def test_without_the_warmup_the_same_check_fails(image_folder, tmp_path, monkeypatch):
    """The check above can fail: the original's statistics (a constant 0.9997) lag."""
    monkeypatch.setattr(batch_norm, "warmup_decay", lambda decay, updates: decay)
    assert load_recipe("inception_v3_2016").bn_decay == 0.9997
    image_size = short_run("inception_v3_2016", tmp_path, image_folder)
    gap = eval_vs_train_gap(tmp_path, image_folder, image_size)
    print("GAP none", gap)
    assert gap > 0.6
