"""What a run shows and records: the console, TensorBoard, and metrics.jsonl.

On a terminal a tqdm bar carries step, loss, learning rate and images/s. Off a terminal (a log
file, CI) every logged step is one line in the original's form,

    step 120, loss = 1.37 (61.5 examples/sec; 0.520 sec/batch) lr = 0.05 top1 = 0.531

so scripts written against the original's logs keep working. Every logged step and evaluation
is also a JSON line in TRAIN_DIR/metrics.jsonl (the source of the curves drawn at the end) and
a TensorBoard scalar; sample training images (after distortion) go to TensorBoard too.
Only the first replica reports; the others get a `Progress` that does nothing.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch

from incept.evaluate import result_line
from incept.files import write_atomically

METRICS_FILE = "metrics.jsonl"


def read_metrics(train_dir: str | os.PathLike) -> list[dict]:
    path = Path(train_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trim_metrics(train_dir: str | os.PathLike, last_step: int) -> None:
    """Drops records after `last_step`: a resumed run repeats those steps and writes them again."""
    path = Path(train_dir) / METRICS_FILE
    kept = [record for record in read_metrics(train_dir) if record["step"] <= last_step]
    write_atomically(path, "".join(json.dumps(record) + "\n" for record in kept))


class Progress:
    """Console, TensorBoard and metrics.jsonl for the first replica."""

    def __init__(self, train_dir: Path, start_step: int, max_steps: int, enabled: bool):
        self.enabled = enabled
        self.bar = None
        self.writer = None
        self.metrics = None
        if not enabled:
            return
        if (train_dir / METRICS_FILE).exists():
            trim_metrics(train_dir, start_step)
        self.metrics = open(train_dir / METRICS_FILE, "a")  # noqa: SIM115 (closed by close())
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(train_dir), purge_step=start_step)
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=max_steps, initial=start_step, unit="step", dynamic_ncols=True)

    def say(self, line: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def advance(self, step: int) -> None:
        if self.bar is not None:
            self.bar.update(step - self.bar.n)

    def log_step(self, record: dict) -> None:
        """record: step, loss, lr, top1, examples_per_sec, sec_per_batch (and more)."""
        if not self.enabled:
            return
        self._write(record)
        for key in ("loss", "lr", "top1", "examples_per_sec"):
            self.writer.add_scalar(f"train/{key}", record[key], record["step"])
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{record['loss']:.3f}",
                lr=f"{record['lr']:.3g}",
                img_s=f"{record['examples_per_sec']:.1f}",
            )
        else:
            print(
                f"step {record['step']}, loss = {record['loss']:.2f} "
                f"({record['examples_per_sec']:.1f} examples/sec; "
                f"{record['sec_per_batch']:.3f} sec/batch) "
                f"lr = {record['lr']:.4g} top1 = {record['top1']:.3f}",
                flush=True,
            )

    def log_eval(self, step: int, result: dict) -> None:
        if not self.enabled:
            return
        self._write({"step": step, **{f"eval_{k}": v for k, v in result.items()}})
        for key in ("top1", "top5", "loss"):
            self.writer.add_scalar(f"eval/{key}", result[key], step)
        self.say(f"step {step}, eval: {result_line(result)}")

    def log_images(self, step: int, images: torch.Tensor, count: int = 4) -> None:
        """The first `count` training images as the network sees them ([-1, 1] to [0, 1])."""
        if not self.enabled:
            return
        samples = images[:count].detach().float().cpu().add(1).div(2).clamp(0, 1)
        self.writer.add_images("train/distorted_images", samples, step)

    def _write(self, record: dict) -> None:
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self.metrics is not None:
            self.metrics.close()
