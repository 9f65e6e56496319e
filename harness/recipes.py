"""Named training recipes: data, not code paths, in two forms.

A `Recipe` is every knob of a training run that is not the model or the data, augmentation
included. The named ones below are the **published** form: the source's values verbatim, in the
source's units (its run length, its batch, its data), cited per recipe. `fit_recipe()` derives the
**fitted** form for one run's budget (epochs x training images at one batch size) by written rules,
each with its source (`FIT_RULES`); a benchmark's `tuned` means fitted, and every table and page
says which form ran. `harness recipes show NAME` prints both, with the lr actually used.

The builders at the bottom turn a recipe into timm objects. They deliberately go through timm:
`create_optimizer_v2` gives no-weight-decay groups for norms/biases and layer-wise lr decay, and
layer decay only works through a timm scheduler (it applies each param group's `lr_scale`; a
torch scheduler silently ignores it).

Length (~510 lines): each published recipe sits next to its citation, and the fitting rules next
to the recipes they adapt; splitting them would separate a value from its source.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from harness.errors import UserError, unknown

if TYPE_CHECKING:  # the builders below import torch/timm when called: a spec is checked without them
    import torch

IMAGENET_1K_TRAIN = 1_281_167  # images in ImageNet-1k's train split: the data every source recipe was tuned on

# How each source scales its peak lr with the batch size (the recipe's `lr_rule`).
LR_RULES = {
    "linear": "lr x batch / lr_base_batch (Goyal et al. arXiv 1706.02677; DeiT main.py, Swin config.py, MAE FINETUNE.md)",
    "sqrt": "lr x sqrt(batch / lr_base_batch) (LAMB: You et al. arXiv 1904.00962 sec. 4; timm train.py --lr-base-scale sqrt for lamb)",
    "none": "the lr as stated, whatever the batch (the CNN settings of the ViT/Swin failure write-up: one lr for all)",
}


class Recipe(BaseModel):
    """One training recipe.

    Units: `lr` is the peak lr at `lr_base_batch` images per step, scaled to `batch_size` by
    `lr_rule`. In the published form, schedule lengths (`warmup_epochs`, `decay_epochs`) are the
    source's epochs; in the fitted form they are this run's epochs. `source_*` describe the run the
    published values were tuned for (nothing to fit when `source_epochs` is None)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    family: str = Field("any", description="model family the recipe is tuned for, or 'any'")
    source: str = Field("", description="where the values come from")
    form: Literal["published", "fitted"] = Field("published", description="published = the source's values; "
                                                 "fitted = derived for one run's budget by fit_recipe()")
    fit_notes: tuple[str, ...] = Field((), description="how each fitted value was derived (empty when published)")
    # The source's own run: what the published values were tuned for.
    source_epochs: float | None = Field(None, gt=0, description="epochs of the source's run; None = no source run")
    source_batch: int | None = Field(None, gt=0, description="images per step in the source's run")
    source_images: int = Field(IMAGENET_1K_TRAIN, gt=0, description="training images of the source's data")
    # Optimizer and lr.
    optimizer: str = Field("adamw", description="any timm optimizer name (timm.optim.list_optimizers())")
    lr: float = Field(5e-4, gt=0, description="peak learning rate at lr_base_batch images per step")
    lr_base_batch: int = Field(512, gt=0, description="batch size the lr is stated for")
    lr_rule: Literal["linear", "sqrt", "none"] = Field("linear", description="how the lr follows the batch size: "
                                                       + "; ".join(f"{k}: {v}" for k, v in LR_RULES.items()))
    batch_size: int = Field(128, ge=1, description="images per step of this run")
    opt_eps: float | None = Field(None, gt=0, description="optimizer epsilon; None = optimizer default")
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.05, ge=0)
    no_decay_norm_bias: bool = Field(True, description="exclude norm weights and biases (1-D params) from weight decay")
    # Schedule.
    schedule: Literal["cosine", "step"] = "cosine"
    warmup_epochs: float = Field(5, ge=0, description="linear warmup from warmup_lr, in epochs (fractions allowed)")
    warmup_lr: float = Field(1e-6, ge=0)
    min_lr: float = Field(1e-5, ge=0, description="floor of the cosine schedule")
    decay_epochs: float = Field(0, ge=0, description="step schedule: epochs between decays; 0 = a third of the run")
    decay_rate: float = Field(0.1, gt=0, le=1, description="step schedule: lr multiplier at each decay")
    grad_clip: float = Field(0.0, ge=0, description="clip the global grad norm at this value; 0 = no clipping")
    # Loss.
    loss: Literal["ce", "bce"] = "ce"
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # Augmentation (per image, on the training device).
    crop: Literal["none", "pad", "rrc"] = Field("none", description="none; pad = random crop of the image padded by "
                                                "crop_pad of its side; rrc = random resized crop (Inception/timm)")
    crop_pad: float = Field(0.125, ge=0, le=0.5, description="crop=pad: padding as a fraction of the side")
    crop_pad_mode: Literal["reflect", "constant"] = Field("reflect", description="crop=pad: how the border is filled")
    crop_scale: float = Field(0.08, gt=0, le=1, description="crop=rrc: smallest crop area as a fraction of the image")
    hflip: float = Field(0.0, ge=0, le=1, description="probability of a horizontal flip (never on sets where it "
                                                      "changes the class, e.g. digits)")
    randaugment: str | None = Field(None, description="timm RandAugment config, e.g. 'rand-m9-mstd0.5-inc1' "
                                                      "(magnitude 9 of 10); None = off")
    random_erasing: float = Field(0.0, ge=0, le=1, description="probability per image (timm RandomErasing, pixel mode)")
    mixup_alpha: float = Field(0.0, ge=0, description="0 = off")
    cutmix_alpha: float = Field(0.0, ge=0, description="0 = off")
    mixup_prob: float = Field(1.0, ge=0, le=1)
    # Regularisation of the model and the weights.
    drop_path_rate: float = Field(0.0, ge=0, lt=1, description="stochastic depth (model field)")
    drop_rate: float = Field(0.0, ge=0, lt=1, description="dropout before the classifier (model field)")
    layer_decay: float | None = Field(None, gt=0, le=1, description="layer-wise lr decay; for fine-tuning only")
    ema_decay: float | None = Field(None, gt=0, lt=1, description="EMA of the weights (timm ModelEmaV3); None = off")
    pretrained: bool = Field(False, description="the recipe expects pretrained weights (fine-tuning)")

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        if v in COMMON_OPTIMIZERS:  # checked against timm by tests/test_registries.py; spares importing timm here
            return v
        import timm.optim

        if v not in timm.optim.list_optimizers():
            raise ValueError(f"unknown optimizer {v!r}; use a name from timm.optim.list_optimizers(), e.g. adamw, adam, sgd, lamb")
        return v

    @field_validator("randaugment")
    @classmethod
    def _randaugment_format(cls, v: str | None) -> str | None:
        if v is not None:
            randaugment_magnitude(v)
        return v

    def scaled_lr(self) -> float:
        """The peak lr actually used at `batch_size`, by the source's own batch rule."""
        ratio = self.batch_size / self.lr_base_batch
        return self.lr * {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[self.lr_rule]

    def uses_mixup(self) -> bool:
        return self.mixup_prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    def label(self) -> str:
        """'vit (fitted)': every table and page says which form ran ('naive' has only one form)."""
        return self.name if self.source_epochs is None else f"{self.name} ({self.form})"


# Identity and provenance fields: not knobs of the run.
IDENTITY = ("name", "family", "source", "form", "fit_notes", "source_epochs", "source_batch", "source_images")
# Fields a study or --set may change.
TUNABLE = tuple(f for f in Recipe.model_fields if f not in IDENTITY)


# timm's RandAugment config grammar (timm.data.auto_augment.rand_augment_transform): 'rand', then
# '-'-separated sections: m<int> magnitude, n<int> layers, p<float> probability, mstd<float>,
# mmax<int>, inc<0|1>, t<name> op set. Checked here without importing timm (so a study validates in
# a second); tests/test_registries.py holds it to timm's own parser, which builds the transform.
RANDAUGMENT_FORMAT = re.compile(r"rand(-(m\d+|n\d+|p\d*\.?\d+|mstd\d*\.?\d+|mmax\d+|inc\d+|t[a-z]+))*")
COMMON_OPTIMIZERS = frozenset({"sgd", "momentum", "adam", "adamw", "nadam", "nadamw", "radam", "lamb", "lambw",
                               "lars", "rmsprop", "rmsproptf", "adamp", "sgdp", "adagrad", "lion", "adafactor"})


def randaugment_magnitude(text: str) -> float:
    """The magnitude of a timm RandAugment config ('rand-m9-mstd0.5-inc1' -> 9), in timm's format."""
    if not RANDAUGMENT_FORMAT.fullmatch(text):
        raise ValueError(f"randaugment {text!r}: expected timm's format, e.g. 'rand-m9-mstd0.5-inc1' (magnitude 9 of 10; "
                         "sections m<int>, n<int>, p<prob>, mstd<float>, mmax<int>, inc<0/1>)")
    m = re.search(r"-m(\d+)", text)
    return float(m.group(1)) if m else 10.0  # timm's default magnitude (_LEVEL_DENOM)


# --- the named recipes (published form) --------------------------------------------------------
# Each cites its primary source, values verbatim in the source's units. Crops and flips are the
# sources' ImageNet pipeline (timm create_transform: RandomResizedCrop scale 0.08-1, flip 0.5).

RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


register(Recipe(
    # The "CNN settings" of the ViT/Swin failure write-up, which users copy to every model: Adam 1e-3
    # flat, no warmup, step decay, no augmentation and no regularisation (the write-up lists none),
    # whatever the batch.
    # No source run: fitting changes nothing but the batch size.
    name="naive", family="any",
    source="CNN settings (Adam 1e-3) copied to every model, as in the ViT/Swin failure write-up",
    optimizer="adam", lr=1e-3, lr_base_batch=64, lr_rule="none", batch_size=64, weight_decay=0.0,
    no_decay_norm_bias=False, schedule="step", warmup_epochs=0, min_lr=0.0, decay_rate=0.1,
))

register(Recipe(
    # ResNet strikes back, procedure A3 (Wightman et al. 2021, table 1; mmpretrain
    # configs/resnet/resnet50_8xb256-rsb-a3*.py): 100 epochs at batch 2048, LAMB 8e-3, wd 0.02,
    # 5 warmup epochs, cosine, BCE loss, mixup 0.1 / cutmix 1.0, RandAugment rand-m6-mstd0.5-inc1,
    # drop path 0.05. LAMB's lr is a per-layer trust ratio: it follows the batch by sqrt.
    name="cnn", family="resnet", source="ResNet strikes back A3 (arXiv 2110.00476, table 1)",
    source_epochs=100, source_batch=2048,
    optimizer="lamb", lr=8e-3, lr_base_batch=2048, lr_rule="sqrt", batch_size=128, weight_decay=0.02,
    schedule="cosine", warmup_epochs=5, min_lr=1e-6, loss="bce", mixup_alpha=0.1, cutmix_alpha=1.0,
    crop="rrc", hflip=0.5, randaugment="rand-m6-mstd0.5-inc1", drop_path_rate=0.05,
))

register(Recipe(
    # timm's EfficientNet recipe (docs/training_hparam_examples.md, B0/B2): 450 epochs at batch
    # 768 (2 x 384), RMSprop (TF style, eps 1e-3) 0.048, warmup 3 epochs from 1e-6, step x0.97
    # every 2.4 epochs, wd 1e-5, smoothing 0.1 (timm train.py default), drop 0.2, drop path 0.2,
    # RandAugment rand-m9-mstd0.5, random erasing 0.2 (pixel), EMA 0.9999. Norms and biases get no
    # weight decay: timm's train.py never overrides create_optimizer_v2's filter_bias_and_bn=True.
    name="effnet", family="efficientnet", source="timm training_hparam_examples.md, EfficientNet-B0/B2 recipe",
    source_epochs=450, source_batch=768,
    optimizer="rmsproptf", lr=0.048, lr_base_batch=768, lr_rule="linear", batch_size=128, opt_eps=1e-3,
    weight_decay=1e-5, schedule="step", warmup_epochs=3, warmup_lr=1e-6, decay_epochs=2.4,
    decay_rate=0.97, label_smoothing=0.1, crop="rrc", hflip=0.5, randaugment="rand-m9-mstd0.5",
    random_erasing=0.2, drop_rate=0.2, drop_path_rate=0.2, ema_decay=0.9999,
))

register(Recipe(
    # DeiT-B from scratch (facebookresearch/deit main.py defaults, README): 300 epochs at batch
    # 1024, AdamW 5e-4 per 512 (linear), wd 0.05, 5 warmup epochs from 1e-6, cosine to 1e-5,
    # smoothing 0.1, mixup 0.8 / cutmix 1.0, drop path 0.1, RandAugment rand-m9-mstd0.5-inc1,
    # random erasing 0.25, no clipping. Clipping at 1.0 is the ViT/Swin failure write-up's.
    name="vit", family="vit", source="DeiT main.py defaults (arXiv 2012.12877) + clip 1.0 (ViT/Swin failure write-up)",
    source_epochs=300, source_batch=1024,
    optimizer="adamw", lr=5e-4, lr_base_batch=512, lr_rule="linear", batch_size=128, weight_decay=0.05,
    schedule="cosine", warmup_epochs=5, min_lr=1e-5, grad_clip=1.0, label_smoothing=0.1,
    mixup_alpha=0.8, cutmix_alpha=1.0, crop="rrc", hflip=0.5, randaugment="rand-m9-mstd0.5-inc1",
    random_erasing=0.25, drop_path_rate=0.1,
))

register(Recipe(
    # Swin-T (microsoft/Swin-Transformer config.py + swin_tiny_patch4_window7_224.yaml): 300
    # epochs at batch 1024, AdamW 5e-4 per 512 (linear), 20 warmup epochs from 5e-7, cosine to
    # 5e-6, wd 0.05 not on 1-D params, clip 5.0, smoothing 0.1, mixup 0.8 / cutmix 1.0, drop path
    # 0.2, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25.
    name="swin", family="swin", source="Swin-Transformer config.py / swin_tiny yaml (arXiv 2103.14030)",
    source_epochs=300, source_batch=1024,
    optimizer="adamw", lr=5e-4, lr_base_batch=512, lr_rule="linear", batch_size=128, weight_decay=0.05,
    schedule="cosine", warmup_epochs=20, warmup_lr=5e-7, min_lr=5e-6, grad_clip=5.0, label_smoothing=0.1,
    mixup_alpha=0.8, cutmix_alpha=1.0, crop="rrc", hflip=0.5, randaugment="rand-m9-mstd0.5-inc1",
    random_erasing=0.25, drop_path_rate=0.2,
))

# Fine-tuning variants: pretrained weights, layer-wise lr decay.
register(RECIPES["vit"].model_copy(update=dict(
    # MAE fine-tuning of ViT-B (facebookresearch/mae FINETUNE.md): 100 epochs at batch 1024, blr
    # 5e-4 per 256 (linear), layer decay 0.65, wd 0.05, 5 warmup epochs, drop path 0.1, smoothing
    # 0.1, mixup 0.8 / cutmix 1.0, RandAugment rand-m9-mstd0.5-inc1, erasing 0.25.
    name="vit_ft", source="MAE FINETUNE.md, ViT-B (arXiv 2111.06377)", source_epochs=100,
    lr=5e-4, lr_base_batch=256, layer_decay=0.65, min_lr=1e-6, pretrained=True,
)))
register(RECIPES["swin"].model_copy(update=dict(
    # The ViT/Swin failure write-up's Swin fine-tuning settings (layer decay 0.7, clip 5.0) on the Swin-T recipe, with
    # MAE's fine-tuning lr (5e-4 per 256), run length and warmup (100 epochs, 5 warmup).
    name="swin_ft", source="Swin-T recipe + layer decay 0.7 (ViT/Swin failure write-up) + MAE fine-tune lr and length",
    source_epochs=100, warmup_epochs=5, lr=5e-4, lr_base_batch=256, layer_decay=0.7, min_lr=1e-6, pretrained=True,
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

# The ingredients of a recipe, for `harness ablate`: named groups of tunable fields, each field in
# exactly one group (tests/test_ablate.py fails when a new field belongs to none). `batch_size` is the
# run's budget, not an ingredient: an ablation keeps it fixed on every rung.
INGREDIENTS: dict[str, tuple[str, ...]] = {
    "optimizer": ("optimizer", "opt_eps", "momentum"),
    "lr": ("lr", "lr_base_batch", "lr_rule"),
    "warmup": ("warmup_epochs", "warmup_lr"),
    "schedule": ("schedule", "min_lr", "decay_epochs", "decay_rate"),
    "clip": ("grad_clip",),
    "weight_decay": ("weight_decay", "no_decay_norm_bias"),
    "smoothing": ("label_smoothing", "loss"),
    "mixup": ("mixup_alpha", "cutmix_alpha", "mixup_prob"),
    "augment": ("crop", "crop_pad", "crop_pad_mode", "crop_scale", "hflip", "randaugment", "random_erasing"),
    "drop_path": ("drop_path_rate", "drop_rate"),
    "layer_decay": ("layer_decay", "pretrained"),
    "ema": ("ema_decay",),
}

# The tuned recipe of each model family ("tuned" in a benchmark grid: its fitted form).
TUNED = {"resnet": "cnn", "efficientnet": "effnet", "vit": "vit", "swin": "swin"}
FORMS = ("published", "fitted")


def tuned_recipe_name(family: str, pretrained: bool = False) -> str:
    name = TUNED[family]
    return f"{name}_ft" if pretrained else name


def get_recipe(name: str, field: str = "recipe") -> Recipe:
    if name not in RECIPES:
        raise unknown(field, name, RECIPES)
    return RECIPES[name]


# --- fitting a published recipe to one run -----------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """What one run can spend: its epochs over `train_images` at `batch_size` images per update."""

    epochs: int
    train_images: int
    batch_size: int

    @property
    def steps_per_epoch(self) -> int:  # as train.build_training steps: full batches only
        return max(1, self.train_images // min(self.batch_size, self.train_images))

    @property
    def updates(self) -> int:
        return self.epochs * self.steps_per_epoch


# Adam-type optimizers' second-moment decay (timm's defaults), for the warmup floor below.
SECOND_MOMENT_DECAY = {"adam": 0.999, "adamw": 0.999, "nadam": 0.999, "nadamw": 0.999, "radam": 0.999,
                       "lamb": 0.999, "lambc": 0.999, "rmsprop": 0.9, "rmsproptf": 0.9}
WARMUP_CAP = 0.1  # the floor never takes more than this share of the run's updates (harness choice)

# The written rules fit_recipe() applies; `harness recipes show` prints them and the README cites them.
FIT_RULES = {
    "lr": "the source's own batch rule (lr_rule) at this run's batch; linear for SGD/AdamW/RMSprop as DeiT, "
          "Swin, MAE and timm state, sqrt for LAMB (You et al. arXiv 1904.00962).",
    "warmup": "the source's share of its run (DeiT 5/300, Swin 20/300, RSB A3 5/100 epochs) over this run's "
              "updates, floored at 2/(1-beta2) updates for Adam-type optimizers (Ma & Yarats, arXiv 1910.04209: "
              "untuned warmup) but never more than a tenth of the run (harness choice).",
    "step decay": "the same number of decays over the run as the source (decay_epochs x run / source epochs).",
    "ema": "the EMA's averaging window 1/(1-decay) as the same share of the run's updates as in the source; "
           "off when that window is under 2 updates.",
    "strength": "augmentation and regularisation strength x s, s = min(1, run epochs / source epochs): mixup "
                "and cutmix alpha, RandAugment magnitude (off when it rounds to 0: its magnitude-free ops would "
                "still fire), random erasing, drop path, dropout, and the crop (rrc: 1 - s(1 - min area); pad: "
                "padding x s). Steiner et al. arXiv 2106.10270: augmentation and regularisation hurt at small "
                "compute; RSB A3 (100 epochs) is lighter than A1 (600). Flip, label smoothing and weight decay "
                "stay as published.",
}


def _round(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def fit_recipe(recipe: Recipe, budget: Budget) -> Recipe:
    """The fitted form of a published recipe for `budget` (see FIT_RULES). Each changed value is
    explained in `fit_notes`. A recipe without a source run only takes the budget's batch size."""
    if recipe.form == "fitted":
        raise ValueError(f"recipe {recipe.name} is already fitted")
    at_batch = recipe.model_copy(update={"batch_size": budget.batch_size})
    notes = [f"batch {budget.batch_size}: {budget.steps_per_epoch} updates/epoch x {budget.epochs} epochs = "
             f"{budget.updates} updates",
             f"lr {recipe.lr:g} per {recipe.lr_base_batch} -> {at_batch.scaled_lr():.3g} at batch {budget.batch_size} "
             f"({recipe.lr_rule} rule)"]
    update: dict[str, object] = {"form": "fitted", "batch_size": budget.batch_size}
    if recipe.source_epochs is None:
        notes.append("no source run: schedule, augmentation and regularisation as stated")
        return Recipe.model_validate({**recipe.model_dump(), **update, "fit_notes": tuple(notes)})
    run, src = budget.updates, recipe.source_epochs
    spe = budget.steps_per_epoch

    if recipe.warmup_epochs > 0:
        share = recipe.warmup_epochs / src
        beta2 = SECOND_MOMENT_DECAY.get(recipe.optimizer)
        floor = min(2 / (1 - beta2), WARMUP_CAP * run) if beta2 else 0.0
        updates = max(1, round(max(share * run, floor)))
        update["warmup_epochs"] = _round(updates / spe)
        notes.append(f"warmup {recipe.warmup_epochs:g} of {src:g} epochs ({share:.1%}) -> {updates} of {run} updates"
                     + (f" (floor min(2/(1-{beta2:g}), {WARMUP_CAP:.0%} of the run))" if floor > share * run else ""))
    if recipe.schedule == "step" and recipe.decay_epochs > 0:
        update["decay_epochs"] = _round(recipe.decay_epochs * budget.epochs / src)
        notes.append(f"step decay every {recipe.decay_epochs:g} of {src:g} epochs -> every {update['decay_epochs']:g} "
                     f"of {budget.epochs} ({src / recipe.decay_epochs:.0f} decays either way)")
    if recipe.ema_decay is not None:
        src_updates = src * recipe.source_images / (recipe.source_batch or recipe.lr_base_batch)
        window = (1 / (1 - recipe.ema_decay)) * run / src_updates
        update["ema_decay"] = _round(1 - 1 / window) if window >= 2 else None
        notes.append(f"EMA {recipe.ema_decay:g} (window {1 / (1 - recipe.ema_decay):.0f} of {src_updates:.0f} updates) -> "
                     + (f"{update['ema_decay']:g} (window {window:.1f} of {run})" if window >= 2 else
                        f"off (window {window:.2f} updates)"))

    s = min(1.0, budget.epochs / src)
    scaled = []
    for key in ("mixup_alpha", "cutmix_alpha", "random_erasing", "drop_path_rate", "drop_rate"):
        value = getattr(recipe, key)
        if value:
            update[key] = _round(value * s)
            scaled.append(f"{key} {value:g}->{update[key]:g}")
    if recipe.randaugment:
        m = randaugment_magnitude(recipe.randaugment)
        m_fit = round(m * s)
        update["randaugment"] = (re.sub(r"-m[0-9.]+", f"-m{m_fit}", recipe.randaugment) if "-m" in recipe.randaugment
                                 else f"{recipe.randaugment}-m{m_fit}") if m_fit > 0 else None
        scaled.append(f"randaugment {recipe.randaugment}->{update['randaugment'] or 'off'}")
    if recipe.crop == "rrc":
        update["crop_scale"] = _round(1 - s * (1 - recipe.crop_scale))
        scaled.append(f"crop min area {recipe.crop_scale:g}->{update['crop_scale']:g}")
    elif recipe.crop == "pad":
        update["crop_pad"] = _round(recipe.crop_pad * s)
        scaled.append(f"crop pad {recipe.crop_pad:g}->{update['crop_pad']:g}")
    if scaled:
        notes.append(f"strength x {s:.3g} ({budget.epochs} of {src:g} epochs): " + ", ".join(scaled))
    return Recipe.model_validate({**recipe.model_dump(), **update, "fit_notes": tuple(notes)})


def parse_ref(ref: str, field: str = "recipe") -> tuple[str, str]:
    """'vit' / 'vit@published' / 'tuned' / 'published' -> (name or 'tuned', form). A bare name means
    its fitted form; 'published' and 'fitted' alone mean the model family's own recipe."""
    name, _, form = ref.partition("@")
    if name in FORMS and not form:
        return "tuned", name
    form = form or "fitted"
    if form not in FORMS:
        raise UserError(field, ref, f"Unknown form {form!r}; use NAME@published or NAME@fitted (a bare name is fitted).")
    if name != "tuned" and name not in RECIPES:
        raise unknown(field, name, [*RECIPES, "tuned", *FORMS])
    return name, form


def resolve_recipe(ref: str, *, family: str, pretrained: bool, budget: Budget, overrides: dict[str, object] | None = None,
                   field: str = "recipe", set_field: str = "--set") -> Recipe:
    """A recipe reference resolved for one run: the named recipe in the asked form, then the user's overrides.
    `batch_size` in the overrides is the budget's batch (fitting needs it); the rest apply after fitting."""
    name, form = parse_ref(ref, field)
    if name == "tuned":
        name = tuned_recipe_name(family, pretrained)
    recipe = get_recipe(name, field)
    overrides = dict(overrides or {})
    if "batch_size" in overrides:
        batch = with_overrides(recipe, {"batch_size": overrides.pop("batch_size")}, set_field).batch_size
        budget = Budget(budget.epochs, budget.train_images, batch)
    if form == "fitted":
        recipe = fit_recipe(recipe, budget)
    else:
        recipe = recipe.model_copy(update={"batch_size": budget.batch_size})
    return with_overrides(recipe, overrides, set_field)


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
    import torch

    return torch.nn.CrossEntropyLoss()


# --- what `harness recipes` prints --------------------------------------------------------------

def published_table(*, width: int) -> str:
    """Every recipe's published values side by side (fields as rows), wrapped at `width` columns."""
    import pandas as pd

    table = pd.DataFrame({n: r.model_dump(exclude={"name", "source", "fit_notes", "form"}) for n, r in RECIPES.items()})
    return table.to_string(line_width=width)
