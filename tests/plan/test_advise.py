"""`vitkit advise recipe`: the data profile, the rule's pieces against hand values, a recipe file that loads and
trains, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import tiny_recipe, write_image_folder, write_mirrored_classes
from tests.e2e.test_cli import vitkit
from vitkit.config import load_recipe
from vitkit.data.sources import load_source
from vitkit.errors import VitkitError
from vitkit.plan.advise import (
    DataProfile,
    advise_for_budget,
    advise_recipe,
    batch_size_for,
    ema_decay_for,
    epochs_for_minutes,
    measure_images_per_second,
    mirror_accuracy,
    patch_size_for,
    profile_data,
    render_yaml,
    strength_for,
)

FASHION_1K = DataProfile(1000, [100] * 10, 28, True, (0.286, 0.286, 0.286), (0.353, 0.353, 0.353))


@pytest.mark.parametrize(("img", "patch"), [(224, 16), (384, 16), (96, 8), (64, 8), (32, 4), (28, 4), (8, 2)])
def test_patch_gives_at_least_seven_tokens_a_side(img: int, patch: int):
    assert patch_size_for(img) == patch


@pytest.mark.parametrize(
    ("epochs", "images", "strength"),
    [
        (1, 1000, "none"),
        (19, 60_000, "none"),
        (20, 1000, "light"),
        (39, 60_000, "light"),
        (40, 1000, "moderate"),
        (149, 60_000, "moderate"),
        (150, 1000, "medium"),
        (99, 10**6, "moderate"),
        (100, 100_000, "strong"),
        (300, 1_281_167, "strong"),
    ],
)
def test_strength_follows_passes_and_data_size(epochs: int, images: int, strength: str):
    assert strength_for(epochs, images) == strength


def test_batch_ema_and_minutes_by_hand():
    assert [batch_size_for(n, 10_000) for n in (20_000, 200_000, 600_000, 10**8)] == [32, 64, 128, 128]
    assert batch_size_for(10**6, images=21) == 16
    assert ema_decay_for(1999) is None
    assert ema_decay_for(10_000) == pytest.approx(0.999)
    assert epochs_for_minutes(10, images=6000, images_per_second=1000) == 80  # 600 s x 1000 x 0.8 / 6000
    assert epochs_for_minutes(0.01, images=10**6, images_per_second=10) == 1


def test_profile_counts_sizes_and_measures_colour_against_numpy(tmp_path: Path):
    root = write_image_folder(tmp_path / "d", classes=("a", "b"), per_class=5)
    Image.fromarray(np.full((30, 20), 200, np.uint8)).save(root / "b" / "grey.png")  # a 6th "b": imbalance 1.2
    splits = load_source(str(root), val_fraction=0.2, seed=0)
    profile = profile_data(splits, sample=100)
    train_files = [Path(p) for p in splits.train.items]
    pixels = np.concatenate([np.asarray(Image.open(p).convert("RGB"), np.float64).reshape(-1, 3) for p in train_files])
    assert profile.images == len(train_files)
    assert sum(profile.class_counts) == len(train_files) and profile.classes == 2
    assert profile.size == int(np.median([min(Image.open(p).size) for p in train_files]))
    assert profile.grayscale is False
    np.testing.assert_allclose(profile.mean, pixels.mean(axis=0) / 255, atol=2e-3)
    np.testing.assert_allclose(profile.std, pixels.std(axis=0) / 255, atol=2e-3)


def test_grayscale_is_detected(tmp_path: Path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (9, 9), dtype=np.uint8)).save(
                tmp_path / name / f"{i}.png"
            )
    assert profile_data(load_source(str(tmp_path), val_fraction=0.25)).grayscale is True


def test_a_channel_that_never_varies_gets_imagenets_std_not_zero(tmp_path: Path):
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):
            rgb = rng.integers(0, 255, (9, 9, 3), dtype=np.uint8)
            rgb[..., 2] = 0  # no blue at all
            Image.fromarray(rgb).save(tmp_path / name / f"{i}.png")
    profile = profile_data(load_source(str(tmp_path), val_fraction=0.25))
    assert profile.std[2] == 0.225 and min(profile.std[:2]) > 0.2 and profile.constant_channels == ("B",)
    text = render_yaml(advise_recipe(profile, epochs=10), profile)
    assert "B does not vary there, so it takes ImageNet's" in text
    assert load_recipe("deit-tiny", [f"data.std={list(profile.std)}"]).data.std == profile.std
    with pytest.raises(VitkitError, match=r"every channel's std must be above 0"):
        load_recipe("deit-tiny", ["data.std=[0.3, 0.3, 0.0]"])


def test_data_smaller_than_any_grid_cell_is_said_to_be_outside_the_evidence():
    small = DataProfile(400, [40] * 10, 28, True, (0.3,) * 3, (0.3,) * 3)
    assert any(
        "400 training images is fewer than the grid's smallest cell" in n for n in advise_recipe(small, 50).notes
    )
    assert not any("smallest cell" in n for n in advise_recipe(FASHION_1K, 50).notes)


def test_data_of_one_class_is_refused_as_training_would_refuse_it(tmp_path: Path):
    write_image_folder(tmp_path / "d", classes=("only",), per_class=5)
    out = vitkit("advise", "recipe", "--data", str(tmp_path / "d"))
    assert out.returncode == 2 and "1 class (only): a classifier needs at least 2" in " ".join(out.stderr.split())


def test_recipe_file_loads_with_every_choice_and_a_reason_on_each_line(tmp_path: Path):
    advice = advise_recipe(FASHION_1K, 60, strength="medium")
    path = tmp_path / "advised.yaml"
    path.write_text(render_yaml(advice, FASHION_1K))
    recipe = load_recipe(str(path))
    assert advice.strength == "medium"
    assert (recipe.model.img_size, recipe.model.patch_size, recipe.model.embed_dim) == (28, 4, 64)
    assert recipe.augment.rrc_scale == (0.35, 1.0) and recipe.augment.randaugment == "rand-m5-mstd0.5-inc1"
    assert recipe.schedule.min_lr == 1e-5 and recipe.schedule.epochs == 60  # 1e-05 would be read as text
    assert recipe.train.batch_size == 32 and recipe.optim.lr_scaling == "none"
    assert recipe.data.mean == (0.286, 0.286, 0.286)
    values = [line for line in path.read_text().splitlines() if line.startswith("  ")]
    assert len(values) == len(advice.choices) and all("  # " in line for line in values)


def test_short_budget_turns_every_trick_off_and_deit_regime_gets_deit_strengths():
    short, long = advise_recipe(FASHION_1K, 5), advise_recipe(FASHION_1K, 400)
    assert short.value("model.drop_path_rate") == 0 and short.value("augment.mixup") == 0
    assert short.value("ema.enabled") is False
    assert long.strength == "medium" and long.value("augment.rrc_scale") == [0.35, 1.0]
    light = advise_recipe(FASHION_1K, 30)
    assert light.strength == "light" and light.value("augment.hflip") == 0.5  # flips pay from 20 passes
    assert light.value("augment.rrc_scale") == [1.0, 1.0] and light.value("augment.mixup") == 0
    assert short.value("augment.hflip") == 0
    assert long.value("model.drop_path_rate") == 0.1 and long.value("ema.enabled") is True
    imagenet = DataProfile(1_281_167, [1281] * 1000, 400, False, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    deit = advise_recipe(imagenet, 300)
    assert deit.strength == "strong" and deit.value("augment.cutmix") == 1.0
    assert (deit.value("model.img_size"), deit.value("model.patch_size"), deit.value("model.embed_dim")) == (
        224,
        16,
        384,
    )
    assert 0.99 < deit.value("ema.decay") < 1


def test_imbalance_and_pretrained_are_advised():
    skewed = DataProfile(2000, [1800, 200], 224, False, (0.5,) * 3, (0.25,) * 3)  # type: ignore[arg-type]
    assert advise_recipe(skewed, 20).value("train.imbalance") == "pos_weight"
    assert "train.imbalance" not in [c.field for c in advise_recipe(FASHION_1K, 20).choices]
    tuned = advise_recipe(skewed, 20, pretrained="vit_small_patch16_224.augreg_in21k")
    assert tuned.base == "finetune-full"
    own_layers = ("model.stem", "model.mlp", "model.kwargs")
    assert not set(own_layers) & {c.field for c in tuned.choices}  # pretrained weights keep timm's architecture
    assert advise_recipe(FASHION_1K, 20).value("model.stem") == "conv"  # from scratch: the convolutional stem
    assert tuned.value("model.name") == "vit_small_patch16_224"
    assert tuned.value("finetune.pretrained") == "vit_small_patch16_224.augreg_in21k"


def test_a_wrong_pretrained_source_is_named_and_a_weight_file_asks_for_its_architecture(tmp_path: Path):
    for source, message in [
        ("vit_smal_patch16_224", "not a file, a folder or a timm model name"),  # a typo
        (str(tmp_path / "runs" / "teacher"), "no such file or folder"),
        (str(tmp_path), "not a vitkit run, a timm model folder or a transformers checkpoint"),
    ]:
        with pytest.raises(VitkitError, match=message):
            advise_for_budget(FASHION_1K, epochs=20, pretrained=source)
    (tmp_path / "weights.safetensors").write_bytes(b"")
    from_file = advise_for_budget(FASHION_1K, epochs=20, pretrained=str(tmp_path / "weights.safetensors"))
    assert "model.name" not in [c.field for c in from_file.choices]
    assert any("set model.name to the architecture" in note for note in from_file.notes)


def test_weights_of_a_vitkit_run_keep_the_runs_image_size(tmp_path: Path):
    from tests.conftest import tiny_recipe
    from vitkit.config.loader import recipe_to_yaml

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "recipe.yaml").write_text(recipe_to_yaml(tiny_recipe("model.img_size=16")))
    from_run = advise_recipe(FASHION_1K, 20, pretrained=str(tmp_path / "run"))
    assert from_run.value("model.img_size") == 16 and "model.name" not in [c.field for c in from_run.choices]
    assert advise_recipe(FASHION_1K, 20, pretrained="vit_small_patch16_224.augreg_in21k").value("model.img_size") == 224


def test_from_scratch_the_advised_vit_is_the_small_data_one():
    """Conv stem, local MLPs, pooled tokens without a class token or position embedding, normalised queries and
    keys, 4 heads of 16."""
    from vitkit.models.build import build_model
    from vitkit.models.local import LocalMlp

    model = build_model(load_recipe("deit-tiny", advise_recipe(FASHION_1K, 200).overrides()).model, 10)
    assert getattr(model, "cls_token", None) is None and model.global_pool == "avg"
    assert model.pos_embed is None  # the convolutions' zero padding places the tokens
    assert all(isinstance(b.mlp, LocalMlp) and b.mlp.num_prefix_tokens == 0 for b in model.blocks)
    assert {(b.attn.num_heads, b.attn.head_dim, type(b.attn.q_norm).__name__) for b in model.blocks} == {
        (4, 16, "LayerNorm")
    }
    assert model(torch.zeros(2, 3, 28, 28)).shape == (2, 10)


def test_minutes_become_epochs_through_the_measured_speed():
    seen: list[int] = []

    def speed(recipe, classes):
        seen.append(classes)
        return 500.0  # images/s

    advice = advise_for_budget(FASHION_1K, minutes=5, speed=speed)
    assert advice.epochs == 120 and seen == [10]  # 300 s x 500 x 0.8 / 1000
    assert "500 training images/s" in next(c.why for c in advice.choices if c.field == "schedule.epochs")
    with pytest.raises(VitkitError, match="one way"):
        advise_for_budget(FASHION_1K, epochs=3, minutes=5)
    with pytest.raises(VitkitError, match="positive"):
        advise_for_budget(FASHION_1K, minutes=0)


@pytest.mark.parametrize(
    ("images", "epochs"), [(1258, 160), (1000, 200), (5000, 40), (6000, 30), (60000, 10), (1_000_000, 10)]
)
def test_without_a_budget_the_advice_takes_the_grids_long_budget(images: int, epochs: int):
    # 10x the grid's short budget of 20,000 images seen, the short one at least a pass: its 10x column by hand
    profile = DataProfile(images, [images // 10] * 10, 28, True, (0.3,) * 3, (0.3,) * 3)
    advice = advise_for_budget(profile)
    assert advice.epochs == epochs and advice.value("schedule.epochs") == epochs
    why = next(c.why for c in advice.choices if c.field == "schedule.epochs")
    assert "no budget given" in why and "--epochs-budget or --minutes" in why


def test_cli_writes_a_recipe_that_trains_and_never_overwrites_a_user_file(tmp_path: Path):
    data = write_image_folder(tmp_path / "data", per_class=8)
    recipe = tmp_path / "advised.yaml"
    out = vitkit("advise", "recipe", "--data", str(data), "--epochs-budget", "25", "--out", str(recipe))
    assert out.returncode == 0, out.stderr
    assert "strength light" in recipe.read_text()
    run = vitkit(
        "train",
        "--recipe",
        str(recipe),
        "--data",
        str(data),
        "--out",
        str(tmp_path / "run"),
        "--set",
        "schedule.epochs=1",
        "--set",
        "schedule.warmup_epochs=0",
        "--set",
        "train.precision=fp32",
        "--set",
        "data.num_workers=0",
    )
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "run" / "summary.json").exists()
    again = vitkit("advise", "recipe", "--data", str(data), "--epochs-budget", "5", "--out", str(recipe))
    assert again.returncode == 0 and "strength none" in recipe.read_text()  # its own file may be rewritten
    mine = tmp_path / "mine.yaml"
    mine.write_text("base: quickstart\n")
    refused = vitkit("advise", "recipe", "--data", str(data), "--epochs-budget", "5", "--out", str(mine))
    assert refused.returncode != 0 and "was not written by vitkit" in refused.stderr
    assert mine.read_text() == "base: quickstart\n"
    (data / "cat" / "broken.png").write_bytes(b"not a png")
    damaged = vitkit("advise", "recipe", "--data", str(data), "--epochs-budget", "5")
    assert damaged.returncode == 0 and "Traceback" not in damaged.stderr
    missing = vitkit("advise", "recipe", "--data", str(tmp_path / "nope"), "--epochs-budget", "5")
    assert missing.returncode != 0 and "nope" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_without_a_budget_advises_the_long_one():
    out = vitkit("advise", "recipe", "--data", "builtin:shapes")  # 6,000 images: 3 passes a short budget
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.strip().startswith("epochs:"))
    assert int(line.split(":")[1].split("#")[0]) == 30 and "no budget given" in line


def test_cli_minutes_measure_this_machine_and_fit_the_epochs():
    out = vitkit("advise", "recipe", "--data", "builtin:shapes", "--minutes", "3")
    assert out.returncode == 0, out.stderr
    line = next(line for line in out.stdout.splitlines() if line.strip().startswith("epochs:"))
    epochs = int(line.split(":")[1].split("#")[0])
    speed = float(line.split(" at ")[1].split(" training images/s")[0].replace(",", ""))
    assert speed > 0
    assert abs(epochs - epochs_for_minutes(3, 6000, speed)) <= 1  # the printed speed is rounded


@pytest.mark.parametrize(("precision", "autocast"), [("bf16", [torch.bfloat16] * 3), ("fp32", [])])
def test_the_speed_for_minutes_is_measured_in_the_runs_precision(
    monkeypatch: pytest.MonkeyPatch, precision: str, autocast: list[torch.dtype]
):
    seen: list[torch.dtype] = []
    real = torch.autocast

    def spy(device_type: str, dtype: torch.dtype | None = None, **kwargs):
        seen.append(dtype)
        return real(device_type, dtype=dtype, **kwargs)

    monkeypatch.setattr(torch, "autocast", spy)
    recipe = tiny_recipe(f"train.precision={precision}")
    assert measure_images_per_second(recipe, num_classes=10, steps=2) > 0
    assert seen == autocast  # a warm-up step and two timed ones, each under the run's autocast (none for fp32)


def test_mirror_accuracy_by_hand():
    # class 0 bright on the left, class 1 on the right: each mirror image is the other class's mean exactly
    left = np.array([[1.0, 0.0], [1.0, 0.0]])
    thumbs, labels = np.stack([left, left, left[:, ::-1]]), np.array([0, 0, 1])
    assert mirror_accuracy(thumbs, labels) == (1.0, 0.0)
    # a symmetric class stays itself mirrored; the asymmetric one, mirrored, is nearer the symmetric class's mean
    level, corner = np.array([[0.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 0.0], [0.0, 1.0]])
    assert mirror_accuracy(np.stack([level, corner]), np.array([0, 1])) == (1.0, 0.5)


@pytest.mark.parametrize(
    ("accuracy", "classes", "flips_change"),
    [
        ((0.91, 0.30), 10, True),  # 8-px digits: mirrored, the class means lose most of their skill
        ((0.66, 0.56), 10, False),  # Fashion-MNIST: its shoes point left, yet most of the skill stays
        ((1.0, 0.0), 2, True),
        ((0.15, 0.0), 10, False),  # class means barely above chance (photographs): no verdict, flips stay
        (None, 5, False),  # multi-label data, or too few sampled images per class
    ],
)
def test_flips_change_class_when_mirroring_takes_the_class_means_towards_chance(
    accuracy: tuple[float, float] | None, classes: int, flips_change: bool
):
    profile = DataProfile(1000, [100] * classes, 28, True, (0.5,) * 3, (0.25,) * 3, mirror_accuracy=accuracy)  # type: ignore[arg-type]
    assert profile.flips_change_class is flips_change


def test_mirrored_classes_get_no_flips_and_symmetric_ones_keep_them(tmp_path: Path):
    mirrored = profile_data(load_source(str(write_mirrored_classes(tmp_path / "m", 20) / "train"), val_fraction=0.2))
    assert mirrored.mirror_accuracy == (1.0, 0.0) and mirrored.flips_change_class
    advice = advise_recipe(mirrored, 60)
    assert advice.strength == "moderate" and advice.value("augment.mixup") == 0.2  # the rest of the strength stays
    flips = next(c for c in advice.choices if c.field == "augment.hflip")
    assert flips.value == 0 and "100% of the sampled images apart and 0% of their mirror images" in flips.why
    coloured = profile_data(load_source(str(write_image_folder(tmp_path / "c", per_class=8)), val_fraction=0.25))
    assert coloured.mirror_accuracy == (1.0, 1.0) and advise_recipe(coloured, 60).value("augment.hflip") == 0.5
