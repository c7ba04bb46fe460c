"""`tf.train.Example` records, encoded and decoded by hand (no protobuf, no TensorFlow).

The wire format, from tensorflow/core/example/{example,feature}.proto:

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }     # map entry: { key = 1; value = 2; }
    Feature  { oneof { BytesList bytes_list = 1; FloatList float_list = 2;
                       Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }
    FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

`encode_example` writes map entries sorted by key, which is what TensorFlow's
`SerializeToString(deterministic=True)` does, so equal features give equal bytes.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import numpy as np

from incept.data.protowire import (
    FIXED32,
    LENGTH_DELIMITED,
    VARINT,
    MalformedProtoError,
    ProtoReader,
    signed64,
)

FeatureValue = int | float | bytes | str | Sequence | np.ndarray

_BYTES_LIST = 1
_FLOAT_LIST = 2
_INT64_LIST = 3


class MalformedExampleError(MalformedProtoError):
    """The bytes are not a well-formed serialized `tf.train.Example`."""


# ---------------------------------------------------------------------------------------------
# Encoding


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 values travel as their two's complement
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _list_kind(name: str, value: FeatureValue) -> tuple[int, list]:
    """The Feature kind (bytes, float or int64 list) and the values, for one user value."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "iub":
            return _INT64_LIST, [int(v) for v in value.ravel()]
        if value.dtype.kind == "f":
            return _FLOAT_LIST, [float(v) for v in value.ravel()]
        if value.dtype.kind in "SO":
            return (_BYTES_LIST, []) if value.size == 0 else _list_kind(name, list(value.ravel()))
        raise TypeError(f"feature {name!r}: numpy dtype {value.dtype} has no Example type")
    if isinstance(value, (bytes, bytearray, memoryview, str, int, float, np.generic)):
        value = [value]
    values = list(value)
    if not values:
        raise TypeError(
            f"feature {name!r}: an empty list has no type; pass a typed numpy array instead "
            "(e.g. np.zeros(0, np.float32))"
        )
    if all(isinstance(v, (bytes, bytearray, memoryview, str)) for v in values):
        return _BYTES_LIST, [v.encode() if isinstance(v, str) else bytes(v) for v in values]
    if all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return _INT64_LIST, [int(v) for v in values]
    if all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        return _FLOAT_LIST, [float(v) for v in values]
    raise TypeError(f"feature {name!r}: values must be all bytes/str, all ints or all numbers")


def _encode_feature(kind: int, values: list) -> bytes:
    if kind == _BYTES_LIST:
        body = b"".join(_length_delimited(1, v) for v in values)
    elif kind == _FLOAT_LIST:
        body = _length_delimited(1, struct.pack(f"<{len(values)}f", *values)) if values else b""
    else:
        body = _length_delimited(1, b"".join(_varint(v) for v in values)) if values else b""
    return _length_delimited(kind, body)


def encode_example(features: Mapping[str, FeatureValue]) -> bytes:
    """Serialize a feature mapping as a `tf.train.Example`.

    Value types: bytes/str (and lists of them) become a bytes_list, ints an int64_list,
    floats (or ints mixed with floats) a float_list. A numpy array's dtype picks the type,
    which is how to write an empty list (for example, no bounding boxes).
    """
    entries = []
    for name in sorted(features):
        kind, values = _list_kind(name, features[name])
        entry = _length_delimited(1, name.encode()) + _length_delimited(
            2, _encode_feature(kind, values)
        )
        entries.append(_length_delimited(1, entry))
    return _length_delimited(1, b"".join(entries))


# ---------------------------------------------------------------------------------------------
# Decoding


def _decode_feature(data: bytes, start: int, end: int) -> list:
    # A Feature holds one list; if a writer repeats the oneof, the last one wins (protobuf rule).
    values: list = []
    for kind, wire, f_start, f_end in ProtoReader(data, start, end).fields():
        if wire != LENGTH_DELIMITED or kind not in (_BYTES_LIST, _FLOAT_LIST, _INT64_LIST):
            continue
        values = []
        for field, v_wire, v_start, v_end in ProtoReader(data, f_start, f_end).fields():
            if field != 1:
                continue
            if kind == _BYTES_LIST and v_wire == LENGTH_DELIMITED:
                values.append(bytes(data[v_start:v_end]))
            elif kind == _FLOAT_LIST and v_wire == LENGTH_DELIMITED:  # packed
                if (v_end - v_start) % 4:
                    raise MalformedExampleError("packed float list length is not a multiple of 4")
                values.extend(struct.unpack_from(f"<{(v_end - v_start) // 4}f", data, v_start))
            elif kind == _FLOAT_LIST and v_wire == FIXED32:  # unpacked
                values.append(struct.unpack_from("<f", data, v_start)[0])
            elif kind == _INT64_LIST and v_wire == LENGTH_DELIMITED:  # packed
                values.extend(map(signed64, ProtoReader(data, v_start, v_end).varints()))
            elif kind == _INT64_LIST and v_wire == VARINT:  # unpacked
                values.append(signed64(ProtoReader(data, v_start, v_end).varint()))
            else:
                raise MalformedExampleError(f"wire type {v_wire} does not fit list kind {kind}")
    return values


def decode_example(data: bytes) -> dict[str, list[int] | list[float] | list[bytes]]:
    """Parse a serialized `tf.train.Example` into {name: list of values}.

    Reads packed and unpacked repeated fields alike; unknown fields are skipped, as protobuf
    readers do. Raises `MalformedExampleError` on bytes that are not an Example.
    """
    try:
        return _decode_features(data)
    except MalformedExampleError:
        raise
    except MalformedProtoError as error:  # from the wire reader: say what the bytes are not
        raise MalformedExampleError(str(error)) from None


def _decode_features(data: bytes) -> dict[str, list]:
    features: dict[str, list] = {}
    for field, wire, start, end in ProtoReader(data).fields():
        if field != 1 or wire != LENGTH_DELIMITED:
            continue
        for entry_field, entry_wire, e_start, e_end in ProtoReader(data, start, end).fields():
            if entry_field != 1 or entry_wire != LENGTH_DELIMITED:
                continue
            key, values = "", []
            for part, part_wire, p_start, p_end in ProtoReader(data, e_start, e_end).fields():
                if part == 1 and part_wire == LENGTH_DELIMITED:
                    try:
                        key = bytes(data[p_start:p_end]).decode()
                    except UnicodeDecodeError as error:
                        raise MalformedExampleError("feature name is not UTF-8") from error
                elif part == 2 and part_wire == LENGTH_DELIMITED:
                    values = _decode_feature(data, p_start, p_end)
            features[key] = values
    return features
