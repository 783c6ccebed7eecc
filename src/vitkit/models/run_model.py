"""Rebuild the model of a vitkit run folder from its recipe and checkpoint, and export it as a plain timm model.

A LoRA run stores only its adapters and head; its model is the pretrained base (from the recipe's
`finetune.pretrained`) with those adapters merged in, so everything downstream sees a plain timm model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from vitkit.checkpoint_files import load_weights, verify_checkpoint
from vitkit.config.loader import recipe_from_yaml_file
from vitkit.config.schema import Recipe
from vitkit.errors import VitkitError
from vitkit.models.build import build_model
from vitkit.models.lora import apply_lora, load_model_state, merge_lora
from vitkit.run_folder import EXPORT_MARKER, check_export_folder, check_run_folder, read_run_json


def load_run_model(run_dir: Path, which: str = "best") -> tuple[nn.Module, Recipe, dict[str, Any]]:
    """The model of a run folder, with the better of its raw and EMA weights from the `which` checkpoint."""
    recipe_path, summary_path = run_dir / "recipe.yaml", run_dir / "summary.json"
    check_run_folder(run_dir)
    recipe = recipe_from_yaml_file(recipe_path)
    folder = run_dir / "checkpoints" / which
    if not folder.exists() and which == "best" and (run_dir / "checkpoints" / "last").exists():
        folder = run_dir / "checkpoints" / "last"
    if not folder.exists():
        raise VitkitError(f"{run_dir} has no '{which}' checkpoint yet: has its first epoch finished?")
    verify_checkpoint(folder)
    meta = json.loads((folder / "meta.json").read_text())
    use_ema = meta.get("best_source") == "ema" and (folder / "ema.safetensors").exists()
    weights = "ema.safetensors" if use_ema else "model.safetensors"
    model = build_run_architecture(recipe, int(meta["num_classes"]))
    load_model_state(model, load_weights(folder / weights), where=f"checkpoint {folder / weights}")
    if recipe.finetune.strategy == "lora":
        model = merge_lora(model)
    info = {"checkpoint": str(folder), "weights": weights, **meta}
    summary = read_run_json(summary_path)
    if summary is not None:
        info["classes"] = summary.get("classes")
    return model.eval(), recipe, info


def load_run_or_checkpoint(path: Path) -> tuple[nn.Module, Recipe, dict[str, Any]]:
    """`load_run_model` for a run folder, or for one of its checkpoint folders (RUN/checkpoints/NAME)."""
    if (path / "meta.json").exists() and not (path / "recipe.yaml").exists():
        return load_run_model(path.parent.parent, path.name)
    return load_run_model(path)


def build_run_architecture(recipe: Recipe, num_classes: int) -> nn.Module:
    """The untrained module a run's checkpoint fits: the plain model, or for LoRA the base with empty adapters."""
    if recipe.finetune.strategy != "lora":
        return build_model(recipe.model, num_classes)
    from vitkit.models.pretrained import resolve_pretrained

    if not recipe.finetune.pretrained:
        raise VitkitError("this LoRA run names no finetune.pretrained base model, so its adapters cannot be applied.")
    base = resolve_pretrained(recipe.finetune.pretrained, recipe.model)
    return apply_lora(build_model(recipe.model, num_classes, pretrained=base), recipe.finetune)


def export_plain_model(run_dir: Path, out: Path, which: str = "best") -> tuple[nn.Module, Path]:
    """Write the run's model (LoRA merged) as a timm model folder: model.safetensors and config.json, loadable with
    `timm.create_model("local-dir:OUT", pretrained=True)` or `--pretrained OUT`."""
    check_export_folder(out)
    model, recipe, info = load_run_model(run_dir, which)
    save_timm_folder(model, recipe, info.get("classes"), out)
    (out / EXPORT_MARKER).write_text(json.dumps({"run": str(run_dir), "checkpoint": info["checkpoint"]}))
    return model, out


def save_timm_folder(model: nn.Module, recipe: Recipe, classes: list[str] | None, folder: Path) -> None:
    """timm's own folder format (`save_for_hf`), with the run's evaluation preprocessing as its data config, so
    timm's `resolve_data_config` + `create_transform` rebuild exactly the run's evaluation transform."""
    from timm.models._hub import save_for_hf

    mean, std = recipe.data.normalization()
    size = recipe.model.img_size
    data_config = {
        "input_size": (3, size, size),
        "mean": mean,
        "std": std,
        "crop_pct": recipe.augment.crop_pct,
        "interpolation": recipe.augment.interpolation,
    }
    model_config: dict[str, Any] = {"label_names": classes} if classes else {}
    save_for_hf(model, str(folder), model_config=model_config, safe_serialization=True, data_config=data_config)
