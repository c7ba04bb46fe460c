"""Image bytes to pixels, safely: the loader's decoder and the build tools' re-encoder.

Both refuse decompression bombs before decoding: for JPEG the size comes from the frame
header, for other formats from Pillow's lazy open. Every accepted image comes out as RGB:
grayscale, palette, CMYK, alpha (composited on white, as a viewer shows it) and 16-bit
images are converted, and the EXIF orientation is applied, so a photo is seen upright.
"""

from __future__ import annotations

import io
import math
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.io import ImageReadMode, decode_jpeg

from incept.errors import UserError
from incept.limits import FILE_LIMIT_FLAG, MAX_FILE_BYTES, MAX_PIXELS, PIXEL_LIMIT_FLAG  # noqa: F401

# We rely on torchvision's libjpeg-turbo decoder (the fastest at hand); torchvision 0.29 warns
# on every call that it plans to move decoding to another package.
warnings.filterwarnings(
    "ignore", message="The image decoding and encoding capabilities of TorchVision are deprecated"
)

JPEG_QUALITY = 95
_EXIF_ORIENTATION = 0x0112
# Frame types libjpeg(-turbo) and TensorFlow decode: baseline, extended, progressive Huffman.
_COMMON_JPEG_FRAMES = (0xC0, 0xC1, 0xC2)


class ImageError(UserError):
    """Bytes that do not give an image: empty, truncated, not an image, or too large."""


@dataclass(frozen=True)
class JpegHeader:
    frame_type: int  # the SOFn marker: 0xC0 baseline, 0xC2 progressive, ...
    precision: int  # bits per sample
    height: int
    width: int
    components: int  # 1 grayscale, 3 YCbCr/RGB, 4 CMYK/YCCK


@dataclass(frozen=True)
class ShardImage:
    """An image ready for a shard: RGB-decodable JPEG bytes and its displayed size."""

    jpeg: bytes
    height: int
    width: int
    converted_from: str | None  # e.g. "PNG RGBA"; None when the file's JPEG is kept as is


def is_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


# Leading bytes of the formats photos come in; anything else is asked of Pillow.
_MAGIC = (
    b"\xff\xd8\xff",
    b"\x89PNG\r\n\x1a\n",
    b"GIF87a",
    b"GIF89a",
    b"BM",
    b"II*\x00",
    b"MM\x00*",
)


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def why_not_readable(status: os.stat_result, max_bytes: int = MAX_FILE_BYTES) -> str | None:
    """None for a regular file within `max_bytes`; else why it is not read (a FIFO would
    block the reader forever, a device or a huge sparse file would fill memory)."""
    if not stat.S_ISREG(status.st_mode):
        kind = next((name for test, name in _FILE_KINDS if test(status.st_mode)), "special")
        return f"not a regular file ({kind})"
    if status.st_size > max_bytes:
        return (
            f"too large a file: {status.st_size:,} bytes, the limit is {max_bytes:,} "
            f"({FILE_LIMIT_FLAG})"
        )
    return None


def _open_regular(path: str | os.PathLike, max_bytes: int) -> int:
    """A descriptor of a regular file of at most `max_bytes`, else `ImageError`. Checked
    before opening and again on the descriptor, opened non-blocking: a FIFO swapped in
    meanwhile cannot hang us. OSError (a missing or unreadable file) passes through."""
    reason = why_not_readable(os.stat(path), max_bytes)
    if reason is not None:
        raise ImageError(reason)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    reason = why_not_readable(os.fstat(fd), max_bytes)
    if reason is not None:
        os.close(fd)
        raise ImageError(reason)
    os.set_blocking(fd, True)
    return fd


def _read_at_most(fd: int, max_bytes: int) -> bytes:
    chunks, size = [], 0
    while chunk := os.read(fd, min(1 << 24, max_bytes + 1 - size)):
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:  # it grew while we read
            raise ImageError(f"too large a file: over {max_bytes:,} bytes ({FILE_LIMIT_FLAG})")
    return b"".join(chunks)


def read_file_bytes(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`, else `ImageError` with the reason
    (never more than `max_bytes` read). OSError passes through."""
    fd = _open_regular(path, max_bytes)
    try:
        return _read_at_most(fd, max_bytes)
    finally:
        os.close(fd)


def starts_like_image(head: bytes) -> bool:
    """Whether `head`, a file's first 12 or more bytes, is the signature of a photo format."""
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def why_not_an_image(path: str | os.PathLike, max_bytes: int = MAX_FILE_BYTES) -> str | None:
    """None when the file starts like an image; else the reason (empty, not an image...).

    Cheap: reads the first bytes, and only for a format without a common signature lets
    Pillow read the header. A file can still turn out truncated when decoded.
    """
    try:
        fd = _open_regular(path, max_bytes)
        try:
            head = os.read(fd, 16)
            if not head:
                return "empty file"
            if starts_like_image(head):
                return None
            _open(head + _read_at_most(fd, max_bytes - len(head)), MAX_PIXELS)
        finally:
            os.close(fd)
    except ImageError as error:
        return str(error)
    except OSError as error:
        return f"unreadable: {error.strerror or error}"
    return None


def read_jpeg_header(data: bytes) -> JpegHeader:
    """The frame header of a JPEG, found by walking its marker segments (no decoding)."""
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise ImageError(f"corrupt JPEG: no marker at byte {position}")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a segment
            position += 2
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            segment = data[position + 4 : position + 2 + length]
            if len(segment) < 6:
                break
            return JpegHeader(
                frame_type=marker,
                precision=segment[0],
                height=int.from_bytes(segment[1:3], "big"),
                width=int.from_bytes(segment[3:5], "big"),
                components=segment[5],
            )
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            break
        position += 2 + length
    raise ImageError("truncated or corrupt JPEG: no frame header")


def check_size(width: int, height: int, max_pixels: int) -> None:
    """`ImageError` unless width x height is a real size within the decompression-bomb limit."""
    if width <= 0 or height <= 0:
        raise ImageError(f"corrupt image: size {width}x{height}")
    if width * height > max_pixels:
        raise ImageError(
            f"too large: {width}x{height} pixels exceeds the limit of {max_pixels:,} "
            f"(decompression bomb guard, set by {PIXEL_LIMIT_FLAG})"
        )


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Pillow's lazy open (header only), format found from the content, size checked."""
    if not data:
        raise ImageError("empty file")
    # Pillow warns about odd metadata and large sizes; we decide (and report) ourselves.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError as error:
            raise ImageError(f"too large (decompression bomb guard): {error}") from None
        except UnidentifiedImageError:
            raise ImageError("not an image (content of no known image format)") from None
        except Exception as error:  # hostile bytes raise assorted types inside Pillow
            raise ImageError(f"truncated or corrupt image header: {error}") from None
    check_size(image.width, image.height, max_pixels)
    return image


def _load(image: Image.Image) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            image.load()
        except Exception as error:  # hostile bytes raise assorted types inside Pillow
            raise ImageError(f"truncated or corrupt {image.format} image: {error}") from None


def _sixteen_bit_to_8(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64)
    if image.mode == "F" and values.max(initial=0) <= 1.0:
        values = values * 255  # float images in [0, 1]
    elif image.mode != "F":
        values = values / 257  # 0..65535 onto 0..255
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")


def to_rgb(image: Image.Image) -> Image.Image:
    """A loaded Pillow image as 8-bit RGB, upright (EXIF orientation applied)."""
    image = ImageOps.exif_transpose(image)
    if image.mode.startswith("I") or image.mode == "F":
        image = _sixteen_bit_to_8(image)
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if image.mode != "RGB":
        try:
            image = image.convert("RGB")
        except ValueError as error:
            raise ImageError(f"unsupported colour mode {image.mode}: {error}") from None
    return image


def _converted(image: Image.Image) -> Image.Image:
    """`to_rgb`, with whatever a damaged file makes Pillow raise turned into an ImageError."""
    try:
        return to_rgb(image)
    except ImageError:
        raise
    except Exception as error:
        raise ImageError(f"cannot convert {image.format} {image.mode} image: {error}") from None


def decode_rgb(
    data: bytes, *, max_pixels: int = MAX_PIXELS, reduce_above: int | None = None
) -> torch.Tensor:
    """Decode image bytes of any common format to a uint8 tensor 3 x H x W, RGB, upright.

    JPEG goes through torchvision's libjpeg-turbo decoder after its header has shown the
    size to be within `max_pixels`; other formats (and rare JPEG kinds) through Pillow, which
    shrinks one of more than `reduce_above` pixels by the smallest whole factor that fits
    (a box filter), so that what follows works on a small copy.
    Raises `ImageError` (a UserError) for bytes that are not a usable image.
    """
    if is_jpeg(data):
        header = read_jpeg_header(data)
        check_size(header.width, header.height, max_pixels)
        if header.frame_type in _COMMON_JPEG_FRAMES and header.precision == 8:
            try:
                return decode_jpeg(
                    torch.frombuffer(bytearray(data), dtype=torch.uint8),
                    mode=ImageReadMode.RGB,
                    apply_exif_orientation=True,
                )
            except RuntimeError as error:
                reason = str(error).rsplit(",", 1)[-1].strip()
                raise ImageError(f"truncated or corrupt JPEG: {reason}") from None
    image = _open(data, max_pixels)
    _load(image)
    if reduce_above is not None and image.width * image.height > reduce_above:
        factor = math.ceil(math.sqrt(image.width * image.height / reduce_above))
        while -(-image.width // factor) * -(-image.height // factor) > reduce_above:
            factor += 1
        image = _converted(image).reduce(factor)
    pixels = np.asarray(_converted(image))
    return torch.from_numpy(pixels.copy()).permute(2, 0, 1).contiguous()


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except (OSError, ValueError, SyntaxError, TypeError):
        return 1  # an unreadable EXIF block: treat the image as upright


def to_shard_image(data: bytes, *, max_pixels: int = MAX_PIXELS) -> ShardImage:
    """What a shard stores for one input file, or `ImageError` with the reason to skip it.

    An upright 8-bit RGB or grayscale JPEG (baseline or progressive) is kept byte for byte,
    after a full decode shows it is complete. Anything else that decodes (PNG, GIF's first
    frame, WebP, BMP, TIFF, CMYK or rotated JPEG, 16-bit, palette, alpha) is re-encoded as an
    RGB JPEG of quality 95. The type comes from the content, never the file name.
    """
    image = _open(data, max_pixels)
    description = f"{image.format} {image.mode}"
    if image.format == "JPEG":
        header = read_jpeg_header(data)
        orientation = _orientation(image)
        keep = (
            image.mode in ("RGB", "L")
            and header.frame_type in _COMMON_JPEG_FRAMES
            and header.precision == 8
            and orientation == 1
        )
        if keep:
            decode_rgb(data, max_pixels=max_pixels)  # proves the JPEG complete
            return ShardImage(data, image.height, image.width, None)
        if orientation != 1:
            description += f" (EXIF orientation {orientation})"
    _load(image)
    rgb = _converted(image)
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=JPEG_QUALITY)
    return ShardImage(out.getvalue(), rgb.height, rgb.width, description)
