"""Throughput of `incept serve` under concurrent load, against one request at a time.

Starts `incept serve` in a child process on a free loopback port (a checkpoint of a randomly
initialised Inception-v3 at --width/--image-size, or --checkpoint), then POSTs the same JPEG
(640 x 480, as a phone photo downscaled for the web) to /v1/classify:
- sequentially, one request at a time on one keep-alive connection;
- with --concurrency clients at once (one keep-alive connection each), --requests in all,
  twice: with the server's batching (--max-batch) and with batches of 1, so the gain from
  batching is told apart from the gain from overlapping decoding with the model.
Every answer must be a 200 with predictions; the run stops at --time-limit seconds.

    python benchmarks/serve_load.py [--requests 200] [--concurrency 16] [--width 1.0]
        [--image-size 299] [--max-batch 16] [--checkpoint PATH]

Prints requests/s of each phase and the ratio concurrent / sequential (BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Load:
    requests: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def photo_jpeg(width: int = 640, height: int = 480) -> bytes:
    """A deterministic photo-like JPEG: smooth gradients with some texture."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * 200, y / height * 180, (x + y) / (width + height) * 160], -1)
    texture = rng.normal(0, 12, (height, width, 3))
    pixels = np.clip(base + texture + 30, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", quality=90)
    return out.getvalue()


def post_image(connection: http.client.HTTPConnection, body: bytes) -> str | None:
    """One classify request; None when it succeeded, else what went wrong."""
    try:
        connection.request(
            "POST", "/v1/classify", body=body, headers={"Content-Type": "image/jpeg"}
        )
        response = connection.getresponse()
        payload = response.read()
    except (OSError, http.client.HTTPException) as error:
        connection.close()  # reconnects on the next request
        return f"{type(error).__name__}: {error}"
    if response.status != 200:
        return f"HTTP {response.status}: {payload[:200]!r}"
    if not json.loads(payload).get("top"):
        return f"no predictions in {payload[:200]!r}"
    return None


def run_load(
    base_url: str, body: bytes, requests: int, concurrency: int, time_limit: float
) -> Load:
    """`requests` POSTs from `concurrency` clients at once, stopping at `time_limit` seconds."""
    address = urlsplit(base_url)
    load = Load()
    lock = threading.Lock()
    deadline = time.monotonic() + time_limit

    def client() -> None:
        connection = http.client.HTTPConnection(address.hostname, address.port, timeout=60)
        try:
            while time.monotonic() < deadline:
                with lock:
                    if load.requests >= requests:
                        return
                    load.requests += 1
                problem = post_image(connection, body)
                if problem:
                    with lock:
                        load.errors.append(problem)
        finally:
            connection.close()

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    load.seconds = time.perf_counter() - start
    return load


def save_random_checkpoint(folder: Path, width: float, image_size: int) -> Path:
    import torch

    from incept import nets
    from incept.weights.checkpoint import save_checkpoint

    torch.manual_seed(0)
    model = nets.create("inception_v3", num_classes=1000, width=width)
    meta = {
        "model": "inception_v3",
        "model_kwargs": {k: v for k, v in model.config.items() if k != "model"},
        "class_names": [f"class {i}" for i in range(1000)],
        "image_size": image_size,
        "recipe": {},
    }
    save_checkpoint(folder, 0, model.state_dict(), {}, meta)
    return folder


def start_server(checkpoint: Path, max_batch: int, max_wait_ms: float) -> tuple:
    """`incept serve` on a free port; (process, base URL)."""
    command = [
        sys.executable, "-m", "incept", "serve", "--checkpoint", str(checkpoint), "--port", "0",
        "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--max-queue", "256",
        # Every client here has the one address 127.0.0.1: the per-address limit would cap them.
        "--max-uploads", "256", "--max-uploads-per-client", "256",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    line = process.stdout.readline()  # "serving ... on http://127.0.0.1:PORT/"
    if "http://" not in line:
        process.kill()
        raise SystemExit(f"the server did not start: {line!r}")
    url = line.rsplit(" ", 1)[1].strip().rstrip("/")
    address = urlsplit(url)
    for _ in range(300):  # uvicorn answers shortly after the line
        try:
            connection = http.client.HTTPConnection(address.hostname, address.port, timeout=5)
            connection.request("GET", "/healthz")
            if connection.getresponse().status == 200:
                return process, url
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not answer /healthz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--sequential-requests", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per phase")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--image-size", type=int, default=299)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--checkpoint", help="serve this instead of a random Inception-v3")
    args = parser.parse_args()

    body = photo_jpeg()
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = args.checkpoint or save_random_checkpoint(
            Path(folder), args.width, args.image_size
        )
        phases = [
            ("sequential", args.max_batch, args.sequential_requests, 1),
            ("concurrent, batched", args.max_batch, args.requests, args.concurrency),
            ("concurrent, batch 1", 1, args.requests, args.concurrency),
        ]
        results = {}
        for name, max_batch, requests, concurrency in phases:
            process, url = start_server(checkpoint, max_batch, args.max_wait_ms)
            try:
                run_load(url, body, min(requests, 2 * concurrency), concurrency, 60)  # warm-up
                load = run_load(url, body, requests, concurrency, args.time_limit)
            finally:
                process.terminate()
                process.wait(timeout=30)
            results[name] = load
            print(
                f"{name:20s} {load.requests:4d} requests in {load.seconds:6.2f} s: "
                f"{load.per_second:7.2f} requests/s, {len(load.errors)} errors",
                flush=True,
            )
            for problem in load.errors[:5]:
                print(f"    {problem}")
    sequential = results["sequential"].per_second
    model = args.checkpoint or f"inception_v3 width {args.width} at {args.image_size} px"
    print(
        f"model: {model}, {os.cpu_count()} CPUs; --concurrency {args.concurrency}, "
        f"--max-batch {args.max_batch}, --max-wait-ms {args.max_wait_ms}"
    )
    for name in ("concurrent, batched", "concurrent, batch 1"):
        print(f"throughput ratio {name} / sequential: {results[name].per_second / sequential:.2f}")
    if any(load.errors for load in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
