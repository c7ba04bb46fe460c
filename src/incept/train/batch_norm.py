"""Batch-norm moving statistics that are right at every step: the moving averages' warm-up.

The original's statistics decay by 0.9997 a step: they average over ~3,300 steps, so for the
first thousands of steps they still hold their initial values (mean 0, variance 1) and
evaluation mode computes nonsense; "evaluation accuracy is near zero while training accuracy
is high" was among its users' commonest complaints. Its weight averages did not have the
problem because TF lowers their decay early on, decay = min(decay, (1 + n) / (10 + n)) after n
updates. The same warm-up is applied here to every batch norm's moving mean and variance: the
first update takes 90% of the batch's statistics, the twentieth 30%, and from ~33,000 updates
on the recipe's decay holds, so long runs keep the original's behaviour.

How, without changing a module attribute each step (torch.compile would recompile for each
new momentum): the modules run with momentum 1, so a training forward pass leaves the batch's
statistics in the buffers; before the pass the averages are copied aside, after it they are
blended back, `moving = decay * moving + (1 - decay) * batch`, in one foreach kernel over the
few thousand numbers that batch norm holds (after the backward pass, which may read the
buffers). A layer in eval mode (frozen batch norm) leaves its
buffers untouched, and the blend of equal values keeps them bit for bit. The decay is a
function of the step, so a resumed run blends exactly as the first one did; under DDP the
buffers of replica 0 (the ones saved and broadcast) follow the same rule, and cross-replica
batch norm hands the global batch's statistics to the same blend.
"""

from __future__ import annotations

import torch
from torch import nn

from incept.train.ema import warmup_decay


class MovingStatistics:
    """The blend of every batch norm's moving mean and variance in `model`."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.moving: list[torch.Tensor] = []
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                module.momentum = 1.0  # the forward pass leaves the batch's statistics
                self.moving += [module.running_mean, module.running_var]
        self.saved = [tensor.clone() for tensor in self.moving]

    def before_forward(self) -> None:
        if self.moving:
            torch._foreach_copy_(self.saved, self.moving)

    @torch.no_grad()
    def after_forward(self, updates: int) -> float:
        """Blends the averages back in after a training step's forward and backward passes;
        `updates` counts the forward passes before this one. Returns the decay used."""
        decay = warmup_decay(self.decay, updates)
        if self.moving:
            # moving = batch + decay * (saved - batch) = decay * saved + (1 - decay) * batch
            torch._foreach_lerp_(self.moving, self.saved, decay)
        return decay
