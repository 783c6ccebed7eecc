"""Variants of the advised recipe on grid cells: architecture and optimisation changes tried against the advisor
(one seed each, a `baseline` row of the recipe as advised in the same run).

    python benchmarks/recipe_variants.py --dataset fmnist-1k --dataset fmnist-10k --workers 16
    .venv/bin/python benchmarks/recipe_variants.py --table

The data are the grid's (benchmarks/recipe_grid.py prepares and caches them); each finished run is appended to
benchmarks/results/recipe_variants.jsonl.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor, as_completed
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from recipe_ablation import append_row, read_rows
from recipe_grid import (
    BUDGETS,
    DATASETS,
    PLAIN_VIT,
    RESNET,
    STRENGTHS,
    advised_architecture,
    machine,
    overrides_for,
    prepare,
    score,
)
from recipe_grid import RESULTS as GRID

RESULTS = Path(__file__).parent / "results" / "recipe_variants.jsonl"
# the small-data ViT's kwargs without the learned position embedding
NO_POSITION_EMBEDDING = "model.kwargs={class_token: false, global_pool: avg, qk_norm: true, pos_embed: none}"
VARIANTS = {
    "baseline": [],
    "layerscale": ["model.kwargs={init_values: 0.0001}"],  # CaiT's LayerScale
    "qk_norm": ["model.kwargs={qk_norm: true}"],
    "deep_narrow": ["model.embed_dim=48", "model.depth=10", "model.num_heads=3"],  # about the same parameters
    "heads4": ["model.num_heads=4"],  # head width 16 instead of 32
    "batch32": ["train.batch_size=32"],  # twice the updates at the same lr
    "lr1e-3": ["optim.lr=0.001"],
    "lr4e-3": ["optim.lr=0.004"],
    "lsa": [],  # Lee et al. 2021's locality self-attention, patched into timm's attention below
    # Beyer et al. 2022 ("Better plain ViT baselines"): the average of the tokens, normed, instead of a class token
    "gap": ["model.kwargs={global_pool: avg, class_token: false}"],
    "gap_qk_heads4": ["model.kwargs={global_pool: avg, class_token: false, qk_norm: true}", "model.num_heads=4"],
    "local_mlp": ["model.mlp=local"],  # LocalViT's depthwise convolution in every MLP
    "gap_local_mlp": ["model.mlp=local", "model.kwargs={global_pool: avg, class_token: false}"],
    "all": [  # the variants that each gained: pooling, qk norm, 4 heads, local MLPs, batch 32
        "model.mlp=local",
        "model.kwargs={global_pool: avg, class_token: false, qk_norm: true}",
        "model.num_heads=4",
        "train.batch_size=32",
    ],
    # on top of the small-data ViT as advised
    "hflip": ["augment.hflip=0.5"],  # flips alone, without the crops and Mixup of `moderate`
    "no_pos": [NO_POSITION_EMBEDDING],
    "hflip_no_pos": [
        "augment.hflip=0.5",
        NO_POSITION_EMBEDDING,
    ],
    "deep_stem": [],  # four 3x3 convolutions in the stem, as in Xiao et al.'s: stride-1 ones fill up, see below
    # the grid's ResNet reference with the same changes, so that a change that helps both is seen as such
    "resnet_hflip": [*RESNET, "augment.hflip=0.5"],
    # other seeds of the advised ViT and of the ResNet: how far one seed's gap between them moves
    **{
        f"{model}seed{n}": [*extra, f"train.seed={n}"]
        for n in (1, 2, 3, 4, 5)
        for model, extra in (("", []), ("resnet_", RESNET))
    },
    "resnet_batch32": [*RESNET, "train.batch_size=32"],  # does the ViT gain from more updates more than the ResNet?
    # the advised ViT fits its training images less than the ResNet does (train top-1 91.6% against 93.8% on 5k
    # images at 10x, 90.2% against 93.0% on 1k): less stochastic depth, or a higher lr
    "no_drop_path": ["model.drop_path_rate=0.0"],
    "lr3e-3": ["optim.lr=0.003"],
    # wider tokens in fewer blocks, at about the same compute per image (362k parameters against 340k)
    "wide_shallow": ["model.embed_dim=80", "model.depth=4", "model.num_heads=5"],
    # Trockman & Kolter 2023's mimetic initialisation of attention, patched in below
    "mimetic": [],
    # the crops and flips of `moderate` without its Mixup: does the ViT, which fits less, gain more than the ResNet?
    **{f"{model}no_mixup": [*extra, "augment.mixup=0.0"] for model, extra in (("", []), ("resnet_", RESNET))},
}
# the small-data ViT, and the ResNet, at a strength the rule may not pick for the cell (the grid's sweep is of the
# plain ViT): the recipe as advised with the strength forced
VARIANTS |= {f"at_{s}": [] for s in STRENGTHS} | {f"resnet_at_{s}": [*RESNET] for s in STRENGTHS}
# ... and with other seeds, where one seed leaves two strengths within its noise
VARIANTS |= {f"at_{s}_seed{n}": [f"train.seed={n}"] for s in STRENGTHS for n in (1, 2, 3, 4)}


def use_locality_self_attention() -> None:
    """Every timm ViT attention built from here on gets LSA: a learnable temperature (a factor on q, 1 at the
    start) and no attention of a token to itself."""
    import torch
    import torch.nn.functional as F
    from timm.models import vision_transformer as vt

    init = vt.Attention.__init__

    def lsa_init(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.log_temperature = torch.nn.Parameter(torch.zeros(()))

    def lsa_forward(self: Any, x: torch.Tensor, attn_mask: Any = None, is_causal: bool = False) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q) * self.log_temperature.exp(), self.k_norm(k)
        others = ~torch.eye(n, dtype=torch.bool, device=x.device)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=others)
        return self.proj_drop(self.proj(self.norm(x.transpose(1, 2).reshape(b, n, self.attn_dim))))

    vt.Attention.__init__ = lsa_init
    vt.Attention.forward = lsa_forward


def use_deep_stem(convs: int = 4) -> None:
    """Every convolutional stem built from here on has `convs` 3x3 convolutions: stride-1 conv-BN-ReLU layers after
    the first stride-2 one fill up to it where the patch has fewer halvings (patch 4: two of each, at 14x14 for
    28-px images), the way ResNet's deep stem works at its first resolution."""
    from torch import nn

    from vitkit.models import stems

    shallow = stems.stem_layers

    def deep(in_chans: int, embed_dim: int, patch_size: int) -> nn.Sequential:
        layers = list(shallow(in_chans, embed_dim, patch_size))
        strided = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in layers)
        width = layers[0].out_channels
        extra: list[nn.Module] = []
        for _ in range(max(0, convs - strided)):
            extra += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()]
        return nn.Sequential(*layers[:3], *extra, *layers[3:])

    stems.stem_layers = deep


def use_mimetic_init(alpha1: float = 0.7, beta1: float = 0.7, alpha2: float = 0.4, beta2: float = 0.4) -> None:
    """Every model built for training from here on starts its attention as trained ViTs' attention looks: each
    head's W_q^T W_k near alpha1 Z + beta1 I and W_v^T W_proj^T near alpha2 Z - beta2 I (Z Gaussian of variance
    1/dim), so a token first attends to tokens like itself (Trockman & Kolter 2023)."""
    import torch
    from torch import nn

    from vitkit.train import setup

    def factors(a: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
        u, s, vh = torch.linalg.svd(a)  # a ~ left @ right, the best rank-`rank` factors
        root = s[:rank].sqrt()
        return u[:, :rank] * root, root[:, None] * vh[:rank]

    def initialise(model: nn.Module) -> nn.Module:
        for module in model.modules():
            qkv, proj = getattr(module, "qkv", None), getattr(module, "proj", None)
            if not (isinstance(qkv, nn.Linear) and isinstance(proj, nn.Linear)):
                continue
            dim, heads = proj.in_features, int(module.num_heads)
            head_dim, eye = dim // heads, torch.eye(dim)
            with torch.no_grad():
                for h in range(heads):
                    left, right = factors(alpha1 * torch.randn(dim, dim) / dim**0.5 + beta1 * eye, head_dim)
                    rows = slice(h * head_dim, (h + 1) * head_dim)
                    qkv.weight[rows] = left.T  # q = x W_q^T, so W_q^T W_k = left @ right
                    qkv.weight[dim:][rows] = right
                left, right = factors(alpha2 * torch.randn(dim, dim) / dim**0.5 - beta2 * eye, dim)
                qkv.weight[2 * dim :] = left.T
                proj.weight.copy_(right.T)
        return model

    build = setup.build_model
    setup.build_model = lambda *args, **kwargs: initialise(build(*args, **kwargs))


def run(dataset: str, budget: str, variant: str, threads: int) -> dict[str, Any]:
    import torch
    from rich.console import Console

    from vitkit.config import load_recipe
    from vitkit.train.loop import train

    if threads:
        torch.set_num_threads(threads)
    if variant == "lsa":
        use_locality_self_attention()
    if variant == "deep_stem":
        use_deep_stem()
    if variant.startswith("mimetic"):
        use_mimetic_init()
    forced = variant.removeprefix("resnet_")
    config = forced.removeprefix("at_").split("_seed")[0] if forced.startswith("at_") else "advisor"
    base, overrides, facts = overrides_for(config, prepare(dataset), budget)
    overrides = [o for o in overrides if o not in PLAIN_VIT]  # the advised architecture at any strength
    recipe = load_recipe(base, [*overrides, *VARIANTS[variant]])
    with tempfile.TemporaryDirectory() as tmp:
        result = train(recipe, Path(tmp) / "run", console=Console(quiet=True))
    return {
        "dataset": dataset,
        "budget": budget,
        "variant": variant,
        **facts,
        "score": score(recipe, result.summary["final"]),
        "params": result.summary["parameters"],
        "wall_s": result.summary["wall_seconds"],
        "date": str(date.today()),
        "machine": machine(),
        "extra": VARIANTS[variant],
        "advisor": advised_architecture(overrides),  # variants differ from the advisor of their day
        "final": result.summary["final"],  # the last epoch's losses: over- or underfitting
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Test top-1 per variant and cell, and its difference to the baseline on the same machine, in points (the
    recipe as advised: this benchmark's baseline row, or else the grid's advisor row)."""
    cells = sorted({(r["dataset"], r["budget"]) for r in rows}, key=lambda c: DATASETS.index(c[0]))
    lines = ["| variant | " + " | ".join(f"{d} {b}" for d, b in cells) + " |", "|---|" + "---|" * len(cells)]
    by = {(r["dataset"], r["budget"], r["variant"]): r for r in rows}
    grid = [{**r, "advisor": advised_architecture(r["overrides"])} for r in read_rows(GRID) if r["config"] == "advisor"]
    advised = grid + [r for r in rows if r["variant"] == "baseline"]
    baselines = {(r["dataset"], r["budget"], r["machine"], r["advisor"]): r["score"] for r in advised}
    for variant in [v for v in VARIANTS if any(r["variant"] == v for r in rows)]:  # those that ran
        shown = []
        for d, b in cells:
            row = by.get((d, b, variant))
            score = row["score"] if row else None
            base = baselines.get((d, b, row["machine"], row["advisor"])) if row else None
            delta = f" ({100 * (score - base):+.1f})" if score is not None and base is not None else ""
            plain = variant == "baseline" or variant.startswith("resnet")  # a ResNet is no variant of the ViT
            shown.append("-" if score is None else f"{score:.1%}{'' if plain else delta}")
        lines.append(f"| {variant} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def sweep(rows: list[dict[str, Any]]) -> str:
    """The advised ViT's strength sweep: the grid's advisor rows of today's architecture and the `at_*` variants,
    per cell; * marks the strength the rule picks."""
    from vitkit.plan.advise import strength_for

    vit = [r for r in read_rows(GRID) if r["config"] == "advisor" and "strength" in r]
    vit = [r for r in vit if advised_architecture(r["overrides"]) == "no position embedding"]
    vit += [r for r in rows if r["variant"].startswith("at_") and "_seed" not in r["variant"]]  # the first seed
    scores = {(r["dataset"], r["budget"], r["strength"]): r["score"] for r in vit}
    passes = {(r["dataset"], r["budget"]): r["epochs"] for r in vit}
    lines = ["| data | budget | passes | " + " | ".join(STRENGTHS) + " |", "|---|---|---|" + "---|" * len(STRENGTHS)]
    for d, b in sorted(passes, key=lambda c: (DATASETS.index(c[0]), list(BUDGETS).index(c[1]))):
        pick = strength_for(passes[d, b], next(r["images"] for r in vit if r["dataset"] == d))
        shown = [f"{scores[d, b, s]:.1%}{'*' if s == pick else ''}" if (d, b, s) in scores else "-" for s in STRENGTHS]
        lines.append(f"| {d} | {b} | {passes[d, b]} | " + " | ".join(shown) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", action="append", choices=DATASETS, help="repeatable; default: fmnist-1k")
    parser.add_argument("--budget", choices=list(BUDGETS), default="10x")
    parser.add_argument("--variant", action="append", choices=list(VARIANTS), help="repeatable; default: all")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (0: torch's default)")
    parser.add_argument("--table", action="store_true", help="print the results table and exit")
    parser.add_argument("--sweep", action="store_true", help="print the advised ViT's strength sweep and exit")
    args = parser.parse_args()
    if args.table or args.sweep:
        print(table(read_rows(RESULTS)) if args.table else sweep(read_rows(RESULTS)))
        return
    jobs = [(d, args.budget, v) for d in args.dataset or ["fmnist-1k"] for v in args.variant or list(VARIANTS)]
    spawn = multiprocessing.get_context("spawn")
    # one process per run: the lsa variant patches timm in its process, which no other run may inherit
    with ProcessPoolExecutor(args.workers, mp_context=spawn, max_tasks_per_child=1) as pool:
        futures = [pool.submit(run, *job, args.threads) for job in jobs]
        for future in as_completed(futures):  # appended as each finishes
            row = future.result()
            append_row(RESULTS, row)
            print(f"{row['dataset']} {row['budget']} {row['variant']}: {row['score']:.1%}", flush=True)


if __name__ == "__main__":
    main()
