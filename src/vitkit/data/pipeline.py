"""From an `ImageSet` to batches: decode-once cache, per-image timm transforms, loaders and batch-level steps.

Per-image work (crop, flip, RandAugment) runs in the loader and yields uint8 tensors, as timm's prefetcher path
does; normalisation, Random Erasing and Mixup/CutMix run once per batch on the training device. That keeps the
data sent between processes 4x smaller and does the float work where it is cheapest.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from PIL import Image
from timm.data import Mixup, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.loader import fast_collate
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing
from torch.utils.data import DataLoader, Dataset, Sampler, SequentialSampler

from vitkit.config.schema import AugmentConfig, DataConfig
from vitkit.data.compat import patch_timm_posterize
from vitkit.data.sources import ImageSet, to_pil

patch_timm_posterize()  # must run before timm builds its RandAugment ops (see data/compat.py)


class ImageDataset(Dataset[tuple[Any, int]]):
    """Applies a per-image transform to the items of an `ImageSet`.

    The key is an index, or `(index, sample_seed)` from a `PositionSeededSampler`: then the transform's random
    draws come from that seed alone, whichever process or worker runs it, and the caller's RNGs are untouched.
    """

    def __init__(self, images: ImageSet, transform: Callable[[Image.Image], Any]) -> None:
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def _item(self, index: int) -> tuple[Any, Any]:
        label = self.images.labels[index]
        target = torch.from_numpy(label) if self.images.multilabel else int(label)  # a multi-label row stays float
        return self.transform(to_pil(self.images.items[index])), target

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[Any, int]:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[Any]) -> list[tuple[Any, int]]:
        """A whole batch (the DataLoader calls this when it exists): the RNG states are saved and restored once
        per batch rather than once per image, which would cost more than a small image's augmentation."""
        if not keys or not isinstance(keys[0], tuple):
            return [self._item(int(k)) for k in keys]
        with preserved_rngs():
            out = []
            for index, seed in keys:
                seed_rngs(seed)
                out.append(self._item(index))
            return out


def seed_rngs(seed: int) -> None:
    """Seed the three global RNGs that timm's and torchvision's per-image transforms draw from."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.default_generator.manual_seed(seed)  # torch.manual_seed also visits every accelerator: 100x slower


@contextmanager
def preserved_rngs() -> Iterator[None]:
    """Put the python, numpy and torch (CPU) RNG states back as they were after the body."""
    states = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.default_generator.set_state(states[2])


# --- decode once -------------------------------------------------------------------------------------------


def _decode(item: Any, max_side: int) -> np.ndarray:
    img = to_pil(item)
    if min(img.size) > max_side:  # keep enough pixels for RandomResizedCrop, not the full-size original
        scale = max_side / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def estimated_bytes(images: ImageSet, max_side: int, sample: int = 16) -> int:
    """Memory of the decoded set, extrapolated from a few images."""
    if isinstance(images.items, np.ndarray):
        return int(images.items.nbytes)
    n = min(sample, len(images))
    probe = [_decode(images.items[i], max_side).nbytes for i in range(n)]
    return int(np.mean(probe) * len(images)) if probe else 0


def decode_all(images: ImageSet, max_side: int, threads: int = 2) -> ImageSet:
    """Decode every image once into uint8 arrays (shorter side capped at `max_side`)."""
    if isinstance(images.items, np.ndarray):
        return images
    with ThreadPoolExecutor(max_workers=threads) as pool:  # PIL releases the GIL while decoding
        arrays = list(pool.map(lambda item: _decode(item, max_side), images.items))
    return ImageSet(arrays, images.labels, images.groups, images.patients)


def maybe_cache(images: ImageSet, cfg: DataConfig, img_size: int) -> tuple[ImageSet, bool]:
    """Apply the recipe's cache policy; returns the (possibly decoded) set and whether it is in memory."""
    if isinstance(images.items, np.ndarray):
        return images, True
    if cfg.cache == "none":
        return images, False
    max_side = 2 * img_size
    if cfg.cache == "auto" and estimated_bytes(images, max_side) > cfg.cache_limit_gb * 2**30:
        return images, False
    return decode_all(images, max_side), True


# --- transforms --------------------------------------------------------------------------------------------


def train_transform(aug: AugmentConfig, img_size: int) -> Callable[[Image.Image], Any]:
    """timm's training transform up to a uint8 tensor: RandomResizedCrop, flip, ColorJitter or RandAugment; after
    a small random rotation when augment.rotation is set (torchvision; corners filled black, as a film's edge)."""
    timm_transform = create_transform(
        img_size,
        is_training=True,
        scale=aug.rrc_scale,
        ratio=aug.rrc_ratio,
        hflip=aug.hflip,
        color_jitter=aug.color_jitter if aug.color_jitter > 0 else None,  # type: ignore[arg-type]
        auto_augment=aug.randaugment,
        interpolation=aug.interpolation,
        use_prefetcher=True,
    )
    if not aug.rotation:
        return timm_transform
    from torchvision.transforms import Compose, InterpolationMode, RandomRotation

    return Compose([RandomRotation(aug.rotation, interpolation=InterpolationMode.BILINEAR), timm_transform])


def eval_transform(aug: AugmentConfig, img_size: int) -> Callable[[Image.Image], Any]:
    """Resize to img_size / crop_pct, then center crop, to a uint8 tensor."""
    return create_transform(
        img_size, is_training=False, crop_pct=aug.crop_pct, interpolation=aug.interpolation, use_prefetcher=True
    )


# --- batch-level steps (pure functions plus timm's batch augmentations) ------------------------------------


def normalize_batch(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, C, H, W) in [0, 255] to float, normalised per channel."""
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    return (images.float() - m) / s


def smooth_targets(labels: torch.Tensor, num_classes: int, smoothing: float) -> torch.Tensor:
    """One-hot targets with label smoothing: 1 - s + s/K on the true class, s/K elsewhere; multi-label rows (see
    `multilabel_targets`) as they are, smoothed."""
    if labels.ndim == 2:
        return multilabel_targets(labels, 1.0, smoothing)
    return mixup_target(labels, num_classes, lam=1.0, smoothing=smoothing)


def multilabel_targets(labels: torch.Tensor, lam: float | torch.Tensor, smoothing: float) -> torch.Tensor:
    """Soft multi-label targets: each 0/1 label smoothed towards 1/2 (y(1 - s) + s/2, timm's multi-label
    smoothing: every label is its own two-class problem), then mixed with the reversed batch,
    lam x y + (1 - lam) x y_reversed (`lam` a number, or one per image as (B, 1)).

    An unknown label (NaN) stays unknown wherever it carries weight in the mix, and never leaks into a mix that
    does not use it (lam = 1 keeps the image's own labels even when its partner's are unknown)."""
    y = labels.float() * (1.0 - smoothing) + 0.5 * smoothing
    if not torch.is_tensor(lam) and lam == 1.0:
        return y
    lam_t = torch.as_tensor(lam, dtype=y.dtype, device=y.device)
    partner = y.flip(0)
    mixed = torch.nan_to_num(y) * lam_t + torch.nan_to_num(partner) * (1.0 - lam_t)
    unknown = (y.isnan() & (lam_t > 0)) | (partner.isnan() & (lam_t < 1))
    return mixed.masked_fill(unknown, float("nan"))


class MultiLabelMixup(Mixup):
    """timm's Mixup/CutMix on the images, with multi-label targets mixed by `multilabel_targets` (timm's own
    multi-label targets turn a label unknown in the partner image into NaN even when the batch is not mixed)."""

    def __call__(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(x) % 2:
            raise ValueError("Mixup/CutMix needs an even batch")
        mix = {"elem": self._mix_elem, "pair": self._mix_pair}.get(self.mode, self._mix_batch)
        lam = mix(x)  # mixes x in place; a number, or (B, 1) per image
        return x, multilabel_targets(target, lam, self.label_smoothing)


class BatchAugment:
    """Normalise, Random Erasing, then Mixup/CutMix (which also folds label smoothing into the soft targets)."""

    def __init__(
        self,
        aug: AugmentConfig,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        num_classes: int,
        label_smoothing: float,
        device: torch.device,
        multilabel: bool = False,
    ) -> None:
        self.mean, self.std = mean, std
        self.num_classes, self.smoothing = num_classes, label_smoothing
        self.erasing = (
            RandomErasing(aug.random_erasing, mode=aug.erasing_mode, device=str(device))
            if aug.random_erasing > 0
            else None
        )
        self.mixup = (
            (MultiLabelMixup if multilabel else Mixup)(
                mixup_alpha=aug.mixup,
                cutmix_alpha=aug.cutmix,
                prob=aug.mix_prob,
                switch_prob=aug.mix_switch_prob,
                mode=aug.mix_mode,
                label_smoothing=label_smoothing,
                num_classes=num_classes,
            )
            if aug.mix_prob > 0 and (aug.mixup > 0 or aug.cutmix > 0)
            else None
        )

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = normalize_batch(images, self.mean, self.std)
        if self.erasing is not None:
            x = self.erasing(x)
        if self.mixup is not None:
            return self.mixup(x, labels)
        return x, smooth_targets(labels, self.num_classes, self.smoothing)


# --- loaders -----------------------------------------------------------------------------------------------


def auto_workers(in_memory: bool, device: torch.device) -> int:
    """Worker processes for the loader.

    On a CPU-only machine workers compete with the model's threads for the same cores: with decoded images in
    memory, 0, 1 and 2 workers measured the same img/s within noise (benchmarks/train_throughput.py, DeiT
    augmentation), so augmentation runs in the main process (no extra processes, and every RNG in one place).
    Files decoded per step need a worker or more; a GPU needs up to 8, leaving a core for the main process.
    """
    cpus = os.cpu_count() or 1
    if device.type == "cpu":
        return 0 if in_memory else max(1, min(4, cpus // 2))
    return max(1, min(8, cpus - 1))


class EpochShuffleSampler(Sampler[int]):
    """A random permutation per epoch, seeded by (run seed, epoch), so data order is reproducible and resumable."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())


class WeightedOrder(Sampler[int]):
    """Each epoch, `len(weights)` images drawn with replacement in proportion to `weights` (a class-balancing
    sampler), seeded by (run seed, epoch) so the order is reproducible and resumable like the shuffle's."""

    def __init__(self, weights: np.ndarray, seed: int) -> None:
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.weights)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        return iter(torch.multinomial(self.weights, len(self.weights), True, generator=generator).tolist())


def balancing_weights(labels: np.ndarray) -> np.ndarray:
    """Per-image draw weights that give each class (or label) equal weight in expectation: 1 / its count. A
    multi-label image counts for its rarest positive label; an image with no positive label counts as one
    more class ("no finding"). Unknown (NaN) labels count as absent."""
    if labels.ndim == 1:
        counts = np.bincount(labels)
        return 1.0 / counts[labels]
    positive = np.nan_to_num(labels) > 0.5
    counts = positive.sum(axis=0)
    none = ~positive.any(axis=1)
    inverse = np.where(positive, 1.0 / np.maximum(counts, 1), 0.0).max(axis=1)
    return np.where(none, 1.0 / max(int(none.sum()), 1), inverse)


class RepeatedAugSampler(RepeatAugSampler):
    """timm's repeated-augmentation sampler (DeiT), single process; its shuffle also depends on the run seed."""

    def __init__(self, size: int, repeats: int, seed: int) -> None:
        super().__init__(range(size), num_replicas=1, rank=0, num_repeats=repeats)
        self.seed = seed

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(self.seed * 100_003 + epoch)  # timm seeds the shuffle with the epoch alone


_MASK64 = 2**64 - 1


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """The augmentation seed of the image at `position` of `epoch`'s order: a SplitMix64 hash of the three
    numbers, so neighbouring positions get unrelated seeds (and it costs a microsecond, not a SeedSequence's 14)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xD1B54A32D192ED03 + (position + 1) * 0x8CB92BA72F3D8DD7) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) >> 1


class PositionSeededSampler(Sampler[tuple[int, int]]):
    """Yields `(index, sample_seed)` from a per-epoch order, starting at any position, for one of `world` processes.

    The order is global: the same permutation (or DeiT repeated-augmentation sequence) whatever the number of
    processes. Process `rank` of `world` takes the positions rank, rank + world, rank + 2 * world, ... so that its
    k-th batch of b images and the other processes' k-th batches together are positions k*b*world ..
    (k+1)*b*world - 1: exactly the k-th batch of a single process with batch b*world, and each image is seen once
    per epoch across processes (DeiT's RASampler also deals positions out round-robin, so the repeats of one image
    land on different processes). Each image's augmentation depends only on (run seed, epoch, global position),
    so a run resumed in the middle of an epoch, with any number of loader workers or processes, sees exactly the
    images and augmentations the uninterrupted run would have. `start` counts global positions already trained on.
    """

    def __init__(
        self, order: EpochShuffleSampler | RepeatedAugSampler | WeightedOrder, seed: int, rank: int = 0, world: int = 1
    ) -> None:
        self.order, self.seed, self.rank, self.world = order, seed, rank, world
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.order.set_epoch(epoch)
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return len(range(self.rank, len(self.order), self.world)) - len(range(self.rank, self.start, self.world))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for position, index in enumerate(self.order):
            if position >= self.start and position % self.world == self.rank:
                yield int(index), sample_seed(self.seed, self.epoch, position)


def train_sampler(
    size: int, repeats: int, seed: int, rank: int = 0, world: int = 1, weights: np.ndarray | None = None
) -> PositionSeededSampler:
    """Seeded per-epoch shuffle, DeiT's repeated-augmentation sampler when repeats > 1, or a weighted draw when
    `weights` are given; each image with its own augmentation seed, dealt out over `world` processes; call
    set_epoch(epoch, start)."""
    order: EpochShuffleSampler | RepeatedAugSampler | WeightedOrder
    if weights is not None:
        order = WeightedOrder(weights, seed)
    else:
        order = RepeatedAugSampler(size, repeats, seed) if repeats > 1 else EpochShuffleSampler(size, seed)
    sampler = PositionSeededSampler(order, seed, rank, world)
    sampler.set_epoch(0)
    return sampler


def make_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    sampler: Sampler[Any] | None = None,
    workers: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader[Any]:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler if sampler is not None else SequentialSampler(dataset),  # type: ignore[arg-type]
        num_workers=workers,
        collate_fn=fast_collate,
        drop_last=drop_last,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,  # keep workers across epochs: forking them again costs seconds
        # each new iterator draws a worker base seed; from its own generator, it leaves the global RNG (which
        # drives dropout, Mixup and Random Erasing) as it was, so a resumed run draws the same numbers
        generator=torch.Generator().manual_seed(0),
    )
