"""How a test asserts that a command ends in a user mistake's one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from incept.cli import main


def one_error_line(capsys, argv: list[str]) -> str:
    """Runs `incept ARGV` in this process and returns its single stderr line, after checking
    that it exits non-zero without a traceback."""
    capsys.readouterr()  # what earlier calls printed is not this command's
    with pytest.raises(SystemExit) as stop:
        main([str(word) for word in argv])
    err = capsys.readouterr().err
    assert stop.value.code not in (0, None), err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    return lines[0]


def unwritable_folder(tmp_path: Path) -> Path:
    """A folder in which no file can be created: one without write permission, or, for root
    (whom permissions do not stop), /sys."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    for candidate in (folder, Path("/sys")):
        probe = candidate / f".probe-{os.getpid()}"
        try:
            probe.touch()
        except OSError:
            return candidate
        probe.unlink()
    pytest.skip("no folder here refuses new files")
