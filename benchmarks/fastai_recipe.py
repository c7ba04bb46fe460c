"""fastai's documented way to train an image classifier from scratch, on an image folder.

    python benchmarks/fastai_recipe.py --images DIR --image-size 128 --width 0.25 \
        --min-depth 8 --budget 600 --eval-every 20 [--epochs 10]

DIR holds `train/<class>/*` and `validation/<class>/*`. What a fastai user writes, with its
defaults: `ImageDataLoaders.from_folder` with `item_tfms=Resize(S)` (a random crop in training,
the centre in validation) and `batch_tfms=[*aug_transforms(), Normalize.from_stats(
*imagenet_stats)]`, a `Learner` on the network (loss, optimizer and metrics fastai's defaults:
flattened cross entropy, its Adam with decoupled weight decay 0.01), `to_channelslast()`, then
`fit_one_cycle(epochs)` at its default peak rate (1e-3; warm-up over the first 25%, cosine
down after). The network is incept's inception_v3 at the width under test, without the aux
head (fastai's loss takes one output), dropout 0.2 as incept's recipe.

`--epochs` is the one choice fastai leaves to its user: the length of the cycle. A fastai user
who can afford ten minutes picks a cycle that ends within them, so the default, 10 epochs of
the 3,000-image set, is about what fits 600 s on two cores; a cycle longer than the budget
would be cut in its warm-up.

Prints one JSON line per evaluation: {"step", "epoch", "seconds", "top1", "examples"}, seconds
since this process started, as benchmarks/reference_recipe.py does; it stops at the first
evaluation after --budget seconds. Needs fastai (`pip install fastai`; benchmarks/real_data.py
takes the Python that has it as --fastai-python).
"""

from __future__ import annotations

import argparse
import json
import time

START = time.perf_counter()

import torch  # noqa: E402  (the clock starts before the imports, as for `incept train`)
from fastai.vision.all import (  # noqa: E402
    Callback,
    CancelFitException,
    ImageDataLoaders,
    Learner,
    Normalize,
    Resize,
    accuracy,
    aug_transforms,
    imagenet_stats,
)

import incept  # noqa: E402


class EvaluateEvery(Callback):
    """Every `every` training batches: precision@1 on the validation set, one JSON line; ends
    the fit at the first evaluation past the budget."""

    order = 90  # after the optimizer step of the batch

    def __init__(self, every: int, budget: float):
        self.every, self.budget, self.step = every, budget, 0

    def after_batch(self):
        if not self.training:
            return
        self.step += 1
        if self.step % self.every:
            return
        model = self.learn.model
        model.eval()
        correct = seen = 0
        with torch.inference_mode():
            for images, labels in self.dls.valid:
                correct += (model(images).argmax(1) == labels).sum().item()
                seen += len(labels)
        model.train()
        seconds = time.perf_counter() - START
        record = {"step": self.step, "epoch": self.epoch, "seconds": seconds}
        record |= {"top1": correct / seen, "examples": seen, "loss": float(self.loss.detach())}
        print(json.dumps(record), flush=True)
        if seconds >= self.budget:
            raise CancelFitException


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", required=True, help="folder of train/ and validation/")
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--width", type=float, required=True)
    parser.add_argument("--min-depth", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=10, help="fit_one_cycle's length")
    parser.add_argument("--budget", type=float, required=True, help="seconds")
    parser.add_argument("--eval-every", type=int, required=True, help="steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    dls = ImageDataLoaders.from_folder(
        args.images, train="train", valid="validation", seed=args.seed,
        item_tfms=Resize(args.image_size),
        batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)],
        bs=args.batch_size, num_workers=args.workers, device=torch.device("cpu"),
    )  # fmt: skip
    model = incept.nets.create(
        "inception_v3",
        num_classes=len(dls.vocab),
        aux_logits=False,
        width=args.width,
        min_depth=args.min_depth,
        dropout=0.2,
    )
    learn = Learner(dls, model, metrics=accuracy, cbs=EvaluateEvery(args.eval_every, args.budget))
    learn.to_channelslast(use_amp=False)  # its mixed precision is fp16 for CUDA
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(args.epochs)


if __name__ == "__main__":
    main()
