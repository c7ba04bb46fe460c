"""`incept eval --data DIR --checkpoint PATH`: precision @ 1 and recall @ 5 over a subset.

PATH is a train dir (its latest checkpoint; with --best its best by validation precision,
kept in TRAIN_DIR/best), a checkpoint of ours, or any weights source that
--init-from takes. The last line is the original's, with the exact number of examples; under
torchrun every replica reads its own part and the counts are summed. The precision computed in
is said on stderr first. `--report DIR` writes per-class figures, the confusion matrix and the
misclassified files into DIR (incept.report); with --json the object then carries them too.
`--int8 --calibration-data DATA` evaluates the int8 model (incept.quantize) calibrated on DATA's
train images, and then the model in fp32 on the same records: the line before the result says
the fp32 precision @ 1 and the change in points (--json: "fp32_top1", "top1_change_points").
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
    image_size,
    int8_options,
    recipe_value,
)
from incept.train.recipe import PRECISIONS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="shard directory or image folder")
    parser.add_argument(
        "--checkpoint", required=True, help="train dir, checkpoint, or weights source"
    )
    parser.add_argument("--subset", choices=("validation", "train"), default="validation")
    parser.add_argument(
        "--batch-size", type=at_least(1), default=50, help="global batch (default 50)"
    )
    parser.add_argument(
        "--image-size", type=image_size, help="input side (default: the size it was trained at)"
    )
    add_weights_options(parser)
    parser.add_argument(
        "--workers", type=recipe_value("workers", int), default=2, help="data loading processes"
    )
    parser.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="auto",  # benchmarks/eval_classify.py measures the default it finds here
        help="auto (default): bf16 where the processor has it natively, else fp32",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help='one JSON object: {"top1","top5","examples","loss"}, with --report also '
        '"precision","classes","per_class","confused_pairs","confusion","misclassified", with '
        '--int8 also "precision","fp32_top1","top1_change_points"',
    )
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="write per-class precision/recall, the confusion matrix (text, CSV, PNG), the "
        "most confused pairs and the misclassified files into DIR",
    )
    parser.add_argument(
        "--best",
        action="store_true",
        help="with a train dir: its best checkpoint by validation precision (TRAIN_DIR/best), "
        "not its latest",
    )
    parser.add_argument(
        "--skip-corrupt",
        action="store_true",
        help="leave out records that cannot be read or decoded (each logged), not stop",
    )
    add_int8_options(parser, what="evaluate, against fp32 on the same records")
    add_image_limit_options(parser)


def run(args: argparse.Namespace) -> int | None:
    from incept import report
    from incept.errors import UserError
    from incept.evaluate import evaluate_source, int8_line, result_line

    max_pixels, _ = image_limits(args)
    int8 = int8_options(args)
    if int8 is not None and args.precision != "auto":
        raise UserError(f"--int8 computes in int8: drop --precision {args.precision}")
    if args.report is not None:
        report.check_folder(args.report)  # a bad folder fails now, not after the pass
    checkpoint = args.checkpoint
    if args.best:
        from incept.weights.checkpoint import resolve_checkpoint

        checkpoint = str(resolve_checkpoint(checkpoint, best=True))
    result = evaluate_source(
        args.data,
        checkpoint,
        subset=args.subset,
        batch_size=args.batch_size,
        image_size=args.image_size,
        ema=not args.no_ema,
        model_name=args.model,
        workers=args.workers,
        precision=args.precision,
        skip_corrupt=args.skip_corrupt,
        max_image_pixels=max_pixels,
        report=args.report is not None,
        int8=int8,
        say=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if result is None:  # a replica other than the first: the first one prints
        return 0
    if args.report is not None:
        result = report.add_report(result)
        folder = report.write_report(args.report, result, result_line(result))
        print(f"report written to {folder}: {', '.join(report.FILES)}", file=sys.stderr)
    if result.get("skipped") and not args.json:
        print(f"left out {result['skipped']} corrupt records (listed above)", flush=True)
    if int8 is not None and not args.json:
        print(int8_line(result))
    print(json.dumps(result) if args.json else result_line(result), flush=True)
    return 0
