from pathlib import Path

import pytest

from vitkit.config import load_recipe, shipped_recipes
from vitkit.config.loader import apply_overrides
from vitkit.config.schema import Recipe, scaled_lr
from vitkit.errors import RecipeError

EXPECTED = {
    "deit-tiny",
    "deit-small",
    "deit-base",
    "vit-plain",
    "quickstart",
    "small-data",
    "cnn-teacher",
    "deit-tiny-distilled",
}


def test_every_shipped_recipe_loads_and_validates():
    names = set(shipped_recipes())
    assert names >= EXPECTED
    for name in names:
        recipe = load_recipe(name)
        assert isinstance(recipe, Recipe)
        assert recipe.description, f"{name} needs a description"


def test_deit_recipes_carry_the_paper_settings():
    for name, model in [("deit-tiny", "vit_tiny"), ("deit-small", "vit_small"), ("deit-base", "vit_base")]:
        r = load_recipe(name)
        assert r.model.name.startswith(model)
        assert (r.optim.name, r.optim.lr, r.optim.lr_base_batch, r.optim.weight_decay) == ("adamw", 5e-4, 512, 0.05)
        assert (r.schedule.epochs, r.schedule.warmup_epochs) == (300, 5)
        assert r.train.label_smoothing == 0.1
        a = r.augment
        assert (a.mixup, a.cutmix, a.mix_switch_prob) == (0.8, 1.0, 0.5)
        assert a.randaugment == "rand-m9-mstd0.5-inc1"
        assert (a.random_erasing, a.repeated_aug, a.rrc_scale) == (0.25, 3, (0.08, 1.0))
        assert r.model.drop_path_rate == 0.1


def test_deit_tiny_distilled_is_deit_tiny_with_a_token_and_hard_distillation():
    distilled, plain = load_recipe("deit-tiny-distilled"), load_recipe("deit-tiny")
    assert distilled.model.name == "deit_tiny_distilled_patch16_224"
    assert (distilled.distill.type, distilled.distill.alpha, distilled.distill.teacher) == ("hard", 0.5, None)
    assert distilled.augment == plain.augment and distilled.optim == plain.optim
    assert load_recipe("cnn-teacher").distill.type == "none"


def test_distillation_with_cached_features_is_refused():
    with pytest.raises(RecipeError, match="cache_features"):
        load_recipe("finetune-head", ["distill.type=soft"])


def test_vit_plain_turns_every_trick_off():
    r = load_recipe("vit-plain")
    a = r.augment
    assert a.randaugment is None and a.mixup == 0 and a.cutmix == 0 and a.random_erasing == 0
    assert a.rrc_scale == (1.0, 1.0) and a.hflip == 0 and a.repeated_aug == 1
    assert r.model.drop_path_rate == 0 and r.train.label_smoothing == 0 and r.optim.weight_decay == 0
    assert not r.ema.enabled
    assert r.model.name == load_recipe("deit-tiny").model.name


def test_linear_lr_scaling_matches_deit_formula():
    r = load_recipe("deit-tiny", ["train.batch_size=256", "train.accumulation_steps=2"])
    assert r.effective_batch() == 512
    assert r.effective_lr() == pytest.approx(5e-4 * 512 / 512)
    assert scaled_lr(5e-4, 1024, 512) == pytest.approx(1e-3)
    assert scaled_lr(5e-4, 1024, 512, "none") == 5e-4


def test_override_parses_yaml_values():
    r = load_recipe("deit-tiny", ["optim.lr=1e-3", "augment.randaugment=null", "optim.betas=[0.8, 0.9]"])
    assert r.optim.lr == 1e-3 and r.augment.randaugment is None and r.optim.betas == (0.8, 0.9)


def test_override_typo_names_field_and_suggests():
    with pytest.raises(RecipeError, match=r"optim has no field 'lrr'.*optim\.lr"):
        load_recipe("deit-tiny", ["optim.lrr=1e-3"])
    with pytest.raises(RecipeError, match=r"section\.field=value"):
        apply_overrides({}, ["optim.lr"])
    with pytest.raises(RecipeError, match=r"the recipe has no section 'optm'\. Did you mean 'optim'\?"):
        load_recipe("deit-tiny", ["optm.lr=1e-3"])
    with pytest.raises(RecipeError, match=r"optim\.lr holds a value, not fields: 'optim\.lr=VALUE'"):
        load_recipe("deit-tiny", ["optim.lr.peak=1e-3"])
    with pytest.raises(RecipeError, match=r"e\.g\. 'model\.kwargs=\{qk_norm: true\}' \(this replaces"):
        load_recipe("deit-tiny", ["model.kwargs.qk_norm=true"])
    assert load_recipe("deit-tiny", ["model.kwargs={qk_norm: true}"]).model.kwargs == {"qk_norm": True}


def test_a_field_put_in_the_wrong_section_is_pointed_to_its_own(tmp_path: Path):
    """The epochs are a schedule's, not train's: no name in train is near 'epochs', so the hint looks across the
    sections, for overrides and for recipe files alike."""
    with pytest.raises(RecipeError, match=r"train has no field 'epochs'\. Did you mean 'schedule\.epochs'\?"):
        load_recipe("deit-tiny", ["train.epochs=3"])
    with pytest.raises(RecipeError, match=r"model has no field 'warmup_epoch'\. Did you mean 'schedule\.warmup_"):
        load_recipe("deit-tiny", ["model.warmup_epoch=1"])
    with pytest.raises(RecipeError, match=r"model has no field 'zzzqq'\.$"):  # nothing near it anywhere
        load_recipe("deit-tiny", ["model.zzzqq=1"])
    recipe = tmp_path / "r.yaml"
    recipe.write_text("base: deit-tiny\ntrain:\n  epochs: 3\noptim:\n  lrr: 1.0e-3\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(recipe))
    assert "train.epochs: unknown field in section 'train'. Did you mean 'schedule.epochs'?" in str(err.value)
    assert "optim.lrr: unknown field in section 'optim'. Did you mean 'lr'?" in str(err.value)


def test_wrong_type_names_field_value_and_origin():
    with pytest.raises(RecipeError) as err:
        load_recipe("deit-tiny", ["optim.lr=fast"])
    text = str(err.value)
    assert "optim.lr" in text and "'fast'" in text and "deit-tiny.yaml" in text


def test_impossible_values_are_refused():
    with pytest.raises(RecipeError, match="divisible"):
        load_recipe("deit-tiny", ["model.embed_dim=100", "model.num_heads=3"])
    with pytest.raises(RecipeError, match=r"warmup_epochs=5 must be below .*e\.g\. schedule\.warmup_epochs=0\.3"):
        load_recipe("deit-tiny", ["schedule.epochs=3"])
    with pytest.raises(RecipeError, match="must be even when Mixup"):
        load_recipe("deit-tiny", ["train.batch_size=31"])
    assert load_recipe("vit-plain", ["train.batch_size=31"]).train.batch_size == 31
    with pytest.raises(RecipeError, match=r"augment\.hflip"):
        load_recipe("deit-tiny", ["augment.hflip=1.5"])


def test_a_data_root_the_source_would_ignore_is_refused_and_the_message_is_vitkits_own():
    with pytest.raises(RecipeError) as err:
        load_recipe("quickstart", ["data.root=/home/me/images"])
    text = str(err.value)
    assert "data.root is read only by torchvision:NAME sources" in text and "builtin:shapes" in text
    assert "--data" in text and "Value error" not in text
    kept = load_recipe("deit-tiny", ["data.root=/tmp/cifar"], source="torchvision:CIFAR10")
    assert kept.data.root == "/tmp/cifar"


def test_a_field_given_twice_and_an_override_without_a_value_are_refused(tmp_path: Path):
    (tmp_path / "twice.yaml").write_text("base: deit-tiny\nmodel:\n  depth: 2\n  embed_dim: 64\n  depth: 3\n")
    with pytest.raises(RecipeError, match=r"'depth' is given twice \(lines 3 and 5\); keep one"):
        load_recipe(str(tmp_path / "twice.yaml"))
    with pytest.raises(RecipeError, match=r"override 'model.depth=' has no value\. Give one, or model.depth=null"):
        load_recipe("deit-tiny", ["model.depth="])
    assert load_recipe("deit-tiny", ["model.depth=null"]).model.depth is None  # unsetting, said explicitly


def test_typo_in_yaml_file_names_file_and_suggests(tmp_path: Path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: deit-tiny\noptim:\n  weigth_decay: 0.1\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(str(path))
    assert "mine.yaml" in str(err.value) and "optim.weigth_decay" in str(err.value)
    assert "weight_decay" in str(err.value)


def test_unknown_recipe_suggests_closest():
    with pytest.raises(RecipeError, match="deit-tiny"):
        load_recipe("deit-tiyn")


def test_base_chain_merges_sections():
    r = load_recipe("quickstart")
    assert r.model.img_size == 32  # from quickstart
    assert r.optim.weight_decay == 0.05  # from deit-tiny
    assert r.schedule.warmup_lr == 1e-6  # from deit-tiny


def test_the_old_name_max_steps_still_means_max_updates(tmp_path):
    """train.max_steps counted optimizer updates; it is now train.max_updates, and old files and --set still work."""
    old = tmp_path / "old.yaml"
    old.write_text("base: quickstart\ntrain:\n  max_steps: 7\n")
    assert load_recipe(str(old)).train.max_updates == 7
    assert load_recipe("quickstart", ["train.max_steps=5"]).train.max_updates == 5
    assert load_recipe("quickstart", ["train.max_updates=3"]).train.max_updates == 3


def test_a_run_folder_stands_for_the_recipe_it_was_trained_with(tmp_path: Path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "recipe.yaml").write_text("base: quickstart\noptim:\n  lr: 0.0042\n")
    assert load_recipe(str(run)).optim.lr == 0.0042


def test_what_is_not_a_recipe_file_is_named_with_the_fix(tmp_path: Path):
    with pytest.raises(RecipeError, match=r"folder with no recipe\.yaml") as err:
        load_recipe(str(tmp_path))  # a folder: before, a bare IsADirectoryError
    assert "a run folder written by vitkit train" in str(err.value)
    binary = tmp_path / "weights.bin"
    binary.write_bytes(bytes([0x80, 0xD0, 0xFF]) * 10)
    with pytest.raises(RecipeError, match=r"cannot be read as a recipe.*YAML text file"):
        load_recipe(str(binary))
    with pytest.raises(RecipeError, match=r"recipe file .*nope does not exist"):
        load_recipe(str(tmp_path / "nope"))  # a path, not a misspelt name
