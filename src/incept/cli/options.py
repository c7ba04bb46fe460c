"""Flags several subcommands share (not a subcommand itself)."""

from __future__ import annotations

import argparse


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
    from incept.data.images import FILE_LIMIT_FLAG, MAX_FILE_BYTES, MAX_PIXELS, PIXEL_LIMIT_FLAG

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
    from incept.data.images import FILE_LIMIT_FLAG, MAX_FILE_BYTES, MAX_PIXELS, PIXEL_LIMIT_FLAG
    from incept.errors import UserError

    if not 1 <= args.max_image_pixels <= MAX_PIXELS:
        raise UserError(
            f"{PIXEL_LIMIT_FLAG} must be in 1..{MAX_PIXELS:,} (Pillow's own limit), "
            f"got {args.max_image_pixels:,}"
        )
    megabytes = getattr(args, "max_file_mb", MAX_FILE_BYTES / 2**20)
    if not megabytes > 0:  # also refuses nan
        raise UserError(f"{FILE_LIMIT_FLAG} must be above 0, got {megabytes}")
    return args.max_image_pixels, int(min(megabytes, 2**40) * 2**20)
