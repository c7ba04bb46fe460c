"""Batch-norm momentum has one default: the spec language's is `nets.create`'s."""

from __future__ import annotations

import torch

import incept
from incept.nets import registry
from incept.spec import build
from incept.spec.nodes import BN_MOMENTUM


def _momenta(model: torch.nn.Module) -> set[float]:
    return {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)}


def test_a_spec_built_directly_and_a_created_net_share_the_momentum():
    entry = registry.entry("inception_v1")
    with torch.device("meta"):
        created = incept.nets.create("inception_v1", num_classes=3, width=0.1)
        built = build(entry.spec(num_classes=3, **entry.defaults), width=0.1)
    assert _momenta(created) == _momenta(built) == {BN_MOMENTUM}
    assert created.config["bn_momentum"] == BN_MOMENTUM


def test_an_explicit_momentum_wins():
    with torch.device("meta"):
        model = incept.nets.create("inception_v1", num_classes=3, width=0.1, bn_momentum=0.25)
    assert _momenta(model) == {0.25}
