"""The nets' options as TF-Slim defines them: `final_endpoint` builds the base network only (no
aux head, no logits), `num_classes=None` or 0 builds no logits layer, the slim variable names
hold no gamma for batch norm without scale, and bad arguments raise ValueError. References:
TF-Slim's end points and variables (tests/fixtures), torchvision's and timm's parameter
counts, and the full model's own pre-logits features."""

import json
import pathlib

import pytest
import timm
import torch
import torchvision

import incept
from incept.errors import UserError
from incept.spec import build, slim_variable_names
from incept.summary import summarize

FIXTURES = pathlib.Path(__file__).parents[1] / "fixtures"
SLIM_CASES = json.loads((FIXTURES / "slim" / "slim_endpoint_shapes.json").read_text())
FAMILY_VARIABLES = {
    **json.loads((FIXTURES / "family" / "slim_variables.json").read_text()),
    **json.loads((FIXTURES / "family" / "slim_v4_irv2_variables.json").read_text()),
    "inception_v3": next(c["variables"] for c in SLIM_CASES if c["variables"]),
}
NAMES = ["inception_v1", "inception_v2", "inception_v3", "inception_v4", "inception_resnet_v2"]
LAST_BODY = {
    "inception_v1": "Mixed_5c",
    "inception_v2": "Mixed_5c",
    "inception_v3": "Mixed_7c",
    "inception_v4": "Mixed_7d",
    "inception_resnet_v2": "Conv2d_7b_1x1",
}
TINY = dict(width=0.1, min_depth=8)


def on_meta(name, **kwargs):
    with torch.device("meta"):
        return incept.nets.create(name, **kwargs).eval()


def parameters(model, skip=()):
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(skip))


def torchvision_v3_base_parameters():
    with torch.device("meta"):
        theirs = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    return parameters(theirs, skip=("fc.", "AuxLogits."))


def timm_headless_parameters(name):
    with torch.device("meta"):
        return parameters(timm.create_model(name, num_classes=0))


# ---------------------------------------------------------------------------------------------
# final_endpoint: slim's inception_*_base, which has no heads


def test_final_endpoint_past_the_aux_head_builds_none():
    model = incept.nets.inception_v3(final_endpoint="Mixed_7c", **TINY)
    assert not model.has_aux and model.config["aux_logits"] is False
    assert not any(k.startswith(("AuxLogits", "fc")) for k in model.state_dict())
    out = model.train()(torch.randn(2, 3, 75, 75))
    assert isinstance(out, torch.Tensor) and out.shape == (
        2,
        model.feature_info[-1]["num_chs"],
        1,
        1,
    )
    points = model.eval().end_points(torch.randn(1, 3, 107, 107))
    assert list(points)[-1] == "Mixed_7c" and "AuxLogits" not in points
    # at full size: exactly torchvision's network less its fc and AuxLogits (3.3 M parameters)
    assert parameters(on_meta("inception_v3", final_endpoint="Mixed_7c")) == 21_785_568
    assert torchvision_v3_base_parameters() == 21_785_568


@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_final_endpoint_builds_the_base_network_of_timms_headless_port(name):
    base = on_meta(name, final_endpoint=LAST_BODY[name])
    assert parameters(base) == timm_headless_parameters(name)
    assert [kind for _, kind in base.stages if kind not in ("body", "hidden")] == []
    # an end point before the aux head: nothing after it is built either
    early = on_meta(name, final_endpoint="Mixed_6a")
    assert early.stages[-1] == ("Mixed_6a", "body") and not early.has_aux


def test_an_aux_head_asked_of_a_base_network_is_a_value_error():
    with pytest.raises(ValueError, match="final_endpoint has no aux head"):
        incept.nets.inception_v3(final_endpoint="Mixed_7c", aux_logits=True)
    with pytest.raises(ValueError, match="num_classes=0 has no aux head"):
        incept.nets.inception_v4(num_classes=None, aux_logits=True)
    # aux_logits=False and the default are fine
    assert not on_meta("inception_v4", final_endpoint="Mixed_7d", aux_logits=False).has_aux


def test_build_leaves_the_aux_head_to_a_net_with_logits():
    """The spec builder itself (aux_logits=True by default) follows the same rule."""
    from incept.nets.inception_v3 import spec

    with torch.device("meta"):
        assert build(spec(num_classes=10)).has_aux
        assert not build(spec(num_classes=10), final_endpoint="Mixed_7c").has_aux
        assert not build(spec(num_classes=None)).has_aux


# ---------------------------------------------------------------------------------------------
# num_classes None or 0: no logits layer, the pooled features out


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("num_classes", [None, 0])
def test_no_classes_gives_the_pooled_pre_logits_features(name, num_classes):
    torch.manual_seed(0)
    full = incept.nets.create(name, num_classes=5, bn_momentum=1.0, **TINY)
    headless = incept.nets.create(name, num_classes=num_classes, **TINY)
    assert headless.num_classes == 0 and headless.config["num_classes"] == 0
    assert headless.classifiers() == [] and not headless.has_aux
    x = torch.randn(2, 3, 96, 80)
    with torch.no_grad():
        full.train()(x)  # moving statistics = this batch's: activations stay in range
    missing, unexpected = headless.load_state_dict(full.state_dict(), strict=False)
    assert missing == [] and {k.split(".")[0] for k in unexpected} <= {"fc", "AuxLogits"}
    with torch.no_grad():
        expected = full.eval().forward_features(x).mean((2, 3))
        features = headless.eval()(x)
        assert features.shape == (2, full.fc.in_features)
        torch.testing.assert_close(features, expected)
        assert expected.std() > 0.01
        # the full model's logits are its fc layer on exactly these features
        torch.testing.assert_close(full.fc(features[:, :, None, None]), full(x))
        points = headless.end_points(x)
        assert list(points)[-2:] == [LAST_BODY[name], "global_pool"]
        torch.testing.assert_close(points["global_pool"], expected[:, :, None, None])
        train_out = headless.train()(x)
    assert isinstance(train_out, torch.Tensor) and train_out.shape == features.shape
    with pytest.raises(ValueError, match="without logits"):
        headless.reset_classifier(3)


@pytest.mark.parametrize("case", [c for c in SLIM_CASES if c["image_size"] in (224, 299)],
                         ids=lambda c: f"{c['model']}-w{c['width']}")  # fmt: skip
def test_no_classes_keeps_slims_base_end_points_and_drops_the_logits(case):
    model = on_meta(case["model"], num_classes=None, width=case["width"])
    size = case["image_size"]
    points = model.end_points(torch.empty(2, 3, size, size, device="meta"))
    shapes = {k: list(v.shape) for k, v in points.items()}
    base = {k: v for k, v in case["end_points"].items()
            if k not in ("AuxLogits", "PreLogits", "Logits", "Predictions")}  # fmt: skip
    last = shapes.pop("global_pool")
    assert shapes == base
    assert last == [2, base[LAST_BODY[case["model"]]][1], 1, 1]
    # slim's trainable count less its logits layer (features x classes + biases)
    logits = (last[1] + 1) * case["num_classes"]
    if case["model"] == "inception_v3":  # and the aux head, which a net without logits lacks
        full = on_meta("inception_v3", num_classes=case["num_classes"], width=case["width"])
        logits += sum(p.numel() for p in full.AuxLogits.parameters() if p.requires_grad)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == case["trainable_parameters"] - logits


@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_no_classes_is_timms_num_classes_0(name):
    assert parameters(on_meta(name, num_classes=0)) == timm_headless_parameters(name)
    assert parameters(on_meta("inception_v3", num_classes=None)) == (
        torchvision_v3_base_parameters()
    )


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10", 10.0])
@pytest.mark.parametrize("name", NAMES)
def test_bad_class_counts_are_value_errors(name, bad):
    with pytest.raises(ValueError, match="num_classes") as raised:
        incept.nets.create(name, num_classes=bad)
    assert isinstance(raised.value, UserError)


# ---------------------------------------------------------------------------------------------
# End points with classes: slim's heads


def test_head_end_points_hold_what_slim_names_them():
    torch.manual_seed(0)
    model = incept.nets.inception_v4(num_classes=5, **TINY).eval()
    with torch.no_grad():
        points = model.end_points(torch.randn(2, 3, 80, 96))
        pooled = points["Mixed_7d"].mean((2, 3))
        torch.testing.assert_close(points["global_pool"], pooled[:, :, None, None])
        torch.testing.assert_close(points["PreLogitsFlatten"], pooled)
        torch.testing.assert_close(points["Logits"], model.fc(pooled[:, :, None, None]))
        torch.testing.assert_close(points["Predictions"], points["Logits"].softmax(1))
    v3 = on_meta("inception_v3", num_classes=5)
    heads = list(v3.end_points(torch.empty(1, 3, 299, 299, device="meta")))[-4:]
    assert heads == ["AuxLogits", "PreLogits", "Logits", "Predictions"]  # tf-slim's v3


def test_summary_rows_are_the_end_points_and_keep_every_parameter():
    rows = summarize("inception_resnet_v2", image_size=299, num_classes=1001)
    model = on_meta("inception_resnet_v2", num_classes=1001)
    assert [r.name for r in rows][7:12] == ["Mixed_5b", "Mixed_6a", "PreAuxLogits", "Mixed_7a",
                                            "Conv2d_7b_1x1"]  # fmt: skip
    assert sum(r.parameters for r in rows) == parameters(model)
    repeat = parameters(model.Repeat)
    mixed_6a = next(r for r in rows if r.name == "Mixed_6a")
    assert mixed_6a.parameters == repeat + parameters(model.Mixed_6a)  # slim's Repeat is in it
    headless = summarize("inception_v3", image_size=299, num_classes=0)
    assert headless[-1].name == "global_pool" and headless[-1].shape == (2048, 1, 1)
    assert sum(r.parameters for r in headless) == torchvision_v3_base_parameters()


# ---------------------------------------------------------------------------------------------
# Batch norm's gamma in the slim names


@pytest.mark.parametrize("name", NAMES)
def test_slim_names_are_exactly_the_checkpoints_variables(name):
    model = on_meta(name, num_classes=1001)  # with the aux head where the net has one
    names = slim_variable_names(model)
    assert set(names.values()) == set(FAMILY_VARIABLES[name])  # no gamma: slim's scale=False
    with_fixed = slim_variable_names(model, fixed_gammas=True)
    gammas = {k: v for k, v in with_fixed.items() if k not in names}
    batch_norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(gammas) == len(batch_norms) > 50
    assert all(
        k.endswith("bn.weight") and v.endswith("/BatchNorm/gamma") for k, v in gammas.items()
    )


def test_slim_names_list_gamma_with_scale():
    from incept.nets.inception_v3 import spec

    with torch.device("meta"):
        model = build(spec(num_classes=1001, bn_scale=True))  # the language's default: scale
    names = slim_variable_names(model)
    theirs = set(FAMILY_VARIABLES["inception_v3"])
    gammas = {v for v in names.values() if v.endswith("/gamma")}
    assert set(names.values()) - gammas == theirs
    assert gammas == {v.replace("/beta", "/gamma") for v in theirs if v.endswith("/beta")}
    assert names["Mixed_5b.branch1x1.bn.weight"] == (
        "InceptionV3/Mixed_5b/Branch_0/Conv2d_0a_1x1/BatchNorm/gamma"
    )
    assert model.Mixed_5b.branch1x1.bn.weight.requires_grad  # trained, so slim saves it


# ---------------------------------------------------------------------------------------------
# Argument errors are ValueErrors


def test_user_error_is_a_value_error():
    assert issubclass(UserError, ValueError)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(width=0), "width must be greater than 0"),
        (dict(width=-0.5), "width must be greater than 0"),
        (dict(width="1"), "width"),
        (dict(min_depth=0), "min_depth"),
        (dict(min_depth=2.5), "min_depth"),
        (dict(dropout=1.0), "dropout"),
        (dict(dropout="0.2"), "dropout"),
        (dict(semantics="jax"), "semantics"),
        (dict(final_endpoint="Mixed_9z"), "no end point"),
        (dict(aux_logits=True, final_endpoint="Mixed_6e"), "no aux head"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs, words):
    with pytest.raises(ValueError, match=words):
        incept.nets.inception_v3(**kwargs)
    with pytest.raises(ValueError, match="no aux head"):
        incept.nets.inception_v1(aux_logits=True)
