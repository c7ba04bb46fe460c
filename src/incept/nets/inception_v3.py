"""Inception-v3 (Szegedy et al. 2015, "Rethinking the Inception Architecture"), as TF-Slim
defines it, in the spec language. Shapes in comments are for a 299x299 input at width 1.

Initialisers are the 2016 release's (its inception_model.py): trunc_normal(0.1) for every
conv, 0.01 for the aux head's 5x5 conv and the logits, 0.001 for the aux logits. (tf_slim
1.1's inception_v3 keeps the aux head's two but draws the rest by variance scaling.)"""

from __future__ import annotations

from incept.nets.registry import register
from incept.spec import AuxHead, AvgPool, Branch, Classifier, Concat, Conv, MaxPool, Net, Seq
from incept.spec.initializers import trunc_normal


def stem():  # 299 -> 35 (Inception-ResNet-v2 shares it)
    return Seq(
        Conv(32, 3, 2, name="Conv2d_1a_3x3"),  # 149x149x32
        Conv(32, 3, name="Conv2d_2a_3x3"),  # 147x147x32
        Conv(64, 3, name="Conv2d_2b_3x3", padding="same"),  # 147x147x64
        MaxPool(3, 2, name="MaxPool_3a_3x3"),  # 73x73x64
        Conv(80, 1, name="Conv2d_3b_1x1"),  # 73x73x80
        Conv(192, 3, name="Conv2d_4a_3x3"),  # 71x71x192
        MaxPool(3, 2, name="MaxPool_5a_3x3"),  # 35x35x192
        padding="valid",
    )


def block_a(name, pool_channels):  # Mixed_5b..5d: 35x35
    return Concat(
        Branch("1x1", Conv(64, 1)),
        Branch("5x5", Conv(48, 1), Conv(64, 5)),
        Branch("3x3dbl", Conv(64, 1), Conv(96, 3), Conv(96, 3)),
        Branch("_pool", AvgPool(3), Conv(pool_channels, 1)),
        name=name,
    )


def block_c(name, c7):  # Mixed_6b..6e: 17x17, 7x7 factorised into 1x7 and 7x1
    return Concat(
        Branch("1x1", Conv(192, 1)),
        Branch("7x7", Conv(c7, 1), Conv(c7, (1, 7)), Conv(192, (7, 1))),
        Branch("7x7dbl", Conv(c7, 1), Conv(c7, (7, 1)), Conv(c7, (1, 7)), Conv(c7, (7, 1)),
               Conv(192, (1, 7))),
        Branch("_pool", AvgPool(3), Conv(192, 1)),
        name=name,
    )  # fmt: skip


def block_e(name):  # Mixed_7b..7c: 8x8, expanded filter bank
    return Concat(
        Branch("1x1", Conv(320, 1)),
        Branch("3x3", Conv(384, 1), Concat(Conv(384, (1, 3)), Conv(384, (3, 1)))),
        Branch("3x3dbl", Conv(448, 1), Conv(384, 3), Concat(Conv(384, (1, 3)), Conv(384, (3, 1)))),
        Branch("_pool", AvgPool(3), Conv(192, 1)),
        name=name,
    )


def spec(num_classes=1000, dropout=0.2, **defaults) -> Net:
    return Net(
        "InceptionV3",
        stem(),  # 299 -> 35x35x192
        block_a("Mixed_5b", 32),  # 35x35x256
        block_a("Mixed_5c", 64),  # 35x35x288
        block_a("Mixed_5d", 64),  # 35x35x288
        Concat(  # 17x17x768
            Branch("3x3", Conv(384, 3, 2, padding="valid")),
            Branch("3x3dbl", Conv(64, 1), Conv(96, 3), Conv(96, 3, 2, padding="valid")),
            Branch("pool", MaxPool(3, 2, padding="valid")),
            name="Mixed_6a",
        ),
        block_c("Mixed_6b", 128),
        block_c("Mixed_6c", 160),
        block_c("Mixed_6d", 160),
        block_c("Mixed_6e", 192),  # 17x17x768
        AuxHead(  # VALID padding, kernels fitted to a map smaller than 5x5
            AvgPool(5, 3, slim="AvgPool_1a_5x5"),  # 5x5x768
            Conv(128, 1, name="conv0", slim="Conv2d_1b_1x1"),
            Conv(768, 5, name="conv1", slim="Conv2d_2a_5x5", init=trunc_normal(0.01)),
            Classifier(num_classes, slim="Conv2d_2b_1x1", init=trunc_normal(0.001)),
            name="AuxLogits",
            padding="valid",
            fit=True,
        ),
        Concat(  # 8x8x1280
            Branch("3x3", Conv(192, 1), Conv(320, 3, 2, padding="valid")),
            Branch(
                "7x7x3",
                Conv(192, 1),
                Conv(192, (1, 7)),
                Conv(192, (7, 1)),
                Conv(192, 3, 2, padding="valid"),
            ),
            Branch("pool", MaxPool(3, 2, padding="valid")),
            name="Mixed_7a",
        ),  # fmt: skip
        block_e("Mixed_7b"),  # 8x8x2048
        block_e("Mixed_7c"),  # 8x8x2048
        Classifier(
            num_classes,
            slim="Logits/Conv2d_1c_1x1",
            dropout=dropout,
            init=trunc_normal(0.01),
            points=("PreLogits",),
        ),
        slim_renames={
            "Mixed_5c/Branch_1/Conv2d_0a_1x1": "Mixed_5c/Branch_1/Conv2d_0b_1x1",
            "Mixed_5c/Branch_1/Conv2d_0b_5x5": "Mixed_5c/Branch_1/Conv_1_0c_5x5",
            "Mixed_6a/Branch_0/Conv2d_1a_3x3": "Mixed_6a/Branch_0/Conv2d_1a_1x1",
            "Mixed_6a/Branch_1/Conv2d_1a_3x3": "Mixed_6a/Branch_1/Conv2d_1a_1x1",
            "Mixed_7b/Branch_1/Conv2d_0c_3x1": "Mixed_7b/Branch_1/Conv2d_0b_3x1",
        },
        init=trunc_normal(0.1),
        **defaults,
    )


register("inception_v3", spec, has_aux=True, image_size=299, bn_scale=False)
