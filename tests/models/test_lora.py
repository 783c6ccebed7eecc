"""LoRA on timm ViTs: q/k/v split exactly, only the chosen adapters train, merging keeps the outputs."""

from pathlib import Path

import pytest
import timm
import torch
from rich.console import Console
from safetensors.torch import load_file

from tests.conftest import save_tiny_pretrained, tiny_recipe, tiny_vit
from vitkit.config.schema import FinetuneConfig
from vitkit.models.finetune import apply_strategy, count_parameters
from vitkit.models.lora import SplitQKV, apply_lora, fuse_qkv, merge_lora, split_qkv
from vitkit.models.run_model import export_plain_model, load_run_model
from vitkit.train.loop import train

LORA = FinetuneConfig(strategy="lora", pretrained="weights.safetensors")


def _randomize_lora_b(model: torch.nn.Module) -> None:
    """PEFT starts B at zero (a no-op adapter); give it values so merging has something to merge."""
    torch.manual_seed(1)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.5)


def test_split_qkv_is_exact_and_fuses_back():
    model = tiny_vit(3)
    x = torch.randn(2, 3, 16, 16)
    reference = model(x)
    fused_weight = model.blocks[0].attn.qkv.weight.clone()
    assert split_qkv(model) == 2
    assert isinstance(model.blocks[0].attn.qkv, SplitQKV)
    assert torch.equal(model(x), reference)
    assert torch.equal(model.blocks[0].attn.qkv.k.weight, fused_weight[32:64])
    assert fuse_qkv(model) == 2
    assert torch.equal(model.blocks[0].attn.qkv.weight, fused_weight)
    assert torch.equal(model(x), reference)


def test_lora_adapts_q_and_v_only_and_trains_the_head():
    model = apply_lora(tiny_vit(3), LORA)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".qkv.q.lora_A" in n for n in trainable) and any(".qkv.v.lora_B" in n for n in trainable)
    assert not any(".qkv.k." in n for n in trainable)
    assert not any(".qkv.k.lora" in n for n, _ in model.named_parameters())  # k has no adapter at all
    assert {n for n in trainable if "lora_" not in n} == {
        "base_model.model.head.modules_to_save.default.weight",
        "base_model.model.head.modules_to_save.default.bias",
    }


@pytest.mark.parametrize("targets", [["q", "v"], ["q", "k", "v", "proj", "fc1", "fc2"]])
def test_vit_base_trainable_share_matches_closed_form(targets: list[str]):
    """ViT-Base (d=768, 12 blocks, MLP 3072): r x (d_in + d_out) per adapted matrix, plus the head."""
    d, blocks, hidden, rank, classes = 768, 12, 3072, 8, 10
    with torch.device("meta"):
        model = timm.create_model("vit_base_patch16_224", num_classes=classes)
    cfg = FinetuneConfig(strategy="lora", pretrained="x", lora_rank=rank, lora_targets=targets)
    trainable, total = count_parameters(apply_strategy(model, cfg))
    shapes = {"q": (d, d), "k": (d, d), "v": (d, d), "proj": (d, d), "fc1": (d, hidden), "fc2": (hidden, d)}
    closed_form = blocks * sum(rank * sum(shapes[t]) for t in targets) + d * classes + classes
    print(f"ViT-Base LoRA r={rank} on {targets}: {trainable:,} of {total:,} trainable ({trainable / total:.3%})")
    assert trainable == closed_form
    if targets == ["q", "v"]:
        assert trainable == blocks * 2 * (2 * d * rank) + d * classes + classes
        assert trainable / total < 0.004


def test_merged_model_matches_adapter_model():
    model = apply_lora(tiny_vit(3), FinetuneConfig(strategy="lora", pretrained="x", lora_targets=["q", "v", "fc1"]))
    _randomize_lora_b(model)
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        adapted = model(x)
        merged = merge_lora(model)
        plain = merged(x)
    assert type(merged).__name__ == "VisionTransformer"
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert "blocks.0.attn.qkv.weight" in merged.state_dict()
    assert (adapted - tiny_vit(3)(x)).abs().max() > 1e-2  # the adapters do change the outputs
    torch.testing.assert_close(plain, adapted, atol=1e-5, rtol=1e-5)


def test_lora_run_saves_a_small_adapter_that_reloads_and_merges(tmp_path: Path):
    weights, source = save_tiny_pretrained(tmp_path / "pre.safetensors")
    recipe = tiny_recipe(
        "finetune.strategy=lora",
        f"finetune.pretrained={weights}",
        "ema.enabled=false",
        "schedule.epochs=1",
        "schedule.warmup_epochs=0",
    )
    run = train(recipe, tmp_path / "run", console=Console(quiet=True)).run_dir
    adapter = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    assert all("lora_" in k or ".head." in k for k in adapter)
    assert (run / "checkpoints" / "last" / "model.safetensors").stat().st_size < 0.25 * weights.stat().st_size

    model, _, info = load_run_model(run, "last")  # base weights + adapters, merged
    assert type(model).__name__ == "VisionTransformer" and info["strategy"] == "lora"
    export_plain_model(run, tmp_path / "merged", "last")
    plain = timm.create_model(f"local-dir:{tmp_path / 'merged'}", pretrained=True).eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), model(x), atol=1e-5, rtol=1e-5)
    # merged q and v moved away from the pretrained weights, k (no adapter) did not
    merged_qkv, pretrained_qkv = plain.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight
    assert torch.equal(merged_qkv[32:64], pretrained_qkv[32:64])
    assert not torch.allclose(merged_qkv[:32], pretrained_qkv[:32]) and not torch.allclose(
        merged_qkv[64:], pretrained_qkv[64:]
    )
