"""The named recipes in their published form: the sources' values verbatim, in the sources' units,
each next to its citation; the ingredients `harness ablate` adds one at a time; each model
family's own recipe; and the side-by-side table `harness recipes` prints."""

from __future__ import annotations

from harness.errors import unknown
from harness.recipes.recipe import Recipe

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

# Each model family's own recipe: what `fitted` (a grid's or --recipe's default) runs for a model of
# that family, in its fitted form; with pretrained weights, its fine-tuning variant.
FAMILY_RECIPES = {"resnet": "cnn", "efficientnet": "effnet", "vit": "vit", "swin": "swin"}


def family_recipe_name(family: str, pretrained: bool = False) -> str:
    name = FAMILY_RECIPES[family]
    return f"{name}_ft" if pretrained else name


def get_recipe(name: str, field: str = "recipe") -> Recipe:
    if name not in RECIPES:
        raise unknown(field, name, RECIPES)
    return RECIPES[name]



# --- what `harness recipes` prints --------------------------------------------------------------

def published_table(*, width: int) -> str:
    """Every recipe's published values side by side (fields as rows), the recipes in blocks of columns
    that fit `width`. Laid out by hand, not by pandas: importing pandas alone took most of the 2 s a
    listing may take on a busy machine."""
    values = {n: r.model_dump(exclude={"name", "source", "fit_notes", "form"}) for n, r in RECIPES.items()}
    fields = list(next(iter(values.values())))
    cells = {n: [f"{v[f]:g}" if isinstance(v[f], float) else str(v[f]) for f in fields] for n, v in values.items()}
    label = max(map(len, fields))
    cols = {n: max(len(n), *map(len, c)) for n, c in cells.items()}
    blocks: list[list[str]] = [[]]
    for n in cells:  # as many recipes per block as fit beside the field names
        if blocks[-1] and label + sum(cols[m] + 2 for m in [*blocks[-1], n]) > width:
            blocks.append([])
        blocks[-1].append(n)
    out = []
    for block in blocks:
        out.append(" " * label + "".join(f"  {n:>{cols[n]}}" for n in block))
        out += [f"{f:<{label}}" + "".join(f"  {cells[n][i]:>{cols[n]}}" for n in block) for i, f in enumerate(fields)]
        out.append("")
    return "\n".join(out).rstrip()
