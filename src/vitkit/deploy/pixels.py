"""The pixels an exported model sees: a run's images through its eval transform, normalised, as float32 arrays."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from vitkit.config.schema import Recipe
from vitkit.data.pipeline import ImageDataset, eval_transform, make_loader, normalize_batch
from vitkit.data.sources import ImageSet, recipe_splits


def run_splits(recipe: Recipe) -> tuple[ImageSet, ImageSet]:
    """The training and validation images of the run's own data (the split is seeded, so it is the run's split)."""
    splits = recipe_splits(recipe)
    return splits.train, splits.val


def pixel_batches(recipe: Recipe, images: ImageSet, batch_size: int = 64) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(float32 NCHW normalised pixels, int labels) batches of `images`, in order."""
    mean, std = recipe.data.normalization()
    loader = make_loader(ImageDataset(images, eval_transform(recipe.augment, recipe.model.img_size)), batch_size)
    for uint8, labels in loader:
        yield normalize_batch(uint8, mean, std).numpy(), labels.numpy()


def first_images(images: ImageSet, n: int) -> ImageSet:
    """The first `n` images of a set (the split is already shuffled), with their labels and groups."""
    n = min(n, len(images))
    items = images.items[:n]
    groups = images.groups[:n] if images.groups else None
    return ImageSet(items, images.labels[:n], groups)


def stacked(batches: Iterator[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = zip(*batches, strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def eager_logits(model: torch.nn.Module, pixels: np.ndarray, batch_size: int = 64) -> np.ndarray:
    with torch.inference_mode():
        out = [model(torch.from_numpy(pixels[i : i + batch_size])).float() for i in range(0, len(pixels), batch_size)]
    return torch.cat(out).numpy()
