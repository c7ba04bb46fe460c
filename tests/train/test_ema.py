"""The moving average against TF's formula, worked by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from incept.train.ema import ExponentialMovingAverage, warmup_decay


def test_warmup_decay():
    assert warmup_decay(0.9999, 0) == pytest.approx(0.1)
    assert warmup_decay(0.9999, 8) == pytest.approx(0.5)
    assert warmup_decay(0.9999, 10**6) == 0.9999
    assert warmup_decay(0.5, 100) == 0.5


def test_average_of_weights_and_bn_statistics_by_hand():
    model = nn.Sequential(nn.Linear(1, 1, bias=False), nn.BatchNorm1d(1)).double()
    with torch.no_grad():
        model[0].weight.fill_(2.0)
    ema = ExponentialMovingAverage(model, decay=0.9999)
    assert ema.shadow["0.weight"].item() == 2.0  # starts at the initial value, as TF's

    updates = [  # (weight after the step, BN running mean after the step)
        (4.0, 1.0),
        (1.0, 3.0),
        (0.0, 0.0),
    ]
    shadow_weight, shadow_mean = 2.0, 0.0
    for step, (weight, mean) in enumerate(updates):
        with torch.no_grad():
            model[0].weight.fill_(weight)
            model[1].running_mean.fill_(mean)
            model[1].num_batches_tracked.fill_(step + 1)
        used = ema.update(model, step)
        decay = (1 + step) / (10 + step)  # 0.1, 2/11, 3/12: below 0.9999
        assert used == pytest.approx(decay)
        shadow_weight -= (1 - decay) * (shadow_weight - weight)
        shadow_mean -= (1 - decay) * (shadow_mean - mean)
        assert ema.shadow["0.weight"].item() == pytest.approx(shadow_weight, abs=1e-12)
        assert ema.shadow["1.running_mean"].item() == pytest.approx(shadow_mean, abs=1e-12)
        assert ema.shadow["1.num_batches_tracked"].item() == step + 1
    # Worked out: w = 2 - 0.9*(2-4) = 3.8; w = 3.8 - (9/11)*(3.8-1) = 1.5090909...;
    # w = 1.50909 - 0.75*1.50909 = 0.377272...
    assert ema.shadow["0.weight"].item() == pytest.approx(0.3772727272727, abs=1e-12)


def test_shadow_loads_into_the_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = ExponentialMovingAverage(model, decay=0.99)
    copy = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    copy.load_state_dict(ema.state_dict())
    assert torch.equal(copy[0].weight, model[0].weight)

    other = ExponentialMovingAverage(copy, decay=0.99)
    with torch.no_grad():
        copy[0].weight.add_(1.0)
    other.update(copy, 5)
    ema.load_state_dict(other.state_dict())
    assert torch.equal(ema.shadow["0.weight"], other.shadow["0.weight"])
    with pytest.raises(KeyError):
        ema.load_state_dict({"nothing": torch.zeros(1)})
