"""Inception-v3 against its references: torchvision's port (same weights, same logits) and
TF-Slim's own definition (end-point shapes, variable names, parameter counts)."""

import json
import pathlib

import pytest
import torch
import torchvision

import incept
from incept.errors import UserError
from incept.spec import slim_variable_names

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures" / "slim"
SLIM_CASES = [
    c
    for c in json.loads((FIXTURES / "slim_endpoint_shapes.json").read_text())
    if c["model"] == "inception_v3"
]


@pytest.fixture(scope="module")
def torchvision_model():
    """torchvision's inception_v3 with random weights and non-trivial BN statistics."""
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_mean") or name.endswith("bn.bias"):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith("running_var") or name.endswith("bn.weight"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model.eval()


def test_state_dict_is_torchvisions(torchvision_model):
    ours = incept.nets.inception_v3(num_classes=1000, aux_logits=True).state_dict()
    theirs = torchvision_model.state_dict()
    assert list(ours) == list(theirs)  # same keys, same order
    assert len(ours) == 580
    assert all(ours[k].shape == v.shape for k, v in theirs.items())
    model = incept.nets.inception_v3()
    assert sum(p.numel() for p in model.parameters()) == 27_161_264


@pytest.mark.parametrize("size", [299, 160, 75])
def test_same_logits_as_torchvision(torchvision_model, size):
    model = incept.nets.inception_v3()
    model.load_state_dict(torchvision_model.state_dict(), strict=True)
    model.eval()
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size)) * 2 - 1
    with torch.no_grad():
        ours, theirs = model(x), torchvision_model(x)
    assert ours.shape == (2, 1000)
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)
    assert theirs.std() > 0.01  # the comparison is not between two near-constant outputs


@pytest.mark.parametrize("case", SLIM_CASES, ids=lambda c: f"{c['image_size']}px-w{c['width']}")
@pytest.mark.parametrize("semantics", ["tf", "torch"])
def test_end_point_shapes_are_tf_slims(case, semantics):
    model = incept.nets.inception_v3(
        num_classes=case["num_classes"],
        width=case["width"],
        aux_logits="AuxLogits" in case["end_points"],
        semantics=semantics,
    ).eval()
    with torch.device("meta"):
        x = torch.empty(2, 3, case["image_size"], case["image_size"])
    model = model.to("meta")
    points = {k: list(v.shape) for k, v in model.end_points(x).items()}
    assert points == case["end_points"]
    assert list(points) == list(case["end_points"])  # slim's order too


def test_trainable_parameters_are_tf_slims():
    for case in SLIM_CASES:
        if case["image_size"] not in (75, 299):
            continue  # slim shrinks the aux conv's kernel on small maps; we keep 5x5 (padded)
        model = incept.nets.inception_v3(
            num_classes=case["num_classes"],
            width=case["width"],
            aux_logits="AuxLogits" in case["end_points"],
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert trainable == case["trainable_parameters"]  # gamma frozen: slim has none


def test_slim_variable_names_cover_the_checkpoint():
    case = next(c for c in SLIM_CASES if c["variables"])
    model = incept.nets.inception_v3(num_classes=case["num_classes"])
    names = slim_variable_names(model)
    state = model.state_dict()
    theirs = case["variables"]
    ours = {v: k for k, v in names.items() if not v.endswith("/gamma")}
    assert set(ours) == set(theirs)
    for slim_name, shape in theirs.items():
        tensor = state[ours[slim_name]]
        if len(shape) == 4:  # HWIO -> OIHW, and slim's 1x1-conv logits -> Linear
            h, w, i, o = shape
            expected = [o, i, h, w] if tensor.dim() == 4 else [o, i]
        else:
            expected = shape
        assert list(tensor.shape) == expected, slim_name
    assert "InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5/weights" in ours
    assert ours["InceptionV3/Mixed_7b/Branch_1/Conv2d_0b_3x1/weights"] == (
        "Mixed_7b.branch3x3_2b.conv.weight"
    )


@pytest.mark.parametrize("size", [75, 107, 299])
def test_train_mode_gives_logits_and_aux_at_every_size(size):
    model = incept.nets.inception_v3(num_classes=7, width=0.1).train()
    logits, aux = model(torch.randn(2, 3, size, size))
    assert logits.shape == aux.shape == (2, 7)
    logits.sum().add(aux.sum()).backward()
    assert model.AuxLogits.conv1.conv.weight.grad.abs().sum() > 0


def test_without_aux_head():
    model = incept.nets.inception_v3(num_classes=3, width=0.1, aux_logits=False)
    assert not any(k.startswith("AuxLogits") for k in model.state_dict())
    out = model.train()(torch.randn(2, 3, 75, 75))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)


def test_eval_mode_returns_logits_only():
    model = incept.nets.inception_v3(num_classes=4, width=0.1).eval()
    out = model(torch.randn(1, 3, 80, 96))  # H and W may differ
    assert isinstance(out, torch.Tensor) and out.shape == (1, 4)


def test_width_multiplier_rule():
    assert incept.nets.inception_v3(width=0.5).feature_info[-1]["num_chs"] == 1024
    small = incept.nets.inception_v3(num_classes=5, width=0.1, min_depth=16)
    # 32 * 0.1 = 3 -> min_depth 16; 320 * 0.1 = 32; logits never scaled
    assert small.Conv2d_1a_3x3.conv.out_channels == 16
    assert small.Mixed_7b.branch1x1.conv.out_channels == 32
    assert small.fc.out_features == 5 and small.AuxLogits.fc.out_features == 5
    with pytest.raises(UserError, match="width"):
        incept.nets.inception_v3(width=0)
    with pytest.raises(UserError, match="width"):
        incept.nets.inception_v3(width=-1)


def test_final_endpoint_truncates_the_build():
    model = incept.nets.inception_v3(final_endpoint="Mixed_6e", width=0.25).eval()
    assert model.stages[-1] == ("Mixed_6e", "body")
    assert not hasattr(model, "fc") and not hasattr(model, "Mixed_7a")
    out = model(torch.randn(1, 3, 299, 299))
    assert out.shape == (1, 192, 17, 17)
    with pytest.raises(UserError, match="no end point 'Mixed_9z'"):
        incept.nets.inception_v3(final_endpoint="Mixed_9z")


def test_initialisation_is_the_originals():
    torch.manual_seed(0)
    model = incept.nets.inception_v3()
    # a normal cut at 2 std has std 0.8796 sigma
    conv = model.Mixed_6e.branch7x7dbl_3.conv.weight
    assert conv.std().item() == pytest.approx(0.1 * 0.8796, rel=0.02)
    assert conv.abs().max().item() <= 0.2
    assert model.AuxLogits.conv1.conv.weight.std().item() == pytest.approx(0.0088, rel=0.05)
    assert model.AuxLogits.fc.weight.std().item() == pytest.approx(0.00088, rel=0.05)
    assert model.fc.weight.std().item() == pytest.approx(0.0088, rel=0.05)
    gamma = model.Mixed_5b.branch1x1.bn.weight
    assert not gamma.requires_grad and torch.equal(gamma, torch.ones_like(gamma))
    assert model.Mixed_5b.branch1x1.bn.eps == 1e-3


def test_reset_classifier():
    model = incept.nets.inception_v3(num_classes=10, width=0.1)
    kept = model.Mixed_7c.branch1x1.conv.weight.clone()
    model.reset_classifier(3)
    assert model.fc.weight.shape == (3, model.fc.in_features)
    assert model.AuxLogits.fc.weight.shape[0] == 3
    assert torch.equal(model.Mixed_7c.branch1x1.conv.weight, kept)
    logits, aux = model.train()(torch.randn(2, 3, 75, 75))
    assert logits.shape == aux.shape == (2, 3)


def test_create_and_names():
    assert "inception_v3" in incept.nets.names()
    model = incept.nets.create("inception_v3", num_classes=5, width=0.1)
    assert model.config["model"] == "inception_v3" and model.num_classes == 5
    with pytest.raises(UserError, match="unknown model"):
        incept.nets.create("inception_v9")
