"""Trackers besides TensorBoard go through accelerate: MLflow into a local file store, a missing package named."""

from __future__ import annotations

from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import tiny_recipe
from vitkit.errors import MissingExtraError
from vitkit.train.logging import read_metrics
from vitkit.train.loop import train

QUIET = Console(quiet=True)


def test_mlflow_receives_the_recipe_and_the_same_metrics_as_metrics_jsonl(tmp_path: Path, monkeypatch):
    mlflow = pytest.importorskip("mlflow", reason="MLflow is in the dev extra: pip install -e '.[dev]'")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run = tmp_path / "run"
    try:
        train(tiny_recipe("train.log_with=[tensorboard, mlflow]", "optim.lr=0.002"), run, console=QUIET)
    finally:
        mlflow.set_tracking_uri("")  # the store lives in this test's folder: forget it
    client = MlflowClient((run / "mlruns").resolve().as_uri())
    experiment = client.get_experiment_by_name("vitkit")
    (logged,) = client.search_runs([experiment.experiment_id])
    assert logged.info.run_name == "run" and logged.info.status == "FINISHED"
    assert float(logged.data.params["optim.lr"]) == 0.002
    epochs = read_metrics(run / "metrics.jsonl", "epoch")
    history = client.get_metric_history(logged.info.run_id, "epoch/val_top1")
    assert [(m.step, m.value) for m in history] == [(e["step"], pytest.approx(e["val_top1"])) for e in epochs]
    assert (run / "tensorboard").is_dir()


def test_a_missing_tracker_package_names_its_extra_before_anything_is_written(tmp_path: Path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(MissingExtraError, match=r"pip install 'vitkit\[wandb\]'"):
        train(tiny_recipe("train.log_with=[wandb]"), tmp_path / "run", console=QUIET)
    assert not (tmp_path / "run").exists()
