"""Inception-v2 (Ioffe & Szegedy 2015, "Batch Normalization", model 6a2), as TF-Slim defines
it: Inception-v1 with batch norm, 5x5 convs as two 3x3s, and a separable 7x7 first conv.
Shapes are for a 224x224 input at width 1.

Initialisers are slim's: inception_v2_arg_scope's variance scaling for every conv and the
logits, except where inception_v2_base passes its own truncated normal: 1.0 on the separable
first conv (depthwise and pointwise weights alike), 0.1 on Conv2d_2b_1x1 and on the pool
projections, 0.09 on the 1x1 reductions ahead of the 3x3s."""

from __future__ import annotations

from incept.nets.registry import register
from incept.spec import (
    AvgPool,
    Branch,
    Classifier,
    Concat,
    Conv,
    MaxPool,
    Net,
    SeparableConv,
)
from incept.spec.initializers import trunc_normal, variance_scaling


def mixed(name, c1x1, c3x3, c3x3dbl, pool, pool_op=AvgPool):  # (reduce, out) pairs
    return Concat(
        Branch("1x1", Conv(c1x1, 1)),
        Branch("3x3", Conv(c3x3[0], 1, init=trunc_normal(0.09)), Conv(c3x3[1], 3)),
        Branch("3x3dbl", Conv(c3x3dbl[0], 1, init=trunc_normal(0.09)), Conv(c3x3dbl[1], 3),
               Conv(c3x3dbl[1], 3)),
        Branch("_pool", pool_op(3), Conv(pool, 1, init=trunc_normal(0.1))),
        name=name,
    )  # fmt: skip


def reduction(name, c3x3, c3x3dbl):  # stride-2 'SAME' convs: the grid halves (rounding up)
    return Concat(
        Branch("3x3", Conv(c3x3[0], 1, init=trunc_normal(0.09)), Conv(c3x3[1], 3, 2)),
        Branch("3x3dbl", Conv(c3x3dbl[0], 1, init=trunc_normal(0.09)), Conv(c3x3dbl[1], 3),
               Conv(c3x3dbl[1], 3, 2)),
        Branch("pool", MaxPool(3, 2)),
        name=name,
    )  # fmt: skip


def spec(num_classes=1000, dropout=0.2, **defaults) -> Net:
    return Net(
        "InceptionV2",
        # slim's separable_conv2d keeps its own defaults: biases, ReLU, no batch norm
        SeparableConv(64, 7, 2, multiplier=8, name="Conv2d_1a_7x7", bias=True, norm=False,
                      init=trunc_normal(1.0)),  # 112x112x64
        MaxPool(3, 2, name="MaxPool_2a_3x3"),  # 56x56x64
        Conv(64, 1, name="Conv2d_2b_1x1", init=trunc_normal(0.1)),
        Conv(192, 3, name="Conv2d_2c_3x3"),  # 56x56x192
        MaxPool(3, 2, name="MaxPool_3a_3x3"),  # 28x28x192
        mixed("Mixed_3b", 64, (64, 64), (64, 96), 32),  # 28x28x256
        mixed("Mixed_3c", 64, (64, 96), (64, 96), 64),  # 28x28x320
        reduction("Mixed_4a", (128, 160), (64, 96)),  # 14x14x576
        mixed("Mixed_4b", 224, (64, 96), (96, 128), 128),
        mixed("Mixed_4c", 192, (96, 128), (96, 128), 128),
        mixed("Mixed_4d", 160, (128, 160), (128, 160), 96),
        mixed("Mixed_4e", 96, (128, 192), (160, 192), 96),  # 14x14x576
        reduction("Mixed_5a", (128, 192), (192, 256)),  # 7x7x1024
        mixed("Mixed_5b", 352, (192, 320), (160, 224), 128),
        mixed("Mixed_5c", 352, (192, 320), (192, 224), 128, pool_op=MaxPool),  # 7x7x1024
        Classifier(num_classes, slim="Logits/Conv2d_1c_1x1", dropout=dropout),
        init=variance_scaling(),
        **defaults,
    )  # fmt: skip


register("inception_v2", spec, has_aux=False, image_size=224, semantics="tf", bn_scale=False)
