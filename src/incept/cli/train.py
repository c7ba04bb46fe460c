"""`incept train --data DIR --train-dir DIR [flags]`: parse, then call the loop.

Every flag but --data, --train-dir, --recipe, --nproc-per-node and --max-restarts overrides
one recipe key of the same name; flags left out keep the recipe's value.
"""

from __future__ import annotations

import argparse
import logging
import os

from incept.cli.options import at_least, check_pixel_limit, output_folder, recipe_value
from incept.limits import MAX_PIXELS
from incept.train.recipe import PRECISIONS, load_recipe, recipe_names

# (flag, recipe key, type, help). Every one defaults to None: "not given, the recipe decides".
RECIPE_FLAGS = [
    ("--model", "model", str, "network name (see `incept summary`)"),
    ("--batch-size", "batch_size", int, "global batch, split across replicas"),
    ("--max-steps", "max_steps", int, "number of training steps (replaces --epochs)"),
    ("--epochs", "epochs", float, "passes over the training set (replaces --max-steps)"),
    ("--learning-rate", "learning_rate", float, "initial learning rate"),
    ("--image-size", "image_size", int, "input side in pixels (75 and up)"),
    ("--width", "width", float, "channel multiplier of every conv"),
    ("--min-depth", "min_depth", int, "fewest channels a conv keeps (with --width)"),
    ("--dropout", "dropout", float, "drop probability before the classifier"),
    (
        "--min-crop-area",
        "min_crop_area",
        float,
        "smallest random training crop, as a fraction of the image's area (the original: 0.05)",
    ),
    ("--seed", "seed", int, "seed of weights, data order and distortions"),
    ("--workers", "workers", int, "data loading processes per replica"),
    ("--save-every", "save_every", int, "checkpoint every N steps (and at the end)"),
    ("--keep-checkpoints", "keep_checkpoints", int, "how many checkpoints to keep"),
    ("--eval-every", "eval_every", int, "evaluate on the validation set every N steps (0: off)"),
    ("--log-every", "log_every", int, "a log line every N steps"),
    ("--init-from", "init_from", str, "start from: a train dir/checkpoint or a weights source"),
    ("--exclude", "exclude", str, "GLOB[,GLOB]: parameters --init-from does not restore"),
    ("--trainable", "trainable", str, "GLOB[,GLOB]: only these parameters train"),
    (
        "--accumulate",
        "accumulate",
        int,
        "sum the gradients of N batches into each update: the step of an N times larger "
        "global batch (1: off)",
    ),
    (
        "--class-weights",
        "class_weights",
        str,
        "weigh each image's loss by its class: 'balanced' (from the training counts) or a "
        "file of one weight a line, in class order ('': off)",
    ),
    (
        "--mixup",
        "mixup",
        float,
        "mixup's alpha: Beta(alpha, alpha) draws each batch's share (0: off)",
    ),
    (
        "--cutmix",
        "cutmix",
        float,
        "CutMix's alpha (0: off); with --mixup too, each mixed batch is one",
    ),
    ("--mixup-prob", "mixup_prob", float, "chance that a batch is mixed (mixup or CutMix)"),
    (
        "--mixup-switch-prob",
        "mixup_switch_prob",
        float,
        "with --mixup and --cutmix: chance that a mixed batch is CutMix",
    ),
    (
        "--auto-augment",
        "auto_augment",
        str,
        "per-image augmentation: 'ra' (RandAugment), 'ta_wide' (TrivialAugment Wide), '': off",
    ),
    ("--ra-num-ops", "ra_num_ops", int, "RandAugment: operations per image"),
    ("--ra-magnitude", "ra_magnitude", int, "RandAugment: magnitude, a bin of 0..30"),
    ("--random-erase", "random_erase", float, "chance that an image has a rectangle erased"),
    (
        "--max-image-pixels",
        "max_image_pixels",
        int,
        f"refuse records whose image has more pixels, from its header (default {MAX_PIXELS:,}, "
        "Pillow's own limit, also the most allowed)",
    ),
]
# Replicas one machine may start: each is a process holding a model, so a mistyped count must
# not start thousands of them and exhaust the memory; beyond twice the cores they only share
# the same cores (an accelerator per replica needs far fewer).
MAX_REPLICAS = max(8, 2 * (os.cpu_count() or 1))
SWITCHES = [
    ("--aux-logits", "aux_logits", "train the aux head too (models that have one)"),
    ("--channels-last", "channels_last", "NHWC memory layout (--no-channels-last: NCHW)"),
    ("--compile", "compile", "torch.compile the model"),
    ("--sync-bn", "sync_bn", "batch-norm statistics over all replicas"),
    ("--freeze-bn", "freeze_bn", "layers --trainable leaves out keep their BN statistics too"),
    ("--skip-corrupt", "skip_corrupt", "pass over unreadable records (each logged), not stop"),
    (
        "--balanced-sampler",
        "balanced_sampler",
        "draw each epoch's images so that every class comes equally often",
    ),
]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="shard directory or image folder")
    parser.add_argument(
        "--train-dir", required=True, type=output_folder, help="checkpoints and logs go here"
    )
    parser.add_argument(
        "--recipe",
        help=f"a named recipe ({', '.join(recipe_names())}) or a .toml path "
        "(default: one chosen for the data, named in the first line)",
    )
    for flag, key, kind, help_text in RECIPE_FLAGS:
        if kind is not str and key != "max_image_pixels":  # that one: checked in run()
            kind = recipe_value(key, kind)  # the recipe's range
        parser.add_argument(flag, dest=key, type=kind, help=help_text)
    parser.add_argument("--precision", choices=PRECISIONS, help="auto: bf16 where native")
    for flag, key, help_text in SWITCHES:
        parser.add_argument(flag, dest=key, action=argparse.BooleanOptionalAction, help=help_text)
    parser.add_argument(
        "--nproc-per-node",
        type=at_least(1, MAX_REPLICAS),
        help=f"start N synchronous replicas through torchrun (at most {MAX_REPLICAS} here: "
        "twice this machine's cores, at least 8)",
    )
    parser.add_argument(
        "--max-restarts",
        type=at_least(0),
        default=0,
        help="with --nproc-per-node: torchrun restarts",
    )


def _recipe_keys() -> list[str]:
    return [key for _, key, _, _ in RECIPE_FLAGS] + ["precision"] + [k for _, k, _ in SWITCHES]


def _command_line(args: argparse.Namespace) -> list[str]:
    """The same command without the launcher's flags, for the replicas torchrun starts."""
    argv = ["train", "--data", args.data, "--train-dir", args.train_dir]
    if args.recipe:
        argv += ["--recipe", args.recipe]
    for flag, key, _, _ in RECIPE_FLAGS:
        if getattr(args, key) is not None:
            argv += [flag, str(getattr(args, key))]
    if args.precision:
        argv += ["--precision", args.precision]
    for flag, key, _ in SWITCHES:
        value = getattr(args, key)
        if value is not None:
            argv.append(flag if value else "--no-" + flag[2:])
    return argv


def run(args: argparse.Namespace) -> int | None:
    if args.max_image_pixels is not None:
        check_pixel_limit(args.max_image_pixels)  # the error every command gives for it
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ or "WORLD_SIZE" in os.environ
    if args.nproc_per_node is not None and not under_torchrun:
        from incept.train.distributed import relaunch_under_torchrun

        return relaunch_under_torchrun(_command_line(args), args.nproc_per_node, args.max_restarts)

    from incept.train.loop import train

    if os.environ.get("RANK", "0") == "0":
        # The weight readers report what they restored and re-initialised through logging.
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.recipe:
        load_recipe(args.recipe)  # a wrong name stops here, before any data is opened
    overrides = {key: getattr(args, key) for key in _recipe_keys()}
    train(args.data, args.train_dir, args.recipe, overrides, aux_flag=args.aux_logits)
    return 0
