"""Images embedded in metrics.json and the report as PNG data URIs, so both stay single, self-contained files."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from PIL import Image

from vitkit.data.sources import to_pil


def png_data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def tensor_to_pil(image: torch.Tensor) -> Image.Image:
    """A uint8 CHW tensor as an RGB PIL image."""
    return Image.fromarray(image.permute(1, 2, 0).contiguous().numpy().astype(np.uint8))


def thumbnail_uri(item: Any, size: int = 96) -> str:
    """A thumbnail (longest side `size`) of a path, array, PIL image or uint8 CHW tensor."""
    image = tensor_to_pil(item) if isinstance(item, torch.Tensor) else to_pil(item)
    image = image.copy()
    if max(image.size) > size:
        image.thumbnail((size, size), Image.Resampling.BICUBIC)
    if max(image.size) < size:  # tiny images (e.g. 32 px) are enlarged so a reader can see them
        scale = size / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.NEAREST)
    return png_data_uri(image)
