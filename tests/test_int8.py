"""int8 inference (`incept export --int8`, `incept eval --int8`, `incept classify --int8`):
the file is really quantized, its logits follow the float model's (PyTorch's, the independent
reference), calibration is deterministic, and eval compares it with fp32 on the same records.

The model: a tiny Inception-v3 (width 0.1, 75 px) trained for a few steps on the real
photographs of tests/fixtures/fashion_mnist (4 classes, 100 training and 25 validation images
each), so its logits separate the classes as a trained network's do.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

import incept
from incept.cli import main
from incept.data import make_loader
from incept.export import checked_graph, inference_session, run_session
from incept.predict import load_predictor
from incept.quantize import CALIBRATION_IMAGES, calibration_images, quantize_graph

FIXTURE = Path(__file__).parent / "fixtures" / "fashion_mnist"
SIZE = 75
CALIBRATION = 64  # images: fewer than the default, for speed
RESULT_LINE = re.compile(
    r"^precision @ 1 = (\d\.\d{4}) recall @ 5 = (\d\.\d{4}) \[(\d+) examples\]$"
)


def run_cli(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    captured = capsys.readouterr()
    return stop.value.code, captured.out, captured.err


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from incept.data.build import build_data

    out = tmp_path_factory.mktemp("shards")
    build_data(FIXTURE / "train", out, validation_dir=FIXTURE / "validation", workers=1)
    return out


@pytest.fixture(scope="module")
def run_dir(shards, tmp_path_factory):
    train_dir = tmp_path_factory.mktemp("run")
    argv = [
        "train", "--data", str(shards), "--train-dir", str(train_dir),
        "--recipe", "small_data_cpu", "--width", "0.1", "--image-size", str(SIZE),
        "--batch-size", "16", "--max-steps", "100", "--workers", "0", "--precision", "fp32",
        "--eval-every", "0",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    return train_dir


@pytest.fixture(scope="module")
def validation(shards):
    """The validation images in the evaluation preprocessing, and their labels."""
    loader = make_loader(shards, "validation", training=False, batch_size=50, image_size=SIZE,
                         workers=0)  # fmt: skip
    batches = list(loader)
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


@pytest.fixture(scope="module")
def exported(run_dir, shards, tmp_path_factory):
    """The float and the int8 file of the run, both written by `incept export`."""
    folder = tmp_path_factory.mktemp("onnx")
    int8 = ["--int8", "--calibration-data", str(shards), "--calibration-images", str(CALIBRATION)]
    for name, extra in (("float", []), ("int8", int8)):
        out = folder / f"{name}.onnx"
        with pytest.raises(SystemExit) as stop:
            main(["export", "--checkpoint", str(run_dir), "--out", str(out), *extra])
        assert stop.value.code == 0
    return folder


def test_export_int8_says_agreement_and_writes_one_file(run_dir, shards, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    argv = ["export", "--checkpoint", str(run_dir), "--out", str(out), "--int8",
            "--calibration-data", str(shards), "--calibration-images", "40"]  # fmt: skip
    status, stdout, err = run_cli(argv, capsys)
    assert status == 0, err
    lines = stdout.strip().splitlines()
    assert len(lines) == 2 and "int8 inception_v3, 4 classes, input N x 3 x 75 x 75" in lines[0]
    agreement = re.search(r"calibrated on 40 train images of .*: the same top-1 class as the "
                          r"float model on (\d+\.\d)% of them", lines[1])  # fmt: skip
    assert agreement and float(agreement.group(1)) >= 80, lines[1]
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left


def test_the_file_is_quantized_and_smaller(exported):
    proto = onnx.load(exported / "int8.onnx")
    ops = [node.op_type for node in proto.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 50
    # The convolutions' weights are stored as int8, one scale per output channel.
    initializers = {t.name: t for t in proto.graph.initializer}
    weights = [t for t in initializers.values() if t.data_type == onnx.TensorProto.INT8]
    assert len(weights) >= 90  # Inception-v3 has 94 convolutions
    per_channel = [
        node for node in proto.graph.node
        if node.op_type == "DequantizeLinear" and node.input[0] in initializers
        and initializers[node.input[0]].data_type == onnx.TensorProto.INT8
        and len(initializers[node.input[1]].dims) == 1
    ]  # fmt: skip
    assert len(per_channel) >= 90
    # The classifier stays float: its Gemm reads float weights.
    (gemm,) = [node for node in proto.graph.node if node.op_type == "Gemm"]
    assert initializers[gemm.input[1]].data_type == onnx.TensorProto.FLOAT
    float_size = (exported / "float.onnx").stat().st_size
    assert (exported / "int8.onnx").stat().st_size < 0.5 * float_size  # ~0.26 at full width
    metadata = {prop.key: prop.value for prop in proto.metadata_props}
    assert json.loads(metadata["incept.class_names"]) == ["bag", "sneaker", "trouser",
                                                          "tshirt_top"]  # fmt: skip
    assert json.loads(metadata["incept.quantization"])["calibration_images"] == CALIBRATION
    assert metadata["incept.image_size"] == str(SIZE)


def test_int8_logits_follow_pytorch_fp32(exported, run_dir, validation):
    images, labels = validation
    model = incept.nets.load(run_dir)
    with torch.no_grad():
        expected = model(images).numpy()
    logits = run_session(inference_session(exported / "int8.onnx"), images.numpy())
    assert logits.shape == expected.shape == (100, 4)
    agreement = (logits.argmax(1) == expected.argmax(1)).mean()
    correlation = np.corrcoef(logits.ravel(), expected.ravel())[0, 1]
    # The trained model is far from chance, so agreement is not a matter of constant output.
    assert (expected.argmax(1) == labels.numpy()).mean() > 0.5
    assert agreement >= 0.9 and correlation > 0.98, (agreement, correlation)
    # ... and it is not the float graph under another name: int8 rounding shows.
    assert np.abs(logits - expected).max() > 1e-4 * np.abs(expected).max()


def test_calibration_is_deterministic(run_dir, shards):
    predictor = load_predictor(run_dir, device="cpu")
    graph = checked_graph(predictor).graph
    first, second = (calibration_images(shards, SIZE, 24, workers=0) for _ in range(2))
    np.testing.assert_array_equal(first, second)
    # The first records of the train subset, in the loader's order.
    loader = make_loader(shards, "train", training=False, batch_size=24, image_size=SIZE,
                         workers=0)  # fmt: skip
    np.testing.assert_array_equal(first, next(iter(loader))[0].numpy())
    one, two = quantize_graph(graph, first), quantize_graph(graph, second)
    assert one.graph == two.graph and one.calibration_images == 24


def test_eval_int8_against_fp32(run_dir, shards, exported, validation, capsys):
    common = ["eval", "--data", str(shards), "--checkpoint", str(run_dir), "--workers", "0"]
    int8 = ["--int8", "--calibration-data", str(shards), "--calibration-images", str(CALIBRATION)]
    status, stdout, err = run_cli([*common, *int8], capsys)
    assert status == 0, err
    *_, comparison, last = stdout.strip().splitlines()
    assert "evaluating in int8" in err and "calibrated on 64 train images" in err
    top1, top5, examples = RESULT_LINE.match(last).groups()
    assert examples == "100"
    fp32_top1, change = re.fullmatch(
        r"fp32 precision @ 1 = (\d\.\d{4}); int8 changes it by ([+-]\d+\.\d\d) points", comparison
    ).groups()

    status, stdout, _ = run_cli([*common, "--precision", "fp32", "--json"], capsys)
    assert status == 0
    plain = json.loads(stdout)
    assert fp32_top1 == f"{plain['top1']:.4f}"

    status, stdout, _ = run_cli([*common, *int8, "--json"], capsys)
    assert status == 0
    result = json.loads(stdout)
    assert set(result) == {"top1", "top5", "examples", "loss", "precision", "fp32_top1",
                           "top1_change_points"}  # fmt: skip
    assert result["precision"] == "int8" and result["fp32_top1"] == plain["top1"]
    assert result["top1_change_points"] == pytest.approx((result["top1"] - plain["top1"]) * 100)
    assert f"{result['top1']:.4f}" == top1 and f"{result['top5']:.4f}" == top5
    assert change == f"{result['top1_change_points']:+.2f}"
    # The int8 model eval built is the one export wrote (the same calibration), scored by hand.
    images, labels = validation
    logits = run_session(inference_session(exported / "int8.onnx"), images.numpy())
    assert result["top1"] == pytest.approx((logits.argmax(1) == labels.numpy()).mean())


def test_classify_int8(run_dir, shards, capsys):
    photos = sorted(str(p) for p in (FIXTURE / "validation").rglob("*.png"))[::10]
    common = ["classify", *photos, "--checkpoint", str(run_dir), "--json", "--top-k", "1"]
    status, stdout, _ = run_cli(common, capsys)
    assert status == 0
    expected = [json.loads(line)["top"][0]["label"] for line in stdout.splitlines()]
    status, stdout, err = run_cli(
        [*common, "--int8", "--calibration-data", str(shards), "--calibration-images", "32"],
        capsys,
    )
    assert status == 0 and "calibrated on 32 train images" in err
    found = [json.loads(line)["top"][0]["label"] for line in stdout.splitlines()]
    assert len(found) == len(expected) == 10
    assert sum(a == b for a, b in zip(found, expected)) >= 8, (found, expected)


def test_calibration_images_default_is_the_help_texts(capsys):
    for command in ("export", "eval", "classify"):
        status, stdout, _ = run_cli([command, "--help"], capsys)
        assert status == 0
        assert f"calibrate it (default {CALIBRATION_IMAGES})" in " ".join(stdout.split())


@pytest.mark.parametrize(
    "command, flags, message",
    [
        ("export", ["--int8"], "--int8 needs --calibration-data DATA"),
        ("export", ["--calibration-data", "x"], "--calibration-data is for --int8"),
        ("eval", ["--calibration-images", "5"], "--calibration-images is for --int8"),
        ("export", ["--int8", "--calibration-data", "x", "--calibration-images", "0"],
         "--calibration-images: must be at least 1, got 0"),
        ("eval", ["--int8", "--calibration-data", "x", "--precision", "bf16"],
         "--int8 computes in int8: drop --precision bf16"),
        ("export", ["--int8", "--calibration-data", "{missing}"], "{missing}"),
        ("export", ["--int8", "--calibration-data", "{empty}"], "{empty}"),
    ],
)  # fmt: skip
def test_user_mistakes_are_one_line(command, flags, message, run_dir, shards, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    names = {"missing": str(tmp_path / "missing"), "empty": str(tmp_path / "empty")}
    flags = [flag.format(**names) for flag in flags]
    out = tmp_path / "m.onnx"
    if command == "export":
        argv = ["export", "--checkpoint", str(run_dir), "--out", str(out), *flags]
    else:
        argv = ["eval", "--data", str(shards), "--checkpoint", str(run_dir), *flags]
    status, _, err = run_cli(argv, capsys)
    assert status == 2 and message.format(**names) in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not out.exists()
