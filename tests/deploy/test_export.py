"""Export round trips (plain ViT, distilled DeiT, register tokens, a LoRA run), dynamic batch, metadata, parity
gates that catch a corrupted export, and INT8 within (and refused beyond) its accuracy limit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from rich.console import Console

from tests.conftest import PLAIN, save_tiny_pretrained, tiny_recipe, write_image_folder
from vitkit.checkpoint_files import sha256
from vitkit.deploy.export import ExportOptions, export_run
from vitkit.deploy.formats import OrtModel, Pt2Model
from vitkit.deploy.parity import ParityError, compare, require_parity
from vitkit.deploy.pixels import eager_logits
from vitkit.deploy.predict import load_classifier
from vitkit.errors import VitkitError
from vitkit.models.run_model import load_run_model
from vitkit.train.loop import train

QUIET = Console(quiet=True)
ONE_EPOCH = (*PLAIN, "schedule.epochs=1", "ema.enabled=false")


def trained(tmp: Path, *extra: str) -> Path:
    run = tmp / "run"
    train(tiny_recipe(*ONE_EPOCH, *extra), run, console=QUIET, evaluate=False)
    return run


@pytest.fixture(scope="module")
def vit_run(tmp_path_factory) -> Path:
    """A tiny ViT trained well past chance (INT8 agreement means little on a model that guesses)."""
    tmp = tmp_path_factory.mktemp("vit")
    images = write_image_folder(tmp / "images", ("red", "green", "blue"), per_class=120)
    run = trained(tmp, f"data.source={images}", "data.val_fraction=0.4", "schedule.epochs=6")
    assert json.loads((run / "summary.json").read_text())["best_val_top1"] > 0.5
    return run


def pixels(n: int, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def test_onnx_export_runs_at_any_batch_and_matches_the_checkpoint(vit_run: Path, tmp_path: Path):
    doc = export_run(vit_run, tmp_path / "export")
    model, _, _ = load_run_model(vit_run)
    ort = OrtModel(tmp_path / "export" / "model.onnx")
    for batch in (1, 7):  # exported at batch 2: the batch axis stays dynamic
        x = pixels(batch, seed=batch)
        np.testing.assert_allclose(ort(x), eager_logits(model, x), atol=1e-4, rtol=0)
    assert doc["parity"]["passed"] and doc["parity"]["max_abs_diff"] <= 1e-4 and doc["parity"]["top1_agreement"] == 1
    onnx.checker.check_model(str(tmp_path / "export" / "model.onnx"), full_check=True)
    assert doc["onnx_opset"] >= 18


def test_model_json_holds_what_a_server_needs(vit_run: Path, tmp_path: Path):
    export_run(vit_run, tmp_path / "export", ExportOptions(version="2.1.0"))
    doc = json.loads((tmp_path / "export" / "model.json").read_text())
    summary = json.loads((vit_run / "summary.json").read_text())
    recipe = tiny_recipe(*ONE_EPOCH)
    assert doc["classes"] == summary["classes"] and doc["version"] == "2.1.0"
    assert doc["img_size"] == 16 and doc["crop_pct"] == recipe.augment.crop_pct
    assert doc["mean"] == list(recipe.data.normalization()[0]) and doc["interpolation"] == recipe.augment.interpolation
    assert doc["file_sha256"] == sha256(tmp_path / "export" / "model.onnx")
    assert doc["weights"]["sha256"] == sha256(Path(doc["weights"]["checkpoint"]) / doc["weights"]["file"])
    assert doc["recipe"]["model"]["name"] == recipe.model.name


def test_a_damaged_export_is_named_with_the_fix_and_a_sound_one_loads(vit_run: Path, tmp_path: Path):
    export_run(vit_run, tmp_path / "export")
    export, again = tmp_path / "export", "Export the run again into a new folder"
    assert load_classifier(export).classes == json.loads((vit_run / "summary.json").read_text())["classes"]
    model_json = (export / "model.json").read_text()
    for written, says in (
        (model_json[: len(model_json) // 2], r"model\.json is damaged \(.*: line \d+ column \d+"),  # json's reason
        (json.dumps({"file": "model.onnx"}), r"model\.json is damaged \(no format, classes, recipe\)"),
    ):
        (export / "model.json").write_text(written)
        with pytest.raises(VitkitError, match=says) as err:
            load_classifier(export)
        assert again in str(err.value)
    (export / "model.json").write_text(model_json)
    onnx_bytes = (export / "model.onnx").read_bytes()
    (export / "model.onnx").write_bytes(onnx_bytes[:1000])  # cut short: ONNX Runtime cannot parse it
    with pytest.raises(VitkitError, match=r"model\.onnx is not the file this export wrote \(its SHA-256 differs"):
        load_classifier(export)
    (export / "model.onnx").unlink()
    with pytest.raises(VitkitError, match=r"model\.onnx is missing: model\.json names it"):
        load_classifier(export)


def test_pt2_export_loads_with_torch_export(vit_run: Path, tmp_path: Path):
    doc = export_run(vit_run, tmp_path / "export", ExportOptions(format="pt2"))
    model, _, _ = load_run_model(vit_run)
    loaded = torch.export.load(str(tmp_path / "export" / "model.pt2")).module()
    x = torch.from_numpy(pixels(3))
    torch.testing.assert_close(loaded(x), model(x), atol=1e-5, rtol=0)
    assert doc["parity"]["passed"] and Pt2Model(tmp_path / "export" / "model.pt2")(pixels(1)).shape == (1, 3)


ADVISED_KWARGS = "model.kwargs={class_token: false, global_pool: avg, qk_norm: true, pos_embed: none}"


@pytest.mark.parametrize(
    "extra",
    [
        ("model.name=deit_tiny_distilled_patch16_224",),  # two heads, averaged as evaluation does
        ("model.name=vit_base_patch16_reg4_gap_256",),  # register tokens
        ("model.stem=conv",),  # convolutional stem with BatchNorm (eval statistics)
        ("model.mlp=local",),  # tokens reshaped to the patch grid and back in every block
        ("model.stem=conv", "model.mlp=local", ADVISED_KWARGS),  # the advisor's ViT: pooled, no position embedding
    ],
    ids=["distilled-deit", "register-tokens", "conv-stem", "local-mlp", "small-data-vit"],
)
def test_other_architectures_export_with_parity(tmp_path: Path, extra: tuple[str, ...]):
    run = trained(tmp_path, *extra)
    doc = export_run(run, tmp_path / "export")
    assert doc["parity"]["passed"]
    model, _, _ = load_run_model(run)
    x = pixels(5)
    np.testing.assert_allclose(OrtModel(tmp_path / "export" / "model.onnx")(x), eager_logits(model, x), atol=1e-4)


def test_a_lora_run_exports_merged(tmp_path: Path):
    weights, _ = save_tiny_pretrained(tmp_path / "pretrained.safetensors")
    run = trained(tmp_path, "finetune.strategy=lora", f"finetune.pretrained={weights}")
    doc = export_run(run, tmp_path / "export")
    graph = onnx.load(str(tmp_path / "export" / "model.onnx")).graph
    assert doc["parity"]["passed"] and not any("lora" in t.name for t in graph.initializer)


def test_a_corrupted_export_fails_the_parity_gate(vit_run: Path, tmp_path: Path):
    export_run(vit_run, tmp_path / "export")
    path = tmp_path / "export" / "model.onnx"
    proto = onnx.load(str(path))
    biggest = max(proto.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    values = numpy_helper.to_array(biggest)
    biggest.CopyFrom(numpy_helper.from_array(values * 1.01, biggest.name))  # a 1% error in one weight matrix
    onnx.save(proto, str(tmp_path / "corrupted.onnx"))
    model, _, _ = load_run_model(vit_run)
    x = pixels(32)
    parity = compare(eager_logits(model, x), OrtModel(tmp_path / "corrupted.onnx")(x))
    assert not parity.passed and parity.max_abs_diff > 1e-4
    with pytest.raises(ParityError, match=r"does not compute what the checkpoint computes.*not kept"):
        require_parity(parity, "the onnx export")


def test_static_int8_stays_within_its_accuracy_limit(vit_run: Path, tmp_path: Path):
    doc = export_run(vit_run, tmp_path / "export", ExportOptions(int8="static", calibration=64, max_int8_drop=0.02))
    q = doc["int8"]
    assert q["images"] == 144 and q["drop"] <= 0.02 and q["top1_agreement"] >= 0.9
    nodes = onnx.load(str(tmp_path / "export" / "model.int8.onnx")).graph.node
    dequantized = {out for n in nodes if n.op_type == "DequantizeLinear" for out in n.output}
    kept_fp32 = [n for n in nodes if n.op_type in ("LayerNormalization", "Softmax", "Erf")]  # Erf: GELU's core
    assert {n.op_type for n in kept_fp32} == {"LayerNormalization", "Softmax", "Erf"}
    assert not any(set(n.input) & dequantized for n in kept_fp32)  # they compute on unquantized fp32 inputs
    products = [n for n in nodes if n.op_type in ("MatMul", "Gemm", "Conv")]
    weight_products = 2 * 4 + 2  # per block qkv, proj, fc1, fc2; the patch embedding and the head
    assert len(products) == weight_products + 2 * 2  # and attention's two activation products per block
    quantized = sum(bool(set(n.input) & dequantized) for n in products)
    assert quantized == weight_products - len(q["kept_fp32"]) > 0
    ours = OrtModel(tmp_path / "export" / "model.int8.onnx")(pixels(4))
    assert ours.shape == (4, 3) and np.isfinite(ours).all()


def test_int8_is_refused_with_the_measured_drop_when_the_limit_cannot_be_met(vit_run: Path, tmp_path: Path):
    with pytest.raises(VitkitError, match=r"INT8 \(dynamic\) loses .* no INT8 model was written"):
        export_run(vit_run, tmp_path / "export", ExportOptions(int8="dynamic", max_int8_drop=-0.01))
    assert not (tmp_path / "export" / "model.int8.onnx").exists()
    assert not (tmp_path / "export" / "model.onnx").exists()  # a failed export leaves nothing to serve


def test_a_missing_deploy_extra_is_named(monkeypatch, vit_run: Path, tmp_path: Path):
    import sys

    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript now raises ImportError
    with pytest.raises(VitkitError, match=r"pip install 'vitkit\[deploy\]'"):
        export_run(vit_run, tmp_path / "export")
    assert not (tmp_path / "export").exists()
