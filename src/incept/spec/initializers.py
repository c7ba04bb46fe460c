"""Weight initialisers as data: the values the spec language's `init` option takes.

TF-Slim's three, as its source defines them (tf_slim/layers/initializers.py):
- `trunc_normal(std)`: TF's truncated_normal_initializer, normal(0, std) with draws beyond
  2 std drawn again, so the weights' own std is about 0.88 std;
- `variance_scaling()`: slim's variance_scaling_initializer() with its defaults (factor 2,
  fan_in, not uniform): a truncated normal with std sqrt(1.3 * factor / n), the 1.3 making up
  for the cut;
- `xavier()`: slim's xavier_initializer(), the default of its conv2d and fully_connected
  when nothing sets one: variance scaling with factor 1, fan_avg, uniform in +-sqrt(3 / n).

Fans are counted as TF counts them on its kernel layout [kh, kw, in, out]: fan_in =
kh * kw * in, fan_out = kh * kw * out, where a depthwise kernel's `out` is its channel
multiplier; a fully connected layer's fans are its input and output sizes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

_MODES = ("fan_in", "fan_out", "fan_avg")


@torch.no_grad()
def truncated_normal_(tensor: torch.Tensor, std: float) -> torch.Tensor:
    """normal(0, std) cut at 2 std, drawn by inverting the normal CDF on a uniform (one pass;
    torch's rejection sampler is several times slower)."""
    edge = math.erf(2 / math.sqrt(2))  # P(|z| < 2) mapped to [-edge, edge] by 2u - 1
    tensor.uniform_(-edge, edge).erfinv_().mul_(std * math.sqrt(2))
    return tensor


class Initializer:
    """Draws a layer's weights in place, given TF's fans for that layer."""

    def draw_(self, weight: torch.Tensor, fan_in: float, fan_out: float) -> torch.Tensor:
        raise NotImplementedError


@dataclass(frozen=True, repr=False)
class TruncatedNormal(Initializer):
    std: float

    def draw_(self, weight, fan_in, fan_out):
        return truncated_normal_(weight, self.std)

    def __repr__(self):
        return f"trunc_normal({self.std})"


@dataclass(frozen=True, repr=False)
class VarianceScaling(Initializer):
    factor: float = 2.0
    mode: str = "fan_in"
    uniform: bool = False

    def __post_init__(self):
        if self.mode not in _MODES:
            raise ValueError(f"variance scaling mode must be one of {_MODES}, got {self.mode!r}")

    def draw_(self, weight, fan_in, fan_out):
        n = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        if self.uniform:
            limit = math.sqrt(3.0 * self.factor / n)
            with torch.no_grad():
                return weight.uniform_(-limit, limit)
        return truncated_normal_(weight, math.sqrt(1.3 * self.factor / n))

    def __repr__(self):
        if self == xavier():
            return "xavier()"
        changed = [
            f"{name}={getattr(self, name)!r}"
            for name, default in (("factor", 2.0), ("mode", "fan_in"), ("uniform", False))
            if getattr(self, name) != default
        ]
        return f"variance_scaling({', '.join(changed)})"


def trunc_normal(std: float) -> TruncatedNormal:
    """TF's truncated_normal_initializer(0, std)."""
    return TruncatedNormal(std)


def variance_scaling(factor: float = 2.0, mode: str = "fan_in", uniform: bool = False):
    """TF-Slim's variance_scaling_initializer(factor, mode, uniform); mode in lower case."""
    return VarianceScaling(factor, mode, uniform)


def xavier() -> VarianceScaling:
    """TF-Slim's xavier_initializer(): Glorot uniform, limit sqrt(6 / (fan_in + fan_out))."""
    return VarianceScaling(1.0, "fan_avg", True)


def conv_fans(conv: nn.Conv2d) -> tuple[int, int]:
    """TF's fans of a conv (a depthwise one too: its TF kernel is [kh, kw, in, multiplier])."""
    field = conv.kernel_size[0] * conv.kernel_size[1]
    return conv.in_channels * field, conv.out_channels // conv.groups * field


def check(init) -> Initializer:
    if not isinstance(init, Initializer):
        raise ValueError(
            f"init must be trunc_normal(std), variance_scaling(...) or xavier(), got {init!r}"
        )
    return init
