"""Every shipped recipe runs end to end in smoke mode: its own tricks, a tiny model, tiny data, a few steps."""

import math
from pathlib import Path

import pytest
from rich.console import Console

from tests.conftest import TINY_OVERRIDES, save_tiny_pretrained
from vitkit.config import load_recipe, shipped_recipes
from vitkit.train.logging import read_metrics
from vitkit.train.loop import train

# Only the size of the model and data changes; every augmentation, mixing, regularisation and EMA setting of
# the recipe stays as shipped (repeated augmentation included).
SMOKE = [o for o in TINY_OVERRIDES if not o.startswith("augment.")] + ["train.max_steps=4", "schedule.epochs=2"]


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_shipped_recipe_smoke_run(name: str, tmp_path: Path):
    shipped = load_recipe(name)
    smoke = list(SMOKE)
    if shipped.finetune.strategy != "full":  # fine-tuning recipes start from (tiny, test-made) pretrained weights
        weights, _ = save_tiny_pretrained(tmp_path / "pretrained.safetensors")
        smoke += [f"finetune.pretrained={weights}", "finetune.freeze_blocks=1"]
    recipe = load_recipe(name, smoke)
    assert recipe.augment == shipped.augment and recipe.ema == shipped.ema
    assert recipe.finetune.strategy == shipped.finetune.strategy
    result = train(recipe, tmp_path / name, console=Console(quiet=True))
    steps = read_metrics(tmp_path / name / "metrics.jsonl", "step")
    if shipped.finetune.cache_features:  # the head trains on cached features: per-epoch records only
        steps = read_metrics(tmp_path / name / "metrics.jsonl", "epoch")
        assert steps and all(math.isfinite(s["train_loss"]) and s["train_loss"] > 0 for s in steps)
    else:
        assert len(steps) == 2 and all(math.isfinite(s["loss"]) and s["loss"] > 0 for s in steps)
    assert 0.0 <= result.summary["final"]["val_top1"] <= 1.0
    assert ("ema_val_top1" in result.summary["final"]) == shipped.ema.enabled
