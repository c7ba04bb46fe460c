"""The `init` option: TF-Slim's initialisers, drawn as TensorFlow draws them, layer by layer.

Every distribution check is a Kolmogorov-Smirnov test that fails on a wrong initialiser:
one-sample, the drawn weights against the exact CDF of the intended distribution (a normal cut
at 2 std, or a uniform), its std or limit worked out here from the layer's TF-Slim shape by
slim's formulas; two-sample, against weights TensorFlow and TF-Slim drew themselves
(tests/fixtures/init/tf_draws.npz, made by tests/fixtures/make_init_fixtures.py). Draws are
seeded, so each outcome is fixed; ALPHA keeps a right initialiser from failing by chance.
"""

import math
import pathlib

import numpy as np
import pytest
import torch

import incept.nets
from incept.spec import (
    Classifier,
    Conv,
    Net,
    SeparableConv,
    Seq,
    build,
    slim_variable_names,
    trunc_normal,
    variance_scaling,
    xavier,
)

ALPHA = 1e-4
MOST = 200_000  # values a check looks at: the first ones of a layer (they are independent)
TF_DRAWS = pathlib.Path(__file__).parents[1] / "fixtures" / "init" / "tf_draws.npz"
CUT = 2.0  # TF's truncated normal re-draws beyond 2 std


# The intended distributions, from slim's formulas (tf_slim/layers/initializers.py) on a
# TF-layout shape [kh, kw, in, out] or [in, out]; a depthwise kernel is [kh, kw, in, multiplier].
def tf_fans(shape):
    field = math.prod(shape[:-2])
    return shape[-2] * field, shape[-1] * field


def trunc(std):
    return lambda shape: ("normal", std)


def scaled(shape):  # variance_scaling_initializer(): factor 2, fan_in, truncated
    return "normal", math.sqrt(1.3 * 2.0 / tf_fans(shape)[0])


def glorot(shape):  # xavier_initializer(): factor 1, fan_avg, uniform
    fan_in, fan_out = tf_fans(shape)
    return "uniform", math.sqrt(3.0 / ((fan_in + fan_out) / 2))


def cdf(distribution, x):
    kind, scale = distribution
    if kind == "uniform":
        return ((x + scale) / (2 * scale)).clamp(0, 1)
    phi = lambda z: 0.5 * (1 + torch.erf(z / math.sqrt(2)))  # noqa: E731
    low, high = phi(torch.tensor(-CUT)), phi(torch.tensor(CUT))
    return ((phi(x / scale) - low) / (high - low)).clamp(0, 1)


def kolmogorov_p(d: float, n: float) -> float:
    """P(D >= d) for the KS statistic of n (effective) samples (Stephens' approximation)."""
    lam = (math.sqrt(n) + 0.12 + 0.11 / math.sqrt(n)) * d
    if lam < 0.3:
        return 1.0
    terms = (2 * (-1) ** (k - 1) * math.exp(-2 * k * k * lam * lam) for k in range(1, 101))
    return min(max(sum(terms), 0.0), 1.0)


def ks_one_sample(values: torch.Tensor, distribution) -> float:
    x = values.detach().double().flatten()[:MOST].sort().values
    n = x.numel()
    f = cdf(distribution, x)
    steps = torch.arange(1, n + 1, dtype=torch.float64) / n
    d = max((steps - f).max().item(), (f - (steps - 1 / n)).max().item())
    return kolmogorov_p(d, n)


def ks_two_sample(a, b) -> float:
    a, b = np.sort(np.ravel(a)), np.sort(np.ravel(b))
    both = np.concatenate([a, b])
    d = np.abs(
        np.searchsorted(a, both, "right") / a.size - np.searchsorted(b, both, "right") / b.size
    ).max()
    return kolmogorov_p(float(d), a.size * b.size / (a.size + b.size))


def check_scale(values: torch.Tensor, distribution) -> None:
    """The spread and the edge of the draw: std (a normal cut at 2 std has 0.8796 of the
    normal's) within a few standard errors, and the largest |w| at, not past, the edge."""
    kind, scale = distribution
    w = values.detach().double().flatten()[:MOST]
    n = w.numel()
    edge = scale if kind == "uniform" else CUT * scale
    std = scale / math.sqrt(3) if kind == "uniform" else scale * 0.8796256610342398
    assert w.std().item() == pytest.approx(std, rel=3 / math.sqrt(n))
    assert edge * (1 - 45 / n) <= w.abs().max().item() <= edge * (1 + 1e-6)


def tf_shape(model, key):
    """The TF-Slim shape of the weight at state-dict `key`."""
    weight = model.state_dict()[key]
    if weight.dim() == 2:
        return [weight.shape[1], weight.shape[0]]  # a fully connected layer: [in, out]
    out, per_group, kh, kw = weight.shape
    groups = model.get_submodule(key.rsplit(".", 1)[0]).groups
    if groups > 1:  # depthwise: [kh, kw, in, multiplier]
        return [kh, kw, groups, out // groups]
    return [kh, kw, per_group, out]


# Per model: (TF-Slim variable, its shape in slim's full-size net with 1001 classes, intended
# distribution). Slim's logits layers in v1-v3 are 1x1 convs; their fans equal these [in, out].
LAYERS = {
    "inception_v1": [  # inception_v1_base: trunc_normal(0.01); its logits: the arg scope's
        ("Conv2d_1a_7x7/weights", [7, 7, 3, 64], trunc(0.01)),
        ("Mixed_4b/Branch_1/Conv2d_0b_3x3/weights", [3, 3, 96, 208], trunc(0.01)),
        ("Mixed_5c/Branch_3/Conv2d_0b_1x1/weights", [1, 1, 832, 128], trunc(0.01)),
        ("Logits/Conv2d_0c_1x1/weights", [1024, 1001], scaled),
    ],
    "inception_v2": [  # inception_v2_arg_scope: variance scaling, save explicit overrides
        ("Conv2d_1a_7x7/depthwise_weights", [7, 7, 3, 8], trunc(1.0)),
        ("Conv2d_1a_7x7/pointwise_weights", [1, 1, 24, 64], trunc(1.0)),
        ("Conv2d_2b_1x1/weights", [1, 1, 64, 64], trunc(0.1)),
        ("Conv2d_2c_3x3/weights", [3, 3, 64, 192], scaled),
        ("Mixed_3b/Branch_0/Conv2d_0a_1x1/weights", [1, 1, 192, 64], scaled),
        ("Mixed_3b/Branch_1/Conv2d_0a_1x1/weights", [1, 1, 192, 64], trunc(0.09)),
        ("Mixed_3b/Branch_3/Conv2d_0b_1x1/weights", [1, 1, 192, 32], trunc(0.1)),
        ("Mixed_4a/Branch_1/Conv2d_0a_1x1/weights", [1, 1, 320, 64], trunc(0.09)),
        ("Mixed_5c/Branch_2/Conv2d_0c_3x3/weights", [3, 3, 224, 224], scaled),
        ("Logits/Conv2d_1c_1x1/weights", [1024, 1001], scaled),
    ],
    "inception_v3": [  # the 2016 release's truncated normals
        ("Conv2d_1a_3x3/weights", [3, 3, 3, 32], trunc(0.1)),
        ("Mixed_6e/Branch_1/Conv2d_0b_1x7/weights", [1, 7, 192, 192], trunc(0.1)),
        ("AuxLogits/Conv2d_1b_1x1/weights", [1, 1, 768, 128], trunc(0.1)),
        ("AuxLogits/Conv2d_2a_5x5/weights", [5, 5, 128, 768], trunc(0.01)),
        ("AuxLogits/Conv2d_2b_1x1/weights", [768, 1001], trunc(0.001)),
        ("Logits/Conv2d_1c_1x1/weights", [2048, 1001], trunc(0.01)),
    ],
    "inception_v4": [  # inception_arg_scope: conv2d variance scaling; fully_connected xavier
        ("Conv2d_1a_3x3/weights", [3, 3, 3, 32], scaled),
        ("Mixed_6b/Branch_2/Conv2d_0e_1x7/weights", [1, 7, 224, 256], scaled),
        ("Mixed_7d/Branch_3/Conv2d_0b_1x1/weights", [1, 1, 1536, 256], scaled),
        ("AuxLogits/Conv2d_2a/weights", [5, 5, 128, 768], scaled),
        ("AuxLogits/Aux_logits/weights", [768, 1001], glorot),
        ("Logits/Logits/weights", [1536, 1001], glorot),
    ],
    "inception_resnet_v2": [  # its arg scope sets no initializer: slim's default, xavier
        ("Conv2d_1a_3x3/weights", [3, 3, 3, 32], glorot),
        ("Repeat/block35_1/Conv2d_1x1/weights", [1, 1, 128, 320], glorot),
        ("Repeat_1/block17_20/Branch_1/Conv2d_0c_7x1/weights", [7, 1, 160, 192], glorot),
        ("Conv2d_7b_1x1/weights", [1, 1, 2080, 1536], glorot),
        ("AuxLogits/Conv2d_2a_5x5/weights", [5, 5, 128, 768], glorot),
        ("AuxLogits/Logits/weights", [768, 1001], glorot),
        ("Logits/Logits/weights", [1536, 1001], glorot),
    ],
}
CASES = [(model, *layer) for model, layers in LAYERS.items() for layer in layers]


@pytest.fixture(scope="module")
def models():
    built = {}

    def get(name):
        if name not in built:
            torch.manual_seed(0)
            model = incept.nets.create(name, num_classes=1001)
            keys = {slim: key for key, slim in slim_variable_names(model).items()}
            built[name] = model, keys
        return built[name]

    return get


@pytest.mark.parametrize(
    ("model_name", "variable", "shape", "intended"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES]
)
def test_family_layers_draw_slims_initialisers(models, model_name, variable, shape, intended):
    model, keys = models(model_name)
    key = keys[f"{model.scope}/{variable}"]
    assert tf_shape(model, key) == shape  # so the fans are slim's
    weight = model.state_dict()[key]
    distribution = intended(shape)
    check_scale(weight, distribution)
    assert ks_one_sample(weight, distribution) > ALPHA


def drawn_layer(shape, init, separable_part=None):
    """(model, state-dict key) of the layer incept's spec builds for a TF-layout `shape` with
    `init`: a conv, a classifier for [in, out], or a part of the separable conv that
    make_init_fixtures.py makes (16 channels in, multiplier 4, 7x7, 64 out)."""
    torch.manual_seed(1)
    if separable_part:
        channels, layer = 16, SeparableConv(64, 7, multiplier=4, name="layer", init=init)
        key = f"layer.{separable_part}.weight"
    elif len(shape) == 2:
        channels, layer = shape[0], Classifier(shape[1], name="layer", init=init)
        key = "layer.weight"
    else:
        channels = shape[2]
        layer = Conv(shape[3], tuple(shape[:2]), name="layer", init=init)
        key = "layer.conv.weight"
    return build(Net("T", Seq(Conv(channels, 1, name="first"), layer)), min_depth=1), key


TF_CASES = {  # fixture entry: (incept's initialiser, distribution by slim's formula)
    "trunc_normal_0.09": (trunc_normal(0.09), trunc(0.09)),
    "variance_scaling_conv": (variance_scaling(), scaled),
    "variance_scaling_fc": (variance_scaling(), scaled),
    "xavier_conv": (xavier(), glorot),
    "xavier_fc": (xavier(), glorot),
    "separable_depthwise": (xavier(), glorot),
    "separable_pointwise": (xavier(), glorot),
}


@pytest.mark.parametrize("case", sorted(TF_CASES))
def test_draws_match_tensorflows_own(case):
    tf_draws = np.load(TF_DRAWS)
    theirs, shape = tf_draws[f"init/{case}"], tf_draws[f"shape/init/{case}"].tolist()
    init, intended = TF_CASES[case]
    part = case.removeprefix("separable_") if case.startswith("separable_") else None
    model, key = drawn_layer(shape, init, part)
    assert tf_shape(model, key) == shape
    assert ks_two_sample(model.state_dict()[key].numpy(), theirs) > ALPHA
    # and the test's own formula describes TF's draws
    assert ks_one_sample(torch.from_numpy(theirs), intended(shape)) > ALPHA


TF_NETS = {"InceptionV1": "inception_v1", "InceptionV2": "inception_v2"}  # slim scope: ours


@pytest.mark.parametrize(
    "variable",
    sorted(name for name in np.load(TF_DRAWS).files if name.startswith("net/")),
)
def test_family_layers_match_tf_slims_nets(models, variable):
    scope, slim_name = variable.removeprefix("net/").split("/", 1)
    model, keys = models(TF_NETS[scope])
    ours = model.state_dict()[keys[f"{scope}/{slim_name}"]].numpy()
    assert ks_two_sample(ours, np.load(TF_DRAWS)[variable]) > ALPHA


def test_init_is_a_scoped_default_shown_on_the_modules():
    spec = Net(
        "S",
        Seq(
            Conv(8, 3, name="scoped"),
            Conv(8, 1, name="explicit", init=trunc_normal(0.5)),
            init=variance_scaling(),
        ),
        Conv(8, 1, name="default"),
        Classifier(4, name="fc"),
    )
    assert "init=variance_scaling()" in repr(spec.body[0])
    model = build(spec, min_depth=1)
    assert model.scoped.init == variance_scaling()
    assert model.explicit.init == trunc_normal(0.5)
    assert model.default.init == xavier() and model.fc.init == xavier()  # the language's
    assert "init=trunc_normal(0.5)" in repr(model.explicit)
    assert "init=xavier()" in repr(model.fc)
    assert repr(variance_scaling(1.0, "fan_out", True)) == (
        "variance_scaling(factor=1.0, mode='fan_out', uniform=True)"
    )
    with pytest.raises(ValueError, match="init must be"):
        build(Net("X", Conv(8, 1, name="c", init=0.1)))
    with pytest.raises(ValueError, match="mode"):
        variance_scaling(mode="FAN_IN")


def test_a_new_classifier_is_drawn_for_its_own_fans():
    model = build(Net("C", Conv(64, 1, name="c"), Classifier(10, name="fc")))
    model.reset_classifier(3000)
    limit = math.sqrt(6 / (64 + 3000))
    assert model.fc.weight.abs().max().item() <= limit
    assert ks_one_sample(model.fc.weight, ("uniform", limit)) > ALPHA
