"""Training losses as pure functions: the classification term and knowledge distillation (DeiT, Hinton et al.).

Normalisation of the soft-distillation KL: it is summed over classes and averaged over the batch (per sample,
`reduction="batchmean"`, as in timm's distillation tasks), so `alpha` weighs two terms of the same scale. DeiT's
reference code divides the summed KL by batch x classes instead (`reduction="sum"` then `/ outputs.numel()`),
which makes its soft term C times smaller for C classes: DeiT's soft setting with alpha a corresponds here to
alpha' = (a / C) / ((1 - a) + a / C), up to an overall factor of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from timm.loss import SoftTargetCrossEntropy

DISTILL_TYPES = ("none", "soft", "hard")
_SOFT_TARGET_CE = SoftTargetCrossEntropy()


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of -sum_c t_c log p_c, for one-hot, smoothed or Mixup/CutMix-mixed targets."""
    return _SOFT_TARGET_CE(logits.float(), targets)


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
) -> LossParts:
    """The loss of one batch: (1 - alpha) x CE(class head, targets) + alpha x distill(distillation head, teacher).

    Without distillation (kind "none" or no teacher logits) it is the cross-entropy on the (averaged) output.
    `targets` are soft (label smoothing and Mixup/CutMix are folded in); the teacher saw the same mixed images."""
    if kind == "none" or teacher_logits is None:
        logits = outputs if isinstance(outputs, torch.Tensor) else torch.stack(list(outputs)).mean(0)
        task = soft_target_cross_entropy(logits, targets)
        return LossParts(task, task)
    if kind not in DISTILL_TYPES:
        raise ValueError(f"unknown distillation type '{kind}'; expected one of {DISTILL_TYPES}")
    cls_logits, dist_logits = split_heads(outputs)
    task = soft_target_cross_entropy(cls_logits, targets)
    teacher_logits = teacher_logits.detach()
    if kind == "soft":
        distill = soft_distillation(dist_logits, teacher_logits, tau)
    else:
        distill = hard_distillation(dist_logits, teacher_logits)
    return LossParts((1.0 - alpha) * task + alpha * distill, task, distill)
