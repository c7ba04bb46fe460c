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
