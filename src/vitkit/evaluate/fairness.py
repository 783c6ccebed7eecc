"""Fairness: accuracy, calibration and count per group (a manifest's group column), with the gaps between them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from vitkit.evaluate.calibration import reliability_bins
from vitkit.evaluate.context import EvalContext, Value
from vitkit.evaluate.metrics import top1_accuracy


def multilabel_groups(ctx: EvalContext) -> Iterator[tuple[str, Value]]:
    """Per group: image count and macro AUROC over the labels with positives and negatives in the group; the gap
    between the best and the worst group large enough to judge is flagged above settings.fairness_gap."""
    from vitkit.evaluate.clinical import ranking

    s, groups = ctx.settings, ctx.groups or []
    targets = torch.nan_to_num(ctx.labels.float(), nan=-1.0).long()
    rows: list[dict[str, Any]] = []
    for group in sorted(set(groups)):
        index = torch.tensor([i for i, g in enumerate(groups) if g == group])
        auroc, _, _ = ranking(ctx.logits[index].sigmoid(), targets[index])
        judged = auroc[auroc == auroc]
        rows.append(
            {
                "group": group or "(empty)",
                "count": len(index),
                "macro_auroc": float(judged.mean()) if len(judged) else float("nan"),
                "too_small": len(index) < s.min_group_size,
            }
        )
    yield "min_group_size", s.min_group_size
    yield "groups", rows
    judged_rows = [r for r in rows if not r["too_small"] and r["macro_auroc"] == r["macro_auroc"]]
    flags = [f"group '{r['group']}' has {r['count']} images: too small to judge" for r in rows if r["too_small"]]
    if len(judged_rows) >= 2:
        best = max(judged_rows, key=lambda r: r["macro_auroc"])
        worst = min(judged_rows, key=lambda r: r["macro_auroc"])
        gap = best["macro_auroc"] - worst["macro_auroc"]
        yield "macro_auroc_gap", gap
        if gap > s.fairness_gap:
            flags.append(
                f"macro AUROC differs by {gap:.3f} between groups '{best['group']}' ({best['macro_auroc']:.3f}) "
                f"and '{worst['group']}' ({worst['macro_auroc']:.3f})"
            )
    yield "flags", flags


class FairnessEvaluator:
    name = "fairness"

    def __call__(self, ctx: EvalContext) -> Iterator[tuple[str, Value]]:
        if ctx.groups is None:
            yield "skipped", "no group column: pass a CSV manifest and --groups COLUMN (builtin:xray: its sites)"
            return
        if ctx.task == "multilabel":
            yield from multilabel_groups(ctx)
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
