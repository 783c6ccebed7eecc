"""Compatibility fixes between the libraries vitkit builds on.

Pillow 13 made `ImageOps.posterize(img, 0)` raise ("bits must be between or equal to 1 and 8"); earlier versions
returned a black image. timm's RandAugment asks for 0 bits whenever the sampled magnitude reaches its cap of 10:
with `rand-m9-mstd0.5-inc1` (DeiT's setting) about 1 image in 650, so a run on 10k images stops with a ValueError
in a loader worker within its first epoch. `patch_timm_posterize` restores the earlier Pillow meaning of 0 bits in
timm's op table, only where the installed Pillow raises.
"""

from __future__ import annotations

from typing import Any

from PIL import Image, ImageOps
from timm.data import auto_augment

_POSTERIZE_OPS = ("Posterize", "PosterizeIncreasing", "PosterizeOriginal")


def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
    """timm's posterize with Pillow < 13 semantics: 8+ bits keeps the image, 0 or fewer bits makes it black."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


def pillow_rejects_zero_bits() -> bool:
    try:
        ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
    except ValueError:
        return True
    return False


def patch_timm_posterize() -> bool:
    """Install `posterize` in timm's RandAugment op table if Pillow needs it; returns whether it did."""
    if not pillow_rejects_zero_bits():
        return False
    for name in _POSTERIZE_OPS:
        if name in auto_augment.NAME_TO_OP:
            auto_augment.NAME_TO_OP[name] = posterize
    return True
