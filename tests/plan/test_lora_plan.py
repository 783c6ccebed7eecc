"""The LoRA calculator against published and hand-counted figures."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from vitkit.errors import VitkitError
from vitkit.plan.lora import parse_targets, plan_lora, rank_sweep


def test_it_reproduces_the_peft_image_classification_guide():
    """PEFT's ViT guide: ViT-B/16, r=16 on query and value, 101 classes -> 667,493 trainable of 86,543,818."""
    plan = plan_lora("vit_base_patch16_224", 16, 16, ["q", "v"], 101)
    assert (plan.trainable, plan.total) == (667_493, 86_543_818)
    assert plan.adapter == 12 * 2 * 16 * (768 + 768)  # each block: A (r x 768) and B (768 x r) on q and on v
    assert plan.trainable - plan.adapter == 768 * 101 + 101  # the head trains too


@pytest.mark.parametrize(
    ("model", "dim", "hidden", "depth", "rank", "targets"),
    [
        ("vit_small_patch16_224", 384, 1536, 12, 8, ["q", "v", "fc1"]),
        ("deit_tiny_patch16_224", 192, 768, 12, 4, ["q", "k", "v", "proj", "fc2"]),
        ("vit_base_patch32_224", 768, 3072, 12, 32, ["fc1", "fc2"]),
    ],
)
def test_adapter_counts_equal_the_hand_formula(model, dim, hidden, depth, rank, targets):
    """r x (in + out) per adapted Linear: q/k/v/proj are dim -> dim, fc1 dim -> hidden, fc2 hidden -> dim."""
    shapes = {
        "q": (dim, dim),
        "k": (dim, dim),
        "v": (dim, dim),
        "proj": (dim, dim),
        "fc1": (dim, hidden),
        "fc2": (hidden, dim),
    }
    plan = plan_lora(model, rank, rank, targets, 7)
    assert plan.adapter == depth * sum(rank * sum(shapes[t]) for t in targets)
    assert plan.trainable == plan.adapter + dim * 7 + 7


def test_file_size_is_the_safetensors_of_adapters_and_head():
    """The checkpoint stores adapters and head in fp32: 4 bytes each plus safetensors' JSON header."""
    plan = plan_lora("deit_tiny_patch16_224", 8, 16, ["q", "v"], 10)
    data = 4 * plan.trainable
    assert data < plan.file_bytes < data + 64 * 1024
    assert len(save({"x": torch.zeros(plan.trainable)})) < plan.file_bytes  # one tensor per adapter: a longer header


def test_memory_saved_against_full_fine_tuning_by_hand():
    """Full: 16 bytes per parameter (fp32 weight, gradient, two AdamW moments). LoRA: 4 bytes for everything held
    plus 12 for each trainable one."""
    plan = plan_lora("vit_small_patch16_224", 8, 16, ["q", "v"], 10)
    full = 16 * plan.base
    lora = 4 * plan.total + 12 * plan.trainable
    assert plan.saved_bytes == full - lora and plan.saved_bytes > 0.9 * 12 * plan.base


def test_rank_sweep_keeps_alpha_over_r_and_grows_linearly():
    plans = rank_sweep("deit_tiny_patch16_224", [4, 8, 16], 2.0, ["q", "v"], 10)
    assert [(p.rank, p.alpha) for p in plans] == [(4, 8), (8, 16), (16, 32)]
    assert plans[2].adapter == 2 * plans[1].adapter == 4 * plans[0].adapter


def test_bad_targets_and_models_are_named():
    assert parse_targets("qkv,fc1") == ["q", "k", "v", "fc1"]
    with pytest.raises(VitkitError, match="--targets q,mlp: LoRA can target q, k, v, proj, fc1, fc2"):
        parse_targets("q,mlp")
    with pytest.raises(VitkitError, match="--model vit_huge_typo: not a timm model name"):
        plan_lora("vit_huge_typo", 8, 16, ["q"], 10)
