"""The tour: every step of the job, run as the user would type it.

Draws two related image tasks, then runs `incept build-data`, `train` (from scratch), `eval`,
`train --init-from` (fine-tuning onto the second task, next to a from-scratch run with the
same budget), `classify` and `export`, printing each command before it runs, and ends with a
PNG report and a summary of where everything is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageDraw

from incept.demo.patterns import TASK_MORE_PATTERNS, TASK_PATTERNS, make_task
from incept.errors import UserError
from incept.files import AtomicFile, write_atomically

MARKER = ".incept-demo"
IMAGE_SIZE = 128  # pixels drawn; training crops and resizes to the recipe's size
FINETUNE_RATE = "0.0005"  # a quarter of small_data_cpu's 0.002
# (images a class, steps) for task 1 and task 2; --quick: a smoke run of the same path
FULL = {"task1": (150, 300), "task2": (40, 120)}
QUICK = {"task1": (12, 4), "task2": (8, 3)}


def _prepare(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise UserError(
                f"{out} exists and holds files that are not a previous demo's: "
                "choose an empty or new folder with --out"
            )
        shutil.rmtree(out)  # a previous demo's results: start again from nothing
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / MARKER, "made by incept demo; removed and rewritten by the next one\n")


def _incept(*args: str, capture: bool = False) -> str:
    """Runs `incept ARGS` as a user would, echoing the command; its output is shown live."""
    shown = " ".join(a if " " not in a else repr(a) for a in args)
    print(f"\n$ incept {shown}", flush=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "incept", *args]
    if capture:
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        sys.stdout.write(result.stdout)
    else:
        result = subprocess.run(command, env=env, stdout=None, stderr=None)
    if result.returncode != 0:
        if capture:
            sys.stderr.write(result.stderr)
        raise UserError(f"the demo step `incept {args[0]}` failed (exit {result.returncode})")
    return result.stdout if capture else ""


def _precision(eval_output: str) -> dict:
    return json.loads(eval_output.strip().splitlines()[-1])


def run_demo(out: str | os.PathLike, *, workers: int = 2, quick: bool = False) -> dict:
    """Runs the whole tour into `out`; returns the figures it measured."""
    sizes = QUICK if quick else FULL
    (task1_images, task1_steps), (task2_images, task2_steps) = sizes["task1"], sizes["task2"]
    started = time.monotonic()
    out = Path(out).resolve()
    _prepare(out)
    images, data, runs = out / "images", out / "data", out / "runs"

    print(f"Drawing two image tasks into {images} ...", flush=True)
    make_task(images / "patterns", TASK_PATTERNS, task1_images, size=IMAGE_SIZE, seed=1)
    make_task(images / "more_patterns", TASK_MORE_PATTERNS, task2_images, size=IMAGE_SIZE, seed=2)
    print(
        f"  task 1 'patterns': {len(TASK_PATTERNS)} classes x {task1_images} images; "
        f"task 2 'more_patterns': {len(TASK_MORE_PATTERNS)} classes x {task2_images} images"
    )

    common = ["--recipe", "small_data_cpu", "--workers", str(workers)]
    if quick:
        common += ["--width", "0.1", "--image-size", "75", "--batch-size", "8"]
    _incept(
        "build-data", str(images / "patterns"), str(data / "patterns"), "--workers", str(workers)
    )
    _incept("train", "--data", str(data / "patterns"), "--train-dir", str(runs / "patterns"),
            "--max-steps", str(task1_steps), *common)  # fmt: skip
    task1 = _precision(_incept("eval", "--data", str(data / "patterns"), "--checkpoint",
                               str(runs / "patterns"), "--json", capture=True))  # fmt: skip

    _incept(
        "build-data", str(images / "more_patterns"), str(data / "more_patterns"),
        "--validation-fraction", "0.25", "--workers", str(workers),
    )  # fmt: skip
    results = {}
    # Fine-tuning starts from good weights: a quarter of the from-scratch learning rate keeps
    # them (over four seeds, at the full rate the result swung from 0.53 to 0.83; at a
    # quarter, 0.68 to 0.80, against 0.48 from scratch, with the original's crops).
    finetune = ["--init-from", str(runs / "patterns"), "--learning-rate", FINETUNE_RATE]
    for name, extra in [("finetuned", finetune), ("scratch", [])]:
        train_dir = runs / f"more_patterns_{name}"
        _incept("train", "--data", str(data / "more_patterns"), "--train-dir", str(train_dir),
                "--max-steps", str(task2_steps), *extra, *common)  # fmt: skip
        results[name] = _precision(_incept("eval", "--data", str(data / "more_patterns"),
                                           "--checkpoint", str(train_dir), "--json",
                                           capture=True))  # fmt: skip

    samples = [sorted((images / "more_patterns" / c).iterdir())[-1] for c in TASK_MORE_PATTERNS]
    lines = _incept(
        "classify", *map(str, samples), "--checkpoint", str(runs / "more_patterns_finetuned"),
        "--json", capture=True,
    )  # fmt: skip
    predictions = [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
    onnx = out / "more_patterns.onnx"
    _incept("export", "--checkpoint", str(runs / "more_patterns_finetuned"), "--out", str(onnx))

    report = out / "report.png"
    write_report(report, runs, predictions, task1, results)
    elapsed = time.monotonic() - started
    figures = {"task1": task1, **results, "seconds": round(elapsed, 1)}
    print(
        f"\nDone in {elapsed / 60:.1f} minutes.\n"
        f"  task 1 from scratch:  precision @ 1 = {task1['top1']:.4f}\n"
        f"  task 2 fine-tuned:    precision @ 1 = {results['finetuned']['top1']:.4f}\n"
        f"  task 2 from scratch:  precision @ 1 = {results['scratch']['top1']:.4f} "
        f"(same {task2_steps} steps)\n"
        f"Everything is in {out}:\n"
        f"  images/  the drawn images     data/   the TFRecord shards\n"
        f"  runs/    checkpoints, TensorBoard logs, metrics.jsonl, curves.png per run\n"
        f"  more_patterns.onnx  the exported model   report.png  curves and sample predictions\n"
        f"Next: tensorboard --logdir {runs}"
    )
    return figures


def write_report(path: Path, runs: Path, predictions: list, task1: dict, task2: dict) -> None:
    """One PNG: each run's curves, then the classified samples with their top label."""
    panels = [Image.open(p).convert("RGB") for p in sorted(runs.glob("*/curves.png"))]
    titles = [p.parent.name for p in sorted(runs.glob("*/curves.png"))]
    width = max([p.width for p in panels] + [800])
    thumb = 160
    height = sum(p.height + 24 for p in panels) + thumb + 110
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    y = 8
    draw.text(
        (10, y),
        f"incept demo - task 1 precision@1 {task1['top1']:.3f}; task 2 fine-tuned "
        f"{task2['finetuned']['top1']:.3f} vs from scratch {task2['scratch']['top1']:.3f}",
        fill="black",
    )
    y += 20
    for title, panel in zip(titles, panels):
        draw.text((10, y), title, fill="black")
        sheet.paste(panel, (0, y + 14))
        y += panel.height + 24
    draw.text((10, y), "sample predictions (fine-tuned model)", fill="black")
    y += 16
    for index, item in enumerate(predictions):
        x = 10 + index * (thumb + 20)
        with Image.open(item["image"]) as image:
            sheet.paste(image.convert("RGB").resize((thumb, thumb)), (x, y))
        top = item.get("top", [{}])[0]
        truth = Path(item["image"]).parent.name
        text = f"{top.get('label', '?')} {top.get('probability', 0):.2f} (is {truth})"
        draw.text((x, y + thumb + 4), text, fill="black")
    with AtomicFile(path) as file:
        sheet.save(file.file, format="PNG")
