"""Fairness: accuracy, calibration and count per group (a manifest's group column), with the gaps between them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from vitkit.evaluate.calibration import reliability_bins
from vitkit.evaluate.context import EvalContext, Value
from vitkit.evaluate.metrics import top1_accuracy


class FairnessEvaluator:
    name = "fairness"

    def __call__(self, ctx: EvalContext) -> Iterator[tuple[str, Value]]:
        if ctx.groups is None:
            yield "skipped", "no group column: pass a CSV manifest and --groups COLUMN"
            return
        if ctx.task == "multilabel":
            yield "skipped", "per-group accuracy and calibration are measured for single-label tasks"
            return
        s = ctx.settings
        rows: list[dict[str, Any]] = []
        for group in sorted(set(ctx.groups)):
            index = torch.tensor([i for i, g in enumerate(ctx.groups) if g == group])
            logits, labels = ctx.logits[index], ctx.labels[index]
            probs = logits.softmax(dim=1)
            rows.append(
                {
                    "group": group or "(empty)",
                    "count": len(index),
                    "top1": top1_accuracy(logits, labels),
                    "ece": reliability_bins(probs, labels, s.bins).ece,
                    "mean_confidence": float(probs.max(dim=1).values.mean()),
                    "nll": float(F.cross_entropy(logits, labels)),
                    "too_small": len(index) < s.min_group_size,
                }
            )
        yield "min_group_size", s.min_group_size
        yield "groups", rows
        judged = [r for r in rows if not r["too_small"]]
        flags = [
            f"group '{r['group']}' has {r['count']} images, fewer than {s.min_group_size}: too small to judge"
            for r in rows
            if r["too_small"]
        ]
        if len(judged) >= 2:
            for metric, label in (("top1", "top-1"), ("ece", "ECE")):
                best = max(judged, key=lambda r: r[metric])
                worst = min(judged, key=lambda r: r[metric])
                gap = best[metric] - worst[metric]
                yield f"{metric}_gap", gap
                if gap > s.fairness_gap:
                    flags.append(
                        f"{label} differs by {gap * 100:.1f} points between groups '{best['group']}' "
                        f"({best[metric]:.1%}) and '{worst['group']}' ({worst[metric]:.1%})"
                    )
        else:
            yield "gap_skipped", f"fewer than two groups with at least {s.min_group_size} images"
        yield "flags", flags
