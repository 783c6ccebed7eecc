"""builtin:shapes: a seeded, procedurally drawn 10-class dataset that needs no download.

Each image shows one shape or texture with random colours, size, position, rotation, background texture and
noise. Classes differ in geometry only, so a model must learn shape rather than colour; rotated squares, stars
and crosses, and rings versus circles, are close enough to make it non-trivial for a small ViT.

The shape is always lighter than its background (by at least 0.3 in luminance; hues stay random), as ink on paper
is always darker: with the contrast sign random too, a ViT's linear patch embedding has to learn every edge twice,
and the quick-start ViT ended at 63% top-1 instead of 90% with the same budget (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np

SHAPE_CLASSES = (
    "circle",
    "ring",
    "square",
    "triangle",
    "cross",
    "star",
    "crescent",
    "stripes",
    "checker",
    "dots",
)


LUMINANCE = np.array([0.299, 0.587, 0.114])  # Rec. 601 weights of R, G, B
MIN_CONTRAST = 0.3


def _shape_mask(kind: str, u: np.ndarray, v: np.ndarray, r: float, freq: float) -> np.ndarray:
    """Boolean mask of a shape in rotated, centred coordinates (u, v) with radius r."""
    rho = np.sqrt(u**2 + v**2)
    if kind == "circle":
        return rho < r
    if kind == "ring":
        return (rho < r) & (rho > 0.6 * r)
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) < 0.8 * r
    if kind == "triangle":
        return (v > -0.5 * r) & (np.abs(u) < (r - v) * 0.577)
    if kind == "cross":
        arm = 0.3 * r
        return ((np.abs(u) < arm) & (np.abs(v) < r)) | ((np.abs(v) < arm) & (np.abs(u) < r))
    if kind == "star":
        theta = np.arctan2(v, u)
        return rho < r * (0.55 + 0.45 * np.cos(5 * theta))
    if kind == "crescent":
        return (rho < r) & (np.sqrt((u - 0.45 * r) ** 2 + v**2) > 0.8 * r)
    if kind == "stripes":
        return np.sin(u * freq) > 0
    if kind == "checker":
        return np.sin(u * freq) * np.sin(v * freq) > 0
    if kind == "dots":
        return np.cos(u * freq) + np.cos(v * freq) > 1.0
    raise ValueError(f"unknown shape {kind}")


def render_shape(kind: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one (size, size, 3) uint8 image of `kind`."""
    coords = (np.arange(size) + 0.5) / size * 2 - 1
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    cx, cy = rng.uniform(-0.3, 0.3, size=2)
    angle = rng.uniform(0, 2 * np.pi)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    radius = rng.uniform(0.4, 0.7)
    freq = rng.uniform(6.0, 12.0)
    mask = _shape_mask(kind, u, v, radius, freq)
    if kind in ("stripes", "checker", "dots"):
        # Textures fill a random disc or box so that they are not just full-frame patterns.
        region = (np.abs(u) < 0.85) & (np.abs(v) < 0.85) if rng.random() < 0.5 else np.sqrt(u**2 + v**2) < 0.9
        mask &= region

    background, foreground = rng.uniform(0, 1, size=3), rng.uniform(0, 1, size=3)
    while foreground @ LUMINANCE - background @ LUMINANCE < MIN_CONTRAST:  # a visible shape, lighter than the ground
        background, foreground = rng.uniform(0, 1, size=3), rng.uniform(0, 1, size=3)
    # Low-frequency background texture plus pixel noise.
    gradient = rng.uniform(-0.25, 0.25) * xx + rng.uniform(-0.25, 0.25) * yy
    img = background[None, None, :] + gradient[..., None]
    img = np.where(mask[..., None], foreground[None, None, :], img)
    img = img + rng.normal(0, 0.06, size=img.shape)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def make_shapes(n: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` images (n, size, size, 3) uint8 with balanced labels (n,) int64, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % len(SHAPE_CLASSES)
    rng.shuffle(labels)
    images = np.stack([render_shape(SHAPE_CLASSES[int(c)], size, rng) for c in labels])
    return images, labels.astype(np.int64)
