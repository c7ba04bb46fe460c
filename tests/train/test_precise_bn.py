"""After 20 steps of any recipe, evaluation mode computes what training mode computes.

The measure: on training batches, with dropout off, the relative distance between the logits
of evaluation mode (the saved moving statistics) and of training mode (each batch's own). At
this size after 20 steps the network is far from settled, and training mode itself changes by
0.1-1.0 when half of a batch is swapped for other images; the bound of 2 is what precise
batch norm keeps and the moving averages alone broke (9.7 for inception_v1_slim, 35 for
inception_v3_2016 at 75 px: outputs that had nothing to do with training's)."""

from __future__ import annotations

import pytest
import torch

from incept.data import make_loader
from incept.nets.loading import load_model
from incept.train.loop import train
from incept.train.recipe import recipe_names

SIZE, BATCH = 107, 16


def eval_train_gap(train_dir, images) -> float:
    model = load_model(train_dir).model  # what `incept eval` evaluates: the averaged weights
    for module in model.modules():
        if isinstance(getattr(module, "dropout", None), float):
            module.dropout = 0.0
    loader = make_loader(
        images, training=True, batch_size=BATCH, image_size=SIZE, workers=0, seed=5
    )
    gaps = []
    with torch.no_grad():
        for index, (x, _) in enumerate(loader):
            if index == 2:
                break
            model.eval()
            evaluated = model(x)
            model.train()
            trained = model(x)
            trained = trained[0] if isinstance(trained, tuple) else trained  # the aux head's
            gaps.append(((evaluated - trained).norm() / trained.norm()).item())
    return sum(gaps) / len(gaps)


def run(recipe, images, train_dir, **keys) -> float:
    overrides = dict(
        width=0.1, image_size=SIZE, batch_size=BATCH, workers=0, precision="fp32",
        eval_every=0, max_steps=20, save_every=20, compile=False, init_from="",
        summary_every=0, **keys,
    )  # fmt: skip
    train(str(images), train_dir, recipe, overrides)
    return eval_train_gap(train_dir, images)


@pytest.mark.slow
@pytest.mark.parametrize("recipe", recipe_names())
def test_every_recipe_evaluates_as_it_trains_after_20_steps(recipe, image_folder, tmp_path):
    assert run(recipe, image_folder, tmp_path / "run") < 2.0


def test_precise_batch_norm_is_what_keeps_evaluation_close(image_folder, tmp_path):
    with_it = run("inception_v1_slim", image_folder, tmp_path / "on")
    without = run("inception_v1_slim", image_folder, tmp_path / "off", precise_bn=0)
    assert with_it < 2.0 < without
