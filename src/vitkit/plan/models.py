"""`vitkit models`: which ViT-family model to start from, for this data, budget and device.

Every candidate is a timm architecture with published ImageNet-1k weights. Its parameters and FLOPs are counted
from the model itself on the meta device (nothing is allocated, any input size), its published top-1 comes from
timm's own results table (shipped in plan/data/imagenet_top1.csv, with its source), and its latency is measured
here, at batch 1 on this machine. The recommendation follows the training-set size: a ViT lacks a CNN's
inductive biases, so small data needs pretrained weights (and few trainable parameters), and training from
scratch pays off only near ImageNet scale (DeiT trained on 1.28M images with strong augmentation).
"""

from __future__ import annotations

import csv
import re
import time
from dataclasses import dataclass
from importlib.resources import files
from typing import Any

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from vitkit.errors import VitkitError

TABLE_SOURCE = (
    "timm results/results-imagenet.csv (github.com/huggingface/pytorch-image-models, commit aa4b585, 2026-08-08): "
    "ImageNet-1k validation top-1 at each model's own resolution"
)
FAMILIES: tuple[tuple[str, str], ...] = (
    ("deit3_", "DeiT III"),
    ("deit_", "DeiT"),
    ("vit_", "ViT"),
    ("swin_", "Swin"),
    ("eva02_", "EVA-02"),
    ("beitv2_", "BEiT v2"),
)
SMALL_DATA, MEDIUM_DATA, LARGE_DATA = 2_000, 50_000, 500_000
FINETUNE_FAMILIES = ("ViT", "DeiT", "DeiT III", "Swin")  # fused qkv: vitkit's LoRA, layer decay and freezing fit


@dataclass
class Candidate:
    name: str  # timm name with the pretrained tag, or an architecture for training from scratch
    family: str
    params: int  # counted on the meta device
    flops: int  # one image at the asked size, multiply-add = 2
    top1: float | None = None  # published ImageNet-1k top-1 (None: trained from scratch on your data)
    top1_size: int | None = None  # the resolution the published top-1 was measured at
    latency_ms: float | None = None  # batch 1 on this machine

    @property
    def arch(self) -> str:
        return self.name.split(".")[0]

    @property
    def pretrained(self) -> bool:
        return self.top1 is not None

    @property
    def large_pretraining(self) -> bool:
        """Pretrained on ImageNet-21k/22k/12k (or by masked modelling) before ImageNet-1k: transfers better."""
        return bool(re.search(r"in21k|in22k|in12k|mim_", self.name))


def published() -> list[dict[str, Any]]:
    """The shipped rows of timm's results table: model, img_size, top1, top5, param_count_m."""
    with (files("vitkit.plan") / "data" / "imagenet_top1.csv").open() as fh:
        return [
            {**row, "img_size": int(row["img_size"]), "top1": float(row["top1"]), "top5": float(row["top5"])}
            for row in csv.DictReader(fh)
        ]


def family_of(arch: str) -> str:
    return next((name for prefix, name in FAMILIES if arch.startswith(prefix)), "other")


def meta_cost(arch: str, img_size: int, **kwargs: Any) -> tuple[int, int]:
    """(parameters, FLOPs of one image) of a timm architecture at `img_size`, on the meta device."""
    with torch.device("meta"):
        model = timm.create_model(arch, img_size=img_size, **kwargs)
        params = sum(p.numel() for p in model.parameters())
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, img_size, img_size))
    return params, int(counter.get_total_flops())


def latency_ms(arch: str, img_size: int, repeats: int = 3) -> float:
    """Median batch-1 forward time on this machine (CPU, fp32; random weights cost the same as trained ones)."""
    model = timm.create_model(arch, img_size=img_size).eval()
    image = torch.randn(1, 3, img_size, img_size)
    times = []
    with torch.inference_mode():
        model(image)  # warm-up
        for _ in range(repeats):
            start = time.perf_counter()
            model(image)
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2] * 1000


def candidates(img_size: int, pretrained_only: bool = False) -> list[Candidate]:
    """The published models (each at `img_size`) and, unless `pretrained_only`, DeiT-Ti at patch 16 and 8 to
    train from scratch; architectures timm cannot build at that size are left out."""
    found: list[Candidate] = []
    costs: dict[str, tuple[int, int]] = {}
    for row in published():
        arch = row["model"].split(".")[0]
        try:
            costs[arch] = costs.get(arch) or meta_cost(arch, img_size)
        except (AssertionError, RuntimeError, ValueError, TypeError):  # e.g. a window size that does not divide
            continue
        params, flops = costs[arch]
        found.append(Candidate(row["model"], family_of(arch), params, flops, row["top1"], row["img_size"]))
    if not pretrained_only:
        for patch in (16, 8):
            if img_size % patch == 0:
                params, flops = meta_cost("vit_tiny_patch16_224", img_size, patch_size=patch)
                found.append(Candidate(f"vit_tiny (DeiT-Ti), patch {patch}, from scratch", "ViT", params, flops))
    return found


def parse_count(text: str) -> int:
    """'30M', '5.7m', '300k', '2e7' or '22000000' as a number."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kKmMgGbB]?)\s*", text)
    if match is None:
        raise VitkitError(f"--max-params {text!r}: give a count like 30M, 300k or 22000000.")
    scale = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "b": 1e9}[match.group(2).lower()]
    return int(float(match.group(1)) * scale)


def select(
    found: list[Candidate],
    *,
    max_params: int | None = None,
    max_latency_ms: float | None = None,
    top: int = 10,
    measure: bool = True,
    img_size: int = 224,
) -> list[Candidate]:
    """The best `top` candidates by published top-1 (from-scratch rows last) within the parameter budget; with
    `measure`, each one's latency is measured here and those over `max_latency_ms` are dropped."""
    ranked = sorted(
        (c for c in found if max_params is None or c.params <= max_params),
        key=lambda c: (c.top1 is None, -(c.top1 or 0.0), c.params),
    )
    chosen: list[Candidate] = []
    measured: dict[str, float] = {}
    for c in ranked:
        if len(chosen) >= top:
            break
        if measure and c.pretrained:
            measured[c.arch] = measured.get(c.arch) or latency_ms(c.arch, img_size)
            c.latency_ms = measured[c.arch]
        if max_latency_ms is not None and c.latency_ms is not None and c.latency_ms > max_latency_ms:
            continue
        chosen.append(c)
    return chosen


def recommend(chosen: list[Candidate], train_size: int | None, img_size: int) -> list[str]:
    """What to start from and how to train it, with the reasons, for `train_size` training images."""
    pretrained = [c for c in chosen if c.pretrained and c.family in FINETUNE_FAMILIES]
    if not chosen:
        return ["No model fits these limits: raise --max-params or --max-latency-ms."]
    lines = []
    if train_size is None:
        lines.append("Pass --train-size N (your training images) for a recommendation fitted to your data.")
    elif train_size < LARGE_DATA and pretrained:
        small = [c for c in pretrained if c.large_pretraining and c.params <= 30e6] or pretrained
        pick = max(small if train_size < MEDIUM_DATA else pretrained, key=lambda c: c.top1 or 0.0)
        if train_size < SMALL_DATA:
            how = (
                f"{train_size:,} images are too few to train a ViT's attention from scratch: start from {pick.name} "
                "and train little (finetune-lora, or finetune-head for a linear probe first; vitkit advise freeze)"
            )
        elif train_size < MEDIUM_DATA:
            how = (
                f"with {train_size:,} images, fine-tune {pick.name} with finetune-lora (few trainable parameters, "
                "hard to overfit) or finetune-full with layer decay"
            )
        else:
            how = f"with {train_size:,} images, fully fine-tune {pick.name} (finetune-full, layer decay 0.65-0.75)"
        lines.append(
            how + f". It scores {pick.top1:.1f}% on ImageNet at {pick.top1_size} px with {pick.params / 1e6:.1f}M "
            "parameters; weights pretrained on ImageNet-21k/22k (or by masked image modelling) transfer better "
            "than ImageNet-1k-only ones at the same size."
        )
    else:
        lines.append(
            f"With {train_size:,} images, training from scratch with the DeiT recipe (deit-tiny, deit-small) is "
            "viable: DeiT-S reached 79.9% on ImageNet-1k's 1.28M images. Pretrained weights still converge faster."
        )
    if pretrained and img_size < 128:
        lines.append(
            f"At {img_size} px a model pretrained at 224 px sees few tokens (its position embeddings are resized); "
            "for tiny images train a small ViT with a small patch from scratch (quickstart, small-data) or resize "
            "the images up."
        )
    patch = {c.name: c for c in chosen if "from scratch" in c.name}
    p16, p8 = (
        patch.get("vit_tiny (DeiT-Ti), patch 16, from scratch"),
        patch.get("vit_tiny (DeiT-Ti), patch 8, from scratch"),
    )
    if p16 and p8:
        lines.append(
            f"Patch 8 instead of 16 gives 4x the tokens and costs {p8.flops / p16.flops:.1f}x the FLOPs here "
            f"({p8.flops / 1e9:.2f} vs {p16.flops / 1e9:.2f} GFLOPs); on ImageNet it buys about a point "
            "(vit_base_patch8 86.3% vs vit_base_patch16 85.1%, same pretraining)."
        )
    return lines
