"""`vitkit tune`: trials are run folders validated on a held-out part of the training split, the study resumes,
the pruner stops trials, the winner is written as a recipe."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image
from rich.console import Console

from tests.conftest import TINY_OVERRIDES, tiny_recipe, write_mirrored_classes
from tests.e2e.test_cli import vitkit
from vitkit.config.loader import override_recipe, recipe_from_yaml_file, recipe_to_yaml
from vitkit.data.sources import recipe_splits
from vitkit.errors import VitkitError
from vitkit.plan.tune import (
    TuneResult,
    _importances,
    advised_base,
    base_values,
    budget_note,
    check_same_base,
    difference_noise,
    overrides_for,
    search_cost,
    startup_trials,
    trial_overrides,
    tune,
    varied_settings,
    winner_margin,
)
from vitkit.train.faults import TrainingDiverged, TrainingPreempted
from vitkit.train.logging import read_metrics

BASE = ["schedule.epochs=2", "schedule.warmup_epochs=0", "data.synthetic_train_size=120", "data.holdout=0.25"]


def _digest(images: object) -> set[str]:
    return {hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest() for x in images.items}  # type: ignore[attr-defined]


def test_holdout_validates_on_training_images_and_never_reads_the_validation_split():
    plain, held = recipe_splits(tiny_recipe()), recipe_splits(tiny_recipe("data.holdout=0.25"))
    train, val = _digest(plain.train), _digest(plain.val)
    assert _digest(held.val) <= train and not _digest(held.val) & val and not _digest(held.train) & val
    assert len(held.val) + len(held.train) == len(plain.train) and "held out for validation" in held.description
    assert 0.15 < len(held.val) / len(plain.train) < 0.35  # a quarter, rounded class by class


def test_overrides_for_a_trial():
    base = tiny_recipe("optim.lr=0.002")
    sets = overrides_for(
        {"optim.lr": 0.5, "augment.rrc_scale": 0.3, "augment.randaugment": 0.4, "augment.mixup": 0.2}, base
    )
    assert sets[:3] == ["optim.lr=0.001", "augment.rrc_scale=[0.3, 1.0]", "augment.randaugment=null"]
    assert "augment.mixup=0.2" in sets
    assert overrides_for({"augment.randaugment": 7.2}, base) == ["augment.randaugment=rand-m7-mstd0.5-inc1"]


def test_a_small_study_is_not_a_random_search():
    # Optuna's TPE samples its first 10 trials at random: a third of a smaller study, at least 2 (base + 1)
    assert [startup_trials(n) for n in (3, 6, 12, 30, 100)] == [2, 2, 4, 10, 10]
    assert startup_trials(None) == 10  # a study limited by time only


def test_the_base_recipe_in_the_search_space():
    base = tiny_recipe(
        "optim.weight_decay=0.05", "model.drop_path_rate=0.1", "train.label_smoothing=0.1",
        "augment.rrc_scale=[0.35, 1.0]", "augment.randaugment=rand-m7-mstd0.5-inc1", "augment.random_erasing=0.25",
        "augment.mixup=0.8", "augment.cutmix=1.0",
    )  # fmt: skip
    assert base_values(base) == {
        "optim.lr": 1.0, "optim.weight_decay": 0.05, "model.drop_path_rate": 0.1, "train.label_smoothing": 0.1,
        "augment.rrc_scale": 0.35, "augment.randaugment": 7.0, "augment.random_erasing": 0.25, "augment.mixup": 0.8,
        "augment.cutmix": 1.0, "augment.hflip": 0.5,
    }  # fmt: skip
    # no weight decay and no RandAugment: the lowest weight decay searched, RandAugment off
    plain = base_values(tiny_recipe("optim.weight_decay=0", "augment.randaugment=null"))
    assert plain["optim.weight_decay"] == 0.005 and plain["augment.randaugment"] == 0.0


def test_a_trial_sets_only_what_it_moves_so_the_first_trial_is_the_base_recipe_exactly():
    """No weight decay lies below the searched range (0.005 on a log scale): the base's point has the range's
    floor there, and the trials at that point keep the recipe's own 0."""
    base = tiny_recipe("optim.weight_decay=0", "augment.randaugment=null")
    start = base_values(base)
    assert start["optim.weight_decay"] == 0.005 and trial_overrides(start, base) == []  # the recipe as it is
    doubled = trial_overrides({**start, "optim.lr": 2.0}, base)
    assert doubled == [f"optim.lr={2 * base.optim.lr:.6g}"]
    assert override_recipe(base, doubled).optim.weight_decay == 0.0  # twice the lr, and still no weight decay
    assert trial_overrides({**start, "optim.weight_decay": 0.01}, base) == ["optim.weight_decay=0.01"]


def test_a_study_runs_trials_as_run_folders_resumes_and_writes_the_winner(tmp_path: Path):
    out = tmp_path / "study"
    started = time.monotonic()
    first = tune(tiny_recipe(*BASE), out, trials=2, console=Console(quiet=True))
    assert first.trials == 2 and (out / "study.db").exists()
    runs = sorted(out.glob("trial-*"))
    assert [r.name for r in runs] == ["trial-0000", "trial-0001"]
    for run in runs:
        recipe = recipe_from_yaml_file(run / "recipe.yaml")
        assert recipe.data.holdout == 0.25 and read_metrics(run / "metrics.jsonl", "epoch")
    best = recipe_from_yaml_file(first.best_recipe)
    assert best.data.holdout is None  # the winner trains on the whole training split, judged on validation
    assert first.best_overrides == [*trial_overrides(first.best_values, tiny_recipe(*BASE)), "data.holdout=0.25"]
    base, first_trial = tiny_recipe(*BASE), recipe_from_yaml_file(runs[0] / "recipe.yaml")
    assert first_trial.optim.lr == base.optim.lr and first_trial.augment.mixup == base.augment.mixup  # the base
    assert first_trial.model.drop_path_rate == base.model.drop_path_rate  # recipe itself comes first
    assert recipe_from_yaml_file(runs[1] / "recipe.yaml").optim.lr == pytest.approx(2 * base.optim.lr)  # then
    again = tune(tiny_recipe(*BASE), out, trials=2, console=Console(quiet=True))
    elapsed = time.monotonic() - started
    assert 0 < again.base_seconds < again.search_seconds < elapsed  # four trials' time, the base's the first
    third = recipe_from_yaml_file(out / "trial-0002" / "recipe.yaml")
    assert third.optim.lr == pytest.approx(base.optim.lr / 2)  # twice and half the base's lr, then without flips
    fourth = recipe_from_yaml_file(out / "trial-0003" / "recipe.yaml")
    assert base.augment.hflip == 0.5 and fourth.augment.hflip == 0 and fourth.optim.lr == base.optim.lr
    assert again.trials == 4 and (out / "trial-0003").exists()  # continued, not started over
    study = optuna.load_study(study_name="vitkit", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.params == base_values(base) for t in study.trials] == [True, False, False, False]  # queued once
    assert again.base_value == study.trials[0].value and again.best_is_base == (study.best_trial.number == 0)
    assert again.held_out == len(recipe_splits(tiny_recipe(*BASE)).val)  # the images each trial validated on


def test_the_search_turns_off_flips_where_a_flip_changes_the_class(tmp_path: Path):
    data = write_mirrored_classes(tmp_path / "mirrored", per_class=80)
    base = tiny_recipe(f"data.source={data}", "schedule.epochs=6", "schedule.warmup_epochs=0", "augment.hflip=0.5")
    result = tune(base, tmp_path / "study", trials=4, console=Console(quiet=True), pruner=optuna.pruners.NopPruner())
    # with flips, half the training images carry the other class's label: the held-out images stay at chance
    assert result.base_value is not None and result.base_value <= 0.6
    assert result.best_trial == 3 and result.best_value >= result.base_value + 0.2  # the fourth: flips off
    assert "augment.hflip=0" in result.best_overrides
    assert recipe_from_yaml_file(result.best_recipe).augment.hflip == 0


def _result(best: float, base: float | None, held_out: int | None, metric: str = "val_top1") -> TuneResult:
    return TuneResult(best, [], {}, {}, 6, 0, Path("best.yaml"), metric, base, best == base, held_out)


def test_the_winners_margin_is_weighed_against_the_noise_of_the_held_out_images():
    # hand values: sqrt(2 * 0.8 * 0.2 / 200) = 0.04; sqrt(2 * 0.9 * 0.1 / 2000) = 0.0095
    assert difference_noise(0.8, 200) == pytest.approx(4.0) and difference_noise(0.9, 2000) == pytest.approx(
        0.949, 1e-3
    )
    assert "+10.0 points" in winner_margin(_result(0.90, 0.80, 2000)) and "beyond chance" in winner_margin(
        _result(0.90, 0.80, 2000)
    )
    near = winner_margin(_result(0.82, 0.80, 200))  # 2 points against one standard error of 3.8
    assert "+2.0 points" in near and "3.8" in near and "may be chance" in near
    assert "keep it" in winner_margin(_result(0.80, 0.80, 200))
    assert "has not finished" in winner_margin(_result(0.80, None, 200))
    assert "0.0500 below" in winner_margin(_result(0.40, 0.45, 200, "val_loss"))


def test_the_search_cost_is_counted_in_runs_of_the_base_recipe():
    result = dataclasses.replace(_result(0.9, 0.8, 200), base_seconds=600.0, search_seconds=2880.0)
    assert search_cost(result) == (
        "the search took 48 min 00 s, 4.8 times the base recipe's own trial (10 min 00 s). With the winner's final "
        "run, that compute would train the base recipe for about 5.8 times its epochs."
    )
    long = dataclasses.replace(result, base_seconds=None, search_seconds=3725.0)
    assert search_cost(long) == "the search took 1 h 02 min."  # the base recipe's trial never finished
    assert search_cost(dataclasses.replace(long, search_seconds=7.4)) == "the search took 7 s."


def test_a_budget_of_fewer_than_six_base_trials_is_named_with_the_budget_to_give():
    assert budget_note(3600.0, 600.0) is None  # six trials of 10 min fit in an hour
    assert budget_note(3000.0, 600.0) == (
        "note: the base recipe's trial took 10 min 00 s, so the --budget fits about 5.0 such trials, fewer than "
        "the 6 a search needs to improve on it. Give it at least 1 h 00 min, or train the base recipe for longer "
        "instead."
    )


def test_the_note_comes_when_the_base_recipes_trial_ends(tmp_path: Path):
    def run(budget: float, out: str) -> str:
        console = Console(file=io.StringIO(), width=400)
        tune(tiny_recipe(*BASE), tmp_path / out, trials=1, budget_seconds=budget, console=console)
        return console.file.getvalue()  # type: ignore[attr-defined]

    short = run(0.01, "short").splitlines()  # any trial takes longer than that
    assert short[0].startswith("trial 0: val_top1") and short[1].startswith("note: the base recipe's trial took")
    assert "note:" not in run(3600.0, "long")


class PruneAll(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


def test_importances_rank_the_setting_that_decides_and_stay_empty_when_the_trials_tie():
    def study_of(score: Callable[[float, float], float]) -> optuna.Study:
        study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
        study.optimize(lambda t: score(t.suggest_float("lr", 0, 1), t.suggest_float("wd", 0, 1)), n_trials=12)
        return study

    ranked = _importances(optuna, study_of(lambda lr, wd: lr))  # only the lr moves the score
    assert list(ranked) == ["lr", "wd"] and ranked["lr"] > 0.5
    assert _importances(optuna, study_of(lambda lr, wd: 0.5)) == {}  # every trial scored the same


def test_a_setting_no_finished_trial_varied_gets_no_share_of_the_importance():
    """The first points move only the lr (and the flips): the weight decay, left at the base's value in every
    trial, is not ranked at all, rather than given the evaluator's floor share."""
    study = optuna.create_study(direction="maximize")
    for lr in (1.0, 2.0, 0.5, 1.5):
        study.enqueue_trial({"lr": lr, "wd": 0.05})
    study.optimize(lambda t: t.suggest_float("lr", 0.3, 3.0) - t.suggest_float("wd", 0.0, 1.0), n_trials=4)
    assert varied_settings(optuna, study) == ["lr"]
    assert _importances(optuna, study) == {"lr": 1.0}  # the one setting that moved, and all of the score's change
    tied = optuna.create_study(direction="maximize")
    for lr in (1.0, 2.0):
        tied.enqueue_trial({"lr": lr})
    tied.optimize(lambda t: 0.5 + 0 * t.suggest_float("lr", 0.3, 3.0), n_trials=2)
    assert varied_settings(optuna, tied) == ["lr"] and _importances(optuna, tied) == {}  # moved, but changed nothing
    study.enqueue_trial({"lr": 1.0, "wd": 0.5})
    study.optimize(lambda t: t.suggest_float("lr", 0.3, 3.0) - t.suggest_float("wd", 0.0, 1.0), n_trials=1)
    assert varied_settings(optuna, study) == ["lr", "wd"] and set(_importances(optuna, study)) == {"lr", "wd"}


def test_the_pruner_stops_a_trial_after_its_first_epoch_but_never_the_base_recipes(tmp_path: Path):
    """The base recipe's own trial is what every winner is weighed against: a pruner that stops every trial stops
    the second (twice the lr) after its first epoch, and lets the base's run to its end, also when it runs again
    after a killed process (Hyperband would otherwise judge it against the trials finished meanwhile)."""
    out = tmp_path / "pruned"
    result = tune(tiny_recipe(*BASE), out, trials=2, console=Console(quiet=True), pruner=PruneAll())
    epochs = {n: [r["epoch"] for r in read_metrics(out / f"trial-000{n}" / "metrics.jsonl", "epoch")] for n in (0, 1)}
    assert epochs == {0: [1, 2], 1: [1]}
    study = optuna.load_study(study_name="vitkit", storage=f"sqlite:///{out / 'study.db'}")
    assert [t.state for t in study.trials if t.state != optuna.trial.TrialState.WAITING] == [
        optuna.trial.TrialState.COMPLETE,
        optuna.trial.TrialState.PRUNED,
    ]  # the third first point (half the lr) stays queued for the next run
    assert result.best_is_base and result.base_value is not None and result.pruned == 1


def test_tune_never_writes_into_a_users_folder_and_needs_a_limit(tmp_path: Path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(VitkitError, match="not a vitkit tune folder"):
        tune(tiny_recipe(*BASE), tmp_path / "mine", trials=1, console=Console(quiet=True))
    result = vitkit("tune", "--data", "builtin:shapes", "--out", str(tmp_path / "t"))
    assert result.returncode == 2 and "--trials N or --budget" in result.stderr
    for limit in (["--trials", "0"], ["--budget", "0s"]):
        result = vitkit("tune", "--data", "builtin:shapes", "--out", str(tmp_path / "t"), *limit)
        assert result.returncode == 2 and "at least one trial and some time" in result.stderr
    assert not (tmp_path / "t").exists()


def test_the_default_base_is_the_advised_recipe_for_the_data():
    recipe, said = advised_base("builtin:shapes", ["data.source=builtin:shapes", "data.holdout=0.2"])
    assert recipe.schedule.epochs == 30  # 6,000 images: 3 passes make the short budget, the long one 10x that
    assert (recipe.model.img_size, recipe.model.patch_size) == (32, 4)  # the advisor's patch: 8 tokens a side
    assert recipe.model.stem == "conv" and recipe.data.holdout == 0.2 and recipe.data.source == "builtin:shapes"
    assert "6,000 images: 30 epochs" in said and "vitkit advise recipe --data builtin:shapes" in said
    again, _ = advised_base("builtin:shapes", ["data.source=builtin:shapes", "data.holdout=0.2"])
    assert recipe_to_yaml(again) == recipe_to_yaml(recipe)  # the same base every time: the study can go on
    smaller, said = advised_base("builtin:shapes", ["data.synthetic_train_size=1200", "model.depth=2"])
    assert smaller.schedule.epochs == 170 and "1,200 images: 170 epochs" in said  # 17 passes make 20,000 images
    assert smaller.model.depth == 2  # the user's --set applies on top of the advice


def test_on_a_few_dozen_images_the_advised_batch_fits_what_a_trial_trains_on(tmp_path: Path):
    for name in ("a", "b"):
        (tmp_path / "d" / name).mkdir(parents=True)
        for i in range(10):
            pixels = np.full((16, 16, 3), 10 * i + (120 if name == "a" else 0), np.uint8)
            Image.fromarray(pixels).save(tmp_path / "d" / name / f"{i}.png")
    data = str(tmp_path / "d")
    # 18 training images (the folder's own 10% validation split aside): the advisor's batch is 16; a trial holds out
    # 20% of them and trains on 14, so 16 would fail. Counting each of the 2 classes rounding its share up: 18 * 0.8
    # - 2 = 12 images at least, and a batch of 8 fits
    recipe, _ = advised_base(data, [f"data.source={data}", "data.holdout=0.2"])
    assert (recipe.train.batch_size, recipe.train.accumulation_steps) == (8, 1)
    assert len(recipe_splits(recipe).train) == 14
    whole, _ = advised_base("builtin:shapes", ["data.source=builtin:shapes", "data.holdout=0.2"])
    assert whole.train.batch_size == 64  # thousands of images: the advice as it is


def test_a_trial_that_fails_is_reported_and_the_study_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import vitkit.train.loop

    def diverges(*args: object, **kwargs: object) -> None:
        raise TrainingDiverged("the loss was not finite for 5 updates in a row: lower optim.lr")

    monkeypatch.setattr(vitkit.train.loop, "train", diverges)
    out = tmp_path / "failing"
    with pytest.raises(
        VitkitError, match=r"all 2 trials of the study in .* failed with: the loss was not finite"
    ) as error:
        tune(tiny_recipe(*BASE), out, trials=2, console=Console(quiet=True))
    assert "Fix that with --set" in str(error.value) and "give it more --trials" not in str(error.value)
    study = optuna.load_study(study_name="vitkit", storage=f"sqlite:///{out / 'study.db'}")
    ran = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]
    assert [t.state for t in ran] == [optuna.trial.TrialState.FAIL] * 2  # the first failure did not end the study


def test_a_study_goes_on_only_around_the_recipe_it_started_from(tmp_path: Path):
    out = tmp_path / "study"
    out.mkdir()
    (out / ".vitkit-tune").write_text("{}")
    first = recipe_to_yaml(tiny_recipe(*BASE))
    (out / "base.yaml").write_text(first)
    with pytest.raises(VitkitError, match=r"another recipe \(optim.lr, train.label_smoothing differ"):
        tune(tiny_recipe(*BASE, "optim.lr=0.01", "train.label_smoothing=0.3"), out, trials=1)
    assert (out / "base.yaml").read_text() == first
    check_same_base(out, tiny_recipe(*BASE))  # the same recipe again: the study goes on


def test_a_stop_request_ends_the_study_and_queues_the_stopped_trial_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """SIGTERM or Ctrl-C during a trial (train raises TrainingPreempted without the pruner having asked): the study
    stops with the preempted exit code, and the stopped trial is neither pruned nor lost."""
    import vitkit.train.loop

    def preempted(*args: object, **kwargs: object) -> None:
        raise TrainingPreempted("stopped on request")

    monkeypatch.setattr(vitkit.train.loop, "train", preempted)
    out = tmp_path / "stopped"
    with pytest.raises(TrainingPreempted, match=r"stopped on request during trial 0\. Continue it with the same"):
        tune(tiny_recipe(*BASE), out, trials=3, console=Console(quiet=True))
    study = optuna.load_study(study_name="vitkit", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state for t in study.trials]
    assert states.count(optuna.trial.TrialState.FAIL) == 1 and optuna.trial.TrialState.PRUNED not in states
    waiting = [t.system_attrs["fixed_params"] for t in study.trials if t.state == optuna.trial.TrialState.WAITING]
    assert study.trials[0].params in waiting and len(waiting) == 4  # the base again, lr x2, x0.5, no flips


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning", "ignore:Heartbeat of storage")
def test_a_trial_whose_process_was_killed_is_failed_and_queued_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """SIGKILL (or a lost machine) leaves a trial RUNNING with no one to finish it. Once its heartbeat is stale the
    next process to open the study fails it and queues its values again; before, the base recipe's own trial was
    lost that way, and the winner could never be weighed against it."""
    import vitkit.plan.tune as tuning

    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning, "STALE_AFTER_S", 1)
    out, base = tmp_path / "killed", tiny_recipe(*BASE)
    out.mkdir()
    study = tuning._open_study(optuna, out, base, 3, None)
    killed = study.ask()  # the base recipe, the study's first point: its process dies during training
    tuning.suggest(killed)
    study._storage.record_heartbeat(killed._trial_id)
    time.sleep(2.5)
    study = tuning._open_study(optuna, out, base, 3, None)  # the same command, run again
    by_number = {t.number: t for t in study.trials}
    assert by_number[killed.number].state == optuna.trial.TrialState.FAIL
    retry = optuna.storages.RetryHeartbeatStaleTrialCallback
    retried = [t for t in study.trials if t.number != killed.number and retry.retried_trial_number(t) == killed.number]
    assert [t.state for t in retried] == [optuna.trial.TrialState.WAITING] and retried[0].params == killed.params
    assert killed.params == base_values(base)


def test_a_wrong_data_path_is_named_before_the_study_folder_is_made(tmp_path: Path):
    with pytest.raises(VitkitError, match=f"--data {tmp_path / 'nope'}: no such file or folder"):
        tune(tiny_recipe(*BASE, f"data.source={tmp_path / 'nope'}"), tmp_path / "t", trials=1)
    assert not (tmp_path / "t").exists()


def test_the_tune_command_prints_the_importances_the_winner_and_retrains_each_winner_in_its_own_run(tmp_path: Path):
    sets = [f"--set={o}" for o in TINY_OVERRIDES if not o.startswith("data.source")]
    command = ["tune", "--data", "builtin:shapes", "--out", str(tmp_path / "t"), "--retrain", "--base", "quickstart"]
    command += [*sets, "--set=schedule.epochs=1", "--set=schedule.warmup_epochs=0"]
    result = vitkit(*command, "--trials", "2")
    assert result.returncode == 0, result.stderr
    assert "2 trials; best" in result.stdout  # none pruned: the pruner never discards a trial's last epoch
    assert "optim.lr" in result.stdout  # the importance table, ranked from two trials
    assert "from 2 finished trials: a first ranking, firmer after a few dozen" in " ".join(result.stdout.split())
    unranked = " ".join(result.stdout.split()).split("not varied yet, so not ranked: ")[1]
    assert unranked.startswith("optim.weight_decay, model.drop_path_rate")  # the two trials moved only the lr
    winner = result.stdout.split("the winner:")[1]  # the base recipe itself, or a margin over it with its noise
    assert "keep it" in winner or "held-out images" in winner
    assert "times the base recipe's own trial" in winner  # what the search cost
    assert f"best recipe: {tmp_path / 't' / 'best.yaml'}" in result.stdout.replace("\n", "")
    [final] = (tmp_path / "t").glob("final-trial-*")  # the winner, trained on the whole training split
    assert recipe_from_yaml_file(final / "recipe.yaml").data.holdout is None
    summary = (final / "summary.json").read_bytes()
    again = vitkit(*command, "--trials", "1")  # a new winner is trained beside the first, or the first is found
    assert again.returncode == 0, again.stderr
    finals = sorted((tmp_path / "t").glob("final-trial-*"))
    assert final in finals and len(finals) <= 2 and all((f / "summary.json").is_file() for f in finals)
    assert (final / "summary.json").read_bytes() == summary  # never trained over
    if finals == [final]:
        assert f"already retrained: {final}" in again.stdout.replace("\n", "")


def test_processes_started_together_share_one_study(tmp_path: Path):
    """One process per GPU, all started at once on one folder (the folder already made, empty): SQLite's tables
    are created once, the base recipe is queued once, and each process runs its own trial."""
    out = tmp_path / "shared"
    out.mkdir()  # an empty folder is taken as new
    sets = [f"--set={o}" for o in TINY_OVERRIDES if not o.startswith("data.source")]
    command = [sys.executable, "-m", "vitkit", "tune", "--data", "builtin:shapes", "--out", str(out), "--trials", "1"]
    command += ["--base", "quickstart", *sets, "--set=schedule.epochs=1", "--set=schedule.warmup_epochs=0"]
    env = {**os.environ, "COLUMNS": "200"}
    processes = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    study = optuna.load_study(study_name="vitkit", storage=f"sqlite:///{out / 'study.db'}")
    base = base_values(tiny_recipe("schedule.epochs=1", "schedule.warmup_epochs=0"))
    ran = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]
    assert len(ran) == 2 and sum(t.params == base for t in study.trials) == 1
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-0000", "trial-0001"]
