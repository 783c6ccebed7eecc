"""The local MLP: which tokens it mixes, in which orientation, and how the builder wires and refuses it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vitkit.config.schema import ModelConfig
from vitkit.errors import RecipeError
from vitkit.models.build import build_model
from vitkit.models.local import LocalMlp

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def mlp(seed: int = 0) -> LocalMlp:
    torch.manual_seed(seed)
    return LocalMlp(4, 8).eval()


def test_a_patch_changes_only_its_3x3_neighbourhood_and_never_the_class_token():
    layer = mlp()
    x = torch.randn(1, 1 + 16, 4)  # a class token and a 4x4 grid
    moved = x.clone()
    moved[0, 1 + 1 * 4 + 2] += 1.0  # the patch at row 1, column 2
    changed = (layer(moved) - layer(x)).abs().amax(-1)[0] > 1e-7
    neighbours = {1 + r * 4 + c for r in (0, 1, 2) for c in (1, 2, 3)}
    assert set(torch.nonzero(changed).flatten().tolist()) == neighbours


def test_the_class_token_goes_through_the_two_linear_layers_only():
    layer = mlp()
    x = torch.randn(2, 1 + 9, 4)
    hidden = F.gelu(F.gelu(x[:, 0] @ layer.fc1.weight.T + layer.fc1.bias))
    expected = hidden @ layer.fc2.weight.T + layer.fc2.bias
    torch.testing.assert_close(layer(x)[:, 0], expected)


def test_the_grid_is_read_row_by_row():
    """A kernel that reads the pixel above: the output at (r, c) is the hidden value at (r - 1, c), zero on row 0."""
    layer = mlp()
    layer.num_prefix_tokens = 3
    with torch.no_grad():
        layer.local.weight.zero_()
        layer.local.weight[:, 0, 0, 1] = 1.0
        layer.local.bias.zero_()
    x = torch.randn(1, 3 + 9, 4)  # a 3x3 grid after three prefix tokens (class, distillation, register)
    hidden = F.gelu(x[0, 3:] @ layer.fc1.weight.T + layer.fc1.bias).reshape(3, 3, 8)
    above = torch.cat([torch.zeros(1, 3, 8), hidden[:-1]]).reshape(9, 8)
    expected = F.gelu(above) @ layer.fc2.weight.T + layer.fc2.bias
    torch.testing.assert_close(layer(x)[0, 3:], expected)


def test_tokens_that_are_not_a_square_grid_are_refused():
    with pytest.raises(ValueError, match="square image; got 29 patch tokens"):
        mlp()(torch.randn(1, 30, 4))  # a class token and 29 patches


def test_build_model_puts_a_local_mlp_in_every_block():
    model = build_model(ModelConfig(**TINY, mlp="local"), num_classes=3)
    assert [type(b.mlp) for b in model.blocks] == [LocalMlp, LocalMlp]
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    pooled = build_model(ModelConfig(**TINY, mlp="local", kwargs={"class_token": False, "global_pool": "avg"}), 3)
    assert {b.mlp.num_prefix_tokens for b in pooled.blocks} == {0}  # no class token: all 16 tokens are patches
    assert pooled(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    plain = build_model(ModelConfig(**TINY), num_classes=3)
    extra = sum(p.numel() for p in model.parameters()) - sum(p.numel() for p in plain.parameters())
    assert extra == 2 * (128 * 9 + 128)  # one depthwise 3x3 kernel and bias per hidden channel, per block


OWN_LAYERS = [
    ({"stem": "conv"}, r"model\.stem=conv: 'resnet10t' has no patch embedding", r"Set model\.stem=patch to fine-tune"),
    ({"mlp": "local"}, r"model\.mlp=local: 'resnet10t' has no ViT block MLP", r"Set model\.mlp=mlp to fine-tune"),
]


@pytest.mark.parametrize(("layer", "not_a_vit", "pretrained"), OWN_LAYERS, ids=["conv-stem", "local-mlp"])
def test_vitkits_own_layers_are_refused_off_the_vit_family_and_with_pretrained_weights(
    tmp_path, layer: dict[str, str], not_a_vit: str, pretrained: str
):
    from vitkit.models.pretrained import PretrainedWeights

    with pytest.raises(RecipeError, match=not_a_vit):
        build_model(ModelConfig(name="resnet10t", **layer), num_classes=3)
    weights = PretrainedWeights(source=str(tmp_path / "w.safetensors"), kind="file", architecture={})
    with pytest.raises(RecipeError, match=pretrained):
        build_model(ModelConfig(**TINY, **layer), num_classes=3, pretrained=weights)
