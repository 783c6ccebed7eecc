"""The `vitkit` command as a user runs it: real subprocesses, exit codes and messages."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_OVERRIDES
from vitkit.config import shipped_recipes


def vitkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "vitkit", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )


def test_recipes_list_names_every_shipped_recipe():
    out = vitkit("recipes", "list")
    assert out.returncode == 0
    for name in ("deit-tiny", "deit-small", "deit-base", "vit-plain", "small-data", "quickstart"):
        assert name in out.stdout


def test_recipes_show_resolved_gives_the_scaled_lr():
    out = vitkit("recipes", "show", "deit-tiny", "--resolved", "--set", "train.batch_size=1024")
    assert out.returncode == 0
    assert "peak_lr: 0.001" in out.stdout and "batch_per_update: 1024" in out.stdout


def test_field_help_is_generated_from_recipe_fields_with_the_recipes_own_values():
    out = vitkit("recipes", "fields")
    assert out.returncode == 0
    assert "optim.weight_decay" in out.stdout and "Decoupled weight decay" in out.stdout
    assert "augment.mix_switch_prob" in out.stdout
    tiny = vitkit("recipes", "fields", "--recipe", "deit-tiny").stdout
    assert "value in deit-tiny" in tiny
    assert "vit_tiny_patch16_224" in next(line for line in tiny.splitlines() if "model.name " in line)
    short = vitkit("train", "--help")  # a screen of options; the field list stays in `recipes fields`
    assert short.returncode == 0 and "optim.weight_decay" not in short.stdout and "recipes fields" in short.stdout
    assert len(short.stdout.splitlines()) < 60


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--set", "optim.lrr=1"], "Did you mean 'optim.lr'"),
        (["train", "--recipe", "deit-tiyn"], "Did you mean 'deit-tiny'"),
        (["train", "--data", "/no/such/folder", "--recipe", "deit-tiny"], "no such file or folder"),
        (["train", "--set", "train.precision=fp16"], "fp16 needs a CUDA GPU"),
        (["evaluate", "/no/such/run"], "/no/such/run: no such folder"),
        (["evaluate", __file__], "is a file, not a run folder"),
        (["serve", __file__], "is a file, not a folder. Serve an export folder"),
        (["export", __file__], "is a file, not a run folder"),
    ],
)
def test_user_errors_exit_2_with_a_message_and_no_traceback(args, message, tmp_path: Path):
    out = vitkit(*args, "--out", str(tmp_path / "r")) if args[0] == "train" else vitkit(*args)
    assert out.returncode == 2, out.stderr
    assert message in " ".join(out.stderr.split())
    assert "Traceback" not in out.stderr


VITKIT = str(Path(sys.executable).parent / "vitkit")


def installed(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `vitkit` command, as a shell runs it."""
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([VITKIT, *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["train", "--bogus"], "No such option: --bogus"),
        (["bogus"], "No such command 'bogus'"),
        (["evaluate"], "Missing argument"),
        (["predict", "--top", "many", "run", "x.png"], "Invalid value for '--top'"),
    ],
)
def test_usage_errors_print_the_short_usage_and_exit_2(args, says):
    out = installed(*args)
    assert out.returncode == 2
    assert says in out.stderr and "Usage: vitkit" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.splitlines()) < 10


def test_serve_names_the_option_it_refuses_before_it_loads_a_model(tmp_path: Path):
    for args, says in (
        (["--max-wait-ms", "-1"], "--max-wait-ms at least 0"),
        (["--monitor-sample", "2"], "--monitor-sample a share from 0 to 1"),
    ):
        out = installed("serve", str(tmp_path / "no-model-here"), "--port", "0", *args)
        assert out.returncode == 2 and says in out.stderr and "Traceback" not in out.stderr, args


def test_out_of_memory_in_any_command_is_a_message_and_other_errors_stay_tracebacks(monkeypatch, capsys):
    import torch

    from vitkit import cli

    def out_of_memory(standalone_mode: bool) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore allocator detail")

    monkeypatch.setattr(cli, "app", out_of_memory)
    with pytest.raises(SystemExit) as stopped:
        cli.main()
    said = " ".join(capsys.readouterr().err.split())  # as wrapped to the terminal
    assert stopped.value.code == 2 and "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB)" in said
    assert "Give fewer images at once (--batch" in said and "allocator detail" not in said

    def a_bug(standalone_mode: bool) -> None:
        raise ValueError("a bug is reported as one")

    monkeypatch.setattr(cli, "app", a_bug)
    with pytest.raises(ValueError, match="a bug is reported as one"):
        cli.main()


def test_version_and_short_help():
    from vitkit import __version__

    version = installed("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"vitkit {__version__}"
    for args in (["-h"], ["train", "-h"], ["recipes", "-h"]):
        out = installed(*args)
        assert out.returncode == 0 and out.stdout.startswith("Usage: vitkit"), args


def test_ctrl_c_during_startup_exits_130_and_leaves_no_run(tmp_path: Path):
    """`vitkit train ... && next` must not carry on after Ctrl-C; setup interrupted leaves no half-made run."""
    import signal

    process = subprocess.Popen(
        [VITKIT, "train", "--out", "r"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        text=True,
        # as from a terminal: a job started in the background of a script inherits SIGINT ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # printed before the data is generated: the signal lands in setup
    assert "no --data given" in first
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode == 130
    assert not (tmp_path / "r").exists()


def test_resume_refuses_new_run_options_instead_of_ignoring_them(tmp_path: Path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "recipe.yaml").write_text("description: x\n")
    for extra in (["--data", str(tmp_path)], ["--recipe", "deit-tiny"], ["--overwrite"]):
        out = installed("train", "--resume", str(run), *extra)
        assert out.returncode == 2 and "would be ignored" in out.stderr, extra
        assert extra[0] in out.stderr


def test_train_then_evaluate_from_the_command_line(tmp_path: Path):
    sets = [arg for o in TINY_OVERRIDES for arg in ("--set", o)]
    run = tmp_path / "cli-run"
    out = vitkit("train", "--recipe", "quickstart", "--out", str(run), *sets)
    assert out.returncode == 0, out.stderr
    assert "run folder:" in out.stdout and "accuracy · top-1" in out.stdout
    # the short evaluation at the end of training: accuracy and calibration only, with its report
    report = json.loads((run / "eval" / "metrics.json").read_text())
    assert list(report["results"]) == ["accuracy", "calibration"] and report["images"] == 40
    # the same pixels and the same metric as training's validation: the best epoch's top-1, to the image
    best = json.loads((run / "summary.json").read_text())["best"]
    assert report["results"]["accuracy"]["top1"] == pytest.approx(best["value"], abs=1e-6)
    assert "ece" in report["results"]["calibration"]
    assert (run / "eval" / "report.html").stat().st_size > 10_000
    # not a terminal: plain progress lines instead of a live bar
    assert "epoch 1 step" in out.stdout
    again = vitkit("evaluate", str(run), "--only", "accuracy,calibration")
    assert again.returncode == 0
    assert json.loads((run / "eval" / "metrics.json").read_text())["results"] == report["results"]


def test_recipe_reference_in_docs_is_generated_from_the_schema():
    from vitkit.cli import fields_markdown

    committed = (Path(__file__).parents[2] / "docs" / "recipe-reference.md").read_text()
    assert committed == fields_markdown(), "regenerate: vitkit recipes fields --markdown > docs/recipe-reference.md"


def test_recipes_show_prints_only_a_valid_recipe(tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("user: secret\nother: thing\n")  # YAML reads it as a mapping, but no recipe
    out = vitkit("recipes", "show", str(notes))
    assert out.returncode == 2 and "secret" not in out.stdout
    assert "unknown field" in out.stderr and "Valid fields" in out.stderr
    shown = vitkit("recipes", "show", "quickstart")
    assert shown.returncode == 0 and shown.stdout == shipped_recipes()["quickstart"].read_text()


def test_impossible_numbers_are_refused_with_the_option_named(tmp_path: Path):
    sizes = vitkit("models", "--train-size", "-5", "--no-latency")  # before: a recommendation for -5 images
    assert sizes.returncode == 2 and "--train-size" in sizes.stderr
    share = vitkit("data", "export", "builtin:shapes", "--out", str(tmp_path / "d"), "--val-fraction", "2")
    assert share.returncode == 2 and "--val-fraction 2.0: give the share held out, between 0 and 1" in share.stderr
    assert not (tmp_path / "d").exists()  # before: 2 train and 4 validation images of a 6-image folder
