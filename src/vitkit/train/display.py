"""Progress display: a rich progress bar on a terminal, plain log lines otherwise (CI, files, pipes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from vitkit.models.build import num_tokens
from vitkit.models.finetune import GroupRow

if TYPE_CHECKING:
    from vitkit.models.pretrained import PretrainedWeights
    from vitkit.train.setup import Run


class TrainDisplay:
    def __init__(self, total_steps: int, console: Console | None = None, log_every: int = 20) -> None:
        self.console = console or Console()
        self.interactive = self.console.is_terminal
        self.total, self.log_every = total_steps, log_every
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> TrainDisplay:
        if self.interactive:
            self._bar = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]:.4f}  lr {task.fields[lr]:.2e}  {task.fields[ips]:.0f} img/s"),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task("train", total=self.total, epoch=0, loss=0.0, lr=0.0, ips=0.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)

    def advance(self, step: int) -> None:
        """Move the bar every step; the figures are refreshed by `step` at logging steps."""
        if self._bar is not None:
            self._bar.update(self._task, completed=step)

    def step(self, step: int, epoch: int, loss: float, lr: float, images_per_s: float) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=step, epoch=epoch, loss=loss, lr=lr, ips=images_per_s)
        elif step % self.log_every == 0 or step == self.total:
            self.console.print(
                f"epoch {epoch} step {step}/{self.total} loss {loss:.4f} lr {lr:.2e} {images_per_s:.0f} img/s",
                highlight=False,
            )

    def message(self, text: str) -> None:
        self.console.print(text, highlight=False)


def print_run_header(
    run: Run, groups: list[GroupRow], workers: int, peak_lr: float, weights: PretrainedWeights | None, console: Console
) -> None:
    """What was built: model, data, device, precision, attention, batch, lr, steps; notes, teacher, groups."""
    cfg, f, s = run.cfg, run.facts, run.settings
    t = cfg.train
    console.print(
        f"[bold]vitkit train[/bold] {cfg.model.name} ({f.parameters / 1e6:.2f}M params, {num_tokens(run.raw_model)} "
        f"tokens) on {f.data.description}\n  device {run.accelerator.device}, precision {f.precision}, attention "
        f"{f.attention}, batch {_batch_text(t.batch_size, run.ranks.world, t.accumulation_steps)}, peak lr "
        f"{peak_lr:.2e}, workers "
        f"{workers}, {s.steps_per_epoch} steps/epoch, {s.epochs} epochs"
        + (", deterministic" if t.deterministic else ""),
        highlight=False,
    )
    if t.task in ("multilabel", "binary"):
        console.print(f"  task {t.task}: {_label_text(f.data)}; imbalance {t.imbalance}", highlight=False)
    for note in f.notes:
        console.print(f"  note: {note}", highlight=False)
    if weights is not None:
        console.print(f"  pretrained: {weights.source}, strategy {cfg.finetune.strategy}", highlight=False)
    if f.teacher is not None:
        d = cfg.distill
        heads = "distillation token" if hasattr(run.raw_model, "head_dist") else "the single head (logit distillation)"
        console.print(
            f"  teacher: {f.teacher}; {d.type} distillation on {heads}, alpha {d.alpha}, tau {d.tau}", highlight=False
        )
    console.print(groups_table(groups))


def _label_text(data: Any) -> str:
    """'Cardiomegaly 22.1%, Mass 3.0%, ...': each label's (or class's) share of the training images."""
    import numpy as np

    labels = data.train.labels
    shares = np.nanmean(labels, axis=0) if labels.ndim == 2 else np.bincount(labels) / max(len(labels), 1)
    return ", ".join(f"{name} {share:.1%}" for name, share in zip(data.classes, shares, strict=False))


def _batch_text(batch: int, processes: int, accumulation: int) -> str:
    """'64 x 2 accumulation', or with several processes '32 x 4 processes x 2 accumulation = 256 per update'."""
    if processes == 1:
        return f"{batch} x {accumulation} accumulation"
    return (
        f"{batch} x {processes} processes x {accumulation} accumulation = {batch * processes * accumulation} per update"
    )


def groups_table(rows: list[GroupRow]) -> Table:
    table = Table(title="parameters by optimizer group", title_justify="left")
    for column in ("group", "parameters", "share", "peak lr", "weight decay"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for r in rows:
        lr = f"{r.lr:.2e}" if r.group != "frozen" else "-"
        table.add_row(r.group, f"{r.params:,}", f"{r.share:.2%}", lr, f"{r.weight_decay:g}")
    return table


def epoch_line(record: dict[str, Any]) -> str:
    parts = [f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}"]
    if "val_top1" in record:
        parts.append(f"val top-1 {record['val_top1']:.2%}")
    if "ema_val_top1" in record:
        parts.append(f"EMA val top-1 {record['ema_val_top1']:.2%}")
    if "val_auroc" in record:
        parts.append(f"val AUROC {record['val_auroc']:.3f}")
    if "ema_val_auroc" in record:
        parts.append(f"EMA val AUROC {record['ema_val_auroc']:.3f}")
    return ", ".join(parts)
