"""Robustness: accuracy under common corruptions (after Hendrycks & Dietterich's ImageNet-C) at several severities,
and on a shifted dataset the user supplies.

Corruptions are pure functions of a uint8 batch (B, 3, H, W), a severity 1..5 and, for noise, a seeded generator:
the same seed gives the same images, and a higher severity moves further from the clean image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torchvision.io import decode_jpeg, encode_jpeg
from torchvision.transforms.v2 import functional as TF

from vitkit.evaluate.context import EvalContext, Value
from vitkit.evaluate.metrics import top1_accuracy

# Severity 1..5 parameters, ImageNet-C's where they do not depend on the image size.
NOISE_SIGMA = (0.08, 0.12, 0.18, 0.26, 0.38)  # std of additive noise on [0, 1] pixels
JPEG_QUALITY = (25, 18, 15, 10, 7)
BLUR_SIGMA_AT_224 = (1.0, 2.0, 3.0, 4.0, 6.0)  # scaled with the image side, as if it were at least 112 px
BRIGHTNESS_SHIFT = (0.1, 0.2, 0.3, 0.4, 0.5)  # added to every pixel on [0, 1]
CONTRAST_FACTOR = (0.4, 0.3, 0.2, 0.1, 0.05)  # distance to the image's mean grey is multiplied by this


def _check(severity: int) -> int:
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be 1..5, got {severity}")
    return severity - 1


def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=generator) * NOISE_SIGMA[_check(severity)] * 255
    return (images.float() + noise).round().clamp(0, 255).to(torch.uint8)


def jpeg_compression(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    quality = JPEG_QUALITY[_check(severity)]
    return torch.stack([decode_jpeg(encode_jpeg(image, quality=quality)) for image in images])


def gaussian_blur(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    sigma = BLUR_SIGMA_AT_224[_check(severity)] * max(images.shape[-1], 112) / 224
    kernel = 2 * math.ceil(3 * sigma) + 1  # covers ±3 sigma
    return TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])


def brightness(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    return (images.float() + BRIGHTNESS_SHIFT[_check(severity)] * 255).round().clamp(0, 255).to(torch.uint8)


def contrast(images: torch.Tensor, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    x = images.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * CONTRAST_FACTOR[_check(severity)] + mean).round().clamp(0, 255).to(torch.uint8)


Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]
CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "jpeg": jpeg_compression,
    "blur": gaussian_blur,
    "brightness": brightness,
    "contrast": contrast,
}


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int) -> torch.Tensor:
    """`CORRUPTIONS[name]` at `severity`, with its randomness drawn from `seed` only."""
    return CORRUPTIONS[name](images, severity, torch.Generator().manual_seed(seed))


def psnr(reference: torch.Tensor, image: torch.Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of a uint8 image against a reference; inf when they are equal."""
    mse = float(((reference.float() - image.float()) ** 2).mean())
    return float("inf") if mse == 0 else 10 * float(np.log10(255**2 / mse))


class RobustnessEvaluator:
    name = "robustness"

    def __call__(self, ctx: EvalContext) -> Iterator[tuple[str, Value]]:
        if ctx.runner is None or ctx.images is None:
            yield "skipped", "needs the model and the evaluation images"
            return
        if ctx.task == "multilabel":
            yield "skipped", "robustness is measured as top-1 accuracy, for single-label tasks"
            return
        s, runner = ctx.settings, ctx.runner
        limit = s.robustness_drop
        n = len(ctx.images)
        rng = np.random.default_rng(s.seed)
        chosen = np.sort(rng.choice(n, size=min(n, s.robustness_images), replace=False))
        batches = list(runner.batches(ctx.images.subset(chosen)))
        labels = ctx.labels[chosen]
        clean = top1_accuracy(ctx.logits[chosen], labels)  # the clean pass is already in the context
        yield "images", len(labels)
        yield "clean_top1", clean
        yield "severities", list(s.severities)
        table: dict[str, list[float]] = {}
        for c, name in enumerate(CORRUPTIONS):
            table[name] = []
            for severity in s.severities:
                logits = [
                    runner.logits(corrupt(x, name, severity, seed=s.seed * 1_000_003 + c * 1009 + severity * 101 + b))
                    for b, (x, _) in enumerate(batches)
                ]
                table[name].append(top1_accuracy(torch.cat(logits), labels))
        yield "corruptions", table
        yield "mean_corruption_top1", float(np.mean([v for row in table.values() for v in row]))
        flags = []
        for name, row in table.items():
            over = [(sev, clean - acc) for sev, acc in zip(s.severities, row, strict=True) if clean - acc > limit]
            if over:
                sev, drop = over[0]
                already = " already" if sev == s.severities[0] else ""  # not at the strongest: "at severity 5"
                flags.append(f"{name}: top-1 drops {drop * 100:.1f} points{already} at severity {sev}")
        if ctx.shift is not None:
            description, shifted = ctx.shift
            shift_logits, shift_labels = [], []
            for x, y in runner.batches(shifted):
                shift_logits.append(runner.logits(x))
                shift_labels.append(y)
            reference = top1_accuracy(ctx.logits, ctx.labels)
            shift_top1 = top1_accuracy(torch.cat(shift_logits), torch.cat(shift_labels))
            yield (
                "shift",
                {"data": description, "images": len(shifted), "top1": shift_top1, "reference_top1": reference},
            )
            if reference - shift_top1 > limit:
                flags.append(f"shifted data ({description}): top-1 drops {(reference - shift_top1) * 100:.1f} points")
        yield "flags", flags
