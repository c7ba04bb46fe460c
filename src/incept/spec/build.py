"""The builder: compiles a `Net` spec into a `SpecNet` of ordinary nn.Modules.

Channels are counted while building (no Lazy modules); the width multiplier is one rule,
`max(int(c * width), min_depth)`, applied to every scaled conv; each top-level node is an end
point and `final_endpoint` stops the build there. Names come from `incept.spec.naming`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
from torch import nn

from incept.spec import layers
from incept.spec.naming import BranchNames, LevelNames
from incept.spec.nodes import (
    BASE_DEFAULTS,
    CLASSIFIER_OPTIONS,
    CONV_OPTIONS,
    POOL_OPTIONS,
    AuxHead,
    Branch,
    Classifier,
    Concat,
    Conv,
    Net,
    Residual,
    SeparableConv,
    Seq,
    _Pool,
)


@dataclass
class _Context:
    """What the walk carries down: scoped defaults, the level leaves register on, names."""

    defaults: dict
    level: LevelNames
    width: float
    min_depth: int
    branch: BranchNames | None = None
    shortcut_channels: int | None = None

    def inside(self, **changes) -> _Context:
        return replace(self, **changes)


@dataclass
class _Built:
    run: object  # a module or a program callable
    channels: int
    stride: int = 1


class SpecNet(nn.Module):
    """A network compiled from a spec. Eval: `model(x)` gives logits (the pooled features when
    built without classes, the last end point's map when cut short by `final_endpoint`); train:
    `(logits, aux)` when the aux head is on. `end_points(x)` gives every end point, TF-Slim's
    names.

    `stages`: the top-level modules in order, each with its kind: "body" (an end point),
    "hidden" (a body level that is not one), "aux", "head" (the classifier) or "pool" (the
    head of a net without logits)."""

    def __init__(self, spec: Net, *, width: float, min_depth: int, final_endpoint, aux_logits):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.scope = spec.scope
        self.width, self.min_depth = width, min_depth
        self.stages: list[tuple[str, str]] = []  # (end point / module name, kind)
        self.slim_scopes: dict[str, str] = {}  # module path -> TF-Slim scope
        self.feature_info: list[dict] = []  # every body level, end point or not (as timm's)
        self.num_classes = 0
        self.has_aux = False
        self.head_points: tuple[str, ...] = ()
        _build_net(self, spec, final_endpoint, aux_logits)

    def forward(self, x: torch.Tensor):
        aux = None
        for name, kind in self.stages:
            module = self._modules[name]
            if kind == "aux":
                if self.training:
                    aux = module(x)
            else:
                x = module(x)
        return (x, aux) if aux is not None else x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last body level's output (Mixed_7c for v3), before any head."""
        for name, kind in self.stages:
            if kind in ("body", "hidden"):
                x = self._modules[name](x)
        return x

    def end_points(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        points: OrderedDict[str, torch.Tensor] = OrderedDict()
        heads: OrderedDict[str, torch.Tensor] = OrderedDict()
        for name, kind in self.stages:
            module = self._modules[name]
            if kind == "body":
                x = points[name] = module(x)
            elif kind == "hidden":
                x = module(x)
            elif kind == "aux":
                heads[name] = module(x)
            else:
                heads.update(module.end_points(x, self.head_points))
        points.update(heads)
        return points

    def classifiers(self) -> list[layers.Classifier]:
        return [m for m in self.modules() if isinstance(m, layers.Classifier)]

    def reset_classifier(self, num_classes: int) -> None:
        """New, freshly initialised classifier layers (main and aux) for `num_classes`."""
        if not self.classifiers():
            raise ValueError(
                f"{self.scope} was built without logits: build it with num_classes instead"
            )
        for head in self.classifiers():
            head.reset_classes(num_classes)
        self.num_classes = num_classes


def _build_net(net: SpecNet, spec: Net, final_endpoint, aux_logits) -> None:
    nodes = list(_top_level_nodes(spec.body, {**BASE_DEFAULTS, **spec.defaults}))
    names = [node.name for node, _ in nodes if _is_end_point(node)]
    if final_endpoint is not None and final_endpoint not in names:
        raise ValueError(f"{spec.scope} has no end point {final_endpoint!r}; it has {names}")
    # TF-Slim's aux head lives in the classifier (inception_v3(), not inception_v3_base()) and
    # needs classes: a net cut short or built without logits has none.
    with_logits = final_endpoint is None and any(
        isinstance(node, Classifier) and node.num_classes for node, _ in nodes
    )
    root = LevelNames(net.slim_scopes, spec.scope, spec.slim_renames, module=net)
    channels, stride = 3, 1
    for node, defaults in nodes:
        if isinstance(node, AuxHead) and not (aux_logits and with_logits):
            continue
        if isinstance(node, Classifier) and not node.num_classes:
            net.add_module("global_pool", layers.GlobalPool())
            net.stages.append(("global_pool", "pool"))
            continue
        built = _build(node, channels, _Context(defaults, root, net.width, net.min_depth))
        if isinstance(node, AuxHead):
            net.stages.append((node.name, "aux"))
            net.has_aux = True
        elif isinstance(node, Classifier):
            net.stages.append((node.name, "head"))
            net.num_classes = node.num_classes
            net.head_points = node.points
        else:
            channels, stride = built.channels, stride * built.stride
            net.stages.append((node.name, "body" if _is_end_point(node) else "hidden"))
            net.feature_info.append({"module": node.name, "num_chs": channels, "reduction": stride})
            if node.name == final_endpoint:
                break


def _is_end_point(node) -> bool:
    return not isinstance(node, (AuxHead, Classifier)) and getattr(node, "end_point", True)


def _top_level_nodes(body, defaults):
    """Top-level nodes in order, unnamed `Seq`s opened up (they only scope defaults)."""
    for node in body:
        if isinstance(node, Seq) and node.name is None:
            yield from _top_level_nodes(node.items, {**defaults, **node.options})
        else:
            yield node, defaults


def _build(node, channels: int, ctx: _Context) -> _Built:
    if isinstance(node, (Conv, _Pool, Classifier)):
        return _build_leaf(node, channels, ctx)
    if node.name is None:
        return _build_content(node, channels, ctx)
    # A named container is a level of its own: a Block its layers register on.
    block = layers.Block()
    block.spec_name = node.name
    level = ctx.level.child(node.name, node.slim, block)
    built = _build_content(node, channels, ctx.inside(level=level, branch=None))
    block.program = built.run
    return _Built(block, built.channels, built.stride)


def _build_content(node, channels: int, ctx: _Context) -> _Built:
    ctx = ctx.inside(defaults={**ctx.defaults, **node.options})
    if isinstance(node, Concat):
        return _build_concat(node, channels, ctx)
    if isinstance(node, Residual):
        body = _build_sequence(node.items, channels, ctx.inside(shortcut_channels=channels))
        if body.channels != channels:
            raise ValueError(f"residual body gives {body.channels} channels, not {channels}")
        return _Built(layers.AddResidual(body.run, node.scale, node.act), channels, body.stride)
    if isinstance(node, Branch):
        ctx = ctx.inside(branch=ctx.level.branch(node.tag, _count_convs(node), index=0))
    return _build_sequence(node.items, channels, ctx)


def _build_sequence(items, channels: int, ctx: _Context) -> _Built:
    steps, stride = [], 1
    for item in items:
        built = _build(item, channels, ctx)
        steps.append(built.run)
        channels, stride = built.channels, stride * built.stride
    run = steps[0] if len(steps) == 1 else layers.Chain(steps)
    return _Built(run, channels, stride)


def _build_concat(node: Concat, channels: int, ctx: _Context) -> _Built:
    paths, total, strides = [], 0, set()
    parallel = ctx.branch is not None  # parallel layers inside a branch: one position, a, b..
    if parallel:
        ctx.branch.open_parallel()
    for index, item in enumerate(node.items):
        if parallel:
            ctx.branch.next_parallel(index)
            built = _build(item, channels, ctx)
        else:
            if not isinstance(item, Branch):
                item = Branch(None, item)
            branch = ctx.level.branch(item.tag, _count_convs(item), index=index)
            item_ctx = ctx.inside(defaults={**ctx.defaults, **item.options}, branch=branch)
            built = _build_sequence(item.items, channels, item_ctx)
        paths.append(built.run)
        total += built.channels
        strides.add(built.stride)
    if parallel:
        ctx.branch.close_parallel()
    if len(strides) > 1:
        raise ValueError(f"branches of {node.name or 'a Concat'} reduce differently: {strides}")
    return _Built(layers.Join(paths), total, strides.pop())


def _build_leaf(node, channels: int, ctx: _Context) -> _Built:
    if isinstance(node, Conv):
        out = node.out
        if out is None:
            if ctx.shortcut_channels is None:
                raise ValueError("Conv(None, ...) is only allowed inside a Residual")
            out = ctx.shortcut_channels
        elif node.scaled:
            out = max(int(out * ctx.width), ctx.min_depth)
        options = _resolve(node, CONV_OPTIONS, ctx.defaults)
        if isinstance(node, SeparableConv):
            # TF-Slim's rule: the depthwise stage never has more channels than the output.
            multiplier = max(min(node.multiplier, out // channels), 1)
            module = layers.SeparableConvBN(
                channels, out, node.kernel, node.stride, multiplier=multiplier, **options
            )
        else:
            module = layers.ConvBN(channels, out, node.kernel, node.stride, **options)
        built = _Built(module, out, node.stride)
    elif isinstance(node, _Pool):
        options = _resolve(node, POOL_OPTIONS, ctx.defaults)
        module = layers.Pool(node.op, node.kernel, node.stride, **options)
        built = _Built(module, channels, node.stride)
    else:
        options = _resolve(node, CLASSIFIER_OPTIONS, ctx.defaults)
        module = layers.Classifier(channels, node.num_classes, **options)
        built = _Built(module, node.num_classes)
    ctx.level.register_leaf(node, module, ctx.branch)
    return built


def _resolve(node, known: set, defaults: dict) -> dict:
    return {k: v for k, v in {**defaults, **node.options}.items() if k in known}


def _count_convs(node) -> int:
    if isinstance(node, Conv):
        return 1
    return sum(_count_convs(item) for item in getattr(node, "items", ()))


def build(
    spec: Net,
    *,
    width: float = 1.0,
    min_depth: int = 16,
    final_endpoint: str | None = None,
    aux_logits: bool = True,
) -> SpecNet:
    """Compiles `spec`: `width` scales every conv's channels (never the logits);
    `final_endpoint` builds the net up to that end point and no heads (TF-Slim's *_base);
    `aux_logits` builds the aux head where the spec has one and the net has logits."""
    return SpecNet(
        spec, width=width, min_depth=min_depth, final_endpoint=final_endpoint, aux_logits=aux_logits
    )
