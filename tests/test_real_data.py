"""incept's defaults learn on real photographs: far above chance after a short run.

The data: tests/fixtures/fashion_mnist (made by tests/fixtures/make_real_data_fixtures.py),
Zalando article photographs from Fashion-MNIST, 28x28 grayscale, 4 classes, 100 training and
25 validation images each. The commands a new user types: `incept build-data` on the image
folder, `incept train` with no recipe (only the run's length and a smaller input, to keep the
test short), `incept eval`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.subprocess_env import environment

FIXTURE = Path(__file__).parent / "fixtures" / "fashion_mnist"
CLASSES = 4
STEPS = 60
# Until incept picks a recipe for the data when --recipe is not given, the recipe that it is
# meant to pick for a few hundred images on a CPU stands in for the defaults.
DEFAULTS: list[str] = ["--recipe", "small_data_cpu"]


def incept(*args: str) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, "-m", "incept", *args],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def test_defaults_learn_real_photographs_far_above_chance(tmp_path):
    shards, run = tmp_path / "shards", tmp_path / "run"
    incept(
        "build-data", str(FIXTURE / "train"), str(shards),
        "--validation-dir", str(FIXTURE / "validation"),
    )  # fmt: skip
    counts = json.loads((shards / "dataset.json").read_text())["splits"]
    assert (counts["train"]["records"], counts["validation"]["records"]) == (400, 100)

    trained = incept(
        "train", "--data", str(shards), "--train-dir", str(run), *DEFAULTS,
        "--max-steps", str(STEPS), "--image-size", "75", "--eval-every", "20",
    )  # fmt: skip
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    during = [e["eval_top1"] for e in evals if "eval_top1" in e]
    assert len(during) == STEPS // 20, trained.stdout[-2000:]

    result = json.loads(
        incept("eval", "--data", str(shards), "--checkpoint", str(run), "--json").stdout
    )
    assert result["examples"] == 100
    # Chance is 0.25. Measured (small_data_cpu, 60 steps at 75 px): 0.73 and 0.83 at the end
    # (seeds 1 and 2); evaluations at steps 20/40/60 of 0.32/0.60/0.73 and 0.27/0.76/0.83. A
    # run that learnt nothing sits near 0.25 (P(>= 55 of 100 | p = 0.25) < 1e-9).
    assert result["top1"] >= 0.55, (result, during)
    # Validation while training is far from chance from the second evaluation on (at step 20
    # the runs above were still at 0.27-0.32).
    assert min(during[1:]) > 1 / CLASSES + 0.15, during
