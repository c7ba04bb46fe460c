"""Issue 16's image folders: symbolic-link loops, FIFOs, devices, huge and non-UTF-8-named
files, hidden files, labels files in Latin-1 or with a BOM, an interrupted build. Each goes
through the command a user runs and must end in records and listed skips, or one error line.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from incept.classify import read_image_file
from incept.cli import main
from incept.data.example import decode_example
from incept.data.images import ImageError
from incept.data.sources import open_source
from incept.data.tfrecord import iter_records
from tests.subprocess_env import environment


def jpeg(seed: int, size=(24, 18)) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    return buffer.getvalue()


def photos(root: Path, classes=("red", "blue"), per_class=10) -> Path:
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.jpg").write_bytes(jpeg(100 * c + i))
    return root


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: a FIFO opened for reading blocks until a writer comes."""

    def stop(*_):
        raise TimeoutError(f"still running after {seconds} s: something blocked")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def build(capsys, source: Path, out: Path, *flags: str) -> tuple[int, dict | None, str]:
    """`incept build-data` in this process: exit status, dataset.json, stderr."""
    with deadline(120), pytest.raises(SystemExit) as exit_info:
        main(["build-data", str(source), str(out), "--workers", "1", *flags])
    err = capsys.readouterr().err
    info_file = out / "dataset.json"
    info = json.loads(info_file.read_text()) if info_file.exists() else None
    return exit_info.value.code, info, err


def recorded(info: dict) -> dict[str, str]:
    return {name: subset for subset, names in info["records"].items() for name in names}


def skipped(info: dict) -> dict[str, str]:
    return {entry["file"]: entry["reason"] for entry in info["skipped"]}


def test_a_symlink_loop_lists_each_image_once_and_none_in_two_splits(tmp_path, capsys):
    # Issue 16, item 1: `ln -s . photos/red/self` made 20 images 378 train + 42 validation.
    source = photos(tmp_path / "photos")
    (source / "red" / "self").symlink_to(".")
    (source / "blue" / "up").symlink_to("..")
    (source / "blue" / "red_again").symlink_to("../red")
    (source / "red" / "0_again.jpg").symlink_to("0.jpg")
    os.link(source / "blue" / "0.jpg", source / "blue" / "hard_link.jpg")
    status, info, err = build(capsys, source, tmp_path / "out")
    assert status == 0 and "Traceback" not in err
    names = recorded(info)
    assert sorted(names) == sorted(f"{c}/{i}.jpg" for c in ("red", "blue") for i in range(10))
    assert info["splits"]["train"]["records"] + info["splits"]["validation"]["records"] == 20
    reasons = skipped(info)
    assert reasons == {
        "red/self": "reached again by a link: the same folder as red",
        "blue/up": "reached again by a link: the same folder as .",
        "blue/red_again": "reached again by a link: the same folder as red",
        "red/0_again.jpg": "reached again by a link: the same file as red/0.jpg",
        "blue/hard_link.jpg": "reached again by a link: the same file as blue/0.jpg",
    }
    # Training straight from the folder lists the same files, split the same way.
    for subset in ("train", "validation"):
        source_names = open_source(source, subset)
        listed = {source_names.read(i).name for i in range(len(source_names))}
        assert listed == {name for name, where in names.items() if where == subset}


def test_a_validation_folder_sharing_files_with_the_source_holds_none_of_them(tmp_path, capsys):
    source = photos(tmp_path / "photos")
    held_out = photos(tmp_path / "held_out", per_class=2)
    (held_out / "red" / "linked.jpg").symlink_to(source / "red" / "3.jpg")
    (held_out / "blue" / "more").symlink_to(source / "blue")
    status, info, _ = build(capsys, source, tmp_path / "out", "--validation-dir", str(held_out))
    assert status == 0
    names = recorded(info)
    assert names["red/3.jpg"] == "train" and "red/linked.jpg" not in names
    assert skipped(info)["red/linked.jpg"].startswith(
        f"reached again by a link: the same file as {source}/red/3.jpg"
    )
    assert skipped(info)["blue/more"].startswith(
        f"reached again by a link: the same folder as {source}/blue"
    )
    assert info["splits"]["validation"]["records"] == 4


def test_fifos_devices_and_huge_files_are_skipped_unread_with_the_reason(tmp_path, capsys):
    # Issue 16, item 3: a FIFO hung build-data and classify; /dev/zero and a 20 GB sparse
    # file were read into memory.
    source = photos(tmp_path / "photos")
    os.mkfifo(source / "red" / "pipe.jpg")
    (source / "red" / "zero.jpg").symlink_to("/dev/zero")
    (source / "blue" / "dangling.jpg").symlink_to("nowhere.jpg")
    with open(source / "blue" / "huge.jpg", "wb") as sparse:
        sparse.truncate(20 * 2**30)
    (source / "blue" / "big.jpg").write_bytes(jpeg(7, size=(1200, 1000)))
    status, info, err = build(capsys, source, tmp_path / "out", "--max-file-mb", "0.1")
    assert status == 0 and "Traceback" not in err
    reasons = skipped(info)
    assert reasons["red/pipe.jpg"] == "not a regular file (a FIFO)"
    assert reasons["red/zero.jpg"] == "not a regular file (a character device)"
    assert reasons["blue/dangling.jpg"] == "broken symbolic link"
    assert reasons["blue/huge.jpg"] == (
        f"too large a file: {20 * 2**30:,} bytes, the limit is 104,857 (--max-file-mb)"
    )
    big = (source / "blue" / "big.jpg").stat().st_size
    assert big > 104_857 and reasons["blue/big.jpg"].startswith(f"too large a file: {big:,}")
    assert len(recorded(info)) == 20 and info["max_file_bytes"] == 104_857
    # The folder as training data, and classify, refuse them the same way without blocking.
    with deadline(60):
        assert len(open_source(source, "train")) + len(open_source(source, "validation")) == 21
        for name, reason in (("red/pipe.jpg", "a FIFO"), ("red/zero.jpg", "character device")):
            with pytest.raises(ImageError, match=reason):
                read_image_file(source / name, 75)


def test_names_that_are_not_utf8_are_recorded_as_the_filesystem_gives_them(tmp_path, capsys):
    # Issue 16, item 4: such a name aborted build-data with a traceback and a partial shard.
    source = photos(tmp_path / "photos")
    root = os.fsencode(source)
    os.mkdir(root + b"/caf\xe9")  # Latin-1 for "café"
    for i in range(3):
        with open(root + b"/caf\xe9/\xff%d.jpg" % i, "wb") as file:
            file.write(jpeg(50 + i))
    out = tmp_path / "out"
    status, info, err = build(capsys, source, out, "--validation-fraction", "0")
    assert status == 0 and "Traceback" not in err
    assert info["classes"] == ["blue", "caf\udce9", "red"]  # surrogate escapes: bytes kept
    assert (out / "labels.txt").read_bytes() == b"blue\ncaf\xe9\nred\n"
    records = [decode_example(data) for data in iter_records(out / "train-00000-of-00001")]
    named = {r["image/filename"][0]: r["image/class/text"][0] for r in records}
    assert {name for name in named if name.startswith(b"caf")} == {
        b"caf\xe9/\xff%d.jpg" % i for i in range(3)
    }
    assert named[b"caf\xe9/\xff0.jpg"] == b"caf\xe9"
    assert len(records) == 23


def test_labels_files_in_latin1_give_one_line_and_a_bom_is_dropped(tmp_path, capsys):
    source = photos(tmp_path / "photos", classes=("rosé", "blue"), per_class=3)
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("blue\nrosé\n".encode("latin-1"))
    status, info, err = build(capsys, source, tmp_path / "out", "--labels-file", str(latin1))
    assert status == 2 and info is None
    assert err == (
        f"incept build-data: error: labels file {latin1} is not UTF-8 text (byte 0xe9 on "
        "line 2); save it as UTF-8\n"
    )
    with_bom = tmp_path / "bom.txt"
    with_bom.write_bytes("\ufeffrosé\r\nblue\r\n".encode())  # as Windows Notepad saves it
    status, info, err = build(capsys, source, tmp_path / "out", "--labels-file", str(with_bom))
    assert status == 0 and info["classes"] == ["rosé", "blue"]


def test_hidden_files_are_listed_as_skipped(tmp_path, capsys):
    source = photos(tmp_path / "photos", per_class=3)
    (source / "red" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (source / "red" / "._0.jpg").write_bytes(jpeg(9))  # macOS resource fork
    (source / "blue" / ".thumbnails").mkdir()
    (source / "blue" / ".thumbnails" / "0.jpg").write_bytes(jpeg(10))
    (source / ".git").mkdir()
    status, info, _ = build(capsys, source, tmp_path / "out")
    assert status == 0
    assert skipped(info) == {
        "red/.DS_Store": "hidden file",
        "red/._0.jpg": "hidden file",
        "blue/.thumbnails": "hidden folder",
        ".git": "hidden folder",
    }
    assert len(recorded(info)) == 6


def test_the_pixel_limit_flag_skips_larger_images_naming_the_flag(tmp_path, capsys):
    source = photos(tmp_path / "photos", per_class=3)
    (source / "red" / "wide.jpg").write_bytes(jpeg(11, size=(300, 200)))
    status, info, _ = build(capsys, source, tmp_path / "out", "--max-image-pixels", "10000")
    assert status == 0 and info["max_image_pixels"] == 10_000
    assert skipped(info) == {
        "red/wide.jpg": "too large: 300x200 pixels exceeds the limit of 10,000 "
        "(decompression bomb guard, set by --max-image-pixels)"
    }
    for flag, value in (("--max-image-pixels", "0"), ("--max-file-mb", "nan")):
        status, _, err = build(capsys, source, tmp_path / "other", flag, value)
        assert status == 2 and err.count("\n") == 1 and flag in err


def test_ctrl_c_stops_build_data_with_one_line_and_status_130(tmp_path):
    # Issue 16, item 11: workers printed their own KeyboardInterrupt tracebacks.
    source = photos(tmp_path / "photos", per_class=300)
    out = tmp_path / "out"
    process = subprocess.Popen(
        [sys.executable, "-m", "incept", "build-data", str(source), str(out)]
        + ["--workers", "2", "--train-shards", "40"],
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, as a terminal's foreground job
        # A terminal's job gets SIGINT's default action even when these tests run in the
        # background, whose shell ignores it (a child would inherit that and never stop).
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    try:
        started = time.monotonic()
        while not any(out.glob(".incept-index/*.build.json")):  # a shard done: workers busy
            assert process.poll() is None and time.monotonic() - started < 120
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C sends: every process of the group
        stdout, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130
    assert stderr == "incept build-data: interrupted\n" and stdout == ""
    assert not (out / "dataset.json").exists()  # not a complete set


@pytest.mark.parametrize("command", ["classify", "serve", "build-data", "train", "eval"])
@pytest.mark.parametrize("value", ["0", "178956971"])
def test_every_command_takes_the_one_pixel_limit_flag_in_one_range(
    tmp_path, capsys, command, value
):
    checkpoint = ["--checkpoint", str(tmp_path / "none")]
    given = {
        "classify": ["x.jpg", *checkpoint],
        "serve": checkpoint,
        "build-data": [str(tmp_path), str(tmp_path / "o")],
        "train": ["--data", str(tmp_path), "--train-dir", str(tmp_path / "run")],
        "eval": ["--data", str(tmp_path), *checkpoint],
    }
    argv = [command, *given[command], "--max-image-pixels", value]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err == (
        f"incept {command}: error: --max-image-pixels must be in 1..178,956,970 (Pillow's own "
        f"limit), got {int(value):,}\n"
    )
