"""The memory planner: what a training step of a recipe holds, counted on the model itself.

Activations are not a formula here: one forward pass runs on the meta device (no memory, no weights) under
`torch.autograd.graph.saved_tensors_hooks`, which sees every tensor autograd keeps for the backward pass, as the
recipe builds the model (any timm family, frozen layers, LoRA). Views of one tensor count once, parameters not at
all. Timm's attention is traced in its explicit (math) form; for fused attention (SDPA with a flash or
memory-efficient kernel) the saved N x N probabilities are replaced by the kernel's log-sum-exp (B, heads, N).
With gradient checkpointing a block keeps only its input, and the backward pass holds one block's activations
again while it recomputes them.

Weights are fp32 (the master copy under mixed precision), gradients fp32 for what trains, AdamW two fp32 moments
per trainable parameter, EMA one fp32 copy. With bf16/fp16 the trace follows CUDA autocast's rules (the meta
device has no autocast of its own): matrix products and attention take 2-byte copies of their inputs and weights
and keep them for backward, LayerNorm and softmax run in fp32, and the residual stream stays fp32, so a block
keeps 4-byte LayerNorm inputs next to 2-byte matrix-product inputs.
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from vitkit.config.schema import Recipe
from vitkit.models.build import build_model, num_tokens, set_attention
from vitkit.models.finetune import apply_strategy

ADAM_MOMENTS = 2
CHECKPOINT_SLOWDOWN = "about 20-30% slower: each block's forward runs twice"


@dataclass
class Saved:
    where: str  # "embed", "block 3", "head"
    nbytes: int
    shape: tuple[int, ...]
    head_dim: int = 0  # set on the N x N attention probabilities of an attention module, 0 elsewhere
    attention_call: int = 0  # which attention module call saved the probabilities (1, 2, ...), 0 elsewhere
    fused_only: bool = False  # the attention output, which a fused kernel keeps and the math path may not


@dataclass
class MemoryPlan:
    batch: int
    precision: str
    attention: str
    checkpointing: bool
    strategy: str
    parameters: int
    trainable: int
    ema: bool
    saved: list[Saved] = field(repr=False)
    tokens: int = 0
    width: int = 0
    heads: int = 0
    depth: int = 0

    @property
    def weights(self) -> int:
        return 4 * self.parameters

    @property
    def gradients(self) -> int:
        return 4 * self.trainable

    @property
    def optimizer(self) -> int:
        return 4 * ADAM_MOMENTS * self.trainable

    @property
    def ema_bytes(self) -> int:
        return 4 * self.parameters if self.ema else 0

    @property
    def static(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.ema_bytes

    def per_block(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self.saved:
            out[s.where] = out.get(s.where, 0) + s.nbytes
        return out

    @property
    def activations(self) -> int:
        """Saved for backward over the whole step (with checkpointing: block inputs, the rest, one block again)."""
        blocks = {k: v for k, v in self.per_block().items() if k.startswith("block")}
        other = sum(v for k, v in self.per_block().items() if not k.startswith("block"))
        if not self.checkpointing or not blocks:
            return other + sum(blocks.values())
        # a block's input is the fp32 residual stream, under autocast too
        inputs = len(blocks) * self.batch * self.tokens * self.width * 4
        return other + inputs + max(blocks.values())

    @property
    def workspace(self) -> int:
        """Transient buffers of the backward pass: taken as twice the largest saved tensor."""
        return 2 * max((s.nbytes for s in self.saved), default=0)

    @property
    def peak(self) -> int:
        return self.static + self.activations + self.workspace

    def largest_batch(self, device_bytes: int) -> int:
        """The largest batch whose predicted peak fits `device_bytes` (activations grow with the batch)."""
        per_image = (self.activations + self.workspace) / self.batch
        room = device_bytes - self.static
        return max(0, int(room // per_image)) if per_image > 0 else 0

    def closed_form_per_layer(self) -> int | None:
        """Korthikanti et al. (2022), activations of one transformer layer in fp16 with dropout:
        s*b*h*(34 + 5*a*s/h) bytes; with fused attention the s^2 term vanishes."""
        if not (self.tokens and self.width and self.heads):
            return None
        s, b, h, a = self.tokens, self.batch, self.width, self.heads
        quadratic = 0 if self.attention == "fused" else 5 * a * s / h
        return int(s * b * h * (34 + quadratic))


# CUDA autocast's lists, for the functions a timm model calls: these run on 2-byte copies of their inputs ...
LOWER_PRECISION = {
    F.linear, F.conv1d, F.conv2d, F.scaled_dot_product_attention, torch.matmul, torch.bmm, torch.baddbmm,
    torch.addmm, torch.mm, torch.einsum, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.bmm,
}  # fmt: skip
# ... and these in fp32
FULL_PRECISION = {
    F.layer_norm, F.group_norm, F.softmax, F.log_softmax, torch.softmax, torch.log_softmax, torch.Tensor.softmax,
    torch.Tensor.log_softmax, F.cross_entropy,
}  # fmt: skip


class MetaAutocast(TorchFunctionMode):
    """CUDA autocast for a trace on the meta device: it casts above autograd, as autocast does, so what
    autograd keeps (the 2-byte copies of inputs and weights) is what a GPU step keeps."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        cast = self.dtype if func in LOWER_PRECISION else torch.float32 if func in FULL_PRECISION else None
        if cast is not None:
            args, kwargs = _cast(args, cast), _cast(kwargs, cast)
        return func(*args, **kwargs)


def _cast(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    if isinstance(value, (list, tuple)):
        return type(value)(_cast(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast(v, dtype) for k, v in value.items()}
    return value


def _pop(stack: list[tuple[int, int]]) -> None:
    stack.pop()  # returns None: a forward hook that returns a value replaces the module's output


def trace_saved(model: nn.Module, batch: int, img_size: int, autocast: torch.dtype | None = None) -> list[Saved]:
    """Every tensor autograd saves in one forward pass of `model` on the meta device (under CUDA autocast's rules
    to `autocast` if given): views of one tensor once, parameters never; each tagged with the block it was saved
    in."""
    parameters = {id(p) for p in model.parameters()}
    where = ["embed"]
    handles = [
        block.register_forward_pre_hook(lambda _m, _a, i=i: where.__setitem__(0, f"block {i}"))
        for i, block in enumerate(getattr(model, "blocks", []))
    ]
    for name in ("norm", "fc_norm", "head"):
        if isinstance(module := getattr(model, name, None), nn.Module):
            handles.append(module.register_forward_pre_hook(lambda _m, _a: where.__setitem__(0, "head")))
    inside: list[tuple[int, int]] = []  # (head dim, call number) of the attention module running, if any
    calls = itertools.count(1)

    def enter(module: Any, _args: Any) -> None:  # a pre-hook returning None leaves the input as it is
        inside.append((int(module.head_dim), next(calls)))

    outputs: list[tuple[str, torch.Tensor]] = []  # each attention's output, as its projection receives it
    for module in model.modules():
        if hasattr(module, "fused_attn") and hasattr(module, "head_dim"):
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(lambda _m, _a, _o: _pop(inside)))
            if isinstance(proj := getattr(module, "proj", None), nn.Module):
                handles.append(proj.register_forward_pre_hook(lambda _m, a: outputs.append((where[0], a[0]))))
    seen: set[int] = set()
    kept: list[torch.Tensor] = []  # holds every base, so that no id is reused by another tensor during the trace
    saved: list[Saved] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        base = tensor._base if tensor._base is not None else tensor
        kept.append(base)
        if id(base) not in parameters and id(base) not in seen:
            seen.add(id(base))
            shape = tuple(base.shape)
            square = len(shape) >= 3 and shape[-1] == shape[-2]
            head_dim, call = inside[-1] if inside and square else (0, 0)
            saved.append(Saved(where[0], base.numel() * base.element_size(), shape, head_dim, call))
        return tensor

    pixels = torch.empty(batch, 3, img_size, img_size, device="meta")
    mode = MetaAutocast(autocast) if autocast is not None else contextlib.nullcontext()
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), mode:
            model(pixels)
    finally:
        for handle in handles:
            handle.remove()
    for block, output in outputs:  # a fused kernel keeps its output for backward; the math path only when the
        base = output._base if output._base is not None else output  # projection trains (it is proj's input)
        if output.requires_grad and id(base) not in seen:  # a frozen attention keeps nothing
            saved.append(Saved(block, base.numel() * base.element_size(), tuple(base.shape), fused_only=True))
    return saved


def _fused(saved: list[Saved]) -> list[Saved]:
    """What a fused kernel (flash attention) keeps instead of the math path's N x N probabilities: the fp32
    log-sum-exp (..., N) of each row, and its output. q, k and v are kept as views of the qkv projection (the
    math path keeps copies of the same total size). The output is laid out so that the projection's input is a
    view of it: when the projection trains, the math path already counts it; when it is frozen (LoRA on q and v
    only), it is the `fused_only` entry the trace added (measured on CPU: equal to the byte)."""
    out, attended = [], set()
    for s in saved:
        if not s.head_dim:
            out.append(s)
        elif s.attention_call not in attended:  # under autocast the fp32 probabilities and their 2-byte copy
            attended.add(s.attention_call)
            out.append(Saved(s.where, 4 * math.prod(s.shape[:-1]), s.shape[:-1], attention_call=s.attention_call))
    return out


def plan_memory(cfg: Recipe, batch: int, num_classes: int = 1000) -> MemoryPlan:
    """The memory plan of one training step of `cfg` at `batch` images per process."""
    # auto is bf16 on the GPUs this plans for (every recent NVIDIA GPU computes it)
    precision = "bf16" if cfg.train.precision == "auto" else cfg.train.precision
    attention = "math" if cfg.model.attn_impl == "math" else "fused"
    autocast = {"fp32": None, "fp16": torch.float16}.get(precision, torch.bfloat16)
    model_cfg = cfg.model.model_copy(update={"grad_checkpointing": False})  # checkpointing is accounted below
    with torch.device("meta"):
        model = apply_strategy(build_model(model_cfg, num_classes), cfg.finetune)
    set_attention(model, "math")
    model.train()
    base: Any = getattr(model, "base_model", model)
    base = getattr(base, "model", base)
    tokens = num_tokens(base)
    first = next(iter(getattr(base, "blocks", [])), None)
    heads = int(getattr(getattr(first, "attn", None), "num_heads", 0) or 0)
    saved = trace_saved(model, batch, cfg.model.img_size, autocast)
    saved = _fused(saved) if attention == "fused" else [s for s in saved if not s.fused_only]
    return MemoryPlan(
        batch=batch,
        precision=precision,
        attention=attention,
        checkpointing=cfg.model.grad_checkpointing,
        strategy=cfg.finetune.strategy,
        parameters=sum(p.numel() for p in model.parameters()),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),
        ema=cfg.ema.enabled,
        saved=saved,
        tokens=tokens,
        width=int(getattr(base, "embed_dim", 0) or 0),
        heads=heads,
        depth=len(getattr(base, "blocks", [])),
    )


@dataclass
class Switch:
    change: str
    cost: str
    plan: MemoryPlan


def switches(cfg: Recipe, plan: MemoryPlan, device_bytes: int, num_classes: int = 1000) -> list[Switch]:
    """Each single change that lowers the peak, with its predicted plan and what it costs."""
    options: list[tuple[str, str, dict[str, Any]]] = []
    if plan.precision == "fp32":
        options.append(("train.precision=bf16", "none on GPUs with bf16 (faster there)", {"precision": "bf16"}))
    if plan.attention == "math":
        options.append(("model.attn_impl=fused", "none: fused attention is also faster", {"attn": "fused"}))
    if not plan.checkpointing:
        options.append(("model.grad_checkpointing=true", CHECKPOINT_SLOWDOWN, {"checkpointing": True}))
    if plan.strategy == "full":
        options.append(("finetune.strategy=lora", "another training: only adapters and head train", {"lora": True}))
    out = []
    for change, cost, what in options:
        out.append(Switch(change, cost, plan_memory(_changed(cfg, what), plan.batch, num_classes)))
    fits = plan.largest_batch(device_bytes)
    if 0 < fits < plan.batch:
        steps = math.ceil(plan.batch / fits)
        micro = math.ceil(plan.batch / steps)
        option = plan_memory(cfg, micro, num_classes)
        out.append(
            Switch(
                f"train.batch_size={micro} train.accumulation_steps={steps}",
                f"the same global batch of {micro * steps} in {steps} micro-batches per update; a little slower",
                option,
            )
        )
    return sorted(out, key=lambda s: s.plan.peak)


def _changed(cfg: Recipe, what: dict[str, Any]) -> Recipe:
    model, train, finetune = cfg.model, cfg.train, cfg.finetune
    if "precision" in what:
        train = train.model_copy(update={"precision": what["precision"]})
    if "attn" in what:
        model = model.model_copy(update={"attn_impl": what["attn"]})
    if "checkpointing" in what:
        model = model.model_copy(update={"grad_checkpointing": True})
    if "lora" in what:
        finetune = finetune.model_copy(update={"strategy": "lora"})
    return cfg.model_copy(update={"model": model, "train": train, "finetune": finetune})


def parse_size(text: str) -> int:
    """'24GB', '80 GiB', '512MB' -> bytes (GB and GiB both as 2^30, as GPU memory is quoted)."""
    units = {"kb": 2**10, "kib": 2**10, "mb": 2**20, "mib": 2**20, "gb": 2**30, "gib": 2**30, "tb": 2**40}
    cleaned = text.strip().lower().replace(" ", "")
    number = cleaned.rstrip("kmgtib")
    unit = cleaned[len(number) :] or "gb"
    try:
        size = int(float(number) * units[unit])
    except (KeyError, ValueError):
        raise ValueError(f"'{text}' is not a memory size like 24GB or 80GiB") from None
    if size <= 0:
        raise ValueError(f"'{text}': give a size above zero, like 24GB or 80GiB")
    return size
