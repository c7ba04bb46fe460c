"""The protobuf wire format, read by hand: what `tf.train.Example` records and TensorFlow
checkpoints (their tables and tensor protos) are made of.

A message is a run of fields, each a varint key (field number << 3 | wire type) and a value:
a varint, 8 or 4 little-endian bytes, or a varint length and that many bytes (a string, a
nested message, or a packed repeated field).
"""

from __future__ import annotations

from collections.abc import Iterator

VARINT = 0
FIXED64 = 1
LENGTH_DELIMITED = 2
FIXED32 = 5


class MalformedProtoError(ValueError):
    """The bytes do not follow the protobuf wire format."""


class ProtoReader:
    """Walks protobuf fields in `data[start:end]`."""

    def __init__(self, data: bytes | memoryview, start: int = 0, end: int | None = None):
        self.data = data
        self.pos = start
        self.end = len(data) if end is None else end

    def varint(self) -> int:
        result = shift = 0
        data, pos = self.data, self.pos
        while True:
            if pos >= self.end:
                raise MalformedProtoError(f"truncated varint at byte {pos}")
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                self.pos = pos
                return result
            shift += 7
            if shift >= 70:
                raise MalformedProtoError(f"varint longer than 10 bytes at byte {pos}")

    def varints(self) -> list[int]:
        """Every varint up to the end: the values of a packed repeated integer field."""
        values = []
        while self.pos < self.end:
            values.append(self.varint())
        return values

    def fields(self) -> Iterator[tuple[int, int, int, int]]:
        """Yield (field number, wire type, start, end) for each field; end marks the value."""
        while self.pos < self.end:
            key = self.varint()
            field, wire = key >> 3, key & 7
            if wire == VARINT:
                start = self.pos
                self.varint()
            elif wire == LENGTH_DELIMITED:
                length = self.varint()
                start = self.pos
                self.pos += length
            elif wire == FIXED32:
                start = self.pos
                self.pos += 4
            elif wire == FIXED64:
                start = self.pos
                self.pos += 8
            else:
                raise MalformedProtoError(f"unsupported wire type {wire} at byte {self.pos}")
            if self.pos > self.end:
                raise MalformedProtoError(f"field {field} runs past the end of its message")
            yield field, wire, start, self.pos


def field_values(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field of a message: an int for varints and
    fixed-width fields (their raw bits), a memoryview for length-delimited ones."""
    for field, wire, start, end in ProtoReader(data).fields():
        if wire == VARINT:
            yield field, wire, ProtoReader(data, start, end).varint()
        elif wire == LENGTH_DELIMITED:
            yield field, wire, data[start:end]
        else:
            yield field, wire, int.from_bytes(data[start:end], "little")


def signed64(value: int) -> int:
    """An int64 from the two's-complement bits a varint carries."""
    return value - (1 << 64) if value >= 1 << 63 else value
