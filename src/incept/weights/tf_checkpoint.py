"""Read TensorFlow checkpoints into {variable name: numpy array}, without TensorFlow.

Two formats exist, and the released Inception weights come in both:

- V2 (what `tf.train.Saver` and `tf.train.Checkpoint` write today): `PREFIX.index`, an
  SSTable mapping each name to a `BundleEntryProto` (dtype, shape, shard, offset, size, masked
  CRC-32C), and `PREFIX.data-SSSSS-of-NNNNN` files holding the raw little-endian bytes.
- V1 (the 2016 releases, e.g. `inception_v3.ckpt`): one SSTable whose "" entry lists the
  tensors (`SavedTensorSliceMeta`) and whose other entries each hold one slice of one tensor
  as a `TensorProto` with its values in the typed repeated fields.

Both tables are LevelDB's format as TensorFlow writes it (tensorflow/core/lib/io/table*):
blocks of prefix-compressed key/value entries, each block followed by a compression byte and
the masked CRC-32C of block + byte, an index block of block handles, and a 48-byte footer.
TensorFlow writes checkpoint tables uncompressed. The protos are read with the project's
protobuf wire walker; field numbers come from tensor_bundle.proto, saved_tensor_slice.proto,
tensor.proto, tensor_shape.proto and tensor_slice.proto.

Partitioned variables (saved as slices) are put back together; bfloat16 values come back as
float32 (exactly: bfloat16 is float32's upper half), strings as an object array of bytes.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

import numpy as np

from incept.data.crc32c import crc32c, mask
from incept.data.protowire import (
    LENGTH_DELIMITED,
    MalformedProtoError,
    ProtoReader,
    field_values,
    signed64,
)
from incept.errors import UserError

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_BYTES = 48
_BLOCK_TRAILER_BYTES = 5  # compression type byte + masked CRC-32C

# tensorflow/core/framework/types.proto: DataType -> numpy dtype (little-endian).
_NUMPY_DTYPES = {
    1: "<f4",  # DT_FLOAT
    2: "<f8",  # DT_DOUBLE
    3: "<i4",  # DT_INT32
    4: "u1",  # DT_UINT8
    5: "<i2",  # DT_INT16
    6: "i1",  # DT_INT8
    8: "<c8",  # DT_COMPLEX64
    9: "<i8",  # DT_INT64
    10: "?",  # DT_BOOL
    14: "<u2",  # DT_BFLOAT16, widened to float32 after reading
    17: "<u2",  # DT_UINT16
    18: "<c16",  # DT_COMPLEX128
    19: "<f2",  # DT_HALF
    22: "<u4",  # DT_UINT32
    23: "<u8",  # DT_UINT64
}
_GET_IT_AGAIN = "; download or copy it again"
_DT_STRING = 7
_DT_BFLOAT16 = 14
_DT_HALF = 19


def read_tf_checkpoint(path: str | Path) -> dict[str, np.ndarray]:
    """All tensors of a TensorFlow checkpoint, by variable name, in name order.

    `path` may be the checkpoint prefix (`model.ckpt`, `model.ckpt-1000`), its `.index` or
    `.data-*` file, a V1 single-file checkpoint, or a folder with a `checkpoint` state file
    (its latest checkpoint). Raises `UserError` for a missing, unreadable or corrupt file.
    """
    location = _locate(Path(path))
    try:
        if isinstance(location, tuple):
            return _read_v1(list(location))
        return _read_v2(location)
    except MalformedProtoError as error:
        raise UserError(f"{path}: malformed checkpoint record ({error}){_GET_IT_AGAIN}") from error


def looks_like_tf_checkpoint(path: str | Path) -> bool:
    """Whether `path` names a TensorFlow checkpoint in any of the forms `read_tf_checkpoint`
    takes (cheap: looks at file names and the table footer only)."""
    try:
        _locate(Path(path))
    except UserError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# Finding the files


def _locate(path: Path) -> Path | tuple[Path, ...]:
    """The V2 prefix (a Path) or the V1 files (a tuple of Paths) that `path` stands for."""
    if path.is_dir():
        return _locate(_latest_in_folder(path))
    name = path.name
    if name.endswith(".index"):
        path = path.with_name(name[: -len(".index")])
    elif re.search(r"\.data-\d{5}-of-\d{5}$", name):
        path = path.with_name(re.sub(r"\.data-\d{5}-of-\d{5}$", "", name))
    if path.with_name(path.name + ".index").is_file():
        return path
    if path.is_file():
        _check_table_footer(path)
        return (path,)
    # A sharded V1 save: PREFIX-00000-of-00002, PREFIX-00001-of-00002.
    shards = sorted(path.parent.glob(path.name + "-[0-9][0-9][0-9][0-9][0-9]-of-[0-9]*"))
    if shards:
        for shard in shards:
            _check_table_footer(shard)
        return tuple(shards)
    raise UserError(
        f"no TensorFlow checkpoint at {path}: give the checkpoint prefix (model.ckpt), "
        "its .index file, a V1 .ckpt file, or the folder holding a `checkpoint` file"
    )


def _latest_in_folder(folder: Path) -> Path:
    """The checkpoint a folder's `checkpoint` state file names (or its only .index file)."""
    state = folder / "checkpoint"
    if state.is_file():
        found = re.search(r'^model_checkpoint_path:\s*"(.*)"\s*$', state.read_text(), re.M)
        if not found:
            raise UserError(f"{state} names no model_checkpoint_path; point at a checkpoint file")
        named = Path(found.group(1).encode().decode("unicode_escape"))
        if not named.is_absolute():
            return folder / named
        # A folder that was moved or copied keeps absolute paths to where it used to be.
        return named if _exists_as_checkpoint(named) else folder / named.name
    indexes = sorted(folder.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0]
    raise UserError(
        f"{folder} has no `checkpoint` state file and {len(indexes)} .index files; "
        "name the checkpoint prefix instead"
    )


def _exists_as_checkpoint(prefix: Path) -> bool:
    return prefix.with_name(prefix.name + ".index").is_file() or prefix.is_file()


# ---------------------------------------------------------------------------------------------
# SSTables


def _check_table_footer(path: Path) -> None:
    with open(path, "rb") as file:
        file.seek(0, 2)
        if file.tell() < _FOOTER_BYTES:
            raise UserError(f"{path} is too short to be a TensorFlow checkpoint table")
        file.seek(-8, 2)
        if struct.unpack("<Q", file.read(8))[0] != _TABLE_MAGIC:
            raise UserError(
                f"{path} is not a TensorFlow checkpoint table (or it was truncated): "
                "no table footer at its end"
            )


def _read_table(path: Path) -> list[tuple[bytes, memoryview]]:
    """All (key, value) entries of an SSTable file, in key order, checksums verified."""
    _check_table_footer(path)
    data = memoryview(path.read_bytes())
    footer = ProtoReader(data, len(data) - _FOOTER_BYTES, len(data) - 8)
    # Two block handles (offset, size): the metaindex, where TensorFlow keeps nothing, then the
    # index, whose entries are the handles of the data blocks.
    footer.varint(), footer.varint()
    index_handle = (footer.varint(), footer.varint())
    entries = []
    for _, handle in _block_entries(path, data, index_handle):
        reader = ProtoReader(handle)
        entries.extend(_block_entries(path, data, (reader.varint(), reader.varint())))
    return entries


def _block_entries(
    path: Path, data: memoryview, handle: tuple[int, int]
) -> list[tuple[bytes, memoryview]]:
    offset, size = handle
    end = offset + size
    if end + _BLOCK_TRAILER_BYTES > len(data):
        raise UserError(
            f"{path} is truncated: a table block runs past the end of the file{_GET_IT_AGAIN}"
        )
    block = data[offset:end]
    compression = data[end]
    stored_crc = struct.unpack_from("<I", data, end + 1)[0]
    if mask(crc32c(data[end : end + 1], crc32c(block))) != stored_crc:
        raise UserError(
            f"{path} is corrupt: a table block at byte {offset} fails its checksum{_GET_IT_AGAIN}"
        )
    if compression != 0:
        raise UserError(
            f"{path}: table block compression {compression} is not supported "
            "(TensorFlow writes checkpoints uncompressed)"
        )
    # Entries, then uint32 restart offsets and their count; restarts only speed up seeking.
    (restarts,) = struct.unpack_from("<I", block, size - 4)
    entries_end = size - 4 - 4 * restarts
    reader = ProtoReader(block, 0, entries_end)
    entries: list[tuple[bytes, memoryview]] = []
    key = b""
    while reader.pos < entries_end:
        shared, unshared, value_size = reader.varint(), reader.varint(), reader.varint()
        start = reader.pos
        key = key[:shared] + bytes(block[start : start + unshared])
        reader.pos = start + unshared + value_size
        entries.append((key, block[start + unshared : reader.pos]))
    return entries


# ---------------------------------------------------------------------------------------------
# Protos


def _shape(proto: memoryview) -> tuple[int, ...]:
    dims = []
    for field, _, dim in field_values(proto):
        if field == 2:
            dims.append(next((v for f, _, v in field_values(dim) if f == 1), 0))
    return tuple(dims)


def _extents(proto: memoryview) -> list[tuple[int, int]]:
    """(start, length) per dimension of a TensorSliceProto; length -1 means the whole dim."""
    extents = []
    for field, _, extent in field_values(proto):
        if field == 1:
            values = {f: v for f, _, v in field_values(extent)}
            extents.append((values.get(1, 0), signed64(values.get(2, (1 << 64) - 1))))
    return extents


def _slice_index(extents: list[tuple[int, int]], shape: tuple[int, ...]) -> tuple[slice, ...]:
    if not extents:  # a slice proto with no extents covers the whole tensor
        return tuple(slice(None) for _ in shape)
    return tuple(slice(s, None) if n < 0 else slice(s, s + n) for s, n in extents)


def _dtype_name(dtype: int) -> str:
    return "string" if dtype == _DT_STRING else _NUMPY_DTYPES.get(dtype, f"DataType {dtype}")


def _widen_bfloat16(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


# ---------------------------------------------------------------------------------------------
# V2: index + data files


def _read_v2(prefix: Path) -> dict[str, np.ndarray]:
    index_path = prefix.with_name(prefix.name + ".index")
    entries = dict(_read_table(index_path))
    header = {f: v for f, _, v in field_values(entries.pop(b"", memoryview(b"")))}
    byte_order = ">" if header.get(2, 0) == 1 else "<"
    tensors = {}
    with _BundleData(prefix, header.get(1, 1), byte_order) as data:
        for key, value in entries.items():
            if key.startswith(b"\x00"):  # one slice of a partitioned variable, read below
                continue
            name, entry = key.decode(), _bundle_entry(value)
            if not entry["slices"]:
                tensors[name] = data.read(name, entry)
                continue
            parts = []
            for extents in entry["slices"]:
                slice_entry = entries.get(_slice_key(name, extents))
                if slice_entry is None:
                    raise UserError(
                        f"{index_path} is corrupt: a slice of {name} has no entry{_GET_IT_AGAIN}"
                    )
                parts.append((extents, data.read(name, _bundle_entry(slice_entry))))
            tensors[name] = _assemble(entry["shape"], parts)
    return tensors


def _bundle_entry(value: memoryview) -> dict:
    entry = {"dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc": 0, "slices": []}
    for field, _, v in field_values(value):
        if field == 1:
            entry["dtype"] = v
        elif field == 2:
            entry["shape"] = _shape(v)
        elif field == 3:
            entry["shard"] = v
        elif field == 4:
            entry["offset"] = v
        elif field == 5:
            entry["size"] = v
        elif field == 6:
            entry["crc"] = v
        elif field == 7:
            entry["slices"].append(_extents(v))
    return entry


def _assemble(shape: tuple[int, ...], parts: list[tuple[list, np.ndarray]]) -> np.ndarray:
    """A whole tensor from its slices ((start, length) per dimension, and the values)."""
    full = np.empty(shape, dtype=parts[0][1].dtype)
    for extents, values in parts:
        full[_slice_index(extents, shape)] = values
    return full


class _BundleData:
    """The .data files of a V2 checkpoint, each opened when a tensor is first read from it."""

    def __init__(self, prefix: Path, num_shards: int, byte_order: str):
        self.prefix, self.num_shards, self.byte_order = prefix, num_shards, byte_order
        self.files: dict[int, object] = {}

    def __enter__(self) -> _BundleData:
        return self

    def __exit__(self, *exception) -> None:
        for file in self.files.values():
            file.close()

    def read(self, name: str, entry: dict) -> np.ndarray:
        shard = entry["shard"]
        path = self.prefix.with_name(
            f"{self.prefix.name}.data-{shard:05d}-of-{self.num_shards:05d}"
        )
        if shard not in self.files:
            if not path.is_file():
                raise UserError(
                    f"{path} is missing; a checkpoint needs its .index and all .data files"
                )
            self.files[shard] = open(path, "rb")  # noqa: SIM115 - closed by __exit__
        file = self.files[shard]
        file.seek(entry["offset"])
        raw = file.read(entry["size"])
        if len(raw) != entry["size"]:
            raise UserError(
                f"{path} is truncated: tensor {name} runs past the end of the file{_GET_IT_AGAIN}"
            )
        dtype, shape = entry["dtype"], entry["shape"]
        if dtype == _DT_STRING:
            values, crc = _decode_v2_strings(path, name, raw, shape)
        else:
            values, crc = None, crc32c(raw)
        if mask(crc) != entry["crc"]:
            raise UserError(f"{path} is corrupt: tensor {name} fails its checksum{_GET_IT_AGAIN}")
        if values is not None:
            return values
        if dtype not in _NUMPY_DTYPES:
            raise UserError(f"{path}: tensor {name} has {_dtype_name(dtype)}, which we cannot read")
        values = np.frombuffer(raw, np.dtype(_NUMPY_DTYPES[dtype]).newbyteorder(self.byte_order))
        values = values.astype(values.dtype.newbyteorder("=")).reshape(shape)
        return _widen_bfloat16(values) if dtype == _DT_BFLOAT16 else values


def _decode_v2_strings(data_path: Path, name: str, raw: bytes, shape) -> tuple[np.ndarray, int]:
    """A string tensor and its CRC-32C. The bytes are: varint lengths, the masked checksum of
    the lengths, then the strings; the checksum covers each length as 4 little-endian bytes
    (found by experiment with TensorFlow 2.21), that checksum, and the strings."""
    count = int(np.prod(shape, dtype=np.int64))
    reader = ProtoReader(raw)
    lengths = [reader.varint() for _ in range(count)]
    crc = crc32c(b"".join(length.to_bytes(8, "little")[:4] for length in lengths))
    checksum = raw[reader.pos : reader.pos + 4]
    position = reader.pos + 4
    crc = crc32c(checksum, crc)
    values = np.empty(count, dtype=object)
    for i, length in enumerate(lengths):
        values[i] = raw[position : position + length]
        crc = crc32c(values[i], crc)
        position += length
    if position != len(raw):
        raise UserError(
            f"{data_path} is corrupt: string tensor {name} has the wrong size{_GET_IT_AGAIN}"
        )
    return values.reshape(shape), crc


def _slice_key(name: str, extents: list[tuple[int, int]]) -> bytes:
    """The table key TensorFlow gives one slice of a variable (checkpoint::EncodeTensorNameSlice:
    OrderedCode of 0, the name, the rank, then start and length of each dimension)."""
    # One pass: 0x00 -> 00 ff and 0xff -> ff 00 (two replace() calls would re-escape).
    escaped = re.sub(rb"[\x00\xff]", lambda m: m[0] + bytes([0xFF - m[0][0]]), name.encode())
    key = b"\x00" + escaped + b"\x00\x01" + _increasing(len(extents))
    for start, length in extents:
        key += _signed_increasing(start) + _signed_increasing(length)
    return key


def _increasing(value: int) -> bytes:
    """OrderedCode's unsigned number: its byte count, then its big-endian bytes."""
    body = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return bytes([len(body)]) + body


def _signed_increasing(value: int) -> bytes:
    """OrderedCode's signed number: L two's-complement bytes whose first L bits (+ one more)
    say the length, ones for non-negative numbers and zeros for negative ones."""
    magnitude = ~value if value < 0 else value
    length = (magnitude.bit_length() + 7) // 7
    encoded = bytearray(value.to_bytes(length, "big", signed=True))
    header = ((1 << length) - 1) << (16 - length)
    encoded[0] ^= header >> 8
    if length > 1:
        encoded[1] ^= header & 0xFF
    return bytes(encoded)


# ---------------------------------------------------------------------------------------------
# V1: one table of TensorProto slices


def _read_v1(paths: list[Path]) -> dict[str, np.ndarray]:
    metas: dict[str, tuple[int, tuple[int, ...]]] = {}
    parts: dict[str, list[tuple[list, np.ndarray]]] = {}
    for path in paths:
        for key, value in _read_table(path):
            for field, _, message in field_values(value):
                if key == b"" and field == 1:
                    for meta_field, _, meta in field_values(message):
                        if meta_field == 1:
                            name, dtype, shape = _saved_slice_meta(meta)
                            metas[name] = (dtype, shape)
                elif field == 2:
                    name, extents, tensor = _saved_slice(message)
                    parts.setdefault(name, []).append((extents, tensor))
    tensors = {}
    for name in sorted(metas):
        dtype, shape = metas[name]
        if name not in parts:
            raise UserError(f"{paths[0]} lists tensor {name} but holds none of its values")
        values = []
        for extents, tensor in parts[name]:
            index = _slice_index(extents, shape)
            part_shape = tuple(len(range(*i.indices(n))) for i, n in zip(index, shape))
            values.append(
                (extents, _tensor_proto_values(paths[0], name, dtype, tensor, part_shape))
            )
        tensors[name] = _assemble(shape, values)
    return tensors


def _saved_slice_meta(meta: memoryview) -> tuple[str, int, tuple[int, ...]]:
    name, dtype, shape = "", 0, ()
    for field, _, v in field_values(meta):
        if field == 1:
            name = bytes(v).decode()
        elif field == 2:
            shape = _shape(v)
        elif field == 3:
            dtype = v
    return name, dtype, shape


def _saved_slice(message: memoryview) -> tuple[str, list, memoryview]:
    name, extents, tensor = "", [], memoryview(b"")
    for field, _, v in field_values(message):
        if field == 1:
            name = bytes(v).decode()
        elif field == 2:
            extents = _extents(v)
        elif field == 3:
            tensor = v
    return name, extents, tensor


# TensorProto fields holding values (packed or not): field -> (wire type of one value, dtype).
_FIXED_FIELDS = {5: "<f4", 6: "<f8", 9: "<f4", 12: "<f8"}  # float, double, scomplex, dcomplex
_VARINT_FIELDS = (7, 10, 11, 13, 16, 17)  # int, int64, bool, half (bits), uint32, uint64


def _tensor_proto_values(
    path: Path, name: str, dtype: int, tensor: memoryview, shape
) -> np.ndarray:
    count = int(np.prod(shape, dtype=np.int64))
    content = None
    fixed: list[np.ndarray] = []
    varints: list[int] = []
    strings: list[bytes] = []
    for field, wire, v in field_values(tensor):
        if field == 4:
            content = bytes(v)
        elif field == 8:
            strings.append(bytes(v))
        elif field in _FIXED_FIELDS:
            width = np.dtype(_FIXED_FIELDS[field]).itemsize
            packed = bytes(v) if wire == LENGTH_DELIMITED else v.to_bytes(width, "little")
            fixed.append(np.frombuffer(packed, _FIXED_FIELDS[field]))
        elif field in _VARINT_FIELDS:
            if wire == LENGTH_DELIMITED:
                varints.extend(ProtoReader(v).varints())
            else:
                varints.append(v)
    if dtype == _DT_STRING:
        values = np.empty(len(strings), dtype=object)
        values[:] = strings
    elif dtype not in _NUMPY_DTYPES:
        raise UserError(f"{path}: tensor {name} has {_dtype_name(dtype)}, which we cannot read")
    elif content is not None:
        values = np.frombuffer(content, _NUMPY_DTYPES[dtype])
    elif fixed:
        values = np.concatenate(fixed).astype(_NUMPY_DTYPES[dtype])
        if dtype in (8, 18):  # complex values travel as (real, imaginary) pairs
            values = values.view(_NUMPY_DTYPES[dtype])
    elif dtype in (_DT_HALF, _DT_BFLOAT16):
        values = np.array(varints, dtype=np.uint16)
        values = values.view(np.float16) if dtype == _DT_HALF else values
    else:
        # Varints hold two's-complement 64-bit values; casting through uint64 keeps the bits.
        values = np.array(varints, dtype=np.uint64).astype(_NUMPY_DTYPES[dtype])
    if values.size == 1 and count > 1:  # TensorFlow stores a splat as its one value
        values = np.full(count, values[0], dtype=values.dtype)
    if values.size != count:
        raise UserError(
            f"{path} is corrupt: tensor {name} holds {values.size} of {count} values{_GET_IT_AGAIN}"
        )
    values = values.reshape(shape)
    return _widen_bfloat16(values) if dtype == _DT_BFLOAT16 else values
