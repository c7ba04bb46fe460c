"""CRC-32C (Castagnoli): the checksum of TFRecord framing and of TensorFlow's checkpoint files.

Computed by `google-crc32c`, Google's C library, which uses the CPU's CRC instructions
(SSE 4.2, ARMv8) where there are any: about 8-13 GB/s on one core, against 70-150 MB/s for
the numpy "slicing by 4" code it replaced, and 0.2 us instead of 20 us for a 100-byte
record header (measured on the development machine, 2026-12). Where the package finds no C
extension it falls back to pure Python itself, and says so with a RuntimeWarning.
"""

from __future__ import annotations

import google_crc32c


def crc32c(data: bytes | bytearray | memoryview, value: int = 0) -> int:
    """CRC-32C of `data`, continuing from a previous `value` (0 to start)."""
    # The C function takes only buffers that need no release; a memoryview or bytearray is
    # copied into bytes (a memcpy, far faster than the checksum's other costs).
    return google_crc32c.extend(value, data if type(data) is bytes else bytes(data))


def mask(crc: int) -> int:
    """TensorFlow's masked form of a CRC-32C: rotated right by 15 bits, plus 0xa282ead8.
    (A CRC stored next to the data it covers is masked, so that a CRC of CRCs is not 0.)"""
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def masked_crc32c(data: bytes | bytearray | memoryview) -> int:
    """TFRecord's checksum: the masked CRC-32C of `data`."""
    return mask(crc32c(data))
