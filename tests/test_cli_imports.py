"""The command line loads torch only for a command that runs: help answers at once."""

from __future__ import annotations

import subprocess
import sys

import pytest

from incept.cli import COMMANDS
from tests.subprocess_env import environment

# Prints what `incept ARGS` printed and whether torch was imported by the time it exited.
PROBE = """
import contextlib, io, sys
from incept.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main(sys.argv[1:])
    except SystemExit:
        pass
print(out.getvalue())
print("torch imported:", "torch" in sys.modules)
"""


def _probe(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args],
        capture_output=True, text=True, env=environment(), timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_importing_the_command_line_leaves_torch_out():
    code = "import incept.cli, sys; print('torch' in sys.modules)"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment()
    )
    assert done.stdout.strip() == "False", done.stderr


def test_top_level_help_lists_every_command_without_torch():
    shown = _probe("--help")
    assert shown.endswith("torch imported: False\n")
    listed = shown.split("positional arguments:")[1].split()
    for name, _, help_text in COMMANDS:
        assert name in listed and help_text.split()[0] in listed  # help lines wrap


@pytest.mark.parametrize("command", [name for name, _, _ in COMMANDS])
def test_each_commands_help_shows_its_options_without_torch(command):
    shown = _probe(command, "--help")
    assert shown.startswith(f"usage: incept {command} ")
    assert shown.endswith("torch imported: False\n")


def test_train_help_has_its_options():
    shown = _probe("train", "--help")
    assert "--train-dir" in shown and "--recipe" in shown


def test_the_package_imports_its_subpackages_on_first_use():
    code = (
        "import sys, incept; before = 'torch' in sys.modules; "
        "model = incept.nets.create('inception_v1', num_classes=3, width=0.1); "
        "print(before, incept.data.make_loader.__name__, model.config['num_classes'])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environment()
    )
    assert done.stdout.split() == ["False", "make_loader", "3"], done.stderr
