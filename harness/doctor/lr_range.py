"""The lr range test (Smith, arXiv 1506.01186 sec. 3.3, as fastai's lr_find runs it): the lr raised
every step from far below the recipe's to far above it, the loss smoothed, and the recipe's lr read
against the steepest descent and the lowest loss."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
import torch

from harness.doctor.probes import PASS, WARN, CheckResult, _device, cycle
from harness.recipes import Recipe, build_loss, build_optimizer

# lr range test: Smith, arXiv 1506.01186 sec. 3.3, as fastai's lr_find runs it.
LR_STEPS = 100  # fastai lr_find's default number of iterations
LR_DIVERGE_FACTOR = 4.0  # fastai lr_find stops when the smoothed loss exceeds 4x its minimum
# Harness choice: beta 0.9 averages ~10 steps (fastai's 0.98 averages ~50, which on a 100-step
# sweep lags the curve by three decades of lr).
LR_SMOOTHING_BETA = 0.9
# Harness choice: the sweep spans three decades either side of the recipe's lr (x/ 1e3), wide enough
# to see the flat start and the divergence for any optimizer, without spending steps far from it.
LR_SPAN = 1e3
# Harness choice: on a CPU the sweep runs at batch <= 32 (a ViT-Tiny step at 32 images costs ~0.3 s
# of CPU); the recipe's lr is moved to that batch by the linear rule (Goyal et al. arXiv 1706.02677).
LR_CPU_BATCH = 32
# Harness choice, how the curve is read: the first 1/LR_SKIP_PART of the points are dropped (the
# moving average is still warming up), and after a divergence the last LR_SKIP_DIVERGED (already
# climbing); the start loss is the mean of the next LR_START_POINTS.
LR_SKIP_PART = 10
LR_SKIP_DIVERGED = 2
LR_START_POINTS = 5
# Harness choice, measured: a 100-step sweep of a ViT on 10 classes lowers the smoothed loss by only
# ~8% (2.29 -> 2.11 on digits), so "it trained" is a 3% drop; a sweep at lrs far too small moves <0.5%.
LR_MIN_LOSS_RATIO = 0.97
# Harness choice: a recipe lr over 100x below the steepest descent trains at a crawl.
LR_TOO_LOW_FACTOR = 100


# --- lr range test ------------------------------------------------------------------------------

@dataclass(frozen=True)
class LrCurve:
    """What `lr_range_test` measured and suggests; `check_lr_range` adds the recipe's lr it judged.
    `as_dict()` is the lr_range check's `data`: the database's JSON and `harness doctor --json`."""

    lr: tuple[float, ...]  # the lr of each step taken
    loss: tuple[float, ...]  # raw training loss per step (the last one may be NaN/Inf)
    smoothed: tuple[float, ...]  # bias-corrected moving average of the loss (NaN at a non-finite loss)
    steps_done: int
    steps: int  # the budget
    batch_size: int
    lr_min: float
    lr_max: float
    stopped: str  # "end of sweep", or why the sweep stopped early
    diverged: bool
    diverged_at: float | None  # the lr at which it stopped
    suggested_lr: float | None  # steepest descent of the smoothed loss, on the way down to its minimum
    min_loss_lr: float | None  # where the smoothed loss is lowest
    start_loss: float  # mean smoothed loss once the moving average has warmed up
    min_loss: float | None
    recipe_lr: float | None = None  # the recipe's lr at this batch, once judged

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_range_test(model: torch.nn.Module, split: Any, recipe: Recipe, *, augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
                  lr_min: float, lr_max: float, steps: int = LR_STEPS, batch_size: int = LR_CPU_BATCH, seed: int = 0,
                  diverge_factor: float = LR_DIVERGE_FACTOR, beta: float = LR_SMOOTHING_BETA) -> LrCurve:
    """Smith's lr range test (arXiv 1506.01186 sec. 3.3; fastai's lr_find): the recipe's
    optimizer (weight decay, no-decay groups, layer decay), loss, clipping and model
    regularisation, with crop/flip augmentation, and the lr raised exponentially from
    `lr_min` to `lr_max` over `steps` updates. Stops when the smoothed loss exceeds
    `diverge_factor` x its minimum or the loss is not finite.

    Mixup/cutmix, RandAugment and random erasing are left out: they add label and input noise
    that hides the loss trend in a ~100-step sweep (measured: with DeiT's mixup the smoothed loss
    of ViT-Tiny on digits stays flat to within noise across six decades of lr).
    The lr of each param group is set as lr x the group's `lr_scale` (timm's layer decay).
    Returns the curve and the suggestions; `check_lr_range` judges it against the recipe.
    The loss is smoothed by a bias-corrected moving average (`beta`: see LR_SMOOTHING_BETA).
    """
    model.train()
    dev = _device(model)
    optimizer = build_optimizer(model, recipe)
    criterion = build_loss(recipe.model_copy(update={"mixup_alpha": 0.0, "cutmix_alpha": 0.0}))
    params = [p for p in model.parameters() if p.requires_grad]
    max_norm = recipe.grad_clip if recipe.grad_clip > 0 else math.inf
    g = torch.Generator(device=dev).manual_seed(seed)
    batches = cycle(split, batch_size, g)
    mult = (lr_max / lr_min) ** (1 / max(steps - 1, 1))
    lrs, raw, smooth = [], [], []
    avg, best, stopped = 0.0, math.inf, "end of sweep"
    for i in range(steps):
        lr = lr_min * mult**i
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        x, y = next(batches)
        loss = criterion(model(augment(x, g)), y)
        value = loss.item()
        lrs.append(lr)
        raw.append(value)
        if not math.isfinite(value):
            smooth.append(float("nan"))
            stopped = f"loss became {value} at lr {lr:.3g}"
            break
        avg = beta * avg + (1 - beta) * value
        s = avg / (1 - beta ** (i + 1))  # bias-corrected exponential moving average
        smooth.append(s)
        best = min(best, s)
        if i > 0 and s > diverge_factor * best:
            stopped = f"smoothed loss {s:.3g} > {diverge_factor:g}x its minimum {best:.3g} at lr {lr:.3g}"
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm)
        optimizer.step()
    diverged = stopped != "end of sweep"
    finite = [(lr, s) for lr, s in zip(lrs, smooth) if math.isfinite(s)]
    # Drop the first tenth (the moving average is still warming up) and, after a divergence, the
    # last points (already climbing) before looking for the steepest descent.
    skip = max(1, len(finite) // LR_SKIP_PART)
    body = finite[skip: len(finite) - (LR_SKIP_DIVERGED if diverged else 0)] or finite
    suggested = min_loss_lr = None
    if len(body) >= 3:
        b_lr = np.log10([p[0] for p in body])
        b_s = np.array([p[1] for p in body])
        low = int(np.argmin(b_s))
        min_loss_lr = float(10 ** b_lr[low])
        if low >= 2:  # the steepest descent lies on the way down to the minimum, not at or past it
            slope = np.gradient(b_s[: low + 1], b_lr[: low + 1])[:-1]
            suggested = float(10 ** b_lr[int(np.argmin(slope))])
    start_loss = float(np.mean([p[1] for p in finite[skip: skip + LR_START_POINTS]])) if finite else float("nan")
    return LrCurve(lr=tuple(lrs), loss=tuple(raw), smoothed=tuple(smooth), steps_done=len(lrs), steps=steps,
                   batch_size=batch_size, lr_min=lr_min, lr_max=lr_max, stopped=stopped, diverged=diverged,
                   diverged_at=lrs[-1] if diverged else None, suggested_lr=suggested, min_loss_lr=min_loss_lr,
                   start_loss=start_loss, min_loss=best if math.isfinite(best) else None)


def check_lr_range(curve: LrCurve, recipe_lr: float, *, recipe_desc: str | None = None) -> CheckResult:
    """Judge the recipe's lr (at the test's batch size) against the curve.

    WARN when the smoothed loss never fell below LR_MIN_LOSS_RATIO x its start (no lr in the sweep
    trains the model), when the recipe's lr is at or past the point where the loss stops improving
    (Smith: the usable maximum), or when it is more than LR_TOO_LOW_FACTOR x below the steepest
    descent (training would crawl). PASS otherwise.
    """
    data = replace(curve, recipe_lr=recipe_lr).as_dict()
    sug, lo_best = curve.suggested_lr, curve.min_loss_lr
    end = curve.stopped if curve.diverged else f"no divergence up to {curve.lr_max:.3g}"
    head = f"{curve.steps_done}/{curve.steps} steps at batch {curve.batch_size}, {curve.lr_min:.2g}->{curve.lr[-1]:.2g}; {end}"
    if sug is None or curve.min_loss is None or not (curve.min_loss < LR_MIN_LOSS_RATIO * curve.start_loss):
        return CheckResult("lr_range", WARN, f"{head}; the loss never fell by {1 - LR_MIN_LOSS_RATIO:.0%} at any lr",
                           "No lr in the sweep trained the model: if the overfit check passed, sweep longer "
                           "(--lr-steps 300) or from a higher lr (--set lr=...).", data)
    where = f"steepest descent at lr {sug:.2g}, lowest loss at {lo_best:.2g}; {recipe_desc or f'recipe lr {recipe_lr:.2g}'}"
    if recipe_lr >= lo_best:
        return CheckResult("lr_range", WARN, f"{head}; {where}: the recipe's lr is past where the loss stops improving",
                           f"Lower the lr toward {sug:.2g} (--set lr=...), or add warmup so the early steps survive it.", data)
    if recipe_lr < sug / LR_TOO_LOW_FACTOR:
        return CheckResult("lr_range", WARN, f"{head}; {where}: the recipe's lr is over {LR_TOO_LOW_FACTOR}x below the "
                           "steepest descent", f"Raise the lr toward {sug:.2g} (--set lr=...); at this lr training will crawl.", data)
    return CheckResult("lr_range", PASS, f"{head}; {where}", "", data)
