"""Confidence and calibration: pure functions of (probabilities or logits, labels), and the evaluator.

ECE and MCE themselves come from torchmetrics; the functions here add what a reliability diagram, temperature
scaling and a coverage table need, in forms a report can draw.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vitkit.evaluate.context import EvalContext, Value
from vitkit.evaluate.images import thumbnail_uri


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
    """Bin predictions by top confidence into `bins` equal-width bins (edge_i, edge_i+1] (Guo et al., 2017).

    The ECE and MCE vitkit reports come from these bins, so they always agree with the reliability diagram. They
    equal torchmetrics' values except for confidences of exactly 1.0, which torchmetrics puts in a bin of their
    own; here they belong to the last bin, like every confidence above its lower edge."""
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


def _split_for_temperature(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded (fit, judge) index split of the evaluation set: the temperature is never judged on its own data."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = round(n * fraction)
    return order[:cut], order[cut:]


def per_label_calibration(ctx: EvalContext) -> Iterator[tuple[str, Value]]:
    """Each label as its own two-class problem: ECE of its sigmoid probability (known labels only), the mean
    predicted probability against the observed prevalence, and the macro mean ECE."""
    rows: list[dict[str, Any]] = []
    for j, name in enumerate(ctx.class_names):
        known = ~ctx.labels[:, j].isnan()
        p, y = ctx.logits[known, j].sigmoid(), ctx.labels[known, j].long()
        if not len(y):
            continue
        bins = reliability_bins(torch.stack([1 - p, p], dim=1), y, ctx.settings.bins)
        rows.append(
            {
                "label": name,
                "ece": bins.ece,
                "mean_probability": float(p.mean()),
                "prevalence": float(y.float().mean()),
                "images": len(y),
            }
        )
    if rows:
        yield "ece", float(sum(r["ece"] for r in rows) / len(rows))
        yield "per_label", rows


# Half of the set fits T, the other half judges it: below ~50 images a half is too small for either (a T of 0.03
# fitted on 9 images made held-out ECE worse), so a temperature is only fitted from this many evaluation images.
MIN_IMAGES_FOR_TEMPERATURE = 100


class CalibrationEvaluator:
    """Confidence and calibration: mean confidence and entropy, ECE/MCE (torchmetrics), the reliability diagram,
    temperature scaling fitted on a held-out part, coverage at confidence thresholds and the most confidently
    wrong examples."""

    name = "calibration"

    def __call__(self, ctx: EvalContext) -> Iterator[tuple[str, Value]]:
        if ctx.task == "multilabel":
            yield from per_label_calibration(ctx)
            return
        s = ctx.settings
        logits, labels = ctx.logits, ctx.labels
        probs = logits.softmax(dim=1)
        yield "mean_confidence", float(probs.max(dim=1).values.mean())
        yield "mean_entropy", float(prediction_entropy(probs).mean())
        bins = reliability_bins(probs, labels, s.bins)  # one binning for the reported ECE/MCE and the diagram
        yield "ece", bins.ece
        yield "mce", bins.mce
        yield "reliability", asdict(bins)
        yield from self._temperature(ctx)
        points = coverage_at_thresholds(probs, labels, list(s.thresholds))
        yield "coverage", [asdict(p) for p in points]
        yield from self._confidently_wrong(ctx, probs)

    def _temperature(self, ctx: EvalContext) -> Iterator[tuple[str, Value]]:
        """A temperature fitted on one part and kept only if it lowers the NLL on the other part; else T = 1."""
        s, logits, labels = ctx.settings, ctx.logits, ctx.labels
        if len(labels) < MIN_IMAGES_FOR_TEMPERATURE:
            yield (
                "temperature_skipped",
                (
                    f"needs at least {MIN_IMAGES_FOR_TEMPERATURE} evaluation images to fit and check a temperature, "
                    f"has {len(labels)}: probabilities stay the raw softmax (T = 1)"
                ),
            )
            return
        fit, judge = _split_for_temperature(len(labels), s.held_out_fraction, s.seed)
        t = fit_temperature(logits[fit], labels[fit])
        yield "temperature_fitted", t
        yield "temperature_fit_images", len(fit)
        nll = {}
        for name, scaled in (("before", logits[judge]), ("after", logits[judge] / t)):
            p = scaled.softmax(dim=1)
            yield f"ece_{name}_scaling", reliability_bins(p, labels[judge], s.bins).ece
            nll[name] = float(F.cross_entropy(scaled, labels[judge]))
            yield f"nll_{name}_scaling", nll[name]
        if nll["after"] < nll["before"]:
            yield "temperature", t
        else:
            yield (
                "temperature_rejected",
                (
                    f"the fitted T = {t:.3f} did not lower the NLL on the {len(judge)} held-out images "
                    f"({nll['before']:.3f} -> {nll['after']:.3f}), so T = 1 is kept"
                ),
            )

    def _confidently_wrong(self, ctx: EvalContext, probs: torch.Tensor) -> Iterator[tuple[str, Value]]:
        confidence, predicted = probs.max(dim=1)
        wrong = torch.nonzero(predicted != ctx.labels).flatten()
        wrong = wrong[confidence[wrong].argsort(descending=True)][: ctx.settings.wrong_examples]
        names = ctx.class_names
        examples = []
        for i in wrong.tolist():
            example: dict[str, Value] = {
                "index": i,
                "true": names[int(ctx.labels[i])],
                "predicted": names[int(predicted[i])],
                "confidence": float(confidence[i]),
            }
            if ctx.images is not None:
                example["image"] = thumbnail_uri(ctx.images.items[i])
            examples.append(example)
        yield "confidently_wrong", examples
