"""Checkpoint directories: round trip, atomic writes, keeping the newest K, path resolution."""

from __future__ import annotations

import json

import pytest
import torch

from incept.errors import UserError
from incept.weights import checkpoint as ckpt


def _save(train_dir, step, keep=5, ema=True):
    weights = {"conv.weight": torch.full((2, 3, 1, 1), float(step))}
    averaged = {"conv.weight": torch.full((2, 3, 1, 1), step + 0.5)} if ema else None
    state = {
        "step": step,
        "optimizer": {"state": {0: {"mean_square": torch.ones(2)}}, "param_groups": []},
        "rng": {"torch": torch.get_rng_state(), "python": (3, tuple(range(5)), None)},
    }
    meta = {"model": "tiny", "model_kwargs": {"num_classes": 3}, "class_names": ["a", "b", "c"]}
    return ckpt.save_checkpoint(
        train_dir, step, weights, state, meta, ema_state=averaged, keep=keep
    )


def test_round_trip(tmp_path):
    path = _save(tmp_path, 12)
    assert path == tmp_path / "checkpoints" / "step-00000012"
    assert sorted(p.name for p in path.iterdir()) == [
        "ema.safetensors",
        "meta.json",
        "model.safetensors",
        "state.pt",
    ]
    loaded = ckpt.read_checkpoint(tmp_path)
    assert loaded.path == path
    assert loaded.meta["step"] == 12 and loaded.meta["class_names"] == ["a", "b", "c"]
    assert loaded.meta["ema"] is True
    assert torch.equal(loaded.model["conv.weight"], torch.full((2, 3, 1, 1), 12.0))
    assert torch.equal(loaded.ema["conv.weight"], torch.full((2, 3, 1, 1), 12.5))
    assert torch.equal(loaded.state["rng"]["torch"], torch.get_rng_state())
    # Read back with the safe unpickler only.
    torch.load(path / "state.pt", weights_only=True)
    assert ckpt.read_model_weights(path)["conv.weight"][0, 0, 0, 0] == 12.5
    assert ckpt.read_model_weights(path, ema=False)["conv.weight"][0, 0, 0, 0] == 12.0


def test_channels_last_tensors_are_saved(tmp_path):
    weight = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    ckpt.save_checkpoint(tmp_path, 1, {"w": weight}, {}, {"model": "m"})
    assert torch.equal(ckpt.read_model_weights(tmp_path)["w"], weight)


def test_keeps_the_newest(tmp_path):
    for step in (10, 20, 30, 40):
        _save(tmp_path, step, keep=2)
    names = [p.name for p in ckpt.list_checkpoints(tmp_path)]
    assert names == ["step-00000030", "step-00000040"]
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000040"


def test_the_same_step_saved_again_replaces_it(tmp_path):
    _save(tmp_path, 5)
    _save(tmp_path, 5, ema=False)
    assert ckpt.read_meta(tmp_path)["ema"] is False
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000005"]


def test_a_crash_mid_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    _save(tmp_path, 100)

    def die(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.torch, "save", die)
    with pytest.raises(UserError, match="disk full.*last complete one is .*step-00000100"):
        _save(tmp_path, 200)
    monkeypatch.undo()
    # The half-written directory never got a final name, and the failed write cleared it.
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000100"
    assert ckpt.read_checkpoint(tmp_path).meta["step"] == 100
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith(".")]
    assert not leftovers
    (tmp_path / "checkpoints" / ".partial-step-00000200-1").mkdir()  # what a kill leaves
    _save(tmp_path, 300)  # the next save clears what a crash left
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-00000100", "step-00000300"]


def test_resolution_of_paths(tmp_path):
    path = _save(tmp_path, 7)
    for given in (tmp_path, path, path / "model.safetensors"):
        assert ckpt.resolve_checkpoint(given) == path
        assert ckpt.is_checkpoint_source(given)
    with pytest.raises(UserError, match="no such checkpoint"):
        ckpt.resolve_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert not ckpt.is_checkpoint_source(tmp_path / "empty")
    with pytest.raises(UserError, match="holds no checkpoint"):
        ckpt.resolve_checkpoint(tmp_path / "empty")
    (path / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(UserError, match="not an incept checkpoint"):
        ckpt.read_meta(path)
