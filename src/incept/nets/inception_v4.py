"""Inception-v4 (Szegedy et al. 2016, "Inception-v4, Inception-ResNet and the Impact of Residual
Connections on Learning"), as TF-Slim defines it. Shapes are for a 299x299 input at width 1.

Every stride-2 layer is 'VALID', so TF's padding and PyTorch's agree here; the average pools
leave the padding out of the count in TF-Slim and in timm's port alike, under both semantics.
Initialisers are slim's: inception_arg_scope gives every conv variance scaling and leaves
fully_connected alone, so both logits layers keep its default, xavier.
"""

from __future__ import annotations

from incept.nets.registry import register
from incept.spec import AuxHead, AvgPool, Branch, Classifier, Concat, Conv, MaxPool, Net, Seq
from incept.spec.initializers import variance_scaling, xavier


def block_a(name):  # Mixed_5b..5e: 35x35x384
    return Concat(
        Conv(96, 1),
        Branch(None, Conv(64, 1), Conv(96, 3)),
        Branch(None, Conv(64, 1), Conv(96, 3), Conv(96, 3)),
        Branch(None, AvgPool(3), Conv(96, 1)),
        name=name,
    )


def block_b(name):  # Mixed_6b..6h: 17x17x1024, 7x7 factorised into 1x7 and 7x1
    return Concat(
        Conv(384, 1),
        Branch(None, Conv(192, 1), Conv(224, (1, 7)), Conv(256, (7, 1))),
        Branch(None, Conv(192, 1), Conv(192, (7, 1)), Conv(224, (1, 7)), Conv(224, (7, 1)),
               Conv(256, (1, 7))),
        Branch(None, AvgPool(3), Conv(128, 1)),
        name=name,
    )  # fmt: skip


def block_c(name):  # Mixed_7b..7d: 8x8x1536
    return Concat(
        Conv(256, 1),
        Branch(None, Conv(384, 1), Concat(Conv(256, (1, 3)), Conv(256, (3, 1)))),
        Branch(None, Conv(384, 1), Conv(448, (3, 1)), Conv(512, (1, 3)),
               Concat(Conv(256, (1, 3)), Conv(256, (3, 1)))),
        Branch(None, AvgPool(3), Conv(256, 1)),
        name=name,
    )  # fmt: skip


def spec(num_classes=1000, dropout=0.2, **defaults) -> Net:
    return Net(
        "InceptionV4",
        Seq(  # the stem: 299 -> 35
            Conv(32, 3, 2, name="Conv2d_1a_3x3"),  # 149x149x32
            Conv(32, 3, name="Conv2d_2a_3x3"),  # 147x147x32
            Conv(64, 3, name="Conv2d_2b_3x3", padding="same"),  # 147x147x64
            Concat(MaxPool(3, 2), Conv(96, 3, 2), name="Mixed_3a"),  # 73x73x160
            Concat(
                Branch(None, Conv(64, 1), Conv(96, 3)),
                Branch(None, Conv(64, 1), Conv(64, (1, 7), padding="same"),
                       Conv(64, (7, 1), padding="same"), Conv(96, 3)),
                name="Mixed_4a",
            ),  # 71x71x192
            Concat(Conv(192, 3, 2), MaxPool(3, 2), name="Mixed_5a"),  # 35x35x384
            padding="valid",
        ),  # fmt: skip
        *(block_a(f"Mixed_5{x}") for x in "bcde"),
        Concat(  # 17x17x1024
            Conv(384, 3, 2, padding="valid"),
            Branch(None, Conv(192, 1), Conv(224, 3), Conv(256, 3, 2, padding="valid")),
            MaxPool(3, 2, padding="valid"),
            name="Mixed_6a",
        ),
        *(block_b(f"Mixed_6{x}") for x in "bcdefgh"),
        AuxHead(
            AvgPool(5, 3, padding="valid", fit=True, slim="AvgPool_1a_5x5"),  # 5x5x1024
            Conv(128, 1, name="conv0", slim="Conv2d_1b_1x1"),
            Conv(768, 5, name="conv1", slim="Conv2d_2a", padding="valid", fit=True),
            Classifier(num_classes, slim="Aux_logits", init=xavier()),
            name="AuxLogits",
        ),
        Concat(  # 8x8x1536
            Branch(None, Conv(192, 1), Conv(192, 3, 2, padding="valid")),
            Branch(None, Conv(256, 1), Conv(256, (1, 7)), Conv(320, (7, 1)),
                   Conv(320, 3, 2, padding="valid")),
            MaxPool(3, 2, padding="valid"),
            name="Mixed_7a",
        ),  # fmt: skip
        *(block_c(f"Mixed_7{x}") for x in "bcd"),
        Classifier(num_classes, slim="Logits/Logits", dropout=dropout, init=xavier(),
                   points=("global_pool", "PreLogitsFlatten")),
        slim_renames={
            "Mixed_3a/Branch_1/Conv2d_1a_3x3": "Mixed_3a/Branch_1/Conv2d_0a_3x3",
            "Mixed_4a/Branch_0/Conv2d_0b_3x3": "Mixed_4a/Branch_0/Conv2d_1a_3x3",
            "Mixed_4a/Branch_1/Conv2d_0d_3x3": "Mixed_4a/Branch_1/Conv2d_1a_3x3",
        },
        init=variance_scaling(),
        **{**defaults, "count_pad": False},  # under either semantics: see above
    )  # fmt: skip


register("inception_v4", spec, has_aux=True, image_size=299, semantics="tf", bn_scale=False)
