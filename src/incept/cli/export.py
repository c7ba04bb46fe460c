"""`incept export --checkpoint PATH --out FILE.onnx`: the model as ONNX, checked on the spot.

The batch dimension is dynamic; the image size is the one the checkpoint was trained at unless
--image-size says otherwise. onnxruntime runs the exported graph on random inputs and its
logits must agree with PyTorch's; the largest difference is printed.

`--int8 --calibration-data DATA` writes the int8 model instead (incept.quantize): calibrated
on the first --calibration-images train images of DATA, run by onnxruntime on them, and its
top-1 agreement with the float model on those images printed.
"""

from __future__ import annotations

import argparse

from incept.cli.options import (
    add_image_limit_options,
    add_int8_options,
    add_weights_options,
    image_limits,
    image_size,
    int8_options,
    output_file,
    recipe_value,
)


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
    add_int8_options(parser, what="write")
    parser.add_argument(
        "--workers",
        type=recipe_value("workers", int),
        default=2,
        help="with --int8: processes decoding the calibration images",
    )
    add_image_limit_options(parser)


def run(args: argparse.Namespace) -> int:
    from incept.predict import load_predictor

    max_pixels, _ = image_limits(args)
    int8 = int8_options(args)  # flag mistakes before the model is loaded
    predictor = load_predictor(
        args.checkpoint, ema=not args.no_ema, model_name=args.model, device="cpu"
    )
    if int8 is not None:
        return _export_int8(args, predictor, int8, max_pixels)
    from incept.export import TOLERANCE, export_onnx

    result = export_onnx(predictor, args.out, image_size=args.image_size)
    _say_written(result.path, result.size_bytes, predictor, result.image_size)
    print(
        f"onnxruntime vs PyTorch: max abs difference of the logits {result.max_abs_difference:.3g}"
        f" (largest logit {result.logit_scale:.3g}; allowed {TOLERANCE:g} x that)"
    )
    return 0


def _export_int8(args, predictor, int8: dict, max_pixels: int) -> int:
    from incept.quantize import agreement_line, export_int8

    result = export_int8(
        predictor,
        args.out,
        image_size=args.image_size,
        workers=args.workers,
        max_image_pixels=max_pixels,
        **int8,
    )
    model = result.model
    _say_written(result.path, result.size_bytes, predictor, model.image_size, kind="int8 ")
    print(
        f"{agreement_line(model, args.calibration_data)} (float model "
        f"{model.float_bytes / 2**20:.1f} MiB)"
    )
    return 0


def _say_written(path, size_bytes: int, predictor, image_size: int, kind: str = "") -> None:
    print(
        f"wrote {path} ({size_bytes / 2**20:.1f} MiB): {kind}{predictor.architecture}, "
        f"{len(predictor.class_names)} classes, input N x 3 x {image_size} x "
        f"{image_size}, batch size dynamic"
    )
