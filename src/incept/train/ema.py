"""Moving average of every weight and batch-norm statistic, as `tf.train.ExponentialMovingAverage`.

The original averaged `trainable_variables() + moving_average_variables()`: the weights and the
BN moving means and variances. With `num_updates` given, TF lowers the decay early in training,
decay = min(decay, (1 + step) / (10 + step)), so the average is not stuck near the random
initial weights for thousands of steps. Evaluation then uses the averaged values.

The shadow copy is keyed like the model's `state_dict`, so it loads into the model directly.
"""

from __future__ import annotations

import torch
from torch import nn


def warmup_decay(decay: float, step: int) -> float:
    """TF's decay for the update made after `step` earlier updates."""
    return min(decay, (1.0 + step) / (10.0 + step))


class ExponentialMovingAverage:
    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        # TF starts each shadow variable at the variable's value when the average is created.
        self.shadow = {name: value.detach().clone() for name, value in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> float:
        """Moves the average toward the model; `step` counts the optimizer updates before the
        one just made (0 after the first). Returns the decay used."""
        decay = warmup_decay(self.decay, step)
        for name, value in model.state_dict().items():
            shadow = self.shadow[name]
            if shadow.is_floating_point():
                # shadow -= (1 - decay) * (shadow - value)
                shadow.sub_(shadow - value.detach().to(shadow.dtype), alpha=1.0 - decay)
            else:
                # Counters such as BN's num_batches_tracked are not averaged.
                shadow.copy_(value)
        return decay

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shadow

    def load_state_dict(self, shadow: dict[str, torch.Tensor]) -> None:
        missing = set(self.shadow) ^ set(shadow)
        if missing:
            raise KeyError(f"moving average keys differ from the model's: {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, value in shadow.items():
                self.shadow[name].copy_(value)
