"""summary.json: what a finished run reports (epochs, updates, best checkpoint and why, final metrics, speed)."""

from __future__ import annotations

from typing import Any

from vitkit.train.checkpointer import best_reason
from vitkit.train.setup import Run


def run_summary(run: Run, wall_seconds: float, images: int) -> dict[str, Any]:
    p, f, cfg = run.progress, run.facts, run.cfg
    last = p.history[-1] if p.history else {}
    best = next((r for r in p.history if r["epoch"] == p.best_epoch), None)
    metric = cfg.train.best_metric
    summary: dict[str, Any] = {
        "epochs": p.epoch,
        "updates": p.updates,
        "best_val_top1": max(
            (max(r.get("val_top1", -1.0), r.get("ema_val_top1", -1.0)) for r in p.history), default=-1.0
        ),
        "best": {
            "metric": metric,
            "value": p.best_metric,
            "epoch": p.best_epoch,
            "why": best_reason(p.history, best, metric) if best else "no epoch was evaluated",
        },
        "best_epoch": p.best_epoch,
        "final": last,
        "wall_seconds": wall_seconds,
        "train_images_per_second": images / max(wall_seconds, 1e-9),
        "task": cfg.train.task,
        "num_classes": f.data.num_classes,
        "classes": f.data.classes,
        "precision": f.precision,
        "attention": f.attention,
        "parameters": f.parameters,
        "trainable_parameters": f.trainable_parameters,
        "strategy": cfg.finetune.strategy,
        "pretrained": cfg.finetune.pretrained,
        "nonfinite": {
            "policy": cfg.train.nonfinite,
            "skipped_updates": p.nonfinite_skipped,
            "rollbacks": p.rollbacks,
            "lr_factor": p.lr_factor,
        },
    }
    if p.scaler_skipped:
        summary["fp16_loss_scaler_skipped_updates"] = p.scaler_skipped
    if f.bad_images:
        summary["bad_images"] = {
            "skipped": len(f.bad_images),
            "train": sum(b.split == "train" for b in f.bad_images),
            "val": sum(b.split == "val" for b in f.bad_images),
            "list": "bad_images.jsonl",
        }
    if f.teacher is not None:
        summary["distill"] = {"type": cfg.distill.type, "teacher": f.teacher, "alpha": cfg.distill.alpha}
    if run.ema is not None:  # with warmup the decay ramps up: what the last update used, next to the configured one
        e = cfg.ema
        summary["ema"] = {"decay": e.decay, "warmup": e.warmup, "reached": run.ema.get_decay(p.updates)}
    return summary
