"""Every command in docs/tutorials/*.md is checked, and run unless it says why not.

Each tutorial runs top to bottom in a workspace of its own, where a hidden set-up has put tiny
stand-ins at the paths the tutorial names (`flower_photos/`, `data/flowers`, `runs/flowers`,
the ImageNet archives, weight files: the Keras and TF-Slim ones are the TF-written fixtures).
Then every ```sh block runs in order, each command as the shell expands it:
- `incept ...` runs in this process (a fresh interpreter per command would cost seconds of
  imports), with tiny scale flags appended (SCALE_FLAGS: later flags win in argparse) and the
  recipes' min_depth set to the weight fixtures' (no flag sets it);
- `torchrun ... -m incept ...` runs as a real torchrun, with the same scale flags;
- anything else (mkdir, tar) runs in bash.
A block holding `# not run: REASON` is only checked: every `incept` and `torchrun` command in
it must parse with the real parsers (no abbreviations), its recipe and model must exist.
```python blocks run in the workspace after their upper-case size constants are replaced by
tiny ones (PYTHON_SCALE). Every inline `--flag` in the prose must be a flag of incept or
torchrun, and every `incept COMMAND: error:` line in the troubleshooting guide must be what
the command really prints when the mistake is made (PROVOCATIONS make each one).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import incept
import incept.cli
import incept.cli.train
import incept.train.settle
from incept.train.recipe import recipe_names

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = sorted((ROOT / "docs" / "tutorials").glob("*.md"))
FIXTURES = ROOT / "tests" / "fixtures" / "weights"

# The weight fixtures are Inception-v3 narrowed to width 0.05, min depth 8 (see
# tests/fixtures/make_weight_fixtures.py); every tiny model here has their shapes.
WIDTH, MIN_DEPTH = "0.05", 8
SCALE_FLAGS = {
    "train": ["--width", WIDTH, "--image-size", "75", "--batch-size", "4", "--max-steps", "2",
              "--workers", "0", "--precision", "fp32"],
    "eval": ["--workers", "0", "--batch-size", "8"],
    "build-data": ["--workers", "1"],
    "build-imagenet": ["--train-shards", "2", "--validation-shards", "1", "--workers", "1"],
}  # fmt: skip
PYTHON_SCALE = {"WIDTH": 0.05, "IMAGE_SIZE": 75, "BATCH_SIZE": 4, "STEPS": 2, "WORKERS": 0}
FLOWERS = ("daisy", "dandelion", "roses", "sunflowers", "tulips")
SYNSETS = ("n01440764", "n01443537", "n01484850")
NOT_RUN = "# not run:"


# ---------------------------------------------------------------------------------------------
# Reading the tutorials


def fenced_blocks(path: Path, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def shell_commands(block: str) -> list[str]:
    """The block's commands: continuation lines joined, blank and comment-only lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and line[0] != "#"]


def expand(command: str, cwd: Path) -> list[str]:
    """The words bash makes of `command` (quotes, globs, ~), without running it."""
    words = shlex.split(command, comments=True)
    if any(set(word) & set("|;&<>$`") for word in words):
        pytest.fail(f"runnable commands must be single simple commands: {command}")
    done = subprocess.run(
        ["bash", "-c", f"printf '%s\\0' {command}"], cwd=cwd, capture_output=True, check=True
    )
    return done.stdout.decode().split("\0")[:-1]


def strict(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The parser and its subcommands' parsers, with abbreviated flags refused."""
    parser.allow_abbrev = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                strict(sub)
    return parser


def parse_incept(argv: list[str]) -> argparse.Namespace:
    error = io.StringIO()
    try:
        with contextlib.redirect_stderr(error):
            args = strict(incept.cli.build_parser()).parse_args(argv)
    except SystemExit:
        pytest.fail(
            f"`incept {' '.join(argv)}` does not parse: {error.getvalue().strip().splitlines()[-1]}"
        )
    recipe = getattr(args, "recipe", None)
    assert recipe is None or recipe in recipe_names() or recipe.endswith(".toml"), recipe
    model = getattr(args, "model", None)
    assert model is None or model in incept.nets.names(), model
    return args


def torchrun_parser() -> argparse.ArgumentParser:
    from torch.distributed.run import get_args_parser

    return strict(get_args_parser())


def check_command(argv: list[str]) -> None:
    """An incept or torchrun command must parse; other programs must exist."""
    if argv[0] == "incept":
        parse_incept(argv[1:])
    elif argv[0] == "torchrun":
        error = io.StringIO()
        try:
            with contextlib.redirect_stderr(error):
                args = torchrun_parser().parse_args(argv[1:])
        except SystemExit:
            pytest.fail(
                f"`{' '.join(argv)}` does not parse: {error.getvalue().strip().splitlines()[-1]}"
            )
        assert args.module and args.training_script == "incept", argv
        parse_incept(args.training_script_args)
    else:
        assert shutil.which(argv[0]), f"{argv[0]} is not a program here"


# ---------------------------------------------------------------------------------------------
# Running


def with_scale(argv: list[str]) -> list[str]:
    """incept arguments (subcommand first) with the tiny scale flags appended."""
    return argv + SCALE_FLAGS.get(argv[0], [])


def run_incept(argv: list[str]) -> tuple[int, str, str]:
    """`incept ARGV` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            incept.cli.main(argv)
            status = 0
        except SystemExit as exit:
            status = exit.code if isinstance(exit.code, int) else 1
    return status, out.getvalue(), err.getvalue()


# What the tutorials promise a command prints last (an eval without --json: the original's line).
EVAL_LINE = re.compile(r"precision @ 1 = \d\.\d{4} recall @ 5 = \d\.\d{4} \[\d+ examples\]")


def check_output(argv: list[str], stdout: str) -> None:
    if argv[0] == "eval" and "--json" not in argv:
        assert EVAL_LINE.fullmatch(stdout.strip().splitlines()[-1]), stdout[-500:]


def run_command(command: str, cwd: Path) -> None:
    argv = expand(command, cwd)
    check_command(argv)
    if argv[0] == "incept":
        status, out, err = run_incept(with_scale(argv[1:]))
        assert status == 0, f"{command}\n{out[-2000:]}\n{err[-2000:]}"
        check_output(argv[1:], out)
    elif argv[0] == "torchrun":
        module = argv.index("-m")
        scaled = argv[1 : module + 2] + with_scale(argv[module + 2 :])
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", *scaled],
            cwd=cwd, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
        check_output(argv[module + 2 :], done.stdout)
    else:
        done = subprocess.run(["bash", "-c", command], cwd=cwd, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stderr}"


def scaled_python(block: str) -> str:
    """The block with its size constants (`NAME, NAME = value, value` lines) made tiny."""

    def tiny(match: re.Match) -> str:
        names = [name.strip() for name in match.group(1).split(",")]
        unknown = [name for name in names if name not in PYTHON_SCALE]
        assert not unknown, f"no tiny value for {unknown}: add it to PYTHON_SCALE"
        return f"{', '.join(names)} = {', '.join(repr(PYTHON_SCALE[n]) for n in names)}"

    return re.sub(r"^([A-Z_]+(?:, [A-Z_]+)*) = .*$", tiny, block, flags=re.M)


@pytest.fixture(scope="module", autouse=True)
def incept_as_tested():
    """incept's environment for the whole module: this checkout first on the path of the
    processes it starts, single-threaded, no torchrun variables, recipes at min_depth 8."""
    load_recipe = incept.train.settle.load_recipe
    with pytest.MonkeyPatch.context() as patch:
        python_path = [str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, python_path)))
        patch.setenv("OMP_NUM_THREADS", "1")
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "TORCHELASTIC_RUN_ID"):
            patch.delenv(name, raising=False)
        patch.setattr(
            incept.train.settle,
            "load_recipe",
            lambda source: load_recipe(source).with_overrides(min_depth=MIN_DEPTH),
        )
        yield


@pytest.fixture()
def workspace(tmp_path, monkeypatch) -> Path:
    """A folder to run a tutorial in (the working directory), with its own torch cache."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    return tmp_path


@contextlib.contextmanager
def working_directory(path: Path):
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


# ---------------------------------------------------------------------------------------------
# The stand-ins


def write_image(path: Path, colour: int, seed: int, size=(64, 48)) -> None:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 90, (size[1], size[0], 3), dtype=np.uint8)
    pixels[..., colour % 3] += 150
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def make_flower_photos(root: Path, per_class: int = 8) -> None:
    for c, name in enumerate(FLOWERS):
        for i in range(per_class):
            write_image(root / "flower_photos" / name / f"{name}_{i}.jpg", c, c * 100 + i)
    write_image(root / "photo.jpg", 2, 999)


def make_torchvision_cache(root: Path) -> None:
    """torchvision's weight file where torch's cache keeps it, narrowed like the fixtures."""
    model = incept.nets.inception_v3(width=float(WIDTH), min_depth=MIN_DEPTH)
    cache = root / "torch-home" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(model.state_dict(), cache / "inception_v3_google-0cc3c7bd.pth")


def add_to_tar(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    member = tarfile.TarInfo(name)
    member.size = len(data)
    archive.addfile(member, io.BytesIO(data))


def make_imagenet_archives(root: Path) -> None:
    """ILSVRC2012_img_train.tar (per-synset tars), _img_val.tar, the boxes, the labels file."""
    staging = root / "staging"
    staging.mkdir()
    with tarfile.open(root / "ILSVRC2012_img_train.tar", "w") as outer:
        for s, synset in enumerate(SYNSETS):
            with tarfile.open(staging / f"{synset}.tar", "w") as inner:
                for i in range(4):
                    write_image(staging / "x.JPEG", s, s * 10 + i)
                    add_to_tar(inner, f"{synset}_{i}.JPEG", (staging / "x.JPEG").read_bytes())
            outer.add(staging / f"{synset}.tar", arcname=f"{synset}.tar")
    with tarfile.open(root / "ILSVRC2012_img_val.tar", "w") as archive:
        for i, synset in enumerate(SYNSETS * 2, start=1):
            write_image(staging / "x.JPEG", SYNSETS.index(synset), 500 + i)
            add_to_tar(archive, f"ILSVRC2012_val_{i:08d}.JPEG", (staging / "x.JPEG").read_bytes())
    labels = "".join(f"{synset}\n" for synset in SYNSETS * 2)
    (root / "imagenet_2012_validation_synset_labels.txt").write_text(labels)
    with tarfile.open(root / "ILSVRC2012_bbox_train_v2.tar.gz", "w:gz") as archive:
        for synset in SYNSETS:
            box = (
                f"<annotation><size><width>64</width><height>48</height></size><object>"
                f"<name>{synset}</name><bndbox><xmin>4</xmin><ymin>3</ymin><xmax>40</xmax>"
                "<ymax>30</ymax></bndbox></object></annotation>"
            )
            add_to_tar(archive, f"{synset}/{synset}_0.xml", box.encode())
    shutil.rmtree(staging)


@pytest.fixture(scope="module")
def flowers_base(tmp_path_factory) -> Path:
    """flower_photos/, photo.jpg, data/flowers and a run in runs/flowers, made once."""
    root = tmp_path_factory.mktemp("flowers")
    make_flower_photos(root)
    with working_directory(root):
        status, _, err = run_incept(with_scale(["build-data", "flower_photos", "data/flowers"]))
        assert status == 0, err
        argv = ["train", "--data", "data/flowers", "--train-dir", "runs/flowers"]
        status, _, err = run_incept(with_scale(argv + ["--recipe", "small_data_cpu"]))
        assert status == 0, err
    return root


def copy_from(base: Path, workspace: Path, *names: str) -> None:
    for name in names:
        source, target = base / name, workspace / name
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, target)


def set_up(name: str, workspace: Path, base: Path) -> None:
    """Puts the stand-ins tutorial `name` expects into the workspace."""
    if name == "your-own-images.md":
        copy_from(base, workspace, "flower_photos", "photo.jpg")
        make_torchvision_cache(workspace)
    elif name == "imagenet.md":
        make_imagenet_archives(workspace)
    elif name == "fine-tuning.md":
        copy_from(base, workspace, "data/flowers", "photo.jpg")
        make_torchvision_cache(workspace)
        shutil.copy(
            FIXTURES / "keras_v3.h5",
            workspace / "inception_v3_weights_tf_dim_ordering_tf_kernels.h5",
        )
        with tarfile.open(workspace / "inception_v3_2016_08_28.tar.gz", "w:gz") as archive:
            archive.add(FIXTURES / "slim_v3_v1.ckpt", arcname="inception_v3.ckpt")
    elif name in ("distributed.md", "python-api.md", "troubleshooting.md"):
        copy_from(base, workspace, "data/flowers", "runs/flowers", "photo.jpg")
    else:
        pytest.fail(f"{name} has no set-up in tests/test_tutorials.py: add one")


# ---------------------------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_tutorial_runs(path, workspace, flowers_base):
    set_up(path.name, workspace, flowers_base)
    ran = 0
    for block in fenced_blocks(path, "sh"):
        for command in shell_commands(block):
            if NOT_RUN in block:
                check_command(expand(command, workspace))
            else:
                run_command(command, workspace)
                ran += 1
    for block in fenced_blocks(path, "python"):
        namespace: dict = {}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(scaled_python(block), str(path), "exec"), namespace)
        ran += 1
    assert ran, f"{path.name} runs nothing"


def test_there_are_tutorials():
    assert {p.name for p in TUTORIALS} >= {
        "your-own-images.md", "imagenet.md", "fine-tuning.md", "distributed.md",
        "python-api.md", "troubleshooting.md",
    }  # fmt: skip


def known_flags() -> dict[str, set[str]]:
    """{incept subcommand or "torchrun": its option strings}."""
    flags = {}
    for action in incept.cli.build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                flags[name] = {o for a in sub._actions for o in a.option_strings}
    flags["torchrun"] = {o for a in torchrun_parser()._actions for o in a.option_strings}
    return flags


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_flags_in_the_prose_exist(path):
    flags = known_flags()
    every_flag = set().union(*flags.values())
    prose = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    for span in re.findall(r"`([^`\n]+)`", prose):
        words = span.split()
        if words[0] == "incept" and len(words) > 1 and not words[1].isupper():  # not COMMAND
            assert words[1] in flags, f"{path.name}: no subcommand in `{span}`"
            for word in words[2:]:
                if word.startswith("--"):
                    assert word in flags[words[1]], f"{path.name}: `{span}`: no {word}"
        elif words[0].startswith("--"):
            assert words[0] in every_flag, f"{path.name}: no flag `{words[0]}`"


def test_the_checker_refuses_renamed_and_abbreviated_flags():
    command = ["incept", "train", "--data", "d", "--train-dir", "t"]
    check_command([*command, "--max-steps", "2", "--recipe", "small_data_cpu"])
    for wrong in (["--max-step", "2"], ["--steps", "2"], ["--trainable-globs", "fc.*"]):
        with pytest.raises(pytest.fail.Exception, match="does not parse"):
            check_command(command + wrong)
    with pytest.raises(AssertionError, match="flowers"):
        check_command([*command, "--recipe", "flowers"])  # no such recipe
    with pytest.raises(pytest.fail.Exception, match="nproc-per-nod"):
        check_command(["torchrun", "--nproc-per-nod", "2", "-m", "incept", "train"])


# How to make each mistake of the troubleshooting guide in its workspace: (bash set-up or
# None, incept arguments). The line printed must read as the guide's line, numbers aside.
PROVOCATIONS = {
    "incept train: error: data/flowers has": (
        None,
        ["train", "--data", "data/flowers", "--train-dir", "runs/big", "--batch-size", "4096"],
    ),
    "incept train: error: loss is nan": (
        "rm -r runs/flowers",  # a fresh run that blows up at its second step
        with_scale(["train", "--data", "data/flowers", "--train-dir", "runs/flowers",
                    "--recipe", "inception_v3_2016", "--max-steps", "3"])
        + ["--max-steps", "3", "--save-every", "1", "--learning-rate", "1e30"],
    ),
    "incept eval: error: data/flowers/validation-00000-of-00001: corrupt": (
        "f=data/flowers/validation-00000-of-00001 && printf XXXX | "
        "dd of=$f bs=1 seek=$(($(stat -c %s $f) / 2)) conv=notrunc status=none",
        with_scale(["eval", "--data", "data/flowers", "--checkpoint", "runs/flowers"]),
    ),
    "incept eval: error: runs/flowers was trained": (
        "mkdir three && cp -r flower_photos/daisy flower_photos/roses flower_photos/tulips three/",
        with_scale(["eval", "--data", "three", "--checkpoint", "runs/flowers"]),
    ),
    "incept classify: error: my_labels.txt": (
        "printf 'a\\nb\\nc\\nd\\n' > my_labels.txt",
        ["classify", "photo.jpg", "--checkpoint", "runs/flowers", "--labels-file", "my_labels.txt"],
    ),
    "incept build-data: error: labels file my_labels.txt": (
        "printf 'daisy\\ncaf\\xe9\\n' > my_labels.txt",
        ["build-data", "flower_photos", "out", "--labels-file", "my_labels.txt"],
    ),
    "incept train: error: runs/flowers holds a checkpoint": (
        None,
        with_scale(["train", "--data", "data/flowers", "--train-dir", "runs/flowers"])
        + ["--learning-rate", "0.01"],
    ),
    "incept train: error: data/original-flowers": (
        "cp -r data/flowers data/original-flowers && rm data/original-flowers/dataset.json && "
        "head -n 4 data/flowers/labels.txt > data/original-flowers/labels.txt",
        with_scale(["train", "--data", "data/original-flowers", "--train-dir", "runs/x"]),
    ),
}  # fmt: skip


def as_pattern(line: str) -> re.Pattern:
    """The line with its numbers free: the guide shows a user's numbers, the run its own."""
    parts = re.split(r"\d+(?:\.\d+)?", line)
    return re.compile(r"\d+(?:\.\d+)?".join(re.escape(part) for part in parts) + r"$")


def test_troubleshooting_error_lines_are_what_incept_prints(workspace, flowers_base):
    guide = ROOT / "docs" / "tutorials" / "troubleshooting.md"
    lines = [
        line
        for block in fenced_blocks(guide, "text")
        for line in block.splitlines()
        if line.startswith("incept ") and ": error: " in line
    ]
    prefixes = [next((p for p in PROVOCATIONS if line.startswith(p)), None) for line in lines]
    assert None not in prefixes, f"a line of the guide has no provocation: {lines}"
    assert sorted(prefixes) == sorted(PROVOCATIONS), "a provocation matches no line of the guide"
    for number, (line, prefix) in enumerate(zip(lines, prefixes)):
        place = workspace / str(number)
        copy_from(flowers_base, place, "flower_photos", "data/flowers", "runs/flowers", "photo.jpg")
        setup, argv = PROVOCATIONS[prefix]
        with working_directory(place):
            if setup:
                subprocess.run(["bash", "-c", setup], check=True)
            status, _, err = run_incept(argv)
        printed = err.strip().splitlines()[-1]
        assert status == 2, err
        assert as_pattern(line).match(printed), f"guide: {line}\nprinted: {printed}"
