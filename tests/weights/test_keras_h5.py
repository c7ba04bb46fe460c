"""Keras HDF5 weight files: the values and the layer order Keras wrote.

Fixture: tests/fixtures/make_weight_fixtures.py (tf-keras 2.21 InceptionV3, narrowed).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from incept.errors import UserError
from incept.weights.keras_h5 import read_keras_h5

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "weights"
KERAS_DIGESTS = json.loads((FIXTURES / "keras_v3_weights.json").read_text())


def digest(value: np.ndarray) -> dict:
    return {
        "dtype": str(value.dtype),
        "shape": list(value.shape),
        "sha256": hashlib.sha256(value.tobytes()).hexdigest()[:24],
    }


def test_weights_file_gives_keras_values_in_keras_layer_order():
    weights = read_keras_h5(FIXTURES / "keras_v3.h5")
    assert list(weights) == list(KERAS_DIGESTS)  # the order is what maps unnamed layers
    for name, expected in KERAS_DIGESTS.items():
        assert digest(weights[name]) == expected, name
    # Keras InceptionV3's batch norms do not scale: no gamma, as in slim.
    assert "batch_normalization_5/gamma" not in weights
    assert weights["conv2d_5/kernel"].ndim == 4  # HWIO


def test_full_model_file_with_keras_2_0_attributes(tmp_path):
    """`model.save` puts the weights under `model_weights`; Keras 2.0 wrote its name lists as
    fixed-length bytes, and splits lists too big for one HDF5 header into name0, name1, ..."""
    path = tmp_path / "full_model.h5"
    with h5py.File(FIXTURES / "keras_v3.h5", "r") as source, h5py.File(path, "w") as target:
        target.attrs["model_config"] = "{}"
        group = target.create_group("model_weights")
        names = [str(n) for n in source.attrs["layer_names"]]
        half = len(names) // 2
        group.attrs["layer_names0"] = np.array([n.encode() for n in names[:half]])
        group.attrs["layer_names1"] = np.array([n.encode() for n in names[half:]])
        for name in names:
            source.copy(source[name], group, name=name)
            weight_names = [str(w).encode() for w in source[name].attrs["weight_names"]]
            group[name].attrs["weight_names"] = np.array(weight_names, dtype="S")
    assert {k: digest(v) for k, v in read_keras_h5(path).items()} == KERAS_DIGESTS


def test_not_a_keras_weight_file(tmp_path):
    with h5py.File(tmp_path / "other.h5", "w") as file:
        file.create_dataset("layers/dense/vars/0", data=np.zeros(3))
    (tmp_path / "text.h5").write_text("not hdf5")
    for name, fragment in [
        ("other.h5", "no layer_names"),
        ("text.h5", "not a readable HDF5"),
        ("missing.h5", "no Keras weight file"),
    ]:
        with pytest.raises(UserError, match=fragment) as raised:
            read_keras_h5(tmp_path / name)
        assert "\n" not in str(raised.value)
