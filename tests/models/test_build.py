import numpy as np
import pytest
import torch

from vitkit.config.schema import ModelConfig, OptimConfig
from vitkit.errors import RecipeError
from vitkit.models.build import build_model, choose_attention, drop_path_rates, num_tokens, set_attention
from vitkit.train.optim import build_optimizer, no_decay_parameter_names

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2}


def test_overrides_reach_timm():
    model = build_model(ModelConfig(**TINY), num_classes=7)
    assert model.embed_dim == 32 and len(model.blocks) == 4 and model.blocks[0].attn.num_heads == 2
    assert model.num_classes == 7 and num_tokens(model) == 16 + 1
    model8 = build_model(ModelConfig(**{**TINY, "patch_size": 8}), num_classes=7)
    assert num_tokens(model8) == 4 + 1


def test_stochastic_depth_is_linear_over_blocks():
    model = build_model(ModelConfig(**TINY, drop_path_rate=0.3), num_classes=3)
    # timm (as DeiT): block l of L gets l / (L - 1) x rate, from 0 at the first to the full rate at the last.
    np.testing.assert_allclose(drop_path_rates(model), [0.0, 0.1, 0.2, 0.3], atol=1e-7)


def test_dropout_rates_are_wired():
    model = build_model(ModelConfig(**TINY, drop_rate=0.2, attn_drop_rate=0.1), num_classes=3)
    assert model.blocks[0].attn.attn_drop.p == pytest.approx(0.1)
    assert model.blocks[0].mlp.drop1.p == pytest.approx(0.2)
    assert model.head_drop.p == pytest.approx(0.2)


def test_math_and_fused_attention_give_the_same_outputs():
    torch.manual_seed(0)
    model = build_model(ModelConfig(**TINY), num_classes=3).eval()
    x = torch.randn(2, 3, 16, 16)
    assert set_attention(model, "math") == 4
    math_out = model(x)
    set_attention(model, "fused")
    torch.testing.assert_close(model(x), math_out, atol=1e-5, rtol=1e-5)


def test_attention_choice_rule():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert choose_attention("auto", cpu, "fp32", 65) == "fused"
    assert choose_attention("auto", cpu, "bf16", 65) == "math"
    assert choose_attention("auto", cpu, "bf16", 1025) == "fused"
    assert choose_attention("auto", gpu, "bf16", 65) == "fused"
    assert choose_attention("math", gpu, "bf16", 65) == "math"


def test_unknown_model_name_is_a_recipe_error():
    with pytest.raises(RecipeError, match="timm has no model 'vit_tinyy'"):
        build_model(ModelConfig(name="vit_tinyy"), num_classes=3)


def test_weight_decay_skips_norms_biases_and_tokens():
    model = build_model(ModelConfig(**TINY), num_classes=3)
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.05), lr=1e-3)
    no_decay = no_decay_parameter_names(model, optimizer)
    assert {"pos_embed", "cls_token", "blocks.0.norm1.weight", "blocks.0.attn.qkv.bias", "head.bias"} <= no_decay
    decayed = {n for n, _ in model.named_parameters()} - no_decay
    assert {"blocks.0.attn.qkv.weight", "patch_embed.proj.weight", "head.weight"} <= decayed
    assert all(p.ndim > 1 for n, p in model.named_parameters() if n in decayed)
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.05}
    adamw = optimizer.param_groups[0]
    assert adamw["betas"] == (0.9, 0.999) and adamw["eps"] == 1e-8


def test_distilled_deit_tokens_get_no_decay():
    model = build_model(ModelConfig(name="deit_tiny_distilled_patch16_224", **TINY), num_classes=3)
    optimizer = build_optimizer(model, OptimConfig(), lr=1e-3)
    assert {"dist_token", "cls_token", "pos_embed"} <= no_decay_parameter_names(model, optimizer)
    assert num_tokens(model) == 16 + 2


def test_swin_rejects_vit_only_overrides_clearly():
    with pytest.raises(RecipeError, match="does not accept"):
        build_model(ModelConfig(name="swin_tiny_patch4_window7_224", img_size=32, depth=2), num_classes=3)


def test_cnn_baseline_builds_with_extra_kwargs_and_ignores_vit_only_settings():
    cfg = ModelConfig(name="resnet10t", img_size=28, drop_path_rate=0.05, kwargs={"channels": [24, 48, 96, 192]})
    model = build_model(cfg, num_classes=10)
    assert model.num_classes == 10 and model.layer4[0].conv1.out_channels == 192
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)
    with pytest.raises(RecipeError, match="attn_drop_rate"):
        build_model(ModelConfig(name="resnet10t", attn_drop_rate=0.1), num_classes=3)


FAMILIES = [
    ModelConfig(name="vit_tiny_patch16_224", **TINY),
    ModelConfig(name="deit_tiny_distilled_patch16_224", **TINY),
    ModelConfig(
        name="swin_tiny_patch4_window7_224",
        img_size=28,
        patch_size=4,
        embed_dim=16,
        kwargs={"depths": (1, 1), "num_heads": (1, 2), "window_size": 7},
    ),
]


@pytest.mark.parametrize("cfg", FAMILIES, ids=lambda c: c.name.split("_")[0])
def test_model_family_contract(cfg: ModelConfig):
    """What the loop relies on, for every supported family: logits shape, attention switch, decay groups, EMA copy."""
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=5)
    x = torch.randn(2, 3, cfg.img_size, cfg.img_size)
    model.train()
    logits = model(x)
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert set_attention(model, "math") > 0
    optimizer = build_optimizer(model, OptimConfig(), lr=1e-3)
    no_decay = no_decay_parameter_names(model, optimizer)
    assert any("norm" in n for n in no_decay) and all(not n.endswith("qkv.weight") for n in no_decay)


def test_gradient_checkpointing_keeps_outputs_and_gradients():
    torch.manual_seed(0)
    plain = build_model(ModelConfig(**TINY), num_classes=3)
    ckpt = build_model(ModelConfig(**TINY, grad_checkpointing=True), num_classes=3)
    ckpt.load_state_dict(plain.state_dict())
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    x = torch.randn(2, 3, 16, 16)
    plain(x).sum().backward()
    ckpt(x).sum().backward()
    torch.testing.assert_close(ckpt.blocks[0].attn.qkv.weight.grad, plain.blocks[0].attn.qkv.weight.grad)
