"""The run's checkpoints: `last` (rotated, `train.keep_last`) after every epoch and on a stop request, and `best`
by the recipe's `train.best_metric`, with a meta.json that says which weights won and why."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from timm.utils import ModelEmaV3
from torch import nn

from vitkit.train.checkpoint import Progress, progress_to_dict, rng_state, save_checkpoint
from vitkit.train.ranks import Ranks


def best_of(record: dict[str, Any], metric: str) -> tuple[float, str]:
    """The better of the raw and the EMA model's value of `metric` in an epoch record, and which one it is."""
    raw, ema = record[metric], record.get(f"ema_{metric}")
    if ema is None:
        return raw, "raw"
    ema_better = ema < raw if metric == "val_loss" else ema > raw
    return (ema, "ema") if ema_better else (raw, "raw")


def improves(score: float, record: dict[str, Any], progress: Progress, metric: str) -> bool:
    """Whether `score` beats the best so far (none yet: it does); val_loss is minimised, accuracies maximised.

    An accuracy tie (e.g. 100% top-1 on a small validation set, reached early) goes to the lower validation loss,
    so a later, better-trained model is not passed over for the first epoch that reached the same accuracy.
    """
    if progress.best_epoch < 0:
        return True
    if metric == "val_loss":
        return score < progress.best_metric
    if score == progress.best_metric:
        return record.get("val_loss", math.inf) < progress.best_val_loss
    return score > progress.best_metric


def best_reason(history: list[dict[str, Any]], best: dict[str, Any], metric: str) -> str:
    """Why `best` (an epoch record of `history`) is the best checkpoint, in a sentence a person can check."""
    value, source = best_of(best, metric)
    scores = [best_of(r, metric)[0] for r in history if metric in r]
    shown = f"{value:.4f}" if metric == "val_loss" else f"{value:.3f}" if metric == "val_auroc" else f"{value:.2%}"
    which = "lowest" if metric == "val_loss" else "highest"
    text = (
        f"epoch {best['epoch']} ({'EMA' if source == 'ema' else 'raw'} weights) has the {which} {metric} ({shown}) of "
        f"the {len(scores)} evaluated epochs so far"
    )
    ties = sum(score == value for score in scores)
    if ties > 1:
        text += f"; {ties} epochs tie on it, and this one has the lowest validation loss"
    return text


class Checkpointer:
    """Writes the run's checkpoint folders (atomic, checksummed: train.checkpoint.save_checkpoint)."""

    def __init__(
        self,
        run_dir: Path,
        *,
        ranks: Ranks | None = None,
        model: nn.Module,
        ema: ModelEmaV3 | None,
        optimizer: Any,
        scheduler: Any,
        scaler: Any,
        model_name: str,
        run_meta: dict[str, Any],
        keep_last: int,
        best_metric: str,
    ) -> None:
        self.folder, self.ranks = run_dir / "checkpoints", ranks or Ranks()
        self.model, self.ema, self.optimizer, self.scheduler, self.scaler = model, ema, optimizer, scheduler, scaler
        self.model_name, self.run_meta = model_name, run_meta  # run_meta: in every checkpoint's meta.json
        self.keep_last, self.best_metric = keep_last, best_metric

    def save_last(self, progress: Progress, meta: dict[str, Any] | None = None) -> None:
        self._save("last", progress, meta or {"best_source": "raw"}, self.keep_last)

    def save_best_if_improved(self, progress: Progress, record: dict[str, Any]) -> dict[str, Any]:
        """Save `best` when the epoch `record` beats the best so far (updating `progress`'s best); returns the meta
        of the epoch's checkpoints: which weights (raw or EMA) score better, and why a new best is best."""
        meta: dict[str, Any] = {"best_source": "raw"}
        if self.best_metric not in record:  # not an evaluated epoch
            return meta
        score, meta["best_source"] = best_of(record, self.best_metric)
        if improves(score, record, progress, self.best_metric):
            meta["why"] = best_reason([*progress.history, record], record, self.best_metric)
            self.save_best(progress, record, meta)
        return meta

    def save_best(self, progress: Progress, record: dict[str, Any], meta: dict[str, Any]) -> None:
        """The model as it stands is `best`, scored by the evaluated epoch `record`."""
        progress.best_metric, progress.best_epoch = best_of(record, self.best_metric)[0], record["epoch"]
        progress.best_val_loss = record.get("val_loss", math.nan)
        self._save("best", progress, meta, keep=1)

    def _save(self, name: str, progress: Progress, meta: dict[str, Any], keep: int) -> None:
        """Every process calls this; the first writes the checkpoint, with each process's RNG state, and the
        others wait until it is on disk (a launcher that sees one process exit stops the others)."""
        rngs = self.ranks.gather(rng_state())
        self.ranks.on_main(lambda: self._write(name, progress, meta, keep, rngs))  # returns when it is written

    def _write(self, name: str, progress: Progress, meta: dict[str, Any], keep: int, rngs: list[Any]) -> None:
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "progress": progress_to_dict(progress),
            "rng": rngs[0],
        }
        if len(rngs) > 1:
            state["rng_by_process"] = rngs
        if self.scaler is not None:  # fp16's loss scale
            state["scaler"] = self.scaler.state_dict()
        meta = {
            "model": self.model_name,
            "epoch": progress.epoch + (1 if progress.step_in_epoch else 0),  # the epoch these weights come from
            "step_in_epoch": progress.step_in_epoch,
            "updates": progress.updates,
            **self.run_meta,
            **meta,
        }
        ema = self.ema.module if self.ema is not None else None
        save_checkpoint(self.folder / name, self.model, ema, state, meta, keep)
