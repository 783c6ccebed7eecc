"""`vitkit runs` lists run folders with their status and `vitkit runs compare` shows two runs side by side."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.test_cli import installed
from vitkit.errors import VitkitError
from vitkit.run_folder import MARKER
from vitkit.run_list import RUNNING, compare_runs, find_runs, run_info, run_status


def make_run(folder: Path, lr: float, *, summary: bool = True, pid: int | None = None) -> Path:
    """A run folder as vitkit writes one, by hand: recipe, a checkpoint, and a summary or a live-process marker."""
    (folder / "checkpoints" / "last").mkdir(parents=True)
    (folder / MARKER).write_text("{}")
    recipe = {"model": {"name": "vit_tiny_patch16_224", "depth": 2}, "data": {"source": "data/"}, "optim": {"lr": lr}}
    (folder / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    if summary:
        best = {"metric": "val_top1", "value": 0.5 + lr * 100, "epoch": 3}
        final = {"epoch": 3, "val_top1": 0.4 + lr * 100}
        (folder / "summary.json").write_text(json.dumps({"best": best, "final": final, "epochs": 3}))
    if pid is not None:
        (folder / RUNNING).write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return folder


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_status_of_each_kind_of_run(tmp_path: Path):
    assert run_status(make_run(tmp_path / "done", 0.001)) == "finished"
    assert run_status(make_run(tmp_path / "live", 0.001, summary=False, pid=os.getpid())) == "running"
    assert run_status(make_run(tmp_path / "killed", 0.001, summary=False, pid=dead_pid())) == "stopped"
    empty = make_run(tmp_path / "empty", 0.001, summary=False)
    (empty / "checkpoints" / "last").rmdir()
    assert run_status(empty) == "empty"


def test_runs_lists_runs_with_status_and_skips_other_folders(tmp_path: Path):
    make_run(tmp_path / "runs" / "a", 0.001)
    make_run(tmp_path / "runs" / "group" / "b", 0.002, summary=False, pid=os.getpid())
    (tmp_path / "runs" / "notes").mkdir()
    (tmp_path / "runs" / "notes" / "recipe.yaml").write_text("mine")  # a user's folder, not a run
    out = installed("runs", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    rows = {line.split("│")[1].strip(): line for line in out.stdout.splitlines() if line.startswith("│ runs/")}
    assert set(rows) == {"runs/a", "runs/group/b"}
    assert "finished" in rows["runs/a"] and "val_top1 60.0% (epoch 3)" in rows["runs/a"]
    assert "running" in rows["runs/group/b"]
    missing = installed("runs", "nowhere", cwd=tmp_path)
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    with pytest.raises(VitkitError, match=r"notes/recipe\.yaml: a file, not a folder\. Pass the folder that holds"):
        find_runs(tmp_path / "runs" / "notes" / "recipe.yaml")


def test_a_run_with_damaged_files_is_still_listed(tmp_path: Path):
    """One run's damaged summary or recipe (bytes that are not UTF-8, a list) must not take the listing down."""
    for name, summary, recipe in (("binary", b"\xff\xfe\x00", b"\x89PNG"), ("list", b"[1, 2]", b"- a\n- b\n")):
        run = make_run(tmp_path / name, 0.001)
        (run / "summary.json").write_bytes(summary)
        (run / "recipe.yaml").write_bytes(recipe)
        info = run_info(run)
        assert (info.recipe, info.best, info.status) == ("?", "-", "finished"), name


def test_compare_shows_the_fields_that_differ_and_the_metrics(tmp_path: Path):
    a, b = make_run(tmp_path / "a", 0.001), make_run(tmp_path / "b", 0.002)
    differ, metrics = compare_runs(a, b)
    assert differ == [("optim.lr", 0.001, 0.002)]
    assert ("best", "val_top1 60.0% (epoch 3)", "val_top1 70.0% (epoch 3)") in metrics
    out = installed("runs", "compare", str(a), str(b))
    assert out.returncode == 0 and "optim.lr" in out.stdout and "model.depth" not in out.stdout
    wrong = installed("runs", "compare", str(a))
    assert wrong.returncode == 2 and "needs two run folders" in wrong.stderr


def test_a_run_in_progress_is_neither_replaced_nor_joined(tmp_path: Path):
    from vitkit.run_folder import claim_run_folder
    from vitkit.run_list import running_marker

    live = make_run(tmp_path / "live", 0.001, summary=False, pid=os.getpid())
    before = sorted(p.name for p in live.iterdir())
    with pytest.raises(VitkitError, match=f"being trained right now \\(pid {os.getpid()}"):
        claim_run_folder(live, overwrite=True)
    assert sorted(p.name for p in live.iterdir()) == before
    with pytest.raises(VitkitError, match="Stop that process first"), running_marker(live):
        pass
    dead = make_run(tmp_path / "dead", 0.001, summary=False, pid=dead_pid())
    assert claim_run_folder(dead, overwrite=True).replaced is not None  # a killed run is stopped, replaceable
