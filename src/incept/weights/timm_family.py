"""timm's Inception state dicts under our parameter names.

timm's inception_v3 already uses torchvision's names, which are ours. Its inception_v4 and
inception_resnet_v2 (ports of Cadene's TF-model-zoo) name blocks by position (`features.6`,
`repeat.3`) and layers by branch and place in an nn.Sequential (`branch1.0`); ours follow the
spec's rule (`Mixed_5c.branch1_1`, see incept.spec.naming). timm has no aux heads for v4 and
Inception-ResNet-v2, so those stay as they are.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from incept.errors import UserError

# inception_v4: timm's features.<i> -> our end point.
_V4_BLOCKS = [
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Mixed_3a", "Mixed_4a", "Mixed_5a",
    *(f"Mixed_5{x}" for x in "bcde"), "Mixed_6a", *(f"Mixed_6{x}" for x in "bcdefgh"),
    "Mixed_7a", *(f"Mixed_7{x}" for x in "bcd"),
]  # fmt: skip
# The lone conv of v4's two-branch stem blocks, beside a max pool.
_V4_LONE_CONVS = {"Mixed_3a.conv.": "Mixed_3a.branch1.", "Mixed_5a.conv.": "Mixed_5a.branch0."}

# inception_resnet_v2: timm's top-level module -> ours.
_IRV2_MODULES = {
    "conv2d_1a": "Conv2d_1a_3x3",
    "conv2d_2a": "Conv2d_2a_3x3",
    "conv2d_2b": "Conv2d_2b_3x3",
    "conv2d_3b": "Conv2d_3b_1x1",
    "conv2d_4a": "Conv2d_4a_3x3",
    "mixed_5b": "Mixed_5b",
    "mixed_6a": "Mixed_6a",
    "mixed_7a": "Mixed_7a",
    "block8": "Block8",
    "conv2d_7b": "Conv2d_7b_1x1",
    "classif": "fc",
}
# timm's nn.Sequential of repeated blocks -> (our end point, block name stem, counted from 1).
_IRV2_REPEATS = {
    "repeat": ("Repeat", "block35_"),
    "repeat_1": ("PreAuxLogits", "block17_"),
    "repeat_2": ("Repeat_2", "block8_"),
}


def _branch_layers(rest: str) -> str:
    """A layer's name inside a block: timm's place in a branch -> our rule's position."""
    if rest.startswith("branch3.1."):  # every timm branch3 Sequential is (pool, its one conv)
        return "branch3." + rest.removeprefix("branch3.1.")
    in_sequential = re.match(r"branch(\d)\.(\d+)\.(.*)", rest)  # index i -> position i + 1
    if in_sequential:
        branch, index, tail = in_sequential.groups()
        return f"branch{branch}_{int(index) + 1}.{tail}"
    flat = re.match(r"branch(\d)_(\d)([ab]?)\.(.*)", rest)  # v4's Inception-C: branch<b>_<i>[ab]
    if flat:
        branch, index, parallel, tail = flat.groups()
        return f"branch{branch}_{int(index) + 1}{parallel}.{tail}"
    if rest.startswith("conv2d."):  # Inception-ResNet's projection: a bare nn.Conv2d in timm
        return "conv2d.conv." + rest.removeprefix("conv2d.")
    return rest


def _v4_name(key: str) -> str:
    if key.startswith("last_linear."):
        return "fc." + key.removeprefix("last_linear.")
    match = re.match(r"features\.(\d+)\.(.*)", key)
    if match is None:
        raise KeyError(key)
    block, rest = _V4_BLOCKS[int(match[1])], match[2]
    name = f"{block}.{rest}"
    for theirs, ours in _V4_LONE_CONVS.items():
        if name.startswith(theirs):
            return ours + name.removeprefix(theirs)
    if not rest.startswith("branch"):
        return name  # a stem conv: conv.* / bn.*
    return f"{block}.{_branch_layers(rest)}"


def _irv2_name(key: str) -> str:
    top, _, rest = key.partition(".")
    if top in _IRV2_REPEATS:
        end_point, stem = _IRV2_REPEATS[top]
        index, _, rest = rest.partition(".")
        return f"{end_point}.{stem}{int(index) + 1}.{_branch_layers(rest)}"
    if top not in _IRV2_MODULES:
        raise KeyError(key)
    return f"{_IRV2_MODULES[top]}.{_branch_layers(rest)}"


_RENAMERS = {
    "inception_v3": lambda key: key,
    "inception_v4": _v4_name,
    "inception_resnet_v2": _irv2_name,
}


def timm_name(model: str, key: str) -> str:
    """Our parameter name for `key` of timm's model `model` (our registered name)."""
    if model not in _RENAMERS:
        raise UserError(f"no timm weights for {model}: timm has {', '.join(sorted(_RENAMERS))}")
    try:
        return _RENAMERS[model](key)
    except KeyError:
        raise UserError(f"{key!r} is not a parameter of timm's {model}: wrong model?") from None


def from_timm(model: str, state: Mapping) -> dict:
    """timm's state dict for `model` with our names (tensors unchanged)."""
    return {timm_name(model, key): value for key, value in state.items()}
