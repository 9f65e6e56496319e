"""The doctor's probes of a model and its data (the ViT tuning checklist's "must-do checks before
training"): the shapes through the stages, the first step's gradients, and the 32-sample overfit test.
Each returns `CheckResult`s (PASS / WARN / FAIL, a one-line detail, a one-line fix, the numbers behind
it in `data`), and takes plain objects (a `torch.nn.Module`, a data split with `.batches()`), so tests
can hand it a model with a frozen layer or a pipeline that shuffles labels and see the fault caught.

The probes are a few optimizer steps each (gradients: up to 3, overfit: up to 200). They are
deliberately not `train.fit`: they need per-step control (a stop at 100% accuracy, per-parameter
gradients) that the epoch loop does not give.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
TRANSFORMERS = ("vit", "swin")
FAMILIES = ("resnet", "efficientnet", "vit", "swin")

# --- thresholds, each with its source -----------------------------------------------------------
# "The checklist" = the ViT tuning checklist's "must-do checks before training"; the lint's source,
# the debugging checklist of the ViT/Swin failure write-up, is in lint.py. Harness choices say why.

# gradients: the checklist's sane range (0.1 ~ 10) for the global grad norm of the first step.
GRAD_NORM_RANGE = (0.1, 10.0)
# Harness choice: a zero gradient on step 1 can be by design (timm zero-inits each ResNet block's
# last norm), so zero gradients are re-checked after this many plain SGD steps at this lr.
GRAD_RECHECK_STEPS = 2
GRAD_PROBE_LR = 1e-2

# overfit test: the checklist, "100% accuracy on 32 samples ... train 150-200 steps".
OVERFIT_SAMPLES = 32
OVERFIT_STEPS = 200
OVERFIT_TARGET_ACC = 1.0
# Overfit-test optimizer: AdamW with weight decay 0 for every family, so a FAIL points at the
# model or the data, not at an optimizer the recipe happened to pick (LAMB, RMSprop...). The lr
# is per family. The checklist says 5e-3 for its 4-layer, 128-wide ViT; a 12-layer ViT or Swin with
# no warmup is not stable there (the loss spikes before it memorises), so transformers use 1e-3
# (the top of the checklist's "medium dataset" range). BatchNorm CNNs take the checklist's 5e-3 as is.
OVERFIT_LR = {"vit": 1e-3, "swin": 1e-3, "resnet": 5e-3, "efficientnet": 5e-3}
OVERFIT_LR_OTHER = 1e-3  # a plugin's family: the transformers' (the more cautious) lr


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
    """The ViT tuning checklist's gradient check on one batch (normalised images, hard labels).

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
    """The ViT tuning checklist's overfit test: train on one small split (32 images) with AdamW,
    weight decay 0, no augmentation, until the training batch is 100% right or `steps` run out.

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
