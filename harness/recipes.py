"""Named training recipes: data, not code paths.

A `Recipe` is every knob of a training run that is not the model or the data. The named ones
below carry primary-source values (cited per recipe); `harness recipes` prints them side by side
and any field can be overridden (`--set lr=3e-4`, a study's `search:` block).

The builders at the bottom turn a recipe into timm objects. They deliberately go through timm:
`create_optimizer_v2` gives no-weight-decay groups for norms/biases and layer-wise lr decay, and
layer decay only works through a timm scheduler (it applies each param group's `lr_scale`; a
torch scheduler silently ignores it).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.errors import UserError, unknown


class Recipe(BaseModel):
    """One training recipe. Units: lr per `lr_base_batch` images, epochs for schedule lengths."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    family: str = Field("any", description="model family the recipe is tuned for, or 'any'")
    source: str = Field("", description="where the values come from")
    optimizer: str = Field("adamw", description="any timm optimizer name (timm.optim.list_optimizers())")
    lr: float = Field(5e-4, gt=0, description="peak learning rate at lr_base_batch images per step")
    lr_base_batch: int | None = Field(
        512, gt=0, description="batch size the lr is stated for; lr scales linearly with batch_size. None = flat lr")
    batch_size: int = Field(128, ge=1)
    opt_eps: float | None = Field(None, gt=0, description="optimizer epsilon; None = optimizer default")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.05, ge=0)
    no_decay_norm_bias: bool = Field(True, description="exclude norm weights and biases (1-D params) from weight decay")
    schedule: Literal["cosine", "step"] = "cosine"
    warmup_epochs: float = Field(5, ge=0, description="linear warmup from warmup_lr, in epochs (fractions allowed)")
    warmup_lr: float = Field(1e-6, ge=0)
    min_lr: float = Field(1e-5, ge=0, description="floor of the cosine schedule")
    decay_epochs: float = Field(0, ge=0, description="step schedule: epochs between decays; 0 = a third of the run")
    decay_rate: float = Field(0.1, gt=0, le=1, description="step schedule: lr multiplier at each decay")
    grad_clip: float = Field(0.0, ge=0, description="clip the global grad norm at this value; 0 = no clipping")
    loss: Literal["ce", "bce"] = "ce"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    mixup_alpha: float = Field(0.0, ge=0, description="0 = off")
    cutmix_alpha: float = Field(0.0, ge=0, description="0 = off")
    mixup_prob: float = Field(1.0, ge=0, le=1)
    randaugment: str | None = Field(None, description="'m9-n2' = RandAugment magnitude 9, 2 ops; None = off")
    random_erasing: float = Field(0.0, ge=0, le=1, description="probability per image")
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth (model field)")
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier (model field)")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise lr decay; for fine-tuning only")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="EMA of the weights (timm ModelEmaV3); None = off")
    pretrained: bool = Field(False, description="the recipe expects pretrained weights (fine-tuning)")

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        import timm.optim

        if v not in timm.optim.list_optimizers():
            raise ValueError(f"unknown optimizer {v!r}; use a name from timm.optim.list_optimizers(), e.g. adamw, adam, sgd, lamb")
        return v

    @field_validator("randaugment")
    @classmethod
    def _randaugment_format(cls, v: str | None) -> str | None:
        if v is not None:
            parse_randaugment(v)
        return v

    def scaled_lr(self) -> float:
        """The lr actually used: linear scaling rule (Goyal et al. 2017; DeiT: lr = 5e-4 * batch / 512)."""
        if self.lr_base_batch is None:
            return self.lr
        return self.lr * self.batch_size / self.lr_base_batch

    def uses_mixup(self) -> bool:
        return self.mixup_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)


# Fields a study or --set may change (all but the identity fields).
TUNABLE = tuple(f for f in Recipe.model_fields if f not in ("name", "family", "source"))


def parse_randaugment(text: str) -> tuple[int, int]:
    """'m9-n2' -> (magnitude 9, 2 ops)."""
    parts = dict((p[0], p[1:]) for p in text.split("-") if p)
    try:
        return int(parts.get("m", "9")), int(parts.get("n", "2"))
    except ValueError:
        raise ValueError(f"randaugment {text!r}: expected 'm<magnitude>-n<ops>', e.g. 'm9-n2'") from None


# --- the named recipes -------------------------------------------------------------------------
# Each cites its primary source. Where the harness departs from the source (short runs, small
# batches) the comment says why.

RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


register(Recipe(
    # Seed 000's "CNN settings" that users copy to every model: Adam 1e-3 flat, no warmup, step
    # decay, nothing else. The baseline every tuned recipe is compared against.
    name="naive", family="any", source="seed 000 (the CNN settings users copy to every model)",
    optimizer="adam", lr=1e-3, lr_base_batch=None, batch_size=64, weight_decay=0.0,
    no_decay_norm_bias=False, schedule="step", warmup_epochs=0, min_lr=0.0, decay_rate=0.1,
))

register(Recipe(
    # ResNet strikes back, procedure A3 (Wightman et al. 2021; mmpretrain
    # configs/resnet/resnet50_8xb256-rsb-a3*.py): LAMB 8e-3 @ 2048, wd 0.02, 5 warmup epochs,
    # cosine, BCE loss, mixup 0.1 / cutmix 1.0, drop path 0.05, RandAugment m6 (rand-m6-mstd0.5-inc1).
    name="cnn", family="resnet", source="ResNet strikes back A3 (arXiv 2110.00476, table 1)",
    optimizer="lamb", lr=8e-3, lr_base_batch=2048, batch_size=128, weight_decay=0.02,
    schedule="cosine", warmup_epochs=5, min_lr=1e-6, loss="bce", mixup_alpha=0.1, cutmix_alpha=1.0,
    randaugment="m6-n2", drop_path_rate=0.05,
))

register(Recipe(
    # timm's EfficientNet-B0 recipe (hfdocs/source/training_script.mdx): RMSprop (TF style,
    # eps 1e-3) 0.048 @ 768, warmup 3 epochs, step x0.97 every 2.4 epochs, wd 1e-5, smoothing 0.1
    # (timm default), drop 0.2, drop path 0.2, RandAugment m9, random erasing 0.2, EMA 0.9999.
    # EMA is 0.999 here: 0.9999 averages over ~10k steps, longer than a harness run on small data.
    # Norms and biases get no weight decay, as in the source: timm's train.py never overrides
    # create_optimizer_v2's filter_bias_and_bn=True (and TF EfficientNet excludes BN from decay).
    name="effnet", family="efficientnet", source="timm training_script.mdx, EfficientNet-B0 recipe",
    optimizer="rmsproptf", lr=0.048, lr_base_batch=768, batch_size=128, opt_eps=1e-3, weight_decay=1e-5,
    schedule="step", warmup_epochs=3, warmup_lr=1e-6, decay_epochs=2.4,
    decay_rate=0.97, label_smoothing=0.1, randaugment="m9-n2", random_erasing=0.2,
    drop_rate=0.2, drop_path_rate=0.2, ema_decay=0.999,
))

register(Recipe(
    # DeiT-B from scratch (facebookresearch/deit main.py defaults): AdamW 5e-4 @ 512, wd 0.05,
    # 5 warmup epochs from 1e-6, cosine to 1e-5, smoothing 0.1, mixup 0.8 / cutmix 1.0, drop path
    # 0.1, RandAugment m9 (rand-m9-mstd0.5-inc1), random erasing 0.25, no clipping. Clipping at
    # 1.0 is seed 000's per-model setting and costs nothing when gradients are healthy.
    name="vit", family="vit", source="DeiT main.py defaults (arXiv 2012.12877) + seed 000 clip 1.0",
    optimizer="adamw", lr=5e-4, lr_base_batch=512, batch_size=128, weight_decay=0.05,
    schedule="cosine", warmup_epochs=5, min_lr=1e-5, grad_clip=1.0, label_smoothing=0.1,
    mixup_alpha=0.8, cutmix_alpha=1.0, randaugment="m9-n2", random_erasing=0.25, drop_path_rate=0.1,
))

register(Recipe(
    # Swin-T (microsoft/Swin-Transformer config.py + swin_tiny_patch4_window7_224.yaml): AdamW
    # 5e-4 @ 512, wd 0.05 not on 1-D params, clip 5.0, smoothing 0.1, mixup 0.8 / cutmix 1.0,
    # drop path 0.2, cosine to 5e-6. The source warms up 20 of 300 epochs; harness runs are tens
    # of epochs, so this uses seed 000's 5 (override with --set warmup_epochs=...).
    name="swin", family="swin", source="Swin-Transformer config.py / swin_tiny yaml (arXiv 2103.14030)",
    optimizer="adamw", lr=5e-4, lr_base_batch=512, batch_size=128, weight_decay=0.05,
    schedule="cosine", warmup_epochs=5, warmup_lr=5e-7, min_lr=5e-6, grad_clip=5.0, label_smoothing=0.1,
    mixup_alpha=0.8, cutmix_alpha=1.0, randaugment="m9-n2", random_erasing=0.25, drop_path_rate=0.2,
))

# Fine-tuning variants: pretrained weights, layer-wise lr decay.
register(RECIPES["vit"].model_copy(update=dict(
    # MAE fine-tuning of ViT-B (facebookresearch/mae FINETUNE.md): blr 5e-4 per 256, layer decay
    # 0.65, wd 0.05, 5 warmup epochs, drop path 0.1, smoothing 0.1, mixup 0.8 / cutmix 1.0.
    name="vit_ft", source="MAE FINETUNE.md, ViT-B (arXiv 2111.06377)",
    lr=5e-4, lr_base_batch=256, layer_decay=0.65, min_lr=1e-6, pretrained=True,
)))
register(RECIPES["swin"].model_copy(update=dict(
    # Seed 000's Swin fine-tuning settings (layer decay 0.7, clip 5.0) on the Swin-T recipe,
    # with MAE's fine-tuning lr (5e-4 per 256) since Swin's own configs give none for this case.
    name="swin_ft", source="Swin-T recipe + seed 000 layer decay 0.7 + MAE fine-tune lr",
    lr=5e-4, lr_base_batch=256, layer_decay=0.7, min_lr=1e-6, pretrained=True,
)))
register(RECIPES["cnn"].model_copy(update=dict(
    # No primary source fine-tunes RSB with layer decay; this is the A3 recipe at a tenth of the
    # lr with a mild decay (0.8), 1 warmup epoch and no mixup: a harness choice, not a citation.
    name="cnn_ft", source="harness choice: RSB A3 at lr/10, layer decay 0.8 (no primary source)",
    lr=8e-4, warmup_epochs=1, layer_decay=0.8, mixup_alpha=0.0, cutmix_alpha=0.0, pretrained=True,
)))
register(RECIPES["effnet"].model_copy(update=dict(
    # As cnn_ft: a harness choice. timm fine-tunes EfficientNets with the same optimizer at a
    # lower lr; layer decay 0.8 keeps the stem close to the pretrained weights.
    name="effnet_ft", source="harness choice: timm B0 recipe at lr/10, layer decay 0.8 (no primary source)",
    lr=0.0048, warmup_epochs=1, layer_decay=0.8, pretrained=True,
)))

# The tuned recipe of each model family ("tuned" in a benchmark grid).
TUNED = {"resnet": "cnn", "efficientnet": "effnet", "vit": "vit", "swin": "swin"}


def tuned_recipe_name(family: str, pretrained: bool = False) -> str:
    name = TUNED[family]
    return f"{name}_ft" if pretrained else name


def get_recipe(name: str, field: str = "recipe") -> Recipe:
    if name not in RECIPES:
        raise unknown(field, name, RECIPES)
    return RECIPES[name]


def with_overrides(recipe: Recipe, overrides: dict[str, object], field: str = "--set") -> Recipe:
    """A copy of `recipe` with fields replaced, validated (bad key or value -> UserError)."""
    from pydantic import ValidationError

    sep = " " if field.startswith("--") else "."  # `--set lr` on the command line, `fixed.lr` in a file
    for key in overrides:
        if key not in TUNABLE:
            raise unknown(f"{field}{sep}{key}", key, TUNABLE)
    try:
        return Recipe.model_validate({**recipe.model_dump(), **overrides})
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        raise UserError(f"{field}{sep}{key}", err.get("input"), f"{msg[:1].upper()}{msg[1:]}.") from None


# --- builders: recipe -> timm objects ---------------------------------------------------------

def build_optimizer(model: torch.nn.Module, recipe: Recipe, *, fused: bool = False) -> torch.optim.Optimizer:
    from timm.optim import create_optimizer_v2

    kwargs: dict[str, object] = {}
    if recipe.opt_eps is not None:
        kwargs["eps"] = recipe.opt_eps
    if fused and recipe.optimizer in ("adam", "adamw"):
        kwargs["fused"] = True  # one CUDA kernel for the whole update
    return create_optimizer_v2(
        model, opt=recipe.optimizer, lr=recipe.scaled_lr(), weight_decay=recipe.weight_decay,
        momentum=recipe.momentum, filter_bias_and_bn=recipe.no_decay_norm_bias,
        layer_decay=recipe.layer_decay, **kwargs,
    )


def build_scheduler(optimizer: torch.optim.Optimizer, recipe: Recipe, *, epochs: int, steps_per_epoch: int):
    """timm scheduler stepped per optimizer update (`step_update(global_step)`)."""
    from timm.scheduler import create_scheduler_v2

    if recipe.schedule == "step":
        decay_epochs = recipe.decay_epochs or max(1.0, epochs / 3)
        sched, _ = create_scheduler_v2(
            optimizer, sched="step", num_epochs=epochs, decay_epochs=decay_epochs,
            decay_rate=recipe.decay_rate, warmup_lr=recipe.warmup_lr, warmup_epochs=recipe.warmup_epochs,
            step_on_epochs=False, updates_per_epoch=steps_per_epoch,
        )
    else:
        sched, _ = create_scheduler_v2(
            optimizer, sched="cosine", num_epochs=epochs, min_lr=recipe.min_lr,
            warmup_lr=recipe.warmup_lr, warmup_epochs=recipe.warmup_epochs,
            step_on_epochs=False, updates_per_epoch=steps_per_epoch,
        )
    return sched


def build_mixup(recipe: Recipe, num_classes: int):
    """timm Mixup (label smoothing folded into the soft targets), or None."""
    if not recipe.uses_mixup():
        return None
    from timm.data import Mixup

    return Mixup(mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha, prob=recipe.mixup_prob,
                 label_smoothing=recipe.label_smoothing, num_classes=num_classes)


def build_loss(recipe: Recipe) -> torch.nn.Module:
    """Training loss. Soft targets when mixup is on (timm folds smoothing into them)."""
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if recipe.loss == "bce":
        # RSB: BCE on (mixed, smoothed) targets; timm's BCE takes hard or soft targets.
        return BinaryCrossEntropy(smoothing=0.0 if recipe.uses_mixup() else recipe.label_smoothing)
    if recipe.uses_mixup():
        return SoftTargetCrossEntropy()
    if recipe.label_smoothing > 0:
        return LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing)
    return torch.nn.CrossEntropyLoss()
