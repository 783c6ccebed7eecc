"""Recipe advisor: a training recipe sized to the user's data and compute budget, every choice with its reason.

The rule is read off a measured grid (benchmarks/recipe_grid.py, docs/advise.md): Fashion-MNIST subsets of 1k to
60k images and scikit-learn's 8-px digits, trained for budgets of 20k to 600k images seen, at four trick
strengths. What decides the strength is how many passes the budget makes over the data (epochs): a model that
sees each image a few times is still under-fitting, and augmentation, mixing and stochastic depth only slow it
down; one that sees each image a hundred times memorises it unless the images change under it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The rule (docs/advise.md), read from the advised ViT's own sweep: from 20 passes over the data regularisation
# and flips pay, from 40 passes mild crops and light Mixup too, from 150 passes wider crops, RandAugment m5 and
# erasing. The full DeiT strengths did not pay on any cell of the grid (up to 60k images and 200 passes), so they
# are kept for DeiT's own regime (ImageNet-sized data, long schedules), where its ablations measured them.
LIGHT_FROM_EPOCHS = 20
MODERATE_FROM_EPOCHS = 40
MEDIUM_FROM_EPOCHS = 150
STRONG_FROM_IMAGES, STRONG_FROM_EPOCHS = 100_000, 100
LIGHT = {"model.drop_path_rate": 0.1, "train.label_smoothing": 0.1, "optim.weight_decay": 0.05, "augment.hflip": 0.5}
MODERATE = {**LIGHT, "augment.rrc_scale": [0.7, 1.0], "augment.rrc_ratio": [0.75, 1.3333]}
MODERATE |= {"augment.mixup": 0.2, "augment.mix_prob": 0.5}
MEDIUM = {**MODERATE, "augment.rrc_scale": [0.35, 1.0], "augment.randaugment": "rand-m5-mstd0.5-inc1"}
MEDIUM |= {"augment.random_erasing": 0.1}
STRONG = {**MEDIUM, "augment.rrc_scale": [0.08, 1.0], "augment.randaugment": "rand-m9-mstd0.5-inc1"}
STRONG |= {"augment.random_erasing": 0.25, "augment.mixup": 0.8, "augment.cutmix": 1.0, "augment.mix_prob": 1.0}
# Settings of each strength, each adding to the one before. Values not named keep vit-plain's (no trick).
STRENGTHS: dict[str, dict[str, Any]] = {"none": {}, "light": LIGHT, "moderate": MODERATE, "medium": MEDIUM}
STRENGTHS["strong"] = STRONG
PATCH_SIZES = (16, 14, 8, 7, 4, 2, 1)
CONV_STEM_WHY = (
    "stride-2 3x3 convolutions make the tokens (Xiao et al. 2021): 0.6-7.7 points over patchify on 14 of 15 cells"
)
LOCAL_MLP_WHY = "a depthwise 3x3 convolution in every MLP mixes neighbouring patches (LocalViT, Li et al. 2021)"
# Beyer et al. 2022 pool the tokens; Dehghani et al. 2023 normalise queries and keys. With the local MLP and 4 heads
# of 16 channels (and batch 32), the variants benchmark measured +1.3 (1k images) and +2.2 points (5k) at 10x. The
# stem's and the MLPs' zero-padded convolutions tell a token where it is (Islam et al. 2020), so the learned
# position embedding goes: +0.6 and +0.2 points on 5k and 10k images at 10x.
SMALL_VIT_KWARGS = {"global_pool": "avg", "class_token": False, "qk_norm": True, "pos_embed": "none"}
SMALL_VIT_WHY = (
    "the mean of the patch tokens instead of a class token, normalised queries and keys, and no position "
    "embedding (the convolutions' padding places the tokens)"
)
MIRROR_MIN_SKILL = 0.1  # class means this little better than chance (photographs of things) tell nothing
MIRROR_KEPT = 0.5
MIRROR_PER_CLASS = 5  # sampled images per class on average: with fewer a class mean is a few images, not a class
MIRROR_SIDE = 16  # the mirror check compares 16x16 grayscale thumbnails
MIN_GRID = 7  # patches per side: fewer than 7x7 tokens leave attention little to relate
MIN_PATCH = 2
LARGEST_FROM_SCRATCH = 224


@dataclass(frozen=True)
class Choice:
    """One recipe field, its value and why."""

    field: str
    value: Any
    why: str


@dataclass
class RecipeAdvice:
    base: str
    choices: list[Choice]
    epochs: int
    strength: str
    notes: list[str] = field(default_factory=list)

    def overrides(self) -> list[str]:
        """The advice as `--set` overrides of `base`."""
        return [f"{c.field}={yaml_value(c.value)}" for c in self.choices]

    def value(self, name: str) -> Any:
        return next(c.value for c in self.choices if c.field == name)


def yaml_value(value: Any) -> str:
    """`value` as YAML flow text, for a recipe line and a `--set` override (PyYAML writes 1e-05 as 1.0e-05, which
    it reads back as a number, and quotes strings YAML would read as something else)."""
    return str(yaml.safe_dump(value, default_flow_style=True, width=10**6)).removesuffix("\n...\n").strip()


def strength_for(epochs: int, images: int) -> str:
    """The trick strength for `images` training images seen `epochs` times (docs/advise.md, "The rule")."""
    if images >= STRONG_FROM_IMAGES and epochs >= STRONG_FROM_EPOCHS:
        return "strong"
    if epochs >= MEDIUM_FROM_EPOCHS:
        return "medium"
    if epochs >= MODERATE_FROM_EPOCHS:
        return "moderate"
    return "light" if epochs >= LIGHT_FROM_EPOCHS else "none"


def image_size_for(native: int) -> int:
    """Train at the data's own resolution up to 224 px; larger images are resized to 224 (a ViT's cost grows with
    the square of the token count, and 224 is where published ViT recipes and weights live)."""
    return min(native, LARGEST_FROM_SCRATCH)


def patch_size_for(img_size: int) -> int:
    """The largest usual patch that still gives at least 7x7 tokens (16 at 224 px, 4 at 28-32 px), and never
    below 2 px: a one-pixel token carries a single value (on 8-px digits, patch 1 scored 24% where 2 scored 66%)."""
    for patch in PATCH_SIZES:
        if img_size // patch >= MIN_GRID:
            return max(patch, MIN_PATCH)
    return MIN_PATCH


def batch_size_for(images_seen: int, images: int) -> int:
    """The batch that gives at least 2000 updates over the budget, between 32 and 128: on short budgets the
    number of updates, not the batch, limits the model (10k Fashion-MNIST images, 2 epochs: 70% at batch 32,
    67% at 64, 56% at 128). Never more than the training images."""
    batch = min(128, max(32, 2 ** math.floor(math.log2(max(images_seen, 1) / 2000))))
    return int(min(batch, 2 ** math.floor(math.log2(max(images, 1)))))


def ema_decay_for(steps: int) -> float | None:
    """EMA decay averaging over about the last tenth of training; None (off) for runs under 2000 updates, where
    the average would still hold the early, poor weights."""
    return None if steps < 2000 else 1 - float(f"{10 / steps:.2g}")


@dataclass(frozen=True)
class DataProfile:
    """What the advisor needs to know about a dataset."""

    images: int  # training images
    class_counts: list[int]
    size: int  # median shorter side in pixels
    grayscale: bool
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    multilabel: bool = False
    description: str = ""
    # a nearest-class-mean classifier's accuracy on the sampled images and on their mirror images (single-label
    # data only): where mirroring takes it down towards chance, a flip turns an image into another class
    mirror_accuracy: tuple[float, float] | None = None
    constant_channels: tuple[str, ...] = ()  # channels with no variation in the sample: their std is ImageNet's

    @property
    def flips_change_class(self) -> bool:
        """Whether a horizontal flip changes what an image shows: the class means tell the sample's images apart
        better than chance, and mirrored, less than half as well (8-px digits: 91% and 30%, chance 10%;
        Fashion-MNIST, whose shoes all point left: 66% and 56%)."""
        if self.mirror_accuracy is None:
            return False
        chance = 1 / self.classes
        images, mirrored = self.mirror_accuracy
        return images - chance >= MIRROR_MIN_SKILL and mirrored - chance < MIRROR_KEPT * (images - chance)

    @property
    def classes(self) -> int:
        return len(self.class_counts)

    @property
    def imbalance(self) -> float:
        """Largest over smallest class count (inf when a class has no training image)."""
        smallest = min(self.class_counts)
        return max(self.class_counts) / smallest if smallest else math.inf


@dataclass(frozen=True)
class Width:
    """A from-scratch model for training sets of fewer than `below` images, and the lr it trains at."""

    below: float
    embed_dim: int
    depth: int
    heads: int
    name: str
    lr: float


WIDTHS = (
    Width(100_000, 64, 6, 4, "a 0.3M-parameter ViT", 2e-3),
    Width(1_000_000, 192, 12, 3, "DeiT-Ti", 1e-3),
    Width(math.inf, 384, 12, 6, "DeiT-S", 5e-4),
)


def _under(below: float) -> str:
    return f" (under {int(below):,})" if math.isfinite(below) else ""


def width_for(images: int) -> Width:
    return next(w for w in WIDTHS if images < w.below)


def _model_choices(profile: DataProfile, img_size: int, patch: int) -> list[Choice]:
    w = width_for(profile.images)
    side = img_size // patch
    return [
        Choice("model.name", "vit_tiny_patch16_224", "a plain ViT (timm), resized below"),
        Choice("model.img_size", img_size, f"the images' median shorter side is {profile.size} px"),
        Choice("model.patch_size", patch, f"{side}x{side} = {side * side} tokens"),
        Choice("model.stem", "conv", CONV_STEM_WHY),
        Choice("model.mlp", "local", LOCAL_MLP_WHY),
        Choice("model.kwargs", SMALL_VIT_KWARGS, SMALL_VIT_WHY),
        Choice("model.embed_dim", w.embed_dim, f"{w.name} for {profile.images:,} images{_under(w.below)}"),
        Choice("model.depth", w.depth, w.name),
        Choice("model.num_heads", w.heads, f"{w.name}: {w.embed_dim // w.heads} channels per head"),
        Choice("model.drop_rate", 0.0, "dropout stays off: DeiT found it hurts next to stochastic depth"),
    ]


def _data_choices(profile: DataProfile) -> list[Choice]:
    grey = " (grayscale, replicated to 3 channels)" if profile.grayscale else ""
    return [
        Choice("data.mean", list(profile.mean), f"measured on the training images{grey}"),
        Choice("data.std", list(profile.std), _std_reason(profile)),
    ]


# Every trick field the advisor sets, with its value when the trick is off (vit-plain's).
TRICKS_OFF: dict[str, Any] = {
    "model.drop_path_rate": 0.0,
    "train.label_smoothing": 0.0,
    "optim.weight_decay": 0.0,
    "augment.hflip": 0.0,
    "augment.rrc_scale": [1.0, 1.0],
    "augment.rrc_ratio": [1.0, 1.0],
    "augment.randaugment": None,
    "augment.random_erasing": 0.0,
    "augment.mixup": 0.0,
    "augment.cutmix": 0.0,
    "augment.mix_prob": 1.0,
}
TRICK_WHY = {
    "model.drop_path_rate": "stochastic depth",
    "train.label_smoothing": "label smoothing",
    "optim.weight_decay": "decoupled weight decay",
    "augment.hflip": "horizontal flips (turn off where left and right differ: text, digits, radiographs)",
    "augment.rrc_scale": "RandomResizedCrop area range",
    "augment.rrc_ratio": "RandomResizedCrop aspect range",
    "augment.randaugment": "RandAugment",
    "augment.random_erasing": "random erasing",
    "augment.mixup": "Mixup alpha",
    "augment.cutmix": "CutMix alpha",
    "augment.mix_prob": "share of batches mixed",
}
STRENGTH_WHY = {
    "none": "under 20 passes over the data the model is still under-fitting: tricks slow it down (light lost "
    "0.5-2.0 points to none on 6 of the 7 such cells of the grid)",
    "light": "from 20 passes, regularisation of the weights and the targets pays, and flips (+1.0 and +0.7 points "
    "on 5k and 10k images), while crops and Mixup do not yet (moderate: -2.9 and +0.1 points at 20 passes)",
    "moderate": "from 40 passes the images must change under the model: crops from 70% of the area and Mixup 0.2 "
    "on half the batches (+1.5 points over light on 5k images at 40 passes, +1.4 on 1k images at 60)",
    "medium": "from 150 passes, crops from 35% of the area, RandAugment m5 and erasing 0.1 on top of moderate "
    "(+0.4 points on 1k images at 200 passes, +0.6 on digits at 160; -2.7 on 1k images at 100)",
    "strong": "the published DeiT strengths, for DeiT's regime: 100k+ images and 100+ passes (DeiT's ablations "
    "on ImageNet lose points without RandAugment, Mixup, CutMix or erasing)",
}


def _trick_choices(strength: str, profile: DataProfile) -> list[Choice]:
    chosen = STRENGTHS[strength]
    out = []
    for name, off in TRICKS_OFF.items():
        value = chosen.get(name, off)
        state = "off" if value == off else "on"
        out.append(Choice(name, value, f"{TRICK_WHY[name]}: {state} (strength {strength})"))
        if name == "augment.hflip" and profile.flips_change_class:
            out[-1] = Choice(name, 0.0, _flips_off_why(profile))
    out += [
        Choice("augment.color_jitter", 0.0, "colour jitter off (RandAugment covers colour where it is on)"),
        Choice("augment.crop_pct", 1.0, "evaluate on the whole image (no centre crop): small objects fill it"),
        Choice("augment.repeated_aug", 1, "no repeated augmentation: DeiT's 3x is for very large batches"),
    ]
    return out


def _flips_off_why(profile: DataProfile) -> str:
    images, mirrored = profile.mirror_accuracy or (0.0, 0.0)
    return (
        f"horizontal flips off: the class means tell {images:.0%} of the sampled images apart and {mirrored:.0%} of "
        f"their mirror images (chance {1 / profile.classes:.0%}): a flip turns an image into another class"
    )


def _optim_choices(profile: DataProfile, epochs: int, batch: int, lr: float, budget_why: str) -> list[Choice]:
    steps = epochs * max(1, profile.images // batch)
    decay = ema_decay_for(steps)
    warmup = round(min(5.0, max(0.1 * epochs, 0.1)), 2)
    out = [
        Choice("schedule.epochs", epochs, budget_why),
        Choice("schedule.warmup_epochs", warmup, "a tenth of training, at most DeiT's 5 epochs"),
        Choice("schedule.min_lr", 1e-5, "cosine decay to 1e-5"),
        Choice("train.batch_size", batch, f"{steps:,} updates in all: at least 2000 where the budget allows"),
        Choice("optim.name", "adamw", "AdamW, as every ViT recipe"),
        Choice("optim.lr", lr, "for this model size at batch 32-128 (2e-3 beat 1e-3 and 5e-4 on 1k-10k images)"),
        Choice("optim.lr_scaling", "none", "the lr above is meant for this batch"),
        Choice("ema.enabled", decay is not None, f"{steps:,} updates" + ("" if decay else ": too few for an EMA")),
    ]
    if decay is not None:
        out.append(Choice("ema.decay", decay, "averages about the last tenth of the updates"))
    return out


def _imbalance_choices(profile: DataProfile) -> list[Choice]:
    if profile.multilabel or profile.imbalance > 3:
        why = f"largest class {profile.imbalance:.1f}x the smallest" if not profile.multilabel else "multi-label"
        return [Choice("train.imbalance", "pos_weight", f"{why}: weight the rare classes (docs/medical.md)")]
    return []


def advise_recipe(
    profile: DataProfile,
    epochs: int,
    budget_why: str = "",
    pretrained: str | None = None,
    strength: str | None = None,
) -> RecipeAdvice:
    """The advised recipe for `profile` trained for `epochs` passes; `strength` forces a trick strength (the
    benchmark grid sweeps it)."""
    level = strength or strength_for(epochs, profile.images)
    budget_why = budget_why or f"{epochs} passes over the data"
    notes = [f"trick strength {level}: {STRENGTH_WHY[level]}"]
    if profile.images < GRID_SMALLEST:
        notes.append(
            f"{profile.images:,} training images is fewer than the grid's smallest cell ({GRID_SMALLEST:,}): the rule "
            "is carried beyond what was measured, so check the advice on a held-out split (vitkit tune)"
        )
    if pretrained:
        img = pretrained_image_size(pretrained)
        choices = [Choice("finetune.pretrained", pretrained, "start from these weights")]
        local = Path(pretrained).expanduser()
        if local.is_file():
            notes.append(f"{pretrained} is a weight file: set model.name to the architecture it was saved from")
        elif not local.is_dir():  # a run or model folder fixes the architecture itself
            name = pretrained.split(".")[0].removeprefix("hf-hub:")
            choices.append(Choice("model.name", name, "the pretrained architecture"))
        choices.append(Choice("model.img_size", img, "the resolution the weights were trained at"))
        base, batch, lr = (
            "finetune-full",
            min(64, batch_size_for(epochs * profile.images, profile.images)),
            1e-3 * 64 / 512,
        )
    else:
        img = image_size_for(profile.size)
        choices = _model_choices(profile, img, patch_size_for(img))
        base, batch = "deit-tiny", batch_size_for(epochs * profile.images, profile.images)
        lr = width_for(profile.images).lr
        if profile.images < 10_000:
            notes.append("under 10k images, pretrained weights (--pretrained) usually beat any from-scratch recipe")
    choices += (
        _data_choices(profile) + _trick_choices(level, profile) + _optim_choices(profile, epochs, batch, lr, budget_why)
    )
    return RecipeAdvice(base, choices + _imbalance_choices(profile), epochs, level, notes)


GRID_SMALLEST = 1_000  # the fewest training images of a grid cell (Fashion-MNIST 1k; digits has 1,257)
MIN_STD = 0.01  # below this a channel is constant in the sample: dividing by its std would blow augmented pixels up


def _usable_std(measured: Any) -> tuple[float, float, float]:
    """The measured per-channel std, with ImageNet's for a channel that does not vary (e.g. an empty blue channel):
    normalising by zero makes every pixel infinite and the run learns nothing."""
    from vitkit.config.schema import IMAGENET_STD

    a, b, c = (round(float(s), 3) if s >= MIN_STD else IMAGENET_STD[i] for i, s in enumerate(measured))
    return a, b, c


def _std_reason(profile: DataProfile) -> str:
    if not profile.constant_channels:
        return "measured on the training images"
    flat = ", ".join(profile.constant_channels)
    return f"measured on the training images; {flat} does not vary there, so it takes ImageNet's (never 0)"


def profile_data(splits: Any, sample: int = 512, seed: int = 0) -> DataProfile:
    """Image count, class balance, median size, colour and per-channel mean/std of a sample of the training
    split (`DataSplits`); files are decoded only for the sample."""
    import numpy as np

    from vitkit.data.check import check_class_sets
    from vitkit.data.sources import to_pil
    from vitkit.errors import DataError, VitkitError

    check_class_sets(splits)  # what training would refuse (one class, labels outside the list) is refused here too
    train = splits.train
    rng = np.random.default_rng(seed)
    picked = rng.choice(len(train), size=min(sample, len(train)), replace=False)
    pixels, sides, grey, thumbs, labels = [], [], True, [], []
    for i in picked:
        try:
            pil = to_pil(train.items[int(i)])
            image = np.asarray(pil, dtype=np.float32) / 255.0
        except (OSError, ValueError, DataError):  # an unreadable file: training skips it too (data.bad_images)
            continue
        if not train.multilabel:
            thumbs.append(np.asarray(pil.convert("L").resize((MIRROR_SIDE, MIRROR_SIDE)), dtype=np.float32))
            labels.append(int(train.labels[int(i)]))
        sides.append(min(image.shape[:2]))
        grey = grey and bool(np.allclose(image[..., 0], image[..., 1]) and np.allclose(image[..., 1], image[..., 2]))
        pixels.append(image.reshape(-1, 3)[:: max(1, image.shape[0] * image.shape[1] // 4096)])
    if not pixels:
        raise VitkitError(f"{splits.description}: none of {len(picked)} sampled training images could be read.")
    flat = np.concatenate(pixels)
    std = flat.std(axis=0)
    if train.multilabel:
        counts = [int(c) for c in np.nansum(train.labels, axis=0)]
    else:
        counts = [int(c) for c in np.bincount(train.labels, minlength=len(splits.classes))]
    return DataProfile(
        images=len(train),
        class_counts=counts,
        size=int(np.median(sides)),
        grayscale=grey,
        mean=tuple(round(float(m), 3) for m in flat.mean(axis=0)),  # type: ignore[arg-type]
        std=_usable_std(std),
        constant_channels=tuple("RGB"[i] for i, v in enumerate(std) if v < MIN_STD),
        multilabel=train.multilabel,
        description=splits.description,
        mirror_accuracy=(
            mirror_accuracy(np.stack(thumbs), np.array(labels))
            if len(thumbs) >= MIRROR_PER_CLASS * len(splits.classes)
            else None
        ),
    )


def mirror_accuracy(thumbs: Any, labels: Any) -> tuple[float, float]:
    """How often the nearest class mean names an image's class, for the images (N x H x W) and for their mirror
    images. The means are of the same images: a check of what a flip does, not a classifier."""
    import numpy as np

    flat = thumbs.reshape(len(thumbs), -1)
    present = np.unique(labels)
    means = np.stack([flat[labels == c].mean(axis=0) for c in present])

    def accuracy(images: Any) -> float:
        distances = ((images[:, None, :] - means[None]) ** 2).sum(axis=-1)
        return float((present[distances.argmin(axis=1)] == labels).mean())

    return accuracy(flat), accuracy(thumbs[:, :, ::-1].reshape(len(thumbs), -1))


def epochs_for_minutes(minutes: float, images: int, images_per_second: float) -> int:
    """Passes over `images` that fit in `minutes` of training at `images_per_second`, keeping a fifth of the
    time for data loading and the validation passes."""
    return max(1, int(minutes * 60 * images_per_second * 0.8 // max(images, 1)))


def measure_images_per_second(recipe: Any, num_classes: int, steps: int = 5) -> float:
    """Training images per second of `recipe`'s model on this machine's default device, in the precision the run
    will use there (`train.precision`): the median of a few steps on random images at the recipe's batch and size,
    after one warm-up step."""
    import contextlib
    import statistics
    import time

    import torch

    from vitkit.models.build import build_model
    from vitkit.precision import autocast_dtype, resolve_device, resolve_precision

    device = resolve_device("auto")
    dtype = autocast_dtype(resolve_precision(recipe.train.precision, device))
    model = build_model(recipe.model, num_classes).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    size, batch = recipe.model.img_size, recipe.train.batch_size
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, num_classes, (batch,), device=device)
    seconds = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds[1:])  # the first step pays for allocation and kernel choice


def _section_lines(choices: list[Choice]) -> list[str]:
    lines: list[str] = []
    section = ""
    for c in choices:
        head, key = c.field.split(".", 1)
        if head != section:
            lines.append(f"{head}:")
            section = head
        lines.append(f"  {key}: {yaml_value(c.value)}  # {c.why}")
    return lines


def render_yaml(advice: RecipeAdvice, profile: DataProfile) -> str:
    """The advice as a commented recipe file (`vitkit train --recipe FILE`)."""
    colour = "grayscale" if profile.grayscale else "colour"
    balance = "multi-label" if profile.multilabel else f"largest class {profile.imbalance:.1f}x the smallest"
    header = [
        f"{HEADER} from the data and the budget; the rule and the grid it was read from are in",
        "# docs/advise.md.",
        f"# Data: {profile.images:,} training images, {profile.classes} classes ({balance}), {profile.size} px, "
        f"{colour}.",
        *[f"# {note}." for note in advice.notes],
    ]
    order = sorted(advice.choices, key=lambda c: SECTION_ORDER.index(c.field.split(".")[0]))
    description = f"Advised for {profile.images:,} images, {advice.epochs} epochs, trick strength {advice.strength}."
    body = [f"base: {advice.base}", f"description: {description}", *_section_lines(order)]
    return "\n".join(header + body) + "\n"


HEADER = "# Advised by `vitkit advise recipe`"
SECTION_ORDER = ["finetune", "model", "data", "augment", "optim", "schedule", "train", "ema"]


def is_advised_recipe(path: Any) -> bool:
    """Whether `path` is a recipe this advisor wrote (and so may be written again)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.readline().startswith(HEADER)
    except (OSError, UnicodeDecodeError):
        return False


def pretrained_image_size(source: str) -> int:
    """The resolution the weights were trained at: a vitkit run's own image size, else 224 (where published ViT
    weights live; timm resamples the position embedding to another size)."""
    from vitkit.config.loader import recipe_from_yaml_file

    recipe = Path(source).expanduser() / "recipe.yaml"
    return recipe_from_yaml_file(recipe).model.img_size if recipe.is_file() else LARGEST_FROM_SCRATCH


def check_pretrained(source: str) -> None:
    """A wrong --pretrained is named now, not when the advised recipe is trained: an unknown timm name (with the
    names that come close), a missing path, a folder that holds no weights. Hub weights are not downloaded."""
    from vitkit.config.schema import ModelConfig
    from vitkit.models.pretrained import resolve_pretrained

    if not Path(source).expanduser().is_file():  # a weight file is read once model.name says its architecture
        resolve_pretrained(source, ModelConfig())


# The grid's budgets: the short one sees 20,000 training images (at least one pass) and the long one 10x that.
# Without a budget the advisor takes the long one, where the advised ViT came within about a point of the ResNet of
# its size (docs/advise.md).
SHORT_BUDGET_IMAGES = 20_000
LONG_BUDGET = 10


def grid_epochs(images: int, multiple: int = LONG_BUDGET) -> int:
    """Passes over `images` of `multiple` times the grid's short budget."""
    return max(1, round(SHORT_BUDGET_IMAGES / images)) * multiple


def advise_for_budget(
    profile: DataProfile,
    epochs: int | None = None,
    minutes: float | None = None,
    pretrained: str | None = None,
    speed: Any = None,
) -> RecipeAdvice:
    """Advice for a budget in epochs, or in minutes of training on this machine: then the advised model's
    training speed is measured here (`speed(recipe, classes)` images/s; measure_images_per_second by default)
    and turned into epochs. Without either, the grid's long budget (`grid_epochs`)."""
    from vitkit.config.loader import load_recipe
    from vitkit.errors import VitkitError

    if epochs is not None and minutes is not None:
        raise VitkitError("give the budget one way: --epochs-budget E (passes over the data) or --minutes M.")
    if pretrained:
        check_pretrained(pretrained)
    if epochs is None and minutes is None:
        epochs = grid_epochs(profile.images)
        why = (
            f"no budget given: the grid's long budget (about {LONG_BUDGET * SHORT_BUDGET_IMAGES:,} images seen, at "
            f"least {LONG_BUDGET} passes); --epochs-budget or --minutes fits yours"
        )
        return advise_recipe(profile, epochs, why, pretrained)
    if epochs is not None:
        if epochs < 1:
            raise VitkitError(f"--epochs-budget {epochs}: give at least 1 epoch.")
        return advise_recipe(profile, epochs, f"the budget: {epochs} epochs", pretrained)
    assert minutes is not None
    if minutes <= 0:
        raise VitkitError(f"--minutes {minutes}: give a positive number of minutes.")
    draft = advise_recipe(profile, 1, pretrained=pretrained)
    per_second = float(
        (speed or measure_images_per_second)(load_recipe(draft.base, draft.overrides()), profile.classes)
    )
    fitted = epochs_for_minutes(minutes, profile.images, per_second)
    why = f"{minutes:g} minutes at {per_second:,.0f} training images/s measured here, a fifth kept for data and eval"
    return advise_recipe(profile, fitted, why, pretrained)
