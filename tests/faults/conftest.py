"""Fixtures of the fault-injection suite: photos (good and bad), shards made by `incept
build-data`, a tiny uninterrupted training run, and ways to run, freeze and kill `incept`.

Every fault goes through the command a user runs (`python -m incept ...` in a fresh process).
To stop a process at an exact point, the freeze launcher runs that same command with a Python
audit hook (`sys.addaudithook`, no change to the package): at the N-th audited event matching
a path pattern (an `open`, `os.mkdir` or `os.rename` of the file the test is about) it touches
a marker file and stops itself with SIGSTOP; the test then does what it wants while the process
sits there, and kills it with SIGKILL.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.subprocess_env import environment

# Tiny and fast: a tenth of the channels, the smallest input, fp32 (bit-exact on any CPU),
# batches read in the main process.
TINY = [
    "--recipe", "small_data_cpu", "--width", "0.1", "--image-size", "75", "--batch-size", "4",
    "--workers", "0", "--precision", "fp32", "--eval-every", "0", "--log-every", "1",
]  # fmt: skip
# The shard plan every build of the photos uses (the kill-and-rerun test must match it).
SHARD_FLAGS = ["--train-shards", "2", "--validation-shards", "1", "--workers", "1"]

# Files of the photo folder that are not plain RGB JPEGs, by what build-data must do with them.
SKIPPED = {
    "class_0/not_an_image.jpg": "not an image",
    "class_0/truncated.jpg": "truncated",
    "class_1/empty.jpg": "empty file",
    "class_1/bomb.png": "too large",
}
REENCODED = {
    "class_1/cmyk.jpg": "JPEG CMYK",
    "class_2/sixteen_bit.png": "PNG I;16",
    "class_2/png_named.jpg": "PNG RGB",
}

_FREEZE_LAUNCHER = """
import fnmatch, os, runpy, signal, sys
event_name, pattern, nth, marker = sys.argv[1:5]
sys.argv = ["incept", *sys.argv[5:]]
seen = 0
def freeze(event, args):
    global seen
    if event != event_name or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    if not fnmatch.fnmatch(os.fsdecode(args[0]), pattern):
        return
    seen += 1
    if seen == int(nth):
        os.close(os.open(marker, os.O_WRONLY | os.O_CREAT))
        os.kill(os.getpid(), signal.SIGSTOP)
sys.addaudithook(freeze)
runpy.run_module("incept", run_name="__main__", alter_sys=True)
"""


def incept_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "incept", *map(str, args)]


def run_incept(*args, timeout: float = 240, **options) -> subprocess.CompletedProcess:
    """`python -m incept ARGS` to the end; stdout and stderr captured as text."""
    return subprocess.run(
        incept_command(*args),
        env=environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        **options,
    )


def assert_one_line_error(done: subprocess.CompletedProcess, command: str, *fragments: str):
    """The run failed with status 2 and ended with one `incept COMMAND: error:` line holding
    every fragment, and no traceback."""
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.returncode == 2, (done.returncode, done.stderr[-3000:])
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith(f"incept {command}: error: "), done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, (fragment, last)


class Frozen:
    """`python -m incept ARGS` that stops itself at the `nth` audit `event` whose first argument
    (a path) matches the glob `pattern`; see the module docstring."""

    def __init__(self, tmp_path: Path, args, *, event: str, pattern: str, nth: int = 1):
        self.marker = tmp_path / f"frozen-{time.monotonic_ns()}"
        self.log = self.marker.with_suffix(".log")
        command = [sys.executable, "-c", _FREEZE_LAUNCHER, event, pattern, str(nth)]
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [*command, str(self.marker), *map(str, args)],
                env=environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its pool workers die with it
            )

    def wait_until_frozen(self, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while not self.marker.exists():
            if self.process.poll() is not None:
                pytest.fail(f"ended before the freeze point:\n{self.log.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail(f"never reached the freeze point:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.02)

    def wait_until_stopped(self) -> None:
        """For a single-process command: returns once the process sits in SIGSTOP."""
        self.wait_until_frozen()
        stat = Path(f"/proc/{self.process.pid}/stat")
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
            if self.process.poll() is not None:
                pytest.fail(f"ended instead of stopping:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.01)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture()
def frozen(tmp_path):
    """`frozen(args, event=..., pattern=..., nth=1)`: a started `Frozen` run; whatever is left
    of each is killed when the test ends, passed or failed."""
    runs: list[Frozen] = []

    def start(args, **where) -> Frozen:
        runs.append(Frozen(tmp_path, args, **where))
        return runs[-1]

    yield start
    for run in runs:
        run.kill()


# ---------------------------------------------------------------------------------------------
# Inputs


def _png_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims another size: a decompression bomb's calling card."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 30, 30)).save(buffer, "PNG")
    data = buffer.getvalue()
    header = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + header + struct.pack(">I", zlib.crc32(header)) + data[33:]


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def make_photos(root: Path) -> Path:
    """3 classes of 12 RGB JPEGs (64x48, a dominant colour each plus noise), and the files of
    SKIPPED and REENCODED spread over the classes."""
    rng = np.random.default_rng(0)
    for c in range(3):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 90, size=(48, 64, 3), dtype=np.uint8)
            pixels[..., c] += 150
            Image.fromarray(pixels).save(folder / f"{i:02d}.jpg", quality=90)
    good = (root / "class_0" / "00.jpg").read_bytes()
    noise = Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8))
    ramp = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    files = {
        "class_0/not_an_image.jpg": b"Dear diary, today I trained a classifier.\n" * 20,
        "class_0/truncated.jpg": good[: len(good) // 2],
        "class_1/empty.jpg": b"",
        "class_1/bomb.png": _png_claiming(30_000, 30_000),
        "class_1/cmyk.jpg": _encoded(noise.convert("CMYK"), "JPEG"),
        "class_2/sixteen_bit.png": _encoded(Image.fromarray(ramp), "PNG"),
        "class_2/png_named.jpg": _encoded(noise, "PNG"),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    return make_photos(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="session")
def shards(photos, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """`incept build-data` of the photos, uninterrupted: (shard folder, the finished run)."""
    out = tmp_path_factory.mktemp("shards") / "out"
    done = run_incept("build-data", photos, out, *SHARD_FLAGS)
    assert done.returncode == 0, done.stderr
    return out, done


def train_args(data: Path, train_dir: Path, *extra: str) -> list[str]:
    """The training command of the suite: 6 steps, a checkpoint every 2 (steps 2, 4, 6)."""
    return [
        "train", "--data", str(data), "--train-dir", str(train_dir), *TINY,
        "--max-steps", "6", "--save-every", "2", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="session")
def baseline(shards, tmp_path_factory) -> Path:
    """The train dir of the suite's training command run without faults."""
    train_dir = tmp_path_factory.mktemp("baseline")
    done = run_incept(*train_args(shards[0], train_dir))
    assert done.returncode == 0, done.stderr
    return train_dir


# ---------------------------------------------------------------------------------------------
# TFRecord framing, read here independently of the package: where each record's data lies.


def record_spans(shard: Path) -> list[tuple[int, int]]:
    """(offset of the record, length of its data) for each record of a TFRecord file."""
    data, spans, offset = shard.read_bytes(), [], 0
    while offset < len(data):
        (length,) = struct.unpack_from("<Q", data, offset)
        spans.append((offset, length))
        offset += 8 + 4 + length + 4
    assert offset == len(data)
    return spans


def flip_bit(path: Path, byte: int, bit: int = 3) -> None:
    data = bytearray(path.read_bytes())
    data[byte] ^= 1 << bit
    path.write_bytes(bytes(data))
