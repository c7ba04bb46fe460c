"""Class weights in the loss: the recipe key `class_weights` (`--class-weights`).

- "" (the default, and every shipped recipe's): no weights.
- "balanced": weight_c = n_total / (num_classes * n_c) from the training split's count of
  each class (scikit-learn's and Keras' "balanced"): a class's images together weigh as much
  as any other class's, and over the training set the weights average 1, so the loss keeps
  its scale.
- a path: a UTF-8 file of one weight a line (blank lines ignored), in class order (the order
  of labels.txt, the label order every command prints); non-negative, not all zero.

Each image's loss (label smoothing included, on the main and the aux head) is multiplied by
its class's weight and the batch takes the mean over images. That is Keras' convention, not
PyTorch's weighted mean (which divides by the batch's sum of weights): a mean over images adds
up exactly across micro-batches (gradient accumulation) and replicas, so the loss of a global
batch does not depend on how it is split.
"""

from __future__ import annotations

import math

from incept.data.sources import read_text_lines
from incept.errors import UserError

BALANCED = "balanced"


def class_weights(setting: str, counts: list[int], class_names: list[str]) -> list[float] | None:
    """The weight of each class that `setting` (the recipe's class_weights) asks for, or None
    when it is off. `counts`: training images per class, in class order."""
    if not setting:
        return None
    if setting == BALANCED:
        return balanced_weights(counts, class_names)
    return read_weights_file(setting, class_names)


def balanced_weights(counts: list[int], class_names: list[str]) -> list[float]:
    empty = [name for name, count in zip(class_names, counts) if count == 0]
    if empty:
        raise UserError(
            f"class {empty[0]!r} has no training images ({len(empty)} such class(es)): "
            "--class-weights balanced needs every class in the training split; give a "
            "weights file instead"
        )
    total = sum(counts)
    return [total / (len(counts) * count) for count in counts]


def read_weights_file(path: str, class_names: list[str]) -> list[float]:
    lines = read_text_lines(path, "class weights file")
    if len(lines) != len(class_names):
        raise UserError(
            f"class weights file {path} has {len(lines)} weight(s), the data has "
            f"{len(class_names)} classes: give one weight a line, in class order "
            f"({', '.join(class_names[:3])}{', ...' if len(class_names) > 3 else ''})"
        )
    weights = []
    for number, text in enumerate(lines, start=1):
        try:
            weight = float(text)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight < 0:
            raise UserError(
                f"class weights file {path}, weight {number} ({class_names[number - 1]}): "
                f"{text!r} is not a weight; give a number >= 0"
            )
        weights.append(weight)
    if not any(weights):
        raise UserError(f"class weights file {path}: every weight is 0; give one above 0")
    return weights
