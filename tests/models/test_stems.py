import pytest
import torch
from torch import nn

from vitkit.config.schema import ModelConfig
from vitkit.models.build import build_model, num_tokens
from vitkit.models.stems import stem_layers

TINY = {"img_size": 16, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}


def convs(stem: nn.Sequential) -> list[tuple[int, int, int, int]]:
    """(in, out, kernel, stride) of each convolution."""
    return [(m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0]) for m in stem if isinstance(m, nn.Conv2d)]


def test_stem_matches_the_paper_at_patch_16():
    # Xiao et al. 2021, ViT-1GF: four stride-2 3x3 convs of 24, 48, 96, 192 channels, then a 1x1 to the width
    assert convs(stem_layers(3, 192, 16)) == [
        (3, 24, 3, 2),
        (24, 48, 3, 2),
        (48, 96, 3, 2),
        (96, 192, 3, 2),
        (192, 192, 1, 1),
    ]


def test_stem_covers_patches_that_are_not_powers_of_two():
    assert convs(stem_layers(3, 64, 4)) == [(3, 32, 3, 2), (32, 64, 3, 2), (64, 64, 1, 1)]
    assert convs(stem_layers(1, 64, 14)) == [(1, 64, 3, 2), (64, 64, 7, 7)]
    assert convs(stem_layers(3, 64, 7)) == [(3, 64, 7, 7)]


@pytest.mark.parametrize("patch", [2, 4, 8])
def test_conv_stem_gives_the_patchify_stems_tokens(patch: int):
    patchify = build_model(ModelConfig(**{**TINY, "patch_size": patch}), num_classes=5)
    conv = build_model(ModelConfig(**{**TINY, "patch_size": patch}, stem="conv"), num_classes=5)
    assert num_tokens(conv) == num_tokens(patchify) == (16 // patch) ** 2 + 1
    tokens = conv.patch_embed(torch.randn(3, 3, 16, 16))
    assert tokens.shape == (3, (16 // patch) ** 2, 32)
    assert conv(torch.randn(3, 3, 16, 16)).shape == (3, 5)


def test_a_conv_stem_model_takes_a_new_image_size_but_not_a_new_patch():
    model = build_model(ModelConfig(**TINY, stem="conv"), num_classes=3)
    model.set_input_size(img_size=32)  # timm resamples the position embedding; the stem is kept
    assert num_tokens(model) == 8 * 8 + 1 and model(torch.randn(1, 3, 32, 32)).shape == (1, 3)
    with pytest.raises(ValueError, match="patch size is fixed"):
        model.set_input_size(patch_size=8)


def test_conv_stem_trains_its_batchnorm_and_keeps_it_out_of_weight_decay():
    from vitkit.config.schema import OptimConfig
    from vitkit.train.optim import build_optimizer

    model = build_model(ModelConfig(**TINY, stem="conv"), num_classes=3)
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.05), lr=1e-3)
    decay_of = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    bn = next(m for m in model.patch_embed.modules() if isinstance(m, nn.BatchNorm2d))
    conv = next(m for m in model.patch_embed.modules() if isinstance(m, nn.Conv2d))
    assert decay_of[id(bn.weight)] == 0.0 and decay_of[id(bn.bias)] == 0.0
    assert decay_of[id(conv.weight)] == pytest.approx(0.05)
