"""The evaluator plug-ins by name, and `--only` selection."""

from __future__ import annotations

from collections.abc import Callable

from vitkit.errors import VitkitError
from vitkit.evaluate.attention import AttentionEvaluator
from vitkit.evaluate.calibration import CalibrationEvaluator
from vitkit.evaluate.clinical import ClinicalEvaluator
from vitkit.evaluate.context import Evaluator
from vitkit.evaluate.efficiency import EfficiencyEvaluator
from vitkit.evaluate.fairness import FairnessEvaluator
from vitkit.evaluate.metrics import AccuracyEvaluator
from vitkit.evaluate.robustness import RobustnessEvaluator

EVALUATORS: dict[str, Callable[[], Evaluator]] = {
    "accuracy": AccuracyEvaluator,
    "clinical": ClinicalEvaluator,
    "calibration": CalibrationEvaluator,
    "attention": AttentionEvaluator,
    "robustness": RobustnessEvaluator,
    "fairness": FairnessEvaluator,
    "efficiency": EfficiencyEvaluator,
}


def training_end(task: str | None) -> tuple[str, ...]:
    """The short evaluation at the end of training: accuracy and calibration, and for binary and multi-label
    tasks the per-finding intervals and operating thresholds (which are then saved for the run)."""
    return ("accuracy", "calibration") if task in (None, "multiclass") else ("accuracy", "clinical", "calibration")


def select_evaluators(only: str | list[str] | tuple[str, ...] | None = None) -> list[Evaluator]:
    """All evaluators, or those named in `only` ("a,b" or a list), in the registry's order."""
    if only is None:
        return [make() for make in EVALUATORS.values()]
    names = [n.strip() for n in only.split(",")] if isinstance(only, str) else list(only)
    unknown = [n for n in names if n not in EVALUATORS]
    if unknown or not names:
        raise VitkitError(
            f"--only {','.join(names)}: unknown evaluator {unknown}. Choose from {', '.join(EVALUATORS)}."
        )
    return [make() for name, make in EVALUATORS.items() if name in names]
