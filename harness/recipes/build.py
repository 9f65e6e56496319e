"""Recipe -> timm objects. They deliberately go through timm: `create_optimizer_v2` gives
no-weight-decay groups for norms/biases and layer-wise lr decay, and layer decay only works through
a timm scheduler (it applies each param group's `lr_scale`; a torch scheduler silently ignores it).
torch and timm are imported when a builder is called: a spec is checked without them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from harness.recipes.recipe import Recipe

if TYPE_CHECKING:
    import torch


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
