"""What training does when something goes wrong mid-run: non-finite updates, preemption signals.

Pure decisions live here so they can be tested on their own; the loop only acts on them.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console

from vitkit.errors import VitkitError

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: "try again later", what job schedulers expect from a preempted job
DIVERGED_EXIT_CODE = 3


class TrainingPreempted(VitkitError):
    """A stop was requested (SIGTERM, SIGINT, or a stop callback); a checkpoint was saved at a step boundary."""

    exit_code = PREEMPTED_EXIT_CODE


class TrainingDiverged(VitkitError):
    """Non-finite losses or gradients and a policy (or limit) that says stop; the last checkpoint is untouched."""

    exit_code = DIVERGED_EXIT_CODE


def nonfinite_action(policy: str, in_a_row: int, rollbacks: int, limit: int) -> str:
    """What to do about the `in_a_row`-th non-finite update in a row: skip, rollback or stop.

    skip drops the update; rollback goes back to the last good state with a lower lr; either becomes stop once
    `limit` updates in a row were non-finite or `limit` rollbacks were already made, so a run that cannot
    recover ends instead of looping.
    """
    if policy == "stop" or in_a_row >= limit:
        return "stop"
    if policy == "rollback":
        return "stop" if rollbacks >= limit else "rollback"
    return "skip"


@contextmanager
def stop_on_signals(console: Console) -> Iterator[Callable[[], bool]]:
    """While training, SIGTERM and SIGINT ask for a stop at the next step boundary instead of killing the run.

    Yields a function that tells whether a stop was asked for. A second SIGINT (Ctrl-C twice) stops at once.
    Signal handlers can only be set from the main thread; elsewhere (a notebook's worker thread) nothing is
    installed and the function always says no.
    """
    asked: list[str] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        if asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        asked.append(name)
        console.print(
            f"\n{name} received: saving a checkpoint at the next step boundary, then stopping", highlight=False
        )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield lambda: bool(asked)
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
