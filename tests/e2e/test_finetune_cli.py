"""Fine-tuning as a user runs it: pretrain, fine-tune with --pretrained, merge LoRA, ask the freeze advisor."""

from pathlib import Path

import pytest
import timm
import torch
from rich.console import Console

from tests.conftest import TINY_OVERRIDES, save_tiny_pretrained, tiny_recipe, write_image_folder
from tests.e2e.test_cli import vitkit
from vitkit.errors import VitkitError
from vitkit.models.run_model import load_run_model
from vitkit.plan.freeze import advise_freeze
from vitkit.train.loop import train

# 6 updates of 4 images: a head on features that already separate the classes gets further than a model from scratch
FEW_STEPS = ["train.max_updates=6", "train.batch_size=4", "schedule.epochs=1", "schedule.warmup_epochs=0"]
FEW_STEPS += ["ema.enabled=false", "optim.lr=1e-3", "optim.lr_scaling=none"]


def test_pretrained_start_beats_scratch_for_the_same_few_steps(tmp_path: Path):
    """Pretrain on colour-coded classes; the downstream task has new classes (a new head) whose colours the
    pretrained features already separate, so a few steps suffice from the pretrained start but not from scratch."""
    quiet = Console(quiet=True)
    upstream = write_image_folder(tmp_path / "up", ("red", "green", "blue"), per_class=40)
    pretrain = tiny_recipe(f"data.source={upstream}", "schedule.epochs=6", "schedule.warmup_epochs=0")
    source = train(pretrain, tmp_path / "pretrain", console=quiet)
    assert source.summary["best_val_top1"] > 0.9
    downstream = write_image_folder(tmp_path / "down", ("r", "g"), per_class=24)
    few = [*FEW_STEPS, f"data.source={downstream}", "train.seed=7", "data.val_fraction=0.5"]
    scratch = train(tiny_recipe(*few), tmp_path / "scratch", console=quiet)
    tuned = train(tiny_recipe(*few, f"finetune.pretrained={source.run_dir}"), tmp_path / "tuned", console=quiet)
    # the task is easy enough that both may end right on every image: the validation loss says how much further
    # along the pretrained start is
    scratch_loss, tuned_loss = scratch.summary["final"]["val_loss"], tuned.summary["final"]["val_loss"]
    print(f"val loss: scratch {scratch_loss:.3f}, from pretrained {tuned_loss:.3f}")
    assert tuned_loss < 0.8 * scratch_loss
    assert tuned.summary["best_val_top1"] >= scratch.summary["best_val_top1"]


def test_cli_lora_fine_tune_then_merge(tmp_path: Path):
    weights, _ = save_tiny_pretrained(tmp_path / "pre.safetensors")
    sets = [arg for o in [*TINY_OVERRIDES, *FEW_STEPS, "model.num_classes=10"] for arg in ("--set", o)]
    run = tmp_path / "lora"
    out = vitkit("train", "--recipe", "finetune-lora", "--pretrained", str(weights), "--out", str(run), *sets)
    assert out.returncode == 0, out.stderr
    assert "parameters by optimizer group" in out.stdout and "LoRA adapters (8 tensors)" in out.stdout
    assert "frozen" in out.stdout

    merged = vitkit("merge-lora", str(run))
    assert merged.returncode == 0, merged.stderr
    plain = timm.create_model(f"local-dir:{run / 'merged'}", pretrained=True).eval()
    model, _, _ = load_run_model(run)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-5)

    again = vitkit("merge-lora", str(tmp_path))
    assert again.returncode == 2 and "not a vitkit run folder" in again.stderr
    rewrite = vitkit("merge-lora", str(run))  # over its own earlier export: allowed
    assert rewrite.returncode == 0, rewrite.stderr
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    refused = vitkit("merge-lora", str(run), "--out", str(mine))
    assert refused.returncode == 2 and "vitkit did not write (config.json)" in " ".join(refused.stderr.split())
    assert (mine / "config.json").read_text() == "{}"


@pytest.mark.parametrize(
    ("size", "similarity", "strategy"),
    [("300", "high", "head"), ("300", "medium", "lora"), ("5000", "medium", "partial"), ("50000", "low", "full")],
)
def test_advise_freeze_follows_the_decision_table(size: str, similarity: str, strategy: str):
    out = vitkit(
        "advise", "freeze", "--train-size", size, "--similarity", similarity, "--model", "vit_small_patch16_224"
    )
    assert out.returncode == 0, out.stderr
    assert f"--recipe finetune-{strategy} " in out.stdout and "trainable" in out.stdout
    if strategy == "partial":
        assert "finetune.freeze_blocks=7" in out.stdout  # 7 of ViT-S's 12 blocks


def test_advise_freeze_rejects_unknown_similarity():
    out = vitkit("advise", "freeze", "--train-size", "100", "--similarity", "close")
    assert out.returncode == 2 and "use high, medium or low" in out.stderr
    with pytest.raises(VitkitError, match="--num-classes 1: a classifier has at least 2 classes"):
        advise_freeze(100, "high", num_classes=1)


def test_plan_lora_prints_the_count_and_a_rank_sweep():
    out = vitkit(
        "plan", "lora", "--model", "vit_base_patch16_224", "--rank", "16", "--alpha", "16", "--num-classes", "101",
        "--sweep", "8,16",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "667,493 of 86,543,818 parameters (0.77%)" in out.stdout and "589,824 / 77,669" in out.stdout
    assert "rank sweep" in out.stdout and "372,581" in out.stdout  # r=8: 12 x 2 x 8 x 1536 + 77,669
    assert "LoRA is no longer a low-rank update" not in out.stdout
    # ViT-Ti is 192 wide: at rank 96 each q or v adapter holds 96 x (192 + 192) = 192 x 192 weights, as many as
    # the matrix it adapts (12 blocks x 2 x 36,864 = 884,736 in all)
    for rank, warned in (("95", False), ("96", True)):
        plan = vitkit("plan", "lora", "--model", "vit_tiny_patch16_224", "--rank", rank, "--sweep", "8")
        assert plan.returncode == 0 and ("LoRA is no longer a low-rank update" in plan.stdout) == warned, rank
    assert "the adapters (884,736) hold as many parameters as the weights they adapt (884,736)" in plan.stdout
    bad = vitkit("plan", "lora", "--model", "vit_base_patch16_224", "--sweep", "8,x")
    assert bad.returncode == 2 and "--sweep 8,x: give ranks as comma-separated integers" in bad.stderr
