"""Per-finding ranking with confidence intervals, and operating points at a fixed specificity, for binary and
multi-label tasks (the numbers a clinical reader asks for).

- AUROC and average precision per label, their macro means and the micro AUROC, each with a 95% bootstrap
  percentile interval. Resampling is by patient when the images have patient ids (images of one patient are not
  independent), else by image.
- Sensitivity at 90% and 95% specificity. A threshold is fitted on validation data (torchmetrics'
  `sensitivity_at_specificity`: the lowest score threshold whose specificity reaches the target) and then frozen:
  `vitkit evaluate` saves the thresholds fitted on a run's own validation split, and evaluating other data (a test
  set) applies them unchanged. Each operating point says which set its threshold came from; a threshold fitted on
  the set it is judged on is optimistic and is labelled so.
- Attention rollout on the most confident true and false positives of each finding.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_sensitivity_at_specificity,
)

from vitkit.evaluate.context import EvalContext, Value

SPECIFICITIES = (0.90, 0.95)
LEVEL = 0.95


def label_scores(ctx: EvalContext) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(scores, targets, names): sigmoid scores and 0/1/-1 (unknown) targets per label; a binary task is one
    label, its positive class's softmax probability."""
    if ctx.task == "multilabel":
        return ctx.logits.sigmoid(), torch.nan_to_num(ctx.labels.float(), nan=-1.0).long(), ctx.class_names
    return ctx.logits.softmax(dim=1)[:, 1:], ctx.labels.long().view(-1, 1), [ctx.class_names[1]]


def ranking(scores: torch.Tensor, targets: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-label AUROC and AP (NaN for a label without both positives and negatives among its known targets),
    and the micro AUROC over every known (image, label) pair."""
    auroc, ap = np.full(scores.shape[1], np.nan), np.full(scores.shape[1], np.nan)
    for j in range(scores.shape[1]):
        known = targets[:, j] >= 0
        s, t = scores[known, j], targets[known, j]
        if len(t) and t.min() < t.max():
            auroc[j], ap[j] = float(binary_auroc(s, t)), float(binary_average_precision(s, t))
    known = targets >= 0
    flat = targets[known]
    micro = float(binary_auroc(scores[known], flat)) if len(flat) and flat.min() < flat.max() else float("nan")
    return auroc, ap, micro


def bootstrap_samples(n: int, clusters: list[str] | None, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Index sets of `resamples` bootstrap samples: images drawn with replacement, or whole clusters (patients)
    drawn with replacement and all their images taken."""
    rng = np.random.default_rng(seed)
    if clusters is None:
        for _ in range(resamples):
            yield rng.integers(0, n, size=n)
        return
    names, inverse = np.unique(np.asarray(clusters), return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(names))]
    for _ in range(resamples):
        yield np.concatenate([members[k] for k in rng.integers(0, len(names), size=len(names))])


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The (low, high) percentile interval of bootstrap values along axis 0, NaN draws left out."""
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(values, [tail, 100 - tail], axis=0)
    return low, high


@dataclass
class Intervals:
    """Point values and bootstrap intervals of per-label AUROC/AP, their macro means and the micro AUROC."""

    auroc: np.ndarray
    ap: np.ndarray
    micro: float
    low: dict[str, Any]
    high: dict[str, Any]


def ranking_intervals(
    scores: torch.Tensor, targets: torch.Tensor, clusters: list[str] | None, resamples: int, seed: int
) -> Intervals:
    auroc, ap, micro = ranking(scores, targets)
    draws: dict[str, list[Any]] = {"auroc": [], "ap": [], "macro_auroc": [], "macro_ap": [], "micro": []}
    for idx in bootstrap_samples(len(scores), clusters, resamples, seed):
        index = torch.from_numpy(idx)
        a, p, m = ranking(scores[index], targets[index])
        draws["auroc"].append(a)
        draws["ap"].append(p)
        draws["macro_auroc"].append(np.nanmean(a) if np.isfinite(a).any() else np.nan)
        draws["macro_ap"].append(np.nanmean(p) if np.isfinite(p).any() else np.nan)
        draws["micro"].append(m)
    low, high = {}, {}
    for name, values in draws.items():
        low[name], high[name] = percentile_interval(np.asarray(values, dtype=float))
    return Intervals(auroc, ap, micro, low, high)


def fit_thresholds(scores: torch.Tensor, targets: torch.Tensor, specificity: float) -> list[float | None]:
    """Per label, the threshold reaching `specificity` with the highest sensitivity (None: no such threshold, or
    no positives and negatives to fit on)."""
    out: list[float | None] = []
    for j in range(scores.shape[1]):
        known = targets[:, j] >= 0
        s, t = scores[known, j], targets[known, j]
        if not (t == 1).any() or not (t == 0).any():
            out.append(None)
            continue
        _, threshold = binary_sensitivity_at_specificity(s, t, specificity)
        out.append(float(threshold) if float(threshold) <= 1.0 else None)
    return out


def at_threshold(scores: torch.Tensor, targets: torch.Tensor, threshold: float) -> tuple[float, float, int, int]:
    """(sensitivity, specificity, positives, negatives) of `score >= threshold` over the known targets."""
    known = targets >= 0
    s, t = scores[known], targets[known]
    positive = s >= threshold
    pos, neg = int((t == 1).sum()), int((t == 0).sum())
    sens = float((positive & (t == 1)).sum()) / pos if pos else float("nan")
    spec = float((~positive & (t == 0)).sum()) / neg if neg else float("nan")
    return sens, spec, pos, neg


def _number(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 5)


class ClinicalEvaluator:
    """Per-label AUROC/AP with bootstrap intervals and sensitivity at fixed specificity (see the module)."""

    name = "clinical"

    def __call__(self, ctx: EvalContext) -> Iterator[tuple[str, Value]]:
        if ctx.task == "multiclass":
            yield "skipped", "per-finding AUROC and operating points are measured for binary and multi-label tasks"
            return
        scores, targets, names = label_scores(ctx)
        s = ctx.settings
        clusters = ctx.images.patients if ctx.images is not None else None
        iv = ranking_intervals(scores, targets, clusters, s.bootstrap_resamples, s.seed)
        unit = "patients" if clusters is not None else "images"
        yield "interval", {"level": LEVEL, "resamples": s.bootstrap_resamples, "resampled": unit}
        rows = []
        for j, name in enumerate(names):
            rows.append(
                {
                    "label": name,
                    "positives": int((targets[:, j] == 1).sum()),
                    "negatives": int((targets[:, j] == 0).sum()),
                    "auroc": _number(iv.auroc[j]),
                    "auroc_low": _number(iv.low["auroc"][j]),
                    "auroc_high": _number(iv.high["auroc"][j]),
                    "ap": _number(iv.ap[j]),
                    "ap_low": _number(iv.low["ap"][j]),
                    "ap_high": _number(iv.high["ap"][j]),
                }
            )
        yield "per_label", rows
        if np.isfinite(iv.auroc).any():
            for key, point, draw in (
                ("macro_auroc", np.nanmean(iv.auroc), "macro_auroc"),
                ("macro_ap", np.nanmean(iv.ap), "macro_ap"),
                ("micro_auroc", iv.micro, "micro"),
            ):
                yield key, float(point)
                yield f"{key}_low", float(iv.low[draw])
                yield f"{key}_high", float(iv.high[draw])
        yield from self._operating_points(ctx, scores, targets, names)

    def _operating_points(
        self, ctx: EvalContext, scores: torch.Tensor, targets: torch.Tensor, names: list[str]
    ) -> Iterator[tuple[str, Value]]:
        frozen = ctx.frozen_thresholds
        usable = frozen is not None and frozen.get("labels") == names
        if frozen is not None and usable:
            source = f"frozen: fitted on {frozen.get('fitted_on', 'the validation split')}"
            thresholds = {float(k): v for k, v in frozen["thresholds"].items()}
        elif ctx.is_validation_split:
            source = "fitted on this set, the run's validation split; saved and applied unchanged to other data"
        else:
            source = "fitted on this evaluation set, so optimistic (no thresholds were fitted on validation yet)"
        if not usable:
            thresholds = {spec: fit_thresholds(scores, targets, spec) for spec in SPECIFICITIES}
            yield "fitted_thresholds", {"labels": names, "thresholds": {str(k): v for k, v in thresholds.items()}}
        points = []
        for spec, values in thresholds.items():
            for j, name in enumerate(names):
                threshold = values[j]
                point: dict[str, Any] = {"label": name, "target_specificity": spec, "threshold": threshold}
                if threshold is not None:
                    sens, achieved, _, _ = at_threshold(scores[:, j], targets[:, j], threshold)
                    point |= {"sensitivity": _number(sens), "specificity": _number(achieved)}
                points.append(point)
        yield "threshold_source", source
        yield "operating_points", points
        yield from positives_rollout(ctx, scores, targets, names, thresholds[SPECIFICITIES[0]])


def confident_positives(
    scores: torch.Tensor, targets: torch.Tensor, thresholds: list[float | None]
) -> list[tuple[int, int, str]]:
    """Per label, the highest-scoring true positive and false positive at its threshold: (image, label, kind)."""
    picked = []
    for j, threshold in enumerate(thresholds):
        if threshold is None:
            continue
        flagged = scores[:, j] >= threshold
        for kind, truth in (("true positive", 1), ("false positive", 0)):
            candidates = torch.nonzero(flagged & (targets[:, j] == truth)).flatten()
            if len(candidates):
                picked.append((int(candidates[scores[candidates, j].argmax()]), j, kind))
    return picked


def positives_rollout(
    ctx: EvalContext, scores: torch.Tensor, targets: torch.Tensor, names: list[str], thresholds: list[float | None]
) -> Iterator[tuple[str, Value]]:
    """Attention rollout (evaluate.attention) on each label's most confident true and false positive, at the
    90%-specificity threshold: what the model looked at when it was right and when it raised a false alarm."""
    from vitkit.evaluate.attention import (
        attention_modules,
        attention_rollout,
        capture_attention,
        overlay,
        rollout_to_patches,
    )

    if ctx.runner is None or ctx.images is None or not attention_modules(ctx.runner.model):
        return
    picked = confident_positives(scores, targets, thresholds)
    model = ctx.runner.model
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    if not picked or grid is None:
        return
    batches = ctx.runner.batches(ctx.images.subset(np.asarray([i for i, _, _ in picked])))
    images = torch.cat([pixels for pixels, _ in batches])
    with capture_attention(model) as maps:
        ctx.runner.logits(images)
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    if int(grid[0]) * int(grid[1]) != maps[0].shape[-1] - prefix:
        return
    patches = rollout_to_patches(attention_rollout(maps), prefix, getattr(model, "cls_token", None) is not None)
    yield (
        "positives_rollout",
        [
            {
                "image": overlay(images[k], patches[k], (int(grid[0]), int(grid[1]))),
                "label": names[j],
                "kind": kind,
                "score": round(float(scores[i, j]), 4),
            }
            for k, (i, j, kind) in enumerate(picked)
        ],
    )
