"""The environment tests give the `incept` processes they start."""

from __future__ import annotations

import os
from pathlib import Path

import incept


def environment() -> dict:
    """This process's environment with the package on the path, one thread (the same
    arithmetic in every run, and no contention) and no torchrun variables left over."""
    env = dict(os.environ)
    source_root = str(Path(incept.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
        env.pop(name, None)
    return env
