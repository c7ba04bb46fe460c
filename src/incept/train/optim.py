"""Optimizers, learning-rate schedules and the weight-decay term, as the original computed them.

TensorFlow's RMSProp differs from `torch.optim.RMSprop` in three ways that matter with the
original's epsilon of 1.0: the mean square starts at 1 (not 0), epsilon sits inside the square
root, and the learning rate multiplies the gradient before it enters the momentum buffer (so a
learning-rate drop takes effect gradually, through the buffer). `TFRMSprop` is that update.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from incept.train.recipe import Recipe


class TFRMSprop(torch.optim.Optimizer):
    """RMSProp in TensorFlow's form (`tf.train.RMSPropOptimizer` with momentum):

    ms  = decay * ms + (1 - decay) * grad**2        (ms starts at 1.0)
    mom = momentum * mom + lr * grad / sqrt(ms + epsilon)
    w   = w - mom
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        decay: float = 0.9,
        momentum: float = 0.9,
        epsilon: float = 1.0,
    ):
        if lr < 0 or not 0.0 <= decay < 1.0 or momentum < 0 or epsilon < 0:
            raise ValueError(f"bad RMSProp settings lr={lr} decay={decay} momentum={momentum}")
        defaults = dict(lr=lr, decay=decay, momentum=momentum, epsilon=epsilon)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                state = self.state[param]
                if not state:
                    state["mean_square"] = torch.ones_like(param)
                    state["momentum_buffer"] = torch.zeros_like(param)
                mean_square = state["mean_square"]
                buffer = state["momentum_buffer"]
                mean_square.mul_(group["decay"]).addcmul_(grad, grad, value=1.0 - group["decay"])
                denominator = (mean_square + group["epsilon"]).sqrt_()
                buffer.mul_(group["momentum"]).addcdiv_(grad, denominator, value=group["lr"])
                param.sub_(buffer)
        return loss


def build_optimizer(recipe: Recipe, params: Iterable) -> torch.optim.Optimizer:
    """The recipe's optimizer over `params` (weight decay is a loss term, see `l2_penalty`)."""
    if recipe.optimizer == "rmsprop":
        return TFRMSprop(
            params,
            lr=recipe.learning_rate,
            decay=recipe.rmsprop_decay,
            momentum=recipe.momentum,
            epsilon=recipe.epsilon,
        )
    if recipe.optimizer == "momentum":
        # TF's MomentumOptimizer and torch's SGD keep the same buffer: m = mu*m + g; w -= lr*m.
        return torch.optim.SGD(params, lr=recipe.learning_rate, momentum=recipe.momentum)
    return torch.optim.AdamW(
        params,
        lr=recipe.learning_rate,
        betas=(recipe.adam_beta1, recipe.adam_beta2),
        eps=recipe.epsilon,
        weight_decay=recipe.adamw_decay,
    )


def decayed_weights(model: nn.Module) -> list[nn.Parameter]:
    """The weights the original regularised: conv and fully connected kernels (no BN, no bias)."""
    return [
        module.weight
        for module in model.modules()
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.requires_grad
    ]


def l2_penalty(weights: list[nn.Parameter], weight_decay: float) -> torch.Tensor:
    """TF-Slim's l2_regularizer summed: weight_decay * sum(w**2) / 2 (its gradient is wd * w)."""
    if weight_decay == 0.0 or not weights:
        return torch.zeros((), device=weights[0].device if weights else "cpu")
    total = torch.stack([weight.float().pow(2).sum() for weight in weights]).sum()
    return 0.5 * weight_decay * total


class LearningRateSchedule:
    """The learning rate for the update that follows `step` updates already done.

    A pure function of the step, so a resumed run continues on exactly the same curve; its
    `state_dict` records the resolved numbers for the checkpoint and for the logs.
    """

    def __init__(
        self,
        kind: str,
        base_lr: float,
        total_steps: int,
        warmup_steps: int = 0,
        decay_factor: float = 1.0,
        decay_steps: int = 1,
        staircase: bool = True,
        end_lr: float = 0.0,
    ):
        if kind not in ("constant", "exponential", "cosine"):
            raise ValueError(f"unknown schedule {kind!r}")
        self.kind = kind
        self.base_lr = base_lr
        self.total_steps = max(1, total_steps)
        self.warmup_steps = max(0, warmup_steps)
        self.decay_factor = decay_factor
        self.decay_steps = max(1, decay_steps)
        self.staircase = staircase
        self.end_lr = end_lr

    @classmethod
    def from_recipe(cls, recipe: Recipe, steps_per_epoch: float, total_steps: int):
        decay_steps = 1
        if recipe.lr_schedule == "exponential":
            # inception_train.py: decay_steps = int(num_batches_per_epoch * num_epochs_per_decay)
            decay_steps = int(steps_per_epoch * recipe.lr_decay_epochs)
        return cls(
            recipe.lr_schedule,
            recipe.learning_rate,
            total_steps,
            warmup_steps=int(round(recipe.warmup_epochs * steps_per_epoch)),
            decay_factor=recipe.lr_decay_factor or 1.0,
            decay_steps=decay_steps,
            staircase=bool(recipe.lr_staircase),
            end_lr=recipe.lr_end or 0.0,
        )

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "exponential":
            exponent = step / self.decay_steps
            if self.staircase:
                exponent = math.floor(exponent)
            return self.base_lr * self.decay_factor**exponent
        if self.kind == "cosine":
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            cosine = 0.5 * (1 + math.cos(math.pi * progress))
            return self.end_lr + (self.base_lr - self.end_lr) * cosine
        return self.base_lr

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        lr = self(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict:
        return dict(vars(self))


def clip_gradients(params: list[nn.Parameter], max_norm: float) -> torch.Tensor | None:
    """Scales all gradients together so their global L2 norm is at most `max_norm` (0: off)."""
    if max_norm <= 0:
        return None
    return torch.nn.utils.clip_grad_norm_(params, max_norm)
