"""TensorFlow checkpoints read without TensorFlow give exactly what TensorFlow's reader gives.

Fixtures: tests/fixtures/make_weight_fixtures.py (run with TensorFlow 2.21 and tf-slim 1.1).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from incept.errors import UserError
from incept.weights.tf_checkpoint import looks_like_tf_checkpoint, read_tf_checkpoint

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "weights"
SLIM_DIGESTS = json.loads((FIXTURES / "slim_v3_tensors.json").read_text())


def digest(value: np.ndarray) -> dict:
    return {
        "dtype": str(value.dtype),
        "shape": list(value.shape),
        "sha256": hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:24],
    }


# dtypes_v1_sharded.ckpt names the file dtypes_v1_sharded.ckpt-00000-of-00001.
@pytest.mark.parametrize("path", ["dtypes_v2/ckpt", "dtypes_v1.ckpt", "dtypes_v1_sharded.ckpt"])
def test_every_dtype_reads_as_tensorflow_reads_it(path):
    tensors = read_tf_checkpoint(FIXTURES / path)
    reference = np.load(FIXTURES / "dtypes_values.npz")
    expected_names = set(reference.files) | {"string"}
    if "v1" in path:
        expected_names.discard("bfloat16")  # the V1 format has no bfloat16
    assert set(tensors) == expected_names
    for name in expected_names - {"string"}:
        assert tensors[name].dtype == reference[name].dtype, name
        assert tensors[name].shape == reference[name].shape, name
        np.testing.assert_array_equal(tensors[name], reference[name], err_msg=name)
    strings = json.loads((FIXTURES / "dtypes_strings.json").read_text())["string"]
    assert [s.decode() for s in tensors["string"]] == strings


def test_partitioned_variable_is_put_back_together():
    # TensorFlow's reader returns the whole (130, 2) variable; it was saved as 3 slices of
    # 44, 43 and 43 rows under keys only the OrderedCode encoding finds.
    reference = np.load(FIXTURES / "dtypes_values.npz")["partitioned"]
    for path in ("dtypes_v2/ckpt", "dtypes_v1.ckpt"):
        np.testing.assert_array_equal(read_tf_checkpoint(FIXTURES / path)["partitioned"], reference)


@pytest.mark.parametrize(
    "path",
    [
        "slim_v3_v2/model.ckpt",
        "slim_v3_v2/model.ckpt.index",
        "slim_v3_v2/model.ckpt.data-00000-of-00001",
        "slim_v3_v2",  # a folder: its `checkpoint` state file names the checkpoint
        "slim_v3_v1.ckpt",
    ],
)
def test_slim_checkpoint_in_every_form_matches_tensorflow(path):
    tensors = read_tf_checkpoint(FIXTURES / path)
    assert list(tensors) == sorted(SLIM_DIGESTS)
    for name, expected in SLIM_DIGESTS.items():
        assert digest(tensors[name]) == expected, name
    # Sanity of the fixture itself: slim's irregular names and its BN without gamma.
    assert "InceptionV3/Mixed_5c/Branch_1/Conv_1_0c_5x5/weights" in tensors
    assert not any(name.endswith("/gamma") for name in tensors)


def test_moved_folder_with_absolute_state_path(tmp_path):
    # Saver writes absolute paths into `checkpoint`; a copied train dir must still resolve.
    folder = tmp_path / "moved"
    shutil.copytree(FIXTURES / "slim_v3_v2", folder)
    (folder / "checkpoint").write_text('model_checkpoint_path: "/gone/elsewhere/model.ckpt"\n')
    tensors = read_tf_checkpoint(folder)
    name = "InceptionV3/Logits/Conv2d_1c_1x1/biases"
    assert digest(tensors[name]) == SLIM_DIGESTS[name]


def corrupt_copy(tmp_path: Path, source: Path, offset: int) -> Path:
    target = tmp_path / source.name
    data = bytearray(source.read_bytes())
    data[offset] ^= 0x01
    target.write_bytes(bytes(data))
    return target


def assert_one_line_user_error(path, *fragments):
    with pytest.raises(UserError) as raised:
        read_tf_checkpoint(path)
    message = str(raised.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message
    return message


def test_flipped_byte_in_data_file(tmp_path):
    shutil.copy(FIXTURES / "slim_v3_v2" / "model.ckpt.index", tmp_path)
    data = FIXTURES / "slim_v3_v2" / "model.ckpt.data-00000-of-00001"
    corrupt_copy(tmp_path, data, data.stat().st_size // 2)
    assert_one_line_user_error(tmp_path / "model.ckpt", "corrupt", "checksum")


def test_flipped_byte_in_index(tmp_path):
    shutil.copy(FIXTURES / "slim_v3_v2" / "model.ckpt.data-00000-of-00001", tmp_path)
    corrupt_copy(tmp_path, FIXTURES / "slim_v3_v2" / "model.ckpt.index", 100)
    assert_one_line_user_error(tmp_path / "model.ckpt", "corrupt", "checksum")


def test_truncated_index(tmp_path):
    shutil.copy(FIXTURES / "slim_v3_v2" / "model.ckpt.data-00000-of-00001", tmp_path)
    index = (FIXTURES / "slim_v3_v2" / "model.ckpt.index").read_bytes()
    (tmp_path / "model.ckpt.index").write_bytes(index[: len(index) * 2 // 3])
    assert_one_line_user_error(tmp_path / "model.ckpt", "truncated")


def test_truncated_data_file(tmp_path):
    shutil.copy(FIXTURES / "slim_v3_v2" / "model.ckpt.index", tmp_path)
    data = (FIXTURES / "slim_v3_v2" / "model.ckpt.data-00000-of-00001").read_bytes()
    (tmp_path / "model.ckpt.data-00000-of-00001").write_bytes(data[: len(data) // 2])
    assert_one_line_user_error(tmp_path / "model.ckpt", "truncated")


def test_missing_data_file(tmp_path):
    shutil.copy(FIXTURES / "slim_v3_v2" / "model.ckpt.index", tmp_path)
    assert_one_line_user_error(tmp_path / "model.ckpt", "model.ckpt.data-00000-of-00001")


def test_flipped_byte_in_v1_file(tmp_path):
    source = FIXTURES / "slim_v3_v1.ckpt"
    path = corrupt_copy(tmp_path, source, source.stat().st_size // 2)
    assert_one_line_user_error(path, "corrupt", "checksum")


def test_paths_that_are_not_checkpoints(tmp_path):
    assert_one_line_user_error(tmp_path / "nothing.ckpt", "no TensorFlow checkpoint")
    (tmp_path / "notes.txt").write_text("not a checkpoint, but long enough to have a footer " * 3)
    assert_one_line_user_error(tmp_path / "notes.txt", "not a TensorFlow checkpoint")
    assert_one_line_user_error(tmp_path, "no `checkpoint` state file")
    assert not looks_like_tf_checkpoint(tmp_path / "notes.txt")
    assert looks_like_tf_checkpoint(FIXTURES / "slim_v3_v1.ckpt")
    assert looks_like_tf_checkpoint(FIXTURES / "slim_v3_v2")
