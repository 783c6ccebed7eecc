"""Pretrained weights from timm names and the hub, transformers checkpoints, safetensors files and vitkit runs.

Every source ends in timm's own loader (`timm.create_model(pretrained=True)`): hub names go there directly, and
the other sources hand it a timm-format state dict through `pretrained_cfg_overlay`. timm then replaces the
classifier when the class count differs, resamples position (and patch) embeddings when the image size or patch
grid changes, and adapts the first convolution to the input channels, so vitkit re-implements none of that.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import torch

from vitkit.config.schema import ModelConfig
from vitkit.errors import MissingExtraError, RecipeError, VitkitError
from vitkit.models.convert import (
    WEIGHT_SUFFIXES,
    classifier_rows,
    read_state_file,
    to_timm_layout,
    transformers_to_timm,
)

ARCHITECTURE_FIELDS = ("name", "patch_size", "embed_dim", "depth", "num_heads", "kwargs", "norm_eps")
Norm = tuple[float, float, float]


@dataclass
class PretrainedWeights:
    """Where weights come from, the architecture they fit, and the normalisation they were trained with."""

    source: str
    kind: str  # timm (name, hf-hub:, local-dir:), file, run, transformers
    architecture: dict[str, Any]
    state_dict: dict[str, torch.Tensor] | None = None
    num_classes: int | None = None  # rows of the stored classifier
    mean: Norm | None = None
    std: Norm | None = None
    notes: list[str] = field(default_factory=list)

    def create_kwargs(self) -> dict[str, Any]:
        """Extra `timm.create_model` arguments that load these weights."""
        if self.state_dict is None:
            return {"pretrained": True}
        overlay: dict[str, Any] = {"state_dict": self.state_dict}
        if self.num_classes is not None:
            overlay["num_classes"] = self.num_classes
        return {"pretrained": True, "pretrained_cfg_overlay": overlay}


def resolve_pretrained(source: str, cfg: ModelConfig, option: str = "--pretrained") -> PretrainedWeights:
    """Identify `source` and read what is needed to build the model on it (weights are read now, except hub ones);
    `option` names the setting in error messages."""
    path = Path(source).expanduser()
    if path.is_file():
        return _from_file(path, cfg)
    if path.is_dir():
        if (path / "recipe.yaml").exists() or (path / "meta.json").exists():
            return _from_run(path)
        config = _read_json(path / "config.json")
        if "architecture" in config:  # timm's own folder format (save_for_hf / merge-lora)
            return _timm_source(f"local-dir:{path}")
        if "model_type" in config:
            return _from_transformers(path, config)
        raise VitkitError(
            f"{option} {source}: the folder is not a vitkit run, a timm model folder or a transformers "
            "checkpoint (no recipe.yaml, and no config.json with 'architecture' or 'model_type')."
        )
    if source.startswith(("hf-hub:", "local-dir:")) or timm.is_model(source):
        return _timm_source(source)
    if "/" in source or source.endswith(WEIGHT_SUFFIXES):
        raise VitkitError(f"{option} {source}: no such file or folder. Check the path.")
    close = timm.list_models(f"*{source.split('_')[0]}*", pretrained=True)[:6]
    raise VitkitError(
        f"{option} {source}: not a file, a folder or a timm model name. Timm names with weights look like: "
        f"{', '.join(close) or 'vit_small_patch16_224.augreg_in21k'}; hub models are hf-hub:ORG/NAME."
    )


def with_architecture(cfg: ModelConfig, weights: PretrainedWeights) -> ModelConfig:
    """The recipe's model section with the architecture fixed by the weights; image size and regularisation
    stay the recipe's (position embeddings are resampled to the recipe's image size)."""
    return cfg.model_copy(update=weights.architecture)


def _timm_source(name: str) -> PretrainedWeights:
    # the hub/registry config fixes the architecture: clear every recipe override of it
    architecture: dict[str, Any] = {k: None for k in ARCHITECTURE_FIELDS} | {"name": name, "kwargs": {}}
    return PretrainedWeights(name, "timm", architecture)


def _from_file(path: Path, cfg: ModelConfig) -> PretrainedWeights:
    """A weight file for the architecture named by `cfg` (foreign layouts are renamed to timm's first)."""
    state = to_timm_layout(read_state_file(path), cfg.name)
    arch = {k: getattr(cfg, k) for k in ARCHITECTURE_FIELDS}
    return PretrainedWeights(str(path), "file", arch, state, classifier_rows(state, cfg.name))


def _from_run(path: Path) -> PretrainedWeights:
    from vitkit.models.run_model import load_run_or_checkpoint

    model, recipe, info = load_run_or_checkpoint(path)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    arch = {k: getattr(recipe.model, k) for k in ARCHITECTURE_FIELDS}
    weights = PretrainedWeights(str(path), "run", arch, state, int(info["num_classes"]))
    weights.mean, weights.std = recipe.data.normalization()
    weights.notes.append(f"weights from {info['checkpoint']} ({info['weights']})")
    return weights


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise VitkitError(f"{path} is not valid JSON ({exc}).") from exc
    return data if isinstance(data, dict) else {}


# --- transformers (ViTForImageClassification, DeiTForImageClassification[WithTeacher]) -------------------------


def _from_transformers(path: Path, config: dict[str, Any]) -> PretrainedWeights:
    try:
        import transformers
    except ImportError as exc:
        raise MissingExtraError("transformers", "hf", f"loading the transformers checkpoint {path}") from exc
    model_type = config.get("model_type")
    if model_type not in ("vit", "deit"):
        raise VitkitError(f"--pretrained {path}: transformers model_type '{model_type}'; vitkit converts vit and deit.")
    if config.get("hidden_act", "gelu") != "gelu":
        raise VitkitError(f"--pretrained {path}: hidden_act '{config['hidden_act']}' has no timm ViT equivalent.")
    hf_model = transformers.AutoModelForImageClassification.from_pretrained(str(path))
    state = transformers_to_timm(hf_model.state_dict())
    distilled = "dist_token" in state
    hidden = int(config["hidden_size"])
    arch = {
        "name": "deit_base_distilled_patch16_224" if distilled else "vit_base_patch16_224",
        "patch_size": int(config["patch_size"]),
        "embed_dim": hidden,
        "depth": int(config["num_hidden_layers"]),
        "num_heads": int(config["num_attention_heads"]),
        "kwargs": {"mlp_ratio": int(config["intermediate_size"]) / hidden, "qkv_bias": bool(config.get("qkv_bias", 1))},
        "norm_eps": float(config.get("layer_norm_eps", 1e-12)),
    }
    weights = PretrainedWeights(str(path), "transformers", arch, state, classifier_rows(state, str(arch["name"])))
    processor = _read_json(path / "preprocessor_config.json")
    if "image_mean" in processor and "image_std" in processor:
        weights.mean, weights.std = tuple(processor["image_mean"]), tuple(processor["image_std"])
    if int(config.get("num_channels", 3)) != 3:
        raise RecipeError(f"--pretrained {path}: {config['num_channels']}-channel checkpoints are not supported.")
    return weights


def pretrained_normalization(model: torch.nn.Module, weights: PretrainedWeights) -> tuple[Norm, Norm] | None:
    """The mean/std the weights were trained with: stated by the source, else timm's pretrained config."""
    if weights.mean is not None and weights.std is not None:
        return weights.mean, weights.std
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if "mean" in cfg and "std" in cfg:
        return tuple(cfg["mean"]), tuple(cfg["std"])
    return None
