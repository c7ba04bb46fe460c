"""Batch-norm moving statistics with the moving averages' warm-up: the formula against
PyTorch's own update at the warmed-up momentum, frozen layers bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from incept.train.batch_norm import MovingStatistics
from incept.train.ema import warmup_decay


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
