"""The recipe a run follows with no --recipe (chosen for the data, named in the first line), a
fine-tuning run's network taken from its source, resume with the checkpoint's own batch size,
and the rising-loss warning."""

from __future__ import annotations

import pytest

from incept.cli import main
from incept.train.loop import LossWatch
from incept.train.recipe import load_recipe
from incept.train.settle import IMAGENET_SCALE, choose_recipe
from incept.weights.checkpoint import read_checkpoint

TINY = ["--width", "0.1", "--image-size", "75", "--batch-size", "8", "--workers", "0",
        "--precision", "fp32", "--log-every", "1"]  # fmt: skip


def test_the_choice_follows_what_the_run_can_see():
    assert choose_recipe(3000, "", accelerator=False)[0] == "small_data_cpu"
    assert choose_recipe(3000, "", accelerator=True)[0] == "small_data_gpu"
    assert choose_recipe(IMAGENET_SCALE, "", accelerator=True)[0] == "inception_v3_2016"
    assert choose_recipe(IMAGENET_SCALE - 1, "", accelerator=False)[0] == "small_data_cpu"
    assert choose_recipe(500, "runs/a", accelerator=False)[0] == "finetune"
    name, why = choose_recipe(1234, "", accelerator=False)
    assert "1234 training images" in why and "CPU" in why
    # Every choice is a shipped recipe; the original's stays the original's.
    for name in ("small_data_cpu", "small_data_gpu", "inception_v3_2016", "finetune"):
        load_recipe(name)
    original = load_recipe("inception_v3_2016")
    assert (original.learning_rate, original.bn_decay, original.batch_size) == (0.1, 0.9997, 32)
    finetune, scratch = load_recipe("finetune"), original
    assert finetune.learning_rate == scratch.learning_rate / 100  # the flowers logic


def run_train(capsys, *args) -> list[str]:
    with pytest.raises(SystemExit) as finished:
        main(["train", *args])
    out = capsys.readouterr()
    assert finished.value.code == 0, out.err
    return out.out.splitlines()


def test_no_recipe_names_the_chosen_one_first_and_fine_tuning_takes_the_source_network(
    image_folder, tmp_path, capsys
):
    scratch = tmp_path / "scratch"
    lines = run_train(
        capsys, "--data", str(image_folder), "--train-dir", str(scratch), *TINY, "--max-steps", "2"
    )
    assert lines[0] == (
        "recipe: small_data_cpu (no --recipe: 33 training images from scratch on a CPU; "
        "--recipe NAME chooses another)"
    )
    meta = read_checkpoint(scratch).meta
    assert meta["recipe_source"] == "small_data_cpu"
    assert meta["recipe"]["learning_rate"] == load_recipe("small_data_cpu").learning_rate

    tuned = tmp_path / "tuned"
    lines = run_train(
        capsys, "--data", str(image_folder), "--train-dir", str(tuned), "--init-from",
        str(scratch), "--workers", "0", "--precision", "fp32", "--batch-size", "8",
        "--max-steps", "2",
    )  # fmt: skip
    assert lines[0].startswith("recipe: finetune (no --recipe: --init-from given: fine-tuning;")
    meta = read_checkpoint(tuned).meta
    assert meta["recipe_source"] == "finetune"
    # The source's network, not the recipe's full-width 299 px one, so its weights fit.
    assert meta["model_kwargs"]["width"] == 0.1 and meta["image_size"] == 75
    assert meta["recipe"]["learning_rate"] == 0.001 and meta["recipe"]["optimizer"] == "rmsprop"

    # Resumed without --recipe: the checkpoint's recipe, said so.
    lines = run_train(
        capsys, "--data", str(image_folder), "--train-dir", str(tuned), "--workers", "0",
        "--max-steps", "3",
    )  # fmt: skip
    assert lines[0] == "recipe: finetune (the checkpoint's)"
    assert read_checkpoint(tuned).state["step"] == 3


def test_resume_uses_the_checkpoints_batch_on_data_smaller_than_the_recipes_batch(
    image_folder_factory, tmp_path, capsys
):
    """The tutorial's resume form on small data: the recipe's batch of 32 is more than the 21
    training images, but the run was made with --batch-size 8 and resumes with it."""
    small = image_folder_factory(tmp_path / "small", classes=3, per_class=8)
    args = ["--data", str(small), "--train-dir", str(tmp_path / "run")]
    run_train(capsys, *args, *TINY, "--max-steps", "2")
    run_train(capsys, *args, "--workers", "0", "--max-steps", "4")
    state = read_checkpoint(tmp_path / "run").state
    assert state["step"] == 4 and state["data"]["steps_per_epoch"] == 21 // 8


def test_the_rising_loss_warning_comes_once_and_only_for_a_steady_rise():
    watch = LossWatch()
    noisy_fall = [2.3, 2.1, 2.2, 1.9, 2.0, 1.7, 1.8, 1.6]
    assert [watch.warning(loss, 0.1) for loss in noisy_fall] == [None] * len(noisy_fall)
    rising = [1.7, 2.0, 2.3, 2.9]  # three rises in a row, ending above 1.5 x the lowest (1.6)
    said = [watch.warning(loss, 0.1) for loss in rising]
    assert said[:3] == [None] * 3
    assert said[3].startswith("warning: the training loss rose for 3 log lines in a row")
    assert "lower --learning-rate" in said[3]
    assert [watch.warning(loss, 0.1) for loss in (3.5, 4.0, 5.0)] == [None] * 3  # once

    small_rise = LossWatch()
    assert all(small_rise.warning(loss, 0.1) is None for loss in (1.0, 1.01, 1.02, 1.03, 1.04))
