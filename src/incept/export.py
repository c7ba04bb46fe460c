"""ONNX export of a `Predictor`'s model, checked against onnxruntime before it is written.

The graph takes `images` (float N x 3 x S x S in [-1, 1], N free) and gives `logits`
(N x classes). The class names, the image size and the preprocessing travel in the model's
metadata (`incept.*` keys), so the file alone is enough to classify with. The file is written
only once onnxruntime agrees with PyTorch, and atomically: an existing file is never left
half-replaced.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from incept.errors import UserError
from incept.files import write_atomically
from incept.predict import Predictor

OPSET = 17
# Largest allowed abs difference of the logits, onnxruntime vs PyTorch, per unit of the largest
# logit (at least 1): fp32 rounding in 90-odd layers grows with the values' size, so logits in the
# hundreds differ by ~1e-3 between two correct fp32 runtimes (PyTorch's own fp32 is that far from
# float64), while a wrong graph is off by far more than 1e-4 of them.
TOLERANCE = 1e-4
INPUT_NAME, OUTPUT_NAME = "images", "logits"
PREPROCESSING = (
    "RGB; central crop of 87.5% of each side; bilinear resize to image_size x image_size; "
    "x / 255 * 2 - 1"
)
# Export with batch 2, check with batch 3: a batch dimension frozen into the graph fails.
_EXPORT_BATCH, _CHECK_BATCH = 2, 3


@dataclass(frozen=True)
class ExportResult:
    path: Path
    image_size: int
    max_abs_difference: float  # onnxruntime vs PyTorch, logits of random inputs
    logit_scale: float  # max(1, the largest logit's magnitude) in that check
    size_bytes: int


def export_onnx(
    predictor: Predictor, out: str | os.PathLike, *, image_size: int | None = None, seed: int = 0
) -> ExportResult:
    """Writes `predictor`'s model to `out` as ONNX with a dynamic batch dimension.

    `image_size`: the input side (default: the size the model was trained at). Raises
    UserError when onnxruntime's logits differ from PyTorch's by more than TOLERANCE times
    max(1, the largest logit's magnitude). The predictor's model is moved to the CPU in fp32.
    """
    out = check_output_folder(out)
    graph = checked_graph(predictor, image_size=image_size, seed=seed)
    write_atomically(out, graph.graph)
    return ExportResult(
        out, graph.image_size, graph.max_abs_difference, graph.logit_scale, len(graph.graph)
    )


def check_output_folder(out: str | os.PathLike) -> Path:
    """`out` as a Path, once its folder is known to exist (before any work is done)."""
    out = Path(out)
    if not out.parent.is_dir():
        raise UserError(f"no folder {out.parent} to write {out.name} into: create it first")
    return out


@dataclass(frozen=True)
class CheckedGraph:
    graph: bytes  # the serialized ONNX model, metadata included
    image_size: int
    max_abs_difference: float  # onnxruntime vs PyTorch, logits of random inputs
    logit_scale: float  # max(1, the largest logit's magnitude) in that check


def checked_graph(
    predictor: Predictor, *, image_size: int | None = None, seed: int = 0
) -> CheckedGraph:
    """`predictor`'s model as ONNX bytes, once onnxruntime's logits agree with PyTorch's (see
    `export_onnx`); written nowhere."""
    size = image_size or predictor.image_size
    model = predictor.model.float().cpu().eval()
    generator = torch.Generator().manual_seed(seed)
    example = torch.rand(_EXPORT_BATCH, 3, size, size, generator=generator) * 2 - 1
    check = torch.rand(_CHECK_BATCH, 3, size, size, generator=generator) * 2 - 1
    with torch.inference_mode():
        try:
            expected = model(check).numpy()
        except RuntimeError as error:
            raise UserError(
                f"the model cannot run on {size}x{size} inputs ({str(error).splitlines()[0]}); "
                "choose a larger --image-size"
            ) from None
    graph = _to_onnx(model, example)
    graph = _with_metadata(graph, predictor, size)
    difference = _check_with_onnxruntime(graph, check, expected)
    scale = max(1.0, float(np.abs(expected).max()))
    if not difference <= TOLERANCE * scale:
        raise UserError(
            f"onnxruntime's logits differ from PyTorch's by {difference:.3g} (more than "
            f"{TOLERANCE:g} x {scale:.3g}, the largest logit); nothing was written"
        )
    return CheckedGraph(graph, size, difference, scale)


def _to_onnx(model: torch.nn.Module, example: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter needs nothing beyond torch and onnx (the dynamo one needs
        # onnxscript); torch announces its deprecation on every call.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        torch.onnx.export(
            model,
            (example,),
            buffer,
            dynamo=False,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            opset_version=OPSET,
        )
    return buffer.getvalue()


def _with_metadata(graph: bytes, predictor: Predictor, image_size: int) -> bytes:
    import onnx

    proto = onnx.load_from_string(graph)
    metadata = {
        "incept.architecture": predictor.architecture,
        "incept.class_names": json.dumps(predictor.class_names, ensure_ascii=False),
        "incept.image_size": str(image_size),
        "incept.checkpoint_step": "" if predictor.step is None else str(predictor.step),
        "incept.preprocessing": PREPROCESSING,
    }
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "incept"
    onnx.checker.check_model(proto)
    return proto.SerializeToString()


def _check_with_onnxruntime(graph: bytes, images: torch.Tensor, expected: np.ndarray) -> float:
    logits = run_session(inference_session(graph), images.numpy())
    if logits.shape != expected.shape:
        raise UserError(f"the ONNX graph gave logits of shape {logits.shape}, not {expected.shape}")
    return float(np.abs(logits - expected).max())


def inference_session(graph: bytes | os.PathLike):
    """An onnxruntime session on the CPU for an ONNX model (its bytes or its file)."""
    import onnxruntime

    model = graph if isinstance(graph, bytes) else str(graph)
    return onnxruntime.InferenceSession(model, providers=["CPUExecutionProvider"])


def run_session(session, images: np.ndarray) -> np.ndarray:
    """The logits a session of one of our graphs gives for float N x 3 x S x S images."""
    (logits,) = session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(images, np.float32)})
    return logits
