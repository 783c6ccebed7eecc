"""A convolutional stem for ViTs trained from scratch on small data (Xiao et al. 2021, "Early Convolutions Help
Transformers See Better"): stride-2 3x3 convolutions with BatchNorm and ReLU in place of the single patchify
convolution. The tokens are the same (one per patch), so everything after the embedding is unchanged; the stem
adds about 20k parameters to a 64-wide ViT at patch 4 and gives the transformer local features it would otherwise
need much data for."""

from __future__ import annotations

from typing import Any

from timm.layers import PatchEmbed, to_2tuple
from torch import nn


def stem_layers(in_chans: int, embed_dim: int, patch_size: int) -> nn.Sequential:
    """Stride-2 3x3 conv-BN-ReLU stages while 2 divides what is left of the patch, channels doubling up to
    embed_dim (24-48-96-192 for a 192-wide ViT at patch 16, as in the paper), then one convolution to embed_dim
    whose kernel and stride cover the rest of the patch (a 1x1 when the patch is a power of two)."""
    halvings = 0
    while patch_size % 2 ** (halvings + 1) == 0:
        halvings += 1
    layers: list[nn.Module] = []
    channels = in_chans
    for stage in range(halvings):
        out = max(8, embed_dim // 2 ** (halvings - 1 - stage))
        layers += [nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
        channels = out
    rest = patch_size // 2**halvings
    layers.append(nn.Conv2d(channels, embed_dim, kernel_size=rest, stride=rest))
    return nn.Sequential(*layers)


class ConvStemEmbed(PatchEmbed):
    """timm's PatchEmbed (same grid, token count and checks) whose projection is a convolutional stem."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proj = stem_layers(self.proj.in_channels, self.proj.out_channels, self.patch_size[0])  # type: ignore[assignment]

    def set_input_size(self, img_size: Any = None, patch_size: Any = None) -> None:
        """A new image size keeps the stem (timm then resamples the position embedding); a new patch size would
        need a different stem, so it is refused rather than silently resampled into a patchify kernel."""
        if patch_size is not None and to_2tuple(patch_size) != self.patch_size:
            raise ValueError("a convolutional stem's patch size is fixed when the model is built")
        super().set_input_size(img_size=img_size)
