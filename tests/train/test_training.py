"""`incept train` and `incept eval` end to end on a tiny model: outputs, exact resume after
SIGKILL, contradicting flags, NaN stop, fine-tuning hooks, exact evaluation counts."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import incept
from incept.cli import main
from incept.data import make_loader
from incept.train import loop
from incept.weights.checkpoint import latest_checkpoint, list_checkpoints, read_checkpoint

STEPS = 8
LOG_LINE = re.compile(
    r"^step (\d+), loss = \d+\.\d\d \(\d+\.\d examples/sec; \d+\.\d{3} sec/batch\)"
)
RESULT_LINE = re.compile(
    r"^precision @ 1 = (\d\.\d{4}) recall @ 5 = (\d\.\d{4}) \[(\d+) examples\]$"
)


def reference_args(data, train_dir, tiny_flags):
    return [
        "train", "--data", str(data), "--train-dir", str(train_dir), *tiny_flags,
        "--max-steps", str(STEPS), "--save-every", "3", "--log-every", "2", "--eval-every", "8",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def reference(image_folder, tmp_path_factory, incept_cli, tiny_flags):
    """An uninterrupted run: (train dir, finished process, seconds it took)."""
    train_dir = tmp_path_factory.mktemp("reference")
    start = time.monotonic()
    done = incept_cli(*reference_args(image_folder, train_dir, tiny_flags))
    assert done.returncode == 0, done.stderr
    return train_dir, done, time.monotonic() - start


def test_logs_checkpoints_and_summaries(reference):
    train_dir, done, _ = reference
    logged = [int(m.group(1)) for m in map(LOG_LINE.match, done.stdout.splitlines()) if m]
    assert logged == [2, 4, 6, 8]
    assert "step 8, eval: precision @ 1 = " in done.stdout

    # small_data_cpu keeps 3: saves at 3, 6 and the last step.
    assert [p.name for p in list_checkpoints(train_dir)] == [
        "step-00000003",
        "step-00000006",
        "step-00000008",
    ]
    checkpoint = read_checkpoint(train_dir)
    assert checkpoint.meta["class_names"] == ["class_0", "class_1", "class_2"]
    assert checkpoint.meta["image_size"] == 75
    assert checkpoint.meta["model_kwargs"]["width"] == 0.1
    assert checkpoint.meta["recipe"]["max_steps"] == STEPS
    assert checkpoint.state["step"] == STEPS
    assert checkpoint.state["data"] == {"epoch": 2, "batch": 0, "steps_per_epoch": 4}
    assert checkpoint.ema is not None and set(checkpoint.ema) == set(checkpoint.model)

    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [2, 4, 6, 8]
    evaluations = [r for r in records if "eval_top1" in r]
    assert len(evaluations) == 1 and evaluations[0]["eval_examples"] == 3  # 1 per class held out
    assert Image.open(train_dir / "curves.png").size == (1260, 300)
    assert list(train_dir.glob("events.out.tfevents.*"))


def test_sigkill_at_any_moment_then_same_command_ends_identically(
    reference, image_folder, tmp_path, incept_cli, incept_env, tiny_flags
):
    reference_dir, _, seconds = reference
    args = reference_args(image_folder, tmp_path, tiny_flags)
    moment = random.uniform(0.5, seconds)
    victim = subprocess.Popen(
        [sys.executable, "-m", "incept", *args],
        env=incept_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        victim.wait(timeout=moment)
    except subprocess.TimeoutExpired:
        victim.send_signal(signal.SIGKILL)
        victim.wait()
    killed_at = latest_checkpoint(tmp_path)
    again = incept_cli(*args)
    assert again.returncode == 0, again.stderr
    note = f"killed after {moment:.2f}s, last checkpoint {killed_at}"
    final = f"checkpoints/step-{STEPS:08d}"
    for name in ("model.safetensors", "ema.safetensors"):
        expected = load_file(reference_dir / final / name)
        resumed = load_file(tmp_path / final / name)
        assert all(torch.equal(expected[k], resumed[k]) for k in expected), (name, note)
    train_records = [
        json.loads(line)
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    expected_records = [
        json.loads(line)
        for line in (reference_dir / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert [(r["step"], r["loss"]) for r in train_records] == [
        (r["step"], r["loss"]) for r in expected_records
    ], note


def test_a_run_resumed_inside_a_logging_window_logs_what_the_whole_run_logged(
    reference, image_folder, tmp_path, incept_cli, tiny_flags
):
    """Killed after the step-3 checkpoint (a log line every 2 steps): step 4's line averages
    steps 3 and 4, as the uninterrupted run's does. Made exact without a kill: the reference's
    train dir as it stood then."""
    import shutil

    reference_dir, _, _ = reference
    train_dir = tmp_path / "run"
    shutil.copytree(reference_dir, train_dir)
    for later in ("step-00000006", "step-00000008"):
        shutil.rmtree(train_dir / "checkpoints" / later)
    lines = (reference_dir / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line).get("step", 0) <= 2]
    (train_dir / "metrics.jsonl").write_text("".join(line + "\n" for line in kept))
    done = incept_cli(*reference_args(image_folder, train_dir, tiny_flags))
    assert done.returncode == 0, done.stderr
    assert "at step 3" in done.stdout + done.stderr

    def losses(folder):
        records = (json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines())
        return [(r["step"], r["loss"], r["top1"]) for r in records if "loss" in r]

    assert losses(train_dir) == losses(reference_dir)


def test_flags_contradicting_the_checkpoint_stop_the_run(reference, image_folder, capsys):
    train_dir, _, _ = reference
    before = latest_checkpoint(train_dir)
    with pytest.raises(SystemExit) as stopped:
        main(
            [
                "train", "--data", str(image_folder), "--train-dir", str(train_dir),
                "--width", "0.25", "--image-size", "99", "--max-steps", "20",
            ]
        )  # fmt: skip
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "width 0.1 (checkpoint) vs 0.25" in error and "image_size 75 (checkpoint) vs 99" in error
    assert "max_steps" not in error  # how long to run may change
    assert latest_checkpoint(train_dir) == before


def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(
    image_folder, tmp_path, monkeypatch, capsys, tiny_flags
):
    calls = []
    honest = loop.compute_loss

    def turns_nan_at_step_3(outputs, labels, recipe, *weights_and_mixing):
        calls.append(1)
        loss, logits = honest(outputs, labels, recipe, *weights_and_mixing)
        return (loss * float("nan") if len(calls) == 3 else loss), logits

    monkeypatch.setattr(loop, "compute_loss", turns_nan_at_step_3)
    args = ["train", "--data", str(image_folder), "--train-dir", str(tmp_path), *tiny_flags]
    with pytest.raises(SystemExit) as stopped:
        main([*args, "--max-steps", "5", "--save-every", "2"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "loss is nan at step 3" in error and "step-00000002" in error
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000002"]
    assert read_checkpoint(tmp_path).state["step"] == 2


def test_init_from_with_other_classes_and_trainable_heads(
    reference, tmp_path, tiny_flags, caplog, image_folder_factory
):
    two_classes = image_folder_factory(tmp_path / "two", classes=2)
    source, _, _ = reference
    train_dir = tmp_path / "tuned"
    caplog.set_level("INFO")
    main_args = [
        "train", "--data", str(two_classes), "--train-dir", str(train_dir), *tiny_flags,
        "--init-from", str(source), "--trainable", "fc.*,AuxLogits.fc.*", "--max-steps", "2",
        "--log-every", "1",
    ]  # fmt: skip
    with pytest.raises(SystemExit) as finished:
        main(main_args)
    assert finished.value.code == 0
    assert "fc.weight" in caplog.text  # the heads were re-initialised, and said so

    start = load_file(latest_checkpoint(source) / "ema.safetensors")
    tuned = read_checkpoint(train_dir).model
    model = incept.nets.load(train_dir)
    parameters = {name for name, _ in model.named_parameters()}
    heads = {"fc.weight", "fc.bias", "AuxLogits.fc.weight", "AuxLogits.fc.bias"}
    assert tuned["fc.weight"].shape[0] == 2
    for name in parameters - heads:
        assert torch.equal(tuned[name], start[name]), name  # frozen: bit for bit
    assert not torch.equal(tuned["Mixed_7c.branch1x1.bn.running_mean"],
                           start["Mixed_7c.branch1x1.bn.running_mean"])  # fmt: skip


def test_freeze_bn_keeps_the_statistics_of_frozen_layers(
    reference, tmp_path, tiny_flags, image_folder_factory
):
    two_classes = image_folder_factory(tmp_path / "two", classes=2)
    source, _, _ = reference
    train_dir = tmp_path / "frozen_bn"
    with pytest.raises(SystemExit) as finished:
        main([
            "train", "--data", str(two_classes), "--train-dir", str(train_dir), *tiny_flags,
            "--init-from", str(source), "--trainable", "fc.*,AuxLogits.fc.*", "--freeze-bn",
            "--max-steps", "2",
        ])  # fmt: skip
    assert finished.value.code == 0
    start = load_file(latest_checkpoint(source) / "ema.safetensors")
    tuned = read_checkpoint(train_dir).model
    statistics = [k for k in tuned if k.endswith(("running_mean", "running_var"))]
    assert statistics
    for name in statistics:  # without --freeze-bn these move (the test above)
        assert torch.equal(tuned[name], start[name]), name


def test_eval_counts_every_record_once_and_prints_the_original_line(
    reference, image_folder, capsys
):
    train_dir, _, _ = reference
    args = ["eval", "--data", str(image_folder), "--checkpoint", str(train_dir)]
    with pytest.raises(SystemExit):
        main([*args, "--subset", "train", "--batch-size", "5", "--workers", "0"])
    last = capsys.readouterr().out.strip().splitlines()[-1]
    match = RESULT_LINE.match(last)
    assert match, last
    assert int(match.group(3)) == 33  # 36 images, 3 held out; 33 = 6 batches of 5 + 3

    # The same figure, computed independently from the moving-average weights.
    model = incept.nets.load(train_dir)
    hits = 0
    for images, labels in make_loader(
        image_folder, "train", training=False, batch_size=7, image_size=75, workers=0
    ):
        with torch.no_grad():
            logits = model(images)
        hits += (logits.argmax(1) == labels).sum().item()
    assert match.group(1) == f"{hits / 33:.4f}"
    assert match.group(2) == "1.0000"  # 3 classes: the top 5 always hold the answer

    with pytest.raises(SystemExit):
        main([*args, "--subset", "train", "--batch-size", "5", "--workers", "0", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"top1", "top5", "examples", "loss"}
    assert result["examples"] == 33 and f"{result['top1']:.4f}" == match.group(1)


def test_fp16_runs_with_a_gradient_scaler_and_resumes_it(image_folder, tmp_path, tiny_flags):
    flags = [flag if flag != "fp32" else "fp16" for flag in tiny_flags]
    args = ["train", "--data", str(image_folder), "--train-dir", str(tmp_path), *flags]
    with pytest.raises(SystemExit) as finished:
        main([*args, "--max-steps", "2"])
    assert finished.value.code == 0
    state = read_checkpoint(tmp_path).state
    assert state["grad_scaler"]["scale"] > 0
    with pytest.raises(SystemExit) as resumed:
        main([*args, "--max-steps", "3"])
    assert resumed.value.code == 0
    assert read_checkpoint(tmp_path).state["step"] == 3


def test_validation_while_training_keeps_the_best_and_eval_best_reads_it(
    reference, image_folder, tmp_path, capsys
):
    import shutil

    from incept.weights.checkpoint import BEST_DIR

    train_dir, done, _ = reference
    records = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines()]
    evaluations = [record for record in records if "eval_top1" in record]
    assert [record["step"] for record in evaluations] == [8]
    assert "step 8, eval: precision @ 1 = " in done.stdout
    best = latest_checkpoint(train_dir, BEST_DIR)
    assert best is not None and best.name == "step-00000008"
    meta = json.loads((best / "meta.json").read_text())
    assert meta["evaluation"]["top1"] == evaluations[0]["eval_top1"]

    args = ["eval", "--data", str(image_folder), "--checkpoint", str(train_dir), "--workers", "0"]
    with pytest.raises(SystemExit):
        main([*args, "--best", "--json"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["top1"] == pytest.approx(evaluations[0]["eval_top1"], abs=1e-6)
    assert result["examples"] == 3

    no_best = tmp_path / "no_best"
    shutil.copytree(train_dir / "checkpoints", no_best / "checkpoints")
    with pytest.raises(SystemExit) as stopped:
        main(["eval", "--data", str(image_folder), "--checkpoint", str(no_best), "--best"])
    assert stopped.value.code != 0
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "holds no best checkpoint" in error[0] and "drop --best" in error[0]
