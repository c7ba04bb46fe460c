"""tf.train.Example codec and TFRecord framing against files written by real TensorFlow."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from incept.data.crc32c import crc32c, masked_crc32c
from incept.data.example import MalformedExampleError, decode_example, encode_example
from incept.data.tfrecord import (
    CorruptRecordError,
    ShardIndex,
    index_locations,
    iter_records,
    load_index,
    read_record,
    save_index,
    write_records,
)
from incept.errors import UserError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "tfrecord"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())
KINDS = EXPECTED.pop("kinds")
SHARDS = sorted(EXPECTED)


def bitwise_crc32c(data: bytes) -> int:
    """Bit-at-a-time CRC-32C straight from the definition: an independent reference."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def typed(features: dict) -> dict:
    dtypes = {"bytes": object, "float": np.float32, "int64": np.int64}
    return {k: v if v else np.zeros(0, dtypes[KINDS[k]]) for k, v in features.items()}


def test_crc32c_check_value_and_lengths():
    assert crc32c(b"123456789") == 0xE3069283  # the published CRC-32C check value
    rng = np.random.default_rng(0)
    for length in (0, 1, 7, 2047, 2048, 2049, 4096 + 3, 70_001):
        data = rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        assert crc32c(data) == bitwise_crc32c(data), length
        head = length // 3
        assert crc32c(data[head:], crc32c(data[:head])) == crc32c(data)


def test_crc32c_rfc3720_vectors_from_any_buffer():
    # iSCSI's CRC-32C test vectors, RFC 3720 appendix B.4.
    assert crc32c(bytes(32)) == 0x8A9136AA
    assert crc32c(b"\xff" * 32) == 0x62A8AB43
    ascending = bytes(range(32))
    assert crc32c(ascending) == 0x46DD794E
    assert crc32c(ascending[::-1]) == 0x113FDB5C
    # Table blocks arrive as memoryview slices and encoders build bytearrays.
    assert crc32c(memoryview(b"x" + ascending)[1:]) == 0x46DD794E
    assert crc32c(bytearray(ascending)) == 0x46DD794E
    assert masked_crc32c(b"") == 0xA282EAD8  # the CRC of nothing is 0: only the mask remains


def test_masked_crc_of_tensorflow_record_headers():
    raw = (FIXTURES / SHARDS[0]).read_bytes()
    length, length_crc = struct.unpack("<QI", raw[:12])
    assert masked_crc32c(raw[:8]) == length_crc
    assert masked_crc32c(raw[12 : 12 + length]) == struct.unpack("<I", raw[12 + length :][:4])[0]


@pytest.mark.parametrize("shard", SHARDS)
def test_reads_tensorflow_files_exactly(shard):
    records = [decode_example(r) for r in iter_records(FIXTURES / shard)]
    assert len(records) == len(EXPECTED[shard])
    for ours, theirs in zip(records, EXPECTED[shard]):
        assert set(ours) == set(theirs)
        for key, value in theirs.items():
            if isinstance(value, dict):  # the JPEG: compared by digest
                assert hashlib.sha256(ours[key][0]).hexdigest() == value["sha256"]
            elif KINDS[key] == "bytes":
                assert [v.decode() for v in ours[key]] == value
            else:
                assert ours[key] == value  # float32 values widen to the same doubles


@pytest.mark.parametrize("shard", SHARDS)
def test_our_writer_reproduces_tensorflow_bytes(shard, tmp_path):
    source = FIXTURES / shard
    records = [encode_example(typed(decode_example(r))) for r in iter_records(source)]
    positions = write_records(tmp_path / "out", records)
    assert (tmp_path / "out").read_bytes() == source.read_bytes()
    assert [length for _, length in positions] == [len(r) for r in records]


def test_encode_types_and_values():
    data = encode_example(
        {"i": [1, -2, 2**40], "f": 0.5, "b": "é", "e": np.zeros(0, np.float32), "n": np.int32(7)}
    )
    assert decode_example(data) == {
        "i": [1, -2, 2**40],
        "f": [0.5],
        "b": ["é".encode()],
        "e": [],
        "n": [7],
    }
    with pytest.raises(TypeError):
        encode_example({"empty": []})
    with pytest.raises(TypeError):
        encode_example({"mixed": [1, b"x"]})


def test_decode_unpacked_repeated_fields():
    # Built by hand from the protobuf wire format: int64 values 3 and 300 as separate varints
    # (tag 0x08), floats 1.5 and -2 as separate fixed32 (tag 0x0d).
    int_list = b"\x08\x03" + b"\x08\xac\x02"
    float_list = b"\x0d" + struct.pack("<f", 1.5) + b"\x0d" + struct.pack("<f", -2.0)

    def entry(key: bytes, kind: int, body: bytes) -> bytes:
        feature = bytes([kind << 3 | 2, len(body)]) + body
        inner = b"\x0a" + bytes([len(key)]) + key + b"\x12" + bytes([len(feature)]) + feature
        return b"\x0a" + bytes([len(inner)]) + inner

    features = entry(b"ints", 3, int_list) + entry(b"floats", 2, float_list)
    example = b"\x0a" + bytes([len(features)]) + features
    assert decode_example(example) == {"ints": [3, 300], "floats": [1.5, -2.0]}


def test_decode_rejects_garbage():
    with pytest.raises(MalformedExampleError):
        decode_example(b"\x0a\x50\x01")  # a length running past the end


def test_bit_flip_is_reported_with_file_and_offset(tmp_path):
    records = [b"a" * 10, b"b" * 3000, b"c" * 20]
    path = tmp_path / "shard"
    positions = write_records(path, records)
    raw = bytearray(path.read_bytes())
    second = positions[1][0]
    raw[second + 12 + 1500] ^= 0x04  # one bit inside the second record's data
    path.write_bytes(bytes(raw))
    with pytest.raises(CorruptRecordError) as caught:
        list(iter_records(path))
    assert isinstance(caught.value, UserError)
    assert str(path) in str(caught.value) and f"byte offset {second}" in str(caught.value)
    skipped: list = []
    assert list(iter_records(path, skip_corrupt=True, skipped=skipped)) == [records[0], records[2]]
    assert [e.offset for e in skipped] == [second]


def test_broken_length_and_truncation(tmp_path):
    path = tmp_path / "shard"
    positions = write_records(path, [b"x" * 5, b"y" * 5, b"z" * 5])
    intact = path.read_bytes()
    raw = bytearray(intact)
    raw[positions[1][0]] ^= 0x01  # the second record's length field
    path.write_bytes(bytes(raw))
    skipped: list = []
    assert list(iter_records(path, skip_corrupt=True, skipped=skipped)) == [b"x" * 5]
    assert skipped[0].problem == "length checksum mismatch"
    path.write_bytes(intact[: positions[1][0] + 14])  # cut inside the second record
    with pytest.raises(CorruptRecordError, match="ends inside"):
        list(iter_records(path))


def test_failed_write_leaves_no_file(tmp_path):
    def records():
        yield b"one"
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_records(tmp_path / "train-00000-of-00001", records())
    assert list(tmp_path.iterdir()) == []


def test_index_random_access_and_staleness(tmp_path):
    shard = tmp_path / "train-00000-of-00001"
    records = [encode_example({"image/class/label": i + 1, "pad": b"p" * i}) for i in range(5)]
    write_records(shard, records)
    label_of = lambda data: decode_example(data)["image/class/label"][0]
    index = load_index(shard, label_of)
    assert list(index.labels) == [1, 2, 3, 4, 5]
    location = index_locations(shard)[0]
    assert location.exists() and location.parent.name.startswith(".")
    assert sorted(p.name for p in tmp_path.glob("train-*")) == [shard.name]
    fd = os.open(shard, os.O_RDONLY)
    try:
        assert read_record(fd, int(index.offsets[3]), int(index.lengths[3]), shard) == records[3]
    finally:
        os.close(fd)
    # A stored index with a wrong label shows whether the stored one is used...
    save_index(shard, ShardIndex(index.offsets, index.lengths, index.labels * 0 + 9))
    assert list(load_index(shard, label_of).labels) == [9] * 5
    # ...and once the shard changes, it is rebuilt.
    write_records(shard, records[:2])
    assert list(load_index(shard, label_of).labels) == [1, 2]


def test_index_goes_to_cache_when_shard_folder_is_not_writable(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    shard = data / "train-00000-of-00001"
    write_records(shard, [encode_example({"label": 0})])
    # A plain file where the index folder would go makes that folder unwritable, even as root.
    (data / ".incept-index").write_text("not a folder")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    load_index(shard, lambda d: 0)
    cached = index_locations(shard)[1]
    assert cached.exists() and str(cached).startswith(str(tmp_path / "cache"))
