"""Batch-norm moving statistics with the moving averages' warm-up: the formula against
PyTorch's own update at the warmed-up momentum, frozen layers bit for bit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from incept.train.batch_norm import MovingStatistics, recompute_statistics
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


def test_recomputed_statistics_are_those_of_all_the_images_pooled():
    # The first batch norm sees the conv's output, which no batch norm changes: its statistics
    # must be the mean and unbiased variance over every value of every batch, per channel.
    torch.manual_seed(1)
    net = small_net()
    net[1].momentum = 0.3  # a recipe's momentum, put back afterwards
    batches = [torch.randn(5, 3, 9, 9) * 2 + i for i in range(3)]
    assert recompute_statistics(net, batches, net) == 3
    with torch.no_grad():
        conv = torch.cat([net[0](x) for x in batches]).transpose(0, 1).reshape(4, -1).double()
    torch.testing.assert_close(net[1].running_mean, conv.mean(1).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(net[1].running_var, conv.var(1).float(), rtol=1e-5, atol=1e-5)
    assert net[1].momentum == 0.3
    # After the recompute, evaluation mode on one batch of everything is training mode's.
    together = torch.cat(batches)
    recompute_statistics(net, [together], net)
    with torch.no_grad():
        trained = net(together)
        net.eval()
        evaluated = net(together)
    # they differ only by the unbiased variance's n / (n - 1) (n = 15 x 7 x 7 values)
    torch.testing.assert_close(evaluated, trained, rtol=2e-3, atol=2e-3)


def test_recompute_leaves_frozen_layers_and_sums_over_replicas():
    torch.manual_seed(2)
    net = small_net()
    net[3].eval()  # frozen
    frozen = (net[3].running_mean.clone(), net[3].running_var.clone())
    x = torch.randn(4, 3, 9, 9) + 3
    seen = []

    def two_replicas(sums):  # as if another replica had the very same batch
        seen.append(sums.clone())
        return sums * 2

    recompute_statistics(net, [x], net, two_replicas)
    assert torch.equal(net[3].running_mean, frozen[0])
    assert torch.equal(net[3].running_var, frozen[1])
    with torch.no_grad():
        conv = net[0](x).transpose(0, 1).reshape(4, -1).double()
    # twice the values: the same mean, the variance's denominator 2n - 1 instead of n - 1
    n = conv.shape[1]
    torch.testing.assert_close(net[1].running_mean, conv.mean(1).float())
    expected = conv.var(1, correction=0) * n * 2 / (2 * n - 1)
    torch.testing.assert_close(net[1].running_var, expected.float(), rtol=1e-5, atol=1e-5)
    # A replica with no batch still takes part in the sum (else the others would wait).
    seen.clear()
    assert recompute_statistics(net, [], net, two_replicas) == 0 and len(seen) == 1
