"""A bounded load test on loopback: 200 requests from 16 clients at once, zero errors.

Throughput against one-request-at-a-time is printed, not asserted (timing on a shared CI
machine is no pass/fail criterion); benchmarks/serve_load.py measures it properly, with the
server in a process of its own, for BENCHMARKS.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from incept.serve import create_app, serve_in_thread

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"
REQUESTS, CONCURRENCY, SEQUENTIAL, TIME_LIMIT = 200, 16, 40, 60.0


def load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_load", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_concurrent_load_has_no_errors_and_is_batched(predictor, capsys):
    bench = load_benchmark()
    body = bench.photo_jpeg()
    app = create_app(
        predictor,
        max_batch=16,
        max_wait_ms=5,
        max_pending=CONCURRENCY,
        max_uploads_per_client=CONCURRENCY,  # every client is 127.0.0.1
    )
    with serve_in_thread(app) as url:
        sequential = bench.run_load(url, body, SEQUENTIAL, 1, TIME_LIMIT)
        batches_before = app.state.batcher.batches_run
        concurrent = bench.run_load(url, body, REQUESTS, CONCURRENCY, TIME_LIMIT)
        batches = app.state.batcher.batches_run - batches_before
    assert sequential.errors == [] and concurrent.errors == []
    assert concurrent.requests == REQUESTS, "the time limit cut the run short"
    assert batches < REQUESTS  # requests shared forward passes
    with capsys.disabled():
        print(
            f"\nserve load: sequential {sequential.per_second:.1f} requests/s, "
            f"{CONCURRENCY} concurrent {concurrent.per_second:.1f} requests/s "
            f"(x{concurrent.per_second / sequential.per_second:.2f}), "
            f"{REQUESTS / batches:.1f} images per forward pass"
        )
