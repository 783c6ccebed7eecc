"""Confidence and calibration as pure functions of (probabilities or logits, labels).

ECE and MCE themselves come from torchmetrics (`evaluate.metrics`); this module adds what a reliability
diagram, temperature scaling and a coverage table need, in forms a report can draw.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def prediction_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row of class probabilities; 0 for a one-hot row, log C for a uniform one."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(dim=1)


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins: the data of a reliability diagram (empty bins have count 0)."""

    edges: list[float]
    confidence: list[float]  # mean confidence in each bin
    accuracy: list[float]  # accuracy in each bin
    count: list[int]

    @property
    def ece(self) -> float:
        """Expected calibration error: the count-weighted mean gap between accuracy and confidence."""
        total = sum(self.count)
        gaps = (abs(a - c) * n for a, c, n in zip(self.accuracy, self.confidence, self.count, strict=True))
        return sum(gaps) / total if total else 0.0

    @property
    def mce(self) -> float:
        """Maximum calibration error: the largest gap over non-empty bins."""
        gaps = [abs(a - c) for a, c, n in zip(self.accuracy, self.confidence, self.count, strict=True) if n]
        return max(gaps, default=0.0)


def reliability_bins(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> ReliabilityBins:
    """Bin predictions by top confidence into `bins` equal-width bins over (0, 1], as torchmetrics does."""
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    index = torch.bucketize(confidence, edges[1:-1], right=True)  # bin i holds (edge_i, edge_i+1]
    count = torch.bincount(index, minlength=bins)
    safe = count.clamp_min(1)
    mean_conf = torch.bincount(index, weights=confidence, minlength=bins) / safe
    mean_acc = torch.bincount(index, weights=correct, minlength=bins) / safe
    return ReliabilityBins(edges.tolist(), mean_conf.tolist(), mean_acc.tolist(), count.tolist())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, steps: int = 100) -> float:
    """The temperature T that minimises the NLL of softmax(logits / T) (Guo et al., 2017), fitted with L-BFGS
    on log T so that T stays positive. Fit it on held-out data, never on the data it is judged on."""
    logits = logits.detach().float()
    log_t = torch.zeros((), requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


@dataclass(frozen=True)
class CoveragePoint:
    """Answering only when the top confidence is at least `threshold`: the share answered and their accuracy."""

    threshold: float
    coverage: float
    accuracy: float  # NaN when nothing is answered


def coverage_at_thresholds(probs: torch.Tensor, labels: torch.Tensor, thresholds: list[float]) -> list[CoveragePoint]:
    confidence, predicted = probs.max(dim=1)
    correct = predicted == labels
    points = []
    for t in thresholds:
        answered = confidence >= t
        n = int(answered.sum())
        accuracy = float(correct[answered].float().mean()) if n else float("nan")
        points.append(CoveragePoint(t, n / max(len(labels), 1), accuracy))
    return points
