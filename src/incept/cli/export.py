"""`incept export --checkpoint PATH --out FILE.onnx`: the model as ONNX, checked on the spot.

The batch dimension is dynamic; the image size is the one the checkpoint was trained at unless
--image-size says otherwise. onnxruntime runs the exported graph on random inputs and its
logits must agree with PyTorch's; the largest difference is printed.
"""

from __future__ import annotations

import argparse

from incept.cli.options import add_weights_options, image_size, output_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint", required=True, help="train dir, checkpoint, or weights source"
    )
    parser.add_argument(
        "--out",
        required=True,
        type=output_file(".onnx"),
        metavar="FILE.onnx",
        help="the file to write",
    )
    parser.add_argument(
        "--image-size", type=image_size, help="input side (default: the size it was trained at)"
    )
    add_weights_options(parser)


def run(args: argparse.Namespace) -> int:
    from incept.export import TOLERANCE, export_onnx
    from incept.predict import load_predictor

    predictor = load_predictor(
        args.checkpoint, ema=not args.no_ema, model_name=args.model, device="cpu"
    )
    result = export_onnx(predictor, args.out, image_size=args.image_size)
    print(
        f"wrote {result.path} ({result.size_bytes / 2**20:.1f} MiB): {predictor.architecture}, "
        f"{len(predictor.class_names)} classes, input N x 3 x {result.image_size} x "
        f"{result.image_size}, batch size dynamic"
    )
    print(
        f"onnxruntime vs PyTorch: max abs difference of the logits {result.max_abs_difference:.3g}"
        f" (largest logit {result.logit_scale:.3g}; allowed {TOLERANCE:g} x that)"
    )
    return 0
