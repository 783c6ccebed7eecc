"""Every shipped recipe runs end to end in smoke mode: its own tricks, a tiny model, tiny data, a few steps."""

import math
from pathlib import Path

import pytest
import timm
from rich.console import Console
from safetensors.torch import save_file

from tests.conftest import TINY_OVERRIDES, save_tiny_pretrained
from vitkit.config import load_recipe, shipped_recipes
from vitkit.train.logging import read_metrics
from vitkit.train.loop import train

# Only the size of the model and data changes; every augmentation, mixing, regularisation and EMA setting of
# the recipe stays as shipped (repeated augmentation included).
SMOKE = [o for o in TINY_OVERRIDES if not o.startswith("augment.")] + ["train.max_steps=4", "schedule.epochs=2"]
VIT_SHAPE = ("model.patch_size", "model.embed_dim", "model.depth", "model.num_heads")


@pytest.mark.parametrize("name", sorted(shipped_recipes()))
def test_shipped_recipe_smoke_run(name: str, tmp_path: Path):
    shipped = load_recipe(name)
    smoke = list(SMOKE)
    if shipped.finetune.strategy != "full":  # fine-tuning recipes start from (tiny, test-made) pretrained weights
        weights, _ = save_tiny_pretrained(tmp_path / "pretrained.safetensors")
        smoke += [f"finetune.pretrained={weights}", "finetune.freeze_blocks=1"]
    if not timm.models.get_pretrained_cfg(shipped.model.name).architecture.startswith(("vit", "deit")):
        smoke = [o for o in smoke if not o.startswith(VIT_SHAPE)]  # a CNN: only the image size shrinks
    if shipped.distill.type != "none":  # distillation recipes learn from a (tiny, test-made) CNN teacher
        teacher = timm.create_model("resnet10t", num_classes=10)
        save_file(teacher.state_dict(), str(tmp_path / "teacher.safetensors"))
        smoke += ["distill.teacher=resnet10t", f"distill.teacher_checkpoint={tmp_path / 'teacher.safetensors'}"]
    recipe = load_recipe(name, smoke)
    assert recipe.augment == shipped.augment and recipe.ema == shipped.ema
    assert recipe.finetune.strategy == shipped.finetune.strategy and recipe.distill.type == shipped.distill.type
    result = train(recipe, tmp_path / name, console=Console(quiet=True))
    steps = read_metrics(tmp_path / name / "metrics.jsonl", "step")
    if shipped.finetune.cache_features:  # the head trains on cached features: per-epoch records only
        steps = read_metrics(tmp_path / name / "metrics.jsonl", "epoch")
        assert steps and all(math.isfinite(s["train_loss"]) and s["train_loss"] > 0 for s in steps)
    else:
        assert len(steps) == 2 and all(math.isfinite(s["loss"]) and s["loss"] > 0 for s in steps)
    assert 0.0 <= result.summary["final"]["val_top1"] <= 1.0
    assert ("ema_val_top1" in result.summary["final"]) == shipped.ema.enabled
    assert ("val_top1_dist_head" in result.summary["final"]) == shipped.model.name.startswith("deit_tiny_distilled")
