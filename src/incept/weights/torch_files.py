"""Read PyTorch weight files (.pth, .pt, .bin, .safetensors) into {name: numpy array}.

Pickle files are opened only with `torch.load(weights_only=True)`: the restricted unpickler
that builds tensors, dicts and plain values and refuses anything that would import or call
code. A file that needs more is rejected, never run. Training checkpoints (timm's, the
torchvision references') keep the weights under a key: `state_dict` or `model`, and the
moving averages under `state_dict_ema` or `model_ema`. The `module.` prefix that
DataParallel / DistributedDataParallel leave on every name is dropped.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import numpy as np
import torch

from incept.errors import UserError

SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")

_PLAIN_KEYS = ("state_dict", "model")
_EMA_KEYS = ("state_dict_ema", "model_ema")


def read_torch_weights(path: str | Path, *, ema: bool = False) -> dict[str, np.ndarray]:
    """The state dict in a PyTorch weight file, as numpy arrays (bfloat16 widened to float32).

    `ema=True` takes the moving-average weights when a training checkpoint carries them beside
    the plain ones (`state_dict_ema`, `model_ema`), the plain ones otherwise.
    """
    return read_torch_file(path, ema=ema)[0]


def read_torch_file(path: str | Path, *, ema: bool = False) -> tuple[dict[str, np.ndarray], bool]:
    """`read_torch_weights`, and whether the weights are the moving averages."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no PyTorch weight file at {path}")
    averaged = False
    if path.suffix == ".safetensors":
        tensors = _load_safetensors(path)
    else:
        loaded = _load_pickle(path)
        tensors = _state_dict_in(path, loaded, ema)  # a dict, or it raised
        averaged = ema and any(isinstance(loaded.get(k), dict) for k in _EMA_KEYS)
    arrays = {_strip_module_prefix(name): _to_numpy(value) for name, value in tensors.items()}
    return arrays, averaged


def _load_pickle(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        # Code in a pickle needs a callable, which the restricted unpickler reports as an
        # unsupported global; any other failure means bytes that are not a torch file.
        # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose
        # module x is blocked", by version.
        wanted = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(error), re.IGNORECASE)
        if wanted:
            raise UserError(
                f"{path} asks to run {wanted.group(1)} when unpickled, which we refuse (a weight "
                "file needs no code); save just the state dict or use .safetensors"
            ) from error
        reason = re.search(r"WeightsUnpickler error:\s*(.+)", str(error))
        # never pass on torch's own advice here: it suggests weights_only=False
        detail = reason.group(1) if reason else "it holds more than plain tensors"
        raise UserError(f"{path} is not a readable PyTorch file ({detail})") from error
    except Exception as error:  # torch.load fails on foreign bytes with many exception types
        raise UserError(f"{path} is not a readable PyTorch file ({_first_line(error)})") from error


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise UserError(
            f"{path} is not a readable .safetensors file ({_first_line(error)})"
        ) from error


def _state_dict_in(path: Path, loaded: object, ema: bool) -> dict[str, torch.Tensor]:
    """The {name: tensor} dict inside what torch.load returned."""
    if not isinstance(loaded, dict):
        raise UserError(f"{path} holds a {type(loaded).__name__}, not a state dict")
    keys = (*_EMA_KEYS, *_PLAIN_KEYS) if ema else _PLAIN_KEYS
    nested = next((loaded[k] for k in keys if isinstance(loaded.get(k), dict)), None)
    if nested is not None:
        return _state_dict_in(path, nested, ema=False)
    tensors = {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(
            f"{path} holds no tensors at its top level nor under {', '.join(_PLAIN_KEYS)}; "
            f"its keys: {', '.join(map(str, list(loaded)[:8]))}"
        )
    if len(tensors) < len(loaded):
        others = [str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
        raise UserError(
            f"{path} mixes tensors with other entries ({', '.join(others[:5])}) and no known "
            "state-dict key; save the state dict alone"
        )
    return tensors


def _strip_module_prefix(name: str) -> str:
    return name.removeprefix("module.")


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16; float32 holds it exactly
        tensor = tensor.float()
    return tensor.contiguous().numpy()
