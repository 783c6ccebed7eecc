"""Experiment trackers besides TensorBoard (MLflow, Weights & Biases), through accelerate's tracker API.

TensorBoard is written by `MetricsLogger` itself, because a resumed run must purge the events the interrupted run
wrote after its checkpoint; every other tracker receives the same numeric records through `accelerator.log`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vitkit.errors import MissingExtraError
from vitkit.run_list import flatten

# tracker name -> (module to import, pip extra that installs it)
EXTRAS = {"mlflow": ("mlflow", "mlflow"), "wandb": ("wandb", "wandb")}


def accelerate_trackers(names: Sequence[str]) -> list[str]:
    """The trackers accelerate runs (all but TensorBoard); a missing package names its extra before any work."""
    chosen = [name for name in names if name != "tensorboard"]
    for name in chosen:
        module, extra = EXTRAS[name]
        if importlib.util.find_spec(module) is None:
            raise MissingExtraError(module, extra, f"train.log_with={name}")
    return chosen


def tracker_init_kwargs(names: list[str], run_dir: Path) -> dict[str, dict[str, Any]]:
    """Per-tracker settings: runs are named after the run folder, and local stores live inside it.

    MLflow logs to MLFLOW_TRACKING_URI when it is set (a server, a database); otherwise to a file store in
    RUN/mlruns (`mlflow ui --backend-store-uri RUN/mlruns` shows it), so nothing is written outside the run folder.
    """
    kwargs: dict[str, dict[str, Any]] = {}
    if "mlflow" in names:
        if "MLFLOW_TRACKING_URI" not in os.environ:
            import mlflow

            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 asks for an opt-in to file stores
            mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
        kwargs["mlflow"] = {"run_name": run_dir.name}
    if "wandb" in names:
        kwargs["wandb"] = {"dir": str(run_dir), "name": run_dir.name}
    return kwargs


def flat_config(tree: dict[str, Any]) -> dict[str, Any]:
    """A recipe as {"section.field": value} with lists as text: what trackers store as hyperparameters."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flatten(tree).items()}
