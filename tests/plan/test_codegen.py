"""`vitkit codegen`: the standalone script imports no vitkit and reproduces vitkit train's first 20 losses."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import tiny_recipe, write_image_folder
from tests.e2e.test_cli import vitkit
from vitkit.train.logging import read_metrics
from vitkit.train.loop import train

TRICKS = [
    "augment.rrc_scale=[0.5, 1.0]",
    "augment.hflip=0.5",
    "augment.rotation=5",
    "augment.random_erasing=0.25",
    "augment.mixup=0.8",
    "augment.cutmix=1.0",
    "augment.repeated_aug=2",
    "model.drop_path_rate=0.1",
    "model.stem=conv",
    "model.mlp=local",
    "model.kwargs={class_token: false, global_pool: avg, qk_norm: true, pos_embed: none}",  # the advised ViT
    "train.label_smoothing=0.1",
    "train.accumulation_steps=2",
    "optim.clip_grad=1.0",
    "ema.enabled=true",
    "ema.decay=0.99",
    "schedule.warmup_epochs=1",
    "train.batch_size=8",
    "train.log_every=1",
    "train.deterministic=true",
]


@pytest.fixture(scope="module")
def ejected(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("codegen")
    data = write_image_folder(root / "images", per_class=30)
    run = root / "run"
    train(tiny_recipe(f"data.source={data}", *TRICKS, "train.max_updates=10"), run, evaluate=False)
    result = vitkit("codegen", str(run))
    assert result.returncode == 0, result.stderr[-2000:]
    script = root / "train.py"
    script.write_text(result.stdout)
    return {"root": root, "data": data, "run": run, "script": script}


def test_the_script_imports_no_vitkit(ejected):
    text = ejected["script"].read_text()
    assert "import vitkit" not in text and "from vitkit" not in text
    compile(text, "train.py", "exec")


def test_the_script_reproduces_the_first_20_losses(ejected):
    out = subprocess.run(
        [sys.executable, str(ejected["script"]), "--max-steps", "20", "--out", str(ejected["root"] / "out")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ejected["root"],
    )
    assert out.returncode == 0, out.stderr[-3000:]
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    script_losses = [r["loss"] for r in rows if "step" in r]
    vitkit_losses = [r["loss"] for r in read_metrics(ejected["run"] / "metrics.jsonl", "step")]
    assert len(vitkit_losses) == 20 and len(script_losses) == 20
    assert script_losses == pytest.approx(vitkit_losses, abs=1e-5, rel=1e-5)
    assert (ejected["root"] / "out" / "model.safetensors").exists()


def test_recipes_the_script_cannot_reproduce_are_refused(tmp_path: Path):
    result = vitkit("codegen", "finetune-lora", "--data", str(tmp_path))
    assert result.returncode == 2 and "pretrained weights" in result.stderr


def test_a_run_folder_with_set_ejects_the_runs_recipe_changed(ejected):
    changed = vitkit("codegen", str(ejected["run"]), "--set", "optim.lr=0.0123")
    assert changed.returncode == 0, changed.stderr[-2000:]
    assert "'lr': 0.0123," in changed.stdout and "'lr': 0.0123," not in ejected["script"].read_text()
