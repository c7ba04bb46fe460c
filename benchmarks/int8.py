"""int8 evaluation against torchvision's reference eval recipe and incept's default precision,
the same network weights, on real photographs, in one run.

    apt-get install dataset-fashion-mnist      # the data (Debian; see fashion_mnist.py)
    python benchmarks/int8.py [--checkpoint RUN] [--steps 60] [--image-size 128]
        [--train-per-class 100] [--val-per-class 100] [--calibration-images 256]

The data: the first --train-per-class images of each Fashion-MNIST class of its training split
and the first --val-per-class of its test split, an image folder turned into shards by
`incept build-data`. The model: full-width Inception-v3 (torchvision's architecture, so the
same weights run in both), trained by `incept train` for --steps at --image-size with the
defaults a new user gets, unless --checkpoint names a run to reuse (of 10 classes).

Three evaluations of the validation images, each timed over its pass (decode included, 2
loader workers each; model loading and calibration outside the time):
- torchvision's reference eval recipe: ImageFolder (PIL), Resize(S / 0.875), CenterCrop(S),
  ToTensor, Normalize (ImageNet mean and std), torchvision's inception_v3 with incept's weights
  loaded (transform_input=True, which turns that normalisation into the [-1, 1] the weights
  were trained on), fp32, eager, inference_mode;
- incept eval's default precision (`--precision auto` resolved), channels_last, make_loader;
- incept int8: the int8 model (incept.quantize.build_int8, calibrated on the first
  --calibration-images training images) run by onnxruntime, through make_loader and evaluate.
Prints each arm's img/s and precision @ 1, the ratios, and int8's change against fp32.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fashion_mnist  # noqa: E402  (benchmarks/ is not a package)

WORKERS = 2
BATCH = 50


def make_data(work: Path, args) -> tuple[Path, Path]:
    """(the shards, the validation image folder)."""
    train_dir, val_dir, shards = work / "train", work / "validation", work / "shards"
    if not shards.exists():
        fashion_mnist.write_folder(train_dir, "train", args.train_per_class, source=args.source)
        fashion_mnist.write_folder(val_dir, "t10k", args.val_per_class, source=args.source)
        subprocess.run(
            ["incept", "build-data", str(train_dir), str(shards), "--validation-dir",
             str(val_dir)], check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    return shards, val_dir


def train(shards: Path, run: Path, args) -> None:
    command = [
        "incept", "train", "--data", str(shards), "--train-dir", str(run), "--width", "1.0",
        "--image-size", str(args.image_size), "--max-steps", str(args.steps), "--eval-every",
        "0", "--save-every", str(args.steps),
    ]  # fmt: skip
    print("training:", " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    print(f"trained in {time.perf_counter() - started:.0f} s", flush=True)


def torchvision_eval(folder: Path, state: dict, size: int) -> tuple[float, float]:
    """(img/s, precision @ 1) of torchvision's reference eval recipe with these weights."""
    import torch
    import torchvision
    from torchvision import transforms

    aux = any(name.startswith("AuxLogits.") for name in state)
    model = torchvision.models.inception_v3(
        weights=None, num_classes=state["fc.weight"].shape[0], aux_logits=aux,
        init_weights=False, transform_input=True,
    )  # fmt: skip
    model.load_state_dict(state, strict=True)
    model.eval()
    preprocess = transforms.Compose([
        transforms.Resize(int(size / 0.875)), transforms.CenterCrop(size), transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    ])  # fmt: skip
    data = torchvision.datasets.ImageFolder(folder, transform=preprocess)
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH, num_workers=WORKERS)
    started, count, hits = time.perf_counter(), 0, 0
    with torch.inference_mode():
        for images, labels in loader:
            hits += int((model(images).argmax(1) == labels).sum())
            count += len(images)
    return count / (time.perf_counter() - started), hits / count


def incept_eval(shards: Path, model, size: int, precision: str, channels_last: bool):
    """(img/s, precision @ 1) of incept.evaluate over the validation shards."""
    from incept.data import make_loader
    from incept.evaluate import evaluate
    from incept.runtime.replicas import start_replicas

    loader = make_loader(shards, "validation", training=False, batch_size=BATCH,
                         image_size=size, workers=WORKERS)  # fmt: skip
    replicas = start_replicas()
    started = time.perf_counter()
    result = evaluate(model, loader, replicas, precision, channels_last=channels_last)
    return result["examples"] / (time.perf_counter() - started), result["top1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a train dir to reuse (10 classes)")
    parser.add_argument("--steps", type=int, default=60, help="training steps (no --checkpoint)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--source", type=Path, default=fashion_mnist.DEFAULT_SOURCE)
    parser.add_argument("--work", type=Path, help="keep the data and run here")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="incept-int8-"))
    work.mkdir(parents=True, exist_ok=True)
    shards, val_dir = make_data(work, args)
    run = args.checkpoint
    if run is None:
        run = work / "run"
        if not run.exists():
            train(shards, run, args)

    import torch

    import incept
    from incept.predict import load_predictor
    from incept.quantize import OnnxModel, build_int8
    from incept.runtime.precision import resolve_precision

    size = args.image_size
    model = incept.nets.load(run)
    state = {name: value.clone() for name, value in model.state_dict().items()}
    precision = resolve_precision("auto", torch.device("cpu"))
    started = time.perf_counter()
    int8 = build_int8(load_predictor(run, device="cpu"), shards, image_size=size,
                      calibration_count=args.calibration_images, workers=WORKERS)  # fmt: skip
    built = time.perf_counter() - started
    print(f"int8 model: calibrated on {int8.calibration_images} images, built in {built:.0f} s, "
          f"{len(int8.graph) / 2**20:.1f} MiB (float {int8.float_bytes / 2**20:.1f} MiB), "
          f"top-1 agreement on them {int8.top1_agreement:.1%}", flush=True)  # fmt: skip

    arms = {}
    arms["torchvision fp32 eager"] = torchvision_eval(val_dir, state, size)
    arms[f"incept eval ({precision})"] = incept_eval(
        shards, model.to(memory_format=torch.channels_last), size, precision, True
    )
    arms["incept int8"] = incept_eval(shards, OnnxModel(int8.graph), size, "fp32", False)
    if precision != "fp32":  # the reference int8 is judged against
        arms["incept eval (fp32)"] = incept_eval(shards, model, size, "fp32", True)
    reference = arms["torchvision fp32 eager"][0]
    print(f"\nfull-width inception_v3, {size} px, {args.val_per_class * 10} validation images, "
          f"{WORKERS} loader workers; torch threads {torch.get_num_threads()}")  # fmt: skip
    for name, (rate, top1) in arms.items():
        print(f"{name:28s} {rate:8.2f} img/s  {rate / reference:5.2f}x  precision @ 1 {top1:.4f}")
    fp32_top1 = arms.get("incept eval (fp32)", arms[f"incept eval ({precision})"])[1]
    change = (arms["incept int8"][1] - fp32_top1) * 100
    print(f"int8 vs fp32 precision @ 1: {change:+.2f} points; int8 / torchvision "
          f"{arms['incept int8'][0] / reference:.2f}x (goal 3x, within 0.3 points)")  # fmt: skip


if __name__ == "__main__":
    main()
