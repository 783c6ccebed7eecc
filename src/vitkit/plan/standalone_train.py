"""Train a Vision Transformer on an image folder: one standalone script (torch, torchvision and timm only).

Written by `vitkit codegen`, which filled in CONFIG below from a vitkit recipe or run. It does what `vitkit train`
does for that recipe, step for step (same data order, augmentation seeds, model, parameter groups, schedule, EMA
and loss), so its losses match vitkit's; change anything you like from here.

    python train.py --data DIR --out runs/NAME      # DIR/<class>/* or DIR/train/<class>/* + DIR/val/<class>/*
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image, ImageOps
from safetensors.torch import save_file
from timm.data import Mixup, create_transform
from timm.data.distributed_sampler import RepeatAugSampler
from timm.data.loader import fast_collate
from timm.data.mixup import mixup_target
from timm.data.random_erasing import RandomErasing
from timm.layers import Mlp, PatchEmbed
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from timm.utils import ModelEmaV3

CONFIG: dict[str, Any] = {}  # the recipe, filled in by vitkit codegen


def patch_posterize() -> None:
    """Pillow 13 refuses posterize(img, 0), which timm's RandAugment asks for at its top magnitude; keep the old
    meaning (a black image) so a long run does not stop on it."""
    from timm.data import auto_augment

    try:
        ImageOps.posterize(Image.new("RGB", (1, 1)), 0)
        return
    except ValueError:
        pass

    def posterize(img: Image.Image, bits_to_keep: int, **_: Any) -> Image.Image:
        if bits_to_keep >= 8:
            return img
        return img.point(lambda _: 0) if bits_to_keep <= 0 else ImageOps.posterize(img, bits_to_keep)

    for name in ("Posterize", "PosterizeIncreasing", "PosterizeOriginal"):
        if name in auto_augment.NAME_TO_OP:
            auto_augment.NAME_TO_OP[name] = posterize


IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


# --- data: an image folder, decoded once into memory --------------------------------------------------------


def scan(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels, dtype=np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """About val_fraction of every class held out (at least one of a class with 2+ images), seeded."""
    rng = np.random.default_rng(seed)
    train_idx, val_idx = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        rng.shuffle(idx)
        n_val = min(max(round(len(idx) * val_fraction), 1 if len(idx) > 1 else 0), len(idx) - 1)
        val_idx.append(idx[:n_val])
        train_idx.append(idx[n_val:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(val_idx))


def image_folder(root: Path, val_fraction: float, seed: int) -> tuple[list[Path], np.ndarray, list[Path], np.ndarray]:
    """(train paths, labels, val paths, labels): root/train + root/val, or root/<class> split per class."""
    val_dir = next((root / n for n in ("val", "validation", "valid", "test") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and val_dir is not None:
        classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
        return (*scan(root / "train", classes), *scan(val_dir, classes))
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = scan(root, classes)
    train_idx, val_idx = stratified_split(labels, val_fraction, seed)
    return [paths[i] for i in train_idx], labels[train_idx], [paths[i] for i in val_idx], labels[val_idx]


def to_rgb(img: Image.Image) -> Image.Image:
    """RGB, with transparency composited over white (dropping alpha shows whatever hides under it)."""
    if img.mode == "RGB":
        return img
    if "A" in img.mode or "transparency" in img.info:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, img.convert("RGBA")).convert("RGB")
    return img.convert("RGB")


def decode(path: Path, max_side: int) -> np.ndarray:
    """The image upright (EXIF) as RGB uint8, its shorter side capped at max_side (enough for the crops)."""
    with Image.open(path) as file:
        file.load()
        img = to_rgb(ImageOps.exif_transpose(file))
    if min(img.size) > max_side:
        scale = max_side / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


# --- per-image augmentation with a seed per position in the epoch -----------------------------------------

MASK64 = 2**64 - 1


def sample_seed(seed: int, epoch: int, position: int) -> int:
    """A SplitMix64 hash of (run seed, epoch, position): each image's augmentation seed."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xD1B54A32D192ED03 + (position + 1) * 0x8CB92BA72F3D8DD7) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return (x ^ (x >> 31)) >> 1


@contextmanager
def preserved_rngs() -> Iterator[None]:
    """The global RNGs as they were after the body: per-image seeding never disturbs dropout or Mixup."""
    states = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.default_generator.set_state(states[2])


def epoch_order(size: int, seed: int, epoch: int, repeats: int) -> list[int]:
    """The epoch's image order: a seeded shuffle, or DeiT's repeated augmentation (each image `repeats` times)."""
    if repeats > 1:
        sampler = RepeatAugSampler(range(size), num_replicas=1, rank=0, num_repeats=repeats)
        sampler.set_epoch(seed * 100_003 + epoch)
        return list(sampler)
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(size, generator=generator).tolist()


def train_batches(
    images: list[np.ndarray], labels: np.ndarray, transform: Any, epoch: int, c: dict[str, Any]
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Full batches of uint8 images (and labels) in the epoch's order, each image augmented from its own seed."""
    order, batch = epoch_order(len(images), c["seed"], epoch, c["repeated_aug"]), c["batch_size"]
    for start in range(0, len(order) - batch + 1, batch):
        samples = []
        with preserved_rngs():
            for position in range(start, start + batch):
                s = sample_seed(c["seed"], epoch, position)
                random.seed(s)
                np.random.seed(s % 2**32)
                torch.default_generator.manual_seed(s)
                index = order[position]
                samples.append((transform(Image.fromarray(images[index])), int(labels[index])))
        yield fast_collate(samples)


def normalize(images: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean, device=images.device).view(1, -1, 1, 1) * 255
    s = torch.tensor(std, device=images.device).view(1, -1, 1, 1) * 255
    return (images.float() - m) / s


# --- model, optimizer, schedule -----------------------------------------------------------------------------


def stem_layers(in_chans: int, embed_dim: int, patch_size: int) -> torch.nn.Sequential:
    """A convolutional stem (Xiao et al. 2021): stride-2 3x3 conv-BN-ReLU stages while 2 divides what is left of
    the patch, channels doubling up to embed_dim, then one convolution over the rest of the patch."""
    halvings = 0
    while patch_size % 2 ** (halvings + 1) == 0:
        halvings += 1
    layers: list[torch.nn.Module] = []
    channels = in_chans
    for stage in range(halvings):
        out = max(8, embed_dim // 2 ** (halvings - 1 - stage))
        conv = torch.nn.Conv2d(channels, out, 3, stride=2, padding=1, bias=False)
        layers += [conv, torch.nn.BatchNorm2d(out), torch.nn.ReLU()]
        channels = out
    rest = patch_size // 2**halvings
    layers.append(torch.nn.Conv2d(channels, embed_dim, kernel_size=rest, stride=rest))
    return torch.nn.Sequential(*layers)


class ConvStemEmbed(PatchEmbed):
    """timm's PatchEmbed (same grid and token count) whose projection is the convolutional stem."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.proj = stem_layers(self.proj.in_channels, self.proj.out_channels, self.patch_size[0])  # type: ignore[assignment]


class LocalMlp(Mlp):
    """timm's Mlp with a depthwise 3x3 convolution over the patch grid after fc1 (LocalViT, Li et al. 2021); the
    class and register tokens pass it unchanged."""

    num_prefix_tokens = 1

    def __init__(self, in_features: int, hidden_features: int | None = None, **kwargs: Any) -> None:
        super().__init__(in_features, hidden_features, **kwargs)
        weight = self.fc1.weight
        hidden = int(weight.shape[0])
        self.local = torch.nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden, device=weight.device)
        self.local_act = torch.nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x))
        b, n, c = x.shape
        prefix, side = self.num_prefix_tokens, math.isqrt(n - self.num_prefix_tokens)
        patches = self.local(x[:, prefix:].transpose(1, 2).reshape(b, c, side, side)).flatten(2).transpose(1, 2)
        x = self.local_act(torch.cat([x[:, :prefix], patches], dim=1) if prefix else patches)
        return self.drop2(self.fc2(self.norm(self.drop1(x))))


def build_model(c: dict[str, Any], num_classes: int) -> torch.nn.Module:
    layers: dict[str, Any] = {"embed_layer": ConvStemEmbed} if c["conv_stem"] else {}
    if c["local_mlp"]:
        layers["mlp_layer"] = LocalMlp
    model = timm.create_model(c["model"], num_classes=num_classes, **c["model_kwargs"], **layers)
    for module in model.modules():
        if isinstance(module, LocalMlp):
            module.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))
    for module in model.modules():  # the attention kernel vitkit chose: fused SDPA or explicit math
        if hasattr(module, "fused_attn"):
            module.fused_attn = c["fused_attention"]
    if c["norm_eps"] is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.eps = c["norm_eps"]
    if c["grad_checkpointing"]:
        model.set_grad_checkpointing(True)  # type: ignore[operator]
    return model


def evaluate(model: torch.nn.Module, images: list[np.ndarray], labels: np.ndarray, c: dict[str, Any]) -> float:
    """Top-1 on the validation images after the eval transform (resize, centre crop)."""
    transform = create_transform(
        c["img_size"], is_training=False, crop_pct=c["crop_pct"], interpolation=c["interpolation"], use_prefetcher=True
    )
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), c["batch_size"]):
            chunk = [(transform(Image.fromarray(x)), 0) for x in images[start : start + c["batch_size"]]]
            pixels, _ = fast_collate(chunk)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c["precision"] == "bf16"):
                logits = model(normalize(pixels, c["mean"], c["std"]))
            correct += int((logits.argmax(1).numpy() == labels[start : start + len(chunk)]).sum())
    return correct / max(len(images), 1)


def main() -> None:
    c = CONFIG
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=c["data"], help="image folder")
    parser.add_argument("--out", type=Path, default=Path("runs/standalone"), help="where the weights go")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (micro-batches)")
    args = parser.parse_args()
    if c["deterministic"]:
        torch.use_deterministic_algorithms(True)
    random.seed(c["seed"])
    np.random.seed(c["seed"] % 2**32)
    torch.manual_seed(c["seed"])

    train_paths, train_labels, val_paths, val_labels = image_folder(args.data, c["val_fraction"], c["seed"])
    num_classes = int(max(train_labels.max(), val_labels.max())) + 1
    train_images = [decode(p, 2 * c["img_size"]) for p in train_paths]
    val_images = [decode(p, 2 * c["img_size"]) for p in val_paths]
    model = build_model(c, num_classes)

    # parameter groups: no weight decay on norms, biases, position embedding and class token; layer decay
    optimizer_args = {"betas": tuple(c["betas"]), "eps": c["eps"]} if c["optimizer"] == "adamw" else {}
    if c["optimizer"] == "momentum":
        optimizer_args = {"momentum": c["momentum"]}
    effective_batch = c["batch_size"] * c["accumulation_steps"]
    peak_lr = c["lr"] * effective_batch / c["lr_base_batch"] if c["lr_scaling"] == "linear" else c["lr"]
    optimizer = create_optimizer_v2(
        model,
        opt=c["optimizer"],
        lr=peak_lr,
        weight_decay=c["weight_decay"],
        layer_decay=c["layer_decay"],
        **optimizer_args,
    )
    ema = ModelEmaV3(model, decay=c["ema_decay"], use_warmup=c["ema_warmup"]) if c["ema"] else None

    patch_posterize()
    transform = create_transform(
        c["img_size"],
        is_training=True,
        scale=tuple(c["rrc_scale"]),
        ratio=tuple(c["rrc_ratio"]),
        hflip=c["hflip"],
        color_jitter=c["color_jitter"] or None,  # type: ignore[arg-type]  # timm applies it only without RandAugment
        auto_augment=c["randaugment"],
        interpolation=c["interpolation"],
        use_prefetcher=True,
    )
    if c["rotation"]:
        from torchvision.transforms import Compose, InterpolationMode, RandomRotation

        transform = Compose([RandomRotation(c["rotation"], interpolation=InterpolationMode.BILINEAR), transform])
    erasing = RandomErasing(c["random_erasing"], mode=c["erasing_mode"], device="cpu") if c["random_erasing"] else None
    mixing = c["mix_prob"] > 0 and (c["mixup"] > 0 or c["cutmix"] > 0)
    mixup = None
    if mixing:
        mixup = Mixup(
            mixup_alpha=c["mixup"],
            cutmix_alpha=c["cutmix"],
            prob=c["mix_prob"],
            switch_prob=c["mix_switch_prob"],
            mode=c["mix_mode"],
            label_smoothing=c["label_smoothing"],
            num_classes=num_classes,
        )

    # warmup then cosine, stepped once per optimizer update
    sampled = len(epoch_order(len(train_images), c["seed"], 0, c["repeated_aug"]))  # DeiT's sampler keeps the size
    steps_per_epoch = (sampled // c["batch_size"]) // c["accumulation_steps"] * c["accumulation_steps"]
    updates_per_epoch = steps_per_epoch // c["accumulation_steps"]
    total = c["epochs"] * updates_per_epoch
    warmup = min(round(c["warmup_epochs"] * updates_per_epoch), total - 1)
    scheduler = CosineLRScheduler(
        optimizer,
        t_initial=total - warmup,
        lr_min=c["min_lr"],
        warmup_t=warmup,
        warmup_lr_init=c["warmup_lr"],
        warmup_prefix=True,
        t_in_epochs=False,
    )
    criterion = SoftTargetCrossEntropy()

    step, updates = 0, 0
    max_steps = args.max_steps or c["epochs"] * steps_per_epoch
    for epoch in range(c["epochs"]):
        model.train()
        for images, labels in train_batches(train_images, train_labels, transform, epoch, c):
            x = normalize(images, c["mean"], c["std"])
            if erasing is not None:
                x = erasing(x)
            if mixup is not None:
                x, targets = mixup(x, labels)
            else:
                targets = mixup_target(labels, num_classes, lam=1.0, smoothing=c["label_smoothing"])
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=c["precision"] == "bf16"):
                logits = model(x)
            loss = criterion(logits.float(), targets)
            (loss / c["accumulation_steps"]).backward()
            step += 1
            if step % c["accumulation_steps"] == 0:
                if c["clip_grad"]:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), c["clip_grad"])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                updates += 1
                scheduler.step_update(updates)
                if ema is not None:
                    ema.update(model, step=updates)
            print(json.dumps({"step": step, "epoch": epoch + 1, "loss": float(loss)}), flush=True)
            if step >= max_steps or step % steps_per_epoch == 0:
                break
        top1 = evaluate(model, val_images, val_labels, c)
        ema_top1 = evaluate(ema.module, val_images, val_labels, c) if ema is not None else None
        print(json.dumps({"epoch": epoch + 1, "val_top1": top1, "ema_val_top1": ema_top1}), flush=True)
        if step >= max_steps:
            break
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(args.out / "model.safetensors"))
    if ema is not None:
        save_file({k: v.contiguous() for k, v in ema.module.state_dict().items()}, str(args.out / "ema.safetensors"))


if __name__ == "__main__":
    main()
