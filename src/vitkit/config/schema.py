"""The typed recipe: every option vitkit understands, with its default and what it does.

Each field's description is the single source of the CLI help and of the recipe reference in the docs.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Section(BaseModel):
    """Base for recipe sections: unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("vit_tiny_patch16_224", description="timm model name (any ViT/DeiT/Swin family).")
    img_size: int = Field(224, ge=8, description="Input resolution in pixels (square).")
    patch_size: int | None = Field(None, ge=1, description="Patch size; None keeps the model's (8 vs 16 matters).")
    embed_dim: int | None = Field(None, ge=8, description="Width override; None keeps the model's.")
    depth: int | None = Field(None, ge=1, description="Number of blocks override; None keeps the model's.")
    num_heads: int | None = Field(None, ge=1, description="Attention heads override; None keeps the model's.")
    num_classes: int | None = Field(None, ge=1, description="Classes; None takes the count from the data.")
    drop_rate: float = Field(
        0.0, ge=0.0, lt=1.0, description="Dropout before the head and after attention/MLP projections."
    )
    attn_drop_rate: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on attention probabilities.")
    drop_path_rate: float = Field(
        0.0, ge=0.0, lt=1.0, description="Stochastic depth: block l of L is dropped with probability l/(L-1) x rate."
    )
    stem: Literal["patch", "conv"] = Field(
        "patch",
        description="Patch embedding: one patchify convolution (patch), or stride-2 3x3 convolutions (conv; "
        "Xiao et al. 2021), which helps ViTs trained from scratch on small data. ViT family only.",
    )
    mlp: Literal["mlp", "local"] = Field(
        "mlp",
        description="Block MLP: timm's two linear layers (mlp), or with a depthwise 3x3 convolution over the patch "
        "grid between them (local; LocalViT, Li et al. 2021), locality for ViTs trained from scratch on small "
        "data. ViT family only.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Extra timm.create_model arguments, e.g. {channels: [24, 48, 96, 192]}."
    )
    attn_impl: Literal["auto", "fused", "math"] = Field(
        "auto", description="Attention kernel: fused SDPA, explicit math, or auto (fastest for device and tokens)."
    )
    norm_eps: float | None = Field(
        None, gt=0.0, description="LayerNorm epsilon override (transformers ViTs use 1e-12); None keeps timm's."
    )
    grad_checkpointing: bool = Field(False, description="Recompute block activations in backward to save memory.")
    channels_last: bool = Field(False, description="Use channels-last memory format for the input and convs.")
    compile: bool = Field(False, description="Wrap the model in torch.compile.")


class DataConfig(Section):
    source: str | None = Field(
        None,
        description="Image folder, manifest.csv (single- or multi-label; NIH ChestX-ray14 and CheXpert CSVs too), "
        "arrays.npz (incl. MedMNIST), hf:PATH or hf:ORG/NAME (a dataset in the local datasets cache), "
        "torchvision:NAME, builtin:shapes or builtin:xray; usually set by --data.",
    )
    hf_splits: tuple[str, str | None] = Field(
        ("train", None),
        description="hf: sources: the training split and the validation split (None: validation, val, valid or "
        "test if there is one, else val_fraction of the training split is held out).",
    )
    image_column: str | None = Field(
        None, description="hf: sources: the image column (None: image, img or pixel_values)."
    )
    label_column: str | None = Field(
        None, description="hf: sources: the class label column (None: label, labels or fine_label)."
    )
    root: str | None = Field(None, description="Download/cache folder for torchvision:NAME sources.")
    val_fraction: float = Field(
        0.1, gt=0.0, lt=1.0, description="Share held out (stratified, seeded) when the source has no val split."
    )
    holdout: float | None = Field(
        None,
        gt=0.0,
        lt=1.0,
        description="Validate on this share of the training split instead (stratified or by patient, seeded by "
        "train.seed); the data's own validation split is then never read. Set by vitkit tune, so that choosing a "
        "recipe never looks at the set it is finally judged on.",
    )
    cache: Literal["auto", "memory", "none"] = Field(
        "auto", description="Decode images once into memory (uint8); auto does it when they fit in cache_limit_gb."
    )
    cache_limit_gb: float = Field(4.0, gt=0.0, description="Largest decoded dataset kept in memory by cache=auto.")
    num_workers: int | Literal["auto"] = Field(
        "auto", description="DataLoader worker processes; auto picks from the CPU count and the cache mode."
    )
    classes: list[str] | None = Field(
        None,
        description="Class names in label order; a label not in this list is an error. None takes them from the "
        "data (folder names, sorted manifest labels).",
    )
    bad_images: Literal["skip", "fail"] = Field(
        "skip",
        description="Unreadable image files (truncated, empty, not an image, too large, missing): skip them (listed "
        "in bad_images.jsonl and the summary) or fail before training, listing them.",
    )
    max_image_pixels: int = Field(
        89_478_485, ge=1, description="Images with more pixels are treated as bad (decompression-bomb guard)."
    )
    synthetic_train_size: int = Field(6000, ge=10, description="Training images of builtin:shapes and builtin:xray.")
    synthetic_val_size: int = Field(1000, ge=10, description="Validation images of builtin:shapes and builtin:xray.")
    label_columns: list[str] | None = Field(
        None,
        description="Multi-label manifests: the 0/1 finding columns (None: a 'labels' column of findings separated "
        "by |, or every column holding only 0, 1, -1 or blanks).",
    )
    uncertain_labels: Literal["ones", "zeros", "ignore"] = Field(
        "ignore",
        description="CheXpert-style -1 (uncertain) labels: ones (U-Ones), zeros (U-Zeros) or ignore (left out of "
        "the loss and the metrics).",
    )
    patient_column: str | None = Field(
        None,
        description="Manifest column with the patient id (None: patient, patient_id or Patient ID if present); "
        "with patients, the train/val split keeps each patient on one side.",
    )
    mean: tuple[float, float, float] | None = Field(
        None, description="Normalisation mean (RGB); None takes the pretrained weights' values, else ImageNet's."
    )
    std: tuple[float, float, float] | None = Field(
        None, description="Normalisation std (RGB); None takes the pretrained weights' values, else ImageNet's."
    )

    @model_validator(mode="after")
    def _std_above_zero(self) -> DataConfig:
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(
                f"data.std={list(self.std)}: every channel's std must be above 0 (each pixel is divided by it); "
                "give the measured values, or leave data.std out for ImageNet's"
            )
        return self

    @model_validator(mode="after")
    def _root_only_where_read(self) -> DataConfig:
        # a root beside any other source would be ignored: a user who meant it as their data would train on other data
        if self.root is not None and self.source is not None and not self.source.startswith("torchvision:"):
            raise ValueError(
                f"data.root is read only by torchvision:NAME sources, not by data.source={self.source}; give your "
                "images with --data (data.source) and leave data.root out"
            )
        return self

    def normalization(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """The mean and std to use: the recipe's, or ImageNet's where unset (pretrained values are filled in
        by the trainer before this is read)."""
        return self.mean or IMAGENET_MEAN, self.std or IMAGENET_STD


class AugmentConfig(Section):
    rrc_scale: tuple[float, float] = Field((0.08, 1.0), description="RandomResizedCrop area range.")
    rrc_ratio: tuple[float, float] = Field((0.75, 1.3333), description="RandomResizedCrop aspect-ratio range.")
    hflip: float = Field(
        0.5, ge=0.0, le=1.0, description="Horizontal flip probability (0 where left and right differ: radiographs)."
    )
    rotation: float = Field(
        0.0, ge=0.0, le=180.0, description="Random rotation by up to +/- this many degrees before cropping (0: off)."
    )
    color_jitter: float = Field(0.3, ge=0.0, description="ColorJitter strength (0 turns it off).")
    randaugment: str | None = Field(
        "rand-m9-mstd0.5-inc1", description="timm RandAugment spec (magnitude m, std mstd); null turns it off."
    )
    random_erasing: float = Field(0.25, ge=0.0, le=1.0, description="Random Erasing probability.")
    erasing_mode: Literal["const", "rand", "pixel"] = Field("pixel", description="Random Erasing fill.")
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field("bicubic", description="Resize interpolation.")
    crop_pct: float = Field(0.875, gt=0.0, le=1.0, description="Eval: resize to size/crop_pct, then center crop.")
    mixup: float = Field(0.8, ge=0.0, description="Mixup alpha (0 turns Mixup off).")
    cutmix: float = Field(1.0, ge=0.0, description="CutMix alpha (0 turns CutMix off).")
    mix_prob: float = Field(1.0, ge=0.0, le=1.0, description="Probability of mixing a batch at all.")
    mix_switch_prob: float = Field(0.5, ge=0.0, le=1.0, description="Probability of CutMix instead of Mixup.")
    mix_mode: Literal["batch", "pair", "elem"] = Field("batch", description="Mixup lambda per batch, pair or image.")
    repeated_aug: int = Field(1, ge=1, description="Repeated augmentation: each image appears this many times.")


class OptimConfig(Section):
    name: Literal["adamw", "sgd"] = Field("adamw", description="Optimizer (through timm.optim).")
    lr: float = Field(5e-4, gt=0.0, description="Base learning rate at lr_base_batch images per update.")
    lr_base_batch: int = Field(512, ge=1, description="Batch size the base lr refers to (linear scaling).")
    lr_scaling: Literal["linear", "none"] = Field("linear", description="Scale lr by effective batch / lr_base_batch.")
    weight_decay: float = Field(0.05, ge=0.0, description="Decoupled weight decay (none on norms, biases, tokens).")
    betas: tuple[float, float] = Field((0.9, 0.999), description="AdamW betas.")
    eps: float = Field(1e-8, gt=0.0, description="AdamW epsilon.")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum.")
    clip_grad: float | None = Field(None, gt=0.0, description="Clip gradients to this global L2 norm; null = no clip.")


class ScheduleConfig(Section):
    epochs: int = Field(300, ge=1, description="Training epochs.")
    warmup_epochs: float = Field(5.0, ge=0.0, description="Linear warmup length in epochs (applied per step).")
    warmup_lr: float = Field(1e-6, ge=0.0, description="LR at the first warmup step.")
    min_lr: float = Field(1e-5, ge=0.0, description="Cosine floor.")


class TrainConfig(Section):
    batch_size: int = Field(128, ge=1, description="Images per step per process.")
    global_batch_size: int | None = Field(
        None,
        ge=1,
        description="Images per update across all processes; when set, each process's batch_size is this / "
        "(processes x accumulation_steps), so a run keeps its batch (and lr) on any number of processes.",
    )
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto", description="Collective backend with several processes: auto = nccl on GPUs, gloo on CPU."
    )
    accumulation_steps: int = Field(1, ge=1, description="Steps whose gradients are summed before one update.")
    label_smoothing: float = Field(0.1, ge=0.0, lt=1.0, description="Label smoothing (folded into Mixup targets).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="Autocast precision; auto = bf16 on GPUs that support it and on CPUs where a measured matrix "
        "product runs at least 1.2x faster in bf16, else fp32.",
    )
    seed: int = Field(0, description="Seed for model init, data order, augmentation and splits.")
    max_updates: int | None = Field(
        None, ge=1, description="Stop after this many optimizer updates (smoke runs; formerly max_steps)."
    )
    log_every: int = Field(20, ge=1, description="Write step metrics every this many steps (micro-batches).")
    log_with: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(
        ["tensorboard"],
        description="Experiment trackers besides metrics.jsonl: tensorboard, mlflow (pip install 'vitkit[mlflow]'; "
        "MLFLOW_TRACKING_URI or RUN/mlruns), wandb (pip install 'vitkit[wandb]').",
    )
    eval_every: int = Field(1, ge=1, description="Evaluate every this many epochs.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Where to train.")
    keep_last: int = Field(
        2, ge=1, description="Checkpoints kept besides best: checkpoints/last, last.1, ... (resume skips damaged ones)."
    )
    best_metric: Literal["auto", "val_top1", "val_top5", "val_loss", "val_auroc"] = Field(
        "auto",
        description="What checkpoints/best is chosen by (raw or EMA model, whichever is better); val_loss is "
        "minimised, the others maximised; auto = val_top1, or val_auroc (macro over labels) for multi-label tasks.",
    )
    task: Literal["auto", "multiclass", "binary", "multilabel"] = Field(
        "auto",
        description="auto follows the data: multilabel for multi-label labels, binary for two classes, else "
        "multiclass. multilabel on single-label data trains one sigmoid per class (BCE).",
    )
    imbalance: Literal["none", "pos_weight", "sampler", "focal"] = Field(
        "none",
        description="Class imbalance: pos_weight (multi-label: positives weighted negatives/positives per label; "
        "single-label: inverse-frequency class weights), sampler (draw images inversely to their class "
        "frequency), focal (focal loss, gamma train.focal_gamma) or none.",
    )
    focal_gamma: float = Field(2.0, gt=0.0, description="Focal loss gamma (train.imbalance=focal).")
    monitor_dynamics: bool = Field(
        True,
        description="At logging steps, per-block attention/MLP gradient norms and update/weight ratios; at each "
        "validation, per-layer attention entropy and head diversity and the top-1 on a fixed sample of training "
        "images (for the over/underfitting diagnosis).",
    )
    deterministic: bool = Field(
        False,
        description="Deterministic algorithms only (torch.use_deterministic_algorithms); with the seeds, two runs "
        "write identical metrics.jsonl. Set by --deterministic.",
    )
    nonfinite: Literal["skip", "rollback", "stop"] = Field(
        "skip",
        description="On a NaN/inf loss or gradient: skip (drop that update), rollback (back to the state at the "
        "start of the epoch, lr x rollback_lr_factor) or stop (keep the last checkpoint and exit).",
    )
    rollback_lr_factor: float = Field(0.5, gt=0.0, le=1.0, description="LR multiplier applied at each rollback.")
    nonfinite_limit: int = Field(
        10, ge=1, description="Stop after this many non-finite updates in a row, or this many rollbacks in all."
    )


class EmaConfig(Section):
    enabled: bool = Field(True, description="Keep an exponential moving average of the weights.")
    decay: float = Field(0.9998, gt=0.0, lt=1.0, description="EMA decay per optimizer step.")
    warmup: bool = Field(True, description="Ramp the decay up early in training (timm ModelEmaV3 warmup).")


LoraTarget = Literal["q", "k", "v", "proj", "fc1", "fc2"]


class FinetuneConfig(Section):
    pretrained: str | None = Field(
        None,
        description="Weights to start from: a timm name (vit_small_patch16_224.augreg_in21k, hf-hub:org/name), a "
        "transformers checkpoint folder, a .safetensors file or a vitkit run folder; usually set by --pretrained.",
    )
    strategy: Literal["full", "partial", "head", "lora"] = Field(
        "full",
        description="What trains: full (all, optionally with layer_decay), partial (blocks from freeze_blocks "
        "on + head), head (linear probe on a frozen backbone), lora (PEFT LoRA adapters + head).",
    )
    layer_decay: float | None = Field(
        None, gt=0.0, le=1.0, description="Layer-wise LR decay (full/partial): layer i gets lr x decay^(L+1-i)."
    )
    freeze_blocks: int = Field(7, ge=0, description="partial: patch embedding and blocks 0..freeze_blocks-1 frozen.")
    cache_features: bool = Field(
        False, description="head: compute backbone features once (no augmentation) and train the head on them."
    )
    lora_rank: int = Field(8, ge=1, description="LoRA rank r.")
    lora_alpha: int = Field(16, ge=1, description="LoRA alpha; the update is scaled by alpha / r.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    lora_targets: list[LoraTarget] = Field(
        default_factory=lambda: list[LoraTarget](["q", "v"]),
        description="Linears that get adapters: q, k, v (split out of timm's fused qkv), proj, fc1, fc2.",
    )


class DistillConfig(Section):
    type: Literal["none", "soft", "hard"] = Field(
        "none",
        description="Knowledge distillation from a teacher: soft (KL to the teacher's softened probabilities), hard "
        "(cross-entropy to the teacher's argmax, DeiT's choice) or none.",
    )
    teacher: str | None = Field(
        None,
        description="The teacher: a vitkit run folder (e.g. of recipe cnn-teacher), a timm model name or "
        "hf-hub:org/name, or a timm/transformers model folder; usually set by --teacher.",
    )
    teacher_checkpoint: str | None = Field(
        None, description="Weights file (.safetensors or .pth) for the timm architecture named by teacher."
    )
    alpha: float = Field(
        0.5, ge=0.0, le=1.0, description="Weight of the distillation term: (1 - alpha) x CE(labels) + alpha x distill."
    )
    tau: float = Field(1.0, gt=0.0, description="Softmax temperature of soft distillation (its KL is scaled by tau^2).")


class Recipe(Section):
    """A complete training recipe. YAML files may name a `base` recipe and override any field."""

    description: str = Field("", description="One line saying what the recipe is for.")
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ema: EmaConfig = Field(default_factory=EmaConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)

    @model_validator(mode="after")
    def _check_consistency(self) -> Recipe:
        m = self.model
        if m.embed_dim is not None and m.num_heads is not None and m.embed_dim % m.num_heads:
            raise ValueError(f"model.embed_dim={m.embed_dim} must be divisible by model.num_heads={m.num_heads}")
        if m.patch_size is not None and m.img_size % m.patch_size:
            raise ValueError(f"model.img_size={m.img_size} must be a multiple of model.patch_size={m.patch_size}")
        if self.augment.rrc_scale[0] > self.augment.rrc_scale[1]:
            raise ValueError(f"augment.rrc_scale={self.augment.rrc_scale} must be (low, high) with low <= high")
        a = self.augment
        if a.mix_prob > 0 and (a.mixup > 0 or a.cutmix > 0) and self.train.batch_size % 2:
            raise ValueError(
                f"train.batch_size={self.train.batch_size} must be even when Mixup/CutMix is on (images are mixed "
                "with the batch reversed); use an even batch size or set augment.mixup=0 and augment.cutmix=0"
            )
        if self.schedule.warmup_epochs >= self.schedule.epochs:
            raise ValueError(
                f"schedule.warmup_epochs={self.schedule.warmup_epochs:g} must be below schedule.epochs="
                f"{self.schedule.epochs} (the warmup would take the whole run); lower it, e.g. "
                f"schedule.warmup_epochs={0.1 * self.schedule.epochs:g}"
            )
        if self.train.imbalance == "sampler" and a.repeated_aug > 1:
            raise ValueError(
                "train.imbalance=sampler draws its own epoch order and cannot be combined with augment.repeated_aug="
                f"{a.repeated_aug}; set augment.repeated_aug=1 or choose another train.imbalance"
            )
        f = self.finetune
        if f.layer_decay is not None and f.strategy not in ("full", "partial"):
            raise ValueError(
                f"finetune.layer_decay applies to strategies full and partial, not '{f.strategy}'; remove it"
            )
        if f.cache_features and f.strategy != "head":
            raise ValueError("finetune.cache_features=true needs finetune.strategy=head (only the head trains)")
        if f.cache_features and (self.ema.enabled or (a.mix_prob > 0 and (a.mixup > 0 or a.cutmix > 0))):
            raise ValueError(
                "finetune.cache_features=true trains the head on fixed features: set ema.enabled=false, "
                "augment.mixup=0 and augment.cutmix=0 (or turn cache_features off)"
            )
        if self.distill.type != "none" and f.cache_features:
            raise ValueError(
                "distill.type needs the backbone to see every image, but finetune.cache_features=true trains the head "
                "on fixed features: turn one of them off"
            )
        return self

    def effective_batch(self, world_size: int = 1) -> int:
        """Images per optimizer update across processes and accumulation steps."""
        return self.train.batch_size * self.train.accumulation_steps * world_size

    def effective_lr(self, world_size: int = 1) -> float:
        """The peak LR after linear batch-size scaling (DeiT: lr x batch / 512)."""
        return scaled_lr(
            self.optim.lr, self.effective_batch(world_size), self.optim.lr_base_batch, self.optim.lr_scaling
        )


def scaled_lr(base_lr: float, batch: int, base_batch: int, rule: str = "linear") -> float:
    """Linear LR scaling rule of Goyal et al., used by DeiT: lr = base_lr x batch / base_batch."""
    return base_lr * batch / base_batch if rule == "linear" else base_lr
