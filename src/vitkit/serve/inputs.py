"""What a request may carry, and the checks that turn a bad or hostile input into a 4xx with a message.

Images are opened lazily, so their size is known before a single pixel is decoded: a decompression bomb is
refused from its header. Only the formats in `Limits.formats` are decoded at all.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vitkit.data.sources import to_rgb


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20 * 2**20
    max_images: int = 64  # per request
    max_pixels: int = 40_000_000  # per image, from its header
    formats: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF", "PPM")


class InputError(Exception):
    """A request the server refuses: an HTTP status and a message that names the problem and the fix."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def decode_image(data: bytes, limits: Limits, name: str = "image") -> Image.Image:
    """An RGB image from encoded bytes, upright per its EXIF orientation; InputError for anything else."""
    if not data:
        raise InputError(400, f"{name} is empty.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InputError(413, f"{name} has more pixels than any image this server accepts.") from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InputError(415, f"{name} is not an image in a supported format ({', '.join(limits.formats)}).") from None
    if image.format not in limits.formats:
        raise InputError(415, f"{name} is {image.format}; this server accepts {', '.join(limits.formats)}.")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise InputError(
            413, f"{name} is {width} x {height} pixels; the limit is {limits.max_pixels:,}. Send a smaller image."
        )
    try:
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise InputError(400, f"{name} is a damaged {image.format} file ({exc}).") from None


def decode_base64(text: Any, name: str) -> bytes:
    """Bytes of a base64 string, with or without a data: URL prefix."""
    if not isinstance(text, str):
        raise InputError(400, f"{name} must be a base64 string.")
    payload = text.split(",", 1)[1] if text.startswith("data:") and "," in text else text
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(400, f"{name} is not valid base64.") from None


def check_count(n: int, limits: Limits) -> None:
    if n == 0:
        raise InputError(400, "the request holds no image.")
    if n > limits.max_images:
        raise InputError(413, f"the request holds {n} images; the limit is {limits.max_images} per request.")


def v2_pixels(inputs: Any, img_size: int, limits: Limits) -> np.ndarray:
    """The `pixels` tensor of an Open Inference Protocol request: FP32, shape [n, 3, img_size, img_size]."""
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InputError(400, "inputs must be a list holding one tensor, named pixels.")
    tensor = inputs[0]
    expected = f"[n, 3, {img_size}, {img_size}]"
    shape, datatype, data = tensor.get("shape"), tensor.get("datatype"), tensor.get("data")
    if datatype != "FP32":
        raise InputError(400, f"pixels must have datatype FP32, not {datatype}.")
    if not (isinstance(shape, list) and len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape)):
        raise InputError(400, f"pixels must have a shape {expected}, not {shape}.")
    if shape[1:] != [3, img_size, img_size]:
        raise InputError(400, f"pixels must have the shape {expected} (normalised, centre-cropped); got {shape}.")
    check_count(shape[0], limits)
    try:
        array = np.asarray(data, dtype=np.float32)
    except (TypeError, ValueError):
        raise InputError(400, "pixels data must be a flat list of numbers.") from None
    if array.size != int(np.prod(shape)):
        raise InputError(400, f"pixels data holds {array.size} numbers; the shape {shape} needs {int(np.prod(shape))}.")
    if not np.isfinite(array).all():
        raise InputError(400, "pixels data holds NaN or infinite values.")
    return array.reshape(shape)
