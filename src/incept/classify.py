"""Classify image files or bytes with a `Predictor`: decode safely, evaluation crop, top K.

Memory stays bounded whatever the input: images above `FULL_DECODE_PIXELS` are decoded at a
reduced scale when they are JPEG (libjpeg scales the DCT, so the full-size image never exists)
and shrunk right after decoding otherwise; anything above the decompression-bomb limit (the
one every command shares, --max-image-pixels) is refused from its header alone.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
from PIL import Image

from incept.data.images import (
    MAX_FILE_BYTES,
    MAX_PIXELS,
    ImageError,
    check_size,
    decode_rgb,
    is_jpeg,
    read_file_bytes,
    read_jpeg_header,
    to_rgb,
)
from incept.data.preprocess import center_crop_resize
from incept.predict import Predictor

# 4096 x 4096: a 16-megapixel photo is decoded in full. The evaluation crop then works on a
# float copy of 87.5% x 87.5% of it, about 150 MB; larger JPEGs are decoded at 1/2, 1/4 or
# 1/8 scale to stay under this.
FULL_DECODE_PIXELS = 4096 * 4096
_JPEG_SCALES = (2, 4, 8)


def decode_bounded(
    data: bytes, *, max_full_pixels: int = FULL_DECODE_PIXELS, max_pixels: int = MAX_PIXELS
) -> torch.Tensor:
    """Image bytes to a uint8 3 x H x W RGB tensor of at most `max_full_pixels` pixels.

    Anything over `max_pixels` (the decompression-bomb limit every command shares) is an
    `ImageError` from its header alone. A larger JPEG comes out at the largest of 1/2, 1/4,
    1/8 scale that fits (never decoded at full size); another format is decoded, then shrunk.
    """
    if is_jpeg(data):
        header = read_jpeg_header(data)
        pixels = header.width * header.height
        if pixels > max_full_pixels:
            check_size(header.width, header.height, max_pixels)
            scale = next((s for s in _JPEG_SCALES if pixels <= max_full_pixels * s * s), None)
            if scale is None:
                raise ImageError(
                    f"too large: {header.width}x{header.height} pixels, more than "
                    f"{max_full_pixels:,} even at 1/8 scale"
                )
            return _decode_jpeg_scaled(data, header.width, header.height, scale)
    return decode_rgb(data, max_pixels=max_pixels, reduce_above=max_full_pixels)


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


def prepare_image(data: bytes, image_size: int, max_pixels: int = MAX_PIXELS) -> torch.Tensor:
    """The model's view of an image: the evaluation crop and resize, uint8 3 x S x S."""
    return center_crop_resize(decode_bounded(data, max_pixels=max_pixels), image_size)


def top_labels(probabilities: torch.Tensor, class_names: Sequence[str], k: int) -> list[dict]:
    """The `k` most probable classes of one image: [{"label", "probability"}, ...]."""
    values, indices = probabilities.topk(min(k, len(class_names)))
    return [
        {"label": class_names[index], "probability": round(value, 6)}
        for value, index in zip(values.tolist(), indices.tolist())
    ]


def read_image_file(
    path: str | os.PathLike, image_size: int, max_pixels: int = MAX_PIXELS
) -> torch.Tensor:
    """`prepare_image` of a file; every problem is an `ImageError` naming it. Only a regular
    file is read (a FIFO would hang us, a device fill memory), of at most MAX_FILE_BYTES."""
    try:
        data = read_file_bytes(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise ImageError("no such file") from None
    except OSError as error:
        raise ImageError(f"cannot read it: {error.strerror or error}") from None
    return prepare_image(data, image_size, max_pixels)


def classify_files(
    paths: Sequence[str],
    predictor: Predictor,
    *,
    top_k: int = 5,
    batch_size: int = 32,
    workers: int = 2,
    max_pixels: int = MAX_PIXELS,
) -> Iterator[dict]:
    """One result per path, in order: {"image", "top": [...]} or {"image", "error"}.

    Images are decoded on `workers` threads a batch at a time and classified together, so
    memory holds one batch whatever the number of paths.
    """
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            jobs = [
                pool.submit(read_image_file, path, predictor.image_size, max_pixels)
                for path in chunk
            ]
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
