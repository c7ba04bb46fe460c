"""`incept classify`: the evaluation preprocessing, labels, per-image errors, safe decoding.

The reference for the predictions is computed here independently of the package's decoding and
preprocessing (Pillow decode, the central crop by hand, torch's bilinear resize); the model is
a tiny Inception-v3 saved as one of our checkpoints.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

import incept
from incept.classify import classify_files, decode_bounded
from incept.cli import main
from incept.data.images import ImageError
from incept.errors import UserError
from incept.predict import load_predictor
from incept.weights.checkpoint import save_checkpoint

CLASSES = ["cat", "dog", "bird"]
IMAGE_SIZE = 80
TINY = {"width": 0.1}
SLIM_V2 = Path(__file__).resolve().parent / "fixtures" / "weights" / "slim_v3_v2"


def tiny_model(num_classes: int = 3, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = incept.nets.create("inception_v3", num_classes=num_classes, **TINY)
    # Batch-norm statistics of real activations (a fresh net's are 0 and 1, which shrinks the
    # signal to nothing by Mixed_7c) and a spread-out head: predictions depend on the image.
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a plain average over the batches seen
    with torch.no_grad():
        model.train()(torch.rand(8, 3, IMAGE_SIZE, IMAGE_SIZE) * 2 - 1)
        model.fc.weight.normal_(0, 0.5)
    return model.eval()


def save_run(train_dir: Path, model, ema_state=None) -> Path:
    meta = {
        "model": "inception_v3",
        "model_kwargs": {k: v for k, v in model.config.items() if k != "model"},
        "class_names": CLASSES,
        "image_size": IMAGE_SIZE,
        "recipe": {},
    }
    save_checkpoint(train_dir, 42, model.state_dict(), {}, meta, ema_state=ema_state)
    return train_dir


def image_bytes(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def smooth_image(height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("run"), tiny_model())


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    files = {
        "noise.png": image_bytes(rng.integers(0, 256, (97, 130, 3), dtype=np.uint8), "PNG"),
        "smooth.jpg": image_bytes(smooth_image(150, 110), "JPEG", quality=95),
        "grey.png": image_bytes(rng.integers(0, 256, (90, 90), dtype=np.uint8), "PNG"),
        "text.jpg": b"this is not an image",
    }
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return {name: folder / name for name in files}


def reference_probabilities(model, path: Path) -> np.ndarray:
    """Pillow decode, central 87.5% by hand, bilinear resize in float64 rounded half up (ties
    are common: the exact values are multiples of 1 / (2 * size)^2), [-1, 1], softmax."""
    pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    height, width = pixels.shape[:2]
    top, left = int((height - height * 0.875) / 2), int((width - width * 0.875) / 2)
    window = torch.from_numpy(pixels[top : height - top, left : width - left].copy())
    resized = F.interpolate(
        window.permute(2, 0, 1)[None], size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear"
    )
    x = (torch.floor(resized + 0.5 + 1e-9).clamp(0, 255) / 127.5 - 1).float()
    with torch.no_grad():
        return torch.softmax(model.eval()(x), 1)[0].numpy()


def run_cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_predictions_match_an_independent_pipeline(run_dir, images):
    predictor = load_predictor(run_dir, device="cpu")
    assert (predictor.class_names, predictor.image_size, predictor.step) == (CLASSES, 80, 42)
    model = incept.nets.load(run_dir)
    paths = [str(images[name]) for name in ("noise.png", "smooth.jpg", "grey.png")]
    results = list(classify_files(paths, predictor, top_k=3, batch_size=2))
    spread = []
    for path, result in zip(paths, results):
        expected = reference_probabilities(model, Path(path))
        assert result["image"] == path
        assert [entry["label"] for entry in result["top"]] == [
            CLASSES[i] for i in np.argsort(-expected)
        ]
        got = [entry["probability"] for entry in result["top"]]
        np.testing.assert_allclose(got, np.sort(expected)[::-1], atol=2e-5)
        spread.append(expected.max() - expected.min())
    assert min(spread) > 0.05  # the images really are told apart by the model


def test_cli_json_lines_errors_and_exit_status(run_dir, images, capsys):
    argv = [
        "classify",
        str(images["smooth.jpg"]),
        str(images["text.jpg"]),
        str(images["smooth.jpg"].parent / "missing.png"),
        str(images["noise.png"]),
        "--checkpoint",
        str(run_dir),
        "--top-k",
        "2",
        "--json",
    ]
    status, out, err = run_cli(argv, capsys)
    assert status == 1
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["image"] for line in lines] == [argv[1], argv[2], argv[3], argv[4]]
    for good in (lines[0], lines[3]):
        assert set(good) == {"image", "top"} and len(good["top"]) == 2
        assert set(good["top"][0]) == {"label", "probability"}
        assert good["top"][0]["probability"] >= good["top"][1]["probability"]
        assert {entry["label"] for entry in good["top"]} <= set(CLASSES)
    assert set(lines[1]) == {"image", "error"} and "not an image" in lines[1]["error"]
    assert "no such file" in lines[2]["error"]
    errors = err.strip().splitlines()
    assert len(errors) == 2 and argv[2] in errors[0] and argv[3] in errors[1]
    assert "Traceback" not in err


def test_cli_text_output_and_top_k_beyond_the_classes(run_dir, images, capsys):
    argv = ["classify", str(images["grey.png"]), "--checkpoint", str(run_dir), "--top-k", "9"]
    status, out, err = run_cli(argv, capsys)
    assert status == 0 and err == ""
    heading, *rows = out.splitlines()
    assert heading == str(images["grey.png"]) and len(rows) == 3
    scores = [float(row.rsplit("= ", 1)[1].rstrip(")")) for row in rows]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1) < 1e-4


def test_moving_averages_are_used_unless_no_ema(tmp_path, images, capsys):
    model = tiny_model()
    with torch.no_grad():
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([5.0, 0.0, 0.0]))  # raw weights: "cat"
        averaged = {k: v.clone() for k, v in model.state_dict().items()}
        averaged["fc.bias"] = torch.tensor([0.0, 0.0, 5.0])  # moving averages: "bird"
    run_dir = save_run(tmp_path, model, ema_state=averaged)
    image = str(images["noise.png"])
    for flags, label in (([], "bird"), (["--no-ema"], "cat")):
        status, out, _ = run_cli(
            ["classify", image, "--checkpoint", str(run_dir), "--json", *flags], capsys
        )
        top = json.loads(out)["top"][0]
        assert status == 0 and top["label"] == label
        assert top["probability"] == pytest.approx(np.exp(5) / (np.exp(5) + 2), abs=1e-6)


@pytest.mark.parametrize(
    "argv_tail, message",
    [(["--top-k", "0"], "--top-k"), (["--checkpoint-typo"], "unrecognized")],
)
def test_bad_flags_are_one_line(run_dir, images, capsys, argv_tail, message):
    argv = ["classify", str(images["noise.png"]), "--checkpoint", str(run_dir), *argv_tail]
    status, _, err = run_cli(argv, capsys)
    assert status == 2 and message in err and "Traceback" not in err


def test_missing_checkpoint_is_one_line(tmp_path, images, capsys):
    argv = ["classify", str(images["noise.png"]), "--checkpoint", str(tmp_path / "nowhere")]
    status, _, err = run_cli(argv, capsys)
    assert status == 2 and len(err.strip().splitlines()) == 1 and "nowhere" in err


class _RunsCode:
    """Unpickling this would run a shell command: the classic malicious weight file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "raw pickle"])
def test_a_malicious_pickle_is_refused_without_running_it(tmp_path, images, capsys, writer):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "weights.pth"
    payload = {"fc.weight": torch.zeros(3, 2), "hook": _RunsCode(marker)}
    if writer == "torch.save":
        torch.save(payload, evil)
    else:
        evil.write_bytes(pickle.dumps(payload, protocol=2))
    assert b"system" in evil.read_bytes()
    status, out, err = run_cli(
        ["classify", str(images["noise.png"]), "--checkpoint", str(evil)], capsys
    )
    assert status == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and str(evil) in err and "Traceback" not in err
    assert "refuse" in err or "not a readable PyTorch file" in err
    assert not marker.exists()


def test_large_jpeg_is_decoded_at_reduced_scale():
    pixels = smooth_image(600, 800)
    data = image_bytes(pixels, "JPEG", quality=95)
    # 480,000 pixels over a 100,000 limit: 1/2 scale still has 120,000, so 1/4.
    decoded = decode_bounded(data, max_full_pixels=100_000)
    assert decoded.shape == (3, 150, 200)
    box_filtered = pixels.reshape(150, 4, 200, 4, 3).mean((1, 3))
    difference = np.abs(decoded.permute(1, 2, 0).numpy() - box_filtered)
    assert difference.mean() < 3  # the same picture, averaged 4 x 4
    assert decode_bounded(data).shape == (3, 600, 800)  # below the limit: full size


def test_large_png_is_shrunk_after_decoding_not_refused():
    pixels = smooth_image(600, 800)
    # 480,000 pixels over a 100,000 limit: the smallest whole factor that fits is 3 (Pillow
    # rounds up: 267 x 200).
    decoded = decode_bounded(image_bytes(pixels, "PNG"), max_full_pixels=100_000)
    assert decoded.shape == (3, 200, 267)
    box_filtered = pixels[:600, :798].reshape(200, 3, 266, 3, 3).mean((1, 3))
    difference = np.abs(decoded.permute(1, 2, 0).numpy()[:, :266] - box_filtered)
    assert difference.max() <= 1  # each pixel the mean of its 3 x 3 block
    with pytest.raises(ImageError, match="--max-image-pixels"):  # the one bomb limit
        decode_bounded(image_bytes(pixels, "PNG"), max_pixels=400_000)


def test_a_20_megapixel_png_is_classified_and_the_pixel_limit_is_one_flag(
    tmp_path, run_dir, capsys
):
    # Issue 16: classify refused PNGs over 16.7 MP that build-data and train accept.
    path = tmp_path / "large.png"
    Image.new("RGB", (5000, 4000), (200, 30, 30)).save(path)
    status, out, err = run_cli(["classify", str(path), "--checkpoint", str(run_dir)], capsys)
    assert status == 0 and err == "" and out.startswith(str(path))
    status, _, err = run_cli(
        ["classify", str(path), "--checkpoint", str(run_dir), "--max-image-pixels", "1000000"],
        capsys,
    )
    assert status == 1 and "5000x4000 pixels exceeds the limit of 1,000,000" in err
    assert "--max-image-pixels" in err and len(err.strip().splitlines()) == 1


def _with_jpeg_size(data: bytes, height: int, width: int) -> bytes:
    """A JPEG whose frame header claims another size (the scan data stays small)."""
    start = data.index(b"\xff\xc0") + 5
    return data[:start] + struct.pack(">HH", height, width) + data[start + 4 :]


def _with_png_size(data: bytes, height: int, width: int) -> bytes:
    header = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    crc = struct.pack(">I", zlib.crc32(header))
    return data[:12] + header + crc + data[33:]


@pytest.mark.parametrize(
    "bomb",
    [
        _with_jpeg_size(image_bytes(smooth_image(16, 16), "JPEG"), 65_000, 65_000),
        _with_png_size(image_bytes(smooth_image(16, 16), "PNG"), 30_000, 30_000),
    ],
    ids=["jpeg", "png"],
)
def test_decompression_bombs_are_refused_from_the_header(tmp_path, run_dir, capsys, bomb):
    path = tmp_path / "bomb.img"
    path.write_bytes(bomb)
    with pytest.raises(ImageError, match="too large"):
        decode_bounded(bomb)
    status, _, err = run_cli(["classify", str(path), "--checkpoint", str(run_dir)], capsys)
    assert status == 1 and "too large" in err and str(path) in err


def test_truncated_image_is_an_error_line(tmp_path, run_dir, capsys):
    data = image_bytes(smooth_image(120, 160), "JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    status, out, err = run_cli(
        ["classify", str(path), "--checkpoint", str(run_dir), "--json"], capsys
    )
    assert status == 1 and "truncated" in json.loads(out)["error"] and str(path) in err


@pytest.fixture
def narrow_foreign_models(monkeypatch):
    """Foreign weight files carry no width: build our tiny width for them."""
    create = incept.nets.create
    monkeypatch.setattr(incept.nets, "create", lambda name, **kw: create(name, **{**TINY, **kw}))


def test_foreign_weights_take_the_class_count_and_imagenet_names(tmp_path, narrow_foreign_models):
    imagenet = tiny_model(num_classes=1000)
    save_file(imagenet.state_dict(), tmp_path / "imagenet.safetensors")
    predictor = load_predictor(tmp_path / "imagenet.safetensors", device="cpu")
    assert predictor.class_names[:2] == ["tench", "goldfish"] and predictor.step is None
    assert len(predictor.class_names) == 1000 and predictor.image_size == 299
    x = torch.randint(0, 256, (2, 3, 99, 99), dtype=torch.uint8)
    with torch.no_grad():
        expected = torch.softmax(imagenet.eval()(x.float() / 127.5 - 1), 1)
    torch.testing.assert_close(predictor.probabilities(x), expected, atol=1e-6, rtol=0)

    seven = tiny_model(num_classes=7)
    torch.save(seven.state_dict(), tmp_path / "seven.pth")
    assert load_predictor(tmp_path / "seven.pth").class_names == [str(i) for i in range(7)]
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"kind {i}\n" for i in range(7)))
    named = load_predictor(tmp_path / "seven.pth", labels_file=labels)
    assert named.class_names[6] == "kind 6"
    labels.write_text("just one\n")
    with pytest.raises(UserError, match="names 1 classes but the model has 7"):
        load_predictor(tmp_path / "seven.pth", labels_file=labels)


def test_tf_slim_checkpoint_keeps_tf_semantics(monkeypatch):
    create = incept.nets.create
    narrow = {"width": 0.05, "min_depth": 8}  # how helper fixtures were narrowed
    monkeypatch.setattr(incept.nets, "create", lambda name, **kw: create(name, **{**narrow, **kw}))
    predictor = load_predictor(SLIM_V2, device="cpu")
    assert predictor.model.config["semantics"] == "tf"
    assert len(predictor.class_names) == 11  # the fixture's head, background row included
    reference = create("inception_v3", num_classes=11, weights=SLIM_V2, **narrow).eval()
    x = torch.rand(1, 3, 75, 75) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(predictor.model(x), reference(x), atol=1e-6, rtol=0)
