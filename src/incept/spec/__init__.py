"""The model-spec language (our TF-Slim): networks as plain data, compiled to nn.Modules.

See docs/spec-language.md. `nodes` holds the vocabulary, `build` the compiler, `naming` the
PyTorch and TF-Slim naming rules, `layers` the modules a spec compiles to, `initializers` the
values of the `init` option.
"""

from incept.spec.build import SpecNet, build
from incept.spec.initializers import trunc_normal, variance_scaling, xavier
from incept.spec.naming import slim_variable_names
from incept.spec.nodes import (
    AuxHead,
    AvgPool,
    Branch,
    Classifier,
    Concat,
    Conv,
    MaxPool,
    Net,
    Residual,
    SeparableConv,
    Seq,
)

__all__ = [
    "AuxHead",
    "AvgPool",
    "Branch",
    "Classifier",
    "Concat",
    "Conv",
    "MaxPool",
    "Net",
    "Residual",
    "SeparableConv",
    "Seq",
    "SpecNet",
    "build",
    "slim_variable_names",
    "trunc_normal",
    "variance_scaling",
    "xavier",
]
