"""Evaluation throughput and single-image classify latency, each against a torchvision
reference measured in the same run.

    python benchmarks/eval_classify.py [--images 64] [--repeats 10]

Evaluation: the same JPEG shards and a full-width Inception-v3 (random weights; speed does not
depend on them) through `make_loader(training=False)` and `incept.evaluate.evaluate` with
`incept eval`'s default precision (its --precision default resolved: bf16 where the CPU has it
natively, else fp32) and channels_last, against torchvision's
reference recipe: PIL decode, Resize(342), CenterCrop(299), ToTensor, Normalize, fp32, the same
number of loader workers. Classify: one JPEG file to its top-5 labels, `classify_files` against
PIL + the same torchvision transforms + the model in fp32; the median of `--repeats` runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torchvision import transforms

import incept
from incept.classify import classify_files
from incept.cli import build_parser
from incept.data import make_loader
from incept.data.build import build_data
from incept.demo.patterns import TASK_PATTERNS, make_task
from incept.evaluate import evaluate
from incept.predict import Predictor
from incept.runtime.precision import resolve_precision
from incept.runtime.replicas import start_replicas

WORKERS = 2


def measured_precision(device: torch.device) -> str:
    """What `incept eval` computes in on `device` when not told: its default, resolved."""
    default = build_parser().parse_args(["eval", "--data", "-", "--checkpoint", "-"]).precision
    return resolve_precision(default, device)


def incept_eval(shards: Path, model, precision: str) -> float:
    loader = make_loader(shards, "validation", training=False, batch_size=32, image_size=299,
                         workers=WORKERS)  # fmt: skip
    replicas = start_replicas()
    started = time.perf_counter()
    result = evaluate(model, loader, replicas, precision, channels_last=True)
    return result["examples"] / (time.perf_counter() - started)


def torchvision_eval(folder: Path, model) -> float:
    preprocess = transforms.Compose([
        transforms.Resize(342), transforms.CenterCrop(299), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])  # fmt: skip
    data = torchvision.datasets.ImageFolder(folder, transform=preprocess)
    loader = torch.utils.data.DataLoader(data, batch_size=32, num_workers=WORKERS)
    model.eval()
    started, count = time.perf_counter(), 0
    with torch.inference_mode():
        for images, _ in loader:
            model(images)
            count += len(images)
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="validation images")
    parser.add_argument("--repeats", type=int, default=10, help="classify runs (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        per_class = max(1, args.images // len(TASK_PATTERNS))
        folder = make_task(root / "images", TASK_PATTERNS, per_class, size=400, seed=0)
        build_data(folder, root / "shards", validation_fraction=0.9, workers=WORKERS)
        ours = incept.nets.inception_v3(aux_logits=False).eval()
        reference = torchvision.models.inception_v3(weights=None, aux_logits=False,
                                                    init_weights=False).eval()  # fmt: skip
        precision = measured_precision(torch.device("cpu"))
        ours_rate = incept_eval(root / "shards", ours, precision)
        reference_rate = torchvision_eval(folder, reference)
        print(f"evaluation: incept {ours_rate:.2f} img/s ({precision}, channels_last), "
              f"torchvision reference {reference_rate:.2f} img/s (fp32): "
              f"{ours_rate / reference_rate:.2f}x")  # fmt: skip

        image = next(folder.rglob("*.jpg"))
        names = [str(i) for i in range(1000)]
        predictor = Predictor(ours, names, 299, "inception_v3", None, torch.device("cpu"))
        preprocess = transforms.Compose([
            transforms.Resize(342), transforms.CenterCrop(299), transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ])  # fmt: skip
        ours_times, reference_times = [], []
        for _ in range(args.repeats):
            started = time.perf_counter()
            list(classify_files([str(image)], predictor, top_k=5, workers=1))
            ours_times.append(time.perf_counter() - started)
            started = time.perf_counter()
            with torch.inference_mode():
                with Image.open(image) as picture:
                    batch = preprocess(picture.convert("RGB")).unsqueeze(0)
                torch.softmax(reference(batch), 1).topk(5)
            reference_times.append(time.perf_counter() - started)
        ours_ms = statistics.median(ours_times) * 1000
        reference_ms = statistics.median(reference_times) * 1000
        print(f"classify one image: incept {ours_ms:.0f} ms, torchvision reference "
              f"{reference_ms:.0f} ms: {reference_ms / ours_ms:.2f}x faster")  # fmt: skip


if __name__ == "__main__":
    main()
