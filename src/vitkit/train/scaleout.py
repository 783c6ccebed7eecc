"""What changes when one run trains on several processes: the batch each process takes, the collective backend,
and the check that every process was given the same recipe.

The processes come from `accelerate launch` or `torchrun` (which set RANK, WORLD_SIZE, MASTER_ADDR, ...);
accelerate then wraps the model in DistributedDataParallel, so gradients are averaged over processes and an
update is the same as one process's update on the global batch.
"""

from __future__ import annotations

import hashlib
import os

import torch
import torch.distributed as dist
from accelerate.utils import InitProcessGroupKwargs

from vitkit.config.loader import recipe_to_yaml
from vitkit.config.schema import Recipe, TrainConfig
from vitkit.errors import VitkitError
from vitkit.train.ranks import Ranks


def launched_processes() -> int:
    """The number of processes the launcher started (1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def process_batch_size(train: TrainConfig, processes: int) -> int:
    """Images per step on each process: train.batch_size, or train.global_batch_size shared out."""
    if train.global_batch_size is None:
        return train.batch_size
    per_update = processes * train.accumulation_steps
    if train.global_batch_size % per_update:
        fits = max(per_update, train.global_batch_size // per_update * per_update)
        raise VitkitError(
            f"train.global_batch_size={train.global_batch_size} does not divide over {processes} processes x "
            f"train.accumulation_steps={train.accumulation_steps}: every process takes the same batch. Use a "
            f"multiple of {per_update} (e.g. {fits}), or another number of processes."
        )
    return train.global_batch_size // per_update


def backend_kwargs(train: TrainConfig, device: torch.device) -> list[InitProcessGroupKwargs]:
    """accelerate's process-group settings for train.backend; refuses a backend this machine cannot run, and a
    sharded launch (FSDP, DeepSpeed) whose checkpoints vitkit does not yet gather."""
    sharded = [name for name in ("FSDP", "DEEPSPEED") if os.environ.get(f"ACCELERATE_USE_{name}") == "true"]
    if sharded:
        raise VitkitError(
            f"this launch asks accelerate for {sharded[0]}, which shards the model over the processes; vitkit's "
            "checkpoints are full state dicts and are not gathered from shards yet, so the run would save nothing "
            "it could resume. Launch without --use_fsdp / --use_deepspeed (DDP keeps one full copy per GPU)."
        )
    if launched_processes() == 1:
        return []
    if not dist.is_available():
        raise VitkitError(
            "this PyTorch build has no torch.distributed, so a run cannot use several processes. Train with one "
            "process (no accelerate launch / torchrun), or install a PyTorch build with distributed support."
        )
    backend = train.backend
    if backend == "auto":
        return []
    if backend == "nccl" and (device.type != "cuda" or not dist.is_nccl_available()):
        raise VitkitError(
            "train.backend=nccl needs CUDA GPUs and a PyTorch build with NCCL; this process has "
            f"{'no GPU' if device.type != 'cuda' else 'no NCCL'}. Use train.backend=gloo (CPU) or auto."
        )
    if backend == "gloo" and not dist.is_gloo_available():
        raise VitkitError("train.backend=gloo is not in this PyTorch build. Use train.backend=auto.")
    return [InitProcessGroupKwargs(backend=backend)]


def check_same_recipe(cfg: Recipe, ranks: Ranks) -> None:
    """Every process must train the same recipe: a different --set on one machine would silently train a model
    no one asked for. Names the first fields that differ from process 0's."""
    text = recipe_to_yaml(cfg)
    digests = ranks.gather(hashlib.sha256(text.encode()).hexdigest())
    odd = [rank for rank, digest in enumerate(digests) if digest != digests[0]]
    if not odd:
        return
    texts = ranks.gather(text)
    mine, first = texts[0].splitlines(), texts[odd[0]].splitlines()
    differ = [f"{a.strip()} vs {b.strip()}" for a, b in zip(mine, first, strict=False) if a != b][:3]
    raise VitkitError(
        f"the processes of this run were given different recipes: process {odd[0]} differs from process 0 "
        f"({'; '.join(differ) or 'in length'}). Start every process with the same --recipe, --data and --set."
    )
