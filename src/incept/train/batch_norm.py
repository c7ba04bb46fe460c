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

from collections.abc import Callable

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
        self.micro_mean: list[torch.Tensor] = []  # under gradient accumulation (`collect`)

    def before_forward(self) -> None:
        if self.moving:
            torch._foreach_copy_(self.saved, self.moving)

    @torch.no_grad()
    def collect(self, index: int, count: int) -> None:
        """Gradient accumulation: after micro-batch `index` of the step's `count` (its
        backward pass done) the buffers hold that micro-batch's statistics; the last call
        leaves the mean of all `count` there, for `after_forward` to blend once a step. The
        mean of equal-sized micro-batches' means is the whole batch's mean; their variances'
        mean leaves out the spread between the micro-batch means. A running mean (a lerp)
        keeps the buffers of a layer in eval mode bit for bit."""
        if count == 1 or not self.moving:
            return
        if index == 0:
            self.micro_mean = [tensor.clone() for tensor in self.moving]
        else:
            torch._foreach_lerp_(self.micro_mean, self.moving, 1.0 / (index + 1))
        if index == count - 1:
            torch._foreach_copy_(self.moving, self.micro_mean)

    @torch.no_grad()
    def after_forward(self, updates: int) -> float:
        """Blends the averages back in after a training step's forward and backward passes;
        `updates` counts the forward passes before this one. Returns the decay used."""
        decay = warmup_decay(self.decay, updates)
        if self.moving:
            # moving = batch + decay * (saved - batch) = decay * saved + (1 - decay) * batch
            torch._foreach_lerp_(self.moving, self.saved, decay)
        return decay


@torch.no_grad()
def recompute_statistics(
    model: nn.Module,
    batches,
    forward: Callable[[torch.Tensor], object],
    reduce: Callable[[torch.Tensor], torch.Tensor] = lambda sums: sums,
) -> int:
    """Sets the moving mean and variance of every batch norm of `model` that is in training
    mode to the statistics of `batches` under the current weights ("precise" batch norm).

    Why: a moving average mixes statistics of many past weights; early in a run, when the
    weights move a lot each step, it lags them and evaluation mode computes something the
    trained network never saw. The statistics of a few hundred images under today's weights
    are what training mode normalises with, so evaluation then agrees with training.
    The variance kept is that of all the values pooled (each batch's spread about its own
    mean plus the spread of the batch means). Larger batches give better statistics: the
    deeper layers see activations normalised by the earlier layers' batch statistics, which
    are noisier in small batches, so callers pass the largest batches that fit.

    `forward(images)` runs the model (in its autocast); `reduce` sums a tensor over the
    replicas, so every replica ends with the statistics of all of their batches. Frozen
    layers (eval mode) keep theirs. Returns the number of batches used.
    """
    layers = [
        module
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
        and module.track_running_stats
        and module.training
    ]
    if not layers:
        return 0
    counts: dict[nn.Module, int] = {}

    def count(module, inputs):  # values per channel in this batch: N * H * W
        counts[module] = inputs[0].numel() // inputs[0].shape[1]

    hooks = [layer.register_forward_pre_hook(count) for layer in layers]
    momenta = [layer.momentum for layer in layers]
    before = {layer: (layer.running_mean.clone(), layer.running_var.clone()) for layer in layers}
    sums: torch.Tensor | None = None
    used = 0
    try:
        for layer in layers:
            layer.momentum = 1.0  # each pass leaves its batch's mean and unbiased variance
        for images in batches:
            counts.clear()
            forward(images)
            parts = []
            for layer in layers:
                n = counts.get(layer, 0)  # 0: a head this pass did not run
                # the batch's sums of x and of x squared, from the mean and the unbiased
                # variance that the pass left
                mean = layer.running_mean.double()
                parts += [mean * n, layer.running_var.double() * (n - 1) + mean * mean * n]
                parts.append(mean.new_full((1,), float(n)))
            flat = torch.cat(parts)
            sums = flat if sums is None else sums + flat
            used += 1
    finally:
        for hook in hooks:
            hook.remove()
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if sums is None:  # no batch here; the other replicas' sums still count
        reference = layers[0].running_mean
        size = sum(2 * layer.running_mean.numel() + 1 for layer in layers)
        sums = torch.zeros(size, dtype=torch.float64, device=reference.device)
    sums = reduce(sums)
    offset = 0
    for layer in layers:
        channels = layer.running_mean.numel()
        total_x = sums[offset : offset + channels]
        total_x2 = sums[offset + channels : offset + 2 * channels]
        n = sums[offset + 2 * channels]
        offset += 2 * channels + 1
        if n == 0:  # a head no pass ran keeps its statistics
            layer.running_mean.copy_(before[layer][0])
            layer.running_var.copy_(before[layer][1])
            continue
        mean = total_x / n
        variance = (total_x2 - n * mean * mean).clamp_min(0) / (n - 1).clamp_min(1)
        mean, variance = mean.to(layer.running_mean.dtype), variance.to(layer.running_var.dtype)
        if not (torch.isfinite(mean).all() and torch.isfinite(variance).all()):
            mean, variance = before[layer]  # weights that overflow: the moving averages stay
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(variance)
    return used
