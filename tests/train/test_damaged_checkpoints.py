"""Issue 16, item 5: a damaged file in a checkpoint (truncated, or its bytes overwritten) is one
line naming the file and the previous complete checkpoint, in eval, classify and serve; a
resumed `incept train` goes back to that checkpoint by itself and says so."""

from __future__ import annotations

import shutil

import pytest

from incept.cli import main
from incept.weights.checkpoint import read_checkpoint
from tests.train.conftest import train_in_process
from tests.user_errors import one_error_line

FILES = ["model.safetensors", "ema.safetensors", "state.pt"]


@pytest.fixture(scope="module")
def finished(image_folder, tmp_path_factory, tiny_flags):
    """A train dir with checkpoints at steps 2 and 4."""
    train_dir = tmp_path_factory.mktemp("finished")
    return train_in_process(
        image_folder, train_dir, tiny_flags, "--max-steps", "4", "--save-every", "2"
    )


def damaged_copy(finished, tmp_path, name: str, how: str = "truncated"):
    """A copy of the train dir whose step-4 `name` is cut in half (or overwritten)."""
    train_dir = tmp_path / "run"
    shutil.copytree(finished, train_dir)
    file = train_dir / "checkpoints" / "step-00000004" / name
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2] if how == "truncated" else b"\xff" * len(data))
    return train_dir, file, train_dir / "checkpoints" / "step-00000002"


@pytest.mark.parametrize(
    "name, flags", [("ema.safetensors", []), ("model.safetensors", ["--no-ema"])]
)
@pytest.mark.parametrize("how", ["truncated", "overwritten"])
def test_eval_names_the_file_and_the_previous_checkpoint(
    finished, image_folder, tmp_path, capsys, name, flags, how
):
    train_dir, file, previous = damaged_copy(finished, tmp_path, name, how)
    argv = ["eval", "--data", image_folder, "--checkpoint", train_dir, "--workers", "0", *flags]
    line = one_error_line(capsys, argv)
    assert line.startswith(f"incept eval: error: {file} is damaged (")
    assert line.endswith(f"the previous complete checkpoint is {previous} (name it to use it)")


def test_classify_names_the_file(finished, image_folder, tmp_path, capsys):
    train_dir, file, previous = damaged_copy(finished, tmp_path, "ema.safetensors")
    image = next((image_folder / "class_0").iterdir())
    line = one_error_line(capsys, ["classify", image, "--checkpoint", train_dir])
    assert line.startswith(f"incept classify: error: {file} is damaged (") and str(previous) in line


def test_serve_names_the_file_before_it_listens(finished, tmp_path, incept_cli):
    train_dir, file, previous = damaged_copy(finished, tmp_path, "ema.safetensors")
    done = incept_cli("serve", "--checkpoint", str(train_dir), "--port", "0", timeout=120)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"incept serve: error: {file} is damaged (") and str(previous) in line


@pytest.mark.parametrize("name", FILES)
def test_train_resumes_from_the_previous_complete_checkpoint(
    finished, image_folder, tmp_path, tiny_flags, capsys, name
):
    train_dir, file, previous = damaged_copy(finished, tmp_path, name)
    argv = ["train", "--data", str(image_folder), "--train-dir", str(train_dir), *tiny_flags]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--max-steps", "6", "--save-every", "2"])
    assert stop.value.code == 0
    printed = capsys.readouterr()
    err = printed.out + printed.err  # the run's lines go to stdout off a terminal
    said = [line for line in err.splitlines() if "damaged" in line]
    assert len(said) == 1 and said[0].startswith(f"{file} is damaged (")
    assert said[0].endswith(f": resuming from {previous} instead")
    assert f"resuming from {previous} at step 2" in err
    # Step 4 was trained again and saved over the damaged one; the run ended at 6.
    assert read_checkpoint(file.parent).state["step"] == 4
    assert read_checkpoint(train_dir).state["step"] == 6


def test_train_with_no_complete_checkpoint_left_stops_in_one_line(
    finished, image_folder, tmp_path, tiny_flags, capsys
):
    train_dir, file, _ = damaged_copy(finished, tmp_path, "state.pt")
    first = train_dir / "checkpoints" / "step-00000002" / "state.pt"
    first.write_bytes(first.read_bytes()[:100])
    argv = ["train", "--data", image_folder, "--train-dir", train_dir, *tiny_flags]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([str(word) for word in [*argv, "--max-steps", "6"]])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    assert err.splitlines()[-1] == (
        f"incept train: error: {file} is damaged ({err.split('(', 1)[1].split(')')[0]}); "
        "there is no complete checkpoint before it"
    )
