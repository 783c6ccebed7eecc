"""The non-finite guard and the checkpointer on their own, beside the whole-run fault tests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from timm.utils import ModelEmaV3
from torch import nn

from vitkit.train.checkpoint import Progress, load_training_state
from vitkit.train.checkpointer import Checkpointer
from vitkit.train.guard import NonFiniteGuard


class Schedule:
    """A stand-in for timm's scheduler: a state dict and step_update."""

    def __init__(self) -> None:
        self.updates = 0

    def state_dict(self) -> dict:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.updates = state["updates"]


def pieces():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return model, ModelEmaV3(model, decay=0.5), optimizer, Schedule()


def adam_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.ones(3, 4)).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


def test_rollback_restores_weights_ema_optimizer_and_schedule_and_lowers_the_lr():
    model, ema, optimizer, schedule = pieces()
    adam_step(model, optimizer)
    progress, schedule.updates = Progress(epoch=1, updates=1, global_step=1), 1
    guard = NonFiniteGuard("rollback", limit=3, rollback_lr_factor=0.5)
    guard.mark(model, ema, optimizer, schedule, progress)
    marked = {k: v.clone() for k, v in model.state_dict().items()}
    marked_ema = {k: v.clone() for k, v in ema.module.state_dict().items()}
    for _ in range(2):
        adam_step(model, optimizer)
        ema.update(model)
    schedule.updates, progress.updates, progress.global_step = 3, 3, 3
    progress.nonfinite_skipped = 1
    assert guard.judge(progress) == "rollback"
    restored = guard.rollback(model, ema, optimizer, schedule, progress)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, marked[name], rtol=0, atol=0)
    for name, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, marked_ema[name], rtol=0, atol=0)
    assert next(iter(optimizer.state_dict()["state"].values()))["step"] == 1  # Adam's step count as marked
    assert schedule.updates == 1
    assert (restored.updates, restored.global_step, restored.epoch) == (1, 1, 1)
    # the counters of what went wrong carry on; the lr factor halves at each rollback
    assert (restored.rollbacks, restored.nonfinite_skipped, restored.lr_factor) == (1, 1, 0.5)
    assert restored.nonfinite_in_a_row == 0


@pytest.mark.parametrize(
    ("policy", "expected"),
    [("skip", ["skip", "skip", "stop"]), ("stop", ["stop"]), ("rollback", ["rollback"])],
)
def test_the_guard_applies_the_policy_up_to_the_limit(policy: str, expected: list[str]):
    model, ema, optimizer, schedule = pieces()
    guard = NonFiniteGuard(policy, limit=3, rollback_lr_factor=0.5)
    progress = Progress()
    guard.mark(model, ema, optimizer, schedule, progress)
    actions = []
    for _ in expected:
        actions.append(guard.judge(progress))
    assert actions == expected
    assert progress.nonfinite_skipped == expected.count("skip")


def test_a_good_update_resets_the_run_of_bad_ones():
    guard, progress = NonFiniteGuard("skip", limit=2, rollback_lr_factor=0.5), Progress()
    assert guard.judge(progress) == "skip"
    guard.good_update(progress)
    assert guard.judge(progress) == "skip"  # not the second in a row, so not yet the limit
    assert guard.judge(progress) == "stop"


def checkpointer(tmp_path: Path, metric: str = "val_top1", keep: int = 2):
    model, ema, optimizer, schedule = pieces()
    return Checkpointer(
        tmp_path,
        model=model,
        ema=ema,
        optimizer=optimizer,
        scheduler=schedule,
        scaler=None,
        model_name="tiny",
        run_meta={"num_classes": 2, "strategy": "full"},
        keep_last=keep,
        best_metric=metric,
    )


def record(epoch: int, top1: float, loss: float, ema_top1: float | None = None) -> dict:
    r = {"epoch": epoch, "train_loss": 1.0, "val_top1": top1, "val_loss": loss}
    return r if ema_top1 is None else r | {"ema_val_top1": ema_top1}


def test_best_is_written_only_when_the_metric_improves_and_says_why(tmp_path: Path):
    saver, progress = checkpointer(tmp_path), Progress()
    for epoch, (top1, loss) in enumerate([(0.5, 1.0), (0.4, 0.9), (0.5, 0.8)], start=1):
        r = record(epoch, top1, loss)
        meta = saver.save_best_if_improved(progress, r)
        progress.history.append(r)
        if epoch == 2:
            assert "why" not in meta  # 40% < 50%: no new best
    best = json.loads((tmp_path / "checkpoints" / "best" / "meta.json").read_text())
    assert progress.best_epoch == 3  # the tie at 50% goes to the lower validation loss
    assert "tie" in best["why"] and best["num_classes"] == 2 and best["best_source"] == "raw"
    assert load_training_state(tmp_path / "checkpoints" / "best")["progress"]["best_epoch"] == 3


def test_the_better_of_raw_and_ema_weights_is_named(tmp_path: Path):
    saver, progress = checkpointer(tmp_path), Progress()
    meta = saver.save_best_if_improved(progress, record(1, 0.5, 1.0, ema_top1=0.75))
    assert meta["best_source"] == "ema" and progress.best_metric == 0.75


def test_an_epoch_without_validation_writes_no_best(tmp_path: Path):
    saver, progress = checkpointer(tmp_path), Progress()
    assert saver.save_best_if_improved(progress, {"epoch": 1, "train_loss": 1.0}) == {"best_source": "raw"}
    assert not (tmp_path / "checkpoints" / "best").exists() and progress.best_epoch == -1


def test_last_is_rotated_keeping_train_keep_last(tmp_path: Path):
    saver = checkpointer(tmp_path, keep=2)
    for updates in (1, 2, 3):
        saver.save_last(Progress(updates=updates))
    folders = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert folders == ["last", "last.1"]
    updates = [json.loads((tmp_path / "checkpoints" / f / "meta.json").read_text())["updates"] for f in folders]
    assert updates == [3, 2]
