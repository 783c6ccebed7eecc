"""Export to transformers and timm folders: the folders load with the libraries' own loaders and give the run's
logits, the processor gives vitkit's evaluation pixels on real photographs, the round trip back into vitkit holds,
the model card's numbers are metrics.json's, and architectures transformers cannot hold are refused by name."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import transformers
from PIL import Image
from rich.console import Console
from skimage import data as skdata

from tests.conftest import PLAIN, tiny_recipe, write_image_folder
from vitkit.config.schema import AugmentConfig
from vitkit.data.pipeline import eval_transform, normalize_batch
from vitkit.data.sources import ImageSet, images_sha256
from vitkit.deploy.card import read_front_matter
from vitkit.deploy.folders import export_folder
from vitkit.deploy.hf import processor_config
from vitkit.errors import MissingExtraError, VitkitError
from vitkit.models.build import build_model
from vitkit.models.pretrained import resolve_pretrained, with_architecture
from vitkit.models.run_model import load_run_model
from vitkit.train.loop import train

QUIET = Console(quiet=True)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def trained(tmp: Path, *extra: str, evaluate: bool = True) -> Path:
    run = tmp / "run"
    train(tiny_recipe(*PLAIN, "schedule.epochs=1", *extra), run, console=QUIET, evaluate=evaluate)
    return run


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory) -> Path:
    return trained(tmp_path_factory.mktemp("vit"))


def random_pixels(n: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).standard_normal((n, 3, 16, 16)).astype(np.float32))


@pytest.mark.parametrize(
    ("name", "hf_class"),
    [
        ("vit_tiny_patch16_224", "ViTForImageClassification"),
        ("deit_tiny_patch16_224", "ViTForImageClassification"),  # DeiT without a distillation token is a ViT
        ("deit_tiny_distilled_patch16_224", "DeiTForImageClassificationWithTeacher"),
    ],
)
def test_transformers_folder_loads_and_gives_the_runs_logits(tmp_path: Path, name: str, hf_class: str):
    run = trained(tmp_path, f"model.name={name}", evaluate=False)
    doc = export_folder(run, tmp_path / "hf", "hf")
    model, _, info = load_run_model(run)
    loaded = transformers.AutoModelForImageClassification.from_pretrained(str(tmp_path / "hf")).eval()
    assert type(loaded).__name__ == hf_class
    x = random_pixels(5, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=x).logits, model(x), atol=1e-5, rtol=0)
    assert loaded.config.id2label == dict(enumerate(info["classes"]))
    assert doc["checks"]["logits"]["passed"] and doc["checks"]["logits"]["max_abs_diff"] <= 1e-5


def test_processor_config_describes_the_runs_evaluation_transform(vit_run: Path, tmp_path: Path):
    export_folder(vit_run, tmp_path / "hf", "hf")
    config = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    recipe = tiny_recipe()
    assert config["crop_size"] == {"height": 16, "width": 16}
    assert config["size"] == {"shortest_edge": math.floor(16 / recipe.augment.crop_pct)}
    assert config["resample"] == Image.Resampling.BICUBIC and recipe.augment.interpolation == "bicubic"
    assert config["image_mean"] == list(recipe.data.normalization()[0])
    processor = transformers.AutoImageProcessor.from_pretrained(str(tmp_path / "hf"), backend="pil")
    assert type(processor).__name__ == "ViTImageProcessorPil"


def _vitkit_pixels(img: Image.Image, size: int = 224) -> np.ndarray:
    tensor = torch.as_tensor(np.asarray(eval_transform(AugmentConfig(), size)(img)))[None]
    return normalize_batch(tensor, *IMAGENET).numpy()[0]


def _resized_and_cropped(img: Image.Image, size: int, top: int, left: int) -> np.ndarray:
    """An independent reference: PIL bicubic resize of the short side to size / 0.875, crop at (top, left)."""
    short = math.floor(size / 0.875)
    w, h = img.size
    new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    crop = np.asarray(img.resize(new, Image.Resampling.BICUBIC), dtype=np.float32)[top : top + size, left : left + size]
    return ((crop / 255 - np.array(IMAGENET[0])) / np.array(IMAGENET[1])).astype(np.float32).transpose(2, 0, 1)


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processor")
    config = processor_config("vit", 224, AugmentConfig().crop_pct, "bicubic", *IMAGENET)
    (folder / "preprocessor_config.json").write_text(json.dumps(config))
    return {b: transformers.AutoImageProcessor.from_pretrained(str(folder), backend=b) for b in ("pil", "torchvision")}


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "retina"])
def test_processor_pixels_equal_vitkits_on_real_photographs(processor, name: str):
    img = Image.fromarray(getattr(skdata, name)()).convert("RGB")
    ours = _vitkit_pixels(img)
    theirs = processor["pil"](images=img, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(theirs, ours, atol=1e-5, rtol=0)
    # the default backend resizes tensors, not PIL images: within about one grey level (1/255/0.224 = 0.0175)
    tensors = processor["torchvision"](images=img, return_tensors="np")["pixel_values"][0]
    assert np.abs(tensors - ours).max() <= 0.018


def test_the_one_pixel_crop_difference_is_transformers_rounding(processor):
    """rocket (640 x 427) resizes to 383 x 256: the crop margin is 159 px, and 159 / 2 = 79.5 rounds to 80 in
    torchvision (vitkit's evaluation) and down to 79 in transformers."""
    img = Image.fromarray(skdata.rocket()).convert("RGB")
    ours = _vitkit_pixels(img)
    theirs = processor["pil"](images=img, return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(ours, _resized_and_cropped(img, 224, 16, 80), atol=1e-5, rtol=0)
    np.testing.assert_allclose(theirs, _resized_and_cropped(img, 224, 16, 79), atol=1e-5, rtol=0)


def test_a_transformers_folder_trains_on_in_vitkit_with_the_runs_logits(vit_run: Path, tmp_path: Path):
    export_folder(vit_run, tmp_path / "hf", "hf")
    model, recipe, info = load_run_model(vit_run)
    weights = resolve_pretrained(str(tmp_path / "hf"), recipe.model)
    assert weights.kind == "transformers"
    rebuilt = build_model(with_architecture(recipe.model, weights), int(info["num_classes"]), pretrained=weights)
    x = random_pixels(4, seed=7)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), model(x), atol=1e-5, rtol=0)


def test_timm_folder_loads_with_timm_and_its_transform_is_vitkits(vit_run: Path, tmp_path: Path):
    doc = export_folder(vit_run, tmp_path / "timm", "timm")
    model, _, info = load_run_model(vit_run)
    loaded = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    x = random_pixels(3, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "timm" / "config.json").read_text())["label_names"] == info["classes"]
    assert doc["checks"]["pixels"]["max_abs_diff"] <= 1e-5


def test_model_card_numbers_are_the_runs_evaluation(vit_run: Path, tmp_path: Path):
    export_folder(vit_run, tmp_path / "hf", "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    matter = read_front_matter(card)
    metrics = json.loads((vit_run / "eval" / "metrics.json").read_text())
    assert matter["library_name"] == "transformers" and matter["pipeline_tag"] == "image-classification"
    result = matter["model-index"][0]["results"][0]
    values = {m["name"]: m["value"] for m in result["metrics"]}
    assert values["Top-1 accuracy"] == metrics["results"]["accuracy"]["top1"]
    assert values["Top-5 accuracy"] == metrics["results"]["accuracy"]["top5"]
    assert values["Expected calibration error"] == metrics["results"]["calibration"]["ece"]
    assert result["dataset"]["revision"] == f"sha256:{metrics['data_sha256']}"
    assert result["dataset"]["name"] == metrics["data"]
    for row in metrics["results"]["accuracy"]["per_class"]:
        assert f"| {row['class']} | {row['precision']:.4f} | {row['recall']:.4f} |" in card
    assert "## Intended use and limitations" in card and "Robustness to corruptions was not measured" in card


def test_evaluation_data_hash_names_the_exact_images_and_labels():
    pixels = np.zeros((3, 4, 4, 3), dtype=np.uint8)
    base = images_sha256(ImageSet(pixels, np.array([0, 1, 2])))
    changed = pixels.copy()
    changed[1, 0, 0, 0] = 1
    assert images_sha256(ImageSet(changed, np.array([0, 1, 2]))) != base
    assert images_sha256(ImageSet(pixels, np.array([0, 1, 1]))) != base
    assert images_sha256(ImageSet(pixels.copy(), np.array([0, 1, 2]))) == base


def test_an_unevaluated_run_gets_a_card_that_says_so(tmp_path: Path):
    run = trained(tmp_path, evaluate=False)
    export_folder(run, tmp_path / "timm", "timm")
    card = (tmp_path / "timm" / "README.md").read_text()
    assert "model-index" not in read_front_matter(card)
    assert "has not been evaluated" in card and "vitkit evaluate RUN" in card


def test_architectures_transformers_cannot_hold_are_refused_by_reason(tmp_path: Path):
    run = trained(tmp_path, "model.name=vit_base_patch16_reg4_gap_256", evaluate=False)
    with pytest.raises(VitkitError, match=r"4 register tokens.*pools with 'avg'.*--format timm"):
        export_folder(run, tmp_path / "hf", "hf")
    assert not (tmp_path / "hf").exists()  # refused before anything was written
    doc = export_folder(run, tmp_path / "timm", "timm")  # the timm folder holds any timm model
    assert doc["checks"]["logits"]["passed"]


@pytest.mark.parametrize("own", ["model.stem=conv", "model.mlp=local"])
def test_vitkits_own_layers_are_refused_by_both_folder_formats_before_anything_is_written(tmp_path: Path, own: str):
    run = trained(tmp_path, own, evaluate=False)
    for fmt in ("hf", "timm"):
        with pytest.raises(VitkitError, match=rf"local MLP \({re.escape(own)}\)\. Export it with --format onnx"):
            export_folder(run, tmp_path / fmt, fmt)
    assert not (tmp_path / "hf").exists() and not (tmp_path / "timm").exists()


def test_a_missing_hf_extra_is_named(monkeypatch, vit_run: Path, tmp_path: Path):
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)
    with pytest.raises(MissingExtraError, match=r"vitkit\[hf\]"):
        export_folder(vit_run, tmp_path / "hf", "hf")


def test_cli_exports_a_transformers_folder_and_lists_what_push_would_upload(vit_run: Path, tmp_path: Path):
    from tests.e2e.test_cli import vitkit

    out = vitkit("export", str(vit_run), "--format", "hf", "--out", str(tmp_path / "hf"))
    assert out.returncode == 0, out.stderr
    assert "transformers against the run" in out.stdout and "AutoImageProcessor(backend='pil')" in out.stdout
    refused = vitkit("export", str(vit_run), "--format", "hf", "--int8", "dynamic", "--out", str(tmp_path / "x"))
    assert refused.returncode != 0 and "use it with --format onnx" in refused.stderr + refused.stdout
    dry = vitkit("push", str(tmp_path / "hf"), "--repo", "my-lab/tiny-vit", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "4 files" in dry.stdout and "README.md" in dry.stdout and "nothing was uploaded" in dry.stdout


def test_card_reports_robustness_and_fairness_when_they_were_measured(tmp_path: Path):
    from vitkit.evaluate.context import EvalSettings
    from vitkit.evaluate.run import evaluate_run

    images = write_image_folder(tmp_path / "images", ("red", "green", "blue"), per_class=12)
    rows = ["path,label,group"] + [
        f"{p.relative_to(images)},{p.parent.name},{'site-a' if int(p.stem) % 2 else 'site-b'}"
        for p in sorted(images.rglob("*.png"))
    ]
    (images / "manifest.csv").write_text("\n".join(rows) + "\n")
    run = trained(tmp_path, f"data.source={images / 'manifest.csv'}", "data.val_fraction=0.5", evaluate=False)
    settings = EvalSettings(min_group_size=2, robustness_images=18)
    metrics, _ = evaluate_run(run, groups="group", only="accuracy,calibration,robustness,fairness", settings=settings)
    export_folder(run, tmp_path / "timm", "timm")
    card = (tmp_path / "timm" / "README.md").read_text()
    values = {m["name"]: m["value"] for m in read_front_matter(card)["model-index"][0]["results"][0]["metrics"]}
    results = metrics["results"]
    assert values["Mean top-1 over corruptions and severities"] == results["robustness"]["mean_corruption_top1"]
    assert values["Largest top-1 gap between groups"] == results["fairness"]["top1_gap"]
    assert "Robustness to corruptions was not measured" not in card and "was not measured (`--groups" not in card
