"""Fine-tuning strategies: what is frozen, what trains, and at which learning rate."""

from pathlib import Path

import pytest
import torch
from rich.console import Console
from safetensors.torch import load_file, save_file

from tests.conftest import save_tiny_pretrained, tiny_recipe, tiny_vit
from vitkit.config.schema import FinetuneConfig, OptimConfig, ScheduleConfig
from vitkit.errors import RecipeError
from vitkit.models.finetune import apply_strategy, layer_ids, parameter_table, set_train_mode
from vitkit.train.checkpoint import load_training_state
from vitkit.train.loop import train
from vitkit.train.optim import build_optimizer, build_scheduler


def test_layer_ids_embedding_blocks_head():
    ids = layer_ids(tiny_vit())
    assert ids["cls_token"] == ids["pos_embed"] == ids["patch_embed.proj.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.1.mlp.fc2.bias"] == 2
    assert ids["head.weight"] == ids["head.bias"] == 3  # L + 1
    assert ids["norm.weight"] == 2  # timm groups the final norm with the last block


def test_layer_decay_gives_each_layer_base_lr_times_decay_power():
    model, base_lr, decay = tiny_vit(), 1e-3, 0.7
    optimizer = build_optimizer(model, OptimConfig(), base_lr, layer_decay=decay)
    scheduler = build_scheduler(optimizer, ScheduleConfig(epochs=2, warmup_epochs=0.0), 10, base_lr)
    scheduler.step_update(0)  # the first update runs at the peak: no warmup
    ids, num_layers = layer_ids(model), 3  # embedding 0, blocks 1..2, head 3 = L + 1
    names = {id(p): n for n, p in model.named_parameters()}
    seen = set()
    for group in optimizer.param_groups:
        for param in group["params"]:
            expected = base_lr * decay ** (num_layers - ids[names[id(param)]])
            assert group["lr"] == pytest.approx(expected, rel=1e-9)
            seen.add(names[id(param)])
    assert seen == set(names.values())


def test_partial_freezes_embedding_and_lower_blocks():
    model = apply_strategy(tiny_vit(), FinetuneConfig(strategy="partial", pretrained="x", freeze_blocks=1))
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert {"cls_token", "pos_embed", "patch_embed.proj.weight", "blocks.0.attn.qkv.weight"} <= frozen
    assert not any(n.startswith(("blocks.1.", "head.", "norm.")) for n in frozen)
    with pytest.raises(RecipeError, match="freeze_blocks=2 but the model has 2 blocks"):
        apply_strategy(tiny_vit(), FinetuneConfig(strategy="partial", pretrained="x", freeze_blocks=2))


def test_head_strategy_keeps_backbone_in_eval_mode():
    model = apply_strategy(tiny_vit(drop_rate=0.5, proj_drop_rate=0.5, drop_path_rate=0.5), _head())
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["head.weight", "head.bias"]
    set_train_mode(model, "head")
    assert model.head.training and not model.blocks.training and not model.blocks[1].drop_path1.training
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model.forward_features(x), model.forward_features(x))  # no dropout, no drop path


def _head() -> FinetuneConfig:
    return FinetuneConfig(strategy="head", pretrained="x")


def test_parameter_table_rows_add_up():
    model = apply_strategy(tiny_vit(), FinetuneConfig(strategy="partial", pretrained="x", freeze_blocks=1))
    optimizer = build_optimizer(model, OptimConfig(weight_decay=0.05), 1e-3, layer_decay=0.5)
    rows = parameter_table(model, optimizer, 1e-3)
    assert sum(r.params for r in rows) == sum(p.numel() for p in model.parameters())
    assert sum(r.share for r in rows) == pytest.approx(1.0)
    assert rows[-1].group == "frozen" and rows[-1].lr == 0.0
    head_rows = [r for r in rows if "head" in r.group]
    assert head_rows and all(r.lr == pytest.approx(1e-3) for r in head_rows)
    assert {r.weight_decay for r in rows if r.group != "frozen"} == {0.0, 0.05}


@pytest.mark.parametrize(
    "strategy",
    [
        ["finetune.strategy=partial", "finetune.freeze_blocks=1"],
        ["finetune.strategy=head"],
        ["finetune.strategy=head", "finetune.cache_features=true", "ema.enabled=false"],
        ["finetune.strategy=lora"],
    ],
    ids=["partial", "head", "head-cached", "lora"],
)
def test_frozen_weights_are_bitwise_unchanged_after_training(tmp_path: Path, strategy: list[str]):
    weights, source = save_tiny_pretrained(tmp_path / "pre.safetensors")
    recipe = tiny_recipe(*strategy, f"finetune.pretrained={weights}", "model.num_classes=10", "optim.lr=5e-2")
    run = train(recipe, tmp_path / "run", console=Console(quiet=True)).run_dir
    folder = run / "checkpoints" / "last"
    trained = load_file(str(folder / "model.safetensors"))
    before = source.state_dict()
    if "finetune.strategy=lora" in strategy:
        assert all("lora_" in k or ".head." in k for k in trained)  # the base is not even stored
        changed = [k for k in trained if "lora_B" in k or ".head." in k]
        assert changed and all(trained[k].abs().sum() > 0 for k in changed if "lora_B" in k)
        n_trainable = len(trained)
    else:
        frozen = [k for k in before if not k.startswith("head.") and not k.startswith(("blocks.1.", "norm."))]
        if "finetune.strategy=head" in strategy:
            frozen = [k for k in before if not k.startswith("head.")]
        for key in frozen:
            assert torch.equal(trained[key], before[key]), key
        for key in set(before) - set(frozen):
            assert not torch.equal(trained[key], before[key]), key
        n_trainable = len(before) - len(frozen)
    optimizer = load_training_state(folder)["optimizer"]
    in_groups = sum(len(g["params"]) for g in optimizer["param_groups"])
    assert in_groups == n_trainable and len(optimizer["state"]) == n_trainable


def test_strategy_without_pretrained_weights_is_refused(tmp_path: Path):
    from vitkit.errors import VitkitError

    with pytest.raises(VitkitError, match="--pretrained SOURCE"):
        train(tiny_recipe("finetune.strategy=lora"), tmp_path / "run", console=Console(quiet=True))
    with pytest.raises(Exception, match="layer_decay applies to strategies full and partial"):
        tiny_recipe("finetune.strategy=lora", "finetune.layer_decay=0.7")


def test_head_on_cached_features_of_a_distilled_deit(tmp_path: Path):
    """A distilled DeiT has two heads, each on its own token: the cached features keep both tokens, and the head
    trained on them gives exactly the logits the whole model gives on the images."""
    from vitkit.data.pipeline import ImageDataset, eval_transform, make_loader
    from vitkit.data.sources import load_source
    from vitkit.models.run_model import load_run_model
    from vitkit.train.probe import classifier_forward, extract_features

    source = tiny_vit(10, name="deit_tiny_distilled_patch16_224")
    weights = tmp_path / "deit.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(weights))
    recipe = tiny_recipe(
        "model.name=deit_tiny_distilled_patch16_224",
        "finetune.strategy=head",
        "finetune.cache_features=true",
        "ema.enabled=false",
        f"finetune.pretrained={weights}",
        "model.num_classes=10",
    )
    run = train(recipe, tmp_path / "run", console=Console(quiet=True))
    assert run.summary["epochs"] == 2
    model, cfg, _ = load_run_model(run.run_dir)
    images = load_source("builtin:shapes", img_size=16, synthetic_sizes=(96, 40)).val
    loader = make_loader(ImageDataset(images, eval_transform(cfg.augment, 16)), 20)
    features, _ = extract_features(model, loader, torch.device("cpu"), cfg.data.normalization(), None)
    assert features.shape[1:] == (2, 32)  # class and distillation token
    from_features = classifier_forward(model.eval())(features)
    x = torch.cat([batch for batch, _ in loader]).float().div(255)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in cfg.data.normalization())
    with torch.no_grad():
        torch.testing.assert_close(from_features, model((x - mean) / std), atol=1e-5, rtol=1e-5)
