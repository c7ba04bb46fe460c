"""The optimizer, schedules, weight decay and clipping against values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from incept.train.optim import (
    LearningRateSchedule,
    TFRMSprop,
    build_optimizer,
    clip_gradients,
    decayed_weights,
    l2_penalty,
)
from incept.train.recipe import load_recipe


def test_tf_rmsprop_matches_the_update_worked_by_hand():
    # One weight, decay 0.9, momentum 0.9, epsilon 1.0; lr 0.1 for two steps, then 0.01.
    weight = nn.Parameter(torch.tensor([1.0], dtype=torch.float64))
    optimizer = TFRMSprop([weight], lr=0.1, decay=0.9, momentum=0.9, epsilon=1.0)
    # step 1, grad 0.5: ms = 0.9*1 + 0.1*0.25 = 0.925
    #   mom = 0.1*0.5/sqrt(1.925) = 0.0360375..., w = 1 - mom
    # step 2, grad -0.2: ms = 0.9*0.925 + 0.1*0.04 = 0.8365
    #   mom = 0.9*0.0360375 + 0.1*(-0.2)/sqrt(1.8365), w -= mom
    # step 3, grad 1.0, lr 0.01: ms = 0.9*0.8365 + 0.1*1 = 0.85285
    #   mom = 0.9*mom2 + 0.01*1/sqrt(1.85285), w -= mom
    mom1 = 0.05 / math.sqrt(1.925)
    mom2 = 0.9 * mom1 - 0.02 / math.sqrt(1.8365)
    mom3 = 0.9 * mom2 + 0.01 / math.sqrt(1.85285)
    expected = [1 - mom1, 1 - mom1 - mom2, 1 - mom1 - mom2 - mom3]
    assert mom1 == pytest.approx(0.0360374985, abs=1e-10)
    for grad, lr, want in zip([0.5, -0.2, 1.0], [0.1, 0.1, 0.01], expected):
        optimizer.param_groups[0]["lr"] = lr
        weight.grad = torch.tensor([grad], dtype=torch.float64)
        optimizer.step()
        assert weight.item() == pytest.approx(want, abs=1e-12)
    state = optimizer.state[weight]
    assert state["mean_square"].item() == pytest.approx(0.85285, abs=1e-12)
    assert state["momentum_buffer"].item() == pytest.approx(mom3, abs=1e-12)


def test_tf_rmsprop_differs_from_torch_rmsprop():
    # The point of our own class: torch's form (ms from 0, eps outside the root) moves the
    # first step much further with the original's epsilon of 1.0.
    ours = nn.Parameter(torch.tensor([1.0]))
    theirs = nn.Parameter(torch.tensor([1.0]))
    torch_rms = torch.optim.RMSprop([theirs], lr=0.1, alpha=0.9, eps=1.0, momentum=0.9)
    ours_opt = TFRMSprop([ours], lr=0.1, epsilon=1.0)
    ours.grad = torch.tensor([0.5])
    theirs.grad = torch.tensor([0.5])
    ours_opt.step()
    torch_rms.step()
    assert abs(ours.item() - theirs.item()) > 1e-3


def test_build_optimizer_follows_the_recipe():
    params = [nn.Parameter(torch.zeros(2))]
    recipe = load_recipe("inception_v3_2016")
    rms = build_optimizer(recipe, params)
    assert isinstance(rms, TFRMSprop)
    assert rms.defaults == dict(lr=0.1, decay=0.9, momentum=0.9, epsilon=1.0)
    sgd = build_optimizer(recipe.with_overrides(optimizer="momentum", momentum=0.8), params)
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.8
    adamw = build_optimizer(load_recipe("small_data_cpu"), params)
    assert isinstance(adamw, torch.optim.AdamW)
    assert adamw.defaults["betas"] == (0.9, 0.999) and adamw.defaults["weight_decay"] == 0.0
    assert adamw.defaults["eps"] == 1e-8 and adamw.defaults["lr"] == 0.002


def test_l2_penalty_covers_conv_and_linear_weights_only():
    model = nn.Sequential(
        nn.Conv2d(1, 2, 1, bias=True), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 1)
    )
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
        model[3].weight.copy_(torch.tensor([[3.0, -1.0]]))
    weights = decayed_weights(model)
    assert [id(w) for w in weights] == [id(model[0].weight), id(model[3].weight)]
    penalty = l2_penalty(weights, 0.1)
    # 0.1 * (1 + 4 + 9 + 1) / 2
    assert penalty.item() == pytest.approx(0.75)
    penalty.backward()
    assert torch.allclose(model[0].weight.grad.flatten(), torch.tensor([0.1, 0.2]))
    assert model[0].bias.grad is None and model[1].weight.grad is None
    assert model[3].bias.grad is None


def test_staircase_exponential_decay():
    schedule = LearningRateSchedule("exponential", 0.1, 1000, decay_factor=0.16, decay_steps=10)
    assert schedule(0) == 0.1 and schedule(9) == 0.1
    assert schedule(10) == pytest.approx(0.016)
    assert schedule(25) == pytest.approx(0.1 * 0.16 * 0.16)
    smooth = LearningRateSchedule(
        "exponential", 0.1, 1000, decay_factor=0.16, decay_steps=10, staircase=False
    )
    assert smooth(5) == pytest.approx(0.1 * 0.4)


def test_schedule_from_the_original_recipe_uses_whole_epochs_of_batches():
    # flowers: 3,170 training images at batch 32 -> int(99.0625 * 30) = 2971 steps per decay.
    recipe = load_recipe("inception_v3_2016")
    schedule = LearningRateSchedule.from_recipe(recipe, 3170 / 32, total_steps=10_000)
    assert schedule.decay_steps == 2971
    assert schedule(2970) == pytest.approx(0.1) and schedule(2971) == pytest.approx(0.016)


def test_warmup_then_cosine():
    schedule = LearningRateSchedule("cosine", 1.0, 110, warmup_steps=10, end_lr=0.1)
    assert schedule(0) == pytest.approx(0.1) and schedule(4) == pytest.approx(0.5)
    assert schedule(10) == pytest.approx(1.0)
    assert schedule(60) == pytest.approx(0.55)
    assert schedule(110) == pytest.approx(0.1)
    assert schedule(500) == pytest.approx(0.1)


def test_schedule_sets_every_group():
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=5.0)
    LearningRateSchedule("constant", 0.25, 10).apply(optimizer, 3)
    assert optimizer.param_groups[0]["lr"] == 0.25


def test_gradient_clipping_by_global_norm():
    a = nn.Parameter(torch.zeros(2))
    b = nn.Parameter(torch.zeros(1))
    a.grad = torch.tensor([3.0, 4.0])
    b.grad = torch.tensor([12.0])
    norm = clip_gradients([a, b], 2.0)
    assert norm.item() == pytest.approx(13.0)
    assert torch.allclose(a.grad, torch.tensor([6.0, 8.0]) / 13, atol=1e-6)
    assert torch.allclose(b.grad, torch.tensor([24.0]) / 13, atol=1e-6)
    assert clip_gradients([a, b], 0.0) is None
