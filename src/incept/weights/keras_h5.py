"""Read Keras HDF5 weight files into {"layer/weight": numpy array}, in the file's layer order.

Keras 2 (and tf-keras) files, in the layout of the published
`inception_v3_weights_tf_dim_ordering_tf_kernels.h5`: the root (or, in a full-model file made
by `model.save`, its `model_weights` group) has an attribute `layer_names`; each layer's group
has an attribute `weight_names` (e.g. `conv2d_37/kernel:0`) naming its datasets. Keras
InceptionV3's layers are unnamed (`conv2d_37`), so the order of layers is what ties a weight
to its place in the network: the dict keeps the file's order, and only layers with weights
appear. Attributes too big for one HDF5 header are split by Keras into `layer_names0`,
`layer_names1`, ...; those are joined again.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from incept.errors import UserError


def read_keras_h5(path: str | Path) -> dict[str, np.ndarray]:
    """Weights of a Keras HDF5 file, as {"layer_name/weight_name": array} in layer order.

    The weight name is the dataset name without its layer prefix and `:0` suffix, so a
    convolution gives `conv2d_37/kernel` and a batch norm `batch_normalization_37/beta`,
    `/moving_mean`, `/moving_variance` (and `/gamma` when it scales).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no Keras weight file at {path}")
    try:
        file = h5py.File(path, "r")
    except OSError as error:
        raise UserError(f"{path} is not a readable HDF5 file ({error})") from error
    with file:
        root = file.get("model_weights", file)
        layer_names = _string_list_attribute(root, "layer_names")
        if layer_names is None:
            raise UserError(
                f"{path} is not in Keras's HDF5 weight layout (no layer_names attribute); "
                "Keras 3 `.weights.h5` files are not supported: save with tf-keras "
                "`model.save_weights('w.h5')`"
            )
        weights = {}
        for layer_name in layer_names:
            layer = root[layer_name]
            for weight_name in _string_list_attribute(layer, "weight_names") or []:
                weights[f"{layer_name}/{_short_name(layer_name, weight_name)}"] = np.asarray(
                    layer[weight_name]
                )
        return weights


def _string_list_attribute(group: h5py.Group, name: str) -> list[str] | None:
    if name in group.attrs:
        chunks = [group.attrs[name]]
    else:
        chunks = []
        while f"{name}{len(chunks)}" in group.attrs:
            chunks.append(group.attrs[f"{name}{len(chunks)}"])
        if not chunks:
            return None
    # Files from Keras 2.0 store fixed-length bytes, newer ones variable-length str.
    return [v.decode() if isinstance(v, bytes) else str(v) for c in chunks for v in c]


def _short_name(layer_name: str, weight_name: str) -> str:
    """`conv2d_37/kernel:0` -> `kernel`; names with more levels keep all but the layer's."""
    name = weight_name.removesuffix(":0")
    return name.removeprefix(layer_name + "/")
