"""Drift monitoring on a real server: the export's monitor model computes what eager PyTorch does, traffic from
the training distribution raises no alarm, and a stream of corrupted images (the robustness evaluator's
corruptions) raises the drift alarms, attention entropy included; vitkit monitor renders the logged window."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rich.console import Console
from safetensors.numpy import load_file
from safetensors.torch import save_file

from tests.conftest import PLAIN, tiny_recipe, tiny_vit
from tests.e2e.test_cli import vitkit
from tests.serve.client import Server, png
from vitkit.deploy.export import export_run
from vitkit.deploy.formats import OrtModel
from vitkit.deploy.monitoring import monitor_outputs
from vitkit.deploy.pixels import first_images, pixel_batches, run_splits, stacked
from vitkit.evaluate.attention import attention_entropy, capture_attention
from vitkit.evaluate.robustness import corrupt
from vitkit.models.run_model import load_run_model
from vitkit.train.loop import train

COLOURS = ("red", "green", "blue")


def colour_images(n_per_class: int, seed: int) -> list[tuple[int, np.ndarray]]:
    """The training distribution: noisy 12 x 14 images, one colour channel raised per class."""
    rng = np.random.default_rng(seed)
    out = []
    for label in range(len(COLOURS)):
        for _ in range(n_per_class):
            pixels = rng.integers(0, 60, size=(12, 14, 3), dtype=np.uint8)
            pixels[..., label] += 180
            out.append((label, pixels))
    return out


def sharp_attention_start(path: Path) -> Path:
    """A tiny ViT whose attention is far from uniform, as a trained model's is (a freshly initialised one attends
    almost uniformly, so its attention entropy could not change): its query and key weights are scaled up."""
    model = tiny_vit(len(COLOURS))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.qkv.weight[: 2 * model.embed_dim] *= 30.0
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("monitor")
    for i, (label, pixels) in enumerate(colour_images(60, seed=0)):
        (tmp / "images" / COLOURS[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(tmp / "images" / COLOURS[label] / f"{i}.png")
    start = sharp_attention_start(tmp / "start.safetensors")
    recipe = tiny_recipe(
        *PLAIN,
        "schedule.epochs=2",
        f"data.source={tmp / 'images'}",
        "data.val_fraction=0.5",
        f"finetune.pretrained={start}",
    )
    train(recipe, tmp / "run", console=Console(quiet=True), evaluate=False)
    export_run(tmp / "run", tmp / "export")
    return tmp / "export"


def test_monitor_model_and_reference_match_eager_pytorch(export: Path):
    doc = json.loads((export / "model.json").read_text())
    assert doc["monitor"]["file"] == "monitor.onnx" and doc["monitor"]["images"] == 90
    model, recipe, _ = load_run_model(export.parent / "run")
    pixels, _ = stacked(pixel_batches(recipe, first_images(run_splits(recipe)[1], 8)))
    embedding, entropy = OrtModel(export / "monitor.onnx").outputs(pixels)
    with torch.no_grad():
        cls = model.forward_head(model.forward_features(torch.from_numpy(pixels)), pre_logits=True).numpy()
        with capture_attention(model) as maps:
            model(torch.from_numpy(pixels))
    per_image = np.stack([[float(attention_entropy(m[i : i + 1]).mean()) for m in maps] for i in range(len(pixels))])
    np.testing.assert_allclose(embedding, cls, atol=1e-4)
    np.testing.assert_allclose(entropy, per_image, atol=1e-4)
    reference = load_file(str(export / "reference.safetensors"))
    np.testing.assert_allclose(reference["attention_entropy"][:8], monitor_outputs(model, pixels)[1], atol=1e-5)
    assert reference["confidence"].shape == (90,)


def send(server: Server, images: list[np.ndarray]) -> None:
    for start in range(0, len(images), 8):
        reply = server.post_files("/predict", [(f"{i}.png", png(p)) for i, p in enumerate(images[start : start + 8])])
        assert reply.status == 200, reply.body


def test_same_distribution_raises_no_alarm_and_corruption_does(export: Path, tmp_path: Path):
    server = Server(
        str(export),
        "--name",
        "shapes",
        "--monitor-window",
        "100",
        "--monitor-sample",
        "1",
        "--log",
        str(tmp_path / "log.jsonl"),
    )
    try:
        held_out = [p for _, p in colour_images(40, seed=5)]
        send(server, held_out)
        calm = server.get("/v2/models/shapes/monitor").json()
        assert calm["window"] == 100 and not calm["alarm"], calm
        assert calm["confidence"]["p_value"] > 0.01 and calm["embedding"]["p_value"] > 0.01
        batch = torch.from_numpy(np.stack(held_out)).permute(0, 3, 1, 2)
        noisy = corrupt(batch, "gaussian_noise", 5, seed=0).permute(0, 2, 3, 1).numpy()
        send(server, list(noisy))
        shifted = server.get("/v2/models/shapes/monitor").json()
        assert shifted["alarm"] and shifted["embedding"]["alarm"], json.dumps(shifted)
        assert shifted["attention"]["alarm"] and shifted["attention"]["max_abs_z"] > 5
        assert calm["attention"]["max_abs_z"] < 3  # the same distribution left attention where it was
        assert server.metric("vitkit_drift_alarm", model="shapes", version="1.0.0") == 1
    finally:
        server.close()
    out = vitkit("monitor", str(tmp_path / "log.jsonl"), "--out", str(tmp_path / "monitor.html"))
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "monitor.html").read_text()
    assert "data:image/png;base64," in page and "shapes 1.0.0" in page
