"""Locality in the feed-forward layer (Li et al. 2021, "LocalViT"; Yuan et al. 2021, "CeiT"): a depthwise 3x3
convolution over the token grid between the MLP's two linear layers. Each block then mixes neighbouring patches,
the inductive bias a CNN has and a ViT trained from scratch on little data must otherwise learn."""

from __future__ import annotations

import math
from typing import Any

import torch
from timm.layers import Mlp
from torch import nn


class LocalMlp(Mlp):
    """timm's Mlp (fc1, activation, fc2) with a depthwise 3x3 convolution and a second activation after fc1.
    The first `num_prefix_tokens` tokens (class, distillation, registers; timm's default of one class token until
    the builder sets the model's count) pass the convolution unchanged; the rest must form a square grid, as the
    patches of a square image do."""

    num_prefix_tokens = 1

    def __init__(self, in_features: int, hidden_features: int | None = None, **kwargs: Any) -> None:
        super().__init__(in_features, hidden_features, **kwargs)
        weight = self.fc1.weight
        hidden = int(weight.shape[0])  # fc1 is a Linear (or a 1x1 Conv2d): its outputs are the hidden channels
        self.local = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, device=weight.device, dtype=weight.dtype)
        self.local_act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        x = self.local_act(self._convolve_grid(x))
        x = self.drop1(x)
        x = self.norm(x)
        return self.drop2(self.fc2(x))

    def _convolve_grid(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        prefix = self.num_prefix_tokens
        side = math.isqrt(n - prefix)
        if side * side != n - prefix:
            raise ValueError(f"LocalMlp needs the patches of a square image; got {n - prefix} patch tokens")
        patches = x[:, prefix:].transpose(1, 2).reshape(b, c, side, side)
        patches = self.local(patches).flatten(2).transpose(1, 2)
        return torch.cat([x[:, :prefix], patches], dim=1) if prefix else patches  # pooled models: no copy per step
