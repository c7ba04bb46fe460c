"""torchvision's reference classification recipe as a plain PyTorch loop, on an image folder.

    python benchmarks/reference_recipe.py --train DIR --validation DIR --image-size 128 \
        --width 0.25 --min-depth 8 --budget 600 --eval-every 50

What torchvision's references/classification/train.py does with its documented defaults, in one
process: SGD with momentum 0.9, weight decay 1e-4 on every parameter, learning rate 0.1 for
8 GPUs x 32 images scaled linearly to the batch used (32 in one process: 0.0125), StepLR every
30 epochs by 0.1, plain cross entropy (no label smoothing), fp32. Its presets: training
RandomResizedCrop(S) (bilinear) + horizontal flip; evaluation Resize(S * 342 / 299) +
CenterCrop(S), the inception_v3 ratio of its docs (342/299); both normalised by ImageNet's
mean and std. The network is incept's inception_v3 at the width under test (torchvision's own
class has no width) with torchvision's model defaults: no aux head (train.py passes the
model's output straight to the loss), dropout 0.5, batch-norm momentum 0.1.

Prints one JSON line per evaluation: {"step", "epoch", "seconds", "top1", "examples"}, seconds
since this process started; it stops at the first evaluation after --budget seconds.
"""

from __future__ import annotations

import argparse
import json
import time

START = time.perf_counter()

import torch  # noqa: E402  (the clock starts before the imports, as for `incept train`)
import torchvision  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

import incept  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
REFERENCE_LR, REFERENCE_BATCH = 0.1, 8 * 32  # train.py's documented lr for 8 x 32 images


def presets(size: int) -> tuple[v2.Compose, v2.Compose]:
    tail = [v2.PILToTensor(), v2.ToDtype(torch.float, scale=True), v2.Normalize(MEAN, STD)]
    train = v2.Compose(
        [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip(0.5), *tail]
    )
    evaluation = v2.Compose(
        [v2.Resize(round(size * 342 / 299), antialias=True), v2.CenterCrop(size), *tail]
    )
    return train, evaluation


def evaluate(model: torch.nn.Module, loader) -> tuple[float, int]:
    model.eval()
    correct = seen = 0
    with torch.inference_mode():
        for images, labels in loader:
            correct += (model(images).argmax(1) == labels).sum().item()
            seen += len(labels)
    model.train()
    return correct / seen, seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True)
    parser.add_argument("--validation", required=True)
    parser.add_argument("--image-size", type=int, required=True)
    parser.add_argument("--width", type=float, required=True)
    parser.add_argument("--min-depth", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget", type=float, required=True, help="seconds")
    parser.add_argument("--eval-every", type=int, required=True, help="steps")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    train_tf, eval_tf = presets(args.image_size)
    train_set = torchvision.datasets.ImageFolder(args.train, train_tf)
    val_set = torchvision.datasets.ImageFolder(args.validation, eval_tf)
    train_loader = torch.utils.data.DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
        drop_last=False, persistent_workers=args.workers > 0,
    )  # fmt: skip
    val_loader = torch.utils.data.DataLoader(
        val_set, batch_size=args.batch_size, num_workers=args.workers
    )
    model = incept.nets.create(
        "inception_v3",
        num_classes=len(train_set.classes),
        aux_logits=False,
        width=args.width,
        min_depth=args.min_depth,
        dropout=0.5,
        bn_momentum=0.1,
    )
    lr = REFERENCE_LR * args.batch_size / REFERENCE_BATCH
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    criterion = torch.nn.CrossEntropyLoss()

    step, epoch = 0, 0
    model.train()
    while True:
        for images, labels in train_loader:
            loss = criterion(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % args.eval_every == 0:
                top1, seen = evaluate(model, val_loader)
                seconds = time.perf_counter() - START
                record = {"step": step, "epoch": epoch, "seconds": seconds, "top1": top1}
                print(json.dumps({**record, "examples": seen, "loss": loss.item()}), flush=True)
                if seconds >= args.budget:
                    return
        epoch += 1
        scheduler.step()  # train.py steps its scheduler once an epoch


if __name__ == "__main__":
    main()
