"""The modules a spec compiles to: plain nn.Modules with their resolved settings on show.

TF semantics live here: 'SAME' padding that puts the odd extra row/column after (and depends on
the input size when the stride is 2), average pooling that leaves the padding out of the count,
and `fit`, which lets a fixed-size kernel run on a smaller map.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from incept.spec.initializers import Initializer, check, conv_fans


def tf_same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF's 'SAME' padding along one axis: (before, after), the extra one after."""
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _needs_dynamic_pad(padding: str, same_padding: str, kernel, stride) -> bool:
    if padding != "same":
        return False
    if any(k % 2 == 0 for k in kernel):
        return True  # an even kernel has no symmetric 'same' padding: TF's rule is the only one
    return same_padding == "tf" and stride > 1


def _static_pad(padding: str, kernel) -> tuple[int, int]:
    return (kernel[0] // 2, kernel[1] // 2) if padding == "same" else (0, 0)


def _dynamic_pads(x: torch.Tensor, kernel, stride) -> tuple[int, int, int, int]:
    top, bottom = tf_same_pads(x.shape[-2], kernel[0], stride)
    left, right = tf_same_pads(x.shape[-1], kernel[1], stride)
    return left, right, top, bottom


def _pad_to_kernel(x: torch.Tensor, kernel) -> torch.Tensor:
    """Zero-pads a map smaller than the kernel around its centre up to the kernel's size."""
    dh, dw = max(kernel[0] - x.shape[-2], 0), max(kernel[1] - x.shape[-1], 0)
    if dh == 0 and dw == 0:
        return x
    return F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))


class ConvBN(nn.Module):
    """Conv2d, then batch norm and ReLU when asked (torchvision's BasicConv2d names: conv, bn)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: tuple[int, int],
        stride: int,
        *,
        padding: str,
        same_padding: str,
        bias: bool,
        norm: bool,
        bn_eps: float,
        bn_momentum: float,
        bn_scale: bool,
        act: str | None,
        init: Initializer,
        fit: bool,
    ):
        super().__init__()
        if act not in (None, "relu"):
            raise ValueError(f"unknown activation {act!r}: use 'relu' or None")
        self.kernel, self.stride = kernel, stride
        self.dynamic_pad = _needs_dynamic_pad(padding, same_padding, kernel, stride)
        static = (0, 0) if self.dynamic_pad else _static_pad(padding, kernel)
        self._make_convs(in_channels, out_channels, static, bias)
        self.bn = nn.BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum) if norm else None
        self.padding_rule = f"{padding}/{same_padding}" if padding == "same" else padding
        self.act, self.fit, self.bn_scale, self.init = act, fit, bn_scale, check(init)
        self.reset_parameters()

    @staticmethod
    def _conv(*args, **kwargs) -> nn.Conv2d:
        # Made on "meta" and then given memory: PyTorch's own init would be drawn and discarded.
        return nn.Conv2d(*args, **kwargs, device="meta").to_empty(device=torch.get_default_device())

    def _make_convs(self, in_channels: int, out_channels: int, static, bias: bool) -> None:
        self.conv = self._conv(in_channels, out_channels, self.kernel, self.stride, static,
                               bias=bias)  # fmt: skip

    def _convs(self) -> list[nn.Conv2d]:
        return [self.conv]

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    def reset_parameters(self) -> None:
        for conv in self._convs():
            self.init.draw_(conv.weight, *conv_fans(conv))
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        if self.bn is not None:
            self.bn.reset_parameters()
            self.bn.weight.requires_grad_(self.bn_scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fit:
            x = _pad_to_kernel(x, self.kernel)
        if self.dynamic_pad:
            x = F.pad(x, _dynamic_pads(x, self.kernel, self.stride))
        x = self._convolve(x)
        if self.bn is not None:
            x = self.bn(x)
        if self.act == "relu":
            x = F.relu(x, inplace=True)
        return x

    def extra_repr(self) -> str:
        return (
            f"padding={self.padding_rule}, act={self.act}, fit={self.fit}, "
            f"bn_scale={self.bn_scale}, init={self.init}"
        )


class SeparableConvBN(ConvBN):
    """TF's separable_conv2d: a depthwise conv (`multiplier` maps from each input channel), a
    1x1 `pointwise` conv, then batch norm and ReLU when asked, with ConvBN's options."""

    def __init__(self, in_channels, out_channels, kernel, stride, *, multiplier: int, **options):
        self.multiplier = multiplier
        super().__init__(in_channels, out_channels, kernel, stride, **options)

    def _make_convs(self, in_channels: int, out_channels: int, static, bias: bool) -> None:
        middle = in_channels * self.multiplier
        self.depthwise = self._conv(in_channels, middle, self.kernel, self.stride, static,
                                    groups=in_channels, bias=False)  # fmt: skip
        self.pointwise = self._conv(middle, out_channels, 1, bias=bias)

    def _convs(self) -> list[nn.Conv2d]:
        return [self.depthwise, self.pointwise]

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class Pool(nn.Module):
    """Max or average pooling with TF's padding rules; `fit` shrinks the kernel to the map."""

    def __init__(
        self,
        op: str,
        kernel: tuple[int, int],
        stride: int,
        *,
        padding: str,
        same_padding: str,
        fit: bool,
        count_pad: bool,
    ):
        super().__init__()
        self.op, self.kernel, self.stride = op, kernel, stride
        self.padding, self.same_padding, self.fit, self.count_pad = (
            padding,
            same_padding,
            fit,
            count_pad,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = self.kernel
        if self.fit:
            kernel = (min(kernel[0], x.shape[-2]), min(kernel[1], x.shape[-1]))
        if _needs_dynamic_pad(self.padding, self.same_padding, kernel, self.stride):
            pads = _dynamic_pads(x, kernel, self.stride)
            if self.op == "MaxPool":
                return F.max_pool2d(F.pad(x, pads, value=float("-inf")), kernel, self.stride)
            total = F.avg_pool2d(F.pad(x, pads), kernel, self.stride, divisor_override=1)
            if self.count_pad:
                return total / (kernel[0] * kernel[1])
            ones = F.pad(torch.ones_like(x[:1, :1]), pads)
            return total / F.avg_pool2d(ones, kernel, self.stride, divisor_override=1)
        pad = _static_pad(self.padding, kernel)
        if self.op == "MaxPool":
            return F.max_pool2d(x, kernel, self.stride, pad)
        return F.avg_pool2d(x, kernel, self.stride, pad, count_include_pad=self.count_pad)

    def extra_repr(self) -> str:
        rule = f"same/{self.same_padding}" if self.padding == "same" else self.padding
        return (
            f"{self.op} kernel={self.kernel}, stride={self.stride}, padding={rule}, "
            f"fit={self.fit}, count_pad={self.count_pad}"
        )


class Classifier(nn.Linear):
    """Global average pool, dropout, fully connected layer (its weight and bias are those of a
    plain nn.Linear, so torchvision's `fc` loads directly)."""

    def __init__(self, in_features: int, num_classes: int, *, dropout: float, init: Initializer):
        self.init = check(init)
        super().__init__(in_features, num_classes)
        self.dropout = dropout

    def reset_parameters(self) -> None:
        self.init.draw_(self.weight, self.in_features, self.out_features)
        nn.init.zeros_(self.bias)

    def reset_classes(self, num_classes: int) -> None:
        """A fresh layer for `num_classes` outputs, in place (the module object stays)."""
        like = self.weight
        self.weight = nn.Parameter(like.new_empty(num_classes, self.in_features))
        self.bias = nn.Parameter(like.new_empty(num_classes))
        self.out_features = num_classes
        self.reset_parameters()

    def _features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = GlobalPool.pool(x)
        return pooled, F.dropout(torch.flatten(pooled, 1), self.dropout, self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self._features(x)[1])

    def end_points(self, x: torch.Tensor, names) -> dict[str, torch.Tensor]:
        """`names` (of incept.spec.nodes.HEAD_POINTS), then Logits and Predictions."""
        pooled, features = self._features(x)
        values = {
            "global_pool": pooled,
            "PreLogits": features.view_as(pooled),
            "PreLogitsFlatten": features,
        }
        points = {name: values[name] for name in names}
        points["Logits"] = super().forward(features)
        points["Predictions"] = torch.softmax(points["Logits"], dim=1)
        return points

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, dropout={self.dropout}, init={self.init}"


class GlobalPool(nn.Module):
    """The head of a net built without logits: the pooled features, N x C (timm's
    num_classes=0); its end point `global_pool` keeps TF-Slim's N x C x 1 x 1."""

    @staticmethod
    def pool(x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(x), 1)

    def end_points(self, x: torch.Tensor, names=()) -> dict[str, torch.Tensor]:
        return {"global_pool": self.pool(x)}


class Block(nn.Module):
    """A named level of the spec (e.g. Mixed_5b): its layers registered flat under their rule
    names, run by `program`, a small tree of Chain/Join/AddResidual over them."""

    def __init__(self):
        super().__init__()
        self.program = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def extra_repr(self) -> str:
        return f"program={self.program!r}"


class Chain:
    def __init__(self, steps):
        self.steps = list(steps)

    def __call__(self, x):
        for step in self.steps:
            x = step(x)
        return x

    def __repr__(self):
        return " -> ".join(_step_name(s) for s in self.steps)


class Join:
    def __init__(self, paths):
        self.paths = list(paths)

    def __call__(self, x):
        return torch.cat([path(x) for path in self.paths], 1)

    def __repr__(self):
        return "concat[" + " | ".join(_step_name(p) for p in self.paths) + "]"


class AddResidual:
    def __init__(self, body, scale: float, act: str | None):
        self.body, self.scale, self.act = body, scale, act

    def __call__(self, x):
        y = x + self.scale * self.body(x)
        return F.relu(y, inplace=True) if self.act == "relu" else y

    def __repr__(self):
        return f"residual[x + {self.scale} * ({_step_name(self.body)}), act={self.act}]"


def _step_name(step) -> str:
    if isinstance(step, nn.Module):
        return getattr(step, "spec_name", type(step).__name__)
    return repr(step)
