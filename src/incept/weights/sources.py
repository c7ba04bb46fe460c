"""Weights from wherever users have them, under our models' parameter names.

These are the readers; `incept.nets.loading.load_model` is the one way from a source to a
model, and the only caller of `read_source` and `load_weights` outside the tests.

A SOURCE (what `--init-from`, `--checkpoint` and `weights=` take) is one of:
- a train dir or checkpoint of ours (`incept.weights.checkpoint`);
- `torchvision`: its Inception-v3 IMAGENET1K_V1 weights (Google's, ported), downloaded once into
  torch's hub cache;
- a PyTorch file (.pth, .pt, .bin, .safetensors) with torchvision's or timm's names
  (`incept.weights.timm_family` renames timm's v4 and Inception-ResNet-v2);
- a Keras HDF5 file (.h5, .hdf5), e.g. the published InceptionV3 weights;
- a TF-Slim checkpoint, V2 (index + data) or V1 (one file), e.g. `inception_v3.ckpt`.

Each is read into arrays by this package's readers, then renamed and reshaped onto the model:
TF's HWIO kernels become OIHW, 1x1-conv and dense classifiers become (classes, features), a
batch norm without gamma (TF-Slim's and Keras's `scale=False`) gets gamma = 1, and TF-Slim's
1001-class heads lose their background row (class 0) on a model with one class fewer. TF-Slim
names come from the model's own naming rules (`incept.spec.slim_variable_names`). Keras's
layers have no meaningful names (`conv2d_37`); their creation order, which Keras numbers, is
the order of our convolutions.
"""

from __future__ import annotations

import logging
import re
from contextlib import suppress
from fnmatch import fnmatchcase
from pathlib import Path

import numpy as np
import torch
from torch import nn

from incept.errors import UserError
from incept.spec import slim_variable_names
from incept.weights.checkpoint import (
    EMA_FILE,
    is_checkpoint_source,
    read_meta,
    read_model_weights,
    resolve_checkpoint,
)
from incept.weights.keras_h5 import read_keras_h5
from incept.weights.tf_checkpoint import looks_like_tf_checkpoint, read_tf_checkpoint
from incept.weights.timm_family import from_timm
from incept.weights.torch_files import SUFFIXES as TORCH_SUFFIXES
from incept.weights.torch_files import read_torch_file, read_torch_weights

log = logging.getLogger(__name__)

TORCHVISION = "torchvision"
KERAS_SUFFIXES = (".h5", ".hdf5")
# Padding and pooling rules each framework's weights were trained with.
_SEMANTICS = {"torchvision": "torch", "torch": "torch", "keras": "tf", "tf": "tf"}
# Where create() takes torchvision's weights from, per model.
_TORCHVISION_WEIGHTS = {"inception_v3": "Inception_V3_Weights"}


def source_kind(source: str | Path) -> str:
    """The kind of `source`: "incept", "torchvision", "torch", "keras" or "tf" (UserError if
    none)."""
    if str(source).lower() == TORCHVISION:
        return "torchvision"
    path = Path(source)
    if is_checkpoint_source(path):
        return "incept"
    suffix = path.suffix.lower()
    if suffix in KERAS_SUFFIXES:
        return "keras"
    if suffix in TORCH_SUFFIXES:
        return "torch"
    if looks_like_tf_checkpoint(path):
        return "tf"
    if not path.exists():
        raise UserError(
            f"no weights at {source}: give a train dir or checkpoint, `torchvision`, a "
            ".pth/.pt/.bin/.safetensors, a Keras .h5 or a TF-Slim checkpoint"
        )
    raise UserError(
        f"{source} is not a weight source we read: a train dir or checkpoint of ours, "
        "a .pth/.pt/.bin/.safetensors, a Keras .h5 or a TF-Slim checkpoint (V1 file or V2 prefix)"
    )


def semantics_of(source: str | Path) -> str | None:
    """The padding/pooling rules ("tf" or "torch") the source's weights were trained with."""
    kind = source_kind(source)
    if kind == "incept":
        return read_meta(source).get("model_kwargs", {}).get("semantics")
    return _SEMANTICS[kind]


def read_state_dict(source: str | Path, model: nn.Module, *, ema: bool = True) -> dict:
    """The source's tensors under `model`'s state-dict names, in its layouts.

    Heads keep the source's class count (minus TF-Slim's background row when the model has
    exactly one class fewer); tensors the source lacks are absent (e.g. the aux head from
    Keras). `ema`: take the moving averages when the source (ours, a timm or torchvision
    training checkpoint) has them.
    """
    return read_source(source, model, ema=ema)[0]


def read_source(
    source: str | Path, model: nn.Module, *, ema: bool = True
) -> tuple[dict[str, torch.Tensor], bool]:
    """`read_state_dict`, and whether the tensors are moving averages."""
    kind = source_kind(source)
    if kind == "incept":
        averaged = ema and (resolve_checkpoint(source) / EMA_FILE).is_file()
        return read_model_weights(source, ema=ema), averaged
    if kind == "torchvision":
        return _as_tensors(read_torch_weights(_torchvision_file(model))), False
    if kind == "torch":
        tensors, averaged = read_torch_file(source, ema=ema)
        own = model.state_dict()
        if not set(tensors) & set(own):  # timm's names for v4 and Inception-ResNet-v2?
            with suppress(UserError):  # not those either: said below
                tensors = from_timm(getattr(model, "config", {}).get("model"), tensors)
        if not set(tensors) & set(own):
            raise UserError(
                f"{source} holds none of this model's parameters (it has e.g. "
                f"{', '.join(list(tensors)[:3])}): weights for another model?"
            )
        return _as_tensors(tensors), averaged
    if kind == "keras":
        return _as_tensors(_from_keras(read_keras_h5(source), model, source)), False
    return _as_tensors(_from_tf_slim(read_tf_checkpoint(source), model, source)), False


def classes_in(tensors: dict, model: nn.Module) -> int | None:
    """The class count of the classifier `tensors` hold for `model` (the main head's, else the
    aux head's); None when they hold none (a feature extractor's weights)."""
    aux = tuple(f"{name}." for name, kind in getattr(model, "stages", ()) if kind == "aux")
    weights = sorted(
        (name for name in _classifier_names(model) if name.endswith(".weight")),
        key=lambda name: name.startswith(aux),
    )
    found = [tensors[name] for name in weights if name in tensors]
    return int(found[0].shape[0]) if found else None


def load_weights(
    model: nn.Module, source: str | Path, *, exclude=(), ema: bool = True, tensors=None
) -> None:
    """Loads `source` into `model` (see the module doc for the sources).

    Everything must fit, except: parameters matching an `exclude` glob (a glob naming a module,
    like `fc` or `AuxLogits*`, covers its parameters), classifier heads whose class count
    differs or that the source lacks (a feature extractor's weights), and the aux head of a
    source without one, which all keep their fresh initialisation, with a log line. Nothing
    is loaded unless everything fits. `tensors`: what `read_state_dict(source, ...)` already
    returned for this architecture (the file is then not read again).
    """
    own = model.state_dict()
    loaded = tensors if tensors is not None else read_state_dict(source, model, ema=ema)
    excluded = _excluded(own, exclude)
    heads = _classifier_names(model)
    aux = tuple(f"{name}." for name, kind in getattr(model, "stages", ()) if kind == "aux")
    fitting, fresh, missing = {}, [], []
    for name, target in own.items():
        if name in excluded:
            continue
        value = loaded.get(name)
        if value is None:
            optional = name.endswith("num_batches_tracked") or name.startswith(aux) or name in heads
            (fresh if optional else missing).append(name)
        elif value.shape == target.shape:
            fitting[name] = value
        elif name in heads:
            fresh.append(name)
        else:
            raise UserError(
                f"{source}: {name} has shape {tuple(value.shape)}, the model "
                f"{tuple(target.shape)} (same model and width as the source?)"
            )
    if missing:
        raise UserError(
            f"{source} does not fit this model: {len(missing)} tensors missing, e.g. "
            f"{', '.join(missing[:3])} (same model as the source? or exclude them)"
        )
    with torch.no_grad():  # only once everything fits: an error leaves the model untouched
        for name, value in fitting.items():
            own[name].copy_(value)
    _say_what_stayed_fresh(fresh, excluded, source)
    _check_semantics(model, source)


def _excluded(own: dict, globs) -> set[str]:
    globs = [globs] if isinstance(globs, str) else list(globs)
    excluded = set()
    for glob in globs:
        hits = {n for n in own if fnmatchcase(n, glob) or fnmatchcase(n, f"{glob}.*")}
        if not hits:
            raise UserError(f"exclude pattern {glob!r} matches no parameter of the model")
        excluded |= hits
    return excluded


def _classifier_names(model: nn.Module) -> set[str]:
    heads = {id(head) for head in getattr(model, "classifiers", list)()}
    return {
        f"{module_name}.{tensor_name}"
        for module_name, module in model.named_modules()
        if id(module) in heads
        for tensor_name, _ in module.named_parameters(recurse=False)
    }


def _say_what_stayed_fresh(fresh: list[str], excluded: set[str], source) -> None:
    fresh = [n for n in fresh if not n.endswith("num_batches_tracked")]
    if fresh:
        log.info(
            "weights from %s: newly initialised (not in the source or other class count): %s",
            source,
            ", ".join(fresh),
        )
    if excluded:
        log.info("weights from %s: left out by exclude: %s", source, ", ".join(sorted(excluded)))


def _check_semantics(model: nn.Module, source) -> None:
    wanted = semantics_of(source)
    have = getattr(model, "config", {}).get("semantics")
    if wanted and have and wanted != have:
        log.warning(
            "weights from %s were trained with %s padding rules but the model uses %s ones: "
            "outputs will differ a little from the source's (build it with semantics=%r)",
            source,
            wanted,
            have,
            wanted,
        )


def _as_tensors(arrays: dict) -> dict[str, torch.Tensor]:
    # A copy: readers may hand out read-only views of file buffers (and 0-d arrays must stay
    # 0-d, which np.ascontiguousarray does not keep).
    return {name: torch.from_numpy(np.array(a, order="C")) for name, a in arrays.items()}


# ---------------------------------------------------------------------------------------------
# torchvision


def _torchvision_file(model: nn.Module) -> Path:
    """torchvision's weight file for `model`, from torch's hub cache or downloaded into it."""
    import torchvision

    name = getattr(model, "config", {}).get("model")
    if name not in _TORCHVISION_WEIGHTS:
        raise UserError(
            f"torchvision has no weights for {name}; it has them for "
            f"{', '.join(_TORCHVISION_WEIGHTS)}"
        )
    weights = getattr(torchvision.models, _TORCHVISION_WEIGHTS[name]).IMAGENET1K_V1
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        # torchvision names its files <name>-<first hex digits of their sha256>.pth.
        digest = re.search(r"-([0-9a-f]+)\.", cached.name)
        try:
            torch.hub.download_url_to_file(
                weights.url, str(cached), hash_prefix=digest.group(1) if digest else None
            )
        except Exception as error:  # no network, proxy, HTTP error, hash mismatch
            raise UserError(
                f"cannot download torchvision's {name} weights ({type(error).__name__}); "
                f"offline, fetch {weights.url} elsewhere and put it at {cached}"
            ) from error
    return cached


# ---------------------------------------------------------------------------------------------
# TF-Slim


def _from_tf_slim(tensors: dict, model: nn.Module, source) -> dict[str, np.ndarray]:
    own = model.state_dict()
    names = slim_variable_names(model, fixed_gammas=True)
    if not any(slim in tensors for slim in names.values()):
        scopes = sorted({n.split("/")[0] for n in tensors})
        raise UserError(
            f"{source} holds none of this model's TF-Slim variables (its scopes: "
            f"{', '.join(scopes[:5])}; the model's: {model.scope})"
        )
    heads = _classifier_names(model)
    mapped = {}
    for key, slim in names.items():
        if slim in tensors:
            value = _from_tf_layout(tensors[slim], own[key].dim(), slim)
            if key in heads and value.shape[0] == own[key].shape[0] + 1:
                value = value[1:]  # slim's class 0 is "background", which the model lacks
            mapped[key] = value
        elif slim.endswith("/BatchNorm/gamma") and slim.replace("/gamma", "/beta") in tensors:
            mapped[key] = np.ones(own[key].shape, np.float32)  # slim's BN has no gamma
    return mapped


def _from_tf_layout(value: np.ndarray, target_dims: int, name: str) -> np.ndarray:
    if name.endswith("depthwise_weights"):
        # (H, W, in, multiplier) -> (in * multiplier, 1, H, W): TF puts the maps made from one
        # input channel next to each other, as a grouped conv with groups = in does.
        height, width, channels, multiplier = value.shape
        return value.reshape(height, width, channels * multiplier).transpose(2, 0, 1)[:, None]
    if value.ndim == 4 and target_dims == 4:
        return value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    if target_dims == 2:  # a classifier, as a 1x1 conv (HWIO) or a dense layer (in, out)
        return value.reshape(-1, value.shape[-1]).T
    return value


# ---------------------------------------------------------------------------------------------
# Keras


def _from_keras(weights: dict, model: nn.Module, source) -> dict[str, np.ndarray]:
    layers: dict[str, dict[str, np.ndarray]] = {}
    for name, value in weights.items():
        layer, weight = name.split("/", 1)
        layers.setdefault(layer, {})[weight] = value
    convs = sorted(
        (n for n, w in layers.items() if w.get("kernel", np.empty(0)).ndim == 4),
        key=_creation_order,
    )
    norms = sorted((n for n, w in layers.items() if "moving_mean" in w), key=_creation_order)
    denses = [n for n, w in layers.items() if w.get("kernel", np.empty(0)).ndim == 2]
    aux = tuple(f"{name}." for name, kind in getattr(model, "stages", ()) if kind == "aux")
    own = model.state_dict()
    ours = [
        k.removesuffix(".conv.weight")
        for k in own
        if k.endswith(".conv.weight") and not k.startswith(aux)
    ]
    heads = [
        k.removesuffix(".weight")
        for k in _classifier_names(model)
        if k.endswith(".weight") and not k.startswith(aux)
    ]
    # A file without dense layers (Keras's include_top=False, `..._notop.h5`) leaves the
    # classifier as the model made it.
    if len(convs) != len(ours) or len(norms) != len(ours) or len(denses) not in (0, len(heads)):
        raise UserError(
            f"{source} does not fit this model: {len(convs)} convolutions, {len(norms)} batch "
            f"norms and {len(denses)} dense layers, the model has {len(ours)}, {len(ours)} "
            f"and {len(heads)} (same model as the source?)"
        )
    mapped = {}
    for module, conv, norm in zip(ours, convs, norms):
        mapped[f"{module}.conv.weight"] = layers[conv]["kernel"].transpose(3, 2, 0, 1)
        if "bias" in layers[conv]:
            mapped[f"{module}.conv.bias"] = layers[conv]["bias"]
        bn = layers[norm]
        channels = bn["moving_mean"].shape
        mapped[f"{module}.bn.weight"] = bn.get("gamma", np.ones(channels, np.float32))
        mapped[f"{module}.bn.bias"] = bn.get("beta", np.zeros(channels, np.float32))
        mapped[f"{module}.bn.running_mean"] = bn["moving_mean"]
        mapped[f"{module}.bn.running_var"] = bn["moving_variance"]
    for module, dense in zip(heads, denses):
        mapped[f"{module}.weight"] = layers[dense]["kernel"].T
        mapped[f"{module}.bias"] = layers[dense]["bias"]
    return mapped


def _creation_order(layer_name: str) -> int:
    """Keras numbers unnamed layers in creation order: conv2d, conv2d_1, conv2d_2, ..."""
    number = re.search(r"_(\d+)$", layer_name)
    return int(number.group(1)) if number else 0
