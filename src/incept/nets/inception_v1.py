"""Inception-v1 (GoogLeNet, Szegedy et al. 2014, "Going deeper with convolutions"), as TF-Slim
defines it: batch norm in every conv, no aux heads. Shapes are for a 224x224 input.

Initialisers are slim's: inception_v1_base scopes trunc_normal(0.01) over every layer it
builds; the logits conv, outside that scope, keeps inception_v1_arg_scope's variance scaling.
"""

from __future__ import annotations

from incept.nets.registry import register
from incept.spec import Branch, Classifier, Concat, Conv, MaxPool, Net
from incept.spec.initializers import trunc_normal, variance_scaling


def mixed(name, c1x1, c3x3, c5x5, pool):  # c3x3, c5x5: (reduce, out); slim's "5x5" is a 3x3
    return Concat(
        Branch("1x1", Conv(c1x1, 1)),
        Branch("3x3", Conv(c3x3[0], 1), Conv(c3x3[1], 3)),
        Branch("5x5", Conv(c5x5[0], 1), Conv(c5x5[1], 3)),
        Branch("_pool", MaxPool(3), Conv(pool, 1)),
        name=name,
    )


def spec(num_classes=1000, dropout=0.2, **defaults) -> Net:
    return Net(
        "InceptionV1",
        Conv(64, 7, 2, name="Conv2d_1a_7x7"),  # 112x112x64
        MaxPool(3, 2, name="MaxPool_2a_3x3"),  # 56x56x64
        Conv(64, 1, name="Conv2d_2b_1x1"),
        Conv(192, 3, name="Conv2d_2c_3x3"),  # 56x56x192
        MaxPool(3, 2, name="MaxPool_3a_3x3"),  # 28x28x192
        mixed("Mixed_3b", 64, (96, 128), (16, 32), 32),  # 28x28x256
        mixed("Mixed_3c", 128, (128, 192), (32, 96), 64),  # 28x28x480
        MaxPool(3, 2, name="MaxPool_4a_3x3"),  # 14x14x480
        mixed("Mixed_4b", 192, (96, 208), (16, 48), 64),  # 14x14x512
        mixed("Mixed_4c", 160, (112, 224), (24, 64), 64),
        mixed("Mixed_4d", 128, (128, 256), (24, 64), 64),
        mixed("Mixed_4e", 112, (144, 288), (32, 64), 64),  # 14x14x528
        mixed("Mixed_4f", 256, (160, 320), (32, 128), 128),  # 14x14x832
        MaxPool(2, 2, name="MaxPool_5a_2x2"),  # 7x7x832
        mixed("Mixed_5b", 256, (160, 320), (32, 128), 128),
        mixed("Mixed_5c", 384, (192, 384), (48, 128), 128),  # 7x7x1024
        Classifier(
            num_classes, slim="Logits/Conv2d_0c_1x1", dropout=dropout, init=variance_scaling()
        ),
        slim_renames={"Mixed_5b/Branch_2/Conv2d_0b_3x3": "Mixed_5b/Branch_2/Conv2d_0a_3x3"},
        init=trunc_normal(0.01),
        **defaults,
    )


register("inception_v1", spec, has_aux=False, image_size=224, semantics="tf", bn_scale=False)
