"""Shipped recipes: they load, every value carries a comment, and flags override them; a
recipe that leaves the image size out trains at the model's registered size."""

from __future__ import annotations

import re

import pytest

from incept.errors import UserError
from incept.nets import registry
from incept.train.recipe import (
    RECIPES_DIR,
    load_recipe,
    recipe_from_dict,
    recipe_names,
    tomllib,
)
from incept.weights.checkpoint import read_checkpoint

ASSIGNMENT = re.compile(r"^\s*(\w+)\s*=")
COMMENTED_ASSIGNMENT = re.compile(r"^\s*(\w+)\s*=\s*(\"[^\"]*\"|[^#\s]+)\s+#\s*\S")


def test_the_named_recipes_ship():
    assert {
        "inception_v3_2016",
        "inception_v3_paper",
        "flowers_finetune",
        "flowers_finetune_slim_heads",
        "flowers_finetune_slim_all",
        "small_data_cpu",
        "inception_v1_slim",
        "inception_v2_slim",
    } <= set(recipe_names())


@pytest.mark.parametrize("name", recipe_names())
def test_every_value_is_commented_with_its_source(name):
    path = RECIPES_DIR / f"{name}.toml"
    text = path.read_text()
    keys = []
    for line in text.splitlines():
        if ASSIGNMENT.match(line):
            match = COMMENTED_ASSIGNMENT.match(line)
            assert match, f"{path.name}: value without a comment: {line!r}"
            keys.append(match.group(1))
    assert sorted(keys) == sorted(tomllib.loads(text))  # no value hides on another line
    load_recipe(name)


def test_the_original_recipe_has_the_original_figures():
    recipe = load_recipe("inception_v3_2016")
    assert (recipe.batch_size, recipe.learning_rate) == (32, 0.1)
    assert (recipe.rmsprop_decay, recipe.momentum, recipe.epsilon) == (0.9, 0.9, 1.0)
    assert (recipe.lr_decay_factor, recipe.lr_decay_epochs, recipe.lr_staircase) == (0.16, 30, True)
    assert (recipe.ema_decay, recipe.bn_decay, recipe.weight_decay) == (0.9999, 0.9997, 4e-5)
    assert (recipe.label_smoothing, recipe.aux_weight, recipe.dropout) == (0.1, 0.4, 0.2)
    paper = load_recipe("inception_v3_paper")
    assert (paper.learning_rate, paper.lr_decay_factor, paper.lr_decay_epochs) == (0.045, 0.94, 2)
    assert paper.clip_grad_norm == 2.0
    flowers = load_recipe("flowers_finetune")
    assert (flowers.learning_rate, flowers.batch_size, flowers.max_steps) == (0.001, 32, 2000)


def test_a_recipe_file_of_ones_own(tmp_path):
    text = (
        (RECIPES_DIR / "small_data_cpu.toml")
        .read_text()
        .replace("max_steps = 0    ", "max_steps = 7    ")
    )
    path = tmp_path / "mine.toml"
    path.write_text(text)
    assert load_recipe(str(path)).max_steps == 7
    with pytest.raises(UserError, match="no recipe"):
        load_recipe("no_such_recipe")


def test_flags_override_and_length_flags_replace_each_other():
    recipe = load_recipe("small_data_cpu")
    by_epochs = recipe.with_overrides(epochs=2.5, learning_rate=None)
    assert (by_epochs.epochs, by_epochs.max_steps, by_epochs.learning_rate) == (2.5, 0, 0.002)
    by_steps = by_epochs.with_overrides(max_steps=40)
    assert (by_steps.epochs, by_steps.max_steps) == (0.0, 40)
    assert recipe.with_overrides(learning_rate=1).learning_rate == 1.0


def test_mistakes_name_the_key():
    values = tomllib.loads((RECIPES_DIR / "inception_v3_2016.toml").read_text())
    with pytest.raises(UserError, match="missing key.*weight_decay"):
        recipe_from_dict({k: v for k, v in values.items() if k != "weight_decay"})
    with pytest.raises(UserError, match="unknown key.*learning_rat\\b"):
        recipe_from_dict({**values, "learning_rat": 0.1})
    with pytest.raises(UserError, match="batch_size must be a int"):
        recipe_from_dict({**values, "batch_size": "32"})
    with pytest.raises(UserError, match="adam_beta1, adam_beta2"):
        recipe_from_dict({**values, "optimizer": "adamw"})
    with pytest.raises(UserError, match="optimizer must be one of"):
        recipe_from_dict({**values, "optimizer": "lamb"})
    with pytest.raises(UserError, match="dropout"):
        recipe_from_dict({**values, "dropout": 1.5})


@pytest.mark.parametrize("model", ["inception_v1", "inception_v2"])
def test_slims_recipes_for_v1_and_v2(model):
    recipe = load_recipe(f"{model}_slim")
    assert (recipe.model, recipe.image_size, recipe.input_size) == (model, 224, 224)
    assert registry.entry(model).image_size == 224
    assert not recipe.aux_logits and recipe.dropout == 0.2 and recipe.bn_decay == 0.9997
    # train_image_classifier.py's defaults
    assert (recipe.optimizer, recipe.learning_rate, recipe.batch_size) == ("rmsprop", 0.01, 32)
    assert (recipe.rmsprop_decay, recipe.momentum, recipe.epsilon) == (0.9, 0.9, 1.0)
    assert (recipe.lr_decay_factor, recipe.lr_decay_epochs, recipe.lr_staircase) == (0.94, 2, True)
    assert (recipe.label_smoothing, recipe.ema_decay, recipe.weight_decay) == (0.0, 0.0, 4e-5)


def test_without_an_image_size_the_model_decides():
    values = tomllib.loads((RECIPES_DIR / "small_data_cpu.toml").read_text())
    del values["image_size"]
    recipe = recipe_from_dict(values)
    assert recipe.image_size is None and "image_size" not in recipe.to_dict()
    assert recipe.input_size == registry.entry(recipe.model).image_size == 299
    assert recipe.with_overrides(model="inception_v2").input_size == 224
    assert recipe.with_overrides(model="inception_v2", image_size=160).input_size == 160
    assert load_recipe("inception_v3_2016").with_overrides(model="inception_v1").input_size == 299
    with pytest.raises(UserError, match=r"image_size must be in \[75, 13377\], got 0"):
        recipe_from_dict({**values, "image_size": 0})


def test_a_tiny_run_of_the_v2_recipe_trains_at_224(image_folder, tmp_path, incept_cli):
    train_dir = tmp_path / "run"
    done = incept_cli(
        "train", "--data", str(image_folder), "--train-dir", str(train_dir),
        "--recipe", "inception_v2_slim", "--width", "0.1", "--batch-size", "8",
        "--max-steps", "2", "--workers", "0", "--precision", "fp32",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    meta = read_checkpoint(train_dir).meta
    assert (meta["model"], meta["image_size"], meta["recipe_source"]) == (
        "inception_v2",
        224,
        "inception_v2_slim",
    )


def test_a_recipe_of_ones_own_without_a_size_trains_at_the_models(
    image_folder, tmp_path, incept_cli
):
    lines = (RECIPES_DIR / "small_data_cpu.toml").read_text().splitlines()
    lines = [line for line in lines if not line.startswith(("image_size", "aux_logits"))]
    path = tmp_path / "no_size.toml"
    path.write_text("\n".join([*lines, "aux_logits = false  # inception_v1 has no aux head"]))
    done = incept_cli(
        "train", "--data", str(image_folder), "--train-dir", str(tmp_path / "run"),
        "--recipe", str(path), "--model", "inception_v1", "--width", "0.1", "--batch-size", "8",
        "--max-steps", "1", "--workers", "0", "--precision", "fp32",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    meta = read_checkpoint(tmp_path / "run").meta
    assert (meta["model"], meta["image_size"]) == ("inception_v1", 224)
    assert "image_size" not in meta["recipe"]  # the recipe left it to the model
    # Resuming with the size spelt out is the same run; another size is a conflict.
    again = [
        "train", "--data", str(image_folder), "--train-dir", str(tmp_path / "run"),
        "--recipe", str(path), "--model", "inception_v1", "--width", "0.1", "--batch-size", "8",
        "--max-steps", "2", "--workers", "0", "--precision", "fp32", "--image-size",
    ]  # fmt: skip
    refused = incept_cli(*again, "160")
    assert refused.returncode == 2 and "image_size 224 (checkpoint) vs 160" in refused.stderr
    resumed = incept_cli(*again, "224")
    assert resumed.returncode == 0, resumed.stderr
    assert read_checkpoint(tmp_path / "run").meta["step"] == 2


def test_a_v3_recipe_trains_a_model_without_an_aux_head(image_folder, tmp_path, incept_cli):
    """The recipe's aux_logits is left out, with a line saying so; asked for by flag it is an
    error naming the model."""
    common = [
        "train", "--data", str(image_folder), "--recipe", "small_data_cpu", "--model",
        "inception_v1", "--width", "0.1", "--image-size", "75", "--batch-size", "8",
        "--max-steps", "1", "--workers", "0", "--precision", "fp32",
    ]  # fmt: skip
    assert load_recipe("small_data_cpu").aux_logits
    done = incept_cli(*common, "--train-dir", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    assert "inception_v1 has no aux head: the recipe's aux_logits is left out" in (
        done.stdout + done.stderr
    )
    assert read_checkpoint(tmp_path / "run").meta["recipe"]["aux_logits"] is False
    refused = incept_cli(*common, "--train-dir", str(tmp_path / "other"), "--aux-logits")
    assert refused.returncode != 0 and "inception_v1 has no aux head" in refused.stderr
    assert "Traceback" not in refused.stderr
