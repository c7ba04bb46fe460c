"""`incept build-imagenet`: raw ILSVRC-2012 to TFRecord shards with bounding boxes."""

from __future__ import annotations

import argparse

from incept.cli.build_data import build_and_report, default_workers


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--train-dir",
        metavar="DIR",
        help="synset folders (n01440764/...), or the per-synset .tar files of the train set",
    )
    parser.add_argument(
        "--validation-dir",
        metavar="DIR",
        help="validation images, flat (with --validation-labels) or in synset folders",
    )
    parser.add_argument(
        "--validation-labels",
        metavar="FILE",
        help="one synset a line for the validation images in sorted file-name order",
    )
    parser.add_argument(
        "--bounding-boxes",
        metavar="DIR_OR_CSV",
        help="folder of per-image XML annotations, or CSV filename,xmin,ymin,xmax,ymax",
    )
    parser.add_argument(
        "--metadata",
        metavar="FILE",
        help="synset<TAB>human-readable label lines (the original's imagenet_metadata.txt); "
        "default: torchvision's names for the 1000 ILSVRC synsets, else the synset ids",
    )
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="where shards go")
    parser.add_argument("--train-shards", type=int, default=1024, metavar="N", help="default 1024")
    parser.add_argument(
        "--validation-shards", type=int, default=128, metavar="N", help="default 128"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(),
        metavar="N",
        help="worker processes (default: CPU cores, at most 8)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")


def run(args: argparse.Namespace) -> int:
    from incept.data.imagenet import build_imagenet

    return build_and_report(
        lambda: build_imagenet(
            args.output_dir,
            train_dir=args.train_dir,
            validation_dir=args.validation_dir,
            validation_labels=args.validation_labels,
            bounding_boxes=args.bounding_boxes,
            metadata=args.metadata,
            train_shards=args.train_shards,
            validation_shards=args.validation_shards,
            workers=args.workers,
            seed=args.seed,
        ),
        workers=args.workers,
        output=args.output_dir,
    )
