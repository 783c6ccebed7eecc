"""vitkit never deletes or overwrites files it did not create: --out and --overwrite, tried as a user would, with the
installed `vitkit` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES, tiny_recipe, write_image_folder
from vitkit.errors import VitkitError
from vitkit.run_folder import MARKER, check_export_folder, check_output_files, claim_run_folder, is_run_folder
from vitkit.train.loop import train

VITKIT = str(Path(sys.executable).parent / "vitkit")
TINY_SETS = [arg for o in TINY_OVERRIDES for arg in ("--set", o)]


def vitkit(*args: str, cwd: Path, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", **({"HOME": str(home)} if home else {})}
    return subprocess.run([VITKIT, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes: what a user would lose."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fake_run(folder: Path) -> Path:
    """A run folder as vitkit writes one (marker, recipe, a checkpoint), without the minute of training."""
    (folder / "checkpoints" / "last").mkdir(parents=True)
    (folder / "checkpoints" / "last" / "model.safetensors").write_bytes(b"weights")
    (folder / "recipe.yaml").write_text("name: old\n")
    (folder / "metrics.jsonl").write_text('{"kind": "epoch"}\n')
    (folder / MARKER).write_text("{}")
    return folder


def message(out: subprocess.CompletedProcess[str]) -> str:
    return " ".join(out.stderr.split())


def test_overwrite_refuses_an_ordinary_folder_and_keeps_its_files(tmp_path: Path):
    work = tmp_path / "mywork"
    (work / "sub").mkdir(parents=True)
    (work / "thesis.tex").write_text("months of work")
    (work / "sub" / "data.csv").write_text("a,b\n")
    before = snapshot(work)
    out = vitkit("train", "--out", "mywork", "--overwrite", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "not a vitkit run" in message(out) and "thesis.tex" in message(out)
    assert snapshot(work) == before
    without = vitkit("train", "--out", "mywork", cwd=tmp_path)  # nor does it claim the folder "holds a run"
    assert without.returncode == 2 and "already holds" not in without.stderr and "not a vitkit run" in message(without)


def test_out_dot_with_overwrite_removes_nothing(tmp_path: Path):
    write_image_folder(tmp_path / "images")
    fake_run(tmp_path)  # even when the current directory looks like a run
    before = snapshot(tmp_path)
    out = vitkit("train", "--data", "images", "--out", ".", "--overwrite", cwd=tmp_path)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "is the current directory" in message(out)
    assert snapshot(tmp_path) == before
    parent = vitkit("train", "--data", "images", "--out", "..", "--overwrite", cwd=tmp_path / "images")
    assert parent.returncode == 2 and "a parent of the current directory" in message(parent)
    assert snapshot(tmp_path) == before


def test_out_naming_the_training_data_or_a_folder_inside_it_is_refused(tmp_path: Path):
    data = write_image_folder(tmp_path / "mydata")
    before = snapshot(data)
    same = vitkit("train", "--data", "mydata", "--out", "mydata", "--overwrite", cwd=tmp_path)
    assert same.returncode == 2 and "contains the input" in message(same)
    inside = vitkit("train", "--data", "mydata", "--out", "mydata/run", cwd=tmp_path)
    assert inside.returncode == 2 and "lies inside the input folder" in message(inside)
    assert snapshot(data) == before and not (data / "run").exists()


def test_out_containing_the_recipe_file_is_refused(tmp_path: Path):
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    (recipes / "mine.yaml").write_text("description: mine\n")
    out = vitkit("train", "--recipe", "recipes/mine.yaml", "--out", "recipes", "--overwrite", cwd=tmp_path)
    assert out.returncode == 2 and "contains the input" in message(out)
    assert (recipes / "mine.yaml").read_text() == "description: mine\n"


def test_home_directory_and_a_file_are_refused(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    out = vitkit("train", "--out", str(home), "--overwrite", cwd=tmp_path, home=home)
    assert out.returncode == 2 and "your home directory" in message(out)
    (tmp_path / "notes.txt").write_text("mine")
    as_file = vitkit("train", "--out", "notes.txt", cwd=tmp_path)
    assert as_file.returncode == 2 and "is a file, not a folder" in message(as_file)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_typo_in_data_with_overwrite_keeps_the_existing_run(tmp_path: Path):
    run = fake_run(tmp_path / "runs" / "good")
    before = snapshot(run)
    out = vitkit("train", "--data", "imagse", "--out", "runs/good", "--overwrite", cwd=tmp_path)
    assert out.returncode == 2 and "no such file or folder" in message(out)
    assert snapshot(run) == before


def test_a_run_that_fails_to_start_gives_the_replaced_run_back(tmp_path: Path):
    """Data that exists but cannot be trained on (one class) fails inside training: the old run comes back whole."""
    run = fake_run(tmp_path / "runs" / "good")
    before = snapshot(run)
    write_image_folder(tmp_path / "oneclass", classes=("cat",))
    out = vitkit("train", "--data", "oneclass", "--out", "runs/good", "--overwrite", cwd=tmp_path)
    assert out.returncode == 2 and "needs at least 2" in message(out)
    assert snapshot(run) == before
    assert sorted(p.name for p in run.parent.iterdir()) == ["good"]  # nothing left aside


def test_a_run_with_the_users_own_files_in_it_is_not_replaced(tmp_path: Path):
    run = fake_run(tmp_path / "run")
    (run / "my-notes.md").write_text("observations")
    with pytest.raises(VitkitError, match=r"my-notes\.md"):
        claim_run_folder(run, overwrite=True)
    assert (run / "my-notes.md").read_text() == "observations" and (run / "recipe.yaml").exists()


def test_overwrite_replaces_a_run_once_the_new_one_has_started(tmp_path: Path):
    run = fake_run(tmp_path / "run")
    result = train(tiny_recipe("schedule.epochs=1", "schedule.warmup_epochs=0"), run, overwrite=True)
    assert result.summary["epochs"] == 1 and is_run_folder(run)
    assert (run / "checkpoints" / "last" / "model.safetensors").read_bytes() != b"weights"
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # the old run, moved aside, is deleted


def test_a_new_run_that_fails_before_training_starts_leaves_nothing_behind(tmp_path: Path):
    data = write_image_folder(tmp_path / "data", classes=("cat",))
    with pytest.raises(VitkitError, match="at least 2"):
        train(tiny_recipe(f"data.source={data}"), tmp_path / "run")
    assert not (tmp_path / "run").exists()
    empty = tmp_path / "made-by-user"
    empty.mkdir()
    with pytest.raises(VitkitError):
        train(tiny_recipe(f"data.source={data}"), empty)
    assert empty.is_dir() and list(empty.iterdir()) == []  # the user's empty folder stays, empty


def test_an_old_run_without_a_marker_is_still_recognised(tmp_path: Path):
    run = fake_run(tmp_path / "old")
    (run / MARKER).unlink()
    assert is_run_folder(run)
    (run / "checkpoints" / "last" / "model.safetensors").unlink()
    (run / "checkpoints" / "last").rmdir()
    (run / "checkpoints").rmdir()
    (run / "metrics.jsonl").unlink()
    assert not is_run_folder(run)  # a recipe.yaml alone may be the user's own


def test_an_output_file_gets_its_folders_before_the_work_or_a_message_naming_what_is_in_the_way(tmp_path: Path):
    """`predict --out` and `evaluate --out` check where they write before they compute: the predictions of a long
    job are not lost to a folder that does not exist or a file that stands where a folder should."""
    check_output_files(tmp_path / "new" / "deeper" / "predictions.csv")
    assert (tmp_path / "new" / "deeper").is_dir() and not (tmp_path / "new" / "deeper" / "predictions.csv").exists()
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(VitkitError, match=r"notes\.txt is a file, not a folder\. Choose another --out"):
        check_output_files(tmp_path / "notes.txt" / "sub" / "predictions.csv")
    with pytest.raises(VitkitError, match=r"notes\.txt is a file, not a folder\. Choose another --out"):
        check_export_folder(tmp_path / "notes.txt" / "export")  # `vitkit export`; `data export` makes the same check
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_an_export_into_a_run_folder_or_a_users_folder_names_what_is_there(tmp_path: Path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text("model: {}\n")
    with pytest.raises(
        VitkitError, match=r"is a run folder; an export goes in a folder of its own, e\.g\. --out .*run-export"
    ):
        check_export_folder(run)
    mine = tmp_path / "mine"
    (mine / "photos").mkdir(parents=True)
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(VitkitError, match=r"did not write \(notes\.txt, photos/\)"):
        check_export_folder(mine)
    assert (mine / "notes.txt").read_text() == "keep"
