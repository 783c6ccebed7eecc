"""Evaluators: plug-ins that turn (logits, labels) into named values. Reports render only what they yield."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import multiclass_accuracy, multiclass_calibration_error

from vitkit.evaluate.calibration import prediction_entropy


class Evaluator(Protocol):
    name: str

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> Iterator[tuple[str, float]]: ...


class AccuracyEvaluator:
    """Top-1, top-5 (micro-averaged, through torchmetrics) and the negative log-likelihood."""

    name = "accuracy"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> Iterator[tuple[str, float]]:
        num_classes = logits.shape[1]
        yield "top1", float(multiclass_accuracy(logits, labels, num_classes, average="micro"))
        if num_classes > 5:
            yield "top5", float(multiclass_accuracy(logits, labels, num_classes, top_k=5, average="micro"))
        yield "nll", float(F.cross_entropy(logits, labels))


class CalibrationEvaluator:
    """Mean confidence, mean prediction entropy, ECE (15 equal-width bins) and MCE (through torchmetrics)."""

    name = "calibration"

    def __init__(self, bins: int = 15) -> None:
        self.bins = bins

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> Iterator[tuple[str, float]]:
        probs = logits.softmax(dim=1)
        n = logits.shape[1]
        yield "mean_confidence", float(probs.max(dim=1).values.mean())
        yield "mean_entropy", float(prediction_entropy(probs).mean())
        yield "ece", float(multiclass_calibration_error(probs, labels, n, n_bins=self.bins, norm="l1"))
        yield "mce", float(multiclass_calibration_error(probs, labels, n, n_bins=self.bins, norm="max"))


DEFAULT_EVALUATORS: tuple[Evaluator, ...] = (AccuracyEvaluator(), CalibrationEvaluator())


def run_evaluators(
    logits: torch.Tensor, labels: torch.Tensor, evaluators: tuple[Evaluator, ...] = DEFAULT_EVALUATORS
) -> dict[str, float]:
    """`{evaluator.metric: value}` for every evaluator."""
    return {f"{e.name}.{key}": value for e in evaluators for key, value in e(logits, labels)}
