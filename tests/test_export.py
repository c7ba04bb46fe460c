"""`incept export`: ONNX with a dynamic batch, checked with onnxruntime, written atomically."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import incept
from incept.cli import main
from incept.errors import UserError
from incept.export import export_onnx
from incept.predict import load_predictor
from incept.weights.checkpoint import save_checkpoint

CLASSES = ["daisy", "rose", "tulip", "iris"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = incept.nets.create("inception_v3", num_classes=len(CLASSES), width=0.1)
    # Batch-norm statistics of real activations (a fresh net's shrink the signal to nothing)
    # and a large head: logits far from zero, so agreement within 1e-4 means something.
    for norm in model.modules():
        if isinstance(norm, torch.nn.modules.batchnorm._BatchNorm):
            norm.reset_running_stats()
            norm.momentum = None
    with torch.no_grad():
        model.train()(torch.rand(8, 3, 91, 91) * 2 - 1)
        model.fc.weight.normal_(0, 3.0)
    meta = {
        "model": "inception_v3",
        "model_kwargs": {k: v for k, v in model.config.items() if k != "model"},
        "class_names": CLASSES,
        "image_size": 91,
        "recipe": {},
    }
    train_dir = tmp_path_factory.mktemp("run")
    save_checkpoint(train_dir, 5, model.state_dict(), {}, meta)
    return train_dir


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_export_runs_in_onnxruntime_at_any_batch(run_dir, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    status, stdout, err = run_cli(
        ["export", "--checkpoint", str(run_dir), "--out", str(out)], capsys
    )
    assert status == 0, err
    assert "max abs difference" in stdout and "91 x 91" in stdout
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left

    proto = onnx.load(out)
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    assert json.loads(metadata["incept.class_names"]) == CLASSES
    assert metadata["incept.image_size"] == "91" and metadata["incept.checkpoint_step"] == "5"
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 91, 91]

    model = incept.nets.load(run_dir)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        images = torch.rand(batch, 3, 91, 91) * 2 - 1
        (logits,) = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = model(images).numpy()
        scale = np.abs(expected).max()
        assert scale > 10
        np.testing.assert_allclose(logits, expected, atol=1e-4 * scale, rtol=0)


def test_image_size_flag_and_reported_difference(run_dir, tmp_path):
    predictor = load_predictor(run_dir, device="cpu")
    result = export_onnx(predictor, tmp_path / "small.onnx", image_size=75)
    assert result.image_size == 75 and result.logit_scale > 10
    assert 0 <= result.max_abs_difference <= 1e-4 * result.logit_scale
    session = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 75, 75]


def test_a_failed_check_leaves_the_old_file(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"previous export")
    monkeypatch.setattr("incept.export._check_with_onnxruntime", lambda *args: 1e6)
    with pytest.raises(UserError, match=r"differ from PyTorch's by 1e\+06"):
        export_onnx(load_predictor(run_dir, device="cpu"), out)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--image-size", "20"], "--image-size: must be in [75, 13377], got 20"),
        (["--out", "/nonexistent-folder/m.onnx"], "no folder /nonexistent-folder to write into"),
    ],
)
def test_user_mistakes_are_one_line(run_dir, tmp_path, capsys, flags, message):
    argv = ["export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "m.onnx"), *flags]
    status, _, err = run_cli(argv, capsys)
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1
