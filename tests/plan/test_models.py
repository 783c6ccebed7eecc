"""`vitkit models`: counts on the meta device against real models and hand formulas, the shipped top-1 table,
selection and the recommendation by data size."""

from __future__ import annotations

import timm

from tests.e2e.test_cli import vitkit
from vitkit.plan.models import (
    Candidate,
    candidates,
    meta_cost,
    parse_count,
    published,
    recommend,
    select,
)


def test_meta_parameters_equal_the_real_models():
    for arch in ("vit_tiny_patch16_224", "deit_small_patch16_224"):
        real = sum(p.numel() for p in timm.create_model(arch).parameters())
        assert meta_cost(arch, 224)[0] == real


def vit_flops(size: int, patch: int, d: int, depth: int, classes: int = 1000) -> int:
    """Multiply-adds x 2 of a ViT forward pass, by hand."""
    n = (size // patch) ** 2 + 1  # patches and the class token
    embed = 2 * (n - 1) * (3 * patch * patch) * d
    block = 2 * n * d * 3 * d + 2 * n * n * d * 2 + 2 * n * d * d + 2 * n * d * 4 * d * 2  # qkv, attention, proj, MLP
    return embed + depth * block + 2 * d * classes


def test_meta_flops_equal_a_hand_count_for_a_small_vit():
    _, flops = meta_cost("vit_tiny_patch16_224", 32, patch_size=8, embed_dim=32, depth=2, num_heads=2)
    assert flops == vit_flops(32, 8, 32, 2)


def test_the_shipped_table_is_timms():
    rows = {r["model"]: r for r in published()}
    assert rows["vit_base_patch16_224.augreg2_in21k_ft_in1k"]["top1"] == 85.108
    assert rows["deit_tiny_patch16_224.fb_in1k"]["img_size"] == 224
    assert len(rows) >= 30 and all(0 < r["top1"] < 100 for r in rows.values())


def test_parse_count():
    assert parse_count("30M") == 30_000_000 and parse_count("300k") == 300_000 and parse_count("2e7") == 20_000_000


def _c(name: str, params: float, top1: float | None, family: str = "ViT") -> Candidate:
    return Candidate(name, family, int(params), int(params * 10), top1, 224 if top1 else None)


def test_selection_keeps_the_budget_and_orders_by_top1():
    found = [_c("a.in21k", 22e6, 81.0), _c("b.in1k", 86e6, 85.0), _c("c.in1k", 5e6, 72.0), _c("scratch", 5e6, None)]
    chosen = select(found, max_params=30_000_000, measure=False)
    assert [c.name for c in chosen] == ["a.in21k", "c.in1k", "scratch"]
    assert [c.name for c in select(found, top=1, measure=False)] == ["b.in1k"]


def test_recommendation_follows_the_data_size():
    found = [_c("vit_small.augreg_in21k_ft_in1k", 22e6, 81.4), _c("vit_base.augreg_in1k", 86e6, 79.2)]
    small = " ".join(recommend(found, 800, 224))
    assert "vit_small.augreg_in21k_ft_in1k" in small and "finetune-lora" in small and "too few" in small
    large = " ".join(recommend(found, 2_000_000, 224))
    assert "from scratch" in large and "viable" in large
    assert "--train-size" in " ".join(recommend(found, None, 224))
    tiny_images = " ".join(recommend(found, 5000, 32))
    assert "from scratch" in tiny_images and "32 px" in tiny_images


def test_patch_8_costs_about_four_times_patch_16():
    rows = {c.name: c for c in candidates(64) if "from scratch" in c.name}
    p16, p8 = (rows[f"vit_tiny (DeiT-Ti), patch {p}, from scratch"] for p in (16, 8))
    assert (p16.flops, p8.flops) == (vit_flops(64, 16, 192, 12), vit_flops(64, 8, 192, 12))
    assert p8.flops / p16.flops > 3.8  # 4x the patches (the class token and head dilute it a little)
    assert p8.params < p16.params  # a smaller patch embedding


def test_models_command_lists_models_within_the_budget(tmp_path):
    result = vitkit("models", "--max-params", "6M", "--top", "2", "--train-size", "1000", "--img-size", "224")
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "deit_tiny" in out or "vit_tiny" in out
    assert "vit_small" not in out and "vit_base" not in out  # over the 6M budget
    assert "too few" in out and "results-imagenet.csv" in out
