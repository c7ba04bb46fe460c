"""int8 inference: post-training static quantization of our ONNX graph, calibrated on the
user's own data, run by onnxruntime.

The float graph is `incept.export`'s (checked against PyTorch first). onnxruntime's
quantization tooling then rewrites it in the QDQ form (QuantizeLinear / DequantizeLinear
pairs around each convolution, pooling and concatenation, which onnxruntime's CPU provider
fuses into integer kernels): weights int8 per output channel, activations uint8 per tensor
with ranges from the minimum and maximum each reaches on the calibration images (MinMax).
The classifier (the last Gemm) stays float: it is a sliver of the work, and quantizing it would
round the logits themselves.

x86 processors without VNNI multiply uint8 by int8 with an instruction whose int16 sums can
saturate, so there the weights use 7 bits (`reduce_range`), as onnxruntime advises; with VNNI
(AVX-512 VNNI, AVX-VNNI, AMX) all 8. The choice is recorded in the model's metadata.

Calibration images: the first `count` records of the data's train subset, in the order and
with the preprocessing of `make_loader(..., training=False)` (the evaluation crop and resize):
the same images every time, so the same data gives the same model. `incept build-data`
shuffles the classes across the shards; an image folder's records come class by class, so
there the first records are those of the first classes (build shards for a mix of classes).

`export_int8` writes the model (`incept export --int8`); `OnnxModel` runs it as a module
that `incept.evaluate` and a `Predictor` (`int8_predictor`) use like any other model
(`incept eval --int8`, `incept classify --int8`; `incept serve` could take it the same way).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from incept.errors import UserError
from incept.export import (
    INPUT_NAME,
    check_output_folder,
    checked_graph,
    inference_session,
    run_session,
)
from incept.files import write_atomically
from incept.limits import MAX_PIXELS
from incept.predict import Predictor

CALIBRATION_IMAGES = 256  # the --calibration-images default
_BATCH = 32  # images a calibration (and check) run takes at once
_FLOAT_OPS = ("Gemm", "MatMul")  # the classifier's op: left in float (see the module doc)
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class Int8Graph:
    graph: bytes  # the quantized ONNX model, metadata included
    image_size: int
    calibration_images: int  # images the ranges were measured on
    top1_agreement: float  # share of those whose int8 top-1 class is the float graph's
    float_bytes: int  # the float graph's size, for comparison
    reduce_range: bool  # 7-bit weights (see the module doc)


@dataclass(frozen=True)
class Int8Result:
    path: Path
    model: Int8Graph

    @property
    def size_bytes(self) -> int:
        return len(self.model.graph)


def calibration_images(
    data: str | os.PathLike,
    image_size: int,
    count: int = CALIBRATION_IMAGES,
    *,
    workers: int = 2,
    max_image_pixels: int = MAX_PIXELS,
) -> np.ndarray:
    """The first `count` records of `data`'s train subset (all of them when it has fewer), as
    float32 N x 3 x S x S in [-1, 1] after the evaluation preprocessing."""
    from incept.data import make_loader

    if count < 1:
        raise UserError(f"--calibration-images must be at least 1, got {count}")
    loader = make_loader(
        data,
        "train",
        training=False,
        batch_size=min(count, _BATCH),
        image_size=image_size,
        workers=workers if count > _BATCH else 0,  # one batch: no processes to start
        rank=0,  # the calibration set is the same under torchrun
        world_size=1,
        max_image_pixels=max_image_pixels,
    )
    if loader.num_examples == 0:
        raise UserError(
            f"{data} has no training images to calibrate the int8 model on; give "
            "--calibration-data a shard folder or image folder with a train subset"
        )
    batches, taken = [], 0
    for images, _ in loader:
        batches.append(images[: count - taken].numpy())
        taken += len(batches[-1])
        if taken >= count:
            break
    return np.concatenate(batches)


def quantize_graph(float_graph: bytes, images: np.ndarray) -> Int8Graph:
    """The int8 form of one of our float graphs, ranges calibrated on `images`, checked: it
    runs in onnxruntime, gives finite logits, and its top-1 agreement with the float graph on
    `images` is measured."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    reduce_range = not has_vnni()
    with tempfile.TemporaryDirectory(prefix="incept-int8-") as folder:
        folder = Path(folder)
        (folder / "float.onnx").write_bytes(float_graph)
        root = logging.getLogger()
        level = root.level
        root.setLevel(max(level, logging.ERROR))  # the tooling's progress notes are not ours
        try:
            # Shape inference and onnxruntime's own graph clean-up first, as its tooling asks.
            quant_pre_process(
                folder / "float.onnx", folder / "prepared.onnx", skip_symbolic_shape=True
            )
            prepared = onnx.load(folder / "prepared.onnx")
            quantize_static(
                folder / "prepared.onnx",
                folder / "int8.onnx",
                _Calibration(images),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=_classifier_nodes(prepared),
            )
        finally:
            root.setLevel(level)
        proto = onnx.load(folder / "int8.onnx")
    source = onnx.load_from_string(float_graph)
    del proto.metadata_props[:]
    proto.metadata_props.extend(source.metadata_props)
    quantization = {
        "format": "QDQ",
        "weights": "int8, per output channel" + (", 7-bit range" if reduce_range else ""),
        "activations": "uint8, per tensor, MinMax calibration",
        "float": list(_FLOAT_OPS),
        "calibration_images": len(images),
    }
    proto.metadata_props.add(key="incept.quantization", value=json.dumps(quantization))
    proto.producer_name = "incept"
    onnx.checker.check_model(proto)
    graph = proto.SerializeToString()
    agreement = _top1_agreement(float_graph, graph, images)
    return Int8Graph(
        graph, images.shape[-1], len(images), agreement, len(float_graph), reduce_range
    )


def has_vnni() -> bool:
    """Whether this processor multiplies uint8 by int8 without saturating (see the module)."""
    found = torch.cpu.get_capabilities()  # torch's own probe of the processor: {flag: bool}
    return any(found.get(name, False) for name in _VNNI_FLAGS)


def build_int8(
    predictor: Predictor,
    calibration_data: str | os.PathLike,
    *,
    image_size: int | None = None,
    calibration_count: int = CALIBRATION_IMAGES,
    workers: int = 2,
    max_image_pixels: int = MAX_PIXELS,
) -> Int8Graph:
    """`predictor`'s model exported (`incept.export.checked_graph`) and quantized, calibrated
    on `calibration_data`; written nowhere."""
    size = image_size or predictor.image_size
    # The data first: a mistake there is found before the export's work.
    images = calibration_images(
        calibration_data,
        size,
        calibration_count,
        workers=workers,
        max_image_pixels=max_image_pixels,
    )
    return quantize_graph(checked_graph(predictor, image_size=size).graph, images)


def export_int8(
    predictor: Predictor, out: str | os.PathLike, calibration_data: str | os.PathLike, **options
) -> Int8Result:
    """`build_int8` (same options), written to `out` atomically."""
    out = check_output_folder(out)
    model = build_int8(predictor, calibration_data, **options)
    write_atomically(out, model.graph)
    return Int8Result(out, model)


def agreement_line(model: Int8Graph, calibration_data: str | os.PathLike) -> str:
    """What the commands say about an int8 model once it is built and checked."""
    return (
        f"int8 model calibrated on {model.calibration_images} train images of "
        f"{calibration_data} (weights {7 if model.reduce_range else 8}-bit per channel): the "
        f"same top-1 class as the float model on {model.top1_agreement:.1%} of them"
    )


class OnnxModel(nn.Module):
    """One of our ONNX graphs, run by onnxruntime on the CPU, as a module: float images
    N x 3 x S x S in [-1, 1] in, float32 logits out (on the CPU). No parameters, no gradient."""

    def __init__(self, graph: bytes):
        super().__init__()
        self.session = inference_session(graph)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(run_session(self.session, images.detach().float().cpu().numpy()))


def int8_predictor(predictor: Predictor, calibration_data: str | os.PathLike, **options):
    """(a `Predictor` that runs the int8 model of `predictor` on the CPU, its `Int8Graph`);
    options as for `build_int8`."""
    model = build_int8(predictor, calibration_data, **options)
    quantized = Predictor(
        OnnxModel(model.graph),
        predictor.class_names,
        model.image_size,
        predictor.architecture,
        predictor.step,
        torch.device("cpu"),
    )
    return quantized, model


class _Calibration:
    """onnxruntime's calibration data reader: the images, a batch at a time."""

    def __init__(self, images: np.ndarray):
        self._batches = iter(range(0, len(images), _BATCH))
        self._images = images

    def get_next(self) -> dict | None:
        start = next(self._batches, None)
        if start is None:
            return None
        return {INPUT_NAME: self._images[start : start + _BATCH]}


def _classifier_nodes(proto) -> list[str]:
    """The names of the nodes that compute the graph's output with a matrix product."""
    outputs = {output.name for output in proto.graph.output}
    return [
        node.name
        for node in proto.graph.node
        if node.op_type in _FLOAT_OPS and outputs.intersection(node.output)
    ]


def _top1_agreement(float_graph: bytes, int8_graph: bytes, images: np.ndarray) -> float:
    sessions = inference_session(float_graph), inference_session(int8_graph)
    matches = 0
    for start in range(0, len(images), _BATCH):
        batch = images[start : start + _BATCH]
        expected, logits = (run_session(session, batch) for session in sessions)
        if logits.shape != expected.shape or not np.isfinite(logits).all():
            raise UserError(
                f"the int8 model gave logits of shape {logits.shape} with non-finite values "
                f"or a shape other than {expected.shape}; nothing was written"
            )
        matches += int((logits.argmax(1) == expected.argmax(1)).sum())
    return matches / len(images)
