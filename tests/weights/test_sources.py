"""Every weight source gives our model the source framework's own outputs.

TF-Slim and Keras references are logits the frameworks computed when they wrote the fixtures
(tests/fixtures/make_weight_fixtures.py); torchvision and timm models are built here with
random weights and compared directly.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

import incept
from incept.errors import UserError
from incept.weights import sources
from incept.weights.sources import load_weights, read_state_dict, semantics_of, source_kind

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "weights"
SLIM_V2 = FIXTURES / "slim_v3_v2"
SLIM_V1 = FIXTURES / "slim_v3_v1.ckpt"
KERAS = FIXTURES / "keras_v3.h5"
NARROW = {"width": 0.05, "min_depth": 8}  # how the fixtures' models were narrowed


def fixture_input(shape_name: str, seed: int, reference: np.lib.npyio.NpzFile) -> torch.Tensor:
    """The generator's input batch (NHWC there), remade bit for bit, as NCHW."""
    path = FIXTURES.parent / "make_weight_fixtures.py"
    spec = importlib.util.spec_from_file_location("make_weight_fixtures", path)
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    images = generator.input_images(getattr(generator, shape_name), seed)
    assert images.sum(dtype=np.float64) == reference["images_sum"]
    return torch.from_numpy(images.transpose(0, 3, 1, 2).copy())


@pytest.fixture(scope="module")
def slim_reference():
    reference = np.load(FIXTURES / "slim_v3_outputs.npz")
    return fixture_input("SLIM_IMAGE_SHAPE", 3, reference), reference


def run(model, images) -> dict[str, np.ndarray]:
    model.eval()
    with torch.no_grad():
        points = model.end_points(images)
    return {name: tensor.numpy() for name, tensor in points.items()}


@pytest.mark.parametrize("source", [SLIM_V2, SLIM_V1], ids=["V2", "V1"])
@pytest.mark.parametrize("num_classes", [11, 10], ids=["with-background", "background-dropped"])
def test_tf_slim_checkpoint_gives_slims_logits(slim_reference, source, num_classes):
    images, reference = slim_reference
    model = incept.nets.inception_v3(num_classes=num_classes, weights=source, **NARROW)
    assert model.config["semantics"] == "tf"  # chosen from the source
    points = run(model, images)
    rows = slice(11 - num_classes, None)  # 10 classes: slim's row 0 (background) dropped
    np.testing.assert_allclose(points["Logits"], reference["logits"][:, rows], atol=2e-5, rtol=0)
    np.testing.assert_allclose(
        points["AuxLogits"], reference["aux_logits"][:, rows], atol=2e-5, rtol=0
    )
    assert reference["logits"].std() > 0.5  # not a comparison of near-constant outputs
    for name, value in points.items():
        nhwc = value.shape if value.ndim != 4 else tuple(np.array(value.shape)[[0, 2, 3, 1]])
        if name not in ("Logits", "AuxLogits", "Predictions"):
            assert nhwc == tuple(reference[f"shape/{name}"]), name


def test_tf_slim_inception_v1_gives_slims_logits():
    """The whole network (tests/nets/test_family.py covers v2, and v1 to Conv2d_2b_1x1)."""
    reference = np.load(FIXTURES / "slim_v1_outputs.npz")
    images = fixture_input("SLIM_V1_IMAGE_SHAPE", 7, reference)
    model = incept.nets.inception_v1(num_classes=10, weights=FIXTURES / "slim_v1", **NARROW)
    logits = run(model, images)["Logits"]
    np.testing.assert_allclose(logits, reference["logits"][:, 1:], atol=2e-5, rtol=0)
    assert reference["logits"].std() > 0.5


def test_tf_semantics_matter(slim_reference):
    """With PyTorch's padding rules the same weights give other logits (TF's average pooling
    leaves padding out of the count), so the comparison above does test the TF rules."""
    images, reference = slim_reference
    model = incept.nets.inception_v3(num_classes=11, semantics="torch", **NARROW)
    load_weights(model, SLIM_V2)
    logits = run(model, images)["Logits"]
    assert np.abs(logits - reference["logits"]).max() > 1e-2


def test_keras_h5_gives_keras_logits():
    reference = np.load(FIXTURES / "keras_v3_outputs.npz")
    images = fixture_input("KERAS_IMAGE_SHAPE", 6, reference)
    model = incept.nets.inception_v3(num_classes=10, aux_logits=False, weights=KERAS, **NARROW)
    assert model.config["semantics"] == "tf"
    logits = run(model, images)["Logits"]
    np.testing.assert_allclose(logits, reference["logits"], atol=2e-5, rtol=0)
    assert reference["logits"].std() > 0.5


def test_keras_has_no_aux_head_which_stays_fresh(caplog):
    model = incept.nets.inception_v3(num_classes=10, semantics="tf", **NARROW)
    fresh_aux = model.AuxLogits.fc.weight.clone()
    with caplog.at_level(logging.INFO, logger=sources.__name__):
        load_weights(model, KERAS)
    assert torch.equal(model.AuxLogits.fc.weight, fresh_aux)
    assert "AuxLogits.fc.weight" in caplog.text


def test_keras_notop_file_leaves_the_classifier_fresh(tmp_path):
    """Keras's include_top=False files (`..._notop.h5`) have no dense layer."""
    import h5py

    notop = tmp_path / "notop.h5"
    with h5py.File(KERAS, "r") as source, h5py.File(notop, "w") as target:
        names = [str(n) for n in source.attrs["layer_names"] if str(n) != "predictions"]
        target.attrs["layer_names"] = names
        for name in names:
            source.copy(source[name], target, name=name)
    model = incept.nets.inception_v3(num_classes=10, aux_logits=False, semantics="tf", **NARROW)
    fresh_fc = model.fc.weight.clone()
    load_weights(model, notop)
    assert torch.equal(model.fc.weight, fresh_fc)
    full = read_state_dict(KERAS, model)
    assert torch.equal(
        model.Mixed_7c.branch_pool.conv.weight, full["Mixed_7c.branch_pool.conv.weight"]
    )


def test_class_count_differs_heads_stay_fresh_and_exclude(caplog):
    model = incept.nets.inception_v3(num_classes=5, semantics="tf", **NARROW)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger=sources.__name__):
        load_weights(model, SLIM_V2, exclude=["Mixed_7c"])
    after = model.state_dict()
    for name in ("fc.weight", "AuxLogits.fc.bias", "Mixed_7c.branch_pool.conv.weight"):
        assert torch.equal(after[name], before[name]), name
    slim = read_state_dict(SLIM_V2, model)
    assert torch.equal(
        after["Mixed_7b.branch1x1.conv.weight"], slim["Mixed_7b.branch1x1.conv.weight"]
    )
    assert "fc.weight" in caplog.text and "Mixed_7c" in caplog.text
    with pytest.raises(UserError, match="matches no parameter"):
        load_weights(model, SLIM_V2, exclude=["Mixed_9z*"])


def test_other_width_is_refused_and_model_left_untouched():
    model = incept.nets.inception_v3(num_classes=11, semantics="tf", width=0.1, min_depth=8)
    before = model.Conv2d_1a_3x3.conv.weight.clone()
    with pytest.raises(UserError, match="same model and width") as raised:
        load_weights(model, SLIM_V1)
    assert "\n" not in str(raised.value)
    assert torch.equal(model.Conv2d_1a_3x3.conv.weight, before)


def random_torchvision_inception_v3():
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("running_mean", "bn.bias")):
                tensor.copy_(torch.randn(tensor.shape) * 0.1)
            elif name.endswith(("running_var", "bn.weight")):
                tensor.copy_(torch.rand(tensor.shape) + 0.5)
    return model.eval()


def test_torchvision_weights_from_cache_download_and_offline(tmp_path, monkeypatch):
    torchvision_model = random_torchvision_inception_v3()
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cached = tmp_path / "hub" / "checkpoints" / "inception_v3_google-0cc3c7bd.pth"
    calls = []

    def no_network(url, dst, hash_prefix=None, progress=True):
        calls.append((url, dst, hash_prefix))
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(UserError) as raised:
        incept.nets.inception_v3(weights="torchvision")
    message = str(raised.value)
    assert "\n" not in message
    assert str(cached) in message and "download.pytorch.org" in message
    assert calls == [(
        "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth",
        str(cached),
        "0cc3c7bd",
    )]  # fmt: skip

    def download(url, dst, hash_prefix=None, progress=True):
        torch.save(torchvision_model.state_dict(), dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    model = incept.nets.inception_v3(weights="torchvision")
    assert cached.is_file() and model.config["semantics"] == "torch"
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)  # now from the cache
    model = incept.nets.inception_v3(weights="torchvision").eval()
    images = torch.rand(2, 3, 96, 96, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(images), torchvision_model(images), atol=1e-4, rtol=0)


def test_timm_safetensors_gives_timms_logits(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(1)
    timm_model = timm.create_model("inception_v3", pretrained=False, num_classes=7).eval()
    with torch.no_grad():
        for name, tensor in timm_model.state_dict().items():
            if name.endswith(("running_mean", "bn.bias")):
                tensor.copy_(torch.randn(tensor.shape) * 0.1)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape) + 0.5)
    save_file(timm_model.state_dict(), tmp_path / "timm.safetensors")
    model = incept.nets.inception_v3(
        num_classes=7, aux_logits=False, weights=tmp_path / "timm.safetensors"
    ).eval()
    images = torch.rand(2, 3, 80, 80, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(model(images), timm_model(images), atol=1e-4, rtol=0)


def test_timm_names_in_a_file_are_renamed(tmp_path):
    """Inception-ResNet-v2's timm names differ from ours (timm_family renames them; its own
    tests cover v4 too); here the whole path from a .safetensors file, in sorted order."""
    name = "inception_resnet_v2"
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(3)
    timm_model = timm.create_model(name, pretrained=False, num_classes=6).eval()
    with torch.no_grad():
        for key, tensor in timm_model.state_dict().items():
            if key.endswith(("running_mean", "bn.bias")):
                tensor.copy_(torch.randn(tensor.shape) * 0.1)
            elif key.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape) + 0.5)
    save_file(timm_model.state_dict(), tmp_path / "timm.safetensors")
    model = incept.nets.create(name, num_classes=6, weights=tmp_path / "timm.safetensors").eval()
    images = torch.rand(1, 3, 107, 107, generator=torch.Generator().manual_seed(4)) * 2 - 1
    with torch.no_grad():
        expected = timm_model(images)
        torch.testing.assert_close(model(images), expected, atol=1e-4, rtol=0)
    assert expected.std() > 0.01


def test_our_checkpoint_gives_its_moving_averages(tmp_path):
    from incept.weights.checkpoint import save_checkpoint

    trained = incept.nets.inception_v3(num_classes=4, semantics="tf", **NARROW)
    averaged = {k: v + 1 if v.is_floating_point() else v for k, v in trained.state_dict().items()}
    kwargs = {k: v for k, v in trained.config.items() if k != "model"}
    meta = {"model": "inception_v3", "model_kwargs": kwargs}
    save_checkpoint(tmp_path, 5, trained.state_dict(), {}, meta, ema_state=averaged)
    assert source_kind(tmp_path) == "incept" and semantics_of(tmp_path) == "tf"
    model = incept.nets.inception_v3(num_classes=4, weights=tmp_path, **NARROW)
    assert model.config["semantics"] == "tf"
    assert torch.equal(model.fc.weight, averaged["fc.weight"])
    load_weights(model, tmp_path, ema=False)
    assert torch.equal(model.fc.weight, trained.fc.weight)


def test_source_kinds_and_semantics(tmp_path):
    assert source_kind("torchvision") == "torchvision"
    assert source_kind(SLIM_V2) == "tf" and source_kind(SLIM_V1) == "tf"
    assert source_kind(SLIM_V2 / "model.ckpt.index") == "tf"
    assert source_kind(KERAS) == "keras"
    assert semantics_of(KERAS) == "tf" and semantics_of("torchvision") == "torch"
    (tmp_path / "notes.txt").write_text("hello")
    for path, fragment in [
        (tmp_path / "nothing", "no weights at"),
        (tmp_path / "notes.txt", "not a weight source"),
    ]:
        with pytest.raises(UserError, match=fragment) as raised:
            source_kind(path)
        assert "\n" not in str(raised.value)
    torch.save({"layer.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="none of this model's parameters"):
        incept.nets.inception_v3(weights=tmp_path / "other.pth", **NARROW)
