"""incept's defaults against torchvision's reference recipe and fastai on real photographs.

    apt-get install dataset-fashion-mnist      # the data (Debian; 30.9 MB, MIT/Expat)
    python benchmarks/real_data.py [--budget 600] [--train-per-class 300] [--val-per-class 100]
        [--eval-every 50] [--target 0.7] [--recipe NAME] [--out results.json]

The data: Fashion-MNIST's photographs of Zalando articles (28x28 grayscale, 10 classes; see
benchmarks/fashion_mnist.py), the first --train-per-class images of each class of its training
split for training and the first --val-per-class of each class of its test split for
validation, written as an image folder (ROOT/<class>/<file>.png) and turned into shards by
`incept build-data`, as a user would. Nothing is downloaded.

Up to three arms (--arms), one after the other, each in its own process on all cores, each
stopped at its first evaluation after --budget seconds of wall-clock time (its start-up
included):
- incept: `incept train --data SHARDS --train-dir R --eval-every N --save-every N`, no
  --recipe (the defaults a new user gets; --recipe names a stand-in), the validation
  precision@1 read from its own eval lines as they are printed;
- reference: torchvision's reference classification recipe (benchmarks/reference_recipe.py)
  on the same image folders, the same architecture at the width, minimum depth, image size
  and batch size that incept's run used, evaluated on the same validation images every N
  steps;
- fastai (`--arms ...,fastai --fastai-python PY`): fastai's documented from-scratch path,
  `Learner` + `fit_one_cycle` (benchmarks/fastai_recipe.py) on the same folders, network and
  batch, its cycle --fastai-epochs long (a cycle that ends within the budget).
Both time axes are kept: wall-clock seconds, and CPU seconds of the arm's process tree (its
data workers included), the fairer one when other work shares the cores. Prints each curve,
the time each arm took to reach --target (and 2x chance), and each peer's ratio to incept's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fashion_mnist  # noqa: E402  (benchmarks/ is not a package)

EVAL_LINE = re.compile(r"step (\d+), eval: precision @ 1 = ([0-9.]+)")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PEERS = ("incept", "reference", "fastai")
# The recipe keys the results keep: the model's shape (the reference copies it) and the rest
# of what sets how fast a run learns.
RECIPE_SHOWN = (
    "model", "width", "min_depth", "image_size", "batch_size", "optimizer", "learning_rate",
    "lr_schedule", "max_steps", "epochs", "bn_decay", "ema_decay", "label_smoothing",
)  # fmt: skip


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process `pid` and all its living descendants (and of the
    children they have waited for), from /proc."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += sum(int(v) for v in fields[11:15]) / CLOCK_TICKS  # utime stime cu cs
            for task in Path(f"/proc/{current}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue  # exited between the listing and the read
    return total


def run_arm(
    command: list[str], budget: float, clock: str, parse, log: Path, until: str = ""
) -> list[dict]:
    """Runs `command` in its own process group; `parse(line)` turns an output line into an
    evaluation record or None. Stops the arm at its first evaluation after `budget` s on
    `clock` ("seconds" or "cpu_seconds") (then
    at the next line that starts with `until`, when given: incept's checkpoint)."""
    curve, stopping = [], False
    start = time.perf_counter()
    with log.open("w") as sink:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            for line in process.stdout:
                sink.write(line)
                if stopping and line.startswith(until):
                    break
                record = parse(line)
                if record is None:
                    continue
                record.setdefault("seconds", time.perf_counter() - start)
                record["cpu_seconds"] = tree_cpu_seconds(process.pid)
                curve.append(record)
                print(f"  step {record['step']:>5}  {record['seconds']:7.1f} s  "
                      f"{record['cpu_seconds']:7.1f} cpu-s  top1 {record['top1']:.4f}",
                      flush=True)  # fmt: skip
                if record[clock] >= budget:
                    stopping = True
                    if not until:
                        break
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
            process.wait()
    return curve


def parse_incept(line: str) -> dict | None:
    match = EVAL_LINE.search(line)
    return match and {"step": int(match[1]), "top1": float(match[2])}


def parse_reference(line: str) -> dict | None:
    return json.loads(line) if line.startswith("{") else None


def first_reaching(curve: list[dict], target: float, axis: str) -> float | None:
    return next((point[axis] for point in curve if point["top1"] >= target), None)


def first_holding(curve: list[dict], target: float, axis: str) -> float | None:
    """When the curve reached `target` for good: every later evaluation stays at or above it.
    A noisy curve can touch the target once long before it learns it (a user stops a run at
    an arbitrary step, not at a lucky one); None when the last evaluation is below."""
    held = None
    for point in reversed(curve):
        if point["top1"] < target:
            break
        held = point[axis]
    return held


def recorded_recipe(train_dir: Path) -> dict:
    """The recipe incept's run followed, from the meta.json of its latest checkpoint."""
    metas = sorted(train_dir.glob("**/meta.json"), key=lambda p: p.stat().st_mtime)
    if not metas:
        sys.exit(f"incept's run left no checkpoint in {train_dir}: raise --budget")
    from incept.train.recipe import recipe_from_dict

    stored = json.loads(metas[-1].read_text())["recipe"]
    # image_size may be left out (the model's size): the recipe object resolves it.
    return {**stored, "image_size": recipe_from_dict(stored, source=str(metas[-1])).input_size}


def summarize(results: dict, targets: list[float]) -> None:
    """Prints the figures of one run (also of a saved --out file, with --summarize)."""
    classes = round(1 / results["chance"])
    shown_images = results.get("images", {})
    print(f"\nFashion-MNIST, {shown_images.get('train', '?')} training and "
          f"{shown_images.get('validation', '?')} validation images, budget "
          f"{results['budget_s']:.0f} s an arm; load average before "
          f"{results['load_average']['before'][0]:.1f}, after "
          f"{results['load_average']['after'][0]:.1f}")  # fmt: skip
    for name in PEERS:
        if name in results:
            curve = results[name]["curve"]
            best = max((p["top1"] for p in curve), default=float("nan"))
            at_chance = [p["step"] for p in curve[1:] if p["top1"] <= 1 / classes + 0.005]
            print(f"{name:>9}: {len(curve)} evaluations, best top1 {best:.4f}, "
                  f"at chance after the first: {at_chance or 'never'}")  # fmt: skip
    for target in targets:
        for when, find in (("first reaches", first_reaching), ("holds from", first_holding)):
            for axis in ("seconds", "cpu_seconds"):
                times = {n: find(results[n]["curve"], target, axis)
                         for n in PEERS if n in results}  # fmt: skip
                shown = ", ".join(f"{n} {t:.0f}" if t is not None else f"{n} not reached"
                                  for n, t in times.items())  # fmt: skip
                ratios = []
                for peer in [n for n in times if n != "incept"]:
                    if times.get("incept") is None:
                        continue
                    if times[peer] is None:
                        ratios.append(f"{peer} did not within the budget")
                    else:
                        ratios.append(f"{peer}/incept = {times[peer] / times['incept']:.2f}x")
                ratio = f"  {'; '.join(ratios)}" if ratios else ""
                print(f"top1 >= {target:.2f} {when} ({axis}): {shown}{ratio}")
                key = f"{target:.2f} {axis}" + (" held" if find is first_holding else "")
                results.setdefault("time_to_target", {})[key] = times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=600, help="seconds per arm")
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="what --budget counts: wall-clock s, or CPU s of the arm (fairer under load)",
    )  # fmt: skip
    parser.add_argument("--train-per-class", type=int, default=300)
    parser.add_argument("--val-per-class", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=50, help="steps")
    parser.add_argument("--target", type=float, default=0.7, help="precision@1 to reach")
    parser.add_argument("--recipe", help="incept recipe (default: none, incept's choice)")
    parser.add_argument(
        "--incept-flags", default="", help="more `incept train` flags, e.g. '--epochs 10'"
    )
    parser.add_argument("--source", type=Path, default=fashion_mnist.DEFAULT_SOURCE)
    parser.add_argument("--work", type=Path, help="keep data and runs here (default: temp)")
    parser.add_argument("--out", type=Path, help="write the curves and figures as JSON")
    parser.add_argument("--arms", default="incept,reference", help="any of incept,reference,fastai")
    parser.add_argument(
        "--fastai-python", default=sys.executable, help="a Python that has fastai (its arm)"
    )
    parser.add_argument("--fastai-epochs", type=int, default=10, help="its fit_one_cycle length")
    parser.add_argument(
        "--summarize", type=Path, metavar="JSON", help="print the figures of a saved --out file"
    )
    args = parser.parse_args()
    if args.summarize:
        saved = json.loads(args.summarize.read_text())
        summarize(saved, sorted({2 * saved["chance"], args.target}))
        return

    work = args.work or Path(tempfile.mkdtemp(prefix="incept-real-data-"))
    train_dir, val_dir, shards = work / "images/train", work / "images/validation", work / "shards"
    if not shards.exists():
        made = fashion_mnist.write_folder(
            train_dir, "train", args.train_per_class, source=args.source
        )
        made += fashion_mnist.write_folder(val_dir, "t10k", args.val_per_class, source=args.source)
        print(f"wrote {made} Fashion-MNIST images under {work / 'images'}", flush=True)
        subprocess.run(
            ["incept", "build-data", str(train_dir), str(shards), "--validation-dir", str(val_dir)],
            check=True,
        )
    classes = len(fashion_mnist.CLASSES)
    clock = "seconds" if args.clock == "wall" else "cpu_seconds"
    arms = args.arms.split(",")
    results = {
        "budget_s": args.budget,
        "clock": clock,
        "target": args.target,
        "chance": 1 / classes,
    }
    load_before = os.getloadavg()

    if "incept" in arms:
        run_dir = work / "incept-run"
        command = ["incept", "train", "--data", str(shards), "--train-dir", str(run_dir)]
        command += ["--eval-every", str(args.eval_every), "--save-every", str(args.eval_every)]
        command += ["--recipe", args.recipe] if args.recipe else []
        command += shlex.split(args.incept_flags)
        print("incept:", " ".join(command), flush=True)
        curve = run_arm(command, args.budget, clock, parse_incept, work / "incept.log", "saved ")
        first_line = (work / "incept.log").read_text().splitlines()[:1]
        recipe = recorded_recipe(run_dir)
        results["incept"] = {"command": command, "first_line": first_line, "curve": curve}
        results["recipe"] = {key: recipe.get(key) for key in RECIPE_SHOWN}
    if "reference" in arms:
        shape = results.get("recipe") or recorded_recipe(work / "incept-run")
        command = [sys.executable, str(HERE / "reference_recipe.py"), "--train", str(train_dir),
                   "--validation", str(val_dir), "--image-size", str(shape["image_size"]),
                   "--width", str(shape["width"]), "--min-depth", str(shape["min_depth"]),
                   "--batch-size", str(shape["batch_size"]),
                   "--budget", str(args.budget if clock == "seconds" else 1e9),
                   "--eval-every", str(args.eval_every)]  # fmt: skip
        print("reference:", " ".join(command[1:]), flush=True)
        curve = run_arm(command, args.budget, clock, parse_reference, work / "reference.log")
        results["reference"] = {"command": command[1:], "curve": curve}
    if "fastai" in arms:
        shape = results.get("recipe") or recorded_recipe(work / "incept-run")
        command = [args.fastai_python, str(HERE / "fastai_recipe.py"), "--images",
                   str(work / "images"), "--image-size", str(shape["image_size"]),
                   "--width", str(shape["width"]), "--min-depth", str(shape["min_depth"]),
                   "--batch-size", str(shape["batch_size"]), "--epochs", str(args.fastai_epochs),
                   "--budget", str(args.budget if clock == "seconds" else 1e9),
                   "--eval-every", str(args.eval_every)]  # fmt: skip
        print("fastai:", " ".join(command[1:]), flush=True)
        curve = run_arm(command, args.budget, clock, parse_reference, work / "fastai.log")
        results["fastai"] = {"command": command[1:], "curve": curve}
    results["load_average"] = {"before": load_before, "after": os.getloadavg()}

    results["images"] = {
        "train": args.train_per_class * classes,
        "validation": args.val_per_class * classes,
    }
    summarize(results, sorted({2 / classes, args.target}))
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
