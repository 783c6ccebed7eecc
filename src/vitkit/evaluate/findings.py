"""Findings: what in an evaluation a person must act on, and the change to try for each.

Evaluators measure; this module reads their results (and the run's training history, when there is one) and turns
the problems among them into findings, most urgent first. It is a pure function of the metrics document, so
`vitkit report` renders the same findings again without recomputing anything.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

ECE_LIMIT = 0.10  # expected calibration error above this is a finding
RECALL_GAP = 0.25  # a class whose recall is this far below the mean recall is a finding
OVERFIT_RISE = 0.10  # validation loss this much above its minimum at the end of training


@dataclass(frozen=True)
class Finding:
    level: str  # "act": a problem to fix; "check": worth a look
    area: str  # the report section it belongs to
    problem: str
    action: str


def findings(doc: dict[str, Any]) -> list[dict[str, str]]:
    """The findings of a metrics document, problems to act on first."""
    results = doc.get("results", {})
    found = [
        *_accuracy(results.get("accuracy", {}), doc.get("classes", [])),
        *_calibration(results.get("calibration", {})),
        *_training(doc.get("training", {}), len(doc.get("classes", [])) or 2, doc.get("task") == "multilabel"),
        *_attention(results.get("attention", {})),
        *_robustness(results.get("robustness", {})),
        *_fairness(results.get("fairness", {})),
    ]
    found.sort(key=lambda f: f.level != "act")  # stable: within a level, the order above
    return [asdict(f) for f in found]


def _accuracy(results: dict[str, Any], classes: list[str]) -> Iterator[Finding]:
    matrix = results.get("confusion_matrix")
    if not matrix or len(matrix) != len(classes):
        return
    support = [sum(row) for row in matrix]
    predicted = [sum(row[j] for row in matrix) for j in range(len(matrix))]
    recall = [row[i] / n if n else math.nan for i, (row, n) in enumerate(zip(matrix, support, strict=True))]
    judged = [r for r in recall if not math.isnan(r)]
    mean_recall = sum(judged) / max(len(judged), 1)
    for i, name in enumerate(classes):
        if not support[i]:
            continue
        confused = max((j for j in range(len(classes)) if j != i), key=lambda j: matrix[i][j], default=None)
        mostly = f"; it is mostly predicted as '{classes[confused]}'" if confused is not None else ""
        try_this = (
            f"Check the images and labels of '{name}', then give it more weight: more images of it, oversampling, "
            "or a class-balanced loss. Classes that look alike need more of both."
        )
        if predicted[i] == 0:
            yield Finding(
                "act", "Accuracy", f"class '{name}' is never predicted ({support[i]} images){mostly}.", try_this
            )
        elif recall[i] < mean_recall - RECALL_GAP:
            yield Finding(
                "act",
                "Accuracy",
                f"class '{name}' has recall {recall[i]:.0%} against {mean_recall:.0%} on average{mostly}.",
                try_this,
            )


def _calibration(results: dict[str, Any]) -> Iterator[Finding]:
    ece = results.get("ece")
    if ece is None:
        return
    if "per_label" in results:  # multi-label: each label's sigmoid, no temperature
        yield from _label_calibration(results["per_label"])
        return
    kept, fitted = results.get("temperature"), results.get("temperature_fitted")
    if ece > ECE_LIMIT:
        side = "over" if results.get("mean_confidence", 0) > 1 - ece else "under"
        problem = (
            f"ECE is {ece:.1%}: the model's confidence is off by that much on average (it looks {side}-confident)."
        )
        if kept is not None:
            action = (
                f"vitkit predict applies the fitted temperature T = {kept:.3f}, which takes held-out ECE from "
                f"{results['ece_before_scaling']:.1%} to {results['ece_after_scaling']:.1%}. Use the scaled "
                "probabilities."
            )
        elif fitted is not None:
            action = (
                "The fitted temperature did not help on held-out images: evaluate on more validation images and refit, "
                "or train with label smoothing or Mixup, which temper over-confidence."
            )
        else:
            action = (
                "Too few images to fit a temperature: evaluate on at least 100 validation images (--data) to fit one, "
                "and treat the probabilities as rough until then."
            )
        yield Finding("act", "Confidence and calibration", problem, action)
    elif fitted is not None and kept is None:
        yield Finding(
            "check",
            "Confidence and calibration",
            f"the fitted temperature T = {fitted:.3f} did not lower the held-out NLL, so T = 1 is kept.",
            "Nothing to do while ECE is low; refit on more validation images if the probabilities matter.",
        )


UNDERFIT_AUROC = 0.65  # a macro AUROC below this has learnt little of what separates the findings


def _label_calibration(rows: list[dict[str, Any]]) -> Iterator[Finding]:
    off = [r for r in rows if r["ece"] > ECE_LIMIT]
    if not off:
        return
    worst = max(off, key=lambda r: r["ece"])
    yield Finding(
        "check",
        "Confidence and calibration",
        f"{len(off)} of {len(rows)} labels have ECE above {ECE_LIMIT:.0%} (worst: {worst['label']}, ECE "
        f"{worst['ece']:.1%}, mean probability {worst['mean_probability']:.1%} against a prevalence of "
        f"{worst['prevalence']:.1%}).",
        "Decide with the operating thresholds (Findings section), not with 0.5; a run trained with "
        "train.imbalance=pos_weight or focal raises rare labels' probabilities on purpose, so its sigmoid outputs "
        "are scores rather than probabilities.",
    )


def _val_loss(record: dict[str, Any]) -> float | None:
    values = [record[k] for k in ("val_loss", "ema_val_loss") if k in record]
    return min(values) if values else None


def _training(training: dict[str, Any], num_classes: int, multilabel: bool = False) -> Iterator[Finding]:
    history = [r for r in training.get("history", []) if _val_loss(r) is not None]
    skipped = training.get("bad_images", 0)
    if skipped:
        yield Finding(
            "check",
            "Training",
            f"{skipped} unreadable images were skipped in training and validation.",
            "Fix or remove them (each is listed with its reason in the run's bad_images.jsonl), or the model never "
            "learns from them.",
        )
    if not history:
        return
    losses = [_val_loss(r) or 0.0 for r in history]
    lowest = min(range(len(losses)), key=losses.__getitem__)
    if len(history) >= 3 and lowest < len(losses) - 1 and losses[-1] > losses[lowest] * (1 + OVERFIT_RISE):
        yield Finding(
            "act",
            "Training",
            f"validation loss rose from {losses[lowest]:.3f} (epoch {history[lowest]['epoch']}) to {losses[-1]:.3f} by "
            f"epoch {history[-1]['epoch']}: the model overfits.",
            "Regularise more: stronger augmentation (augment.randaugment, augment.mixup, augment.cutmix), "
            "model.drop_path_rate 0.1-0.2, more optim.weight_decay, fewer schedule.epochs, or more data; pretrained "
            "weights (--pretrained) help most on small data. The best checkpoint is used meanwhile.",
        )
    yield from _fit_gap(history, multilabel)
    yield from _dynamics(training.get("dynamics", {}))
    if multilabel:
        yield from _multilabel_underfit(history)
        return
    chance = 1 / num_classes
    best_top1 = max(max(r.get("val_top1", 0.0), r.get("ema_val_top1", 0.0)) for r in history)
    if best_top1 < chance + (1 - chance) / 2 and losses[-1] > 0.5 * math.log(num_classes):
        yield Finding(
            "act",
            "Training",
            f"validation top-1 reached only {best_top1:.1%} (chance is {chance:.1%}) and the validation loss is still "
            f"{losses[-1]:.3f}: the model underfits.",
            "Train longer (schedule.epochs), check optim.lr and the warmup, or start from pretrained weights "
            "(--pretrained); on little data, the small-data recipe. See vitkit advise freeze.",
        )


OVERFIT_GAP = 0.15  # training top-1 this far above validation top-1 is overfitting
ATTN_MLP_GRAD_RATIO = 10.0  # attention gradients this many times the MLP's (median over logged updates)
LARGE_UPDATE = 0.05  # an update that moves a block's weights by 5% or more


def _fit_gap(history: list[dict[str, Any]], multilabel: bool) -> Iterator[Finding]:
    """Over- or underfitting from the last epoch's training-sample score against its validation score."""
    key = "auroc" if multilabel else "top1"
    scored = [r for r in history if f"train_eval_{key}" in r and f"val_{key}" in r]
    if not scored:
        return
    last = scored[-1]
    train, val = last[f"train_eval_{key}"], last[f"val_{key}"]
    shown = (lambda x: f"{x:.3f}") if multilabel else (lambda x: f"{x:.1%}")
    best = max(r[f"val_{key}"] for r in scored)
    if train - val > OVERFIT_GAP * (0.5 if multilabel else 1.0):
        yield Finding(
            "act",
            "Training",
            f"training images score {shown(train)} and validation images {shown(val)} ({key}, last epoch): the model "
            "overfits.",
            "Regularise more: raise model.drop_path_rate by 0.1 (0.1-0.2 for small ViTs), turn on Mixup/CutMix "
            "(augment.mixup=0.8, augment.cutmix=1.0) and RandAugment, raise optim.weight_decay; more data or "
            "pretrained weights (--pretrained) help most.",
        )
    elif val >= best and len(scored) >= 3 and scored[-2][f"val_{key}"] < val and train - val < 0.05:
        yield Finding(
            "check",
            "Training",
            f"validation {key} was still rising at the last epoch ({shown(val)}), level with the training images "
            f"({shown(train)}): the run stopped while the model was still learning.",
            "Train longer (raise schedule.epochs, e.g. x2); if it then plateaus with training and validation level, "
            "lower the regularisation (model.drop_path_rate, augment.mixup, augment.cutmix) or use a larger model.",
        )


def _dynamics(dynamics: dict[str, float]) -> Iterator[Finding]:
    ratio, update = dynamics.get("attn_mlp_grad_ratio"), dynamics.get("max_update_ratio")
    if ratio is not None and ratio > ATTN_MLP_GRAD_RATIO:
        yield Finding(
            "check",
            "Training",
            f"attention gradients were {ratio:.0f}x the MLP's (median over logged updates): attention dominates "
            "the updates.",
            "Clip gradients (optim.clip_grad=1.0) and keep the warmup (schedule.warmup_epochs); if attention "
            "collapses, lower optim.lr.",
        )
    if update is not None and update > LARGE_UPDATE:
        yield Finding(
            "check",
            "Training",
            f"one update moved a block's weights by {update:.1%} (updates of about 0.1% are typical): the learning "
            "rate may be too high.",
            "Lower optim.lr, lengthen schedule.warmup_epochs, or clip gradients (optim.clip_grad=1.0).",
        )


def _multilabel_underfit(history: list[dict[str, Any]]) -> Iterator[Finding]:
    """A multi-label model whose best macro AUROC stays near chance (0.5) has not learnt its findings."""
    best = max(max(r.get("val_auroc", 0.0), r.get("ema_val_auroc", 0.0)) for r in history)
    if best < UNDERFIT_AUROC:
        yield Finding(
            "act",
            "Training",
            f"validation macro AUROC reached only {best:.3f} (chance is 0.5): the model underfits.",
            "Train longer (schedule.epochs), check optim.lr and the warmup, or start from pretrained weights "
            "(--pretrained, e.g. with finetune.strategy=lora); rare findings also gain from train.imbalance.",
        )


def _attention(results: dict[str, Any]) -> Iterator[Finding]:
    if results.get("collapsed_layers"):
        layers = ", ".join(str(i) for i in results["collapsed_layers"])
        yield Finding(
            "act",
            "Attention quality",
            f"attention collapsed in layer {layers}: its heads attend alike, to few tokens.",
            "Collapse usually comes from too high a learning rate or too little data for the model: lower optim.lr, "
            "lengthen schedule.warmup_epochs, or start from pretrained weights.",
        )
    if results.get("uniform_heads"):
        yield Finding(
            "check",
            "Attention quality",
            f"{len(results['uniform_heads'])} heads attend almost uniformly: they add little.",
            "Often a sign of a short training; train longer or start from pretrained weights.",
        )


def _robustness(results: dict[str, Any]) -> Iterator[Finding]:
    for flag in results.get("flags", []):
        if flag.startswith("shifted data"):
            action = "Label a sample of the shifted data and fine-tune on it, or add such images to training."
        else:
            action = (
                "Train with augmentation that covers it (augment.randaugment varies brightness, contrast and "
                "sharpness; augment.color_jitter brightness and contrast), or collect images like it."
            )
        yield Finding("act", "Robustness", flag + ".", action)


def _fairness(results: dict[str, Any]) -> Iterator[Finding]:
    for flag in results.get("flags", []):
        if "too small to judge" in flag:
            yield Finding("check", "Fairness across groups", flag + ".", "Evaluate on more images of this group.")
        else:
            yield Finding(
                "act",
                "Fairness across groups",
                flag + ".",
                "Look at the weaker group's images and labels; collect more of it or weight it in training, then "
                "check the gap again.",
            )
