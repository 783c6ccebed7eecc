"""Training losses as pure functions: the classification term and knowledge distillation (DeiT, Hinton et al.).

Normalisation of the soft-distillation KL: it is summed over classes and averaged over the batch (per sample,
`reduction="batchmean"`, as in timm's distillation tasks), so `alpha` weighs two terms of the same scale. DeiT's
reference code divides the summed KL by batch x classes instead (`reduction="sum"` then `/ outputs.numel()`),
which makes its soft term C times smaller for C classes: DeiT's soft setting with alpha a corresponds here to
alpha' = (a / C) / ((1 - a) + a / C), up to an overall factor of the loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy
from torchvision.ops import sigmoid_focal_loss

DISTILL_TYPES = ("none", "soft", "hard")
_SOFT_TARGET_CE = SoftTargetCrossEntropy()


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c t_c log p_c, for one-hot, smoothed or Mixup/CutMix-mixed targets."""
    return _SOFT_TARGET_CE(logits.float(), targets)


Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, soft targets) -> scalar loss


def weighted_soft_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None, gamma: float = 0.0
) -> torch.Tensor:
    """Mean over the batch of -sum_c w_c (1 - p_c)^gamma t_c log p_c: class weights w (None: all 1) and the focal
    factor (gamma = 0: plain cross-entropy; Lin et al. 2017 use 2) for single-label soft targets."""
    log_p = F.log_softmax(logits.float(), dim=-1)
    terms = -targets * log_p
    if gamma:
        terms = terms * (1.0 - log_p.exp()) ** gamma
    if weights is not None:
        terms = terms * weights.to(terms.device)
    return terms.sum(dim=-1).mean()


def multilabel_loss(
    logits: torch.Tensor, targets: torch.Tensor, pos_weight: torch.Tensor | None = None, gamma: float = 0.0
) -> torch.Tensor:
    """Binary cross-entropy with logits per label (positives weighted by `pos_weight`), or the sigmoid focal loss
    when gamma > 0 (torchvision's, alpha off); averaged over the known entries: unknown labels (NaN) count nowhere."""
    known = ~targets.isnan()
    t = torch.nan_to_num(targets)
    if gamma:
        terms = sigmoid_focal_loss(logits.float(), t, alpha=-1, gamma=gamma, reduction="none")
    else:
        weight = pos_weight.to(logits.device) if pos_weight is not None else None
        terms = F.binary_cross_entropy_with_logits(logits.float(), t, pos_weight=weight, reduction="none")
    return (terms * known).sum() / known.sum().clamp(min=1)


def pos_weight_from_labels(labels: np.ndarray) -> torch.Tensor:
    """Per-label negatives / positives of a (N, C) 0/1/NaN matrix (PyTorch's suggested `pos_weight`): a label
    present in 1 of 10 images gets 9, so its positives weigh as much as its negatives. Unknowns are left out."""
    positives = np.nansum(labels, axis=0)
    negatives = np.sum(~np.isnan(labels), axis=0) - positives
    return torch.as_tensor(negatives / np.maximum(positives, 1), dtype=torch.float32)


def class_weights_from_labels(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, N / (K x n_c), so the weights average 1 over the images; for two classes the
    positive-to-negative weight ratio is n_neg / n_pos, as `pos_weight_from_labels`."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.as_tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def make_criterion(
    task: str, imbalance: str, labels: np.ndarray, num_classes: int, focal_gamma: float = 2.0
) -> Criterion:
    """The classification term for the task and the imbalance handling (train.imbalance): none, pos_weight
    (per-label pos_weight, or inverse-frequency class weights for single-label tasks) or focal; a weighted
    sampler changes the data, not the loss."""
    gamma = focal_gamma if imbalance == "focal" else 0.0
    if task == "multilabel":
        pos_weight = pos_weight_from_labels(labels) if imbalance == "pos_weight" else None
        return lambda logits, targets: multilabel_loss(logits, targets, pos_weight, gamma)
    if imbalance == "none":
        return soft_target_cross_entropy
    weights = class_weights_from_labels(labels, num_classes) if imbalance == "pos_weight" else None
    return lambda logits, targets: weighted_soft_cross_entropy(logits, targets, weights, gamma)


def soft_distillation(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 x KL(softmax(teacher / tau) || softmax(student / tau)), summed over classes, averaged over samples.

    The tau^2 factor keeps the gradient's scale independent of tau (Hinton et al. 2015)."""
    log_p_student = F.log_softmax(student.float() / tau, dim=-1)
    log_p_teacher = F.log_softmax(teacher.float() / tau, dim=-1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * tau * tau


def hard_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's argmax (DeiT's hard distillation, no smoothing)."""
    return F.cross_entropy(student.float(), teacher.argmax(dim=-1))


def split_heads(outputs: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """(class head, distillation head) logits: a distilled DeiT in distilled training returns both; a plain model
    returns one tensor, which then serves both terms (logit distillation)."""
    if isinstance(outputs, tuple | list):
        return outputs[0], outputs[1]
    return outputs, outputs


@dataclass
class LossParts:
    total: torch.Tensor
    task: torch.Tensor
    distill: torch.Tensor | None = None


def training_loss(
    outputs: torch.Tensor | tuple[torch.Tensor, ...],
    targets: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    kind: str = "none",
    alpha: float = 0.5,
    tau: float = 1.0,
    criterion: Criterion = soft_target_cross_entropy,
) -> LossParts:
    """The loss of one batch: (1 - alpha) x CE(class head, targets) + alpha x distill(distillation head, teacher).

    Without distillation (kind "none" or no teacher logits) it is the cross-entropy on the (averaged) output.
    `targets` are soft (label smoothing and Mixup/CutMix are folded in); the teacher saw the same mixed images."""
    if kind == "none" or teacher_logits is None:
        logits = outputs if isinstance(outputs, torch.Tensor) else torch.stack(list(outputs)).mean(0)
        task = criterion(logits, targets)
        return LossParts(task, task)
    if kind not in DISTILL_TYPES:
        raise ValueError(f"unknown distillation type '{kind}'; expected one of {DISTILL_TYPES}")
    cls_logits, dist_logits = split_heads(outputs)
    task = criterion(cls_logits, targets)
    teacher_logits = teacher_logits.detach()
    if kind == "soft":
        distill = soft_distillation(dist_logits, teacher_logits, tau)
    else:
        distill = hard_distillation(dist_logits, teacher_logits)
    return LossParts((1.0 - alpha) * task + alpha * distill, task, distill)
