"""Evaluation: precision @ 1 and recall @ 5 over every record of a subset, counted exactly.

Used by `incept eval` and by `incept train --eval-every`. Under torchrun each replica reads its
own part of the records; the correct counts, the summed loss and the number of examples are
added up across replicas, so the result counts each record exactly once (the original padded
the last batch and reported 50,016 images for 50,000).

Given the class names, `evaluate` also counts the confusion matrix and lists the misclassified
records, for the report `incept eval --report DIR` writes (`incept.report`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from incept.errors import UserError
from incept.limits import MAX_PIXELS
from incept.runtime.precision import autocast
from incept.runtime.replicas import Replicas, sum_across


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches,
    replicas: Replicas,
    precision: str = "fp32",
    channels_last: bool = False,
    classes: list[str] | None = None,
) -> dict:
    """{"top1", "top5", "examples", "loss"} of `model` (put in eval mode) over `batches`, and
    "skipped" (records passed over, all replicas) when `batches` is a loader with
    skip_corrupt.

    With `classes` (the data's class names, in label order) also "confusion" (rows: true
    class, columns: predicted, summed over replicas) and "misclassified": one
    {"file", "true", "predicted", "probability"} per record whose top-1 prediction is wrong,
    in record order, gathered from every replica to the first (the others get an empty list).
    "file" is the record's name when `batches` is an incept loader, else None.
    """
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # top-1 hits, top-5 hits, loss sum, examples
    if classes is not None:
        confusion = torch.zeros(len(classes) ** 2, dtype=torch.int64, device=replicas.device)
        misclassified = []
    for images, labels, names in _named_batches(batches):
        images = images.to(replicas.device, non_blocking=True)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        labels = labels.to(replicas.device)
        with autocast(precision, replicas.device):
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hits = top == labels.unsqueeze(1)
        if classes is not None:
            predicted = top[:, 0]
            confusion += torch.bincount(
                labels * len(classes) + predicted, minlength=len(classes) ** 2
            )
            misclassified += _misclassified(logits, labels, predicted, names, classes)
        totals += torch.tensor(
            [
                hits[:, 0].sum().item(),
                hits.any(dim=1).sum().item(),
                F.cross_entropy(logits, labels, reduction="sum").item(),
                labels.numel(),
            ],
            dtype=torch.float64,
        )
    totals = sum_across(totals, replicas)
    examples = int(totals[3].item())
    if examples == 0:
        result = {"top1": 0.0, "top5": 0.0, "examples": 0, "loss": float("nan")}
    else:
        result = {
            "top1": totals[0].item() / examples,
            "top5": totals[1].item() / examples,
            "examples": examples,
            "loss": totals[2].item() / examples,
        }
    if getattr(batches, "skip_corrupt", False):  # an incept loader told to skip
        count = sum_across(torch.tensor([float(len(batches.skipped))]), replicas)
        result["skipped"] = int(count.item())
    if classes is not None:
        confusion = sum_across(confusion.cpu(), replicas).view(len(classes), len(classes))
        result["confusion"] = confusion.tolist()
        result["misclassified"] = _gather_to_first(misclassified, replicas)
    return result


def _named_batches(batches):
    """(images, labels, record names or None) of each batch."""
    if hasattr(batches, "batches"):  # an incept loader: its batches name their records
        for batch in batches.batches():
            yield batch.images, batch.labels, batch.names
    else:
        for images, labels in batches:
            yield images, labels, None


def _misclassified(logits, labels, predicted, names, classes) -> list[dict]:
    wrong = (predicted != labels).nonzero().flatten()
    if wrong.numel() == 0:
        return []
    probabilities = logits[wrong].softmax(dim=1).gather(1, predicted[wrong].unsqueeze(1))
    rows = zip(wrong.tolist(), labels[wrong].tolist(), predicted[wrong].tolist())
    return [
        {
            "file": names[index] if names is not None else None,
            "true": classes[true],
            "predicted": classes[guess],
            "probability": probability,
        }
        for (index, true, guess), probability in zip(rows, probabilities.flatten().tolist())
    ]


def _gather_to_first(items: list, replicas: Replicas) -> list:
    """Every replica's list, concatenated in rank order on the first replica; [] elsewhere."""
    if not replicas.distributed:
        return items
    parts = [None] * replicas.world_size if replicas.is_main else None
    dist.gather_object(items, parts, dst=0)
    return [item for part in parts for item in part] if replicas.is_main else []


def result_line(result: dict) -> str:
    """The original's last line: `precision @ 1 = 0.7874 recall @ 5 = 0.9436 [50000 examples]`."""
    return (
        f"precision @ 1 = {result['top1']:.4f} recall @ 5 = {result['top5']:.4f} "
        f"[{result['examples']} examples]"
    )


def evaluate_source(
    data_dir: str,
    checkpoint: str,
    subset: str = "validation",
    batch_size: int = 50,
    image_size: int | None = None,
    ema: bool = True,
    model_name: str = "inception_v3",
    workers: int = 2,
    precision: str = "auto",
    skip_corrupt: bool = False,
    max_image_pixels: int = MAX_PIXELS,
    report: bool = False,
    say: Callable[[str], None] | None = None,
    int8: dict | None = None,
) -> dict | None:
    """Evaluates a checkpoint or weights source on `subset` of `data_dir`. Under torchrun
    every replica takes part; the first gets the result, the others None.

    `precision` "auto", as for `incept eval`: bf16 where the processor computes it natively,
    else fp32; `max_image_pixels`: make_loader's (default the shared limit); `say` (on the
    first replica) is told the one used before the pass begins. The
    result is `evaluate`'s; with `report` it also holds "precision" (the one used),
    "classes", "confusion" and "misclassified" (see `evaluate`).

    `int8`: the calibration options of `incept.quantize.build_int8` (`calibration_data`,
    optionally `calibration_count`): the int8 model is built, evaluated in onnxruntime (in one
    process: not under torchrun), then the model itself in fp32 on the same records; the result
    is the int8 model's, with "precision": "int8", "fp32_top1" and "top1_change_points"
    (int8's precision @ 1 minus fp32's, in percentage points)."""
    from incept.data import make_loader
    from incept.data.sources import open_source
    from incept.nets import loading
    from incept.runtime.precision import resolve_precision
    from incept.runtime.replicas import split_batch, start_replicas, stop_replicas

    replicas = start_replicas()
    try:
        if int8 is not None and replicas.distributed:
            raise UserError("--int8 evaluates in one process: run it without torchrun")
        num_classes = open_source(data_dir, subset).num_classes
        # The source's own classifier or an error: never the accuracy of an untrained head.
        loaded = loading.load_model(
            checkpoint, model_name=model_name, num_classes=num_classes, ema=ema
        )
        size = image_size or loaded.image_size
        if int8 is not None:
            quantized = _int8_model(loaded, size, int8, workers, max_image_pixels, say)
        model = loaded.model.to(replicas.device).to(memory_format=torch.channels_last)
        batches = make_loader(
            data_dir,
            subset=subset,
            training=False,
            batch_size=split_batch(batch_size, replicas),
            image_size=size,
            workers=workers,
            device=replicas.device if replicas.device.type == "cuda" else None,
            skip_corrupt=skip_corrupt,
            max_image_pixels=max_image_pixels,
        )
        classes = batches.classes if report else None
        if int8 is not None:
            used = "int8"
            if say is not None:
                say("evaluating in int8 (onnxruntime), then in fp32 for the comparison")
            result = evaluate(quantized, batches, replicas, "fp32", classes=classes)
            reference = evaluate(model, batches, replicas, "fp32", channels_last=True)
            result["precision"] = used
            result["fp32_top1"] = reference["top1"]
            result["top1_change_points"] = (result["top1"] - reference["top1"]) * 100
        else:
            used = resolve_precision(precision, replicas.device)
            if say is not None and replicas.is_main:
                say(f"evaluating in {used} (precision {precision})")
            result = evaluate(model, batches, replicas, used, channels_last=True, classes=classes)
        if not replicas.is_main:
            return None
        if report:
            result["precision"], result["classes"] = used, list(classes)
        return result
    finally:
        stop_replicas(replicas)


def _int8_model(loaded, image_size: int, options: dict, workers: int, max_pixels: int, say):
    """The int8 model of a loaded model, as a module running in onnxruntime on the CPU."""
    from incept.predict import Predictor
    from incept.quantize import OnnxModel, agreement_line, build_int8

    predictor = Predictor(
        loaded.model,
        loaded.class_names,
        loaded.image_size,
        loaded.architecture,
        loaded.step,
        torch.device("cpu"),
    )
    model = build_int8(
        predictor, image_size=image_size, workers=workers, max_image_pixels=max_pixels, **options
    )
    if say is not None:
        say(agreement_line(model, options["calibration_data"]))
    return OnnxModel(model.graph)


def int8_line(result: dict) -> str:
    """The line `incept eval --int8` prints before the result line."""
    return (
        f"fp32 precision @ 1 = {result['fp32_top1']:.4f}; int8 changes it by "
        f"{result['top1_change_points']:+.2f} points"
    )
