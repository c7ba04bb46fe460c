"""Inception-v1, -v2, -v4 and Inception-ResNet-v2 against their references: TF-Slim's own
definitions (end-point shapes, variable names, parameter counts, outputs of a checkpoint slim
wrote) and timm's ports (parameter counts, feature shapes). timm's weights: tests/weights."""

import json
import pathlib

import numpy as np
import pytest
import timm
import torch

import incept
from incept.cli import main as incept_main
from incept.errors import UserError
from incept.spec import slim_variable_names

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
FAMILY = FIXTURES / "family"
SLIM_CASES = [  # made by tf-slim 1.1 itself (tests/fixtures/make_slim_shapes.py)
    c
    for c in json.loads((FIXTURES / "slim" / "slim_endpoint_shapes.json").read_text())
    if c["model"] in ("inception_v1", "inception_v2")
]
PUBLISHED = json.loads((FAMILY / "slim_published_shapes.json").read_text())["cases"]
SLIM_VARIABLES = json.loads((FAMILY / "slim_variables.json").read_text())
FAMILY_NAMES = ["inception_v1", "inception_v2", "inception_v4", "inception_resnet_v2"]


def on_meta(name, **kwargs):
    """A full-size model without memory or arithmetic: for shapes, names and counts."""
    with torch.device("meta"):
        return incept.nets.create(name, **kwargs).eval()


def nchw(shape):
    return [shape[0], shape[3], shape[1], shape[2]] if len(shape) == 4 else list(shape)


def shapes(model, batch, height, width):
    points = model.end_points(torch.empty(batch, 3, height, width, device="meta"))
    return {k: list(v.shape) for k, v in points.items()}


def parameters(model, trainable_only=False):
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


@pytest.mark.parametrize(
    "name, num_classes, aux_logits, expected",
    [
        # TF-Slim's trainable count (6,618,649; 11,179,361) plus a gamma per BN channel
        ("inception_v1", 1001, False, 6_625_929),
        ("inception_v2", 1001, False, 11_189_249),
        # timm's ports (no aux heads), the published 42.68 M and 55.84 M
        ("inception_v4", 1000, False, 42_679_816),
        ("inception_resnet_v2", 1000, False, 55_843_464),
    ],
)
def test_parameter_counts(name, num_classes, aux_logits, expected):
    model = on_meta(name, num_classes=num_classes, aux_logits=aux_logits)
    assert parameters(model) == expected
    if name in ("inception_v4", "inception_resnet_v2"):
        with torch.device("meta"):
            theirs = timm.create_model(name, num_classes=num_classes)
        assert parameters(theirs) == expected


@pytest.mark.parametrize("case", SLIM_CASES, ids=lambda c: f"{c['model']}-{c['image_size']}px")
def test_v1_v2_end_points_and_trainable_parameters_are_tf_slims(case):
    model = on_meta(case["model"], num_classes=case["num_classes"], width=case["width"])
    size = case["image_size"]
    ours = shapes(model, 2, size, size)
    assert ours == case["end_points"]  # tf-slim 1.1's v1 and v2 name no pre-logits tensor
    assert list(ours) == list(case["end_points"])  # slim's order too
    assert parameters(model, trainable_only=True) == case["trainable_parameters"]  # no gamma


@pytest.mark.parametrize("case", PUBLISHED, ids=lambda c: f"{c['model']}-{c['source'].split()[1]}")
def test_v4_and_inception_resnet_v2_end_points_are_slims_published_ones(case):
    model = on_meta(
        case["model"],
        num_classes=case["num_classes"],  # None: the base network (slim's final_endpoint)
        final_endpoint=case.get("final_endpoint"),
    )
    ours = shapes(model, case["batch"], *case["image_size"])
    theirs = {k: nchw(v) for k, v in case["end_points"].items()}
    assert {k: ours[k] for k in theirs} == theirs
    if case["source"].endswith(("testAllEndPointsShapes", "UptoPreAuxLogits")):
        assert list(ours) == list(theirs)  # all of slim's end points, in slim's order, no more


# research/slim/nets/inception_resnet_v2.py: the base network's end points (its
# final_endpoint choices), then inception_resnet_v2()'s heads.
IRV2_END_POINTS = [
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "MaxPool_3a_3x3", "Conv2d_3b_1x1",
    "Conv2d_4a_3x3", "MaxPool_5a_3x3", "Mixed_5b", "Mixed_6a", "PreAuxLogits", "Mixed_7a",
    "Conv2d_7b_1x1", "AuxLogits", "global_pool", "PreLogitsFlatten", "Logits", "Predictions",
]  # fmt: skip


def test_inception_resnet_v2_end_points_are_slims_all_through():
    model = on_meta("inception_resnet_v2", num_classes=1000)
    ours = shapes(model, 5, 299, 299)
    assert list(ours) == IRV2_END_POINTS  # no Repeat, Repeat_2 or Block8
    published = {
        k: nchw(v) for case in PUBLISHED if case["model"] == "inception_resnet_v2"
        and case["image_size"] == [299, 299] for k, v in case["end_points"].items()
    }  # fmt: skip
    assert {k: ours[k] for k in published} == published
    assert ours["Mixed_7a"] == [5, 2080, 8, 8]
    assert ours["global_pool"] == [5, 1536, 1, 1] and ours["PreLogitsFlatten"] == [5, 1536]
    # the stacks slim does not register are levels of the model still: their weights' names
    assert {"Repeat", "Repeat_2", "Block8"} <= set(dict(model.named_children()))
    for name in ("Repeat", "Repeat_2", "Block8", "Mixed_6h"):
        with pytest.raises(ValueError, match=f"no end point '{name}'"):
            on_meta("inception_resnet_v2", final_endpoint=name)


@pytest.mark.parametrize(
    "name, timm_modules",
    [
        ("inception_v4", {"features.2": "Conv2d_2b_3x3", "features.3": "Mixed_3a",
                          "features.9": "Mixed_5e", "features.17": "Mixed_6h",
                          "features.21": "Mixed_7d"}),
        ("inception_resnet_v2", {"conv2d_2b": "Conv2d_2b_3x3", "conv2d_4a": "Conv2d_4a_3x3",
                                 "repeat": "Repeat", "repeat_1": "PreAuxLogits",
                                 "conv2d_7b": "Conv2d_7b_1x1"}),
    ],
)  # fmt: skip
def test_feature_shapes_are_timms(name, timm_modules):
    with torch.device("meta"):
        theirs = timm.create_model(name, features_only=True)
        x = torch.empty(2, 3, 331, 299)
        their_maps = theirs(x)
    ours = on_meta(name)
    our_maps = {}  # feature_info covers levels that are not end points (Repeat) too
    for level in timm_modules.values():
        getattr(ours, level).register_forward_hook(
            lambda module, args, out, level=level: our_maps.setdefault(level, out)
        )
    ours(x)
    info = {i["module"]: i for i in ours.feature_info}
    for their_info, their_map in zip(theirs.feature_info.get_dicts(), their_maps, strict=True):
        end_point = timm_modules[their_info["module"]]
        assert our_maps[end_point].shape == their_map.shape
        assert info[end_point]["num_chs"] == their_info["num_chs"]
        assert info[end_point]["reduction"] == their_info["reduction"]


@pytest.mark.parametrize("name", ["inception_v1", "inception_v2"])
def test_slim_variable_names_cover_the_checkpoint(name):
    model = on_meta(name, num_classes=1001)
    ours = {v: k for k, v in slim_variable_names(model).items() if not v.endswith("/gamma")}
    theirs = SLIM_VARIABLES[name]
    assert set(ours) == set(theirs)
    state = model.state_dict()
    for slim_name, shape in theirs.items():
        tensor = state[ours[slim_name]]
        if slim_name.endswith("depthwise_weights"):  # H, W, in, multiplier
            h, w, i, m = shape
            expected = [i * m, 1, h, w]
        elif len(shape) == 4:  # HWIO; slim's 1x1-conv logits are our Linear
            h, w, i, o = shape
            expected = [o, i, h, w] if tensor.dim() == 4 else [o, i]
        else:
            expected = shape
        assert list(tensor.shape) == expected, slim_name


def test_slim_names_of_v4_and_inception_resnet_v2():
    """Names read off TF-Slim's definitions, the irregular ones above all."""
    v4 = slim_variable_names(on_meta("inception_v4", num_classes=1001))
    irv2 = slim_variable_names(on_meta("inception_resnet_v2", num_classes=1001))
    # counted off the definitions: 4 variables per conv with batch norm (weights, beta, moving
    # mean and variance), 2 per layer with biases. v4: 151 convs, 2 dense layers.
    # Inception-ResNet-v2: 206 convs, 40 residual projections, 2 dense layers.
    for names, count in ((v4, 151 * 4 + 2 * 2), (irv2, 206 * 4 + 40 * 2 + 2 * 2)):
        in_checkpoint = {v for v in names.values() if not v.endswith("/gamma")}
        assert len(in_checkpoint) == count
    assert set(v4.values()) >= {
        "InceptionV4/Conv2d_1a_3x3/weights",
        "InceptionV4/Mixed_3a/Branch_1/Conv2d_0a_3x3/weights",
        "InceptionV4/Mixed_4a/Branch_0/Conv2d_1a_3x3/weights",
        "InceptionV4/Mixed_4a/Branch_1/Conv2d_1a_3x3/BatchNorm/moving_variance",
        "InceptionV4/Mixed_5a/Branch_0/Conv2d_1a_3x3/weights",
        "InceptionV4/Mixed_5e/Branch_3/Conv2d_0b_1x1/weights",
        "InceptionV4/Mixed_6h/Branch_2/Conv2d_0e_1x7/weights",
        "InceptionV4/Mixed_7a/Branch_1/Conv2d_1a_3x3/weights",
        "InceptionV4/Mixed_7d/Branch_1/Conv2d_0c_3x1/weights",
        "InceptionV4/Mixed_7d/Branch_2/Conv2d_0e_3x1/BatchNorm/beta",
        "InceptionV4/AuxLogits/Conv2d_1b_1x1/weights",
        "InceptionV4/AuxLogits/Conv2d_2a/weights",
        "InceptionV4/AuxLogits/Aux_logits/biases",
        "InceptionV4/Logits/Logits/weights",
    }
    assert set(irv2.values()) >= {
        "InceptionResnetV2/Conv2d_4a_3x3/weights",
        "InceptionResnetV2/Mixed_5b/Branch_0/Conv2d_1x1/weights",
        "InceptionResnetV2/Mixed_5b/Branch_3/Conv2d_0b_1x1/weights",
        "InceptionResnetV2/Repeat/block35_1/Branch_0/Conv2d_1x1/weights",
        "InceptionResnetV2/Repeat/block35_10/Branch_2/Conv2d_0c_3x3/weights",
        "InceptionResnetV2/Repeat/block35_10/Conv2d_1x1/biases",
        "InceptionResnetV2/Mixed_6a/Branch_1/Conv2d_1a_3x3/weights",
        "InceptionResnetV2/Repeat_1/block17_20/Branch_1/Conv2d_0c_7x1/weights",
        "InceptionResnetV2/Mixed_7a/Branch_2/Conv2d_0b_3x3/weights",
        "InceptionResnetV2/Repeat_2/block8_9/Branch_1/Conv2d_0b_1x3/weights",
        "InceptionResnetV2/Block8/Conv2d_1x1/weights",
        "InceptionResnetV2/Conv2d_7b_1x1/BatchNorm/moving_mean",
        "InceptionResnetV2/AuxLogits/Conv2d_1b_1x1/weights",
        "InceptionResnetV2/AuxLogits/Conv2d_2a_5x5/weights",
        "InceptionResnetV2/AuxLogits/Logits/weights",
        "InceptionResnetV2/Logits/Logits/biases",
    }


def images(shape, seed):
    """The generator's input batch (tests/fixtures/make_family_fixtures.py), NCHW."""
    count = int(np.prod(shape))
    batch = np.sin(np.arange(count, dtype=np.float64) * 0.731 + seed).astype(np.float32)
    return torch.from_numpy(batch.reshape(shape)).permute(0, 3, 1, 2)


def test_same_outputs_as_slim_v1():
    outputs = np.load(FAMILY / "slim_outputs.npz")
    batch = images((2, 32, 32, 3), seed=1)
    assert batch.sum(dtype=torch.float64).item() == pytest.approx(outputs["v1_images_sum"])
    checkpoint = FAMILY / "slim_v1" / "model.ckpt"
    model = incept.nets.inception_v1(final_endpoint="Conv2d_2b_1x1", weights=checkpoint)
    assert model.config["semantics"] == "tf"  # the weights' framework decides
    with torch.no_grad():
        ours = model.eval()(batch).permute(0, 2, 3, 1).numpy()
    theirs = outputs["v1_Conv2d_2b_1x1"]
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    assert theirs.std() > 0.1
    # TF's stride-2 'SAME' pads 2 rows before, 3 after on 32 pixels: PyTorch's padding differs
    model = incept.nets.inception_v1(
        final_endpoint="Conv2d_2b_1x1", weights=checkpoint, semantics="torch"
    )
    with torch.no_grad():
        assert not np.allclose(model.eval()(batch).permute(0, 2, 3, 1).numpy(), theirs, atol=0.01)


def test_same_logits_as_slim_v2():
    outputs = np.load(FAMILY / "slim_outputs.npz")
    batch = images((2, 64, 64, 3), seed=2)
    assert batch.sum(dtype=torch.float64).item() == pytest.approx(outputs["v2_images_sum"])
    checkpoint = FAMILY / "slim_v2" / "model.ckpt"
    # 10 classes: slim's background class (its first logit) is dropped on loading
    model = incept.nets.inception_v2(num_classes=10, width=0.05, min_depth=8, weights=checkpoint)
    with torch.no_grad():
        ours = model.eval()(batch).numpy()
    theirs = outputs["v2_logits"][:, 1:]
    np.testing.assert_allclose(ours, theirs, atol=1e-4, rtol=0)
    assert theirs.std() > 0.1
    model = incept.nets.inception_v2(
        num_classes=10, width=0.05, min_depth=8, weights=checkpoint, semantics="torch"
    )
    with torch.no_grad():
        assert not np.allclose(model.eval()(batch).numpy(), theirs, atol=0.01)


def test_v2_separable_first_conv():
    model = on_meta("inception_v2")
    stem = model.Conv2d_1a_7x7
    assert stem.depthwise.groups == 3 and stem.depthwise.out_channels == 24  # 3 inputs x 8
    assert stem.pointwise.out_channels == 64 and stem.bn is None  # biases, no batch norm
    # slim: depthwise multiplier min(int(depth(64) / 3), 8): 16 channels at width 0.25 -> 5
    assert on_meta("inception_v2", width=0.25).Conv2d_1a_7x7.depthwise.out_channels == 15


@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_training_with_aux_head_at_tiny_width(name):
    torch.manual_seed(0)
    model = incept.nets.create(name, num_classes=5, width=0.1, min_depth=8).train()
    logits, aux = model(torch.randn(2, 3, 75, 75))  # the smallest size the nets take
    assert logits.shape == aux.shape == (2, 5)
    (logits.sum() + aux.sum()).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_eval_returns_logits_for_any_input_shape(name):
    model = incept.nets.create(name, num_classes=5, width=0.1, min_depth=8).eval()
    size = (80, 96) if name.startswith("inception_v4") or "resnet" in name else (40, 56)
    with torch.no_grad():
        out = model(torch.randn(1, 3, *size))  # H and W may differ
    assert isinstance(out, torch.Tensor) and out.shape == (1, 5)


def test_aux_heads_where_slim_has_them():
    assert [incept.nets.registry.entry(n).has_aux for n in FAMILY_NAMES] == [
        False,
        False,
        True,
        True,
    ]
    with pytest.raises(UserError, match="no aux head"):
        incept.nets.inception_v1(aux_logits=True)
    v4 = on_meta("inception_v4")
    assert v4.stages[v4.stages.index(("AuxLogits", "aux")) - 1][0] == "Mixed_6h"
    irv2 = on_meta("inception_resnet_v2")
    assert irv2.stages[irv2.stages.index(("AuxLogits", "aux")) - 1][0] == "PreAuxLogits"


@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_semantics_agree_where_every_stride_2_layer_is_valid(name):
    torch.manual_seed(0)
    options = dict(width=0.05, min_depth=8, aux_logits=False, bn_momentum=1.0)
    tf_rules = incept.nets.create(name, semantics="tf", **options)
    torch_rules = incept.nets.create(name, semantics="torch", **options)
    x = torch.randn(2, 3, 76, 90)  # even sides: where TF's stride-2 'SAME' would pad lopsided
    with torch.no_grad():
        tf_rules.train()(x)  # moving statistics = this batch's: activations stay in range
        torch_rules.load_state_dict(tf_rules.state_dict())
        expected = tf_rules.eval().forward_features(x)
        torch.testing.assert_close(torch_rules.eval().forward_features(x), expected)
    assert expected.std() > 0.01


def test_inception_resnet_v2_residual_ends():
    model = on_meta("inception_resnet_v2")
    block = model.PreAuxLogits.block17_20
    program = block.program
    assert (program.scale, program.act) == (0.10, "relu")
    assert block.conv2d.bn is None and block.conv2d.conv.bias is not None
    assert model.Repeat.block35_1.program.scale == 0.17
    assert model.Repeat_2.block8_9.program.scale == 0.20
    assert (model.Block8.program.scale, model.Block8.program.act) == (1.0, None)  # no ReLU


def test_defaults_width_and_final_endpoint():
    assert set(FAMILY_NAMES) < set(incept.nets.names())
    assert incept.nets.inception_resnet_v2.args == ("inception_resnet_v2",)  # create(NAME, ...)
    sizes = {n: incept.nets.registry.entry(n).image_size for n in FAMILY_NAMES}
    assert sizes == {
        "inception_v1": 224,
        "inception_v2": 224,
        "inception_v4": 299,
        "inception_resnet_v2": 299,
    }
    assert [incept.nets.registry.entry(n).semantics for n in FAMILY_NAMES] == ["tf"] * 4
    half = on_meta("inception_v4", width=0.5)
    assert half.feature_info[-1]["num_chs"] == 768  # 1536 / 2
    assert half.fc.in_features == 768 and half.fc.out_features == 1000  # logits never scaled
    small = on_meta("inception_resnet_v2", width=0.1, min_depth=16)
    assert small.Mixed_5b.branch0.conv.out_channels == 16  # max(int(96 * 0.1), 16)
    # the residual projection follows the shortcut's channels, whatever the width
    assert small.Repeat.block35_1.conv2d.conv.out_channels == small.feature_info[7]["num_chs"]
    model = on_meta("inception_v2", final_endpoint="Mixed_4a")
    assert model.stages[-1] == ("Mixed_4a", "body") and not hasattr(model, "fc")
    with pytest.raises(UserError, match="no end point"):
        incept.nets.inception_resnet_v2(final_endpoint="Mixed_6h")


@pytest.mark.parametrize(
    "name, line, total",
    [
        ("inception_v1", ("Mixed_5c", "1024 x 7 x 7"), "6.63 M parameters"),
        ("inception_v2", ("Mixed_5c", "1024 x 7 x 7"), "11.19 M parameters"),
        ("inception_v4", ("Mixed_7d", "1536 x 8 x 8"), "46.04 M parameters"),
        ("inception_resnet_v2", ("Conv2d_7b_1x1", "1536 x 8 x 8"), "59.21 M parameters"),
    ],
)
def test_summary_command(name, line, total, capsys):
    with pytest.raises(SystemExit) as exit_status:
        incept_main(["summary", "--model", name, "--num-classes", "1001"])
    assert exit_status.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    size = incept.nets.registry.entry(name).image_size
    assert lines[0].startswith(f"{name} at {size}x{size}")
    assert any(row.startswith(line[0]) and line[1] in row for row in lines)
    assert lines[-1].startswith(total)
