"""Flags several subcommands share (not a subcommand itself)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_weights_options(parser: argparse.ArgumentParser, *, labels_file: bool = False) -> None:
    """--no-ema and --model for the commands that read a checkpoint or weights source, and
    --labels-file for those that name classes."""
    parser.add_argument(
        "--no-ema", action="store_true", help="the raw weights, not their moving averages"
    )
    parser.add_argument("--model", default="inception_v3", help="network of a foreign weights file")
    if labels_file:
        parser.add_argument(
            "--labels-file", help="class names, one a line (default: those the checkpoint records)"
        )


def add_image_limit_options(parser: argparse.ArgumentParser, *, file_size: bool = False) -> None:
    """--max-image-pixels, the decompression-bomb limit (one default in every command that
    decodes images), and --max-file-mb for those that read files found in folders."""
    from incept.limits import FILE_LIMIT_FLAG, MAX_FILE_BYTES, MAX_PIXELS, PIXEL_LIMIT_FLAG

    parser.add_argument(
        PIXEL_LIMIT_FLAG,
        dest="max_image_pixels",
        type=int,
        default=MAX_PIXELS,
        metavar="N",
        help=f"refuse images of more pixels, from their header (default {MAX_PIXELS:,}, "
        "Pillow's own limit, which is also the most allowed)",
    )
    if file_size:
        parser.add_argument(
            FILE_LIMIT_FLAG,
            dest="max_file_mb",
            type=float,
            default=MAX_FILE_BYTES / 2**20,
            metavar="MB",
            help=f"skip files larger than this, unread (default {MAX_FILE_BYTES // 2**20})",
        )


def image_limits(args: argparse.Namespace) -> tuple[int, int]:
    """(max pixels, max file bytes) from the flags of `add_image_limit_options`, checked."""
    from incept.errors import UserError
    from incept.limits import FILE_LIMIT_FLAG, MAX_FILE_BYTES

    check_pixel_limit(args.max_image_pixels)
    megabytes = getattr(args, "max_file_mb", MAX_FILE_BYTES / 2**20)
    if not megabytes > 0:  # also refuses nan
        raise UserError(f"{FILE_LIMIT_FLAG} must be above 0, got {megabytes}")
    return args.max_image_pixels, int(min(megabytes, 2**40) * 2**20)


def add_int8_options(parser: argparse.ArgumentParser, *, what: str) -> None:
    """--int8 (`what`: what the int8 model does for this command), --calibration-data DATA and
    --calibration-images N: the int8 model of incept.quantize, calibrated on DATA's train
    images. `int8_options` checks them."""
    parser.add_argument(
        "--int8",
        action="store_true",
        help=f"{what}: the int8 ONNX model (static quantization, calibrated on "
        "--calibration-data), run by onnxruntime",
    )
    parser.add_argument(
        "--calibration-data",
        metavar="DATA",
        help="with --int8: shards or an image folder whose train images set the int8 ranges",
    )
    parser.add_argument(
        "--calibration-images",
        type=at_least(1),
        metavar="N",
        help="with --int8: the first N train images of DATA calibrate it (default 256)",
    )


def int8_options(args: argparse.Namespace) -> dict | None:
    """None without --int8, else the keyword arguments of incept.quantize.build_int8 the
    flags of `add_int8_options` give; a flag without the others it needs is a UserError."""
    from incept.errors import UserError

    if not args.int8:
        for flag, value in (
            ("--calibration-data", args.calibration_data),
            ("--calibration-images", args.calibration_images),
        ):
            if value is not None:
                raise UserError(f"{flag} is for --int8: add --int8, or drop {flag}")
        return None
    if args.calibration_data is None:
        raise UserError(
            "--int8 needs --calibration-data DATA: shards or an image folder whose train "
            "images calibrate the int8 model (your training data)"
        )
    options = {"calibration_data": args.calibration_data}
    if args.calibration_images is not None:
        options["calibration_count"] = args.calibration_images
    return options


def check_pixel_limit(pixels: int) -> None:
    """The one check of --max-image-pixels, in every command that has the flag."""
    from incept.errors import UserError
    from incept.limits import MAX_PIXELS, PIXEL_LIMIT_FLAG

    if not 1 <= pixels <= MAX_PIXELS:
        raise UserError(
            f"{PIXEL_LIMIT_FLAG} must be in 1..{MAX_PIXELS:,} (Pillow's own limit), got {pixels:,}"
        )


# Argument types: each checks its value where argparse reads it, so a wrong one stops the
# command before anything is opened, in one line naming the flag.


def recipe_value(key: str, kind: type):
    """The type of a flag that sets recipe key `key`: `kind`, in the recipe's range for it
    (incept.train.recipe.RANGES, shared with recipe files)."""
    from incept.train.recipe import value_problem

    def parse(text: str):
        value = kind(text)
        problem = value_problem(key, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"
    return parse


def image_size(text: str) -> int:
    """An input side in the range every model takes (the recipe key's range)."""
    return recipe_value("image_size", int)(text)


def at_least(low: int, high: int | None = None):
    """The type of an integer flag in low..high."""

    def parse(text: str) -> int:
        value = int(text)
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"must be {span}, got {value}")
        return value

    parse.__name__ = "int"
    return parse


def _unwritable(folder: Path) -> str | None:
    """Why nothing can be created in `folder`, found by creating (and removing) an empty file:
    permission bits do not tell for root, read-only mounts or /sys."""
    probe = folder / f".incept-probe-{os.getpid()}"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as error:
        return f"cannot write in {folder}: {error.strerror}"
    os.unlink(probe)
    return None


def output_file(suffix: str):
    """The type of a flag naming a file to write: not a folder, in a folder that exists and
    takes new files."""

    def parse(text: str) -> str:
        path = Path(text)
        if path.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a folder: name the {suffix} file")
        if not path.name.endswith(suffix):
            raise argparse.ArgumentTypeError(f"name the file *{suffix}, not {text}")
        if not path.parent.is_dir():
            raise argparse.ArgumentTypeError(f"no folder {path.parent} to write into: create it")
        problem = _unwritable(path.parent)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return text

    parse.__name__ = "file"
    return parse


def output_folder(text: str) -> str:
    """A folder to write into, made if missing: not a file, not under a file, and the nearest
    existing folder above it takes new files."""
    path = Path(text)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a file, not a folder")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise argparse.ArgumentTypeError(f"{existing} is a file: {text} cannot be made under it")
    problem = _unwritable(existing)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text
