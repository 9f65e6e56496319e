"""The recipe lint of the debugging checklist in the ViT/Swin failure write-up (transformers trained with
CNN settings): rules a recipe can break before any step is taken (a transformer without warmup at a high
lr, decay coupled into Adam, mixup on tiny batches...), each with its source."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from harness.doctor.probes import FAMILIES, PASS, TRANSFORMERS, WARN, CheckResult
from harness.recipes import Recipe

# recipe lint (the ViT/Swin failure write-up's debugging checklist; each rule cites its own sources).
# That write-up: transformers fail above ~2e-4 ("learning rate < 0.0002?") without warmup; lrs are
# compared per 512 images, DeiT's reference batch (lr = 5e-4 x batch / 512, arXiv 2012.12877).
MAX_LR_NO_WARMUP = 2e-4
LR_REFERENCE_BATCH = 512
# timm's Mixup (mode 'batch') pairs each image with its mirror in the batch and draws one lambda
# per batch, and refuses odd batches; harness choice: below 32 images the targets are mostly noise.
MIXUP_MIN_BATCH = 32


# --- recipe lint --------------------------------------------------------------------------------

@dataclass(frozen=True)
class LintRule:
    name: str
    families: tuple[str, ...]
    fires: Callable[[Recipe, bool], bool]  # (recipe, pretrained) -> the rule's bad setting is present
    detail: Callable[[Recipe], str]
    fix: str
    source: str


def lr_per_512(r: Recipe) -> float:
    return r.scaled_lr() * LR_REFERENCE_BATCH / r.batch_size


# Optimizers whose weight decay is coupled to the gradient (L2), or SGD: what the ViT/Swin failure
# write-up warns transformers off. AdamW, LAMB, Lion... decouple it and are fine.
COUPLED_DECAY = ("adam", "nadam", "radam", "adamax", "adagrad", "rmsprop", "rmsproptf", "sgd", "momentum", "nesterov")

LINT_RULES: tuple[LintRule, ...] = (
    LintRule(
        "adam_not_adamw", TRANSFORMERS,
        lambda r, _: r.optimizer in COUPLED_DECAY,
        lambda r: f"optimizer {r.optimizer}: transformers are trained with AdamW (decoupled weight decay)",
        "--set optimizer=adamw",
        "ViT/Swin failure write-up ('MUST use AdamW'); DeiT main.py and Swin config.py use AdamW; "
        "Loshchilov & Hutter, arXiv 1711.05101"),
    LintRule(
        # The ViT/Swin failure write-up: transformers fail above ~2e-4 without warmup; DeiT's 5e-4 per 512 is safe only
        # behind a 5-epoch warmup. So the rule is the pair: high lr AND no warmup.
        "high_lr_no_warmup", TRANSFORMERS,
        lambda r, _: r.warmup_epochs == 0 and lr_per_512(r) > MAX_LR_NO_WARMUP,
        lambda r: f"lr {r.scaled_lr():.2g} at batch {r.batch_size} = {lr_per_512(r):.2g} per 512 images, above 2e-4, with no warmup",
        "--set lr=5e-4 --set lr_rule=linear --set lr_base_batch=512 --set warmup_epochs=1 (or keep the lr at most 2e-4 per 512)",
        "ViT/Swin failure write-up ('learning rate < 0.0002?'); DeiT: 5e-4 per 512 with 5 warmup epochs "
        "(arXiv 2012.12877)"),
    LintRule(
        "no_warmup", TRANSFORMERS,
        lambda r, _: r.warmup_epochs == 0,
        lambda r: "no lr warmup: transformers are unstable at initialisation",
        "--set warmup_epochs=5",
        "ViT/Swin failure write-up ('MUST have warmup (3-5 epochs)'); DeiT 5 epochs, Swin 20 of 300"),
    LintRule(
        "no_clipping", TRANSFORMERS,
        lambda r, _: r.grad_clip == 0,
        lambda r: "no gradient clipping",
        "--set grad_clip=1.0 (ViT) or --set grad_clip=5.0 (Swin)",
        "ViT/Swin failure write-up (clip 1.0 ViT, 5.0 Swin); ViT tuning checklist step 3; "
        "Swin config.py TRAIN.CLIP_GRAD 5.0"),
    LintRule(
        "no_label_smoothing", TRANSFORMERS,
        lambda r, _: r.label_smoothing == 0 and r.loss == "ce",
        lambda r: "no label smoothing",
        "--set label_smoothing=0.1",
        "ViT/Swin failure write-up ('Label smoothing > 0?'); DeiT and Swin smoothing 0.1; "
        "Szegedy et al., arXiv 1512.00567"),
    LintRule(
        "decay_on_norm_bias", FAMILIES,
        lambda r, _: r.weight_decay > 0 and not r.no_decay_norm_bias,
        lambda r: f"weight decay {r.weight_decay:g} also shrinks norm weights and biases (1-D params)",
        "--set no_decay_norm_bias=true",
        "Swin config.py (no decay on 1-D params / norms); timm create_optimizer_v2 filter_bias_and_bn; "
        "Goyal et al. arXiv 1706.02677 sec. 5.1"),
    LintRule(
        "layer_decay_from_scratch", FAMILIES,
        lambda r, pretrained: r.layer_decay is not None and not (pretrained or r.pretrained),
        lambda r: f"layer_decay {r.layer_decay:g} without pretrained weights only slows the early layers",
        "--set layer_decay=null (or fine-tune: recipe vit_ft / swin_ft with --pretrained)",
        "BEiT (arXiv 2106.08254) and MAE FINETUNE.md use layer decay for fine-tuning only; DESIGN.md"),
    LintRule(
        # timm's Mixup (mode 'batch') pairs each image with its mirror in the batch and draws one
        # lambda per batch, and refuses odd batches: below 32 images the targets are mostly noise.
        "mixup_tiny_batch", FAMILIES,
        lambda r, _: r.uses_mixup() and (r.batch_size < MIXUP_MIN_BATCH or r.batch_size % 2 == 1),
        lambda r: f"mixup/cutmix on batches of {r.batch_size} images",
        "--set batch_size=64 (even, >= 32), or --set mixup_alpha=0 --set cutmix_alpha=0",
        "timm.data.Mixup (one lambda per batch, batch must be even); DeiT uses mixup at batch 1024"),
    LintRule(
        "lr_not_scaled", FAMILIES,
        lambda r, _: r.lr_rule == "none",
        lambda r: f"flat lr {r.lr:g} whatever the batch size ({r.batch_size})",
        "--set lr_rule=linear --set lr_base_batch=512 with lr stated per 512 images (linear scaling rule)",
        "Goyal et al. arXiv 1706.02677 (linear scaling); DeiT: lr = 5e-4 x batch / 512"),
)


def lint_recipe(recipe: Recipe, family: str, *, pretrained: bool = False) -> list[CheckResult]:
    """Every rule for `family`: WARN with the fix and the source where it fires, PASS where not."""
    out = []
    for rule in LINT_RULES:
        if family not in rule.families:
            continue
        if rule.fires(recipe, pretrained):
            out.append(CheckResult(f"lint.{rule.name}", WARN, rule.detail(recipe), f"{rule.fix}  [source: {rule.source}]",
                                   {"rule": rule.name, "source": rule.source}))
        else:
            out.append(CheckResult(f"lint.{rule.name}", PASS, "ok", "", {"rule": rule.name, "source": rule.source}))
    return out
