"""The one interface every evaluator implements, and what it is given.

An evaluator is a callable with a `name` that takes an `EvalContext` and yields `(name, value)` pairs. A value
is anything JSON can hold: a number, a string, a list (e.g. a confusion matrix) or a dict. Each evaluator may
also yield `("flags", [message, ...])` for findings a reader must not miss. Reports render only what was
yielded, so an evaluator that cannot run (no model, no groups) simply yields nothing, or a `skipped` reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import nn

from vitkit.data.sources import ImageSet

Task = Literal["multiclass", "binary", "multilabel"]


@dataclass
class EvalSettings:
    """Knobs shared by the evaluators; the defaults are what `vitkit evaluate` uses."""

    bins: int = 15  # equal-width bins for ECE/MCE and the reliability diagram
    thresholds: tuple[float, ...] = (0.0, 0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.99)  # coverage table
    decision_threshold: float = 0.5  # binary / multi-label: a score at or above it is a positive
    held_out_fraction: float = 0.5  # share of the eval set the temperature is fitted on
    wrong_examples: int = 8  # most confidently wrong thumbnails
    attention_images: int = 16  # images whose attention is measured
    rollout_images: int = 4  # of those, how many get a rollout overlay
    robustness_images: int = 512  # images corrupted per corruption and severity (a seeded sample)
    severities: tuple[int, ...] = (1, 3, 5)  # of 1..5, as in ImageNet-C
    robustness_drop: float = 0.10  # accuracy drop that is flagged
    fairness_gap: float = 0.05  # gap between groups that is flagged
    min_group_size: int = 30  # smaller groups are reported as too small to judge
    bootstrap_resamples: int = 1000  # per-label AUROC/AP confidence intervals
    latency_repeats: int = 50
    warmup: int = 5
    throughput_batch: int = 64
    seed: int = 0


@dataclass
class ModelRunner:
    """Runs a model on uint8 image batches as evaluation does: normalised, on its device, under its autocast."""

    model: nn.Module
    device: torch.device
    mean: tuple[float, ...]
    std: tuple[float, ...]
    transform: Callable[[Any], Any]  # the recipe's eval transform: PIL image -> uint8 CHW tensor
    batch_size: int = 64
    amp_dtype: torch.dtype | None = None

    def batches(self, images: ImageSet) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """(uint8 images, labels) batches of `images` after the eval transform, in order."""
        from vitkit.data.pipeline import ImageDataset, make_loader

        yield from make_loader(ImageDataset(images, self.transform), self.batch_size)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Float32 logits on CPU for a uint8 batch."""
        from vitkit.evaluate.predict import forward_batch

        self.model.eval()
        return forward_batch(self.model, images, self.device, self.mean, self.std, self.amp_dtype)


@dataclass
class EvalContext:
    """Predictions on the evaluation set, and what richer evaluators need to look further."""

    logits: torch.Tensor  # (N, C) float32
    labels: torch.Tensor  # (N,) class indices, or (N, C) 0/1 targets for a multi-label task
    classes: list[str] = field(default_factory=list)
    images: ImageSet | None = None  # the evaluation images, in the order of `logits`
    groups: list[str] | None = None  # one group name per image (a manifest's group column)
    runner: ModelRunner | None = None  # to run the model again (attention, robustness, efficiency)
    shift: tuple[str, ImageSet] | None = None  # (description, images) of a shifted dataset
    head_logits: dict[str, torch.Tensor] = field(default_factory=dict)  # a distilled DeiT: each head on its own
    settings: EvalSettings = field(default_factory=EvalSettings)
    frozen_thresholds: dict[str, Any] | None = None  # operating thresholds fitted on validation (thresholds.json)
    is_validation_split: bool = False  # the images are the run's own validation split (thresholds are fitted here)

    @property
    def task(self) -> Task:
        if self.labels.dim() == 2:
            return "multilabel"
        return "binary" if self.logits.shape[1] == 2 else "multiclass"

    @property
    def class_names(self) -> list[str]:
        return self.classes or [str(i) for i in range(self.logits.shape[1])]


Value = Any  # JSON-able: float, int, str, list, dict


class Evaluator(Protocol):
    name: str

    def __call__(self, ctx: EvalContext) -> Iterator[tuple[str, Value]]: ...


def run_evaluator(evaluator: Evaluator, ctx: EvalContext) -> dict[str, Value]:
    """`{name: value}` of one evaluator, in the order it yielded them."""
    return dict(evaluator(ctx))
