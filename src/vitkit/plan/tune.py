"""`vitkit tune`: search trick strengths on the user's data within a budget, with Optuna.

Each trial is an ordinary vitkit run folder (OUT/trial-0007) of the base recipe with the trial's values, trained
with `data.holdout`: it validates on a seeded share of the training split, so the data's own validation split
(which the final model is judged on) is never seen while choosing. Optuna's TPE sampler proposes the values and
its Hyperband pruner stops trials whose per-epoch validation curve falls behind. The first trial is the base
recipe itself, so the search starts from it; the next two are the base recipe at twice and half its lr. The
study lives in OUT/study.db (SQLite): running the same command again continues it, and several processes (one
per GPU or machine sharing the folder) can run trials of one study at the same time.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console

from vitkit.config.loader import override_recipe, recipe_to_yaml
from vitkit.config.schema import Recipe
from vitkit.errors import VitkitError
from vitkit.files import write_atomically
from vitkit.run_list import flatten

MARKER = ".vitkit-tune"
STUDY = "vitkit"
# a trial's process records a heartbeat this often; one silent for STALE_AFTER_S was killed (SIGKILL, a lost
# machine): it is failed and its values are queued to run again
HEARTBEAT_S, STALE_AFTER_S = 60, 180


@dataclass(frozen=True)
class Knob:
    """One searched setting: a recipe field, its range and whether it is searched on a log scale."""

    field: str
    low: float
    high: float
    log: bool = False


# The trick strengths of the DeiT recipe, in the ranges the ablations and the DeiT paper explore.
SPACE = (
    Knob("optim.lr", 0.3, 3.0, log=True),  # a factor of the base recipe's lr
    Knob("optim.weight_decay", 0.005, 0.3, log=True),
    Knob("model.drop_path_rate", 0.0, 0.3),
    Knob("train.label_smoothing", 0.0, 0.3),
    Knob("augment.rrc_scale", 0.08, 1.0),  # the lower bound of RandomResizedCrop's area
    Knob("augment.randaugment", 0.0, 10.0),  # the magnitude m of rand-m{m}-mstd0.5-inc1; below 1: off
    Knob("augment.random_erasing", 0.0, 0.5),
    Knob("augment.mixup", 0.0, 1.0),
    Knob("augment.cutmix", 0.0, 1.0),
    Knob("augment.hflip", 0.0, 0.5),  # the probability of a horizontal flip: wrong where left and right differ
)


def require_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise VitkitError("vitkit tune needs Optuna: pip install 'vitkit[tune]'.") from None
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # vitkit prints each trial's outcome, failures with why
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, stale trials
    return optuna


def overrides_for(values: dict[str, float], base: Recipe) -> list[str]:
    """The trial's values as recipe overrides (`--set` form), relative to `base` where a knob is a factor."""
    out = []
    for name, value in values.items():
        if name == "optim.lr":
            out.append(f"optim.lr={base.optim.lr * value:.6g}")
        elif name == "augment.rrc_scale":
            out.append(f"augment.rrc_scale=[{value:.4g}, 1.0]")
        elif name == "augment.randaugment":
            out.append(
                "augment.randaugment=null" if value < 1 else f"augment.randaugment=rand-m{value:.0f}-mstd0.5-inc1"
            )
        else:
            out.append(f"{name}={value:.4g}")
    mixing = values.get("augment.mixup", 0) > 0 or values.get("augment.cutmix", 0) > 0
    if mixing and base.augment.mix_prob == 0:
        out.append("augment.mix_prob=1.0")
    return out


def base_values(base: Recipe) -> dict[str, float]:
    """The base recipe's own values in the search space, each clamped to its knob's range (a weight decay of 0
    is at the lowest searched, 0.005): the first trial, so the search starts from the recipe it is asked to
    improve and its winner never did worse than that recipe on the held-out images. A trial changes only the
    settings it moves away from these points (`trial_overrides`), so the first trial is the base recipe exactly."""
    magnitude = re.search(r"-m(\d+)", base.augment.randaugment or "")  # timm's spec: rand-m9-mstd0.5, rand-n2-m9
    raw = {
        "optim.lr": 1.0,
        "optim.weight_decay": base.optim.weight_decay,
        "model.drop_path_rate": base.model.drop_path_rate,
        "train.label_smoothing": base.train.label_smoothing,
        "augment.rrc_scale": base.augment.rrc_scale[0],
        "augment.randaugment": float(magnitude.group(1)) if magnitude else 0.0,
        "augment.random_erasing": base.augment.random_erasing,
        "augment.mixup": base.augment.mixup,
        "augment.cutmix": base.augment.cutmix,
        "augment.hflip": base.augment.hflip,
    }
    return {k.field: min(max(raw[k.field], k.low), k.high) for k in SPACE}


def first_points(base: Recipe) -> list[dict[str, float]]:
    """The trials every study starts with: the base recipe itself, then at twice and at half its lr, then with its
    flips turned off (or on, where it has none). The lr is the setting that most often decides a run, and a
    handful of TPE's first, random points in ten settings rarely beat the base: on the recipe grid, six trials of
    the base and then TPE's never beat vit-plain, and with the lr points the search found vit-plain's better lr on
    every cell. Flips are the one choice a recipe cannot make from image counts: they gain a point on photographs
    of things and garble text, digits and radiographs, where left and right differ."""
    start = base_values(base)
    flipped = {**start, "augment.hflip": 0.0 if start["augment.hflip"] > 0 else 0.5}
    return [start, {**start, "optim.lr": 2.0}, {**start, "optim.lr": 0.5}, flipped]


def startup_trials(trials: int | None) -> int:
    """How many trials TPE samples at random before it models the results: Optuna's 10, but a third of a smaller
    study, so that a study of six trials is not a random search. With the base recipe as the first trial, TPE's
    first proposals then stay near the better of the first few points."""
    return 10 if trials is None else min(10, max(2, trials // 3))


# Trials a study needs before it can improve on its base recipe: the four first points, then two of TPE's
SEARCH_TRIALS = 6


def budget_note(budget_seconds: float, base_seconds: float) -> str | None:
    """What to do when the --budget fits fewer than SEARCH_TRIALS runs of the base recipe (measured by its own
    trial): at about one run's compute, a search only spends epochs, and the base recipe trained for the whole
    budget scored higher than the search on 4 of the recipe grid's 5 cells (docs/advise.md)."""
    fits = budget_seconds / base_seconds
    if fits >= SEARCH_TRIALS:
        return None
    return (
        f"note: the base recipe's trial took {_duration(base_seconds)}, so the --budget fits about {fits:.1f} "
        f"such trials, fewer than the {SEARCH_TRIALS} a search needs to improve on it. Give it at least "
        f"{_duration(SEARCH_TRIALS * base_seconds)}, or train the base recipe for longer instead."
    )


def trial_overrides(values: dict[str, float], base: Recipe) -> list[str]:
    """The overrides of a trial at `values`: the settings it moves away from the base's point, so that a setting
    left there keeps the base's own value, also where that lies outside the searched range (no weight decay)."""
    start = base_values(base)
    return overrides_for({name: v for name, v in values.items() if v != start[name]}, base)


def suggest(trial: Any) -> dict[str, float]:
    return {k.field: trial.suggest_float(k.field, k.low, k.high, log=k.log) for k in SPACE}


ADVISED = "advised"  # the default --base: the advised recipe for the data


def advised_base(data: str, overrides: list[str]) -> tuple[Recipe, str]:
    """The advised recipe for `data` at the grid's long budget (`vitkit advise recipe --data DATA`) with
    `overrides`, and a line that says what it is. The data is read as `vitkit advise recipe` reads it (the whole
    training split, built-in data at 32 px), with the overrides' data fields (a data.root, built-in sizes)."""
    from vitkit.config.loader import load_recipe
    from vitkit.data.sources import recipe_splits
    from vitkit.plan.advise import advise_for_budget, profile_data

    reading = [o for o in overrides if o.startswith(("data.", "train.seed="))]
    probe = load_recipe("deit-tiny", [*reading, f"data.source={data}", "data.holdout=null", "model.img_size=32"])
    profile = profile_data(recipe_splits(probe))
    advice = advise_for_budget(profile)
    said = (
        f"base: the advised recipe for {data} ({profile.images:,} images: {advice.epochs} epochs, trick strength "
        f"{advice.strength}; vitkit advise recipe --data {data} shows each choice and its reason)"
    )
    recipe = load_recipe(advice.base, [*advice.overrides(), *overrides])
    return _batch_within_trials(recipe, profile.images, profile.classes), said


def _batch_within_trials(recipe: Recipe, images: int, classes: int) -> Recipe:
    """The advised batch fits the whole training split; a trial trains on what its holdout leaves (each class may
    round up its held-out share), so on a few dozen images the batch comes down to a power of two that fits."""
    trial_images = math.floor(images * (1 - (recipe.data.holdout or 0.0))) - classes
    batch = recipe.train.batch_size * recipe.train.accumulation_steps
    if trial_images < 2 or batch <= trial_images:
        return recipe
    fitting = 2 ** math.floor(math.log2(trial_images))
    return override_recipe(recipe, [f"train.batch_size={fitting}", "train.accumulation_steps=1"])


def check_limits(trials: int | None, budget_seconds: float | None) -> None:
    """A study needs a limit, and a limit that allows a trial."""
    if trials is None and budget_seconds is None:
        raise VitkitError("vitkit tune needs a limit: --trials N or --budget 2h (or both).")
    if trials is not None and trials < 1:
        raise VitkitError(f"--trials {trials}: give at least one trial and some time.")
    if budget_seconds is not None and budget_seconds <= 0:
        raise VitkitError(f"--budget of {budget_seconds:g} s: give at least one trial and some time.")


def check_tune_folder(out: Path) -> None:
    """A new or empty folder, or one `vitkit tune` made (its marker): nothing else is ever written into. (An empty
    one may also be another process's study a moment before its marker is written.)"""
    if out.exists() and not (out / MARKER).exists() and (not out.is_dir() or any(out.iterdir())):
        entries = sorted(p.name for p in out.iterdir())[:5] if out.is_dir() else []
        raise VitkitError(
            f"--out {out} exists and is not a vitkit tune folder (it holds {entries or 'a file'}). Choose a new "
            "folder; to continue a study, pass the folder vitkit tune made for it."
        )


def _metric(recipe: Recipe) -> str:
    return recipe.train.best_metric if recipe.train.best_metric != "auto" else "val_top1"


def check_same_base(out: Path, base: Recipe) -> None:
    """A study goes on only around the recipe it started from: its trials' values are relative to it (the lr as a
    factor of the base's), and TPE would model two searches as one."""
    saved = out / "base.yaml"
    if not saved.is_file():
        return
    before, now = (flatten(yaml.safe_load(text)) for text in (saved.read_text(), recipe_to_yaml(base)))
    differ = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    if differ:
        raise VitkitError(
            f"--out {out} holds a study around another recipe ({', '.join(differ[:4])} differ: see {saved}). "
            "Continue it with the same --base, --data, --holdout and --set, or choose a new --out."
        )


class _Objective:
    """One trial: train a run folder with the trial's values; report each epoch's validation score to the pruner."""

    def __init__(
        self, optuna: Any, base: Recipe, overrides: list[str], out: Path, console: Console, budget: float | None
    ) -> None:
        self.optuna, self.base, self.overrides, self.out, self.console = optuna, base, overrides, out, console
        self.budget = budget  # the --budget in seconds, to say early when it fits too few trials
        self.stopped_in: int | None = None  # the trial a SIGTERM or Ctrl-C stopped

    def __call__(self, trial: Any) -> float:
        from vitkit.train.faults import TrainingPreempted
        from vitkit.train.loop import train

        values = suggest(trial)
        holdout = f"data.holdout={self.base.data.holdout or 0.2}"
        sets = [*self.overrides, *trial_overrides(values, self.base), holdout]
        recipe = override_recipe(self.base, sets)
        run_dir = self.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir))
        trial.set_user_attr("overrides", sets)
        metric = _metric(recipe)
        minimise = metric == "val_loss"
        reported, pruned = [0], [False]
        is_base = values == base_values(self.base)  # never pruned: every winner is weighed against its score

        def should_stop(progress: Any) -> bool:
            new = progress.history[reported[0] :]
            reported[0] = len(progress.history)
            for record in new:
                scores = [record[k] for k in (metric, f"ema_{metric}") if k in record]
                if scores:
                    trial.report(min(scores) if minimise else max(scores), record["epoch"])
            if is_base or not new or new[-1]["epoch"] >= recipe.schedule.epochs:  # a finished trial counts in full
                return False
            pruned[0] = bool(trial.should_prune())
            return pruned[0]

        started = time.perf_counter()
        try:
            result = train(recipe, run_dir, console=Console(quiet=True), should_stop=should_stop, evaluate=False)
        except TrainingPreempted:
            if not pruned[0]:  # a SIGTERM or Ctrl-C: the study stops, and these values run again when it goes on
                self.console.print(f"trial {trial.number}: stopped on request", highlight=False)
                self.stopped_in = trial.number
                trial.study.enqueue_trial(trial.params)
                trial.study.stop()
                return math.nan
            self.console.print(f"trial {trial.number}: pruned after epoch {reported[0]}", highlight=False)
            raise self.optuna.TrialPruned() from None
        except VitkitError as error:  # this trial's values (an lr that diverges): the study goes on without it
            self.console.print(f"trial {trial.number}: failed: {error}", highlight=False)
            trial.set_user_attr("error", str(error))
            return math.nan  # Optuna records the trial as failed, without a traceback
        best = float(result.summary["best"]["value"])
        split = json.loads((run_dir / "data_split.json").read_text())
        trial.set_user_attr("val_images", split["val_images"])  # how far its score can be trusted
        self.console.print(f"trial {trial.number}: {metric} {best:.4f}  ({run_dir.name})", highlight=False)
        if is_base and self.budget is not None:
            note = budget_note(self.budget, time.perf_counter() - started)
            if note:
                self.console.print(note, highlight=False)
        return best


@dataclass
class TuneResult:
    best_value: float
    best_overrides: list[str]
    best_values: dict[str, float]  # the winner's point in the search space (the lr as a factor of the base's)
    importances: dict[str, float]  # of the settings the finished trials varied
    trials: int
    pruned: int
    best_recipe: Path
    metric: str = "val_top1"
    base_value: float | None = None  # the base recipe's own trial, where it finished
    best_is_base: bool = False
    held_out: int | None = None  # the images the trials were validated on
    base_seconds: float | None = None  # the wall time of the base recipe's own trial, where it finished
    search_seconds: float = 0.0  # all trials' wall time together (pruned ones included)
    best_trial: int = 0  # the winner's trial number
    failed: int = 0  # trials that raised, or whose process was killed (their values are queued again)
    running: int = 0  # trials running in another process, or killed less than STALE_AFTER_S ago
    unvaried: list[str] = field(default_factory=list)  # settings every finished trial left at one value

    def counts(self) -> str:
        """`6 trials (2 pruned, 1 failed)`: the trials of the study and how those that did not finish ended."""
        ended = {"pruned": self.pruned, "failed": self.failed, "still running": self.running}
        detail = ", ".join(f"{n} {state}" for state, n in ended.items() if n)
        return f"{self.trials} trials" + (f" ({detail})" if detail else "")


def tune(
    base: Recipe,
    out: Path,
    *,
    trials: int | None = None,
    budget_seconds: float | None = None,
    overrides: list[str] | None = None,
    console: Console | None = None,
    pruner: Any = None,
) -> TuneResult:
    """Run (or continue) the study in `out`: up to `trials` more trials or until `budget_seconds` have passed."""
    optuna = require_optuna()
    console = console or Console()
    check_limits(trials, budget_seconds)
    from vitkit.data.sources import recipe_splits

    check_tune_folder(out)
    recipe_splits(base)  # every trial reads the same data: a wrong --data fails here, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    if not (out / MARKER).exists():
        (out / MARKER).write_text(json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S")}))
    study = _open_study(optuna, out, base, trials, pruner)
    objective = _Objective(optuna, base, overrides or [], out, console, budget_seconds)
    study.optimize(objective, n_trials=trials, timeout=budget_seconds)
    if objective.stopped_in is not None:
        from vitkit.train.faults import TrainingPreempted

        raise TrainingPreempted(
            f"the study in {out} stopped on request during trial {objective.stopped_in}. Continue it with the same "
            "command: that trial's values are queued to run again."
        )
    return summarise(optuna, study, base, out)


def _open_study(optuna: Any, out: Path, base: Recipe, trials: int | None, pruner: Any) -> Any:
    """The study in OUT/study.db around `base` (OUT/base.yaml), with its first points queued once. Creating
    SQLite's tables, queueing and writing the base are not atomic, so processes started together (one per GPU)
    take turns here under a file lock."""
    from filelock import FileLock

    with FileLock(out / ".study.lock"):
        check_same_base(out, base)
        write_atomically(out / "base.yaml", recipe_to_yaml(base))
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{(out / 'study.db').resolve()}",
            heartbeat_interval=HEARTBEAT_S,
            grace_period=STALE_AFTER_S,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2),
        )
        study = optuna.create_study(
            study_name=STUDY,
            storage=storage,
            load_if_exists=True,
            direction="minimize" if _metric(base) == "val_loss" else "maximize",
            sampler=optuna.samplers.TPESampler(seed=base.train.seed, n_startup_trials=startup_trials(trials)),
            pruner=pruner or optuna.pruners.HyperbandPruner(min_resource=1, max_resource=base.schedule.epochs),
        )
        optuna.storages.fail_stale_trials(study)  # trials of a killed process: failed, and queued to run again
        for point in first_points(base):  # once per study, also when resumed or shared
            study.enqueue_trial(point, skip_if_exists=True)
    return study


def summarise(optuna: Any, study: Any, base: Recipe, out: Path) -> TuneResult:
    """The best trial's recipe (OUT/best.yaml) and each knob's importance (Optuna's PED-ANOVA over
    the finished trials: how the best tenth's values differ from the rest's; all equal over a handful of trials)."""
    ran = [t for t in study.trials if t.state != optuna.trial.TrialState.WAITING]  # not the queued first points
    done = [t for t in ran if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        failed = [t for t in ran if "error" in t.user_attrs]
        errors = {t.user_attrs["error"] for t in failed}
        # every trial, whatever its values, failed the same way: more trials would too
        if len(failed) == len(ran) > 1 and len(errors) == 1:
            raise VitkitError(
                f"all {len(failed)} trials of the study in {out} failed with: {errors.pop()} Fix that with --set (or "
                "another --base) and run vitkit tune again with a new --out."
            )
        why = f" Trial {failed[-1].number} failed: {failed[-1].user_attrs['error']}" if failed else ""
        raise VitkitError(f"no trial of the study in {out} has finished yet: give it more --trials or --budget.{why}")
    best = study.best_trial
    importances = _importances(optuna, study) if len(done) > 1 else {}
    varied = varied_settings(optuna, study)
    chosen = [o for o in best.user_attrs["overrides"] if not o.startswith("data.holdout")]
    best_recipe = override_recipe(base, [*chosen, "data.holdout=null"])  # the winner trains on all of train
    path = out / "best.yaml"
    write_atomically(path, recipe_to_yaml(best_recipe))
    pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in ran)
    values = {k: float(v) for k, v in best.params.items()}
    overrides = best.user_attrs["overrides"]
    start_point = base_values(base)
    start = next((t for t in done if t.params == start_point), None)
    return TuneResult(
        best.value,
        overrides,
        values,
        importances,
        len(ran),
        pruned,
        path,
        metric=_metric(base),
        base_value=start.value if start else None,
        best_is_base=start is not None and start.number == best.number,
        held_out=best.user_attrs.get("val_images"),
        base_seconds=_seconds(start) if start else None,
        search_seconds=sum(_seconds(t) for t in ran),
        best_trial=best.number,
        failed=sum(t.state == optuna.trial.TrialState.FAIL for t in ran),
        running=sum(t.state == optuna.trial.TrialState.RUNNING for t in ran),
        unvaried=[name for name in best.params if name not in varied],
    )


def _importances(optuna: Any, study: Any) -> dict[str, float]:
    """Each varied setting's share of the importance; empty where the trials cannot tell them apart (too few, or
    tied: PED-ANOVA then rates every setting the same). A setting every finished trial left at one value (the first
    points vary only the lr and the flips) is left out: its share would be the evaluator's floor, not evidence."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = varied_settings(optuna, study)
    if not varied or len({t.value for t in done}) < 2:  # nothing moved, or every trial scored the same
        return {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its warning is the equal shares, which are left out here
        importances = dict(optuna.importance.get_param_importances(study, params=varied))
    return importances if len(varied) == 1 or len(set(importances.values())) > 1 else {}


def varied_settings(optuna: Any, study: Any) -> list[str]:
    """The settings that took more than one value over the study's finished trials, in the search space's order."""
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    names = dict.fromkeys(name for t in done for name in t.params)
    return [name for name in names if len({t.params.get(name) for t in done}) > 1]


def _seconds(trial: Any) -> float:
    """A trial's wall time (Optuna's duration); 0 for one still running."""
    return trial.duration.total_seconds() if trial.duration else 0.0


def search_cost(result: TuneResult) -> str:
    """What the search cost, in runs of the base recipe: with the winner's final run, the compute that would
    instead train the base recipe for that many times its epochs (which, at equal compute, scored higher than the
    search around the advisor's recipe on every cell of the recipe grid: docs/advise.md)."""
    spent = f"the search took {_duration(result.search_seconds)}"
    if not result.base_seconds:
        return spent + "."
    runs = result.search_seconds / result.base_seconds
    return (
        f"{spent}, {runs:.1f} times the base recipe's own trial ({_duration(result.base_seconds)}). With the "
        f"winner's final run, that compute would train the base recipe for about {runs + 1:.1f} times its epochs."
    )


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    return f"{minutes} min {secs:02d} s" if minutes else f"{secs} s"


def difference_noise(accuracy: float, images: int) -> float:
    """One standard error, in points, of the difference between two accuracies near `accuracy`, each measured on
    `images` held-out images (binomial errors, taken as independent)."""
    return 100 * math.sqrt(2 * accuracy * (1 - accuracy) / images)


def winner_margin(result: TuneResult) -> str:
    """The winner against the base recipe on the held-out images, and whether the margin is beyond the noise of
    so few images: on 200 images two recipes' accuracies near 80% differ by 4 points by chance alone."""
    if result.base_value is None:
        return "the base recipe's own trial has not finished: no margin to report."
    if result.best_is_base:
        return "the base recipe itself scored best on the held-out images: keep it."
    if result.metric == "val_loss":
        return f"val_loss {result.base_value - result.best_value:.4f} below the base recipe's own trial."
    points = 100 * (result.best_value - result.base_value)
    head = f"{points:+.1f} points over the base recipe's own trial"
    if not result.held_out or result.metric not in ("val_top1", "val_top5"):
        return head + "."
    noise = difference_noise(result.best_value, result.held_out)
    text = f"{head} on {result.held_out} held-out images, where one standard error of a difference is {noise:.1f}"
    if points >= 2 * noise:
        return text + " points: beyond chance."
    return text + (
        " points: it may be chance (the best of several trials more so). Hold out more images (--holdout) or keep "
        "the base recipe."
    )


def retrain(result: TuneResult, out: Path, console: Console) -> Path:
    """The winning recipe on the whole training split, validated on the data's own validation split, in
    OUT/final-trial-NNNN: each winner has its own run, so a later, better winner never replaces an earlier one's
    model. Asked again, the run is continued where it stopped, or left as it is once finished."""
    from vitkit.config.loader import recipe_from_yaml_file
    from vitkit.train.loop import train

    folder = out / f"final-trial-{result.best_trial:04d}"
    if (folder / "summary.json").is_file():
        console.print(f"the winner was already retrained: {folder}", highlight=False)
        return folder
    train(recipe_from_yaml_file(result.best_recipe), folder, console=console, resume="auto")
    return folder
