"""Which recipe a run follows: the one named, one chosen for the data, or its checkpoint's.

With `--recipe NAME` the run follows that recipe. Without it, incept picks a shipped recipe
from what it can see, and names it and the reason in the run's first line:

- `--init-from` given: `finetune`, the original's flowers logic (every layer restored but the
  classifier heads, which are re-initialised for the new classes; a learning rate a hundred
  times below the from-scratch one). When the source is a train dir of ours, the network keys
  (model, width, min_depth, image size) are the source's, so its weights fit.
- ImageNet-scale data (100,000 training images or more): `inception_v3_2016`, exact to the
  original.
- Anything smaller from scratch: `small_data_cpu` on a CPU, `small_data_gpu` on an
  accelerator: settled batch-norm statistics, AdamW, a cosine schedule, validation while
  training. The original's recipe on a few thousand images evaluates at chance for thousands
  of steps (its moving averages lag), which is what a new user saw before this rule existed.

Flags override single keys of whichever recipe is followed. A train dir that holds a
checkpoint resumes with the checkpoint's recipe: only RESUMABLE_KEYS may change, and any other
key given on the command line must agree with it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from incept.errors import UserError
from incept.train.recipe import Recipe, load_recipe, recipe_from_dict

log = logging.getLogger(__name__)

# Keys a resumed run may change: they decide how long and how loudly it runs, not what it
# computes (skip_corrupt, max_image_pixels: a run stopped by a damaged or oversized record
# goes on past it). Any other key given on the command line must agree with the checkpoint.
RESUMABLE_KEYS = {
    "max_steps",
    "epochs",
    "workers",
    "save_every",
    "keep_checkpoints",
    "eval_every",
    "log_every",
    "summary_every",
    "compile",
    "precision",
    "skip_corrupt",
    "max_image_pixels",
}

# From this many training images on, the data is ImageNet-like and the original's recipe is
# the right default (ImageNet has 1.28 M; the next-largest common sets have 50-100 K).
IMAGENET_SCALE = 100_000
# The keys of a network: a fine-tuning run from a train dir of ours takes them from it.
NETWORK_KEYS = ("model", "width", "min_depth", "image_size")


@dataclass(frozen=True)
class Settled:
    recipe: Recipe
    source: str  # the recipe's name or file, recorded in the checkpoints
    checkpoint: Path | None  # the checkpoint a resumed run starts from (None: a fresh run)
    line: str  # what the run says first about its recipe


def choose_recipe(train_examples: int, init_from: str, accelerator: bool) -> tuple[str, str]:
    """The shipped recipe a run without --recipe follows, and why (one clause)."""
    if init_from:
        return "finetune", "--init-from given: fine-tuning"
    if train_examples >= IMAGENET_SCALE:
        return "inception_v3_2016", f"{train_examples} training images: ImageNet scale"
    where = "an accelerator" if accelerator else "a CPU"
    name = "small_data_gpu" if accelerator else "small_data_cpu"
    return name, f"{train_examples} training images from scratch on {where}"


def settle_recipe(
    train_dir: Path,
    recipe_name: str | None,
    overrides: dict,
    *,
    class_names: list[str],
    train_examples: int,
    accelerator: bool,
    aux_flag: bool | None = None,
) -> Settled:
    """The recipe of this run: named or chosen, with the flags' keys, or the checkpoint's.

    overrides: recipe keys given on the command line (None: not given). aux_flag: the value of
    --aux-logits/--no-aux-logits when given.
    """
    from incept.weights.checkpoint import latest_checkpoint, read_meta

    given = {key for key, value in overrides.items() if value is not None}
    if recipe_name:
        source, why = recipe_name, ""
        named = load_recipe(recipe_name)
        given |= set(named.to_dict())  # a recipe named again on resume must agree
    else:
        init_from = overrides.get("init_from") or ""
        source, why = choose_recipe(train_examples, init_from, accelerator)
        named = load_recipe(source)
        if init_from:
            named = named.with_overrides(**_network_of(init_from, given))
    command = named.with_overrides(**overrides)
    command, given = _without_a_missing_aux_head(command, given, aux_flag)

    checkpoint = latest_checkpoint(train_dir)
    if checkpoint is None:
        chosen = f"(no --recipe: {why}; --recipe NAME chooses another)" if why else "(--recipe)"
        return Settled(command, source, None, f"recipe: {source} {chosen}")

    meta = read_meta(checkpoint)
    stored = recipe_from_dict(meta["recipe"], source=str(checkpoint / "meta.json"))
    stored_values, command_values = _effective(stored), _effective(command)
    conflicts = [
        f"{key} {stored_values.get(key)!r} (checkpoint) vs {command_values.get(key)!r}"
        for key in sorted(given - RESUMABLE_KEYS)
        if stored_values.get(key) != command_values.get(key)
    ]
    if meta["class_names"] != class_names:
        conflicts.append(
            f"classes {len(meta['class_names'])} (checkpoint) vs {len(class_names)} (--data)"
        )
    if conflicts:
        raise UserError(
            f"{train_dir} holds a checkpoint (step {meta['step']}) made with other settings: "
            f"{'; '.join(conflicts)}. Drop those flags to resume, or use a new --train-dir"
        )
    kept = {key: command_values.get(key) for key in given & RESUMABLE_KEYS}
    resumed = stored.with_overrides(**kept)
    recorded = meta.get("recipe_source") or "the checkpoint's"
    return Settled(resumed, recorded, checkpoint, f"recipe: {recorded} (the checkpoint's)")


def _effective(recipe: Recipe) -> dict:
    """The recipe's values as a run uses them: a size left to the model is the model's."""
    return {**recipe.to_dict(), "image_size": recipe.input_size}


def _network_of(init_from: str, given: set[str]) -> dict:
    """The network keys of a train dir or checkpoint of ours (other sources: none), except
    those the command line gives."""
    from incept.weights.checkpoint import is_checkpoint_source, read_meta

    if not is_checkpoint_source(init_from):
        return {}
    meta = read_meta(init_from)
    kwargs = meta.get("model_kwargs", {})
    network = {
        "model": meta.get("model"),
        "width": kwargs.get("width"),
        "min_depth": kwargs.get("min_depth"),
        "image_size": meta.get("image_size"),
    }
    return {key: value for key, value in network.items() if key not in given}


def _without_a_missing_aux_head(recipe: Recipe, given: set[str], flag: bool | None):
    """A recipe written for a model with an aux head (all of v3's), used for one without: its
    aux_logits is left out, with a line saying so. Asked for by --aux-logits, it stays, and
    the model refuses it."""
    from incept.nets.registry import entry

    if not recipe.aux_logits or flag is not None or entry(recipe.model).has_aux:
        return recipe, given
    log.info("%s has no aux head: the recipe's aux_logits is left out", recipe.model)
    return recipe.with_overrides(aux_logits=False), given - {"aux_logits"}
