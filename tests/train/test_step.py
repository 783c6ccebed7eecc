"""The training step on its own: accumulation, the non-finite rule, and fp16's loss scaler (on CPU, with a real
torch.amp.GradScaler("cpu") put where accelerate keeps the one it makes on a GPU)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from torch import nn

from vitkit.train.step import Window, train_step
from vitkit.train.tasks import Batch, CachedHead


class Head(nn.Module):
    """A model that is only a head: what CachedHead trains on precomputed features."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.head = nn.Linear(6, 3)

    def get_classifier(self) -> nn.Module:
        return self.head


def accelerator(accumulation: int = 1, scaler: torch.amp.GradScaler | None = None) -> Accelerator:
    AcceleratorState._reset_state(reset_partial_state=True)
    if scaler is None:
        return Accelerator(cpu=True, gradient_accumulation_steps=accumulation)
    acc = Accelerator(cpu=True, mixed_precision="fp16", gradient_accumulation_steps=accumulation)
    acc.scaler, acc.native_amp = scaler, True  # what accelerate sets up for fp16 on a GPU
    return acc


def head_run(batch_size: int, accumulation: int, *, scaler: torch.amp.GradScaler | None = None, lr: float = 0.5):
    """A run whose task is the cached-feature head on 64 random feature vectors (the features set directly)."""
    g = torch.Generator().manual_seed(1)
    features, labels = torch.randn(64, 6, generator=g), torch.randint(0, 3, (64,), generator=g)
    acc = accelerator(accumulation, scaler)
    head = Head()
    model, optimizer = acc.prepare(head, torch.optim.SGD(head.parameters(), lr=lr))  # SGD: update ∝ gradient
    steps = 64 // batch_size
    task = CachedHead(model, None, None, None, batch_size, steps, num_classes=3, smoothing=0.0, seed=2)  # type: ignore[arg-type]
    task.__dict__["features"] = {"train": features, "train_labels": labels}
    return SimpleNamespace(
        accelerator=acc, model=model, optimizer=optimizer, task=task, clip=float("inf"), window=Window(), dynamics=None
    )


def epoch(run) -> list:
    return [train_step(run, batch) for batch in run.task.batches(0, 0)]


def test_accumulating_two_half_batches_is_one_full_batch():
    full = head_run(16, 1)  # each run trains before the next is made: accelerate keeps one gradient state
    full_outcomes = epoch(full)
    half = head_run(8, 2)
    half_outcomes = epoch(half)
    plain = head_run(8, 1)
    epoch(plain)
    assert sum(o.updated for o in full_outcomes) == sum(o.updated for o in half_outcomes) == 4
    assert [o.updated for o in half_outcomes] == [False, True] * 4
    torch.testing.assert_close(half.model.head.weight, full.model.head.weight, atol=1e-6, rtol=1e-6)
    # SGD: without the division by the accumulation steps the update would be twice as large
    assert not torch.allclose(plain.model.head.weight, full.model.head.weight, atol=1e-3)


def test_the_window_reports_the_mean_of_its_losses_and_each_step_its_own():
    run = head_run(8, 2)
    first, second = epoch(run)[:2]
    assert not first.updated and second.updated
    assert float(second.window.loss_sum) == pytest.approx(float(first.loss) + float(second.loss), rel=1e-6)
    assert second.window.steps == 2


def test_a_nan_loss_is_not_applied_and_is_reported_not_finite():
    run = head_run(16, 1)
    before = run.model.head.weight.detach().clone()
    bad = Batch(torch.full((16, 6), float("nan")), torch.full((16, 3), 1 / 3), 16)
    outcome = train_step(run, bad)
    assert outcome.updated and not outcome.finite and not outcome.scaler_skipped
    torch.testing.assert_close(run.model.head.weight, before, rtol=0, atol=0)
    assert all(p.grad is None for p in run.model.parameters())  # nothing left to leak into the next update


def test_an_fp16_scaler_overflow_is_a_skipped_update_not_a_nonfinite_one():
    # a scale so large that the scaled gradients overflow: the scaler's routine signal to skip and back off
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127, backoff_factor=2.0**-100)
    run = head_run(16, 1, scaler=scaler)
    before = run.model.head.weight.detach().clone()
    batches = list(run.task.batches(0, 0))
    large = Batch(batches[0].inputs * 1e4, batches[0].targets, 16)  # a finite loss whose scaled gradients overflow
    overflow = train_step(run, large)
    assert math.isfinite(float(overflow.loss))
    assert overflow.updated and overflow.finite and overflow.scaler_skipped
    assert not math.isfinite(overflow.grad_norm)  # what the old rule counted as a non-finite event
    torch.testing.assert_close(run.model.head.weight, before, rtol=0, atol=0)
    assert scaler.get_scale() == 2.0**27
    applied = train_step(run, batches[1])  # the cached head under fp16 steps through the scaler (no "_scale is None")
    assert applied.updated and applied.finite and not applied.scaler_skipped
    assert not torch.equal(run.model.head.weight, before)


def test_the_fp16_head_update_equals_the_fp32_one_once_the_scale_fits():
    scaled = head_run(16, 1, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**10))
    epoch(scaled)
    plain = head_run(16, 1)
    epoch(plain)
    torch.testing.assert_close(scaled.model.head.weight, plain.model.head.weight, atol=1e-6, rtol=1e-5)
