"""`harness doctor`: the checks users run by hand before training (seed 004) and the recipe
lint of seed 000's debugging checklist, as functions that take a model and data objects.

Each check returns `CheckResult`s (PASS / WARN / FAIL, a one-line detail, a one-line fix, and
the numbers behind it in `data`). They take plain objects - a `torch.nn.Module`, a data split
with `.batches()`, a `Recipe` - so tests can hand them a model with a frozen layer or a label
pipeline that shuffles labels, and see the fault caught.

The probes here are a few optimizer steps each (gradients: up to 3, overfit: up to 200, lr range:
about 100). They are deliberately not `train.fit`: they need per-step control (an lr changed
every step, a stop at 100% accuracy, per-parameter gradients) that the epoch loop does not give.

Length (~710 lines): five checks and the recipe lint, each with its named, sourced thresholds at
the top; they share the probe set-up, so they stay one module.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from harness.models import stand_in_label
from harness.recipes import Recipe, build_loss, build_optimizer

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
TRANSFORMERS = ("vit", "swin")
FAMILIES = ("resnet", "efficientnet", "vit", "swin")

# --- thresholds, each with its source -----------------------------------------------------------
# Seed 004 = the ViT tuning checklist's "must-do checks before training"; seed 000 = the debugging
# checklist of the ViT/Swin failure write-up. Harness choices say why.

# gradients: seed 004's sane range (0.1 ~ 10) for the global grad norm of the first step.
GRAD_NORM_RANGE = (0.1, 10.0)
# Harness choice: a zero gradient on step 1 can be by design (timm zero-inits each ResNet block's
# last norm), so zero gradients are re-checked after this many plain SGD steps at this lr.
GRAD_RECHECK_STEPS = 2
GRAD_PROBE_LR = 1e-2

# overfit test: seed 004, "100% accuracy on 32 samples ... train 150-200 steps".
OVERFIT_SAMPLES = 32
OVERFIT_STEPS = 200
OVERFIT_TARGET_ACC = 1.0
# Overfit-test optimizer: AdamW with weight decay 0 for every family, so a FAIL points at the
# model or the data, not at an optimizer the recipe happened to pick (LAMB, RMSprop...). The lr
# is per family. Seed 004 says 5e-3 for its 4-layer, 128-wide ViT; a 12-layer ViT or Swin with
# no warmup is not stable there (the loss spikes before it memorises), so transformers use 1e-3
# (the top of seed 004's "medium dataset" range). BatchNorm CNNs take seed 004's 5e-3 as is.
OVERFIT_LR = {"vit": 1e-3, "swin": 1e-3, "resnet": 5e-3, "efficientnet": 5e-3}
OVERFIT_LR_OTHER = 1e-3  # a plugin's family: the transformers' (the more cautious) lr

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

# recipe lint (seed 000's debugging checklist; each rule cites its own sources).
# Seed 000: transformers fail above ~2e-4 ("learning rate < 0.0002?") without warmup; lrs are
# compared per 512 images, DeiT's reference batch (lr = 5e-4 x batch / 512, arXiv 2012.12877).
MAX_LR_NO_WARMUP = 2e-4
LR_REFERENCE_BATCH = 512
# timm's Mixup (mode 'batch') pairs each image with its mirror in the batch and draws one lambda
# per batch, and refuses odd batches; harness choice: below 32 images the targets are mostly noise.
MIXUP_MIN_BATCH = 32


@dataclass
class CheckResult:
    check: str  # shapes | gradients | grad_norm | overfit | lr_range | lint.<rule>
    status: str  # PASS | WARN | FAIL
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def cycle(split: Any, batch_size: int, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches from a split forever, reshuffled every pass (through the split's own pipeline)."""
    while True:
        got = False
        for x, y in split.batches(batch_size, shuffle=True, generator=generator, drop_last=True):
            got = True
            yield x, y
        if not got:
            raise ValueError(f"split of {len(split)} images yields no batch of {batch_size}")


# --- shapes -------------------------------------------------------------------------------------

def expected_stages(model: torch.nn.Module, *, family: str, image_size: int, patch_size: int | None) -> list[tuple[str, tuple[int, ...]]]:
    """(stage name, expected [C, H, W]) for each entry of timm's `feature_info`, derived from the
    image size: ViT blocks keep the patch grid (size / patch); Swin stage i has grid
    size / patch / 2**i; CNN stages are ceil(size / reduction) (timm's 'same'-style padding)."""
    out = []
    for i, info in enumerate(getattr(model, "feature_info", []) or []):
        if family == "vit" and patch_size:
            side = image_size // patch_size
        elif family == "swin" and patch_size:
            side = image_size // patch_size // 2**i
        else:
            side = math.ceil(image_size / info["reduction"])
        out.append((info["module"], (info["num_chs"], side, side)))
    return out


@torch.no_grad()
def check_shapes(model: torch.nn.Module, *, family: str, image_size: int, num_classes: int,
                 patch_size: int | None = None, in_chans: int = 3, batch: int = 2) -> CheckResult:
    """Input -> patch tokens (ViT) -> every stage (timm `forward_intermediates`) -> logits, each
    compared with what the image size and the model's configuration imply."""
    was_training = model.training
    model.eval()
    dev = _device(model)
    x = torch.zeros(batch, in_chans, image_size, image_size, device=dev)
    rows: list[dict[str, Any]] = [{"stage": "input", "expected": [batch, in_chans, image_size, image_size],
                                   "got": list(x.shape)}]
    try:
        if family == "vit" and patch_size and hasattr(model, "patch_embed"):
            grid = image_size // patch_size
            # timm's patch embedding flattens the grid: [N, (size/patch)^2, embed_dim]
            rows.append({"stage": f"patch_embed (patch {patch_size})", "expected": [batch, grid * grid, model.embed_dim],
                         "got": list(model.patch_embed(x).shape)})
            prefix = getattr(model, "num_prefix_tokens", 0)
            rows.append({"stage": f"tokens (+{prefix} prefix)", "expected": [batch, grid * grid + prefix, model.embed_dim],
                         "got": list(model.forward_features(x).shape)})
        if hasattr(model, "forward_intermediates") and getattr(model, "feature_info", None):
            feats = model.forward_intermediates(x, intermediates_only=True)
            for (name, exp), f in zip(expected_stages(model, family=family, image_size=image_size, patch_size=patch_size), feats):
                rows.append({"stage": name, "expected": [batch, *exp], "got": list(f.shape)})
        out = model(x)
        rows.append({"stage": "output", "expected": [batch, num_classes], "got": list(out.shape)})
    except Exception as e:  # noqa: BLE001 - a forward that raises is exactly what this check reports
        model.train(was_training)
        return CheckResult("shapes", FAIL, f"forward failed at {image_size}px: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                           "Build the model for this image size (models.build_model(image_size=...)) and check the "
                           "input layout is [N, C, H, W].", {"stages": rows})
    finally:
        model.train(was_training)
    bad = [r for r in rows if r["expected"] != r["got"]]
    finite = bool(torch.isfinite(out).all())
    staged = len(rows) - 2
    shapes = ["x".join(map(str, r["got"][1:])) for r in rows]
    runs: list[list[Any]] = []  # 12 identical ViT blocks print as "12x 192x4x4"
    for sh in shapes:
        if runs and runs[-1][0] == sh:
            runs[-1][1] += 1
        else:
            runs.append([sh, 1])
    summary = " -> ".join(f"{n}x {sh}" if n > 1 else sh for sh, n in runs)
    data = {"stages": rows}
    if bad:
        r = bad[0]
        return CheckResult("shapes", FAIL, f"{r['stage']}: expected {tuple(r['expected'])}, got {tuple(r['got'])}"
                           + (f" (+{len(bad) - 1} more)" if len(bad) > 1 else ""),
                           "The model is not configured for this image size / class count; rebuild it with "
                           "models.build_model(num_classes=..., image_size=...).", data)
    if not finite:
        return CheckResult("shapes", FAIL, "output has NaN/Inf on a zero input at initialisation",
                           "Check the model's initialisation and normalisation layers.", data)
    return CheckResult("shapes", PASS, f"{staged} stages as expected: {summary}", "", data)


# --- gradients ----------------------------------------------------------------------------------

def _layer(name: str) -> str:
    """Parameter name -> its module ('blocks.3.attn.qkv.weight' -> 'blocks.3.attn.qkv')."""
    return name.rsplit(".", 1)[0] if "." in name else name


def check_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, extra_steps: int = GRAD_RECHECK_STEPS,
                    lr: float = GRAD_PROBE_LR) -> list[CheckResult]:
    """Seed 004's gradient check on one batch (normalised images, hard labels).

    `gradients`: FAIL naming every parameter that is frozen (requires_grad=False: nothing in the
    harness freezes layers), gets no gradient (disconnected from the loss), a non-finite one, or
    an all-zero one. A zero gradient on step 1 can be by design - timm zero-initialises the last
    norm of each ResNet block, which zeroes the gradient of the convolutions before it - so zero
    gradients are re-checked after up to `extra_steps` SGD steps and only ones that stay zero fail.
    `grad_norm`: the first step's global norm (plain cross-entropy) against GRAD_NORM_RANGE, WARN naming
    the layers outside that range.
    """
    model.train()
    named = list(model.named_parameters())
    frozen = [n for n, p in named if not p.requires_grad]
    trainable = [(n, p) for n, p in named if p.requires_grad]
    by_name = dict(trainable)
    opt = torch.optim.SGD([p for _, p in trainable], lr=lr)
    never_nonzero = set()
    none, nonfinite = [], []
    first_norm, per_layer = float("nan"), {}
    for step in range(1 + extra_steps):
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if step == 0:
            none = [n for n, p in trainable if p.grad is None]
            nonfinite = [n for n, p in trainable if p.grad is not None and not torch.isfinite(p.grad).all()]
            never_nonzero = {n for n, p in trainable if p.grad is not None and n not in nonfinite and not p.grad.any()}
            sq: dict[str, float] = {}
            for n, p in trainable:
                if p.grad is not None:
                    sq[_layer(n)] = sq.get(_layer(n), 0.0) + float(p.grad.detach().float().pow(2).sum())
            per_layer = {k: math.sqrt(v) for k, v in sq.items()}
            first_norm = math.sqrt(sum(sq.values()))
        else:
            never_nonzero = {n for n in never_nonzero if not by_name[n].grad.any()}
        if not never_nonzero or nonfinite:
            break
        opt.step()
    zero = sorted(never_nonzero)
    problems = [("frozen (requires_grad=False)", frozen), ("no gradient (not connected to the loss)", none),
                ("non-finite gradient", nonfinite), (f"zero gradient after {1 + extra_steps} steps", zero)]
    data = {"first_step_grad_norm": first_norm, "per_layer_norm": per_layer, "frozen": frozen, "no_grad": none,
            "nonfinite": nonfinite, "zero": zero, "trainable": len(trainable)}
    results = []
    found = [(what, names) for what, names in problems if names]
    if found:
        detail = "; ".join(f"{what}: {_names(names)}" for what, names in found)
        results.append(CheckResult("gradients", FAIL, detail,
                                   "Every parameter must be trained: unfreeze it, use its output in forward(), "
                                   "or remove it; non-finite gradients mean a numerical bug (log of 0, overflow).", data))
    else:
        results.append(CheckResult("gradients", PASS, f"all {len(trainable)} trainable tensors get finite, non-zero gradients",
                                   "", data))
    lo, hi = GRAD_NORM_RANGE
    if not math.isfinite(first_norm):
        results.append(CheckResult("grad_norm", FAIL, "first-step gradient norm is not finite",
                                   "Find the NaN/Inf source (see the gradients check); check inputs are normalised.", data))
    elif lo <= first_norm <= hi:
        results.append(CheckResult("grad_norm", PASS, f"first-step global grad norm {first_norm:.3g} (within {lo}-{hi})", "", data))
    else:
        outside = sorted(((k, v) for k, v in per_layer.items() if not lo <= v <= hi),
                         key=lambda kv: -abs(math.log10(max(kv[1], 1e-12))))
        if first_norm > hi:
            # A global norm above 10 can come from many layers each in range: name the largest.
            outside = [kv for kv in outside if kv[1] > hi] or sorted(per_layer.items(), key=lambda kv: -kv[1])[:3]
            fix = "Add gradient clipping (--set grad_clip=1.0) and check the input normalisation and the init."
        else:
            outside = [kv for kv in outside if kv[1] < lo]
            fix = "Gradients are tiny: check the loss is not saturated, the labels are right, and the init scale."
        listed = ", ".join(f"{k} {v:.2g}" for k, v in outside[:5]) + (f" (+{len(outside) - 5} more)" if len(outside) > 5 else "")
        results.append(CheckResult("grad_norm", WARN, f"first-step global grad norm {first_norm:.3g} outside {lo}-{hi}; "
                                   f"layers: {listed}", fix, data))
    return results


def _names(names: list[str], limit: int = 6) -> str:
    return ", ".join(names[:limit]) + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


# --- overfit test -------------------------------------------------------------------------------

def check_overfit(model: torch.nn.Module, split: Any, *, normalize: Callable[[torch.Tensor], torch.Tensor],
                  lr: float, steps: int = OVERFIT_STEPS, seed: int = 0) -> CheckResult:
    """Seed 004's overfit test: train on one small split (32 images) with AdamW, weight decay 0,
    no augmentation, until the training batch is 100% right or `steps` run out.

    The caller builds the model with dropout and drop path off. Batches come from the split's
    own `batches()` every step, so a label pipeline that decouples labels from images (a
    shuffle applied to one and not the other) cannot be memorised and fails here.
    """
    model.train()
    dev = _device(model)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    g = torch.Generator(device=dev).manual_seed(seed)
    batches = cycle(split, len(split), g)
    accs, losses = [], []
    reached = None
    for step in range(1, steps + 1):
        x, y = next(batches)
        out = model(normalize(x))
        loss = F.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        accs.append(float((out.argmax(1) == y).float().mean()))
        losses.append(loss.item())
        if accs[-1] >= OVERFIT_TARGET_ACC:
            reached = step
            break
        if not math.isfinite(losses[-1]):
            break
    data = {"samples": len(split), "lr": lr, "optimizer": "adamw", "steps_budget": steps, "steps": len(accs),
            "reached_at": reached, "train_acc": accs, "loss": losses}
    if reached is not None:
        return CheckResult("overfit", PASS, f"100% train acc on {len(split)} images at step {reached}/{steps} "
                           f"(AdamW lr {lr:g}, loss {losses[-1]:.3f})", "", data)
    best = max(accs) if accs else 0.0
    why = "loss became non-finite" if losses and not math.isfinite(losses[-1]) else f"best {best:.0%}, final loss {losses[-1]:.3f}"
    return CheckResult("overfit", FAIL, f"could not memorise {len(split)} images in {steps} steps ({why}): there is a bug",
                       "Check that labels stay paired with their images through the pipeline, that the loss gets the "
                       "logits and targets it expects, and that no layer is frozen or detached.", data)


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


# Optimizers whose weight decay is coupled to the gradient (L2), or SGD: what seed 000 warns
# transformers off. AdamW, LAMB, Lion... decouple it and are fine.
COUPLED_DECAY = ("adam", "nadam", "radam", "adamax", "adagrad", "rmsprop", "rmsproptf", "sgd", "momentum", "nesterov")

LINT_RULES: tuple[LintRule, ...] = (
    LintRule(
        "adam_not_adamw", TRANSFORMERS,
        lambda r, _: r.optimizer in COUPLED_DECAY,
        lambda r: f"optimizer {r.optimizer}: transformers are trained with AdamW (decoupled weight decay)",
        "--set optimizer=adamw",
        "seed 000 ('MUST use AdamW'); DeiT main.py and Swin config.py use AdamW; Loshchilov & Hutter, arXiv 1711.05101"),
    LintRule(
        # Seed 000: transformers fail above ~2e-4 without warmup; DeiT's 5e-4 per 512 is safe only
        # behind a 5-epoch warmup. So the rule is the pair: high lr AND no warmup.
        "high_lr_no_warmup", TRANSFORMERS,
        lambda r, _: r.warmup_epochs == 0 and lr_per_512(r) > MAX_LR_NO_WARMUP,
        lambda r: f"lr {r.scaled_lr():.2g} at batch {r.batch_size} = {lr_per_512(r):.2g} per 512 images, above 2e-4, with no warmup",
        "--set lr=5e-4 --set lr_rule=linear --set lr_base_batch=512 --set warmup_epochs=1 (or keep the lr at most 2e-4 per 512)",
        "seed 000 ('learning rate < 0.0002?'); DeiT: 5e-4 per 512 with 5 warmup epochs (arXiv 2012.12877)"),
    LintRule(
        "no_warmup", TRANSFORMERS,
        lambda r, _: r.warmup_epochs == 0,
        lambda r: "no lr warmup: transformers are unstable at initialisation",
        "--set warmup_epochs=5",
        "seed 000 ('MUST have warmup (3-5 epochs)'); DeiT 5 epochs, Swin 20 of 300"),
    LintRule(
        "no_clipping", TRANSFORMERS,
        lambda r, _: r.grad_clip == 0,
        lambda r: "no gradient clipping",
        "--set grad_clip=1.0 (ViT) or --set grad_clip=5.0 (Swin)",
        "seed 000 (clip 1.0 ViT, 5.0 Swin); seed 004 step 3; Swin config.py TRAIN.CLIP_GRAD 5.0"),
    LintRule(
        "no_label_smoothing", TRANSFORMERS,
        lambda r, _: r.label_smoothing == 0 and r.loss == "ce",
        lambda r: "no label smoothing",
        "--set label_smoothing=0.1",
        "seed 000 ('Label smoothing > 0?'); DeiT and Swin smoothing 0.1; Szegedy et al., arXiv 1512.00567"),
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


# --- the whole doctor run -----------------------------------------------------------------------

@dataclass
class DoctorReport:
    model: str  # what ran
    stands_for: str | None
    recipe: Recipe
    family: str
    data: str
    device: str
    results: list[CheckResult]
    seconds: dict[str, float]  # wall time per check
    cpu_seconds: dict[str, float]  # this process's CPU time per check
    lr_curve: LrCurve | None = None  # judged: with the recipe's lr at the sweep's batch

    def label(self) -> str:
        return stand_in_label(self.model, self.stands_for)

    def failed(self) -> bool:
        return any(r.status == FAIL for r in self.results)


def run_doctor(*, model: str, recipe: Recipe, data_spec: Any, device: torch.device, stands_for: str | None = None,
               seed: int = 0, overfit_steps: int = OVERFIT_STEPS, lr_steps: int = LR_STEPS, probe_batch: int | None = None,
               log: Callable[[str], None] = lambda s: None) -> DoctorReport:
    """All checks on `model` (a registry name, already resolved for scale) with `recipe`."""
    from harness import data as data_mod
    from harness.models import build_model, get_model_entry

    entry = get_model_entry(model)
    size = data_spec.image_size
    ds = data_mod.load(data_spec, device)
    plain = data_mod.BatchAugment(ds, device=device)  # normalisation only
    seconds: dict[str, float] = {}
    cpu_seconds: dict[str, float] = {}
    results: list[CheckResult] = []
    clock: dict[str, float] = {}

    def start() -> None:
        clock["wall"], clock["cpu"] = time.monotonic(), time.process_time()

    def done(name: str, status: str) -> None:
        # CPU time beside wall time: on a shared machine the wall clock says more about the
        # neighbours than about the check.
        seconds[name] = time.monotonic() - clock["wall"]
        cpu_seconds[name] = time.process_time() - clock["cpu"]
        log(f"  {name:<10} {status}  ({seconds[name]:.1f}s wall, {cpu_seconds[name]:.1f}s CPU)")

    def fresh(**kw: float) -> torch.nn.Module:
        torch.manual_seed(seed)  # every probe starts from the same initialisation
        return build_model(model, num_classes=ds.num_classes, image_size=size, **kw).to(device)

    g = torch.Generator(device=device).manual_seed(seed)
    x32, y32 = next(ds.train.batches(OVERFIT_SAMPLES, shuffle=True, generator=g, drop_last=False))
    sample = data_mod.TensorSplit(x32, y32)

    start()
    patch = entry.size_kwargs(size).get("patch_size")
    results.append(check_shapes(fresh(), family=entry.family, image_size=size, num_classes=ds.num_classes, patch_size=patch))
    done("shapes", results[-1].status)

    start()
    results += check_gradients(fresh(), plain.normalize(x32), y32)
    done("gradients", f"{results[-2].status}/{results[-1].status}")
    seconds["grad_norm"], cpu_seconds["grad_norm"] = seconds["gradients"], cpu_seconds["gradients"]

    start()
    lr = OVERFIT_LR.get(entry.family, OVERFIT_LR_OTHER)
    results.append(check_overfit(fresh(), sample, normalize=plain.normalize, lr=lr, steps=overfit_steps, seed=seed))
    done("overfit", results[-1].status)

    start()
    # The recipe's lr moved to the sweep's batch by the linear rule recipes use (see LR_CPU_BATCH).
    batch = min(recipe.batch_size, len(ds.train), probe_batch or (recipe.batch_size if device.type == "cuda" else LR_CPU_BATCH))
    recipe_lr = recipe.scaled_lr() * batch / recipe.batch_size
    # The recipe's crop and flip, without RandAugment and erasing (100 steps are too few to average them out).
    augment = data_mod.BatchAugment(ds, recipe.model_copy(update={"randaugment": None, "random_erasing": 0.0}), device=device)
    curve = lr_range_test(fresh(drop_rate=recipe.drop_rate, drop_path_rate=recipe.drop_path_rate), ds.train, recipe,
                          augment=augment, lr_min=recipe_lr / LR_SPAN, lr_max=recipe_lr * LR_SPAN,
                          steps=lr_steps, batch_size=batch, seed=seed)
    lr_result = check_lr_range(curve, recipe_lr, recipe_desc=(
        f"recipe lr {recipe.scaled_lr():.2g} at batch {recipe.batch_size} = {recipe_lr:.2g} at batch {batch}"
        if batch != recipe.batch_size else f"recipe lr {recipe_lr:.2g}"))
    results.append(lr_result)
    done("lr_range", lr_result.status)

    results += lint_recipe(recipe, entry.family)
    return DoctorReport(model, stands_for, recipe, entry.family, ds.description, str(device), results, seconds,
                        cpu_seconds, lr_curve=replace(curve, recipe_lr=recipe_lr))


def format_table(report: DoctorReport) -> str:
    """The printed table: every non-lint check and the lint rules that fired (one line if none),
    each with its fix on the line below."""
    shown = [r for r in report.results if not r.check.startswith("lint.")]
    lint = [r for r in report.results if r.check.startswith("lint.")]
    fired = [r for r in lint if r.status != PASS]
    shown += fired or [CheckResult("lint", PASS, f"{len(lint)} {report.family} rules checked, none fired", "")]
    width = max(len(r.check) for r in shown) + 2
    lines = [f"{'check':<{width}}{'status':<8}detail"]
    for r in shown:
        lines.append(f"{r.check:<{width}}{r.status:<8}{r.detail}")
        if r.fix:
            lines.append(f"{'':<{width + 8}}fix: {r.fix}")
    return "\n".join(lines)


# --- `harness doctor`: resolve, check, record ---------------------------------------------------

@dataclass
class Checkup:
    """A finished `harness doctor`: the report, the run it checked, where it was recorded."""

    report: DoctorReport
    spec: Any  # the RunSpec checked (a CPU stand-in's when `stands_for` is set)
    experiment_id: int
    html: Path  # the lr range test's page

    @property
    def exit_code(self) -> int:
        """0: no check FAILed; 1: one did (2, bad input, is the CLI's)."""
        return 1 if self.report.failed() else 0

    def as_json(self, *, db: str, total_s: float, total_cpu_s: float) -> dict[str, Any]:
        from harness.store import json_safe

        r = self.report
        return json_safe({"model": r.model, "stands_for": r.stands_for, "label": r.label(), "recipe": r.recipe.name,
                          "data": r.data, "device": r.device, "exit_code": self.exit_code, "experiment_id": self.experiment_id,
                          "db": db, "lr_range_html": str(self.html), "seconds": r.seconds, "cpu_seconds": r.cpu_seconds,
                          "total_s": total_s, "total_cpu_s": total_cpu_s, "checks": [c.as_dict() for c in r.results]})


def checkup(model: str, recipe: str, data_spec: Any, *, overrides: dict[str, Any], scale: str, device: str, seed: int,
            threads: int | None, overfit_steps: int, lr_steps: int, db: str, out: Path,
            log: Callable[[str], None]) -> Checkup:
    """What `harness doctor` does: the model resolved for scale (the CPU stand-in on a CPU with `auto`),
    every input validated before anything runs, the checks, the lr range page in `out`, the results
    in `db`. `db` and `out` are checked by the caller."""
    import yaml

    from harness.dashboards.figures import lr_range_figure
    from harness.errors import UserError
    from harness.models import resolve_scale
    from harness.runner import record_checks
    from harness.specs import resolve_run
    from harness.train import resolve_device

    if threads is not None and threads < 1:
        raise UserError("--threads", threads, "Use 1 or more.")
    dev = resolve_device(device)
    run_model, stands_for = resolve_scale(model, scale, cuda=dev.type == "cuda")
    spec = resolve_run(model=run_model, recipe=recipe, data=data_spec, overrides=overrides, seed=seed, device=str(dev),
                       stands_for=stands_for)
    if stands_for is not None:
        resolve_run(model=model, recipe=recipe, data=data_spec, overrides=overrides)  # the named model must fit too
    if threads:
        torch.set_num_threads(threads)
    log(f"doctor: {spec.label()} with recipe {spec.recipe.name} on {data_spec.name} {data_spec.image_size}px, {dev}")
    report = run_doctor(model=run_model, recipe=spec.recipe, data_spec=data_spec, device=dev, stands_for=stands_for,
                        seed=seed, overfit_steps=overfit_steps, lr_steps=lr_steps, log=log)
    out.mkdir(parents=True, exist_ok=True)
    html = out / f"lr_range_{run_model}_{spec.recipe.name}.html"
    lr_range_figure(report.lr_curve, f"lr range test: {spec.label()}, recipe {spec.recipe.name}").write_html(
        html, include_plotlyjs="directory")  # plotly.min.js beside it: opens offline
    exp = record_checks(report, db=db, spec_yaml=yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False), html=html)
    return Checkup(report, spec, exp, html)
