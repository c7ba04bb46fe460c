"""The nodes of the model-spec language: a network is a tree of these, plain data.

Leaves (`Conv`, `SeparableConv`, `MaxPool`, `AvgPool`, `Classifier`) compute; containers
(`Seq`, `Concat`, `Branch`, `Residual`, `AuxHead`) arrange. Any keyword a container takes beyond
its own fields is a *scoped default*: it applies to every leaf below that knows the option,
unless a closer container or the leaf itself says otherwise (TF-Slim's arg_scope, as data).

Names: a named container makes a level in the module tree (and, at the top of a `Net`, an end
point, unless it says `end_point=False`); a leaf inside a level is registered flat on it, under
its `name` or a name derived by the rule in `incept.spec.naming`. `slim=` gives a node's
TF-Slim scope when the rule does not.
"""

from __future__ import annotations

from typing import Any

from incept.spec.initializers import xavier

# Options each leaf kind understands, and what they mean:
CONV_OPTIONS = {
    "padding",  # "same" or "valid"
    "same_padding",  # "tf": TF's SAME (extra row/column after, stride-aware); "symmetric"
    "bias",  # the convolution's own bias
    "norm",  # batch norm after the convolution
    "bn_eps",
    "bn_momentum",  # PyTorch's convention: 1 - TF's decay
    "bn_scale",  # False: gamma stays 1 and is not trained (TF-Slim's default scale=False)
    "act",  # "relu" or None
    "init",  # the weights' initialiser: trunc_normal(std), variance_scaling(), xavier()
    "fit",  # a map smaller than the kernel is zero-padded around to the kernel's size
}
POOL_OPTIONS = {"padding", "same_padding", "fit", "count_pad"}
CLASSIFIER_OPTIONS = {"init", "dropout"}

# Batch-norm momentum (PyTorch's convention, 1 - TF's decay) of every net built without a
# recipe: the language's and `nets.create`'s default. Training sets its own from the recipe's
# bn_decay, which every recipe states.
BN_MOMENTUM = 0.01

# The language's own defaults: TF-Slim's conv2d with batch norm, and its pools; weights drawn
# as slim's conv2d and fully_connected draw them when no arg_scope says otherwise.
BASE_DEFAULTS: dict[str, Any] = {
    "padding": "same",
    "same_padding": "tf",
    "bias": False,
    "norm": True,
    "bn_eps": 1e-3,
    "bn_momentum": BN_MOMENTUM,
    "bn_scale": True,
    "act": "relu",
    "init": xavier(),
    "fit": False,
    "count_pad": False,
    "dropout": 0.0,
}


def _pair(value: int | tuple[int, int]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class Node:
    """Common fields: `name` (module name / end point), `slim` (TF-Slim scope override) and
    `options` (a leaf's own settings, or a container's scoped defaults)."""

    def __init__(self, *, name=None, slim=None, options=None):
        self.name = name
        self.slim = slim
        self.options = dict(options or {})


class Conv(Node):
    """Convolution + batch norm + activation. `out=None`: as many channels as the input of the
    enclosing `Residual` (its projection back onto the shortcut)."""

    def __init__(self, out, kernel, stride=1, *, name=None, slim=None, scaled=True, **options):
        _check_options("Conv", options, CONV_OPTIONS)
        self.out = out
        self.kernel = _pair(kernel)
        self.stride = stride
        self.scaled = scaled
        Node.__init__(self, name=name, slim=slim, options=options)

    def __repr__(self):
        return _repr(self, self.out, self.kernel, self.stride)


class SeparableConv(Conv):
    """TF's separable_conv2d: a depthwise conv turning each input channel into `multiplier`
    maps (fewer when the output has fewer channels than that makes), a 1x1 conv to `out`, then
    batch norm and activation as `Conv`."""

    def __init__(self, out, kernel, stride=1, *, multiplier, **kwargs):
        self.multiplier = multiplier
        Conv.__init__(self, out, kernel, stride, **kwargs)


class _Pool(Node):
    op = ""

    def __init__(self, kernel, stride=1, *, name=None, slim=None, **options):
        _check_options(type(self).__name__, options, POOL_OPTIONS)
        self.kernel = _pair(kernel)
        self.stride = stride
        Node.__init__(self, name=name, slim=slim, options=options)

    def __repr__(self):
        return _repr(self, self.kernel, self.stride)


class MaxPool(_Pool):
    op = "MaxPool"


class AvgPool(_Pool):
    op = "AvgPool"


# What a classifier head computes, by the names TF-Slim's networks give it as end points
# (a Classifier lists the ones its network has; Logits and Predictions always follow).
HEAD_POINTS = {
    "global_pool": "the pooled map, N x C x 1 x 1",  # v4, Inception-ResNet-v2
    "PreLogits": "the pooled map after dropout, N x C x 1 x 1",  # v3
    "PreLogitsFlatten": "the pooled map after dropout, flattened: N x C",  # v4, IRv2
}


class Classifier(Node):
    """Global average pool, dropout, fully connected layer to `num_classes` (never scaled by
    the width multiplier). At the top of a Net its end points are `points` (names from
    HEAD_POINTS), Logits and Predictions. `num_classes` None or 0: no logits layer, only the
    pool (TF-Slim's num_classes=0): the net returns the pooled features, N x C, and its last
    end point is `global_pool`."""

    def __init__(self, num_classes, *, name="fc", slim=None, points=(), **options):
        _check_options("Classifier", options, CLASSIFIER_OPTIONS)
        unknown = set(points) - set(HEAD_POINTS)
        if unknown:
            raise ValueError(f"no head end point {', '.join(sorted(unknown))}: {HEAD_POINTS}")
        self.num_classes = num_classes
        self.points = tuple(points)
        Node.__init__(self, name=name, slim=slim, options=options)

    def __repr__(self):
        return _repr(self, self.num_classes)


class _Container(Node):
    """`end_point=False`: a named top-level container that is a level of the module tree but
    not an end point (TF-Slim's unregistered `Repeat` stacks)."""

    def __init__(self, *items, name=None, slim=None, end_point=True, **defaults):
        self.items = tuple(items)
        self.end_point = end_point
        Node.__init__(self, name=name, slim=slim, options=defaults)

    def __repr__(self):
        return _repr(self, *self.items)


class Seq(_Container):
    """Its items one after the other."""


class Branch(_Container):
    """One branch of a `Concat`: its items one after the other. `tag` names the branch's
    layers by the rule (e.g. tag "5x5" gives branch5x5_1, branch5x5_2)."""

    def __init__(self, tag, *items, **kwargs):
        self.tag = tag
        _Container.__init__(self, *items, **kwargs)


class Concat(_Container):
    """Runs each branch on the same input and concatenates their outputs along channels.
    Items that are not a `Branch` (inside a branch: parallel layers) are its branches as is."""


class Residual(_Container):
    """`act(x + scale * items(x))`: the items end with a `Conv(None, ...)` projecting back onto
    the shortcut's channels."""

    def __init__(self, *items, scale=1.0, act="relu", **kwargs):
        self.scale = scale
        self.act = act
        _Container.__init__(self, *items, **kwargs)


class AuxHead(_Container):
    """A side head on the current feature map: trains with the main loss (training mode only);
    the main path goes on unchanged. Built only when the model asks for the aux head and builds
    its logits: as in TF-Slim, a net cut short by `final_endpoint` (slim's *_base) or built
    without classes has none."""


class Net:
    """A whole network: `scope` is the TF-Slim variable scope (e.g. "InceptionV3"), `body` the
    top-level nodes, each named (they are the end points; an unnamed `Seq` only scopes
    defaults), `defaults` the outermost scope. `slim_renames` is the table of TF-Slim names
    the naming rule does not give: {rule's name: real name}, relative to `scope`."""

    def __init__(self, scope, *body, slim_renames=None, **defaults):
        self.scope = scope
        self.body = tuple(body)
        self.slim_renames = dict(slim_renames or {})
        self.defaults = defaults
        for node in body:
            if node.name is None and not isinstance(node, Seq):
                raise ValueError(f"every top-level node of {scope} needs a name: {node!r}")


def _check_options(kind: str, options: dict, known: set[str]) -> None:
    unknown = set(options) - known
    if unknown:
        raise TypeError(f"{kind} has no option {', '.join(sorted(unknown))}")


def _repr(node, *args) -> str:
    parts = [repr(a) for a in args]
    if node.name:
        parts.append(f"name={node.name!r}")
    parts += [f"{k}={v!r}" for k, v in node.options.items()]
    return f"{type(node).__name__}({', '.join(parts)})"
