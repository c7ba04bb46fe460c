"""Decoding and re-encoding of every image kind the build tools and the loader meet."""

from __future__ import annotations

import contextlib
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from incept.data.images import (
    ImageError,
    decode_rgb,
    read_jpeg_header,
    to_shard_image,
)
from incept.errors import UserError

RNG = np.random.default_rng(0)
# Smooth content, so JPEG round trips stay close to the original pixels.
_Y, _X = np.mgrid[0:30, 0:40]
PIXELS = np.stack([_X * 6, _Y * 8, (_X + _Y) * 3], axis=-1).astype(np.uint8)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def as_hwc(tensor) -> np.ndarray:
    assert tensor.dtype.is_floating_point is False and tensor.shape[0] == 3
    return tensor.permute(1, 2, 0).numpy()


RGB = Image.fromarray(PIXELS)
NOISE = Image.fromarray(RNG.integers(0, 256, (30, 40, 3), dtype=np.uint8))


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_lossless_formats_decode_exactly(fmt):
    options = {"lossless": True} if fmt == "WEBP" else {}
    assert np.array_equal(as_hwc(decode_rgb(encode(RGB, fmt, **options))), PIXELS)


def test_jpeg_fast_path_matches_pillow():
    data = encode(RGB, "JPEG", quality=90)
    ours = as_hwc(decode_rgb(data)).astype(int)
    pillow = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(ours - pillow).max() <= 1
    assert np.abs(ours - PIXELS.astype(int)).mean() < 4


def test_jpeg_header():
    header = read_jpeg_header(encode(RGB, "JPEG", progressive=True))
    assert (header.frame_type, header.precision, header.height, header.width) == (0xC2, 8, 30, 40)
    assert read_jpeg_header(encode(RGB.convert("CMYK"), "JPEG")).components == 4


def test_grayscale_palette_and_cmyk_become_rgb():
    gray = decode_rgb(encode(RGB.convert("L"), "PNG"))
    assert gray.shape == (3, 30, 40) and bool((gray[0] == gray[2]).all())
    palette = RGB.convert("P")
    assert np.array_equal(
        as_hwc(decode_rgb(encode(palette, "PNG"))), np.asarray(palette.convert("RGB"))
    )
    cmyk = as_hwc(decode_rgb(encode(RGB.convert("CMYK"), "JPEG", quality=95))).astype(int)
    assert np.abs(cmyk - PIXELS.astype(int)).mean() < 4


def test_alpha_is_composited_on_white():
    rgba = np.dstack([PIXELS, np.full((30, 40), 255, np.uint8)])
    rgba[:, :20, 3] = 0  # left half fully transparent
    decoded = as_hwc(decode_rgb(encode(Image.fromarray(rgba, "RGBA"), "PNG")))
    assert (decoded[:, :20] == 255).all()
    assert np.array_equal(decoded[:, 20:], PIXELS[:, 20:])


def test_sixteen_bit_is_scaled_not_clipped():
    values = (np.arange(30 * 40, dtype=np.uint16).reshape(30, 40) % 256) * 257
    decoded = as_hwc(decode_rgb(encode(Image.fromarray(values), "PNG")))
    assert np.array_equal(decoded[..., 0], (values // 257).astype(np.uint8))


def test_gif_first_frame():
    red, blue = (Image.new("RGB", (40, 30), c) for c in ((255, 0, 0), (0, 0, 255)))
    data = encode(red, "GIF", save_all=True, append_images=[blue])
    assert tuple(as_hwc(decode_rgb(data))[5, 5]) == (255, 0, 0)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    jpeg = encode(RGB, "JPEG", quality=95, exif=exif)
    assert decode_rgb(jpeg).shape == (3, 40, 30)
    png = encode(RGB, "PNG", exif=exif)
    decoded = as_hwc(decode_rgb(png))
    assert np.array_equal(decoded, np.rot90(PIXELS, k=-1))
    shard = to_shard_image(jpeg)
    assert (shard.height, shard.width) == (40, 30) and "orientation 6" in shard.converted_from
    assert decode_rgb(shard.jpeg).shape == (3, 40, 30)


@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize("progressive", [False, True])
def test_plain_jpeg_is_kept_byte_for_byte(mode, progressive):
    data = encode(RGB.convert(mode), "JPEG", progressive=progressive)
    shard = to_shard_image(data)
    assert shard.jpeg == data and shard.converted_from is None
    assert (shard.height, shard.width) == (30, 40)


@pytest.mark.parametrize(
    ("image", "fmt", "source"),
    [
        (RGB.convert("CMYK"), "JPEG", "JPEG CMYK"),
        (RGB, "PNG", "PNG RGB"),
        (RGB.convert("RGBA"), "PNG", "PNG RGBA"),
        (RGB.convert("P", palette=Image.Palette.ADAPTIVE), "GIF", "GIF P"),
        (RGB, "WEBP", "WEBP RGB"),
        (RGB, "BMP", "BMP RGB"),
        (RGB, "TIFF", "TIFF RGB"),
        (RGB.convert("L"), "PNG", "PNG L"),
    ],
)
def test_other_kinds_are_reencoded_as_rgb_jpeg(image, fmt, source):
    shard = to_shard_image(encode(image, fmt))
    assert shard.converted_from == source
    reopened = Image.open(io.BytesIO(shard.jpeg))
    assert (reopened.format, reopened.mode, reopened.size) == ("JPEG", "RGB", (40, 30))
    expected = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(np.asarray(reopened).astype(int) - expected).mean() < 4


def png_claiming_size(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header (with a valid checksum) claims another size: a bomb stand-in."""
    data = bytearray(encode(Image.new("L", (1, 1)), "PNG"))
    ihdr = bytearray(data[12:29])  # chunk type + 13 header bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


def jpeg_claiming_size(width: int, height: int) -> bytes:
    data = bytearray(encode(RGB, "JPEG"))
    start = data.index(b"\xff\xc0") + 5
    data[start : start + 4] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.parametrize("decoder", [decode_rgb, to_shard_image])
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "empty"),
        (b"plain text, not a picture", "not an image"),
        (encode(NOISE, "JPEG")[:400], "truncated"),
        (encode(NOISE, "JPEG")[:-600], "truncated"),
        (encode(NOISE, "PNG")[:1500], "truncated"),
        (png_claiming_size(30_000, 30_000), "too large"),
        (jpeg_claiming_size(60_000, 60_000), "too large"),
    ],
    ids=[
        "empty",
        "text",
        "jpeg-cut-in-header",
        "jpeg-cut-in-scan",
        "truncated-png",
        "png-bomb",
        "jpeg-bomb",
    ],
)
def test_bad_input_is_one_clear_error(decoder, data, reason):
    with pytest.raises(ImageError, match=reason) as caught:
        decoder(data)
    assert isinstance(caught.value, UserError) and "\n" not in str(caught.value)


def test_pixel_limit_is_a_parameter():
    with pytest.raises(ImageError, match="too large"):
        decode_rgb(encode(RGB, "JPEG"), max_pixels=1000)
    assert decode_rgb(encode(RGB, "JPEG"), max_pixels=1200).shape == (3, 30, 40)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF"])
def test_damaged_files_never_raise_anything_but_image_error(fmt):
    rng = np.random.default_rng(1)
    intact = encode(NOISE.convert("P") if fmt == "GIF" else NOISE, fmt)
    for trial in range(40):
        damaged = bytearray(intact)
        for position in rng.integers(0, len(damaged), 1 + trial % 4):
            damaged[position] = int(rng.integers(0, 256))
        if trial % 3 == 0:
            damaged = damaged[: int(rng.integers(1, len(damaged)))]
        for decoder in (decode_rgb, to_shard_image):
            with contextlib.suppress(ImageError):  # anything else fails the test
                decoder(bytes(damaged))
