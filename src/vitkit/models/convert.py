"""Read weight files safely and rename foreign layouts to timm's, so timm's loader can take them.

Foreign layouts handled: transformers ViT/DeiT (`transformers_to_timm`) and the `efficientnet_pytorch` family
(lukemelas; also the EfficientNet-Lite ports built on it, `efficientnet_pytorch_to_timm`).
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import timm
import torch

from vitkit.errors import VitkitError

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def safe_torch_load(path: Path, fix: str) -> Any:
    """`torch.load(weights_only=True)`: tensors and plain containers only. Anything else (a pickled object that
    could run code when loaded, or a damaged file) is refused with a message that names it and says `fix`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        # torch's message suggests weights_only=False, which is exactly what must not be done: keep only the culprit
        culprit = next((line for line in lines if "GLOBAL" in line or "global" in line), lines[0] if lines else "")
        raise VitkitError(
            f"{path} was refused: it holds pickled objects other than tensors, which could run code when loaded, "
            f"or it is damaged ({culprit}). {fix}"
        ) from None


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from a PyTorch file read with `weights_only=True`, which refuses any
    pickled object that is not a tensor or plain container (so a crafted file cannot run code)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # safetensors raises its own error type for damaged headers
            raise VitkitError(f"{path} is not a readable .safetensors file ({exc}).") from exc
    if path.suffix not in WEIGHT_SUFFIXES:
        raise VitkitError(f"{path}: unknown weight file type '{path.suffix}'; expected one of {WEIGHT_SUFFIXES}.")
    loaded = safe_torch_load(path, "Save the weights with safetensors.torch.save_file.")
    for key in ("state_dict", "model", "model_state_dict", "module"):  # common training-checkpoint wrappers
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise VitkitError(f"{path} holds no state dict of tensors (found {type(loaded).__name__}).")
    return {k.removeprefix("module."): v for k, v in loaded.items()}


def to_timm_layout(state: dict[str, torch.Tensor], architecture: str) -> dict[str, torch.Tensor]:
    """`state` with a known foreign layout renamed to timm's; timm-format state dicts pass through unchanged."""
    if "_conv_stem.weight" in state:
        return efficientnet_pytorch_to_timm(state, architecture)
    return state


# --- efficientnet_pytorch (lukemelas) and EfficientNet-Lite ports ----------------------------------------------

_EFFNET_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# inside a block: the first stage's depthwise-separable blocks have no expansion conv
_EFFNET_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EFFNET_IR = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
    "_se._se_reduce": "se.conv_reduce",
    "_se._se_expand": "se.conv_expand",
}


def efficientnet_pytorch_to_timm(state: dict[str, torch.Tensor], architecture: str) -> dict[str, torch.Tensor]:
    """Rename an `efficientnet_pytorch` state dict (flat `_blocks.N`) to timm's EfficientNet (`blocks.stage.i`).

    The stage lengths come from the timm architecture (built on the meta device), so any EfficientNet/-Lite whose
    timm counterpart has the same depth converts; shapes are checked against it."""
    if not timm.is_model(architecture):
        raise VitkitError(f"'{architecture}' is not a timm model; name the timm EfficientNet these weights fit.")
    with torch.device("meta"):
        reference = timm.create_model(architecture)
    target = reference.state_dict()
    stages = getattr(reference, "blocks", None)
    if stages is None:
        raise VitkitError(f"efficientnet_pytorch weights need a timm EfficientNet architecture, not '{architecture}'.")
    position = [(s, i) for s, stage in enumerate(stages) for i in range(len(stage))]
    block = re.compile(r"^_blocks\.(\d+)\.(.+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if match := block.match(key):
            index, inner, kind = int(match[1]), match[2], match[3]
            if index >= len(position):
                raise VitkitError(f"weight {key} has no block in '{architecture}' ({len(position)} blocks).")
            stage, i = position[index]
            expands = f"_blocks.{index}._expand_conv.weight" in state
            names = _EFFNET_DS if stage == 0 and not expands else _EFFNET_IR
            if inner not in names:
                raise VitkitError(f"unexpected efficientnet_pytorch weight {key}.")
            new = f"blocks.{stage}.{i}.{names[inner]}.{kind}"
        else:
            module, _, rest = key.partition(".")
            if module not in _EFFNET_TOP:
                raise VitkitError(f"unexpected efficientnet_pytorch weight {key}.")
            new = f"{_EFFNET_TOP[module]}.{rest}"
        if new not in target or target[new].shape != value.shape:
            raise VitkitError(
                f"efficientnet_pytorch weight {key} {tuple(value.shape)} does not fit '{architecture}' ({new}); "
                "name the timm EfficientNet variant these weights were trained as."
            )
        out[new] = value
    return out


# --- transformers (ViTForImageClassification, DeiTForImageClassification[WithTeacher]) -------------------------

# transformers key (after the vit./deit. prefix) -> timm key; both the v5 names and the v4 names on disk.
_HF_BLOCK_KEYS = {
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "attention.o_proj": "attn.proj",
    "attention.output.dense": "attn.proj",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_QKV = {"q_proj": 0, "k_proj": 1, "v_proj": 2, "query": 0, "key": 1, "value": 2}
_HF_TOP_KEYS = {
    "embeddings.cls_token": "cls_token",
    "embeddings.distillation_token": "dist_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_HF_HEADS = {"classifier": "head", "cls_classifier": "head", "distillation_classifier": "head_dist"}


_HF_BLOCK = re.compile(r"^(?:vit|deit)\.(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$")


def timm_name(hf_key: str) -> tuple[str, int | None] | None:
    """The timm name of a transformers ViT/DeiT weight, with the part (0 q, 1 k, 2 v) it is of timm's fused qkv;
    None for the pooler, which image classification does not use."""
    if match := _HF_BLOCK.match(hf_key):
        index, inner, kind = int(match[1]), match[2], match[3]
        part = inner.rsplit(".", 1)[-1]
        if part in _HF_QKV and inner.startswith("attention."):
            return f"blocks.{index}.attn.qkv.{kind}", _HF_QKV[part]
        if inner in _HF_BLOCK_KEYS:
            return f"blocks.{index}.{_HF_BLOCK_KEYS[inner]}.{kind}", None
    else:
        prefix, _, rest = hf_key.partition(".")
        if prefix in ("vit", "deit") and rest in _HF_TOP_KEYS:
            return _HF_TOP_KEYS[rest], None
        if prefix in _HF_HEADS:
            return f"{_HF_HEADS[prefix]}.{rest}", None
        if rest.startswith("pooler"):  # ViTModel's pooler is unused by image classification
            return None
    raise VitkitError(f"unexpected transformers weight {hf_key}: only ViT and DeiT checkpoints convert.")


def transformers_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a transformers ViT/DeiT state dict to timm's names, fusing query/key/value into one qkv."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[int, torch.Tensor]] = {}
    for key, value in state.items():
        if (named := timm_name(key)) is None:
            continue
        name, part = named
        if part is None:
            out[name] = value
        else:
            qkv.setdefault(name, {})[part] = value
    for name, parts in qkv.items():
        out[name] = torch.cat([parts[0], parts[1], parts[2]])
    return out


def timm_to_transformers(state: dict[str, torch.Tensor], hf_keys: list[str]) -> dict[str, torch.Tensor]:
    """The tensors of a transformers ViT/DeiT whose weight names are `hf_keys`, taken from a timm state dict
    (the inverse of `transformers_to_timm`, through the same name table, so the two cannot drift apart)."""
    out: dict[str, torch.Tensor] = {}
    for key in hf_keys:
        if (named := timm_name(key)) is None:
            continue
        name, part = named
        if name not in state:
            raise VitkitError(f"the model has no {name} for the transformers weight {key}.")
        out[key] = state[name] if part is None else state[name].chunk(3)[part]
    return {k: v.contiguous().clone() for k, v in out.items()}


def classifier_rows(state: dict[str, torch.Tensor], architecture: str) -> int | None:
    """Classes of the stored classifier, found under the architecture's classifier name (timm's pretrained cfg:
    `head`, `fc`, `classifier`, `head.fc`, ...)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(architecture) if timm.is_model(architecture) else None
    names = (cfg.classifier if cfg is not None else None) or "head"
    first = names[0] if isinstance(names, tuple | list) else names
    weight = state.get(f"{first}.weight")
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 2 else None


def _shape_facts(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """Depth, width and class count read off a timm ViT/CNN state dict, where they can be told."""
    facts: dict[str, int] = {}
    blocks = {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}
    if blocks:
        facts["depth"] = max(blocks) + 1
    for key in ("cls_token", "pos_embed"):
        if key in state:
            facts["embed dim"] = int(state[key].shape[-1])
            break
    for key in ("head.weight", "head.fc.weight", "fc.weight", "classifier.weight"):
        if key in state and state[key].ndim == 2:
            facts["classes"] = int(state[key].shape[0])
            break
    return facts


def describe_mismatch(model_state: dict[str, torch.Tensor], stored: dict[str, torch.Tensor]) -> str | None:
    """How a stored state dict differs from a model's (architecture, width, depth, class count), or None."""
    missing = [k for k in model_state if k not in stored]
    unexpected = [k for k in stored if k not in model_state]
    reshaped = [
        f"{k} {tuple(stored[k].shape)} vs {tuple(v.shape)}"
        for k, v in model_state.items()
        if k in stored and stored[k].shape != v.shape
    ]
    if not (missing or unexpected or reshaped):
        return None
    ours, theirs = _shape_facts(model_state), _shape_facts(stored)
    differences = [
        f"{name} {theirs[name]} vs {ours[name]}" for name in ours if theirs.get(name, ours[name]) != ours[name]
    ]
    parts = [("differs in " + ", ".join(differences) + " (stored vs model)") if differences else "another architecture"]
    if reshaped:
        parts.append(f"{len(reshaped)} tensors of other shape, e.g. {'; '.join(reshaped[:3])}")
    if missing:
        parts.append(f"{len(missing)} model tensors not stored, e.g. {', '.join(missing[:3])}")
    if unexpected:
        parts.append(f"{len(unexpected)} stored tensors the model lacks, e.g. {', '.join(unexpected[:3])}")
    return "; ".join(parts)
