"""Training throughput: harness's path against a plain timm-style loop, in one process.

    uv run python benchmarks/throughput.py                 # 4 models x {224, 32} px, bf16, eager
    uv run python benchmarks/throughput.py --compile       # the same, harness path torch.compile'd
    uv run python benchmarks/throughput.py --packing       # 4 small trials: one after another vs sharing one GPU
    uv run python benchmarks/throughput.py --loader        # JPEG decoding (imagefolder, 224 px) vs training speed
    uv run python benchmarks/throughput.py --tiny          # CPU smoke run: the CPU stand-ins at 32 px

Three timed paths per (model, image size), on the same device, in the same process, interleaved
(the order rotates every repeat), each repeat timed with CUDA events after a warm-up, median
reported:

- reference: the loop of timm's train.py without its DataLoader: a uint8 batch already on the
  device, normalised there (timm's PrefetchLoader), timm Mixup, the recipe's timm loss, bf16
  autocast, loss.backward(), timm grad clipping, the timm optimizer (its default, not fused),
  scheduler.step_update and EMA update when the recipe has them. It skips timm's per-step
  loss.item(), so it is the stronger baseline.
- harness: `harness.train.train_epoch` over `harness.data`'s GPU-resident uint8 set, with the
  model's tuned recipe minus RandAugment and random erasing (timm runs those in loader workers,
  which the reference does not time): the same work as the reference, done harness's way.
- harness_full: the tuned recipe as `harness train` runs it, RandAugment and erasing on the device.

MFU = training FLOPs / peak, training FLOPs = 3 x forward FLOPs (forward counted by torch's
FlopCounterMode at 2 FLOPs per multiply-accumulate; "6 x forward MACs" is the same number).
Results go to benchmarks/results/throughput-<device>[-compile][-tiny].{md,csv}.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere: harness is importable from the checkout
    sys.path.insert(0, str(REPO))

from harness import data as data_mod  # noqa: E402
from harness import models  # noqa: E402
from harness.models import ALL, CPU_VARIANT, build_model, forward_gflops, get_model_entry  # noqa: E402
from harness.recipes import get_recipe, tuned_recipe_name  # noqa: E402
from harness.specs import resolve_run  # noqa: E402
from harness.train import build_training, resolve_device, train_epoch  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"

# Dense bf16 tensor-core peaks (TFLOPS) as NVIDIA's datasheets give them; first match wins, so
# the more specific names come first. Anything else: pass --peak-tflops.
PEAK_TFLOPS = [
    ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.4), ("GH200", 989.4), ("H200", 989.4),
    ("B200", 2250.0), ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10G", 70.0), ("A10", 125.0),
    ("RTX 4090", 165.2), ("RTX 3090", 71.0),
]

# The targets, checked on every table (they are stated for one H100).
TARGET_RATIO = 0.95  # harness / reference, every model
TARGET_COMPILE_RATIO = 1.2  # harness --compile / reference (eager), vit and swin families
TARGET_VIT_MFU = 35.0  # %, vit_base at 224 px
# timm's published RTX 3090 AMP training figures (results/benchmark-train-amp-*-rtx3090.csv), img/s.
TIMM_RTX3090 = {"resnet50": 1218.0, "vit_base": 393.0, "swin_tiny": 649.0}

COLUMNS = ["device", "model", "runs_as", "image_size", "batch_size", "steps", "repeats", "compile", "amp",
           "recipe", "fwd_gflops", "reference_img_s", "harness_img_s", "harness_full_img_s", "ratio",
           "ratio_full", "reference_mfu_pct", "harness_mfu_pct", "error"]


# --- device helpers -------------------------------------------------------------------------------

def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    return f"CPU {name} ({torch.get_num_threads()} threads)"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_slug(device: torch.device, dev_name: str) -> str:
    """File-name form of the device: 'nvidia-h100-80gb-hbm3', or 'cpu'."""
    return slug(dev_name) if device.type == "cuda" else "cpu"


def peak_tflops(name: str) -> float | None:
    for key, tflops in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return tflops
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_s(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds for fn() to finish on the device: CUDA events on a GPU, a wall clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --- the two loops ----------------------------------------------------------------------------------

def reference_loop(model_name: str, recipe: Any, *, image_size: int, batch_size: int, num_classes: int,
                   device: torch.device, steps: int) -> Callable[[], None]:
    """timm train.py's inner loop on a fixed device batch; returns a function running `steps` updates."""
    from timm.data import Mixup
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from timm.utils import ModelEmaV3, dispatch_clip_grad

    cuda = device.type == "cuda"
    cnn = get_model_entry(model_name).family in ("resnet", "efficientnet")
    model = build_model(model_name, num_classes=num_classes, image_size=image_size,
                        drop_path_rate=recipe.drop_path_rate, drop_rate=recipe.drop_rate).to(device)
    if cuda and cnn:  # timm train.py --channels-last
        model = model.to(memory_format=torch.channels_last)
    opt_kwargs = {"eps": recipe.opt_eps} if recipe.opt_eps is not None else {}
    optimizer = create_optimizer_v2(model, opt=recipe.optimizer, lr=recipe.scaled_lr(), weight_decay=recipe.weight_decay,
                                    momentum=recipe.momentum, filter_bias_and_bn=recipe.no_decay_norm_bias, **opt_kwargs)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=100, warmup_epochs=recipe.warmup_epochs,
                                       step_on_epochs=False, updates_per_epoch=steps)
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
    # timm's PrefetchLoader hands over uint8 on the device and normalises there.
    images = torch.randint(0, 256, (batch_size, 3, image_size, image_size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    mean = torch.tensor(data_mod.IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(data_mod.IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    state = {"updates": 0}

    def run() -> None:
        model.train()
        for _ in range(steps):
            x = images.float().sub_(mean).div_(std)
            if cuda and cnn:
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
            state["updates"] += 1
            scheduler.step_update(num_updates=state["updates"])
            if ema is not None:
                ema.update(model, step=state["updates"])

    return run


def harness_loop(model_name: str, recipe_overrides: dict[str, Any], *, image_size: int, batch_size: int,
                 num_classes: int, device: torch.device, steps: int, epochs: int, compile: bool) -> tuple[Callable[[], None], Any]:
    """harness.train's epoch over harness.data's device-resident set of batch_size x steps images."""
    data = data_mod.DataSpec(name="synthetic", image_size=image_size, num_classes=num_classes,
                             train_size=batch_size * steps, val_fraction=0.02)
    spec = resolve_run(model=model_name, recipe="tuned", data=data, overrides={"batch_size": batch_size, **recipe_overrides},
                       epochs=epochs, device=str(device), compile=compile)
    ds = data_mod.load(spec.data, device)
    t = build_training(spec, ds, device)
    state = {"epoch": 0, "global_step": 0}

    def run() -> None:
        state["epoch"] += 1
        g = torch.Generator(device=device).manual_seed(state["epoch"])
        _, state["global_step"] = train_epoch(t, ds.train, g, state["global_step"])

    return run, t


def bench_one(model_name: str, image_size: int, args: argparse.Namespace, device: torch.device,
              dev_name: str, peak: float | None, log: Callable[[str], None]) -> dict[str, Any]:
    entry = get_model_entry(model_name)
    recipe = get_recipe(tuned_recipe_name(entry.family))
    stands_for = models.stands_for(model_name)
    row: dict[str, Any] = {"device": dev_name, "model": stands_for or model_name, "runs_as": model_name,
                           "image_size": image_size, "batch_size": args.batch_size, "steps": args.steps,
                           "repeats": args.repeats, "compile": args.compile, "amp": "bf16" if device.type == "cuda" else "off",
                           "recipe": recipe.name, "error": ""}
    try:
        entry.size_kwargs(image_size)
        like_for_like = {"randaugment": None, "random_erasing": 0.0}
        epochs = args.warmup + args.repeats + 1
        paths: dict[str, Callable[[], None]] = {
            "reference": reference_loop(model_name, recipe, image_size=image_size, batch_size=args.batch_size,
                                        num_classes=args.num_classes, device=device, steps=args.steps)}
        paths["harness"], t = harness_loop(model_name, like_for_like, image_size=image_size, batch_size=args.batch_size,
                                           num_classes=args.num_classes, device=device, steps=args.steps,
                                           epochs=epochs, compile=args.compile)
        if not args.no_full and (recipe.randaugment or recipe.random_erasing):
            paths["harness_full"], _ = harness_loop(model_name, {}, image_size=image_size, batch_size=args.batch_size,
                                                    num_classes=args.num_classes, device=device, steps=args.steps,
                                                    epochs=epochs, compile=args.compile)
        row["fwd_gflops"] = round(forward_gflops(t.model, image_size), 3)
        for _ in range(args.warmup):  # compiles, cuDNN autotuning, allocator growth
            for run in paths.values():
                time_s(run, device)
        times: dict[str, list[float]] = {k: [] for k in paths}
        names = list(paths)
        for r in range(args.repeats):  # interleaved, rotating order: drift and heat hit every path alike
            for k in names[r % len(names):] + names[:r % len(names)]:
                times[k].append(time_s(paths[k], device))
        images = args.batch_size * args.steps
        for k, ts in times.items():
            row[f"{k}_img_s"] = round(images / statistics.median(ts), 2)
        row["ratio"] = round(row["harness_img_s"] / row["reference_img_s"], 3)
        if "harness_full_img_s" in row:
            row["ratio_full"] = round(row["harness_full_img_s"] / row["reference_img_s"], 3)
        if peak:
            for k in ("reference", "harness"):
                row[f"{k}_mfu_pct"] = round(100 * 3 * row["fwd_gflops"] * 1e9 * row[f"{k}_img_s"] / (peak * 1e12), 2)
    except torch.cuda.OutOfMemoryError as e:  # failures become rows (timm benchmark.py style)
        row["error"] = f"OOM: {str(e).splitlines()[0][:120]}"
    except Exception as e:  # noqa: BLE001 - one model failing must not lose the others' numbers
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    log(f"  {row['runs_as']:>16} {image_size:>4}px  ref {row.get('reference_img_s', '-')}  harness {row.get('harness_img_s', '-')}"
        f"  full {row.get('harness_full_img_s', '-')}  ratio {row.get('ratio', '-')}  {row['error']}")
    return row


# --- reporting ------------------------------------------------------------------------------------

def targets(rows: list[dict[str, Any]], compile: bool) -> list[tuple[str, str, str]]:
    """(what, measured, met|missed) for each of the issue's targets the table can answer."""
    out = []
    for r in rows:
        runs = r["runs_as"] if r["runs_as"] == r["model"] else f"{r['runs_as']} (stand-in for {r['model']})"
        name = f"{runs} {r['image_size']}px"
        if r.get("error"):
            out.append((name, "error", "missed"))
            continue
        out.append((f"{name}: harness/reference >= {TARGET_RATIO}", f"{r['ratio']:.3f}",
                    "met" if r["ratio"] >= TARGET_RATIO else "missed"))
        family = get_model_entry(r["runs_as"]).family
        if compile and family in ("vit", "swin"):
            out.append((f"{name}: --compile harness/reference >= {TARGET_COMPILE_RATIO}", f"{r['ratio']:.3f}",
                        "met" if r["ratio"] >= TARGET_COMPILE_RATIO else "missed"))
        if r["runs_as"] == "vit_base" and r["image_size"] == 224:
            mfu = r.get("harness_mfu_pct")
            out.append((f"{name}: MFU >= {TARGET_VIT_MFU}%", "n/a (no peak known)" if mfu in (None, "") else f"{mfu:.1f}%",
                        "n/a" if mfu in (None, "") else ("met" if mfu >= TARGET_VIT_MFU else "missed")))
    return out


def md_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(rows: list[dict[str, Any]], args: argparse.Namespace, dev_name: str, peak: float | None,
                  out_dir: Path, stem: str, on_cpu: bool) -> tuple[Path, Path, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out_dir / f"{stem}.csv", out_dir / f"{stem}.md"
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in COLUMNS})
    shown = ["model", "runs_as", "image_size", "batch_size", "fwd_gflops", "reference_img_s", "harness_img_s",
             "harness_full_img_s", "ratio", "ratio_full", "reference_mfu_pct", "harness_mfu_pct", "error"]
    tgt = targets(rows, args.compile)
    text = "\n".join([
        f"# Training throughput on {dev_name}",
        "",
        f"{'CPU run: these numbers only show the benchmark works; the targets are for one H100 and were not measured here.' if on_cpu else ''}",
        "",
        f"- command: `{' '.join(['python', 'benchmarks/throughput.py', *args.argv])}`",
        f"- date: {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; torch {torch.__version__}; "
        f"timm {__import__('timm').__version__}; load average {os.getloadavg()[0]:.2f}",
        f"- batch {args.batch_size}, {args.steps} steps per repeat, median of {args.repeats} repeats after "
        f"{args.warmup} warm-up, paths interleaved; AMP {'bf16' if not on_cpu else 'off (CPU)'}; "
        f"harness {'torch.compile' if args.compile else 'eager'}, reference eager",
        f"- MFU = 3 x forward FLOPs x img/s / peak ({peak} TFLOPS bf16 dense)" if peak else
        "- MFU: no peak known for this device (pass --peak-tflops)",
        "- reference = timm train.py's loop on a device batch; harness = train_epoch with the tuned recipe minus "
        "RandAugment/erasing (same work as the reference); harness_full = the full tuned recipe, augmentation on the device",
        "",
        md_table(rows, shown),
        "",
        "## Targets (one H100)" + (" — informational only on this device" if on_cpu else ""),
        "",
        md_table([{"target": a, "measured": b, "result": c} for a, b, c in tgt], ["target", "measured", "result"]),
        "",
    ])
    md_path.write_text(text)
    return md_path, csv_path, text


# --- packing: 4 small trials on one GPU --------------------------------------------------------------

class UtilSampler:
    """GPU utilisation (% of time a kernel ran) sampled every `every` s by nvidia-smi, or torch's NVML."""

    def __init__(self, index: int, every: float = 0.5) -> None:
        self.index, self.every, self.samples = index, every, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _read(self) -> float | None:
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                  "-i", str(self.index)], capture_output=True, text=True, timeout=5)
            return float(out.stdout.strip().splitlines()[0])
        except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
            with contextlib.suppress(Exception):
                return float(torch.cuda.utilization(self.index))
        return None

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            v = self._read()
            if v is not None:
                self.samples.append(v)

    def __enter__(self) -> UtilSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def mean(self) -> float | None:
        return round(statistics.mean(self.samples), 1) if self.samples else None


def trial_command(args: argparse.Namespace, seed: int) -> list[str]:
    spec = {"model": args.packing_model, "data": args.packing_data, "image_size": 32, "epochs": args.packing_epochs,
            "seed": seed, "device": args.device, "compile": args.compile}
    return [sys.executable, str(Path(__file__).resolve()), "--trial", json.dumps(spec)]


def run_trial(spec_json: str) -> int:
    """One sweep-like trial (a full fit() on 32 px data); prints its timing as one JSON line."""
    from harness.train import fit

    s = json.loads(spec_json)
    data = data_mod.DataSpec(name=s["data"], image_size=s["image_size"],
                             train_size=10_000 if s["data"] == "synthetic" else None)
    spec = resolve_run(model=s["model"], recipe="tuned", data=data, epochs=s["epochs"], seed=s["seed"],
                       device=s["device"], compile=s["compile"], eval_samples=0)
    result = fit(spec)
    print(json.dumps({"fit_s": result.wall_s, "images_per_s": statistics.median(h["images_per_s"] for h in result.history),
                      "val_acc": result.final_val_acc}))
    return 0


def packing_specs(args: argparse.Namespace, device: str = "cuda") -> list[Any]:
    data = data_mod.DataSpec(name=args.packing_data, image_size=32,
                             train_size=10_000 if args.packing_data == "synthetic" else None)
    return [resolve_run(model=args.packing_model, recipe="tuned", data=data, epochs=args.packing_epochs, seed=i,
                        device=device, compile=args.compile, eval_samples=0) for i in range(4)]


def pack_with_ray(args: argparse.Namespace, mode: str, tmp: Path, log: Callable[[str], None], *,
                  device: str = "cuda", gpu_per_trial: float | None = None) -> dict[str, Any]:
    """4 trials through harness.engine.run_grid, the sweeps' own path: 1 GPU each one at a time,
    or 0.25 GPU each four at a time (Ray fractional resources)."""
    import sqlite3

    from harness.engine import Experiment, run_grid
    from harness.specs import ResourcesSpec

    cpus = max(1, (os.cpu_count() or 4) // 4)
    concurrency, gpu = (1, 1.0) if mode == "sequential" else (4, 0.25)
    gpu = gpu if gpu_per_trial is None else gpu_per_trial
    db = tmp / f"{mode}.db"
    exp = run_grid(packing_specs(args, device), db=f"sqlite:///{db}", experiment=Experiment("benchmark", f"packing-{mode}"),
                   concurrency=concurrency, resources=ResourcesSpec(cpu=cpus, gpu=gpu), storage_path=tmp / "ray",
                   echo=log).experiment_id
    with sqlite3.connect(db) as c:
        runs = c.execute("select status, wall_s, images_per_s, error from runs where experiment_id = ?", (exp,)).fetchall()
    ok = [r for r in runs if r[0] == "completed"]
    return {"fit_s": [r[1] for r in ok if r[1] is not None], "img_s": [r[2] for r in ok if r[2] is not None],
            "errors": [f"{r[0]}: {r[3]}" for r in runs if r[0] != "completed"], "gpu_per_trial": gpu}


def pack_with_processes(args: argparse.Namespace, mode: str, index: int) -> dict[str, Any]:
    """Fallback without harness.engine (Ray): each trial its own process, as a Ray worker would be."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES", str(index))}
    if mode == "sequential":
        outputs = [subprocess.run(trial_command(args, i), capture_output=True, text=True, env=env) for i in range(4)]
    else:
        procs = [subprocess.Popen(trial_command(args, i), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for i in range(4)]
        outputs = [subprocess.CompletedProcess(p.args, p.returncode, *p.communicate()) for p in procs]
    fits = [json.loads(o.stdout.strip().splitlines()[-1]) for o in outputs if o.returncode == 0]
    return {"fit_s": [f["fit_s"] for f in fits], "img_s": [f["images_per_s"] for f in fits],
            "errors": [o.stderr.strip().splitlines()[-1] if o.stderr.strip() else f"exit {o.returncode}"
                       for o in outputs if o.returncode != 0], "gpu_per_trial": "process"}


def packing(args: argparse.Namespace, device: torch.device, dev_name: str, log: Callable[[str], None]) -> int:
    if device.type != "cuda":
        log("--packing needs a CUDA GPU: it measures 4 trials sharing one card against 4 in a row. "
            "Nothing measured on this device.")
        return 0
    try:
        import harness.engine  # noqa: F401  (Ray; the GPU image may lack it: then plain processes)

        how = "processes" if args.packing_processes else "ray"
    except ImportError:
        how = "processes"
    index = device.index or 0
    rows = []
    for mode in ("sequential", "concurrent"):
        with tempfile.TemporaryDirectory() as tmp, UtilSampler(index) as util:
            t0 = time.perf_counter()
            r = pack_with_ray(args, mode, Path(tmp), log) if how == "ray" else pack_with_processes(args, mode, index)
            wall = time.perf_counter() - t0
        rows.append({"mode": mode, "trials": 4, "via": how, "gpu_per_trial": r["gpu_per_trial"], "wall_s": round(wall, 1),
                     "mean_fit_s": round(statistics.mean(r["fit_s"]), 1) if r["fit_s"] else None,
                     "mean_trial_img_s": round(statistics.mean(r["img_s"]), 1) if r["img_s"] else None,
                     "gpu_util_mean_pct": util.mean(), "util_samples": len(util.samples), "error": "; ".join(r["errors"])})
        log(f"  {mode}: {rows[-1]}")
    speedup = rows[0]["wall_s"] / rows[1]["wall_s"]
    stem = f"packing-{device_slug(device, dev_name)}"
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    verdict = ("pack 4 per GPU (resources.gpu: 0.25)" if speedup > 1.05
               else "run trials one per GPU (resources.gpu: 1): packing did not help")
    util_c = rows[1]["gpu_util_mean_pct"]
    text = "\n".join([
        f"# Packing 4 small trials on {dev_name}", "",
        f"- trial: {args.packing_model}, tuned recipe, {args.packing_data} at 32 px, {args.packing_epochs} epochs, "
        f"{'torch.compile' if args.compile else 'eager'}; via {'harness.engine.run_grid (Ray Tune)' if how == 'ray' else 'one process per trial'}",
        f"- {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; GPU utilisation from nvidia-smi every 0.5 s", "",
        md_table(rows, list(rows[0])), "",
        f"4 concurrent finish {speedup:.2f}x sooner than 4 in a row: {verdict}.",
        f"Target: a 32 px sweep keeps the GPU >= 85% busy: "
        f"{'n/a' if util_c is None else ('met' if util_c >= 85 else 'missed')} ({util_c}% packed).", ""])
    (args.out / f"{stem}.md").write_text(text)
    log(text)
    log(f"results: {args.out / (stem + '.md')}, {args.out / (stem + '.csv')}")
    return 0


# --- loader: JPEG decoding of an imagefolder vs training speed ------------------------------------------

def make_jpeg_folder(root: Path, n: int, size: tuple[int, int] = (500, 375)) -> None:
    """n JPEGs of ImageNet's typical size and quality: smooth colour fields with texture, 2 classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        folder = root / f"class_{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        fx, fy, ph = rng.uniform(0.005, 0.05, 3)
        base = np.stack([np.sin(fx * xx + ph * c) * np.cos(fy * yy + c) for c in range(3)], -1)
        img = (127 + 100 * base + rng.normal(0, 12, (h, w, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{i:05d}.jpg", quality=90)


def loader(args: argparse.Namespace, device: torch.device, dev_name: str, log: Callable[[str], None]) -> int:
    cores = os.cpu_count() or 1
    default_workers = min(8, cores // 2)  # data.load_folder's default
    workers_list = args.loader_workers or sorted({1, max(1, default_workers)})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_jpeg_folder(Path(tmp), args.loader_images)
        for workers in workers_list:
            spec = data_mod.DataSpec(name="imagefolder", root=Path(tmp), image_size=args.loader_size, workers=workers,
                                     val_fraction=0.02)
            ds = data_mod.load(spec, device)
            g = torch.Generator(device=device)
            epoch_s = []
            for epoch in range(3):  # epoch 1 starts the workers; persistent workers serve epochs 2 and 3
                g.manual_seed(epoch)
                t0 = time.perf_counter()
                n = 0
                for x, _ in ds.train.batches(args.batch_size, shuffle=True, generator=g, drop_last=False):
                    n += len(x)
                sync(device)
                epoch_s.append(time.perf_counter() - t0)
            ips = n / statistics.median(epoch_s[1:])
            rows.append({"workers": workers, "image_size": args.loader_size, "images": n,
                         "first_epoch_img_s": round(n / epoch_s[0], 1), "img_s": round(ips, 1),
                         "img_s_per_worker": round(ips / max(1, workers), 1)})
            log(f"  {workers} workers: {rows[-1]}")
    per_worker = max(r["img_s_per_worker"] for r in rows)
    # What the GPU eats at 224 px: this device's measured harness rates if the table exists, else timm's RTX 3090 rates.
    need, source = {}, "timm's RTX 3090 AMP figures"
    table = args.out / f"throughput-{device_slug(device, dev_name)}.csv"
    if table.is_file():
        with open(table) as f:
            for r in csv.DictReader(f):
                if r["image_size"] == str(args.loader_size) and r["harness_img_s"]:
                    need[r["model"]] = float(r["harness_img_s"])
        source = str(table.relative_to(REPO))
    if not need:
        need = dict(TIMM_RTX3090)
    verdicts = []
    for model, ips in need.items():
        workers_needed = math.ceil(ips / per_worker)
        starve = workers_needed > default_workers
        verdicts.append({"model": model, "trains_img_s": ips, "workers_needed": workers_needed,
                         "default_workers": default_workers, "cores": cores,
                         "decoding": "would starve the GPU" if starve else "keeps up"})
    stem = f"loader-{device_slug(device, dev_name)}"
    args.out.mkdir(parents=True, exist_ok=True)
    text = "\n".join([
        f"# JPEG decoding (imagefolder, {args.loader_size} px) on {dev_name}", "",
        f"- {args.loader_images} JPEGs of 500x375, quality 90; harness.data's FolderSplit (PIL decode, resize, "
        f"centre crop in DataLoader workers, persistent across epochs, pinned memory on CUDA); batch {args.batch_size}",
        f"- {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC; load average {os.getloadavg()[0]:.2f}", "",
        md_table(rows, list(rows[0])), "",
        f"Training rates from {source}; workers needed = training img/s / best img/s per worker:", "",
        md_table(verdicts, list(verdicts[0])), ""])
    (args.out / f"{stem}.md").write_text(text)
    log(text)
    log(f"results: {args.out / (stem + '.md')}")
    return 0


# --- main ------------------------------------------------------------------------------------------

def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Targets (one H100): harness >= 0.95 x reference for every model; with --compile "
                                       ">= 1.2 x for vit_base and swin_tiny; vit_base 224 px >= 35% MFU.")
    p.add_argument("--models", default=",".join(ALL), help="comma-separated registry names [default: the 4 full models]")
    p.add_argument("--image-sizes", default="224,32", help="comma-separated pixels per side [default: 224,32]")
    p.add_argument("--batch-size", type=int, default=None, help="images per step [default: 128; --tiny: 16]")
    p.add_argument("--steps", type=int, default=None, help="updates per timed repeat [default: 20; --tiny: 3]")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per path, median reported [default: 5; --tiny: 3]")
    p.add_argument("--warmup", type=int, default=1, help="untimed repeats per path first (compiles, autotunes)")
    p.add_argument("--num-classes", type=int, default=None, help="classifier width [default: 1000; --tiny: 10]")
    p.add_argument("--compile", action="store_true", help="torch.compile harness's path (reference stays eager)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--peak-tflops", type=float, default=None, help="device peak for MFU (default: looked up by GPU name)")
    p.add_argument("--tiny", action="store_true",
                   help="CPU smoke run: the CPU stand-ins (resnet18, efficientnet_b0, vit_tiny, swin_nano) at 32 px")
    p.add_argument("--no-full", action="store_true", help="skip the harness_full path (recipe's on-device RandAugment)")
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the table [default: benchmarks/results]")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--packing", action="store_true", help="measure 4 small trials in a row vs together on one GPU")
    p.add_argument("--packing-model", default="resnet18", help="--packing: the trials' model [default: resnet18]")
    p.add_argument("--packing-data", default="synthetic", choices=["synthetic", "digits"],
                   help="--packing: 32 px data (synthetic = 10,000 CIFAR-sized images) [default: synthetic]")
    p.add_argument("--packing-epochs", type=int, default=5, help="--packing: epochs per trial [default: 5]")
    p.add_argument("--packing-processes", action="store_true",
                   help="--packing: one plain process per trial instead of harness.engine.run_grid (Ray)")
    p.add_argument("--loader", action="store_true", help="measure imagefolder JPEG decoding against training speed")
    p.add_argument("--loader-images", type=int, default=512, help="--loader: JPEGs to generate [default: 512]")
    p.add_argument("--loader-size", type=int, default=224, help="--loader: decoded size [default: 224]")
    p.add_argument("--loader-workers", type=lambda s: [int(v) for v in s.split(",")], default=None,
                   help="--loader: comma-separated worker counts [default: 1 and data.py's default]")
    p.add_argument("--trial", default=None, help=argparse.SUPPRESS)  # internal: one --packing trial
    args = p.parse_args(argv)
    args.argv = argv
    tiny = args.tiny
    args.batch_size = args.batch_size or (16 if tiny else 128)
    args.steps = args.steps or (3 if tiny else 20)
    args.repeats = args.repeats or (3 if tiny else 5)
    args.num_classes = args.num_classes or (10 if tiny else 1000)
    if tiny:
        if args.device == "auto":
            args.device = "cpu"
        if "--image-sizes" not in " ".join(argv):
            args.image_sizes = "32"
    return args


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.trial is not None:
        return run_trial(args.trial)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    dev_name = device_name(device)
    if args.packing:
        return packing(args, device, dev_name, log)
    if args.loader:
        return loader(args, device, dev_name, log)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if args.tiny:
        models = [CPU_VARIANT.get(m, m) for m in models]
    for m in models:
        get_model_entry(m, "--models")
    sizes = [int(s) for s in args.image_sizes.split(",")]
    peak = args.peak_tflops or (peak_tflops(dev_name) if device.type == "cuda" else None)
    log(f"throughput on {dev_name}: {', '.join(models)} at {sizes} px, batch {args.batch_size}, "
        f"{args.steps} steps x {args.repeats} repeats{', harness compiled' if args.compile else ''}")
    rows = [bench_one(m, s, args, device, dev_name, peak, log) for s in sizes for m in models]
    stem = f"throughput-{device_slug(device, dev_name)}" + ("-compile" if args.compile else "") + ("-tiny" if args.tiny else "")
    md_path, csv_path, text = write_results(rows, args, dev_name, peak, args.out, stem, on_cpu=device.type != "cuda")
    log("")
    log(text)
    log(f"results: {md_path}, {csv_path}")
    return 1 if all(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
