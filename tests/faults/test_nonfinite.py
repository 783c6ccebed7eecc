"""Non-finite losses and gradients, injected at chosen steps: skip drops the update, rollback returns to the start
of the epoch with a lower lr, stop ends the run with the last checkpoint intact; every event is logged."""

from pathlib import Path

import pytest
import torch
from rich.console import Console

import vitkit.train.loop as loop
import vitkit.train.tasks as tasks
from tests.conftest import PLAIN, tiny_recipe
from vitkit.train.faults import DIVERGED_EXIT_CODE, TrainingDiverged, nonfinite_action
from vitkit.train.logging import read_metrics
from vitkit.train.loop import train
from vitkit.train.losses import LossParts, training_loss

QUIET = Console(quiet=True)
# 96 images / batch 16: 6 steps (= updates) per epoch, 12 in all; steps are counted from 1
BASE = (*PLAIN, "ema.enabled=false", "train.log_every=1", "train.deterministic=true")


class _InfGradient(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss whose gradients blow up."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad * float("inf")


def inject(monkeypatch, steps: set[int], kind: str = "loss") -> None:
    """Make the loss of the given training steps (1-based calls of training_loss) NaN, or its gradient inf."""
    calls = {"n": 0}

    def faulty(*args, **kwargs) -> LossParts:
        parts = training_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] not in steps:
            return parts
        total = parts.total * float("nan") if kind == "loss" else _InfGradient.apply(parts.total)
        return LossParts(total, parts.task, parts.distill)

    monkeypatch.setattr(tasks, "training_loss", faulty)


def _optimizer_steps(run: Path) -> int:
    state = torch.load(run / "checkpoints" / "last" / "state.pt", weights_only=True)["optimizer"]["state"]
    return int(next(iter(state.values()))["step"])


def _all_finite(run: Path) -> bool:
    from safetensors.torch import load_file

    return all(torch.isfinite(v).all() for v in load_file(run / "checkpoints" / "last" / "model.safetensors").values())


@pytest.mark.parametrize(
    ("policy", "in_a_row", "rollbacks", "expected"),
    [
        ("skip", 1, 0, "skip"),
        ("skip", 3, 0, "stop"),
        ("rollback", 1, 0, "rollback"),
        ("rollback", 1, 3, "stop"),
        ("stop", 1, 0, "stop"),
    ],
)
def test_nonfinite_action(policy: str, in_a_row: int, rollbacks: int, expected: str):
    assert nonfinite_action(policy, in_a_row, rollbacks, limit=3) == expected


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_skip_drops_exactly_the_bad_update_and_logs_it(tmp_path: Path, monkeypatch, kind: str):
    inject(monkeypatch, {3, 9}, kind)
    result = train(tiny_recipe(*BASE), tmp_path / "run", console=QUIET)
    assert result.summary["nonfinite"] == {"policy": "skip", "skipped_updates": 2, "rollbacks": 0, "lr_factor": 1.0}
    assert result.summary["updates"] == 10 and _optimizer_steps(tmp_path / "run") == 10
    events = read_metrics(tmp_path / "run" / "metrics.jsonl", "nonfinite")
    assert [(e["step"], e["action"]) for e in events] == [(3, "skip"), (9, "skip")]
    if kind == "gradient":
        assert all(torch.isfinite(torch.tensor(e["loss"])) for e in events)  # the loss itself was fine
    assert _all_finite(tmp_path / "run")
    epochs = read_metrics(tmp_path / "run" / "metrics.jsonl", "epoch")
    assert all(torch.isfinite(torch.tensor(e["train_loss"])) for e in epochs)  # bad steps are left out


def test_rollback_returns_to_the_epoch_start_with_a_lower_lr(tmp_path: Path, monkeypatch):
    reference = train(tiny_recipe(*BASE), tmp_path / "reference", console=QUIET)
    inject(monkeypatch, {9})  # the third step of epoch 1
    result = train(tiny_recipe(*BASE, "train.nonfinite=rollback"), tmp_path / "run", console=QUIET)
    assert result.summary["nonfinite"]["rollbacks"] == 1 and result.summary["nonfinite"]["lr_factor"] == 0.5
    assert result.summary["updates"] == reference.summary["updates"] == 12
    steps = [s["step"] for s in read_metrics(tmp_path / "run" / "metrics.jsonl", "step")]
    assert steps == [*range(1, 9), *range(7, 13)]  # 7-8 logged, 9 failed, then epoch 1 again from its start
    events = read_metrics(tmp_path / "run" / "metrics.jsonl", "nonfinite")
    assert [(e["step"], e["action"]) for e in events] == [(9, "rollback")]
    ours = {s["step"]: s["lr"] for s in read_metrics(tmp_path / "run" / "metrics.jsonl", "step")}
    theirs = {s["step"]: s["lr"] for s in read_metrics(tmp_path / "reference" / "metrics.jsonl", "step")}
    for step in (10, 11, 12):  # after the rollback: the schedule's lr, halved
        assert ours[step] == pytest.approx(theirs[step] * 0.5, rel=1e-12)
    assert _all_finite(tmp_path / "run")


def test_stop_ends_the_run_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch):
    inject(monkeypatch, {9})
    with pytest.raises(TrainingDiverged, match=r"step 9.*intact.*--resume") as error:
        train(tiny_recipe(*BASE, "train.nonfinite=stop"), tmp_path / "run", console=QUIET)
    assert error.value.exit_code == DIVERGED_EXIT_CODE
    assert _optimizer_steps(tmp_path / "run") == 6  # the epoch-0 checkpoint, untouched
    assert _all_finite(tmp_path / "run")
    assert [e["action"] for e in read_metrics(tmp_path / "run" / "metrics.jsonl", "nonfinite")] == ["stop"]


def test_skip_gives_up_after_the_limit_of_bad_updates_in_a_row(tmp_path: Path, monkeypatch):
    inject(monkeypatch, set(range(2, 20)))
    with pytest.raises(TrainingDiverged, match=r"3 non-finite updates in a row"):
        train(tiny_recipe(*BASE, "train.nonfinite_limit=3"), tmp_path / "run", console=QUIET)
    actions = [e["action"] for e in read_metrics(tmp_path / "run" / "metrics.jsonl", "nonfinite")]
    assert actions == ["skip", "skip", "stop"]


def test_an_fp16_loss_scaler_overflow_is_not_a_nonfinite_event(tmp_path: Path, monkeypatch):
    """fp16's scaler skipping an update for overflowing gradients is routine: with nonfinite=stop the run goes on.

    On CPU accelerate makes no scaler, so a real torch.amp.GradScaler("cpu") is put where it keeps the one it makes
    on a GPU; step 3's loss is made large (finite) so that its scaled gradients overflow, then the scale backs off.
    """
    make_accelerator = loop.make_accelerator

    def with_scaler(cfg, run_dir):
        accelerator, precision = make_accelerator(cfg, run_dir)
        accelerator.scaler = torch.amp.GradScaler("cpu")  # init_scale 2**16
        return accelerator, precision

    calls = {"n": 0}

    def large_at_step_3(*args, **kwargs) -> LossParts:
        parts = training_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] != 3:
            return parts
        return LossParts(parts.total * 1e35, parts.task, parts.distill)

    monkeypatch.setattr(loop, "make_accelerator", with_scaler)
    monkeypatch.setattr(tasks, "training_loss", large_at_step_3)
    result = train(tiny_recipe(*BASE, "train.nonfinite=stop"), tmp_path / "run", console=QUIET, evaluate=False)
    assert result.summary["fp16_loss_scaler_skipped_updates"] == 1
    assert result.summary["updates"] == 11 and _optimizer_steps(tmp_path / "run") == 11
    assert result.summary["nonfinite"]["skipped_updates"] == 0
    assert read_metrics(tmp_path / "run" / "metrics.jsonl", "nonfinite") == []
    assert _all_finite(tmp_path / "run")
