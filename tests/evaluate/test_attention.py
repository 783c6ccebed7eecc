"""Attention capture and attention-quality metrics against hand-computed cases and timm's unfused path."""

import math

import pytest
import torch

from tests.conftest import tiny_vit
from vitkit.evaluate.attention import (
    attention_entropy,
    attention_flags,
    attention_modules,
    attention_rollout,
    capture_attention,
    head_diversity,
    rollout_to_patches,
)


def test_entropy_is_log_n_for_uniform_and_zero_for_one_hot_attention():
    n = 17
    uniform = torch.full((2, 3, n, n), 1 / n)
    one_hot = torch.eye(n).expand(2, 3, n, n)
    torch.testing.assert_close(attention_entropy(uniform), torch.full((3,), math.log(n)))
    torch.testing.assert_close(attention_entropy(one_hot), torch.zeros(3), atol=1e-6, rtol=0)


def test_head_diversity_is_zero_for_identical_heads_and_near_one_for_orthogonal_ones():
    heads, n = 16, 32
    same = torch.softmax(torch.randn(1, 1, n, n), dim=-1).expand(2, heads, n, n)
    assert head_diversity(same) == pytest.approx(0.0, abs=1e-6)
    # each head attends to its own pair of keys: disjoint supports, so every map is orthogonal to the others
    orthogonal = torch.zeros(2, heads, n, n)
    for h in range(heads):
        orthogonal[:, h, :, 2 * h : 2 * h + 2] = 0.5
    assert head_diversity(orthogonal) == pytest.approx(1 - 1 / heads)  # the formula's value: 0.9375 for 16 heads


def test_rollout_of_identity_attention_is_the_identity():
    eye = torch.eye(10).expand(3, 4, 10, 10)
    torch.testing.assert_close(attention_rollout([eye, eye, eye]), torch.eye(10).expand(3, 10, 10))


def test_rollout_keeps_rows_stochastic_and_reads_the_class_token_row_over_patches():
    maps = [torch.softmax(torch.randn(2, 3, 6, 6), dim=-1) for _ in range(3)]
    rollout = attention_rollout(maps)
    torch.testing.assert_close(rollout.sum(dim=-1), torch.ones(2, 6))
    patches = rollout_to_patches(rollout, prefix_tokens=2, has_class_token=True)  # class + distillation token
    torch.testing.assert_close(patches, rollout[:, 0, 2:])
    pooled = rollout_to_patches(rollout, prefix_tokens=0, has_class_token=False)
    torch.testing.assert_close(pooled, rollout.mean(dim=1))


def test_flags_collapse_needs_low_entropy_and_low_diversity_and_uniform_is_per_head():
    log_n = math.log(17)
    entropy = [torch.tensor([0.01, 0.02]), torch.tensor([0.01, 0.02]), torch.tensor([0.99, 0.5]) * log_n]
    collapsed, uniform = attention_flags(entropy, [0.01, 0.5, 0.3], tokens=17)
    assert collapsed == [0]  # layer 1 has low entropy but diverse heads
    assert uniform == [[2, 0]]


def _reference_maps(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """timm's own unfused path: the probabilities are the input of attn_drop."""
    maps: list[torch.Tensor] = []
    handles = []
    for module in attention_modules(model):
        module.fused_attn = False
        handles.append(module.attn_drop.register_forward_hook(lambda m, i, o: maps.append(i[0].detach().clone())))
    with torch.no_grad():
        logits = model(x)
    for handle in handles:
        handle.remove()
    for module in attention_modules(model):
        module.fused_attn = True
    return logits, maps


@pytest.mark.parametrize(
    ("name", "kwargs", "prefix"),
    [
        ("vit_tiny_patch16_224", {}, 1),
        ("vit_tiny_patch16_224", {"reg_tokens": 4}, 5),  # register tokens
        ("deit_tiny_distilled_patch16_224", {}, 2),  # class and distillation tokens
        ("vit_tiny_patch16_224", {"qk_norm": True}, 1),  # q/k norms are applied before the scores
    ],
)
def test_capture_leaves_logits_unchanged_and_matches_unfused_attention(name, kwargs, prefix):
    model = tiny_vit(5, name=name, **kwargs)
    assert all(m.fused_attn for m in attention_modules(model))
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        plain = model(x)
        with capture_attention(model) as maps:
            captured_logits = model(x)
    torch.testing.assert_close(captured_logits, plain, atol=1e-6, rtol=0)
    reference_logits, reference = _reference_maps(model, x)
    torch.testing.assert_close(reference_logits, plain, atol=1e-5, rtol=0)
    assert len(maps) == len(reference) == 2
    assert maps[0].shape == (3, 2, 16 + prefix, 16 + prefix) and model.num_prefix_tokens == prefix
    for ours, theirs in zip(maps, reference, strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    with torch.no_grad():
        model(x)
    assert len(maps) == 2  # hooks are removed on exit
