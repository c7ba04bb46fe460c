"""Atomic writes: permissions from the umask, nothing left by a failure, a durable rename."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import torch

from incept.data.tfrecord import write_records
from incept.files import AtomicFile, write_atomically
from incept.train.curves import draw_curves
from incept.train.progress import METRICS_FILE, read_metrics, trim_metrics
from incept.weights.checkpoint import save_checkpoint


@pytest.fixture
def umask():
    """Sets the process umask for one test, then puts the previous one back."""
    previous = os.umask(0o022)
    yield lambda value: os.umask(value)
    os.umask(previous)


def _metrics(train_dir: Path) -> None:
    lines = [{"step": s, "loss": 2.0 / s, "top1": 0.1 * s, "lr": 0.1} for s in (1, 2, 3)]
    (train_dir / METRICS_FILE).write_text("".join(json.dumps(line) + "\n" for line in lines))


def _write_each_kind(folder: Path) -> list[Path]:
    """One file of every kind incept writes through the helper; returns their paths."""
    write_atomically(folder / "plain.json", "{}\n")
    write_records(folder / "train-00000-of-00001", [b"a record"])
    checkpoint = save_checkpoint(
        folder / "run", 1, {"w": torch.ones(2)}, {"step": 1}, {}, ema_state={"w": torch.ones(2)}
    )
    _metrics(folder)
    trim_metrics(folder, 2)
    assert [line["step"] for line in read_metrics(folder)] == [1, 2]
    draw_curves(folder)
    return [
        folder / "plain.json",
        folder / "train-00000-of-00001",
        folder / METRICS_FILE,
        folder / "curves.png",
        *sorted(checkpoint.iterdir()),
    ]


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_take_their_mode_from_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    written = _write_each_kind(tmp_path)
    assert len(written) == 8  # the four checkpoint files included
    modes = {path.name: oct(stat.S_IMODE(path.stat().st_mode)) for path in written}
    assert modes == {path.name: oct(mode) for path in written}


def test_a_failure_mid_write_leaves_neither_file_nor_temporary_file(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError, match="disk on fire"), AtomicFile(target) as file:
        file.write(b"half of it")
        assert len(list(tmp_path.iterdir())) == 1  # the temporary file, under another name
        raise RuntimeError("disk on fire")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_keeps_the_previous_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "labels.txt"
    write_atomically(target, "old\n")

    def fails(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fails)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(target, "new\n")
    assert [p.name for p in tmp_path.iterdir()] == ["labels.txt"]
    assert target.read_text() == "old\n"


def test_a_failing_record_stream_leaves_no_shard(tmp_path):
    def records():
        yield b"one"
        raise ValueError("unreadable image")

    with pytest.raises(ValueError, match="unreadable image"):
        write_records(tmp_path / "train-00000-of-00001", records())
    assert list(tmp_path.iterdir()) == []


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    target = tmp_path / "dataset.json"
    synced = []
    real_fsync = os.fsync

    def recording_fsync(descriptor):
        info = os.fstat(descriptor)
        synced.append((stat.S_ISDIR(info.st_mode), info.st_ino, target.exists()))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    write_atomically(target, '{"classes": 3}\n')
    folder = tmp_path.stat().st_ino
    file_syncs = [entry for entry in synced if not entry[0]]
    assert file_syncs == [(False, target.stat().st_ino, False)]  # the data, before the rename
    assert synced[-1] == (True, folder, True)  # the folder, once the new name is in it


def test_a_fixed_temporary_name_overwrites_a_killed_writers_leftover(tmp_path):
    target = tmp_path / "train-00000-of-00001"
    (tmp_path / ".train-00000-of-00001.partial").write_bytes(b"x" * 100)
    with AtomicFile(target, temporary=".train-00000-of-00001.partial") as file:
        file.write(b"new")
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
    assert target.read_bytes() == b"new"


def test_unique_temporary_names_let_two_writers_share_a_destination(tmp_path):
    target = tmp_path / "index.npz"
    first, second = AtomicFile(target), AtomicFile(target)
    assert first.temporary != second.temporary
    first.write(b"first")
    second.write(b"second")
    first.commit()
    second.commit()
    assert target.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == [target.name]
