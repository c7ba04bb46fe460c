"""Evaluation: precision @ 1 and recall @ 5 over every record of a subset, counted exactly.

Used by `incept eval` and by `incept train --eval-every`. Under torchrun each replica reads its
own part of the records; the correct counts, the summed loss and the number of examples are
added up across replicas, so the result counts each record exactly once (the original padded
the last batch and reported 50,016 images for 50,000).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from incept.train.distributed import Replicas, sum_across
from incept.train.precision import autocast


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches,
    replicas: Replicas,
    precision: str = "fp32",
    channels_last: bool = False,
) -> dict:
    """{"top1", "top5", "examples", "loss"} of `model` (put in eval mode) over `batches`, and
    "skipped" (records passed over, all replicas) when `batches` is a loader with
    skip_corrupt."""
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64)  # top-1 hits, top-5 hits, loss sum, examples
    for images, labels in batches:
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
    return result


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
    precision: str = "fp32",
    skip_corrupt: bool = False,
) -> dict | None:
    """Evaluates a checkpoint or weights source on `subset` of `data_dir`. Under torchrun
    every replica takes part; the first gets the result, the others None."""
    from incept.data import make_loader
    from incept.data.sources import open_source
    from incept.nets import loading
    from incept.train.distributed import split_batch, start_replicas, stop_replicas
    from incept.train.precision import resolve_precision

    replicas = start_replicas()
    try:
        num_classes = open_source(data_dir, subset).num_classes
        # The source's own classifier or an error: never the accuracy of an untrained head.
        loaded = loading.load_model(
            checkpoint, model_name=model_name, num_classes=num_classes, ema=ema
        )
        model = loaded.model.to(replicas.device).to(memory_format=torch.channels_last)
        batches = make_loader(
            data_dir,
            subset=subset,
            training=False,
            batch_size=split_batch(batch_size, replicas),
            image_size=image_size or loaded.image_size,
            workers=workers,
            device=replicas.device if replicas.device.type == "cuda" else None,
            skip_corrupt=skip_corrupt,
        )
        used = resolve_precision(precision, replicas.device)
        result = evaluate(model, batches, replicas, used, channels_last=True)
        return result if replicas.is_main else None
    finally:
        stop_replicas(replicas)
