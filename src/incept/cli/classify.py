"""`incept classify IMAGE... --checkpoint PATH`: the top-K labels of each image.

PATH as for eval: a train dir, a checkpoint, or any weights source --init-from takes. Each image
gets the evaluation preprocessing (central 87.5% crop, bilinear resize, [-1, 1]). A bad image
gets one error line on stderr (and, with --json, an error object on stdout); the others are
still classified and the exit status is 1 at the end.

`--int8 --calibration-data DATA` classifies with the int8 model (incept.quantize), built first
from the checkpoint and calibrated on DATA's train images; its agreement with the float model
on them is said on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys

from incept.cli.options import (
    add_image_limit_options,
    add_int8_options,
    add_weights_options,
    at_least,
    image_limits,
    int8_options,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format)")
    parser.add_argument(
        "--checkpoint", required=True, help="train dir, checkpoint, or weights source"
    )
    parser.add_argument(
        "--top-k", type=at_least(1), default=5, help="labels shown per image (default 5)"
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='one JSON object a line: {"image", "top": [{"label", "probability"}]} or '
        '{"image", "error"}',
    )
    parser.add_argument("--batch-size", type=at_least(1), default=32, help="images run together")
    add_weights_options(parser, labels_file=True)
    add_int8_options(parser, what="classify")
    add_image_limit_options(parser)


def run(args: argparse.Namespace) -> int:
    from incept.classify import classify_files
    from incept.predict import load_predictor

    max_pixels, _ = image_limits(args)
    int8 = int8_options(args)
    predictor = load_predictor(
        args.checkpoint, ema=not args.no_ema, model_name=args.model, labels_file=args.labels_file
    )
    if int8 is not None:
        from incept.quantize import agreement_line, int8_predictor

        predictor, model = int8_predictor(predictor, max_image_pixels=max_pixels, **int8)
        print(agreement_line(model, args.calibration_data), file=sys.stderr, flush=True)
    failures = 0
    results = classify_files(
        args.images,
        predictor,
        top_k=args.top_k,
        batch_size=args.batch_size,
        max_pixels=max_pixels,
    )
    for result in results:
        if "error" in result:
            failures += 1
            print(f"incept classify: error: {result['image']}: {result['error']}", file=sys.stderr)
        if args.json:
            print(json.dumps(result), flush=True)
        elif "top" in result:
            print(result["image"])
            for entry in result["top"]:
                print(f"  {entry['label']} (score = {entry['probability']:.5f})")
            sys.stdout.flush()
    return 1 if failures else 0
