"""timm's Inception weights in our models: every name mapped, the same eval logits."""

import pytest
import timm
import torch

import incept
from incept.errors import UserError
from incept.spec import slim_variable_names
from incept.weights.timm_family import from_timm, timm_name

# timm's Inception-ResNet-v2 weights are Cadene's conversion of Google's checkpoint; his
# converter pairs each layer with its TF-Slim scope (github.com/Cadene/tensorflow-model-zoo.torch,
# inceptionresnetv2/pytorch_load.py, load_*): an independent check of both our name mappings.
CADENE_IRV2 = [
    ("conv2d_4a.conv", "Conv2d_4a_3x3"),
    ("mixed_5b.branch0.conv", "Mixed_5b/Branch_0/Conv2d_1x1"),
    ("mixed_5b.branch1.1.conv", "Mixed_5b/Branch_1/Conv2d_0b_5x5"),
    ("mixed_5b.branch3.1.conv", "Mixed_5b/Branch_3/Conv2d_0b_1x1"),
    ("repeat.0.branch2.2.conv", "Repeat/block35_1/Branch_2/Conv2d_0c_3x3"),
    ("repeat.9.conv2d", "Repeat/block35_10/Conv2d_1x1"),
    ("mixed_6a.branch0.conv", "Mixed_6a/Branch_0/Conv2d_1a_3x3"),
    ("mixed_6a.branch1.2.conv", "Mixed_6a/Branch_1/Conv2d_1a_3x3"),
    ("repeat_1.19.branch1.1.conv", "Repeat_1/block17_20/Branch_1/Conv2d_0b_1x7"),
    ("repeat_1.0.conv2d", "Repeat_1/block17_1/Conv2d_1x1"),
    ("mixed_7a.branch0.1.conv", "Mixed_7a/Branch_0/Conv2d_1a_3x3"),
    ("mixed_7a.branch2.1.conv", "Mixed_7a/Branch_2/Conv2d_0b_3x3"),
    ("repeat_2.8.branch1.2.conv", "Repeat_2/block8_9/Branch_1/Conv2d_0c_3x1"),
    ("block8.branch0.conv", "Block8/Branch_0/Conv2d_1x1"),
    ("block8.conv2d", "Block8/Conv2d_1x1"),
    ("conv2d_7b.conv", "Conv2d_7b_1x1"),
]


def randomized(model):
    """Random weights (timm's own init) with non-trivial batch-norm statistics and affines."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("running_mean", "bn.bias")):
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.1)
            elif name.endswith(("running_var", "bn.weight")):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
    return model.eval()


def ours_with(name, state, semantics):
    """Our full-size model built on "meta" (no init of its own), holding timm's tensors."""
    with torch.device("meta"):
        model = incept.nets.create(name, aux_logits=False, semantics=semantics)
    model.load_state_dict(from_timm(name, state), strict=True, assign=True)
    return model.eval()


@pytest.mark.parametrize("name", ["inception_v4", "inception_resnet_v2"])
def test_same_logits_as_timm(name):
    torch.manual_seed(0)
    theirs = randomized(timm.create_model(name, num_classes=1000))
    x = torch.rand(2, 3, 75, 75, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = theirs(x)
        # "torch": what a timm file implies ("tf" gives the same: tests/nets/test_family.py)
        got = ours_with(name, theirs.state_dict(), "torch")(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    assert expected.std() > 0.01  # not two near-constant outputs


def test_timm_inception_v3_names_are_ours():
    with torch.device("meta"):
        ours = incept.nets.inception_v3(num_classes=1000, aux_logits=True)
        theirs = timm.create_model("inception_v3", aux_logits=True)
    keys = list(theirs.state_dict())
    assert [timm_name("inception_v3", k) for k in keys] == list(ours.state_dict())
    # and the same computation (torchvision's semantics): our weights in timm's model
    torch.manual_seed(0)
    ours = randomized(incept.nets.inception_v3(aux_logits=False, semantics="torch"))
    theirs = timm.create_model("inception_v3").eval()
    theirs.load_state_dict(from_timm("inception_v3", ours.state_dict()), strict=True)
    x = torch.rand(1, 3, 107, 107, generator=torch.Generator().manual_seed(3)) * 2 - 1
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(ours(x), expected, atol=1e-4, rtol=0)
    assert expected.std() > 0.01


def test_timm_and_slim_names_agree_with_cadenes_converter():
    with torch.device("meta"):
        slim = slim_variable_names(incept.nets.inception_resnet_v2())
    for timm_layer, scope in CADENE_IRV2:
        ours = timm_name("inception_resnet_v2", f"{timm_layer}.weight")
        assert slim[ours] == f"InceptionResnetV2/{scope}/weights"


def test_names_by_hand():
    assert timm_name("inception_v4", "features.3.conv.bn.running_var") == (
        "Mixed_3a.branch1.bn.running_var"
    )
    assert timm_name("inception_v4", "features.21.branch2_3b.conv.weight") == (
        "Mixed_7d.branch2_4b.conv.weight"
    )
    assert timm_name("inception_v4", "features.9.branch3.1.bn.bias") == "Mixed_5e.branch3.bn.bias"
    assert timm_name("inception_v4", "last_linear.weight") == "fc.weight"
    assert timm_name("inception_resnet_v2", "repeat_1.19.branch1.2.conv.weight") == (
        "PreAuxLogits.block17_20.branch1_3.conv.weight"
    )
    assert timm_name("inception_resnet_v2", "block8.conv2d.bias") == "Block8.conv2d.conv.bias"
    assert timm_name("inception_resnet_v2", "classif.bias") == "fc.bias"


def test_unknown_model_or_key_is_a_user_error():
    with pytest.raises(UserError, match="no timm weights for inception_v1"):
        timm_name("inception_v1", "conv1.weight")
    with pytest.raises(UserError, match="not a parameter of timm's inception_resnet_v2"):
        from_timm("inception_resnet_v2", {"features.0.conv.weight": torch.zeros(1)})
