"""`--accumulate N`, `--class-weights`, `--balanced-sampler` in real runs of the tiny model:
one accumulated step is the large batch's step (batch norm aside), a run killed and resumed
with all three ends bit-identical, and the mistakes' one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

import incept
from incept.errors import UserError
from incept.train.recipe import load_recipe, recipe_from_dict
from incept.weights.checkpoint import read_checkpoint, read_meta
from tests.train.conftest import as_if_killed_after, make_image_folder, train_in_process
from tests.user_errors import one_error_line

# Every conv kernel and the classifiers train; batch norm's parameters do not, so with
# --freeze-bn every batch norm runs in eval mode: a function of each image alone, which is
# what makes the large batch and its micro-batches comparable (in training mode batch norm
# normalises each micro-batch over its own images: the documented exception).
CONVS_AND_HEADS = "*conv.weight,*fc.weight,*fc.bias"


@pytest.fixture(scope="module")
def imbalanced(tmp_path_factory):
    """21 training images, 2, 6 and 13 a class (one of each held out for validation)."""
    return make_image_folder(tmp_path_factory.mktemp("imbalanced"), per_class=(3, 7, 14))


@pytest.fixture(scope="module")
def sgd_recipe(tmp_path_factory):
    """SGD with momentum, whose first update is linear in the gradient (Adam's first step is
    about its sign and would hide a wrong gradient); an L2 term large enough to show if it
    were added once a micro-batch; no moving averages or recomputed statistics."""
    recipe = load_recipe("small_data_cpu").with_overrides(
        optimizer="momentum", momentum=0.9, learning_rate=0.1, weight_decay=0.005, ema_decay=0
    )
    values = {**recipe.to_dict(), "precise_bn": 0}
    path = tmp_path_factory.mktemp("recipe") / "sgd.toml"
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


def one_step(data, train_dir, tiny_flags, recipe, *flags, run=None):
    """The weights after one step and its logged loss; `run` starts the command (default:
    in this process)."""
    args = [
        "--recipe", str(recipe), "--max-steps", "1", "--dropout", "0",
        "--trainable", CONVS_AND_HEADS, "--freeze-bn", "--class-weights", "balanced", *flags,
    ]  # fmt: skip
    if run is None:
        train_in_process(data, train_dir, tiny_flags, *args)
    else:
        done = run("train", "--data", str(data), "--train-dir", str(train_dir), *tiny_flags, *args)
        assert done.returncode == 0, done.stderr[-3000:]
    step = load_file(train_dir / "checkpoints" / "step-00000001" / "model.safetensors")
    loss = json.loads((train_dir / "metrics.jsonl").read_text().splitlines()[0])["loss"]
    return step, loss


class Moves:
    """How far weights lie from a step's: measured over the parameters that step moved,
    relative to how far it moved them from the initial weights (rebuilt from the seed)."""

    def __init__(self, train_dir, step: dict):
        meta = read_meta(train_dir)
        torch.manual_seed(meta["recipe"]["seed"])
        initial = incept.nets.create(meta["model"], **meta["model_kwargs"]).state_dict()
        self.step = step
        self.trained = [name for name in step if not torch.equal(step[name], initial[name])]
        self.moved = self._distance(initial)

    def _distance(self, other: dict) -> torch.Tensor:
        parts = [(self.step[k] - other[k]).double().norm() for k in self.trained]
        return torch.stack(parts).norm()

    def apart(self, other: dict) -> float:
        return (self._distance(other) / self.moved).item()


def test_an_accumulated_step_is_the_step_of_the_large_batch(
    imbalanced, tmp_path, tiny_flags, sgd_recipe
):
    large, large_loss = one_step(imbalanced, tmp_path / "a", tiny_flags, sgd_recipe,
                                 "--batch-size", "16")  # fmt: skip
    summed, summed_loss = one_step(imbalanced, tmp_path / "b", tiny_flags, sgd_recipe,
                                   "--batch-size", "4", "--accumulate", "4")  # fmt: skip
    first, _ = one_step(imbalanced, tmp_path / "c", tiny_flags, sgd_recipe, "--batch-size", "4")

    moves = Moves(tmp_path / "a", large)
    assert any(name.endswith("conv.weight") for name in moves.trained)
    assert all(name.endswith(("conv.weight", "fc.weight", "fc.bias")) for name in moves.trained)
    # Float rounding apart (sums in another order), the same update: measured 6e-7 of the
    # distance moved.
    assert moves.apart(summed) < 1e-4, moves.apart(summed)
    assert summed_loss == pytest.approx(large_loss, rel=1e-5)
    # The check can fail: the first micro-batch's step alone lies 0.84 of it away.
    assert moves.apart(first) > 0.3, moves.apart(first)


ALL_THREE = [
    "--batch-size", "4", "--accumulate", "2", "--class-weights", "balanced",
    "--balanced-sampler", "--max-steps", "4", "--save-every", "3", "--log-every", "2",
]  # fmt: skip


def test_a_run_resumed_mid_epoch_with_all_three_ends_bit_identical(
    imbalanced, tmp_path, tiny_flags
):
    """21 images in steps of 2 x 4: 2 steps an epoch, so the step-3 checkpoint is in the
    middle of the second epoch. Killed right after it (made exact without a kill: the
    uninterrupted run's train dir as it stood then), the same command ends as the whole run."""
    whole = tmp_path / "whole"
    train_in_process(imbalanced, whole, tiny_flags, *ALL_THREE)
    checkpoint = read_checkpoint(whole)
    assert checkpoint.state["data"] == {"epoch": 2, "batch": 0, "steps_per_epoch": 2}
    assert checkpoint.meta["recipe"]["accumulate"] == 2
    # n / (classes x n_c) for the 2, 6 and 13 training images of each class
    assert checkpoint.state["class_weights"] == pytest.approx([21 / 6, 21 / 18, 21 / 39])

    resumed = as_if_killed_after(whole, tmp_path / "resumed", 2, "step-00000004")
    train_in_process(imbalanced, resumed, tiny_flags, *ALL_THREE)
    final = "checkpoints/step-00000004"
    for name in ("model.safetensors", "ema.safetensors"):
        expected, again = load_file(whole / final / name), load_file(resumed / final / name)
        assert all(torch.equal(expected[k], again[k]) for k in expected), name

    def losses(folder):
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [(r["step"], r["loss"]) for r in map(json.loads, lines) if "loss" in r]

    assert losses(resumed) == losses(whole)


def test_accumulate_out_of_range_is_one_line(image_folder, tmp_path, tiny_flags, capsys):
    args = ["train", "--data", image_folder, "--train-dir", tmp_path / "run", *tiny_flags]
    line = one_error_line(capsys, [*args, "--accumulate", "0"])
    assert line.startswith(
        "incept train: error: argument --accumulate: must be at least 1 (batches summed into "
        "one update; 1: off), got 0"
    )
    line = one_error_line(capsys, [*args, "--accumulate", "5"])  # 5 x 8 > 33 images
    assert line == (
        f"incept train: error: {image_folder} has 33 training examples, fewer than one batch "
        "of 8 x --accumulate 5 = 40: lower --batch-size or --accumulate"
    )
    values = load_recipe("small_data_cpu").to_dict()
    with pytest.raises(UserError, match=r"accumulate must be at least 1 .* got 0"):
        recipe_from_dict({**values, "accumulate": 0})


@pytest.mark.slow  # two replicas through torchrun: about half a minute on two cores
def test_two_replicas_accumulating_make_the_step_of_one_process_with_the_whole_batch(
    imbalanced, tmp_path, tiny_flags, sgd_recipe, incept_cli
):
    """2 replicas x 4 images x --accumulate 2 (no_sync on the first micro-batch) against one
    process with batch 16: the same 16 images, the same update up to float rounding."""
    large, large_loss = one_step(imbalanced, tmp_path / "one", tiny_flags, sgd_recipe,
                                 "--batch-size", "16")  # fmt: skip
    two, two_loss = one_step(
        imbalanced, tmp_path / "two", tiny_flags, sgd_recipe, "--batch-size", "8",
        "--accumulate", "2", "--nproc-per-node", "2", run=incept_cli,
    )  # fmt: skip
    moves = Moves(tmp_path / "one", large)
    assert moves.apart(two) < 1e-4, moves.apart(two)
    assert two_loss == pytest.approx(large_loss, rel=1e-5)
