"""PyTorch weight files: state dicts in every wrapping, and pickles that would run code refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from incept.errors import UserError
from incept.weights.torch_files import read_torch_weights


def small_state_dict() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, bias=False), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2)
    )
    model[1].running_mean.normal_()
    model[1].num_batches_tracked.fill_(7)
    return model.state_dict()


def assert_same(read: dict[str, np.ndarray], state: dict[str, torch.Tensor]) -> None:
    assert sorted(read) == sorted(state)  # safetensors keeps its own order
    for name, tensor in state.items():
        assert read[name].dtype == tensor.numpy().dtype, name
        np.testing.assert_array_equal(read[name], tensor.numpy(), err_msg=name)


@pytest.mark.parametrize("suffix", [".pth", ".pt", ".bin", ".safetensors"])
def test_plain_state_dict(tmp_path, suffix):
    state = small_state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    assert_same(read_torch_weights(path), state)


def test_training_checkpoint_with_ema_and_data_parallel_names(tmp_path):
    state = small_state_dict()
    ema = {name: tensor + 1 for name, tensor in state.items()}
    path = tmp_path / "checkpoint.pth.tar"
    torch.save(
        {
            "epoch": 3,
            "arch": "inception_v3",
            "state_dict": {f"module.{k}": v for k, v in state.items()},
            "state_dict_ema": ema,
            "optimizer": {"state": {}, "param_groups": [{"lr": 0.1}]},
        },
        path,
    )
    assert_same(read_torch_weights(path), state)
    assert_same(read_torch_weights(path, ema=True), ema)
    torch.save({"model": state}, tmp_path / "deit_style.pth")
    assert_same(read_torch_weights(tmp_path / "deit_style.pth"), state)
    # Asking for moving averages where there are none gives the plain weights.
    assert_same(read_torch_weights(tmp_path / "deit_style.pth", ema=True), state)


def test_bfloat16_is_widened_exactly(tmp_path):
    values = torch.tensor([1.5, -2.25, 3.0e38, 1.0e-38], dtype=torch.bfloat16)
    save_file({"w": values}, tmp_path / "w.safetensors")
    torch.save({"w": values}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        read = read_torch_weights(tmp_path / name)["w"]
        assert read.dtype == np.float32
        np.testing.assert_array_equal(read, values.float().numpy())


class WritesAMarkerFile:
    """Unpickling this calls open(marker, "w"): code run by merely loading the file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(2), "payload": WritesAMarkerFile(marker)}, path)
    with pytest.raises(UserError) as raised:
        read_torch_weights(path)
    assert "asks to run io.open when unpickled, which we refuse" in str(raised.value)
    assert "\n" not in str(raised.value)
    assert not marker.exists()
    # The file really is malicious: an unrestricted load runs the payload (a harmless one).
    torch.load(path, weights_only=False)["payload"].close()
    assert marker.exists()


def test_files_that_are_not_state_dicts(tmp_path):
    (tmp_path / "noise.pth").write_bytes(bytes(range(256)) * 4)
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    torch.save({"weight": torch.zeros(3), "note": "hello"}, tmp_path / "mixed.pth")
    (tmp_path / "noise.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "no_tensors.pth")
    cases = {
        "missing.pth": "no PyTorch weight file",
        "noise.pth": "not a readable PyTorch file",
        "tensor.pth": "not a state dict",
        "mixed.pth": "mixes tensors with other entries",
        "noise.safetensors": "not a readable .safetensors file",
        "no_tensors.pth": "holds no tensors",
    }
    for name, fragment in cases.items():
        with pytest.raises(UserError, match=fragment) as raised:
            read_torch_weights(tmp_path / name)
        assert "\n" not in str(raised.value), name
