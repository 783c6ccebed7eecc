"""Safe loading and the output folder: pickled payloads refused, other architectures and class counts named,
an unwritable or too-full run folder refused before any training."""

import json
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from rich.console import Console

import vitkit.train.setup as setup
from tests.conftest import tiny_recipe, tiny_vit
from vitkit.checkpoint_files import sha256 as _sha256
from vitkit.errors import VitkitError
from vitkit.models.lora import load_model_state
from vitkit.models.run_model import load_run_model
from vitkit.train.loop import resume_recipe, train

QUIET = Console(quiet=True)


class _RunsCode:
    """Unpickling this calls os.system: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("loading") / "run"
    train(tiny_recipe("schedule.epochs=2", "train.max_updates=6"), run, console=QUIET)
    return run


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"depth": 3}, r"depth 2 vs 3"),
        ({"num_classes": 5}, r"classes 10 vs 5.*head\.weight \(10, 32\) vs \(5, 32\)"),
        ({"embed_dim": 48}, r"embed dim 32 vs 48"),
    ],
)
def test_a_state_of_another_architecture_says_what_differs(changes: dict, expected: str):
    stored = tiny_vit(num_classes=10).state_dict()
    kwargs = {"num_classes": 10, **changes}
    num_classes = kwargs.pop("num_classes")
    with pytest.raises(VitkitError, match=rf"run/checkpoints/last does not fit the model: .*{expected}"):
        load_model_state(tiny_vit(num_classes=num_classes, **kwargs), stored, where="run/checkpoints/last")


def test_resume_with_another_architecture_names_the_difference(one_epoch: Path, tmp_path: Path):
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    with pytest.raises(VitkitError, match=r"does not fit the model: differs in depth 2 vs 3"):
        train(resume_recipe(run, ["model.depth=3"]), run, resume=True, console=QUIET)
    (run / "summary.json").write_text(json.dumps({"classes": None}))
    meta = run / "checkpoints" / "best" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "num_classes": 4}))
    sums = run / "checkpoints" / "best" / "checksums.json"
    sums.write_text(json.dumps({**json.loads(sums.read_text()), "meta.json": _sha256(meta)}))
    with pytest.raises(VitkitError, match=r"classes 10 vs 4"):
        load_run_model(run)


def test_a_checkpoint_with_a_pickled_payload_is_refused_without_running_it(one_epoch: Path, tmp_path: Path):
    run, marker = tmp_path / "run", tmp_path / "pwned"
    shutil.copytree(one_epoch, run)
    last = run / "checkpoints" / "last"
    state = torch.load(last / "state.pt", weights_only=True)
    torch.save({**state, "payload": _RunsCode(marker)}, last / "state.pt")
    sums = json.loads((last / "checksums.json").read_text())
    (last / "checksums.json").write_text(json.dumps({**sums, "state.pt": _sha256(last / "state.pt")}))
    with pytest.raises(VitkitError, match=r"state\.pt was refused: .*could run code.*posix\.system") as error:
        train(resume_recipe(run), run, resume=True, console=QUIET)
    assert "weights_only=False" not in str(error.value)  # never the advice to load it unsafely
    assert not marker.exists()


def test_a_damaged_summary_is_named_with_the_command_that_writes_it_again(one_epoch: Path, tmp_path: Path):
    """A summary.json cut short (a full disk) used to end vitkit predict and evaluate on a bare JSONDecodeError."""
    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    classes = json.loads((run / "summary.json").read_text())["classes"]
    (run / "summary.json").write_text('{"classes": ["cir')
    with pytest.raises(VitkitError, match=r"summary\.json is damaged .*vitkit train --resume RUN"):
        load_run_model(run)
    train(resume_recipe(run), run, resume=True, console=QUIET)  # the run had finished: it only writes it again
    assert load_run_model(run)[2]["classes"] == classes


def test_a_metrics_line_cut_short_by_a_crash_leaves_the_history_before_it(one_epoch: Path, tmp_path: Path):
    from vitkit.evaluate.run import training_record

    run = tmp_path / "run"
    shutil.copytree(one_epoch, run)
    whole = training_record(run)
    with (run / "metrics.jsonl").open("a") as log:
        log.write('{"kind": "step", "step": 7, "lo')  # SIGKILL in the middle of a write
    assert training_record(run)["history"] == whole["history"] and len(whole["history"]) == 1


def test_an_unwritable_run_folder_is_refused_before_training(tmp_path: Path):
    (tmp_path / "a-file").write_text("not a folder")
    with pytest.raises(VitkitError, match=r"cannot write to the run folder .*a-file/run.*writable --out"):
        train(tiny_recipe(), tmp_path / "a-file" / "run", console=QUIET)


def test_a_disk_too_full_for_the_checkpoints_is_refused_before_training(tmp_path: Path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(setup.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2**20, 2**20))
    with pytest.raises(VitkitError, match=r"1 MiB free, but this run's checkpoints need about .*train\.keep_last"):
        train(tiny_recipe(), tmp_path / "run", console=QUIET)
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "metrics.jsonl").exists()
