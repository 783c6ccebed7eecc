"""Every shipped recipe runs end to end in smoke mode: its own tricks, a tiny model, tiny data, a few steps; and
its first losses match the ones recorded in recorded_losses.json, so a change that alters the numerics of any
recipe (a refactor of the loop, a new default) is caught.

The losses are recorded on CPU in fp32 with --deterministic. After an intended change of the numerics, record them
again with: VITKIT_RECORD_LOSSES=1 .venv/bin/python -m pytest tests/e2e/test_recipe_smoke.py
"""

import json
import math
import os
from pathlib import Path

import pytest
import timm
import torch
from rich.console import Console
from safetensors.torch import save_file

from tests.conftest import TINY_OVERRIDES, save_tiny_pretrained
from vitkit.config import load_recipe, shipped_recipes
from vitkit.train.logging import read_metrics
from vitkit.train.loop import train

# Only the size of the model and data changes; every augmentation, mixing, regularisation and EMA setting of
# the recipe stays as shipped (repeated augmentation included).
SMOKE = [o for o in TINY_OVERRIDES if not o.startswith("augment.")] + ["train.max_updates=4", "schedule.epochs=2"]
SMOKE += ["train.log_every=1", "train.deterministic=true"]
RECORDED = Path(__file__).with_name("recorded_losses.json")
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
        torch.manual_seed(0)  # the same teacher whatever ran before
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
        assert len(steps) == 4 and all(math.isfinite(s["loss"]) and s["loss"] > 0 for s in steps)
    losses = {
        "train": [s.get("loss", s.get("train_loss")) for s in steps],
        "val_loss": result.summary["final"]["val_loss"],
    }
    if os.environ.get("VITKIT_RECORD_LOSSES"):
        recorded = json.loads(RECORDED.read_text()) if RECORDED.exists() else {}
        RECORDED.write_text(json.dumps({**recorded, name: losses}, indent=1, sort_keys=True) + "\n")
    expected = json.loads(RECORDED.read_text())[name]
    assert losses["train"] == pytest.approx(expected["train"], rel=1e-5)
    assert losses["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-5)
    assert ("ema_val_loss" in result.summary["final"]) == shipped.ema.enabled
    assert ("val_top1_dist_head" in result.summary["final"]) == shipped.model.name.startswith("deit_tiny_distilled")
