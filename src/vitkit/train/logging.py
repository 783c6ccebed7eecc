"""Run logging: metrics.jsonl, timing.jsonl (one JSON object per line) and TensorBoard events, side by side.

metrics.jsonl holds what training computed (losses, lr, grad norms, validation metrics, non-finite events), so
two deterministic runs, or a run and its resumed copy, write the same file; timing.jsonl holds the throughput
and data-wait figures, which vary from run to run.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vitkit.files import write_atomically
from vitkit.run_folder import read_jsonl_records


class MetricsLogger:
    """Appends records to `metrics.jsonl` / `timing.jsonl` and mirrors numeric values to TensorBoard.

    `resume_step`: the step of the checkpoint a resumed run starts from; records written after it by the
    interrupted run are dropped, so the files read as if the run had never stopped.
    """

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool = True,
        resume_step: int | None = None,
        sink: Callable[[dict[str, float], int], None] | None = None,
    ) -> None:
        self.path, self.timing_path = run_dir / "metrics.jsonl", run_dir / "timing.jsonl"
        if resume_step is not None:
            for path in (self.path, self.timing_path):
                truncate_after(path, resume_step)
        self._file = self.path.open("a")
        self._timing = self.timing_path.open("a")
        self._tb: Any = None
        self._sink = sink  # more trackers (accelerator.log): the same numeric values as TensorBoard
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            purge = resume_step + 1 if resume_step is not None else None  # TensorBoard drops the later events
            self._tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge)

    def log(self, kind: str, step: int, **values: Any) -> None:
        self._write(self._file, kind, step, values)

    def log_extra(self, step: int, values: dict[str, float]) -> None:
        """Values for TensorBoard and the other trackers only (too many, or too varied, for metrics.jsonl)."""
        if self._tb is not None:
            for name, value in values.items():
                self._tb.add_scalar(name, value, step)
        if self._sink is not None and values:
            self._sink(values, step)

    def log_timing(self, step: int, **values: Any) -> None:
        self._write(self._timing, "timing", step, values)

    def _write(self, file: Any, kind: str, step: int, values: dict[str, Any]) -> None:
        record = {"kind": kind, "step": step, **values}
        file.write(json.dumps(record, default=_jsonable) + "\n")
        file.flush()
        numbers = {
            f"{kind}/{name}": value
            for name, value in values.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        }
        if self._tb is not None:
            for name, value in numbers.items():
                self._tb.add_scalar(name, value, step)
        if self._sink is not None and numbers:
            self._sink(numbers, step)

    def close(self) -> None:
        self._file.close()
        self._timing.close()
        if self._tb is not None:
            self._tb.close()


def _jsonable(value: Any) -> Any:
    return float(value) if hasattr(value, "__float__") else str(value)


def truncate_after(path: Path, step: int) -> None:
    """Drop the records of `path` logged after `step` (and a last line cut short by a crash)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= step:
            kept.append(line + "\n")
    write_atomically(path, "".join(kept))  # a failed rewrite keeps the whole history


def read_metrics(path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl file, optionally only one kind ('step', 'epoch', ...)."""
    return [r for r in read_jsonl_records(path) if kind is None or r.get("kind") == kind]


class NoLogger(MetricsLogger):
    """The logger of a process that does not write the run folder (every process but the first of a run)."""

    def __init__(self) -> None:  # opens nothing
        pass

    def log(self, kind: str, step: int, **values: Any) -> None:
        pass

    def log_extra(self, step: int, values: dict[str, float]) -> None:
        pass

    def log_timing(self, step: int, **values: Any) -> None:
        pass

    def close(self) -> None:
        pass
