"""Shared fixtures: tiny recipes and small synthetic datasets written by the tests themselves."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file
from torch import nn

from vitkit.config import load_recipe
from vitkit.config.schema import Recipe

TINY_OVERRIDES = [
    "model.img_size=16",
    "model.patch_size=4",
    "model.embed_dim=32",
    "model.depth=2",
    "model.num_heads=2",
    "data.source=builtin:shapes",
    "data.synthetic_train_size=96",
    "data.synthetic_val_size=40",
    "data.num_workers=0",
    "train.batch_size=16",
    "train.log_every=2",
    "schedule.epochs=2",
    "schedule.warmup_epochs=1",
    "augment.repeated_aug=1",
    # `auto` is bf16 on CPUs where it measures faster and fp32 elsewhere: tests that compare numbers must not
    # depend on which CPU runs them
    "train.precision=fp32",
]

# Every augmentation, mixing and regularisation trick off: runs whose outcome the tests compare exactly.
PLAIN = [
    "augment.rrc_scale=[1, 1]",
    "augment.rrc_ratio=[1, 1]",
    "augment.hflip=0",
    "augment.randaugment=null",
    "augment.color_jitter=0",
    "augment.random_erasing=0",
    "augment.mixup=0",
    "augment.cutmix=0",
    "model.drop_path_rate=0",
    "schedule.warmup_epochs=0",
]


# Under pytest-xdist (`make test` runs one worker per core) each worker, and every vitkit process a test starts,
# computes on one thread: more threads than cores make small kernels wait on each other.
THREADS = 1 if "PYTEST_XDIST_WORKER" in os.environ else 2
if THREADS == 1:
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")


@pytest.fixture(autouse=True)
def _torch_threads() -> None:
    torch.set_num_threads(THREADS)


def tiny_recipe(*extra: str, base: str = "quickstart") -> Recipe:
    """A recipe small enough to train in seconds on CPU."""
    return load_recipe(base, [*TINY_OVERRIDES, *extra])


def write_image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog", "fox"), per_class: int = 6) -> Path:
    """Class sub-folders of small random PNGs, colour-coded per class."""
    rng = np.random.default_rng(0)
    for i, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            pixels = rng.integers(0, 60, size=(12, 14, 3), dtype=np.uint8)
            pixels[..., i % 3] += 180
            Image.fromarray(pixels).save(root / name / f"{j}.png")
    return root


TINY_VIT = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def tiny_vit(num_classes: int = 10, seed: int = 0, name: str = "vit_tiny_patch16_224", **kwargs: object) -> nn.Module:
    """A seeded tiny timm ViT with the same architecture as `tiny_recipe()`'s model."""
    torch.manual_seed(seed)
    return timm.create_model(name, num_classes=num_classes, **{**TINY_VIT, **kwargs}).eval()


def write_mirrored_classes(root: Path, per_class: int) -> Path:
    """Two classes that are each other's mirror image (the bright half on the left or on the right): a flip turns
    an image into the other class."""
    rng = np.random.default_rng(0)
    for split, count in (("train", per_class), ("val", 16)):
        for name, half in (("left", slice(0, 8)), ("right", slice(8, 16))):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, size=(16, 16, 3), dtype=np.uint8)
                pixels[:, half] += 120
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


def save_tiny_pretrained(path: Path, num_classes: int = 10, seed: int = 0) -> tuple[Path, nn.Module]:
    """A tiny ViT saved as a .safetensors file, standing in for downloaded pretrained weights."""
    model = tiny_vit(num_classes, seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path, model
