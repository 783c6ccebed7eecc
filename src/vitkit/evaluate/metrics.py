"""Accuracy: top-1/top-5, per-class precision/recall/F1, confusion matrix and NLL for single-label tasks; AUROC,
average precision and sensitivity/specificity at a threshold for binary and multi-label ones (torchmetrics)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_recall,
    binary_roc,
    binary_specificity,
    multiclass_accuracy,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
    multilabel_auroc,
    multilabel_average_precision,
    multilabel_exact_match,
    multilabel_f1_score,
    multilabel_precision,
    multilabel_recall,
    multilabel_specificity,
)

from vitkit.evaluate.context import EvalContext, Evaluator, Value

CURVE_POINTS = 101  # ROC curves are thinned to about this many points for the report


def top1_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return float(multiclass_accuracy(logits, labels, logits.shape[1], average="micro"))


def topk_metrics(logits: torch.Tensor, labels: torch.Tensor) -> Iterator[tuple[str, float]]:
    """Top-1, top-5 (when there are more than 5 classes) and NLL: what training reports each epoch."""
    num_classes = logits.shape[1]
    yield "top1", top1_accuracy(logits, labels)
    if num_classes > 5:
        yield "top5", float(multiclass_accuracy(logits, labels, num_classes, top_k=5, average="micro"))
    yield "nll", float(F.cross_entropy(logits, labels))


def _thin(curve: torch.Tensor) -> list[float]:
    step = max(1, len(curve) // CURVE_POINTS)
    return [round(float(v), 5) for v in torch.cat([curve[::step], curve[-1:]])]


def per_class_table(names: list[str], support: torch.Tensor, **columns: torch.Tensor) -> list[dict[str, Value]]:
    """One row per class: its name, each metric column and its support (images, or positives for multi-label)."""
    return [
        {"class": name, **{k: float(v[i]) for k, v in columns.items()}, "support": int(support[i])}
        for i, name in enumerate(names)
    ]


class AccuracyEvaluator:
    name = "accuracy"

    def __call__(self, ctx: EvalContext) -> Iterator[tuple[str, Value]]:
        if ctx.task == "multilabel":
            yield from self._multilabel(ctx)
            return
        logits, labels, c = ctx.logits, ctx.labels, ctx.logits.shape[1]
        yield from topk_metrics(logits, labels)
        for head, head_logits in ctx.head_logits.items():  # a distilled DeiT: each head on its own as well
            yield f"top1_{head}", top1_accuracy(head_logits, labels)
        args = (logits, labels, c)
        yield "macro_f1", float(multiclass_f1_score(*args, average="macro"))
        support = torch.bincount(labels, minlength=c)
        columns = {"precision": multiclass_precision, "recall": multiclass_recall, "f1": multiclass_f1_score}
        yield (
            "per_class",
            per_class_table(ctx.class_names, support, **{k: f(*args, average="none") for k, f in columns.items()}),
        )
        yield "confusion_matrix", multiclass_confusion_matrix(*args).tolist()  # rows: true class, columns: predicted
        if ctx.task == "binary":
            yield from self._binary(ctx)

    def _binary(self, ctx: EvalContext) -> Iterator[tuple[str, Value]]:
        """The second class is the positive one; its softmax probability is the score."""
        scores, target, t = ctx.logits.softmax(dim=1)[:, 1], ctx.labels, ctx.settings.decision_threshold
        if target.unique().numel() < 2:
            yield "skipped_ranking", "AUROC needs both classes in the evaluation set"
            return
        yield "positive_class", ctx.class_names[1]
        yield "auroc", float(binary_auroc(scores, target))
        yield "average_precision", float(binary_average_precision(scores, target))
        yield "threshold", t
        yield "sensitivity", float(binary_recall(scores, target, threshold=t))
        yield "specificity", float(binary_specificity(scores, target, threshold=t))
        fpr, tpr, _ = binary_roc(scores, target)
        yield "roc_curve", {"fpr": _thin(fpr), "tpr": _thin(tpr)}

    def _multilabel(self, ctx: EvalContext) -> Iterator[tuple[str, Value]]:
        """Per label: AUROC, AP and, at the decision threshold, sensitivity/specificity/precision/F1; unknown labels
        (NaN) are left out, and a label without both positives and negatives gets no ranking metric."""
        scores, target, known = ctx.logits.sigmoid(), known_targets(ctx.labels), ~ctx.labels.isnan()
        n, t = target.shape[1], ctx.settings.decision_threshold
        yield "exact_match", float(multilabel_exact_match(scores, target, n, threshold=t, ignore_index=-1))
        bce = F.binary_cross_entropy_with_logits(ctx.logits, torch.nan_to_num(ctx.labels.float()), reduction="none")
        yield "nll", float((bce * known).sum() / known.sum().clamp(min=1))
        yield "threshold", t
        both = [int(((target[:, j] == 1).any() & (target[:, j] == 0).any()).item()) for j in range(n)]
        per_label = {
            "auroc": multilabel_auroc(scores, target, n, average="none", ignore_index=-1),
            "average_precision": multilabel_average_precision(scores, target, n, average="none", ignore_index=-1),
            "sensitivity": multilabel_recall(scores, target, n, t, "none", ignore_index=-1),
            "specificity": multilabel_specificity(scores, target, n, t, "none", ignore_index=-1),
            "precision": multilabel_precision(scores, target, n, t, "none", ignore_index=-1),
            "f1": multilabel_f1_score(scores, target, n, t, "none", ignore_index=-1),
        }
        ranked = [j for j in range(n) if both[j]]
        if ranked:
            yield "auroc", float(per_label["auroc"][ranked].mean())
            yield "average_precision", float(per_label["average_precision"][ranked].mean())
            yield "micro_auroc", float(binary_auroc(scores[known], target[known]))
        support = (target == 1).sum(dim=0)
        rows = per_class_table(ctx.class_names, support, **per_label)
        for row, has_both in zip(rows, both, strict=True):
            if not has_both:
                row["auroc"] = row["average_precision"] = None
        yield "per_class", rows


def known_targets(labels: torch.Tensor) -> torch.Tensor:
    """Multi-label 0/1/NaN targets as integers, with unknown (NaN) as -1 (the metrics' ignore_index)."""
    return torch.nan_to_num(labels.float(), nan=-1.0).long()


def training_metrics(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """`accuracy.top1`, `accuracy.top5` and `accuracy.nll`: the cheap subset used to pick the best epoch."""
    return {f"accuracy.{key}": value for key, value in topk_metrics(logits, labels)}


__all__ = ["AccuracyEvaluator", "Evaluator", "per_class_table", "top1_accuracy", "topk_metrics", "training_metrics"]
