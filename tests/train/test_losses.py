"""Distillation losses against values computed by hand (numpy), and where their gradients go."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data.mixup import mixup_target

from tests.conftest import tiny_vit
from vitkit.train.losses import (
    hard_distillation,
    soft_distillation,
    soft_target_cross_entropy,
    split_heads,
    training_loss,
)

STUDENT = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]])
TEACHER = torch.tensor([[1.0, 3.0, 0.0], [0.0, -1.0, 2.5]])


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _hand_kl(student: np.ndarray, teacher: np.ndarray, tau: float) -> float:
    """tau^2 x mean over samples of sum_c p_t (log p_t - log p_s)."""
    p_s, p_t = _softmax(student / tau), _softmax(teacher / tau)
    return tau**2 * float(np.mean(np.sum(p_t * (np.log(p_t) - np.log(p_s)), axis=1)))


@pytest.mark.parametrize("tau", [1.0, 2.0, 4.0])
def test_soft_distillation_is_tau_squared_kl_per_sample(tau: float):
    expected = _hand_kl(STUDENT.numpy().astype(np.float64), TEACHER.numpy().astype(np.float64), tau)
    assert float(soft_distillation(STUDENT, TEACHER, tau)) == pytest.approx(expected, rel=1e-5)


def test_soft_distillation_is_deit_reference_times_classes():
    """DeiT's code divides the summed KL by batch x classes; vitkit averages per sample (see losses.py)."""
    tau = 3.0
    deit = (
        F.kl_div(F.log_softmax(STUDENT / tau, 1), F.log_softmax(TEACHER / tau, 1), reduction="sum", log_target=True)
        * tau
        * tau
        / STUDENT.numel()
    )
    assert float(soft_distillation(STUDENT, TEACHER, tau)) == pytest.approx(float(deit) * STUDENT.shape[1], rel=1e-6)


def test_soft_distillation_is_zero_when_student_matches_teacher():
    assert float(soft_distillation(TEACHER, TEACHER, 2.0)) == pytest.approx(0.0, abs=1e-7)


def test_hard_distillation_is_cross_entropy_to_teacher_argmax():
    s = STUDENT.numpy().astype(np.float64)
    argmax = TEACHER.argmax(1).numpy()  # [1, 2]
    expected = float(np.mean(-np.log(_softmax(s)[np.arange(2), argmax])))
    assert float(hard_distillation(STUDENT, TEACHER)) == pytest.approx(expected, rel=1e-6)


def test_soft_target_cross_entropy_with_mixup_targets():
    lam = 0.7
    targets = mixup_target(torch.tensor([0, 2]), 3, lam=lam, smoothing=0.1)  # the batch is mixed with its reverse
    off, on = 0.1 / 3, 1 - 0.1 + 0.1 / 3
    hand_t = np.array([[on, off, off], [off, off, on]])
    hand_t = lam * hand_t + (1 - lam) * hand_t[::-1]
    np.testing.assert_allclose(targets.numpy(), hand_t, rtol=1e-6)
    log_p = np.log(_softmax(STUDENT.numpy().astype(np.float64)))
    expected = float(np.mean(np.sum(-hand_t * log_p, axis=1)))
    assert float(soft_target_cross_entropy(STUDENT, targets)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(("kind", "tau"), [("soft", 2.0), ("hard", 1.0)])
def test_training_loss_weights_class_head_and_distillation_head(kind: str, tau: float):
    alpha = 0.3
    cls_logits, dist_logits = STUDENT, STUDENT.flip(1)
    targets = F.one_hot(torch.tensor([0, 1]), 3).float() * 0.8 + 0.2 / 3
    parts = training_loss((cls_logits, dist_logits), targets, TEACHER, kind, alpha, tau)
    task = soft_target_cross_entropy(cls_logits, targets)
    distill = (
        soft_distillation(dist_logits, TEACHER, tau) if kind == "soft" else hard_distillation(dist_logits, TEACHER)
    )
    assert float(parts.task) == pytest.approx(float(task))
    assert parts.distill is not None and float(parts.distill) == pytest.approx(float(distill))
    assert float(parts.total) == pytest.approx((1 - alpha) * float(task) + alpha * float(distill))


def test_plain_vit_uses_its_single_head_for_both_terms():
    targets = F.one_hot(torch.tensor([2, 0]), 3).float()
    parts = training_loss(STUDENT, targets, TEACHER, "soft", 0.5, 2.0)
    expected = 0.5 * float(soft_target_cross_entropy(STUDENT, targets)) + 0.5 * float(
        soft_distillation(STUDENT, TEACHER, 2.0)
    )
    assert float(parts.total) == pytest.approx(expected)
    assert split_heads(STUDENT) == (STUDENT, STUDENT)


def test_without_teacher_the_loss_is_cross_entropy():
    targets = F.one_hot(torch.tensor([2, 0]), 3).float()
    parts = training_loss(STUDENT, targets)
    assert parts.distill is None
    assert float(parts.total) == pytest.approx(float(F.cross_entropy(STUDENT, torch.tensor([2, 0]))))


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_distillation_head_gets_gradient_only_from_the_distillation_term(kind: str):
    model = tiny_vit(num_classes=3, name="deit_tiny_distilled_patch16_224").train()
    model.set_distilled_training(True)
    x = torch.randn(4, 3, 16, 16)
    targets = F.one_hot(torch.tensor([0, 1, 2, 0]), 3).float()
    teacher = torch.randn(4, 3)
    alpha = 0.4

    def grads(select: str) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        parts = training_loss(model(x), targets, teacher, kind, alpha, 2.0)
        term = {"total": parts.total, "task": (1 - alpha) * parts.task, "distill": alpha * parts.distill}[select]
        term.backward()
        return {n: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for n, p in model.named_parameters()}

    total, task, distill = grads("total"), grads("task"), grads("distill")
    for name in ("head_dist.weight", "head_dist.bias"):
        assert torch.count_nonzero(task[name]) == 0, "the label term must not reach the distillation head"
        torch.testing.assert_close(total[name], distill[name])
    for name in ("head.weight", "head.bias"):
        assert torch.count_nonzero(distill[name]) == 0, "the distillation term must not reach the class head"
        torch.testing.assert_close(total[name], task[name])
    assert all(math.isfinite(float(g.abs().sum())) for g in total.values())
