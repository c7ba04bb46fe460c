"""`incept.nets.loading.load_model`: the one way from a weights source to a model.

The references are the saved models themselves (their logits and tensors); the commands are run
in-process, as a user runs them, with the loader spied on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import incept
from incept.cli import main
from incept.errors import UserError
from incept.nets import loading
from incept.train.transfer import initialise_from
from incept.weights.checkpoint import save_checkpoint

TINY = {"width": 0.1}
IMAGE_SIZE = 75


def tiny_model(num_classes: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = incept.nets.create("inception_v3", num_classes=num_classes, **TINY)
    with torch.no_grad():  # a head far from its initialisation: a fresh one would not match
        model.fc.weight.normal_(0, 1.0)
        model.fc.bias.normal_(0, 1.0)
    return model.eval()


def logits(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    images = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model.eval()(images * 2 - 1)


def save_run(train_dir: Path, model, classes: list[str], ema_state=None) -> Path:
    meta = {
        "model": "inception_v3",
        "model_kwargs": {k: v for k, v in model.config.items() if k != "model"},
        "class_names": classes,
        "image_size": IMAGE_SIZE,
        "recipe": {},
    }
    save_checkpoint(train_dir, 7, model.state_dict(), {}, meta, ema_state=ema_state)
    return train_dir


def three_class_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for c in range(3):
        (root / f"class_{c}").mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"{i}.jpg")
    return root


@pytest.fixture
def narrow_foreign_models(monkeypatch):
    """Foreign weight files carry no width: build our tiny width for them."""
    create = incept.nets.create
    monkeypatch.setattr(incept.nets, "create", lambda name, **kw: create(name, **{**TINY, **kw}))


@pytest.fixture(scope="module")
def ten_class_pth(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    model = tiny_model(10)
    path = tmp_path_factory.mktemp("pth") / "ten.pth"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return save_run(tmp_path_factory.mktemp("run"), tiny_model(3, seed=2), ["a", "b", "c"])


def run_cli(argv, capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_eval_of_a_10_class_pth_on_3_class_data_is_one_error_line(
    ten_class_pth, tmp_path, narrow_foreign_models, capsys
):
    """It used to build a fresh 3-class head and report that random head's accuracy."""
    path, _ = ten_class_pth
    folder = three_class_folder(tmp_path / "three")
    status, out, err = run_cli(
        ["eval", "--data", folder, "--checkpoint", path, "--workers", "0"], capsys
    )
    assert status != 0 and out == ""
    assert "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith(f"incept eval: error: {path} was trained on 10 classes")
    assert "the data has 3" in line and f"--init-from {path}" in line


def test_a_foreign_file_with_its_own_class_count_gives_its_logits(
    ten_class_pth, narrow_foreign_models
):
    path, saved = ten_class_pth
    for num_classes in (10, None):  # the caller's count, or the one read off the classifier
        loaded = loading.load_model(path, num_classes=num_classes)
        assert not loaded.model.training and loaded.model.num_classes == 10
        torch.testing.assert_close(logits(loaded.model), logits(saved), atol=1e-5, rtol=0)
        assert loaded.class_names == [str(i) for i in range(10)]
        assert (loaded.architecture, loaded.kind, loaded.step) == ("inception_v3", "torch", None)
        assert (loaded.ema, loaded.semantics, loaded.image_size) == (False, "torch", 299)
    assert logits(saved).std() > 0.5  # logits that tell the heads apart


def test_our_checkpoint_on_other_classes_and_a_backbone_are_refused(
    run_dir, tmp_path, narrow_foreign_models
):
    with pytest.raises(UserError, match="was trained on 3 classes, the data has 5"):
        loading.load_model(run_dir, num_classes=5)
    backbone = {k: v for k, v in tiny_model(10).state_dict().items() if not k.startswith("fc.")}
    torch.save(backbone, tmp_path / "backbone.pth")
    for num_classes in (None, 10):
        with pytest.raises(UserError, match="holds no classifier") as raised:
            loading.load_model(tmp_path / "backbone.pth", num_classes=num_classes)
        assert "\n" not in str(raised.value)


def test_our_checkpoint_records_everything_and_says_when_weights_are_averages(tmp_path):
    trained = tiny_model(4)
    averaged = {k: v + 1 if v.is_floating_point() else v for k, v in trained.state_dict().items()}
    save_run(tmp_path, trained, list("wxyz"), ema_state=averaged)
    loaded = loading.load_model(tmp_path)
    assert loaded.ema and torch.equal(loaded.model.fc.weight, averaged["fc.weight"])
    assert (loaded.class_names, loaded.image_size, loaded.step) == (list("wxyz"), 75, 7)
    raw = loading.load_model(tmp_path, ema=False)
    assert not raw.ema and torch.equal(raw.model.fc.weight, trained.fc.weight)
    model = incept.nets.load(tmp_path)
    assert (model.class_names, model.image_size, model.step) == (list("wxyz"), 75, 7)


def test_a_training_checkpoint_pth_gives_its_moving_averages(tmp_path, narrow_foreign_models):
    plain, averaged = tiny_model(5, seed=3), tiny_model(5, seed=4)
    torch.save(
        {"state_dict": plain.state_dict(), "state_dict_ema": averaged.state_dict(), "epoch": 3},
        tmp_path / "timm_train.pth",
    )
    loaded = loading.load_model(tmp_path / "timm_train.pth")
    assert loaded.ema and torch.equal(loaded.model.fc.weight, averaged.fc.weight)
    loaded = loading.load_model(tmp_path / "timm_train.pth", ema=False)
    assert not loaded.ema and torch.equal(loaded.model.fc.weight, plain.fc.weight)


def test_only_fine_tuning_starts_fresh_heads(ten_class_pth):
    path, saved = ten_class_pth
    created = incept.nets.create("inception_v3", num_classes=3, weights=path, **TINY)
    initialised = incept.nets.create("inception_v3", num_classes=3, **TINY)
    initialise_from(initialised, str(path), [], print)
    for model in (created, initialised):
        body = model.Mixed_7c.branch1x1.conv.weight
        assert torch.equal(body, saved.Mixed_7c.branch1x1.conv.weight)
        assert model.fc.weight.shape == (3, saved.fc.weight.shape[1])
        assert model.training  # in the mode create() gives
    with pytest.raises(UserError, match="trained on 10 classes, the data has 3"):
        loading.load_model(path, into=incept.nets.create("inception_v3", num_classes=3, **TINY))
    with pytest.raises(ValueError, match="fresh_heads"):
        loading.load_model(path, exclude=["fc"])


@pytest.fixture
def loads(monkeypatch) -> list:
    """The sources `load_model` is asked for, as it is asked (it still loads them)."""
    calls, real = [], loading.load_model

    def spy(source, **options):
        calls.append(str(source))
        return real(source, **options)

    monkeypatch.setattr(loading, "load_model", spy)
    return calls


def test_every_command_and_the_python_api_load_through_load_model(
    run_dir, ten_class_pth, tmp_path, loads, monkeypatch, capsys
):
    image = three_class_folder(tmp_path / "images") / "class_0" / "0.jpg"
    assert run_cli(["classify", image, "--checkpoint", run_dir], capsys)[0] == 0
    assert (
        run_cli(
            ["eval", "--data", tmp_path / "images", "--checkpoint", run_dir, "--workers", "0"],
            capsys,
        )[0]
        == 0
    )
    import incept.export
    import incept.serve

    exported = []

    def export_onnx(predictor, out, **options):
        exported.append(predictor)
        return incept.export.ExportResult(Path(out), IMAGE_SIZE, 0.0, 1.0, 0)

    monkeypatch.setattr(incept.export, "export_onnx", export_onnx)
    run_cli(["export", "--checkpoint", run_dir, "--out", tmp_path / "m.onnx"], capsys)
    served = []
    monkeypatch.setattr(incept.serve, "serve", lambda app, sock, **_: served.append(sock.close()))
    assert run_cli(["serve", "--checkpoint", run_dir, "--port", "0"], capsys)[0] == 0
    assert len(exported) == len(served) == 1
    assert loads == [str(run_dir)] * 4

    path, _ = ten_class_pth
    incept.nets.load(run_dir)
    incept.nets.create("inception_v3", num_classes=10, weights=path, **TINY)
    initialise_from(
        incept.nets.create("inception_v3", num_classes=10, **TINY), str(path), [], print
    )
    assert loads[4:] == [str(run_dir), str(path), str(path)]


def test_no_other_module_turns_weights_into_a_model():
    """The readers' entry points are called from nets/loading.py alone (and defined in
    weights/): a second loading path would be free to disagree with the first again."""
    import re

    source = Path(incept.__file__).parent
    entry_points = re.compile(r"\b(read_source|read_state_dict|load_weights)\(")
    callers = {
        path.relative_to(source).as_posix()
        for path in source.rglob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
        if entry_points.search(line) and not line.lstrip().startswith("def ")
    }
    assert callers == {"nets/loading.py", "weights/sources.py"}
