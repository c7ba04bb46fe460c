"""`class_weights`: the weighted loss against a hand-written cross entropy, the balanced
weights of a folder's counts, and the one-line errors of a bad weights file."""

from __future__ import annotations

import math

import pytest
import torch

from incept.errors import UserError
from incept.train.class_weights import balanced_weights, class_weights
from incept.train.loop import compute_loss, open_data
from incept.train.recipe import load_recipe
from incept.weights.checkpoint import read_checkpoint
from tests.train.conftest import make_image_folder, train_in_process
from tests.user_errors import one_error_line


def smoothed_cross_entropy(logits: list[float], label: int, smoothing: float) -> float:
    """One image's cross entropy against the smoothed target, written out."""
    log_norm = math.log(sum(math.exp(v) for v in logits))
    log_p = [v - log_norm for v in logits]
    classes = len(logits)
    target = [smoothing / classes + (1 - smoothing) * (c == label) for c in range(classes)]
    return -sum(t * lp for t, lp in zip(target, log_p))


def test_each_images_loss_counts_its_classs_weight_on_both_heads():
    recipe = load_recipe("small_data_cpu")  # label smoothing 0.1, aux weight 0.4
    logits = [[2.0, -1.0, 0.5], [0.1, 0.2, 0.3], [-2.0, 1.0, 3.0], [1.0, 1.0, -1.0]]
    aux = [[0.5, 0.0, -0.5], [1.0, 2.0, 0.0], [0.0, 0.0, 1.0], [3.0, -1.0, 0.0]]
    labels = [0, 2, 2, 1]
    weights = [3.5, 0.25, 1.0]
    loss, _ = compute_loss(
        (torch.tensor(logits), torch.tensor(aux)),
        torch.tensor(labels),
        recipe,
        torch.tensor(weights),
    )

    def head(values):
        each = [
            weights[y] * smoothed_cross_entropy(v, y, recipe.label_smoothing)
            for v, y in zip(values, labels)
        ]
        return sum(each) / len(each)  # a mean over images, not over the weights

    assert loss.item() == pytest.approx(head(logits) + recipe.aux_weight * head(aux), rel=1e-6)
    unweighted, _ = compute_loss(torch.tensor(logits), torch.tensor(labels), recipe)
    ones, _ = compute_loss(torch.tensor(logits), torch.tensor(labels), recipe, torch.ones(3))
    assert unweighted.item() == pytest.approx(ones.item(), rel=1e-6)


def test_balanced_weights_of_an_imbalanced_folder(tmp_path):
    folder = make_image_folder(tmp_path / "images", per_class=(3, 7, 14))
    data = open_data(str(folder))
    assert data.class_counts == [2, 6, 13]  # one of each class held out
    # n / (classes x n_c): 21 / 6, 21 / 18, 21 / 39
    assert class_weights("balanced", data.class_counts, data.class_names) == pytest.approx(
        [3.5, 7 / 6, 7 / 13]
    )
    assert class_weights("", data.class_counts, data.class_names) is None
    with pytest.raises(UserError, match="class 'b' has no training images"):
        balanced_weights([4, 0, 2], ["a", "b", "c"])


@pytest.mark.parametrize(
    "text, words",
    [
        ("1\n2\n", "has 2 weight(s), the data has 3 classes: give one weight a line"),
        ("1\nheavy\n2\n", "weight 2 (class_1): 'heavy' is not a weight; give a number >= 0"),
        ("1\n-0.5\n2\n", "weight 2 (class_1): '-0.5' is not a weight"),
        ("1\nnan\n2\n", "weight 2 (class_1): 'nan' is not a weight"),
        ("0\n0\n0\n", "every weight is 0; give one above 0"),
    ],
)
def test_a_bad_weights_file_is_one_line(text, words, image_folder, tmp_path, tiny_flags, capsys):
    path = tmp_path / "weights.txt"
    path.write_text(text)
    argv = ["train", "--data", image_folder, "--train-dir", tmp_path / "run", *tiny_flags]
    line = one_error_line(capsys, [*argv, "--class-weights", path])
    assert line.startswith(f"incept train: error: class weights file {path}")
    assert words in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_weights_file_weighs_the_run_and_a_missing_one_is_one_line(
    image_folder, tmp_path, tiny_flags, capsys
):
    weights = tmp_path / "weights.txt"
    weights.write_text("1\n\n2.5\n0\n")  # blank lines are not weights
    train_in_process(
        image_folder,
        tmp_path / "run",
        tiny_flags,
        "--max-steps",
        "1",
        "--class-weights",
        str(weights),
    )
    assert read_checkpoint(tmp_path / "run").state["class_weights"] == [1.0, 2.5, 0.0]
    argv = ["train", "--data", image_folder, "--train-dir", tmp_path / "other", *tiny_flags]
    line = one_error_line(capsys, [*argv, "--class-weights", tmp_path / "none.txt"])
    assert line.startswith(f"incept train: error: cannot read class weights file {tmp_path}")
