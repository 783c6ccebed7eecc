"""Every shipped recipe runs end to end in smoke mode: its own tricks, a tiny model, tiny data, a few steps."""

import math
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import TINY_OVERRIDES
from vitkit.config import load_recipe, shipped_recipes
from vitkit.train.logging import read_metrics
from vitkit.train.loop import train

# Only the size of the model and data changes; every augmentation, mixing, regularisation and EMA setting of
# the recipe stays as shipped (repeated augmentation included).
SMOKE = [o for o in TINY_OVERRIDES if not o.startswith("augment.")] + ["train.max_steps=4", "schedule.epochs=2"]


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_shipped_recipe_smoke_run(name: str, tmp_path: Path):
    shipped = load_recipe(name)
    recipe = load_recipe(name, SMOKE)
    assert recipe.augment == shipped.augment and recipe.ema == shipped.ema
    result = train(recipe, tmp_path / name, console=Console(quiet=True))
    steps = read_metrics(tmp_path / name / "metrics.jsonl", "step")
    assert len(steps) == 2 and all(math.isfinite(s["loss"]) and s["loss"] > 0 for s in steps)
    assert 0.0 <= result.summary["final"]["val_top1"] <= 1.0
    assert ("ema_val_top1" in result.summary["final"]) == shipped.ema.enabled
