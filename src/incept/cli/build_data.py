"""`incept build-data SOURCE_DIR OUTPUT_DIR`: an image folder to TFRecord shards."""

from __future__ import annotations

import argparse
import os

from incept.cli.options import add_image_limit_options, image_limits
from incept.errors import UserError


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE_DIR", help="folder of <class name>/<images>")
    parser.add_argument("output", metavar="OUTPUT_DIR", help="where the shards go")
    parser.add_argument(
        "--labels-file", metavar="FILE", help="class order, one name a line (default: sorted)"
    )
    held_out = parser.add_mutually_exclusive_group()
    held_out.add_argument(
        "--validation-dir", metavar="DIR", help="validation images, <class name>/<images>"
    )
    held_out.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        metavar="F",
        help="share of each class held out for validation (default 0.1)",
    )
    parser.add_argument(
        "--train-shards", type=int, metavar="N", help="default: about 1,024 records a shard"
    )
    parser.add_argument(
        "--validation-shards", type=int, metavar="N", help="default: about 1,024 records a shard"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        metavar="N",
        help="worker processes (default: CPU cores, at most 8)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the split and the shuffle (default 0)"
    )
    add_image_limit_options(parser, file_size=True)


def run(args: argparse.Namespace) -> int:
    from incept.data.build import build_data

    max_pixels, max_file_bytes = image_limits(args)
    return build_and_report(
        lambda: build_data(
            args.source,
            args.output,
            labels_file=args.labels_file,
            validation_dir=args.validation_dir,
            validation_fraction=args.validation_fraction,
            train_shards=args.train_shards,
            validation_shards=args.validation_shards,
            workers=args.workers,
            seed=args.seed,
            max_pixels=max_pixels,
            max_file_bytes=max_file_bytes,
        ),
        workers=args.workers,
        output=args.output,
    )


def build_and_report(build, *, workers: int, output) -> int:
    """Checks --workers, runs `build()` (-> dataset info, summary lines), turns OS errors into
    one line, prints the summary. Shared by build-data and build-imagenet."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    try:
        _, summary = build()
    except OSError as error:  # a full disk, a read-only folder, a vanished file
        where = error.filename or output
        raise UserError(f"{where}: {error.strerror or error}") from None
    for line in summary:
        print(line)
    return 0
