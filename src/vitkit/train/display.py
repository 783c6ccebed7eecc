"""Progress display: a rich progress bar on a terminal, plain log lines otherwise (CI, files, pipes)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


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
