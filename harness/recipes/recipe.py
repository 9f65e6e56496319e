"""What a training recipe is: every knob of a run that is not the model or the data, augmentation
included, with its units (`Recipe`), and the checks that need no torch or timm import."""

from __future__ import annotations

import math
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

IMAGENET_1K_TRAIN = 1_281_167  # images in ImageNet-1k's train split: the data every source recipe was made for

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
    published values were made for (nothing to fit when `source_epochs` is None)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "custom"
    family: str = Field("any", description="model family the recipe is made for, or 'any'")
    source: str = Field("", description="where the values come from")
    form: Literal["published", "fitted"] = Field("published", description="published = the source's values; "
                                                 "fitted = derived for one run's budget by fit_recipe()")
    fit_notes: tuple[str, ...] = Field((), description="how each fitted value was derived (empty when published)")
    # The source's own run: what the published values were made for.
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
