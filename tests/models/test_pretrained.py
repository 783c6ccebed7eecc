"""Pretrained sources load into timm models that compute what the source computed.

No network here: every source is made by the test (a safetensors file, a timm model folder placed in a
Hugging Face cache, transformers checkpoints written with save_pretrained, a vitkit run).
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from timm.models._hub import save_for_hf

from tests.conftest import TINY_VIT, save_tiny_pretrained, tiny_recipe, tiny_vit
from vitkit.config.schema import ModelConfig
from vitkit.errors import MissingExtraError, VitkitError
from vitkit.models.build import build_model
from vitkit.models.pretrained import pretrained_normalization, resolve_pretrained, with_architecture
from vitkit.models.run_model import load_run_model
from vitkit.train.loop import train

X = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def _load(source: str, cfg: ModelConfig, num_classes: int) -> torch.nn.Module:
    weights = resolve_pretrained(source, cfg)
    return build_model(with_architecture(cfg, weights), num_classes, pretrained=weights).eval()


def test_safetensors_file_gives_the_source_logits(tmp_path: Path):
    path, source = save_tiny_pretrained(tmp_path / "w.safetensors", num_classes=10)
    model = _load(str(path), ModelConfig(**TINY_VIT), 10)
    with torch.no_grad():
        torch.testing.assert_close(model(X), source(X), rtol=0, atol=0)


def test_new_classes_replace_the_head_and_a_new_size_resamples_positions(tmp_path: Path):
    path, source = save_tiny_pretrained(tmp_path / "w.safetensors", num_classes=10)
    model = _load(str(path), ModelConfig(**{**TINY_VIT, "img_size": 32}), 4)
    assert model.head.weight.shape == (4, 32)
    assert model.pos_embed.shape == (1, 1 + 8 * 8, 32) and source.pos_embed.shape == (1, 1 + 4 * 4, 32)
    assert torch.equal(model.pos_embed[:, 0], source.pos_embed[:, 0])  # class token position kept
    assert torch.equal(model.blocks[1].mlp.fc2.weight, source.blocks[1].mlp.fc2.weight)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_hub_name_loads_from_the_local_hugging_face_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The real hub code path (`hf-hub:` through timm and huggingface_hub), offline, from a prepared cache."""
    import huggingface_hub.constants as hub

    source = tiny_vit(10)
    snapshot = tmp_path / "hub" / "models--vitkit-tests--tiny-vit" / "snapshots" / ("0" * 40)
    data_config = {"mean": (0.1, 0.2, 0.3), "std": (0.3, 0.2, 0.1)}
    save_for_hf(source, str(snapshot), safe_serialization=True, data_config=data_config)
    (snapshot.parent.parent / "refs").mkdir()
    (snapshot.parent.parent / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)

    weights = resolve_pretrained("hf-hub:vitkit-tests/tiny-vit", ModelConfig(**TINY_VIT))
    cfg = with_architecture(ModelConfig(**TINY_VIT), weights)
    assert cfg.name == "hf-hub:vitkit-tests/tiny-vit" and cfg.embed_dim is None  # the hub config fixes the width
    model = build_model(cfg, 10, pretrained=weights).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(X), source(X), rtol=0, atol=0)
    assert pretrained_normalization(model, weights) == ((0.1, 0.2, 0.3), (0.3, 0.2, 0.1))

    with pytest.raises(VitkitError, match="Hugging Face cache"):  # not cached, no network: a clear message
        _load("vit_tiny_patch16_224.augreg_in21k", ModelConfig(img_size=32), 10)


def _hf_config(module: str, **extra: object):
    import transformers

    config_class = getattr(transformers, f"{module}Config")
    sizes = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    return config_class(**sizes, image_size=16, patch_size=4, num_labels=5, **extra)


@pytest.mark.parametrize("kind", ["ViTForImageClassification", "DeiTForImageClassificationWithTeacher"])
def test_transformers_checkpoint_gives_the_source_logits(tmp_path: Path, kind: str):
    transformers = pytest.importorskip("transformers", reason="transformers is the vitkit[hf] extra")
    torch.manual_seed(0)
    hf_model = getattr(transformers, kind)(_hf_config("ViT" if kind.startswith("ViT") else "DeiT")).eval()
    hf_model.save_pretrained(tmp_path / "hf")
    transformers.ViTImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(
        tmp_path / "hf"
    )
    weights = resolve_pretrained(str(tmp_path / "hf"), ModelConfig(img_size=16))
    assert weights.kind == "transformers" and weights.mean == (0.5, 0.5, 0.5)
    model = build_model(with_architecture(ModelConfig(img_size=16), weights), 5, pretrained=weights).eval()
    assert ("dist_token" in dict(model.named_parameters())) == kind.startswith("DeiT")
    with torch.no_grad():
        torch.testing.assert_close(model(X), hf_model(pixel_values=X).logits, rtol=1e-5, atol=1e-5)


def test_transformers_folder_without_the_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(MissingExtraError, match=r"vitkit\[hf\]"):
        resolve_pretrained(str(tmp_path / "hf"), ModelConfig())


def test_run_folder_source_gives_the_run_model(tmp_path: Path):
    run = train(
        tiny_recipe("schedule.epochs=1", "schedule.warmup_epochs=0"), tmp_path / "r", console=Console(quiet=True)
    )
    expected, recipe, _ = load_run_model(run.run_dir)
    weights = resolve_pretrained(str(run.run_dir), ModelConfig(name="vit_small_patch16_224"))
    assert (weights.mean, weights.std) == recipe.data.normalization()
    model = build_model(with_architecture(ModelConfig(img_size=16), weights), 10, pretrained=weights).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(X), expected(X), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("missing/dir", "no such file or folder"),
        ("vit_smal_patch16", "not a file, a folder or a timm model name"),
    ],
)
def test_bad_sources_get_clear_messages(source: str, message: str):
    with pytest.raises(VitkitError, match=message):
        resolve_pretrained(source, ModelConfig())


def test_pytorch_weight_files_load_like_safetensors(tmp_path: Path):
    _, model = save_tiny_pretrained(tmp_path / "w.safetensors")
    torch.save({"state_dict": model.state_dict()}, tmp_path / "w.pth")  # a training checkpoint's usual wrapper
    cfg = ModelConfig(**TINY_VIT)
    from_pth, from_st = (resolve_pretrained(str(tmp_path / f), cfg) for f in ("w.pth", "w.safetensors"))
    assert from_pth.state_dict is not None and from_st.state_dict is not None
    assert from_pth.state_dict.keys() == from_st.state_dict.keys() and from_pth.num_classes == 10
    for key, value in from_st.state_dict.items():
        assert torch.equal(from_pth.state_dict[key], value)


def test_grayscale_images_fine_tune_an_rgb_pretrained_model(tmp_path: Path):
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        (tmp_path / "gray" / label).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 80 if label == "a" else 255, size=(16, 16), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(tmp_path / "gray" / label / f"{i}.png")
    path, _ = save_tiny_pretrained(tmp_path / "w.safetensors")
    recipe = tiny_recipe(
        f"data.source={tmp_path / 'gray'}",
        f"finetune.pretrained={path}",
        "train.batch_size=8",
        "data.val_fraction=0.25",
    )
    result = train(recipe, tmp_path / "run", console=Console(quiet=True))
    model, saved, _ = load_run_model(result.run_dir)
    assert model.patch_embed.proj.weight.shape[1] == 3 and model.head.out_features == 2
    assert saved.data.mean == (0.5, 0.5, 0.5)  # the pretrained config's normalisation, not ImageNet's
    assert result.summary["classes"] == ["a", "b"] and result.summary["pretrained"] == str(path)
