"""Training throughput: harness's path against a plain timm-style loop, in one process.

    uv run python benchmarks/throughput.py                 # 4 models x {224, 32} px, bf16, eager
    uv run python benchmarks/throughput.py --compile       # the same, harness path torch.compile'd
    uv run python benchmarks/throughput.py --tiny          # CPU smoke run: the CPU stand-ins at 32 px

Both sides run each model family's recipe in its *published* form at the benchmark's batch
(`like_for_like`): the fitted form of a short run drops RandAugment and EMA and would hide their
cost. Four timed paths per (model, image size), on the same device, in the same process,
interleaved (the order rotates every repeat), each repeat timed with CUDA events on the device
doing the work after a warm-up, median reported:

- reference: the loop of timm's train.py on a uint8 batch already on the device (normalised there,
  as timm's PrefetchLoader does): timm Mixup/CutMix, the recipe's timm loss, bf16 autocast,
  backward, timm grad clipping, timm's optimizer factory building the implementation harness uses
  (torch's fused Adam/AdamW on CUDA: like for like), the scheduler's
  step_update and the EMA update when the recipe has one. No per-image augmentation; it skips
  timm's per-step loss.item(), so it is the stronger baseline.
- harness: `harness.train.train_epoch` over `harness.data`'s device-resident uint8 set with the
  same recipe and the same per-image augmentation (none): the same work, done harness's way.
- reference_full: the reference fed by timm's own train loader (`timm.data.create_loader`): random
  resized crop, flip and RandAugment per image in DataLoader workers (PIL), random erasing and
  normalisation on the device (PrefetchLoader) -- timm train.py's input pipeline.
- harness_full: the published recipe as `harness train --recipe NAME@published` runs it, with its
  crop, flip, RandAugment and random erasing.

MFU = training FLOPs / peak, training FLOPs = 3 x forward FLOPs (forward counted by torch's
FlopCounterMode at 2 FLOPs per multiply-accumulate; "6 x forward MACs" is the same number). The
peak is the GPU's datasheet figure (dense bf16, `_common.PEAK_TFLOPS`); a measured matmul peak
(`--measured-peak-tflops`) adds an MFU column against it, beside, never instead.
Results go to benchmarks/results/throughput-<device>[-compile][-tiny].{md,csv}, rewritten after each
model (a run stopped part-way keeps the rows it finished). The synthetic sets are made once per
image size and shared by every model and path. `--seconds S` stops starting models once the next
would not finish in S seconds (its row then says "no time left").
The packing and loader benchmarks are benchmarks/packing.py and benchmarks/loader.py.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, as a script or from the tests
import _common as common  # noqa: E402

common.importable_harness()

from harness import data as data_mod  # noqa: E402
from harness import models  # noqa: E402
from harness.models import ALL, CPU_VARIANT, build_model, forward_gflops, get_model_entry  # noqa: E402
from harness.process import resolve_device  # noqa: E402
from harness.recipes import Budget, Recipe, family_recipe_name, resolve_recipe, with_overrides  # noqa: E402
from harness.specs import resolve_run  # noqa: E402
from harness.train import build_training, train_epoch  # noqa: E402

# The targets, checked on every table (they are stated for one H100).
TARGET_RATIO = 0.95  # harness / reference, every model (issue 3: overhead <= 5%)
TARGET_COMPILE_RATIO = 1.2  # harness --compile / reference (eager), vit and swin families
TARGET_VIT_MFU = 35.0  # %, vit_base at 224 px
# Issue 23 item 2: augmentation must keep up. Read as the same 5% bound, against timm's own pipeline.
TARGET_FULL_RATIO = 0.95  # harness_full / reference_full, every model
# timm train.py's default DataLoader workers (`-j/--workers`, default 4): reference_full's loader.
TIMM_TRAIN_WORKERS = 4

COLUMNS = ["device", "model", "runs_as", "image_size", "batch_size", "steps", "repeats", "compile", "amp",
           "recipe", "augment", "ema", "workers", "fwd_gflops", "reference_img_s", "harness_img_s",
           "reference_full_img_s", "harness_full_img_s", "ratio", "ratio_full", "augment_cost_pct",
           "reference_mfu_pct", "harness_mfu_pct", "harness_mfu_of_measured_pct", "spread_pct", "model_s", "error"]
SHOWN = ["model", "runs_as", "image_size", "recipe", "augment", "ema", "fwd_gflops", "reference_img_s", "harness_img_s",
         "reference_full_img_s", "harness_full_img_s", "ratio", "ratio_full", "augment_cost_pct",
         "reference_mfu_pct", "harness_mfu_pct", "harness_mfu_of_measured_pct", "spread_pct", "error"]
LEGEND = [
    "- every path runs the model family's recipe in its **published** form at this batch (`NAME@published`: "
    "lr by the source's batch rule, the source's mixup/cutmix, loss, clipping, drop path, EMA); EMA is on both "
    "sides or neither (`ema` column)",
    "- `reference` = timm train.py's loop on a device batch, no per-image augmentation; `harness` = "
    "`train_epoch` with the same recipe and no per-image augmentation: the same work; `ratio` = harness / reference",
    "- `reference_full` = the reference fed by timm's train loader (`create_loader`: random resized crop, flip, "
    "RandAugment in `workers` DataLoader workers, erasing on the device); `harness_full` = the recipe as "
    "`harness train` runs it (crop, flip, RandAugment, erasing); `ratio_full` = harness_full / reference_full",
    "- `augment_cost_pct` = how much slower harness trains with the recipe's per-image augmentation "
    "(1 - harness_full / harness)",
    "- `spread_pct` = the widest (max - min) / median of any path's timed repeats: how far the median can be "
    "trusted; a ratio's 5% bound needs it well under 5",
]
NO_TIME = "no time left"

# Benchmarks that were modes of this script: flag -> the script that measures it now.
MOVED = {"--packing": "packing.py", "--loader": "loader.py"}

# What per-image augmentation a recipe has; off on the plain paths (`reference`, `harness`).
AUGMENT_FIELDS = ("crop", "hflip", "randaugment", "random_erasing")
AUGMENT_OFF: dict[str, Any] = {"crop": "none", "hflip": 0.0, "randaugment": None, "random_erasing": 0.0}


# --- what each path runs ------------------------------------------------------------------------------

@dataclass(frozen=True)
class PathRecipes:
    """The recipe each timed path runs. `reference` and `harness` are the same object, and so are
    `reference_full` and `harness_full` (None when the recipe has no per-image augmentation)."""

    reference: Recipe
    harness: Recipe
    reference_full: Recipe | None
    harness_full: Recipe | None


def has_augment(recipe: Recipe) -> bool:
    return any(getattr(recipe, k) != AUGMENT_OFF[k] for k in AUGMENT_FIELDS)


def like_for_like(model: str, batch_size: int) -> PathRecipes:
    """The like-for-like configuration: the model family's recipe in its published form at the
    benchmark's batch, the same on both sides of each ratio.

    Not the fitted form: fitting to the benchmark's few updates rounds RandAugment's magnitude to 0
    (off), erasing to p ~ 0.005 and turns EfficientNet's EMA off, so harness_full would equal harness
    and the augmentation's cost would never be measured (issue 23 item 4). The plain pair drops only
    the per-image augmentation (timm does it in loader workers, outside its step); everything else
    (mixup, loss, clipping, drop path, EMA) is in both."""
    family = get_model_entry(model, "--models").family
    # Budget: only its batch matters for the published form (resolve_recipe sets it, fits nothing).
    full = resolve_recipe(f"{family_recipe_name(family)}@published", family=family, pretrained=False,
                          budget=Budget(epochs=1, train_images=batch_size, batch_size=batch_size), field="--models")
    plain = with_overrides(full, AUGMENT_OFF)
    aug = full if has_augment(full) else None
    return PathRecipes(reference=plain, harness=plain, reference_full=aug, harness_full=aug)


def augment_label(recipe: Recipe | None) -> str:
    """'rrc + flip + rand-m9-mstd0.5-inc1 + erasing 0.25': what the _full paths add, for the table."""
    if recipe is None:
        return "none"
    parts = [{"rrc": "rrc", "pad": "pad-crop", "none": ""}[recipe.crop], "flip" if recipe.hflip else "",
             recipe.randaugment or "", f"erasing {recipe.random_erasing:g}" if recipe.random_erasing else ""]
    return " + ".join(p for p in parts if p) or "none"


# --- the loops -------------------------------------------------------------------------------------

@dataclass
class Reference:
    """timm train.py's training objects for one recipe, and its step (x normalised on the device, y, update)."""

    model: torch.nn.Module
    optimizer: Any
    mixup: Any
    loss_fn: torch.nn.Module
    ema: Any
    step: Callable[[torch.Tensor, torch.Tensor, int], None]


def build_reference(model_name: str, recipe: Recipe, *, image_size: int, num_classes: int, device: torch.device,
                    steps: int) -> Reference:
    """timm train.py's model, optimizer, scheduler, mixup, loss and EMA for `recipe`, built with timm alone."""
    from timm.data import Mixup
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, dispatch_clip_grad

    cuda = device.type == "cuda"
    cnn = get_model_entry(model_name).family in ("resnet", "efficientnet")
    model = build_model(model_name, num_classes=num_classes, image_size=image_size,
                        drop_path_rate=recipe.drop_path_rate, drop_rate=recipe.drop_rate).to(device)
    channels_last = cuda and cnn  # timm train.py --channels-last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt_kwargs = {"eps": recipe.opt_eps} if recipe.opt_eps is not None else {}
    if cuda and recipe.optimizer in ("adam", "adamw"):
        # The implementation harness builds (recipes.build_optimizer): torch's fused Adam/AdamW, one kernel for
        # the update. timm passes it through to torch; its own default (foreach) would time another optimizer.
        opt_kwargs["fused"] = True
    optimizer = create_optimizer_v2(model, opt=recipe.optimizer, lr=recipe.scaled_lr(), weight_decay=recipe.weight_decay,
                                    momentum=recipe.momentum, filter_bias_and_bn=recipe.no_decay_norm_bias, **opt_kwargs)
    sched_kwargs = ({"decay_epochs": recipe.decay_epochs or 1.0, "decay_rate": recipe.decay_rate}
                    if recipe.schedule == "step" else {"min_lr": recipe.min_lr})
    scheduler, _ = create_scheduler_v2(optimizer, sched=recipe.schedule, num_epochs=100, warmup_epochs=recipe.warmup_epochs,
                                       warmup_lr=recipe.warmup_lr, step_on_epochs=False, updates_per_epoch=steps,
                                       **sched_kwargs)
    mixup = None
    if recipe.uses_mixup():
        mixup = Mixup(mixup_alpha=recipe.mixup_alpha, cutmix_alpha=recipe.cutmix_alpha, prob=recipe.mixup_prob,
                      label_smoothing=recipe.label_smoothing, num_classes=num_classes)
    if recipe.loss == "bce":
        loss_fn: torch.nn.Module = BinaryCrossEntropy(smoothing=0.0 if mixup else recipe.label_smoothing)
    elif mixup is not None:
        loss_fn = SoftTargetCrossEntropy()
    elif recipe.label_smoothing > 0:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=recipe.label_smoothing)
    else:
        loss_fn = torch.nn.CrossEntropyLoss()
    ema = ModelEmaV3(model, decay=recipe.ema_decay) if recipe.ema_decay else None

    def step(x: torch.Tensor, labels: torch.Tensor, update: int) -> None:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = labels
        if mixup is not None:
            x, target = mixup(x, labels)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
            output = model(x)
            loss = loss_fn(output, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if recipe.grad_clip > 0:
            dispatch_clip_grad(model.parameters(), value=recipe.grad_clip, mode="norm")
        optimizer.step()
        scheduler.step_update(num_updates=update)
        if ema is not None:
            ema.update(model, step=update)

    return Reference(model=model, optimizer=optimizer, mixup=mixup, loss_fn=loss_fn, ema=ema, step=step)


def reference_loop(model_name: str, recipe: Recipe, *, image_size: int, batch_size: int, num_classes: int,
                   device: torch.device, steps: int) -> Callable[[], None]:
    """timm train.py's inner loop on a fixed device batch; returns a function running `steps` updates."""
    ref = build_reference(model_name, recipe, image_size=image_size, num_classes=num_classes, device=device, steps=steps)
    # timm's PrefetchLoader hands over uint8 on the device and normalises there.
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    mean = torch.tensor(data_mod.IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(data_mod.IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    state = {"updates": 0}

    def run() -> None:
        ref.model.train()
        for _ in range(steps):
            state["updates"] += 1
            ref.step(images.float().sub_(mean).div_(std), labels, state["updates"])

    return run


class HostImages(torch.utils.data.Dataset):
    """In-memory RGB images as PIL, for timm's train transforms (`create_loader` sets `.transform`)."""

    def __init__(self, images: Any, labels: Any) -> None:
        self.images, self.labels, self.transform = images, labels, None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return (self.transform(img) if self.transform is not None else img), int(self.labels[i])


def _posterize_zero_bits_ok(img: Any, bits_to_keep: int, **kw: Any) -> Any:
    """timm's posterize, also at 0 bits (Pillow >= 12 refuses them; timm's 'inc1' with magnitude noise
    asks for them): the black image Pillow < 12 gave. The same fix harness.data applies to its own."""
    from PIL import Image
    from timm.data.auto_augment import posterize

    return Image.new(img.mode, img.size, 0) if bits_to_keep <= 0 else posterize(img, bits_to_keep, **kw)


def timm_train_loader(recipe: Recipe, *, image_size: int, batch_size: int, steps: int, num_classes: int,
                      device: torch.device, workers: int) -> Any:
    """timm train.py's input pipeline for `recipe` over batch_size x steps in-memory images: timm's train
    transform (random resized crop, flip, RandAugment) in `workers` DataLoader workers, fast_collate to
    uint8, then PrefetchLoader (copy on a side stream, normalise, random erasing on the device)."""
    from timm.data import create_loader
    from timm.data.auto_augment import RandAugment

    ds = HostImages(*host_images(batch_size * steps, image_size, num_classes))
    # A recipe without a random resized crop: a full-image "crop" at the same size (no resampling).
    scale = (recipe.crop_scale, 1.0) if recipe.crop == "rrc" else (1.0, 1.0)
    ratio = None if recipe.crop == "rrc" else (1.0, 1.0)
    loader = create_loader(ds, input_size=(3, image_size, image_size), batch_size=batch_size, is_training=True,
                           scale=scale, ratio=ratio, hflip=recipe.hflip, color_jitter=None,
                           auto_augment=recipe.randaugment, re_prob=recipe.random_erasing, re_mode="pixel",
                           mean=data_mod.IMAGENET_MEAN, std=data_mod.IMAGENET_STD, num_workers=workers,
                           pin_memory=device.type == "cuda", device=device, use_prefetcher=True,
                           persistent_workers=workers > 0)
    for t in getattr(ds.transform, "transforms", []):
        if isinstance(t, RandAugment):
            for op in t.ops:
                if op.aug_fn.__name__ == "posterize":
                    op.aug_fn = _posterize_zero_bits_ok
    return loader


def reference_full_loop(model_name: str, recipe: Recipe, *, image_size: int, batch_size: int, num_classes: int,
                        device: torch.device, steps: int, workers: int) -> Callable[[], None]:
    """The reference step fed by timm's train loader: one pass over it (= `steps` updates) per call."""
    ref = build_reference(model_name, recipe, image_size=image_size, num_classes=num_classes, device=device, steps=steps)
    loader = timm_train_loader(recipe, image_size=image_size, batch_size=batch_size, steps=steps,
                               num_classes=num_classes, device=device, workers=workers)
    state = {"updates": 0}

    def run() -> None:
        ref.model.train()
        for x, y in loader:
            state["updates"] += 1
            ref.step(x, y, state["updates"])

    return run


_DATASETS: dict[str, Any] = {}  # DataSpec + device -> the loaded set: made once per image size, not per path


def shared_dataset(spec: data_mod.DataSpec, device: torch.device) -> Any:
    """harness.data's set for `spec` on `device`, generated on the first call only: every model and both
    harness paths at one image size train on the same images (training reads the set, never writes it),
    and generating a 224 px synthetic set costs tens of CPU-seconds."""
    key = f"{spec.model_dump_json()}@{device}"
    if key not in _DATASETS:
        _DATASETS[key] = data_mod.load(spec, device)
    return _DATASETS[key]


_HOST_IMAGES: dict[tuple[int, int, int], tuple[Any, Any]] = {}  # (n, size, classes) -> timm's in-memory images


def host_images(n: int, image_size: int, num_classes: int) -> tuple[Any, Any]:
    """The uint8 HWC images and labels timm's loader reads, made once per (n, size, classes)."""
    import numpy as np

    key = (n, image_size, num_classes)
    if key not in _HOST_IMAGES:
        rng = np.random.default_rng(0)
        _HOST_IMAGES[key] = (rng.integers(0, 256, (n, image_size, image_size, 3), dtype=np.uint8),
                             rng.integers(0, num_classes, n))
    return _HOST_IMAGES[key]


def harness_loop(model_name: str, recipe: Recipe, *, image_size: int, batch_size: int, num_classes: int,
                 device: torch.device, steps: int, epochs: int, compile: bool) -> tuple[Callable[[], None], Any]:
    """harness.train's epoch over harness.data's device-resident set of batch_size x steps images, with
    exactly `recipe` (the spec is resolved as `NAME@published`, then given the benchmark's recipe)."""
    # Half a batch spare: the held-out split's rounding must not cost a step (or, at a tiny size, shrink
    # the batch to an odd one that timm's Mixup refuses); train_epoch drops the incomplete last batch.
    data = data_mod.DataSpec(name="synthetic", image_size=image_size, num_classes=num_classes,
                             train_size=batch_size * steps + batch_size // 2, val_fraction=0.02)
    spec = resolve_run(model=model_name, recipe=f"{recipe.name}@published", data=data,
                       overrides={"batch_size": batch_size}, epochs=epochs, device=str(device), compile=compile)
    spec = spec.model_copy(update={"recipe": recipe})
    ds = shared_dataset(spec.data, device)
    t = build_training(spec, ds, device)
    state = {"epoch": 0, "global_step": 0}

    def run() -> None:
        state["epoch"] += 1
        g = torch.Generator(device=device).manual_seed(state["epoch"])
        _, state["global_step"] = train_epoch(t, ds.train, g, state["global_step"])

    return run, t


def bench_one(model_name: str, image_size: int, args: argparse.Namespace, device: torch.device,
              dev_name: str, peak: float | None, log: Callable[[str], None]) -> dict[str, Any]:
    import time

    t_start = time.perf_counter()
    entry = get_model_entry(model_name)
    paths_recipe = like_for_like(model_name, args.batch_size)
    full = None if args.no_full else paths_recipe.harness_full
    row: dict[str, Any] = {"device": dev_name, "model": models.stands_for(model_name) or model_name, "runs_as": model_name,
                           "image_size": image_size, "batch_size": args.batch_size, "steps": args.steps,
                           "repeats": args.repeats, "compile": args.compile, "amp": "bf16" if device.type == "cuda" else "off",
                           "recipe": paths_recipe.harness.label(), "augment": augment_label(full),
                           "ema": f"{paths_recipe.harness.ema_decay:g} both" if paths_recipe.harness.ema_decay else "off both",
                           "workers": args.workers if full is not None else "", "error": ""}
    try:
        entry.size_kwargs(image_size)
        epochs = args.warmup + args.repeats + 1
        common_kw = {"image_size": image_size, "batch_size": args.batch_size, "num_classes": args.num_classes,
                     "device": device, "steps": args.steps}
        paths: dict[str, Callable[[], None]] = {"reference": reference_loop(model_name, paths_recipe.reference, **common_kw)}
        paths["harness"], t = harness_loop(model_name, paths_recipe.harness, epochs=epochs, compile=args.compile, **common_kw)
        if full is not None:
            paths["reference_full"] = reference_full_loop(model_name, paths_recipe.reference_full, workers=args.workers,
                                                          **common_kw)
            paths["harness_full"], _ = harness_loop(model_name, full, epochs=epochs, compile=args.compile, **common_kw)
        row["fwd_gflops"] = round(forward_gflops(t.model, image_size), 3)
        for _ in range(args.warmup):  # compiles, cuDNN autotuning, allocator growth, loader workers' start
            for run in paths.values():
                common.time_s(run, device)
        times: dict[str, list[float]] = {k: [] for k in paths}
        names = list(paths)
        for r in range(args.repeats):  # interleaved, rotating order: drift and heat hit every path alike
            for k in names[r % len(names):] + names[:r % len(names)]:
                times[k].append(common.time_s(paths[k], device))
        images = args.batch_size * args.steps
        for k, ts in times.items():
            row[f"{k}_img_s"] = round(images / statistics.median(ts), 2)
        row["spread_pct"] = round(max(100 * (max(ts) - min(ts)) / statistics.median(ts) for ts in times.values()), 1)
        row["ratio"] = round(row["harness_img_s"] / row["reference_img_s"], 3)
        if full is not None:
            row["ratio_full"] = round(row["harness_full_img_s"] / row["reference_full_img_s"], 3)
            row["augment_cost_pct"] = round(100 * (1 - row["harness_full_img_s"] / row["harness_img_s"]), 1)
        if peak:
            for k in ("reference", "harness"):
                row[f"{k}_mfu_pct"] = round(common.mfu_pct(row["fwd_gflops"], row[f"{k}_img_s"], peak), 2)
        if args.measured_peak_tflops:
            row["harness_mfu_of_measured_pct"] = round(
                common.mfu_pct(row["fwd_gflops"], row["harness_img_s"], args.measured_peak_tflops), 2)
    except torch.cuda.OutOfMemoryError as e:  # failures become rows (timm benchmark.py style)
        row["error"] = f"OOM: {str(e).splitlines()[0][:120]}"
    except Exception as e:  # noqa: BLE001 - one model failing must not lose the others' numbers
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    row["model_s"] = round(time.perf_counter() - t_start, 1)
    log(f"  {row['runs_as']:>16} {image_size:>4}px  ref {row.get('reference_img_s', '-')}  harness {row.get('harness_img_s', '-')}"
        f"  ref_full {row.get('reference_full_img_s', '-')}  full {row.get('harness_full_img_s', '-')}"
        f"  ratio {row.get('ratio', '-')}  {row['error']}")
    return row


# --- reporting ------------------------------------------------------------------------------------

def targets(rows: list[dict[str, Any]], compile: bool) -> list[tuple[str, str, str]]:
    """(what, measured, met|missed) for each of the issue's targets the table can answer."""
    out = []
    for r in rows:
        runs = r["runs_as"] if r["runs_as"] == r["model"] else f"{r['runs_as']} (stand-in for {r['model']})"
        name = f"{runs} {r['image_size']}px"
        if r.get("error"):
            out.append((name, NO_TIME if r["error"].startswith(NO_TIME) else "error",
                        "not measured" if r["error"].startswith(NO_TIME) else "missed"))
            continue
        out.append((f"{name}: harness/reference >= {TARGET_RATIO}", f"{r['ratio']:.3f}",
                    "met" if r["ratio"] >= TARGET_RATIO else "missed"))
        if r.get("ratio_full") not in (None, ""):
            out.append((f"{name}: harness_full/reference_full >= {TARGET_FULL_RATIO}", f"{r['ratio_full']:.3f}",
                        "met" if r["ratio_full"] >= TARGET_FULL_RATIO else "missed"))
        family = get_model_entry(r["runs_as"]).family
        if compile and family in ("vit", "swin"):
            out.append((f"{name}: --compile harness/reference >= {TARGET_COMPILE_RATIO}", f"{r['ratio']:.3f}",
                        "met" if r["ratio"] >= TARGET_COMPILE_RATIO else "missed"))
        if r["runs_as"] == "vit_base" and r["image_size"] == 224:
            mfu = r.get("harness_mfu_pct")
            out.append((f"{name}: MFU >= {TARGET_VIT_MFU}%", "n/a (no peak known)" if mfu in (None, "") else f"{mfu:.1f}%",
                        "n/a" if mfu in (None, "") else ("met" if mfu >= TARGET_VIT_MFU else "missed")))
    return out


def write_results(rows: list[dict[str, Any]], args: argparse.Namespace, dev_name: str, peak: float | None,
                  out_dir: Path, stem: str, on_cpu: bool) -> tuple[Path, Path, str]:
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    peak_source = ", the datasheet's" if peak and not args.peak_tflops else ", given"
    common.write_csv(csv_path, rows, COLUMNS)
    tgt = targets(rows, args.compile)
    text = "\n".join([
        f"# Training throughput on {dev_name}",
        "",
        ("CPU run: these numbers only show the benchmark works; the targets are for one H100 and were not measured here."
         if on_cpu else ""),
        "",
        f"- command: `{common.command_line('throughput.py', args.argv)}`",
        f"- date: {common.stamp()}; torch {torch.__version__}; timm {__import__('timm').__version__}",
        f"- batch {args.batch_size}, {args.steps} steps per repeat, median of {args.repeats} repeats after "
        f"{args.warmup} warm-up, paths interleaved; AMP {'bf16' if not on_cpu else 'off (CPU)'}; "
        f"harness {'torch.compile' if args.compile else 'eager'}, reference eager; timing on {dev_name}",
        f"- MFU = 3 x forward FLOPs x img/s / peak ({peak:g} TFLOP/s bf16 dense{peak_source}"
        + (f"; measured matmul peak {args.measured_peak_tflops:g} TFLOP/s ({100 * args.measured_peak_tflops / peak:.0f}% "
           "of it): `harness_mfu_of_measured_pct`" if args.measured_peak_tflops else "") + ")" if peak else
        "- MFU: no peak known for this device (pass --peak-tflops)",
        *LEGEND,
        "",
        common.md_table(rows, SHOWN),
        "",
        "## Targets (one H100)" + (" — informational only on this device" if on_cpu else ""),
        "",
        common.md_table([{"target": a, "measured": b, "result": c} for a, b, c in tgt], ["target", "measured", "result"]),
        "",
    ])
    md_path.write_text(text)
    return md_path, csv_path, text


# --- main ------------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Targets (one H100): harness >= 0.95 x reference for every model; with --compile "
                                       ">= 1.2 x for vit_base and swin_tiny; vit_base 224 px >= 35% MFU. "
                                       "Other benchmarks: benchmarks/packing.py, benchmarks/loader.py.")
    p.add_argument("--models", default=",".join(ALL), help="comma-separated registry names [default: the 4 full models]")
    p.add_argument("--image-sizes", default="224,32", help="comma-separated pixels per side [default: 224,32]")
    p.add_argument("--batch-size", type=int, default=None, help="images per step [default: 128; --tiny: 16]")
    p.add_argument("--steps", type=int, default=None, help="updates per timed repeat [default: 20; --tiny: 3]")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per path, median reported [default: 5; --tiny: 3]")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats per path first (compiles, autotunes)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier width [default: 1000; --tiny: 10]")
    p.add_argument("--compile", action="store_true", help="torch.compile harness's path (reference stays eager)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device peak for MFU [default: the datasheet's dense bf16 figure, looked up by GPU name]")
    p.add_argument("--measured-peak-tflops", type=float, default=None,
                   help="a measured matmul peak: adds harness_mfu_of_measured_pct beside the datasheet MFU")
    p.add_argument("--seconds", type=float, default=None,
                   help="time for the whole run: a model is not started when the slowest so far would not fit")
    p.add_argument("--tiny", action="store_true",
                   help="CPU smoke run: the CPU stand-ins (resnet18, efficientnet_b0, vit_tiny, swin_nano) at 32 px")
    p.add_argument("--no-full", action="store_true",
                   help="skip the _full paths (per-image augmentation: timm's loader and harness's)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"reference_full: timm loader workers [default: timm train.py's {TIMM_TRAIN_WORKERS}, "
                        "at most the cores; --tiny: 1]")
    p.add_argument("--out", type=Path, default=common.RESULTS, help="folder for the table [default: benchmarks/results]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    for flag, script in MOVED.items():  # the flags of the one-file benchmark this was until 2026-11-30
        if any(a == flag or a.startswith(f"{flag}-") for a in argv):
            p.error(f"{flag} is its own script now: uv run python benchmarks/{script} (see its --help)")
    args = p.parse_args(argv)
    args.argv = argv
    tiny = args.tiny
    args.batch_size = args.batch_size or (16 if tiny else 128)
    args.steps = args.steps or (3 if tiny else 20)
    args.repeats = args.repeats or (3 if tiny else 5)
    args.num_classes = args.num_classes or (10 if tiny else 1000)
    if args.workers is None:
        args.workers = 1 if tiny else min(TIMM_TRAIN_WORKERS, os.cpu_count() or 1)
    if tiny:
        if args.device == "auto":
            args.device = "cpu"
        if "--image-sizes" not in " ".join(argv):
            args.image_sizes = "32"
    return args


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = common.working_device(resolve_device(args.device))
    dev_name = common.device_name(device)
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.tiny:
        names = [CPU_VARIANT.get(m, m) for m in names]
    for m in names:
        get_model_entry(m, "--models")
    sizes = [int(s) for s in args.image_sizes.split(",")]
    peak = args.peak_tflops or (common.peak_tflops(dev_name) if device.type == "cuda" else None)
    log(f"throughput on {dev_name}: {', '.join(names)} at {sizes} px, batch {args.batch_size}, "
        f"{args.steps} steps x {args.repeats} repeats, published recipes{', harness compiled' if args.compile else ''}")
    stem = (f"throughput-{common.device_slug(device, dev_name)}" + ("-compile" if args.compile else "")
            + ("-tiny" if args.tiny else ""))
    import time

    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for s in sizes:
        for m in names:
            longest = max((r["model_s"] for r in rows if r.get("model_s")), default=0.0)
            if args.seconds is not None and time.perf_counter() - t0 + longest > args.seconds:
                rows.append({"device": dev_name, "model": models.stands_for(m) or m, "runs_as": m, "image_size": s,
                             "error": f"{NO_TIME} ({args.seconds:.0f} s given, the slowest model so far took {longest:.0f} s)"})
                log(f"  {m:>16} {s:>4}px  {rows[-1]['error']}")
            else:
                rows.append(bench_one(m, s, args, device, dev_name, peak, log))
            # After each model: a run stopped part-way (a timeout) keeps every row it finished.
            md_path, csv_path, text = write_results(rows, args, dev_name, peak, args.out, stem, on_cpu=device.type != "cuda")
    log("")
    log(text)
    log(f"results: {md_path}, {csv_path}")
    return 1 if all(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
