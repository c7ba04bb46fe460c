"""Classify image files or bytes with a `Predictor`: decode safely, evaluation crop, top K.

Memory stays bounded whatever the input: images above `FULL_DECODE_PIXELS` are decoded at a
reduced scale when they are JPEG (libjpeg scales the DCT, so the full-size image never exists)
and refused otherwise, and anything above the decompression-bomb limit is refused from its
header alone.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from incept.data.images import (
    MAX_PIXELS,
    ImageError,
    decode_rgb,
    is_jpeg,
    read_jpeg_header,
    to_rgb,
)
from incept.data.preprocess import center_crop_resize
from incept.predict import Predictor

# 4096 x 4096: a 16-megapixel photo is decoded in full. The evaluation crop then works on a
# float copy of 87.5% x 87.5% of it, about 150 MB; larger JPEGs are decoded at 1/2, 1/4 or
# 1/8 scale to stay under this.
FULL_DECODE_PIXELS = 4096 * 4096
# A file larger than this cannot be an image we would decode (JPEG stays far below it).
MAX_FILE_BYTES = 256 * 2**20
_JPEG_SCALES = (2, 4, 8)


def decode_bounded(data: bytes, *, max_full_pixels: int = FULL_DECODE_PIXELS) -> torch.Tensor:
    """Image bytes to a uint8 3 x H x W RGB tensor of at most `max_full_pixels` pixels.

    A larger JPEG comes out at the largest of 1/2, 1/4, 1/8 scale that fits; any other large
    image, or a JPEG that would not fit even at 1/8 or exceeds MAX_PIXELS, is an `ImageError`.
    """
    if is_jpeg(data):
        header = read_jpeg_header(data)
        pixels = header.width * header.height
        if pixels > max_full_pixels:
            size = f"{header.width}x{header.height}"
            if pixels > MAX_PIXELS:
                raise ImageError(
                    f"too large: {size} pixels exceeds the limit of {MAX_PIXELS:,} "
                    "(decompression bomb guard)"
                )
            scale = next((s for s in _JPEG_SCALES if pixels <= max_full_pixels * s * s), None)
            if scale is None:
                raise ImageError(
                    f"too large: {size} pixels, more than {max_full_pixels:,} even at 1/8 scale"
                )
            return _decode_jpeg_scaled(data, header.width, header.height, scale)
    return decode_rgb(data, max_pixels=max_full_pixels)


def _decode_jpeg_scaled(data: bytes, width: int, height: int, scale: int) -> torch.Tensor:
    with warnings.catch_warnings():
        # The size was checked against our own limits from the frame header.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            # Pillow's draft picks the largest DCT scaling that keeps at least this size.
            image.draft(None, (width // scale, height // scale))
            image.load()
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
            raise ImageError(f"truncated or corrupt JPEG: {error}") from None
    pixels = torch.frombuffer(bytearray(to_rgb(image).tobytes()), dtype=torch.uint8)
    return pixels.view(image.height, image.width, 3).permute(2, 0, 1).contiguous()


def prepare_image(data: bytes, image_size: int) -> torch.Tensor:
    """The model's view of an image: the evaluation crop and resize, uint8 3 x S x S."""
    return center_crop_resize(decode_bounded(data), image_size)


def top_labels(probabilities: torch.Tensor, class_names: Sequence[str], k: int) -> list[dict]:
    """The `k` most probable classes of one image: [{"label", "probability"}, ...]."""
    values, indices = probabilities.topk(min(k, len(class_names)))
    return [
        {"label": class_names[index], "probability": round(value, 6)}
        for value, index in zip(values.tolist(), indices.tolist())
    ]


def read_image_file(path: str | os.PathLike, image_size: int) -> torch.Tensor:
    """`prepare_image` of a file; every problem is an `ImageError` naming it."""
    try:
        size = os.path.getsize(path)
        if size > MAX_FILE_BYTES:
            raise ImageError(f"too large a file ({size:,} bytes; at most {MAX_FILE_BYTES:,})")
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except IsADirectoryError:
        raise ImageError("is a directory, not an image file") from None
    except OSError as error:
        raise ImageError(f"cannot read it: {error.strerror or error}") from None
    return prepare_image(data, image_size)


def classify_files(
    paths: Sequence[str],
    predictor: Predictor,
    *,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int = 2,
) -> Iterator[dict]:
    """One result per path, in order: {"image", "top": [...]} or {"image", "error"}.

    Images are decoded on `workers` threads a batch at a time and classified together, so
    memory holds one batch whatever the number of paths.
    """
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            jobs = [pool.submit(read_image_file, path, predictor.image_size) for path in chunk]
            images, results = [], []
            for path, job in zip(chunk, jobs):
                try:
                    images.append(job.result())
                    results.append({"image": path})
                except ImageError as error:
                    results.append({"image": path, "error": str(error)})
            rows = iter(predictor.probabilities(torch.stack(images))) if images else iter(())
            for result in results:
                if "error" not in result:
                    result["top"] = top_labels(next(rows), predictor.class_names, top_k)
                yield result
