"""Issue 16's property test: every command's flags and every recipe key, given out-of-range,
wrong-type and hostile values, end in one line on stderr and a non-zero exit, never a
traceback, and write nothing outside the folders the command was given to write.

The flags are read from the parsers themselves, so a new flag is fuzzed without a change
here. Each example runs `incept.cli.main` in this process, inside an empty scratch folder,
against data and checkpoints that do not exist (so a value that happens to be valid still
ends the command at once); `summary`, which needs neither, may succeed.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incept.cli import build_parser, main
from incept.train.recipe import RANGES, RECIPES_DIR

# Commands whose valid values would do real work for minutes (demo) are left out.
COMMANDS = [
    "summary",
    "train",
    "eval",
    "build-data",
    "build-imagenet",
    "classify",
    "export",
    "serve",
]
# Where a command may write: these flags' (and positionals') values, and what lies under them.
OUTPUT_DESTS = {"train_dir", "out", "output", "output_dir", "report", "diagram"}
HOSTILE = [
    "nan", "inf", "-inf", "-1", "0", "1e309", "99999999999999999999", "-99999999999999999999",
    "", " ", "abc", "0x10", "1.5", "\udcff\udcfe", "caf\udce9", "..", "{file}", "{dir}",
    "{missing}", "{missing}/deeper", "{file}/under",
]  # fmt: skip
TOML_HOSTILE = ["nan", "inf", "-inf", "-1", "0", "-0.5", "1e308", "9223372036854775807", "1.5",
                '"text"', "true", "[]", '""']  # fmt: skip
NOT_FUZZED = {"--help", "--host"}  # --host 0.0.0.0's warning is a second line by design


def _actions(command: str) -> list[argparse.Action]:
    parser = build_parser(only=command)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [a for a in sub.choices[command]._actions if not isinstance(a, argparse._HelpAction)]


def _base_argv(command: str, scratch: Path) -> list[str]:
    """The command with its required arguments: outputs in scratch/out, inputs missing."""
    argv = [command]
    for action in _actions(command):
        if not action.required and action.option_strings:
            continue
        if action.nargs == "?" or action.nargs == "*":
            continue
        output = action.dest in OUTPUT_DESTS
        value = str(scratch / ("out" if output else "missing") / action.dest)
        if action.dest == "out":
            value += ".onnx"
        argv += [value] if not action.option_strings else [action.option_strings[0], value]
    return argv


def _fill(value: str, scratch: Path) -> str:
    return value.format(
        file=scratch / "a_file.txt", dir=scratch / "a_dir", missing=scratch / "nothing"
    )


def _snapshot(root: Path) -> dict[str, bytes | None]:
    found = {}
    for path in root.rglob("*"):
        found[str(path)] = path.read_bytes() if path.is_file() else None
    return found


def _check(argv: list[str], scratch: Path, capsys, may_succeed: bool) -> None:
    before = _snapshot(scratch)
    allowed = [
        Path(argv[i + 1])
        for i, word in enumerate(argv[:-1])
        if word.startswith("--") and word[2:].replace("-", "_") in OUTPUT_DESTS
    ] + [scratch / "out"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err, (argv, err)
    if stop.value.code in (0, None):
        assert may_succeed, (argv, err)
    else:
        assert len(err.splitlines()) == 1, (argv, err)
    after = _snapshot(scratch)
    changed = [p for p in set(before) | set(after) if before.get(p, 0) != after.get(p, 0)]
    outside = [
        p
        for p in changed
        if not any(
            Path(p).is_relative_to(root.resolve()) or Path(p).is_relative_to(root)
            for root in allowed
        )
    ]
    assert not outside, (argv, outside)


def _scratch() -> Path:
    scratch = Path(tempfile.mkdtemp(prefix="incept-fuzz-"))
    (scratch / "a_file.txt").write_text("not what any flag wants\n")
    (scratch / "a_dir").mkdir()
    return scratch


FLAGS = [
    (command, action)
    for command in COMMANDS
    for action in _actions(command)
    if action.option_strings and action.option_strings[0] not in NOT_FUZZED
]


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,  # the same examples in every CI run: a red run is reproducible
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    flag=st.sampled_from(FLAGS),
    value=st.sampled_from(HOSTILE),
)
def test_hostile_flag_values(flag, value, capsys, monkeypatch):
    command, action = flag
    scratch = _scratch()
    monkeypatch.chdir(scratch)
    argv = _base_argv(command, scratch)
    option = action.option_strings[0]
    words = [option] if action.nargs == 0 else [option, _fill(value, scratch)]
    if option in argv:  # a required flag: its value is the hostile one
        at = argv.index(option)
        argv[at : at + 2] = words
    else:
        argv += words
    _check(argv, scratch, capsys, may_succeed=command == "summary")


RECIPE_KEYS = sorted(
    line.split("=")[0].strip()
    for line in (RECIPES_DIR / "small_data_cpu.toml").read_text().splitlines()
    if "=" in line and not line.startswith("#")
)


@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    key=st.sampled_from(sorted(set(RECIPE_KEYS) | set(RANGES))), value=st.sampled_from(TOML_HOSTILE)
)
def test_hostile_recipe_values(key, value, capsys, monkeypatch):
    scratch = _scratch()
    monkeypatch.chdir(scratch)
    lines = [
        row for row in (RECIPES_DIR / "small_data_cpu.toml").read_text().splitlines()
        if row.split("=")[0].strip() != key
    ]  # fmt: skip
    recipe = scratch / "mine.toml"
    recipe.write_text("\n".join([*lines, f"{key} = {value}"]) + "\n")
    argv = [
        "train",
        "--data",
        str(scratch / "missing"),
        "--train-dir",
        str(scratch / "out" / "run"),
    ]
    _check([*argv, "--recipe", str(recipe)], scratch, capsys, may_succeed=False)
