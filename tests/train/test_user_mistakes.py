"""Issue 16, item 6: the user mistakes that ended in a traceback (or did nothing, or trained
to nonsense) each end in one line on stderr, naming the value and what it must be, and a
non-zero exit; the command writes nothing."""

from __future__ import annotations

import math

import pytest

from incept.cli import main
from incept.cli.train import MAX_REPLICAS
from incept.train.recipe import RANGES, RECIPES_DIR, Bounds, value_problem
from tests.train.conftest import train_in_process
from tests.user_errors import one_error_line, unwritable_folder


@pytest.fixture(scope="module")
def trained(image_folder, tmp_path_factory, tiny_flags):
    """A train dir whose checkpoint is at step 4."""
    train_dir = tmp_path_factory.mktemp("trained")
    return train_in_process(
        image_folder, train_dir, tiny_flags, "--max-steps", "4", "--save-every", "4"
    )


def _train(image_folder, train_dir, tiny_flags, *flags):
    return ["train", "--data", image_folder, "--train-dir", train_dir, *tiny_flags, *flags]


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--learning-rate", "-1"], "--learning-rate: must be above 0, got -1.0"),
        (["--learning-rate", "nan"], "--learning-rate: must be above 0, got nan"),
        (["--save-every", "0"], "--save-every: must be at least 1, got 0"),
        (["--batch-size", "1"], "--batch-size: must be at least 2 (batch norm needs two"),
        (["--image-size", "74"], "--image-size: must be in [75, 13377], got 74"),
        (["--eval-every", "-1"], "--eval-every: must be at least 0 (0: off), got -1"),
        (["--epochs", "nan"], "--epochs: must be at least 0"),
        (["--epochs", "inf"], "--epochs: must be at least 0"),
        (["--max-steps", "-5"], "--max-steps: must be at least 0"),
        (["--dropout", "1"], "--dropout: must be in [0, 1), got 1.0"),
        (["--min-crop-area", "0"], "--min-crop-area: must be in [0.01, 1.0] (a fraction of the"),
        (["--min-crop-area", "1.5"], "--min-crop-area: must be in [0.01, 1.0]"),
        (["--workers", "-1"], "--workers: must be in [0, 1024], got -1"),
        (["--width", "0"], "--width: must be in (0, 16], got 0.0"),
        (["--seed", "-1"], "--seed: must be in [0, 9223372036854775807], got -1"),
        (["--log-every", "0"], "--log-every: must be at least 1, got 0"),
        (["--batch-size", "eight"], "--batch-size: invalid int value: 'eight'"),
        (["--nproc-per-node", "0"], f"--nproc-per-node: must be in 1..{MAX_REPLICAS}, got 0"),
        # A count that would start thousands of processes (the fuzzer's 10^20 took 23 GB before
        # the bound) is refused before torchrun starts.
        (["--nproc-per-node", "99999999999999999999"], f"must be in 1..{MAX_REPLICAS}, got 9999"),
    ],
)
def test_train_flags_out_of_range(flags, words, image_folder, tmp_path, tiny_flags, capsys):
    train_dir = tmp_path / "run"
    line = one_error_line(capsys, _train(image_folder, train_dir, tiny_flags, *flags))
    assert line.startswith("incept train: error: argument ") and words in line
    assert not train_dir.exists()


def test_train_dir_that_is_a_file_or_under_one(image_folder, tmp_path, tiny_flags, capsys):
    file = tmp_path / "notes.txt"
    file.write_text("mine\n")
    line = one_error_line(capsys, _train(image_folder, file, tiny_flags, "--max-steps", "1"))
    assert f"--train-dir: {file} is a file, not a folder" in line
    under = file / "run" / "deeper"
    line = one_error_line(capsys, _train(image_folder, under, tiny_flags, "--max-steps", "1"))
    assert f"--train-dir: {file} is a file: {under} cannot be made under it" in line
    assert file.read_text() == "mine\n"


def test_train_dir_in_an_unwritable_place(image_folder, tmp_path, tiny_flags, capsys):
    where = unwritable_folder(tmp_path) / "run"
    line = one_error_line(capsys, _train(image_folder, where, tiny_flags, "--max-steps", "1"))
    assert f"--train-dir: cannot write in {where.parent}" in line


@pytest.mark.parametrize(
    "line, words",
    [
        ("learning_rate = -0.1", "learning_rate must be above 0, got -0.1"),
        ("label_smoothing = 1.5", "label_smoothing must be in [0, 1), got 1.5"),
        ("save_every = 0", "save_every must be at least 1, got 0"),
        ("weight_decay = -1.0", "weight_decay must be at least 0, got -1.0"),
        ("eval_every = -1", "eval_every must be at least 0 (0: off), got -1"),
        ("epochs = nan", "epochs must be at least 0 (0: the length is max_steps), got nan"),
        ("epochs = inf", "epochs must be at least 0 (0: the length is max_steps), got inf"),
        ("epochs = -2.0", "epochs must be at least 0 (0: the length is max_steps), got -2.0"),
        ("ema_decay = 1.0", "ema_decay must be in [0, 1) (0: off), got 1.0"),
    ],
)
def test_recipe_files_out_of_range(line, words, image_folder, tmp_path, capsys):
    key = line.split()[0]
    text = (RECIPES_DIR / "small_data_cpu.toml").read_text().splitlines()
    text = [line if row.split("=")[0].strip() == key else row for row in text]
    recipe = tmp_path / "mine.toml"
    recipe.write_text("\n".join(text) + "\n")
    argv = ["train", "--data", image_folder, "--train-dir", tmp_path / "run", "--recipe", recipe]
    assert one_error_line(capsys, argv) == f"incept train: error: {recipe}: {words}"
    assert not (tmp_path / "run").exists()


def test_every_numeric_recipe_key_has_a_range():
    from dataclasses import fields

    from incept.train.recipe import Recipe

    numeric = {f.name for f in fields(Recipe) if f.type.split(" |")[0] in ("int", "float")}
    assert numeric == set(RANGES)


@pytest.mark.parametrize("key", sorted(RANGES))
def test_each_range_refuses_its_edges_and_non_finite_values(key):
    bounds: Bounds = RANGES[key]
    outside = [math.nan, math.inf, -math.inf]
    if bounds.low is not None:
        outside.append(bounds.low if bounds.low_open else bounds.low - 1)
    if bounds.high is not None:
        outside.append(bounds.high if bounds.high_open else bounds.high + 1)
    for value in outside:
        assert value_problem(key, value).startswith("must be "), (key, value)
    inside = bounds.low if not bounds.low_open else bounds.low + 1e-9
    assert value_problem(key, inside) is None


def test_max_steps_below_the_checkpoint_says_where_it_is(trained, image_folder, tiny_flags, capsys):
    argv = _train(image_folder, trained, tiny_flags, "--max-steps", "2")
    line = one_error_line(capsys, argv)
    assert line == (
        f"incept train: error: {trained}/checkpoints/step-00000004 is at step 4, past this "
        "run's length of 2 steps: nothing would run; give --max-steps above 4 to go on, or a "
        "new --train-dir"
    )


def test_eval_image_size_below_the_smallest(trained, image_folder, capsys):
    argv = ["eval", "--data", image_folder, "--checkpoint", trained, "--image-size", "10"]
    line = one_error_line(capsys, argv)
    assert "--image-size: must be in [75, 13377], got 10" in line


def test_export_out_a_folder_or_an_unwritable_place(trained, tmp_path, capsys):
    argv = ["export", "--checkpoint", trained, "--out"]
    line = one_error_line(capsys, [*argv, tmp_path])
    assert f"--out: {tmp_path} is a folder: name the .onnx file" in line
    locked = unwritable_folder(tmp_path)
    line = one_error_line(capsys, [*argv, locked / "model.onnx"])
    assert f"--out: cannot write in {locked}" in line
    line = one_error_line(capsys, [*argv, tmp_path / "missing" / "model.onnx"])
    assert f"--out: no folder {tmp_path / 'missing'} to write into" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["read-only"]


def test_summary_diagram_to_an_unwritable_place(tmp_path, capsys):
    locked = unwritable_folder(tmp_path)
    argv = ["summary", "--width", "0.1", "--diagram", locked / "net.svg"]
    assert f"--diagram: cannot write in {locked}" in one_error_line(capsys, argv)
    argv = ["summary", "--width", "0.1", "--diagram", tmp_path]
    assert f"--diagram: {tmp_path} is a folder" in one_error_line(capsys, argv)


def test_classify_top_k_zero(trained, capsys):
    argv = ["classify", "x.jpg", "--checkpoint", trained, "--top-k", "0"]
    assert "--top-k: must be at least 1, got 0" in one_error_line(capsys, argv)


def test_train_and_eval_refuse_images_over_the_pixel_limit(
    trained, image_folder, tiny_flags, tmp_path, capsys
):
    # The folder's images are 64 x 48 = 3,072 pixels.
    expected = "64x48 pixels exceeds the limit of 3,000 (decompression bomb guard, set by "
    expected += "--max-image-pixels)"
    argv = ["eval", "--data", image_folder, "--checkpoint", trained, "--workers", "0"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([str(word) for word in [*argv, "--max-image-pixels", "3000"]])
    err = capsys.readouterr().err.splitlines()  # the precision line, then the error
    assert stop.value.code == 2 and len(err) == 2 and err[0].startswith("evaluating in")
    assert err[1].startswith("incept eval: error: ") and expected in err[1]
    fresh = tmp_path / "fresh"
    line = one_error_line(
        capsys, _train(image_folder, fresh, tiny_flags, "--max-image-pixels", "3000")
    )
    assert line.startswith("incept train: error: ") and expected in line
    # A limit that lets them through trains, and a resumed run may change it.
    train_in_process(
        image_folder, fresh, tiny_flags, "--max-steps", "2", "--max-image-pixels", "3072"
    )
    train_in_process(image_folder, fresh, tiny_flags, "--max-steps", "3")
