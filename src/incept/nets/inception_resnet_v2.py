"""Inception-ResNet-v2 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact of
Residual Connections on Learning"), as TF-Slim defines it (output_stride 16, feature maps not
aligned). Shapes are for a 299x299 input at width 1.

Every stride-2 layer is 'VALID', so TF's padding and PyTorch's agree here; the average pool
leaves the padding out of the count in TF-Slim and in timm's port alike, under both semantics.
Slim's repeated blocks live under `Repeat/block35_N`, `Repeat_1/block17_N` (the end point
PreAuxLogits) and `Repeat_2/block8_N`; the last block8 (`Block8`) ends without a ReLU. Of these
only PreAuxLogits is an end point in slim (and so here): Repeat, Repeat_2 and Block8 are levels
of the module tree (their weights' names) without one.
Initialisers are slim's: inception_resnet_v2_arg_scope sets none, so every conv and both
logits layers keep slim's default, xavier (Glorot uniform).
"""

from __future__ import annotations

from incept.nets.inception_v3 import stem
from incept.nets.registry import register
from incept.spec import (
    AuxHead,
    AvgPool,
    Branch,
    Classifier,
    Concat,
    Conv,
    MaxPool,
    Net,
    Residual,
    Seq,
)
from incept.spec.initializers import xavier


def residual(name, scale, channels_1x1, *towers, act="relu", end_point=True):
    """act(x + scale * up(concat(a 1x1 conv, towers))): `up`, a 1x1 conv with biases and no
    batch norm, projects back onto x's channels."""
    return Residual(
        Concat(Conv(channels_1x1, 1, slim="Branch_0/Conv2d_1x1"), *towers),
        Conv(None, 1, name="conv2d", slim="Conv2d_1x1", bias=True, norm=False, act=None),
        scale=scale,
        act=act,
        name=name,
        end_point=end_point,
    )


def block35(name):  # 35x35x320
    return residual(
        name,
        0.17,
        32,
        Branch(None, Conv(32, 1), Conv(32, 3)),
        Branch(None, Conv(32, 1), Conv(48, 3), Conv(64, 3)),
    )


def block17(name):  # 17x17x1088
    return residual(name, 0.10, 192, Branch(None, Conv(128, 1), Conv(160, (1, 7)),
                                            Conv(192, (7, 1))))  # fmt: skip


def block8(name, scale=0.20, act="relu", end_point=True):  # 8x8x2080
    branch = Branch(None, Conv(192, 1), Conv(224, (1, 3)), Conv(256, (3, 1)))
    return residual(name, scale, 192, branch, act=act, end_point=end_point)


def spec(num_classes=1000, dropout=0.2, **defaults) -> Net:
    return Net(
        "InceptionResnetV2",
        stem(),  # Inception-v3's: 299 -> 35x35x192
        Concat(  # 35x35x320
            Conv(96, 1, slim="Branch_0/Conv2d_1x1"),
            Branch(None, Conv(48, 1), Conv(64, 5)),
            Branch(None, Conv(64, 1), Conv(96, 3), Conv(96, 3)),
            Branch(None, AvgPool(3), Conv(64, 1)),
            name="Mixed_5b",
        ),
        Seq(*(block35(f"block35_{i}") for i in range(1, 11)), name="Repeat", end_point=False),
        Concat(  # 17x17x1088
            Conv(384, 3, 2, padding="valid"),
            Branch(None, Conv(256, 1), Conv(256, 3), Conv(384, 3, 2, padding="valid")),
            MaxPool(3, 2, padding="valid"),
            name="Mixed_6a",
        ),
        Seq(*(block17(f"block17_{i}") for i in range(1, 21)), name="PreAuxLogits", slim="Repeat_1"),
        AuxHead(
            AvgPool(5, 3, padding="valid", fit=True, slim="Conv2d_1a_3x3"),  # 5x5x1088
            Conv(128, 1, name="conv0", slim="Conv2d_1b_1x1"),
            Conv(768, 5, name="conv1", slim="Conv2d_2a_5x5", padding="valid", fit=True),
            Classifier(num_classes, slim="Logits"),
            name="AuxLogits",
        ),
        Concat(  # 8x8x2080
            Branch(None, Conv(256, 1), Conv(384, 3, 2)),
            Branch(None, Conv(256, 1), Conv(288, 3, 2)),
            Branch(None, Conv(256, 1), Conv(288, 3, padding="same"), Conv(320, 3, 2)),
            MaxPool(3, 2),
            name="Mixed_7a",
            padding="valid",
        ),
        Seq(*(block8(f"block8_{i}") for i in range(1, 10)), name="Repeat_2", end_point=False),
        block8("Block8", scale=1.0, act=None, end_point=False),
        Conv(1536, 1, name="Conv2d_7b_1x1"),  # 8x8x1536
        Classifier(
            num_classes,
            slim="Logits/Logits",
            dropout=dropout,
            points=("global_pool", "PreLogitsFlatten"),
        ),
        init=xavier(),
        **{**defaults, "count_pad": False},  # under either semantics: see above
    )


register("inception_resnet_v2", spec, has_aux=True, image_size=299, semantics="tf", bn_scale=False)
