"""Inception-v4 and Inception-ResNet-v2 with TF-Slim checkpoints' weights: the same logits and
aux logits as slim's networks, and every variable of the full-size checkpoints named.

tf-slim 1.1 ships neither network: tests/fixtures/make_slim_v4_irv2_fixtures.py writes them out
with tf_slim's layers as TF-Slim's published definitions build them (checked there against
timm's parameter counts) and saved random weights and slim's eval outputs, read here through
our own checkpoint reader (no TensorFlow)."""

import json
import pathlib

import numpy as np
import pytest
import torch

import incept
from incept.spec import slim_variable_names

FAMILY = pathlib.Path(__file__).parents[1] / "fixtures" / "family"
OUTPUTS = FAMILY / "slim_v4_irv2_outputs.npz"
VARIABLES = json.loads((FAMILY / "slim_v4_irv2_variables.json").read_text())
BIG_IMAGES, SMALL_IMAGES = ((2, 299, 320, 3), 3), ((2, 75, 91, 3), 4)
NETS = [("inception_v4", "v4"), ("inception_resnet_v2", "irv2")]
# The generator's width, min_depth and 11 classes, less slim's background class.
OPTIONS = dict(num_classes=10, width=0.05, min_depth=8)


def images(shape, seed):
    """The generator's input batch (tests/fixtures/make_family_fixtures.py), NCHW."""
    count = int(np.prod(shape))
    batch = np.sin(np.arange(count, dtype=np.float64) * 0.731 + seed).astype(np.float32)
    return torch.from_numpy(batch.reshape(shape)).permute(0, 3, 1, 2)


def assert_same(ours, theirs):
    """Within float32 rounding (we reach 7e-7 of the largest logit; slim's are 0.6 to 25)."""
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=5e-6 * np.abs(theirs).max())
    assert theirs.std() > 0.1  # the random network did not collapse


@pytest.mark.parametrize("name, key", NETS)
def test_same_logits_and_aux_logits_as_slim(name, key):
    outputs = np.load(OUTPUTS)
    big, small = images(*BIG_IMAGES), images(*SMALL_IMAGES)
    assert big.sum(dtype=torch.float64).item() == pytest.approx(outputs["images_sum"])
    assert small.sum(dtype=torch.float64).item() == pytest.approx(outputs["small_images_sum"])
    model = incept.nets.create(name, weights=FAMILY / f"slim_{key}" / "model.ckpt", **OPTIONS)
    assert model.config["semantics"] == "tf"
    model.eval()
    with torch.no_grad():
        points = model.end_points(big)
        small_logits = model(small)  # 75 x 91: an uneven map, aux head not run
    # slim's first logit (background) has no row in a 10-class model
    assert_same(points["Logits"].numpy(), outputs[f"{key}_logits"][:, 1:])
    assert_same(points["AuxLogits"].numpy(), outputs[f"{key}_aux_logits"][:, 1:])
    assert_same(small_logits.numpy(), outputs[f"{key}_small_logits"][:, 1:])


@pytest.mark.parametrize("name", [name for name, _ in NETS])
def test_slim_names_cover_the_full_size_checkpoint(name):
    with torch.device("meta"):
        model = incept.nets.create(name, num_classes=1001, aux_logits=True)
    ours = {v: k for k, v in slim_variable_names(model).items() if not v.endswith("/gamma")}
    theirs = VARIABLES[name]
    assert sorted(set(theirs) - set(ours)) == []  # variables we would not load
    assert sorted(set(ours) - set(theirs)) == []  # names slim does not have
    state = model.state_dict()
    for slim_name, shape in theirs.items():
        tensor = state[ours[slim_name]]
        if len(shape) == 4:  # HWIO
            h, w, i, o = shape
            expected = [o, i, h, w]
        elif len(shape) == 2:  # a dense layer: (in, out)
            expected = shape[::-1]
        else:
            expected = shape
        assert list(tensor.shape) == expected, slim_name
