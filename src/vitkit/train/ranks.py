"""The processes of one run (`accelerate launch` / `torchrun`): which one writes, and the decisions they share.

With one process every method is a plain local answer and no collective is made. With several, every process
calls the same methods at the same points of the loop (the loop is the same code on each), so each collective
is matched. Decisions that must not differ between processes go through here: whether an update was finite,
whether a stop was asked for, whether setup succeeded everywhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from vitkit.errors import RankFailed, VitkitError

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    accelerator: Accelerator | None = None  # None: a single process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator is not None else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator is not None else 0

    @property
    def device(self) -> torch.device:
        return self.accelerator.device if self.accelerator is not None else torch.device("cpu")

    @property
    def main(self) -> bool:
        """This process writes the run folder (checkpoints, logs, report); the others only compute."""
        return self.rank == 0

    def any(self, flag: bool | torch.Tensor) -> bool:
        """True on every process when `flag` is true on at least one (one all-reduce)."""
        if self.world == 1:
            return bool(flag)
        value = torch.as_tensor(flag, dtype=torch.float32, device=self.device).reshape(1).clone()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def all(self, flag: bool | torch.Tensor) -> bool:
        """True on every process when `flag` is true on all of them."""
        return not self.any(torch.logical_not(torch.as_tensor(flag)))

    def mean(self, value: torch.Tensor | float) -> float:
        """The mean of `value` over the processes (one all-reduce)."""
        if self.world == 1:
            return float(value)
        total = torch.as_tensor(value, dtype=torch.float64, device=self.device).reshape(1).clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        return float(total.item()) / self.world

    def gather(self, obj: T) -> list[T]:
        """`obj` of every process, in rank order, on every process."""
        if self.world == 1:
            return [obj]
        return list(gather_object([obj]))

    def barrier(self) -> None:
        if self.accelerator is not None and self.world > 1:
            self.accelerator.wait_for_everyone()

    def shard(self, size: int) -> range:
        """This process's contiguous share of `size` items: shares differ by at most one and, read in rank order,
        are the items in their order, each once (no padding, unlike DistributedSampler)."""
        base, extra = divmod(size, self.world)
        start = self.rank * base + min(self.rank, extra)
        return range(start, start + base + (1 if self.rank < extra else 0))

    def on_main(self, work: Callable[[], T]) -> T | None:
        """Run `work` on the main process only; its result there, None elsewhere. When it fails, every process
        raises: the main one its own error, the others a RankFailed with the same message and exit code."""
        if self.world == 1:
            return work()
        failure: list[Any] = [None]
        result: T | None = None
        error: BaseException | None = None
        if self.main:
            try:
                result = work()
            except BaseException as exc:  # every process must hear of it, or the others wait forever
                error, failure[0] = exc, _describe(exc)
        broadcast_object_list(failure, from_process=0)
        if error is not None:
            raise error
        if failure[0] is not None:
            raise _rank_failed(0, failure[0])
        return result

    def everywhere(self, work: Callable[[], T]) -> T:
        """Run `work` on every process; when it fails on any, every process raises (the failing one its own
        error, the others the first failure's message), so none is left waiting in a later collective."""
        result: T | None = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as exc:
            error = exc
        if self.world == 1:
            if error is not None:
                raise error
            return result  # type: ignore[return-value]
        failures = self.gather(_describe(error) if error is not None else None)
        if error is not None:
            raise error
        for rank, failure in enumerate(failures):
            if failure is not None:
                raise _rank_failed(rank, failure)
        return result  # type: ignore[return-value]


def _describe(exc: BaseException) -> tuple[str, int]:
    exit_code = exc.exit_code if isinstance(exc, VitkitError) else 1
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, VitkitError) else str(exc), exit_code


def _rank_failed(rank: int, failure: tuple[str, int]) -> RankFailed:
    error = RankFailed(f"process {rank} of the run failed: {failure[0]}")
    error.exit_code = failure[1]
    return error


def leave_process_group(timeout_s: float = 30.0) -> None:
    """Close a multi-process run's process group together: every process waits for the others (bounded) before
    closing, so none closes its connections while another still uses them, which gloo answers with an abort
    (exit -6) instead of the exit code the run decided on."""
    import datetime

    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s))
        else:
            dist.barrier()
    except RuntimeError:
        pass  # another process is gone already: close this one anyway
    dist.destroy_process_group()
