"""What CPU tests cannot check, checked on a GPU machine in minutes: the steps of benchmarks/gpu_check.sh.

    bash benchmarks/gpu_check.sh              # on the GPU machine: every step inside one 420 s deadline
    bash benchmarks/gpu_check.sh --dry-run    # the rehearsal on a CPU machine: every step that can run there
    python benchmarks/gpu_check.py --only sweep --out WORK [--dry-run]   # one step (what the script calls)
    python benchmarks/gpu_check.py --report --out WORK                    # the table of every step recorded

Steps (each appends "name, PASS/FAIL/SKIP, seconds, reason" to WORK/steps.tsv, WORK being the script's
work folder; the script adds its own setup, imports and gpu_tests steps to the same file). The time a
step has is GPU_CHECK_SECONDS (the script sets it to what is left of the step's slot):

- zero_gpu: a trial asking for `gpu: 0` (through harness.engine.run_trials) records no card and no Ray
  trial process appears on a GPU while it runs.
- sweep: `harness sweep` of the shipped studies/vit_lr.yaml at `gpu: auto` (4 trials of 2 epochs, 2 at
  a time): from results.db (`runs.gpus`, the cards Ray granted each trial) and nvidia-smi sampled during
  the sweep, every trial ran on a card it was granted, shares spread over the cards.
- bf16: a few bf16 training steps of each full model (resnet50, efficientnet_b3, vit_base, swin_tiny)
  at 224 px through harness.train: finite loss, autocast on.
- peak: this card's bf16 matmul rate, measured (8192^3 GEMMs), beside its datasheet figure.
- throughput: benchmarks/throughput.py at 224 px: harness against timm's loop with the same fused
  AdamW, with and without the loader (timm's workers sized like a trial's: `data.gpu_trial_workers`);
  MFU against the datasheet peak, the measured peak's beside it; rows written as each model finishes,
  and no model started that would not finish in the step's time.
- randaugment: img/s of RandAugment on the device (harness.augment) against timm's PIL ops, 32 and 224 px.
- imagefolder: the user's path: `harness benchmark` (Ray, 2 trials of resnet50) on a folder of JPEGs made
  on the spot, decoded by DataLoader workers (pinned memory, non_blocking copies), against the same
  training on a device-resident set: decoding-bound shows as a ratio well under 1.
- compile: vit_base through harness.train eager and with `--compile`: compile time, steady img/s of each.

With --dry-run each step runs its CPU form: the sweep on the CPU (placement not checked), the stand-ins
instead of the full models at 32 px, a small matmul, a few dozen small JPEGs; each says so in its reason.
This module's check functions are pure (a runs table in, a Check out) and tested on CPU with a fake
database (tests/test_gpu_check.py); what they read is measured only on a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, as a script or from the tests
import _common as common  # noqa: E402

common.importable_harness()

FULL_MODELS = ("resnet50", "efficientnet_b3", "vit_base", "swin_tiny")  # harness.models.ALL
# In the order gpu_check.sh runs them: the Ray steps before this process makes a CUDA context of its own.
CHECKS = ("zero_gpu", "sweep", "bf16", "peak", "throughput", "randaugment", "imagefolder", "compile")
# The throughput step's models, vit_base first (the MFU target) and efficientnet_b3 last (the slowest per
# image at 224 px): a step that runs out of time loses the least informative row.
THROUGHPUT_MODELS = ("vit_base", "resnet50", "swin_tiny", "efficientnet_b3")
# 10 updates of 128 images per timed repeat, 3 repeats after 1 warm-up. On an H100 one repeat is 1,280
# images, 0.4-1 s of GPU work: the CUDA events' resolution (~1 us) and launch jitter are 1e-5 of it, and the
# device-resident paths run the same kernels every step, so their repeats differ by well under 1%; the
# loader-fed path varies more (worker scheduling), hence the median of 3. The table's spread_pct column says
# whether it held; the default 20 x 5 spent 3.3x the time for no digit the 5% bounds read.
THROUGHPUT_STEPS, THROUGHPUT_REPEATS = 10, 3
# The sweep step's study asks for gpu: auto, as the shipped studies do: on a GPU machine harness then
# shares the cards (resources.share_cards): 2 trials at a time get half a card each on one card, a card each
# on two or more, so "both on one card while another idles" is a failure on a multi-GPU node. A study that
# asks for gpu: 0.5 itself would stack on card 0 there: Ray places fractions first-fit.
FRACTION = 0.5  # the share each of 2 concurrent trials gets on a one-card machine
SWEEP_STUDY = Path(__file__).resolve().parent.parent / "studies" / "vit_lr.yaml"
SWEEP_TRIALS, SWEEP_EPOCHS = 4, 2
BF16_STEPS = 3  # training steps per full model: enough to see a finite loss after an update
BF16_BATCH = 32
RAY_PROCESS_PREFIX = "ray::"  # Ray names its worker processes "ray::<task>" (setproctitle)



def sweep_study(name: str = "gpu_check_sweep") -> dict[str, Any]:
    """The shipped vit_lr study, shortened: SWEEP_TRIALS trials of SWEEP_EPOCHS epochs, 2 at a time, at
    gpu: auto (what is checked is where its trials run, not what they learn)."""
    import yaml

    study = yaml.safe_load(SWEEP_STUDY.read_text())
    scheduler = {**study["scheduler"], "max_epochs": SWEEP_EPOCHS, "grace_period": 1}
    return {**study, "name": name, "trials": SWEEP_TRIALS, "concurrency": 2, "scheduler": scheduler,
            "resources": {"cpu": 1, "gpu": "auto"}}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS | FAIL
    reason: str

    def line(self) -> str:
        return f"{self.status} {self.name}: {self.reason}"


def passed(name: str, reason: str) -> Check:
    return Check(name, "PASS", reason)


def failed(name: str, reason: str) -> Check:
    return Check(name, "FAIL", reason)


# --- where trials ran: the database's record and nvidia-smi's ------------------------------------------

def granted_ids(gpus: str | None) -> list[str]:
    """Ray's GPU ids from a `runs.gpus` cell ("0: NVIDIA H100; 1: NVIDIA H100" -> ["0", "1"]; "" -> [])."""
    return [part.split(":", 1)[0].strip() for part in (gpus or "").split(";") if part.strip()]


def granted_names(gpus: str | None) -> list[str]:
    return [part.split(":", 1)[1].strip() if ":" in part else "" for part in (gpus or "").split(";") if part.strip()]


def check_placement(runs: Any, *, used_cards: set[str] | None, cards: int, expected: int = SWEEP_TRIALS,
                    name: str = "sweep") -> Check:
    """`runs`: harness.tables.read_runs of the sweep at gpu: auto. `used_cards`: GPU indices on which
    nvidia-smi saw a Ray trial process during it (None = nvidia-smi showed no processes at all, e.g.
    inside a container's PID namespace: then only the database's record is checked)."""
    if len(runs) != expected:
        return failed(name, f"expected {expected} runs in the sweep's experiment, found {len(runs)}")
    bad = [f"run {r.id} {r.status}: {r.error or ''}".strip() for r in runs.itertuples()
           if r.status not in ("completed", "stopped")]  # ASHA may stop a trial early: it still ran where granted
    if bad:
        return failed(name, "; ".join(bad))
    grants = {int(r.id): granted_ids(r.gpus) for r in runs.itertuples()}
    if any(not ids for ids in grants.values()):
        return failed(name, f"a trial at gpu: auto was granted no card (Ray ids by run: "
                            f"{grants}); it trained on the CPU")
    unnamed = [int(r.id) for r in runs.itertuples() if any(n in ("", "?") for n in granted_names(r.gpus))]
    if unnamed:
        return failed(name, f"runs {unnamed} were granted a card CUDA could not see in the trial (name '?'): "
                            "CUDA_VISIBLE_DEVICES or the driver is wrong inside Ray's workers")
    granted = {i for ids in grants.values() for i in ids}
    detail = ", ".join(f"run {k} on card {'+'.join(v)}" for k, v in grants.items())
    if used_cards is not None:
        stray = used_cards - granted
        if stray:
            return failed(name, f"Ray trial processes ran on card(s) {sorted(stray)} that no trial was granted ({detail})")
        idle = granted - used_cards
        if idle:
            return failed(name, f"granted card(s) {sorted(idle)} never ran a Ray trial process ({detail}): "
                                "the trials trained elsewhere (the CPU?)")
    if cards >= 2 and len(granted) == 1:
        return failed(name, f"every trial was put on card {next(iter(granted))} while {cards - 1} other card(s) idled "
                            f"({detail}): gpu: auto should spread the trials over a multi-GPU node")
    evidence = "nvidia-smi saw them there" if used_cards is not None else "runs.gpus only (nvidia-smi listed no processes)"
    return passed(name, f"{detail}; {evidence}")


def check_zero_gpu(runs: Any, *, used_cards: set[str] | None) -> Check:
    """`runs`: the 0-GPU grid's runs. A trial granted no GPU records gpus "" and no Ray process uses a card."""
    name = "zero_gpu"
    if len(runs) == 0:
        return failed(name, "no run recorded")
    bad = [f"run {r.id} {r.status}: {r.error or ''}".strip() for r in runs.itertuples() if r.status != "completed"]
    if bad:
        return failed(name, "; ".join(bad))
    on_gpu = {int(r.id): r.gpus for r in runs.itertuples() if granted_ids(r.gpus)}
    if on_gpu:
        return failed(name, f"runs asking for gpu: 0 were granted cards: {on_gpu}")
    if used_cards:
        return failed(name, f"a Ray trial process used card(s) {sorted(used_cards)} although no trial was granted one: "
                            "the trial trained on the GPU behind Ray's back")
    evidence = ("and nvidia-smi saw no Ray process on any card" if used_cards is not None
                else "(nvidia-smi listed no processes: runs.gpus only)")
    return passed(name, f"{len(runs)} run(s) granted no card, completed {evidence}")


def check_bf16(results: dict[str, dict[str, Any]], *, batch: int = BF16_BATCH, image_size: int = 224) -> Check:
    """`results`: model -> {"loss": float | None, "steps": int, "amp": bool, "error": str}."""
    name = "bf16"
    bad = []
    for model, r in results.items():
        loss = r.get("loss")
        if r.get("error"):
            bad.append(f"{model}: {r['error']}")
        elif not r.get("amp"):
            bad.append(f"{model}: autocast was off")
        elif loss is None or not math.isfinite(loss):
            bad.append(f"{model}: loss {loss}")
        elif r.get("steps") != BF16_STEPS:
            bad.append(f"{model}: {r.get('steps')} of {BF16_STEPS} steps")
    missing = [m for m in FULL_MODELS if m not in results]
    if missing:
        bad.append(f"not run: {', '.join(missing)}")
    if bad:
        return failed(name, "; ".join(bad))
    return passed(name, ", ".join(f"{m} loss {r['loss']:.3f}" for m, r in results.items()) +
                  f" ({BF16_STEPS} steps, batch {batch}, {image_size} px)")


def check_throughput(rows: list[dict[str, str]], *, peak_known: bool) -> Check:
    """`rows`: benchmarks/throughput.py's CSV. Every model measured on all four paths (RandAugment on in
    reference_full and harness_full), MFU filled in when the device's peak is known."""
    name = "throughput"
    unmeasured = [r["runs_as"] for r in rows if r.get("error", "").startswith("no time left")]
    rows = [r for r in rows if r["runs_as"] not in unmeasured]
    if not rows:
        return failed(name, "no rows" + (f" (no time left for {', '.join(unmeasured)})" if unmeasured else ""))
    bad = []
    for r in rows:
        what = f"{r['runs_as']} {r['image_size']}px"
        if r.get("error"):
            bad.append(f"{what}: {r['error']}")
            continue
        empty = [c for c in ("reference_img_s", "harness_img_s", "reference_full_img_s", "harness_full_img_s")
                 if not r.get(c)]
        if empty:
            bad.append(f"{what}: no {', '.join(empty)}")
        if "rand-m" not in r.get("augment", ""):
            bad.append(f"{what}: RandAugment was not on ({r.get('augment')!r})")
        if peak_known and not r.get("harness_mfu_pct"):
            bad.append(f"{what}: no MFU")
    if bad:
        return failed(name, "; ".join(bad))
    mfu = {r["runs_as"]: r.get("harness_mfu_pct") for r in rows if r.get("harness_mfu_pct")}
    return passed(name, ", ".join(f"{r['runs_as']} ratio {r['ratio']} / full {r['ratio_full']}"
                                  + (f", MFU {mfu[r['runs_as']]}%" if r["runs_as"] in mfu else "") for r in rows)
                  + (f"; not measured, no time left: {', '.join(unmeasured)}" if unmeasured else ""))


# --- measuring -------------------------------------------------------------------------------------------

class GpuProcesses:
    """Which GPUs Ray's trial processes use, from nvidia-smi every `every` s while the block runs.
    `cards()` is the set of GPU indices, or None when nvidia-smi listed no compute process at all
    (a container may hide other processes: then there is no evidence either way)."""

    def __init__(self, every: float = 0.5, *, enabled: bool = True) -> None:
        self.every, self.any_process, self.ray_cards, self.enabled = every, False, set(), enabled
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._index = self._uuid_to_index() if enabled else {}

    @staticmethod
    def _smi(*query: str) -> list[list[str]]:
        try:
            out = subprocess.run(["nvidia-smi", *query, "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return []
        return [[c.strip() for c in line.split(",")] for line in out.stdout.splitlines() if line.strip()]

    def _uuid_to_index(self) -> dict[str, str]:
        return {uuid: index for index, uuid in self._smi("--query-gpu=index,uuid")}

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            for row in self._smi("--query-compute-apps=pid,gpu_uuid"):
                if len(row) < 2 or not row[0].isdigit():
                    continue
                self.any_process = True
                with contextlib.suppress(OSError):
                    cmd = Path(f"/proc/{row[0]}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                    if cmd.startswith(RAY_PROCESS_PREFIX):
                        self.ray_cards.add(self._index.get(row[1], row[1]))

    def __enter__(self) -> GpuProcesses:
        if self.enabled:
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self.enabled:
            self._thread.join()

    def cards(self) -> set[str] | None:
        return set(self.ray_cards) if self.any_process or self.ray_cards else None


def read_runs(db: str) -> Any:
    """Every run in the database, through harness's own reader."""
    from harness import tables as report

    store = report.open_reader(db)
    try:
        return report.read_runs(store)
    finally:
        store.close()


def harness_command() -> list[str]:
    """`harness` as this Python runs it (the uv venv's, or the image's python3 with the wheels on PYTHONPATH)."""
    return [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())"]


def run_sweep_step(tmp: Path, log: Callable[[str], None], *, dry_run: bool) -> Check:
    """`harness sweep` of the shortened shipped study, in its own process (a fresh driver starting Ray)."""
    import yaml

    study = tmp / "sweep.yaml"
    study.write_text(yaml.safe_dump(sweep_study(), sort_keys=False))
    db = f"sqlite:///{tmp / 'sweep.db'}"
    cmd = [*harness_command(), "sweep", str(study), "--db", db, "--out", str(tmp / "pages"),
           "--storage-path", str(tmp / "ray_sweep")]
    with GpuProcesses(enabled=not dry_run) as procs:
        done = subprocess.run(cmd, capture_output=True, text=True)
    log(done.stdout[-3000:])
    if done.returncode != 0:
        return failed("sweep", f"harness sweep exited {done.returncode}: {done.stderr.strip()[-300:]}")
    runs = read_runs(db)
    if dry_run:  # on the CPU auto resolves to no card: every trial must have finished there, on none
        on_cards = [int(r.id) for r in runs.itertuples() if granted_ids(r.gpus)]
        bad = [f"run {r.id} {r.status}" for r in runs.itertuples() if r.status not in ("completed", "stopped")]
        if len(runs) != SWEEP_TRIALS or bad or on_cards:
            return failed("sweep", f"{len(runs)} runs; not finished: {bad}; granted a card on a CPU machine: {on_cards}")
        return passed("sweep", f"{len(runs)} trials at gpu: auto finished on the CPU (placement: GPU only)")
    import torch

    return check_placement(runs, used_cards=procs.cards(), cards=torch.cuda.device_count())


def zero_gpu_grid(db: str, storage: str) -> None:
    """One CPU stand-in trial granted no GPU, through the engine (in a spawned process: a clean driver)."""
    from harness import data as data_mod
    from harness.engine import Experiment, Trials, run_trials
    from harness.specs import ResourcesSpec, resolve_run

    data = data_mod.DataSpec(name="synthetic", image_size=32, train_size=512)
    spec = resolve_run(model="resnet18", recipe="fitted", data=data, epochs=1, eval_samples=0)
    run_trials(Trials.grid([spec], concurrency=1, resources=ResourcesSpec(cpu=1, gpu=0)),
               db=db, storage_path=Path(storage), experiment=Experiment("benchmark", "gpu_check_zero_gpu"))


def run_zero_gpu(tmp: Path, log: Callable[[str], None], *, dry_run: bool) -> Check:
    db = f"sqlite:///{tmp / 'zero_gpu.db'}"
    proc = multiprocessing.get_context("spawn").Process(target=zero_gpu_grid, args=(db, str(tmp / "ray_zero")))
    with GpuProcesses(enabled=not dry_run) as procs:
        proc.start()
        proc.join()
    if proc.exitcode != 0:
        return failed("zero_gpu", f"the 0-GPU grid exited {proc.exitcode}")
    return check_zero_gpu(read_runs(db), used_cards=procs.cards() if not dry_run else None)


def bf16_steps(model: str, device: Any, *, image_size: int = 224, batch: int = BF16_BATCH) -> dict[str, Any]:
    """BF16_STEPS training steps of `model` through harness.train (build_training + train_epoch, the loop
    fit() runs) with its family's published recipe: the mean loss, the steps taken, whether autocast was on."""
    import torch

    from harness import data as data_mod
    from harness.specs import resolve_run
    from harness.train import build_training, train_epoch

    # Half a batch spare: however the set's split rounds, BF16_STEPS full batches remain.
    data = data_mod.DataSpec(name="synthetic", image_size=image_size, train_size=batch * BF16_STEPS + batch // 2,
                             val_fraction=0.02, test_fraction=0.02)
    spec = resolve_run(model=model, recipe="published", data=data, overrides={"batch_size": batch},
                       epochs=1, device=str(device))
    ds = data_mod.load(spec.data, device)
    t = build_training(spec, ds, device)
    sums, _ = train_epoch(t, ds.train, torch.Generator(device=device).manual_seed(0), 0)
    return {"loss": float(sums.loss_sum) / max(sums.seen, 1), "steps": sums.steps, "amp": t.use_amp, "error": ""}


def run_bf16(log: Callable[[str], None], *, dry_run: bool) -> Check:
    import torch

    from harness.models import CPU_VARIANT

    device = torch.device("cpu" if dry_run else "cuda")
    results: dict[str, dict[str, Any]] = {}
    for model in FULL_MODELS:
        try:
            if dry_run:  # the stand-in at 32 px on the CPU: the same calls, no autocast there
                results[model] = {**bf16_steps(CPU_VARIANT[model], device, image_size=32, batch=4), "amp": True}
            else:
                results[model] = bf16_steps(model, device)
        except Exception as e:  # noqa: BLE001 - one model failing is this check's finding, not the end of the script
            results[model] = {"loss": None, "steps": 0, "amp": False, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        finally:
            if not dry_run:
                torch.cuda.empty_cache()
        log(f"  bf16 {model}: {results[model]}")
    check = check_bf16(results, batch=4, image_size=32) if dry_run else check_bf16(results)
    return Check(check.name, check.status, ("CPU stand-ins at 32 px, fp32: " if dry_run else "") + check.reason)


PEAK_N = 8192  # the GEMM of the peak step: large enough to reach an H100's dense bf16 rate


def measure_peak_tflops(device: Any, *, n: int = PEAK_N, repeats: int = 10) -> float:
    """Dense matmul rate on `device` in TFLOP/s (bf16 on CUDA, fp32 on the CPU): the median of `repeats`
    timed n x n x n products after a warm-up, 2 n^3 FLOPs each."""
    import statistics

    import torch

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    times = [common.time_s(lambda: a @ b, device) for _ in range(repeats)]
    return 2 * n ** 3 / statistics.median(times) / 1e12


def run_peak(out: Path, log: Callable[[str], None], *, dry_run: bool) -> Check:
    import torch

    device = torch.device("cpu" if dry_run else "cuda")
    measured = measure_peak_tflops(device, n=512 if dry_run else PEAK_N)
    (out / "peak_tflops.txt").write_text(f"{measured:.6g}\n")
    name = common.device_name(device)
    sheet = common.peak_tflops(name) if not dry_run else None
    versus = f" ({100 * measured / sheet:.0f}% of the datasheet's {sheet:g})" if sheet else ""
    what = "fp32 matmul 512^3 on the CPU" if dry_run else f"bf16 matmul {PEAK_N}^3"
    log(f"  peak: {measured:.4g} TFLOP/s {what}{versus}")
    return passed("peak", f"{measured:.4g} TFLOP/s measured, {what}{versus}")


def run_throughput(tmp: Path, out: Path, log: Callable[[str], None], *, dry_run: bool) -> tuple[Check, str]:
    import os

    import throughput

    from harness.data import gpu_trial_workers

    # The MFU is against the datasheet (throughput.py looks it up by the card's name); the peak step's
    # measured rate goes beside it.
    peak_file = out / "peak_tflops.txt"
    measured = ["--measured-peak-tflops", peak_file.read_text().strip()] if peak_file.is_file() and not dry_run else []
    # timm's loader gets the workers a trial with the whole card would get (harness.data.gpu_trial_workers).
    workers = gpu_trial_workers(os.cpu_count() or 1, node_gpus=1, granted_gpus=1)
    seconds = ["--seconds", f"{max(1.0, step_seconds() - 15):.0f}"] if step_seconds() else []  # 15 s: start-up, verdict
    argv = (["--tiny", "--models", ",".join(THROUGHPUT_MODELS), "--steps", "2", "--repeats", "2", "--warmup", "1"]
            if dry_run else
            ["--models", ",".join(THROUGHPUT_MODELS), "--image-sizes", "224", "--steps", str(THROUGHPUT_STEPS),
             "--repeats", str(THROUGHPUT_REPEATS), "--workers", str(workers), *measured])
    # Into the work folder itself: the table is rewritten after each model, so a timeout keeps what finished.
    throughput.main([*argv, *seconds, "--out", str(out / "throughput")], log=log)
    (csv_path,) = (out / "throughput").glob("throughput-*.csv")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    md = next((out / "throughput").glob("throughput-*.md")).read_text()
    import torch

    peak_known = not dry_run and common.peak_tflops(common.device_name(torch.device("cuda"))) is not None
    return check_throughput(rows, peak_known=peak_known), md


RA_POLICY = "rand-m9-mstd0.5-inc1"  # the published DeiT/ViT recipe's RandAugment


def randaugment_rates(device: Any, size: int, *, n: int = 256, n_pil: int = 64, repeats: int = 3) -> tuple[float, float]:
    """(img/s on `device` through harness.augment.DeviceRandAugment, img/s through timm's PIL ops on the
    host) for RandAugment RA_POLICY on uint8 images of `size` px; the PIL path on its first n_pil images."""
    import statistics
    import time

    import numpy as np
    import torch
    from PIL import Image
    from timm.data.auto_augment import rand_augment_transform

    from harness.augment import DeviceRandAugment

    ra = rand_augment_transform(RA_POLICY, {"translate_const": int(size * 0.45), "img_mean": (124, 116, 104)})
    dev = DeviceRandAugment(ra, device=device)
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device)
    g = torch.Generator().manual_seed(0)
    dev.apply(x, dev.draw(n, g))  # warm-up
    on_device = statistics.median(common.time_s(lambda: dev.apply(x, dev.draw(n, g)), device) for _ in range(repeats))
    images = [Image.fromarray(im) for im in x[:n_pil].permute(0, 2, 3, 1).cpu().numpy()]
    t0 = time.perf_counter()
    for _ in range(repeats):
        [np.asarray(ra(im)) for im in images]
    pil = (time.perf_counter() - t0) / repeats
    return n / on_device, n_pil / pil


def run_randaugment(out: Path, log: Callable[[str], None], *, dry_run: bool) -> Check:
    import torch

    device = torch.device("cpu" if dry_run else "cuda")
    rows = []
    for size in (32, 224):
        on_device, pil = randaugment_rates(device, size, n=32 if dry_run else 256, n_pil=16 if dry_run else 64,
                                           repeats=1 if dry_run else 3)
        rows.append({"image_size": size, "device": common.device_name(device), "device_img_s": f"{on_device:.0f}",
                     "timm_pil_img_s": f"{pil:.0f}", "ratio": f"{on_device / pil:.1f}"})
        log(f"  randaugment {size}px: {on_device:.0f} img/s on {device.type}, {pil:.0f} img/s timm PIL (one core)")
    (out / "randaugment.md").write_text(common.md_table(rows, list(rows[0])) + "\n")
    return passed("randaugment", "; ".join(f"{r['image_size']}px {r['device_img_s']} vs {r['timm_pil_img_s']} img/s "
                                           f"(x{r['ratio']})" for r in rows) + f" ({RA_POLICY}, {device.type} vs PIL)")


def step_seconds() -> float | None:
    """The seconds this step has (GPU_CHECK_SECONDS, set by gpu_check.sh to what is left of its slot), or None."""
    value = os.environ.get("GPU_CHECK_SECONDS", "")
    return float(value) if value.replace(".", "", 1).isdigit() else None


# --- the user's paths: image-folder data through loader workers, and --compile -------------------------

# A full model on a few hundred 224 px JPEGs, 2 trials one at a time (each gets the whole card and the
# workers a whole-card trial gets), 3 epochs: epoch 1 starts the workers, epochs 2-3 are the steady rate.
FOLDER = {"model": "resnet50", "images": 384, "jpeg_px": 224, "image_size": 224, "batch": 64, "epochs": 3}
FOLDER_DRY = {"model": "resnet50", "images": 48, "jpeg_px": 48, "image_size": 32, "batch": 8, "epochs": 2}
DECODING_BOUND = 0.8  # folder img/s under this share of the device-resident rate: the workers starve the card


def folder_grid(root: Path, cfg: dict[str, Any], *, dry_run: bool) -> dict[str, Any]:
    """The benchmark grid of the imagefolder step: 2 trials (seeds 0 and 1) of cfg's model, its fitted recipe."""
    return {"name": "gpu_check_imagefolder", "models": [cfg["model"]], "recipes": ["fitted"], "epochs": cfg["epochs"],
            "seeds": 2, "batch_size": cfg["batch"], "scale": "tiny" if dry_run else "full", "concurrency": 1,
            "data": {"name": "imagefolder", "root": str(root), "image_size": cfg["image_size"]},
            "resources": {"cpu": 1, "gpu": "auto"}}


def steady_rate(epochs: Any, run_id: int) -> float:
    """The median images/s of a run's epochs after its first (which starts the loader workers)."""
    import statistics

    rates = [float(r.images_per_s) for r in epochs.itertuples() if int(r.run_id) == run_id and r.epoch > 1]
    return statistics.median(rates) if rates else float("nan")


def on_device_rate(model: str, *, image_size: int, batch: int, n_train: int, epochs: int, device: Any) -> float:
    """The same training as a folder trial (model, fitted recipe fitted to the same images, batch, epochs)
    over a device-resident synthetic set of the same size: median images/s of the epochs after the first."""
    import statistics

    import torch

    from harness import data as data_mod
    from harness.specs import resolve_run
    from harness.train import build_training, train_epoch

    data = data_mod.DataSpec(name="synthetic", image_size=image_size, train_size=n_train, val_fraction=0.02,
                             test_fraction=0.02)
    spec = resolve_run(model=model, recipe="fitted", data=data, batch_size=batch, n_train=n_train, epochs=epochs,
                       device=str(device))
    ds = data_mod.load(spec.data, device)
    t = build_training(spec, ds, device)
    g, step, rates = torch.Generator(device=device).manual_seed(0), 0, []
    for _ in range(epochs):
        common.sync(device)  # the timer starts on an idle device
        t0 = time.perf_counter()
        sums, step = train_epoch(t, ds.train, g, step)
        common.sync(device)
        seconds = time.perf_counter() - t0
        rates.append(sums.seen / seconds)
    return statistics.median(rates[1:])


def run_imagefolder(tmp: Path, out: Path, log: Callable[[str], None], *, dry_run: bool) -> Check:
    """`harness benchmark` over JPEGs made here, as a user's run reads them, against the on-device path."""
    import loader
    import torch
    import yaml

    from harness import tables
    from harness.data import DataSpec, gpu_trial_workers
    from harness.datasets import list_folder
    from harness.models import CPU_VARIANT

    name, cfg = "imagefolder", FOLDER_DRY if dry_run else FOLDER
    device = torch.device("cpu" if dry_run else "cuda")
    root = tmp / "jpegs"
    t0 = time.perf_counter()
    loader.make_jpeg_folder(root, cfg["images"], size=(cfg["jpeg_px"], cfg["jpeg_px"]))
    log(f"  {cfg['images']} JPEGs of {cfg['jpeg_px']} px written in {time.perf_counter() - t0:.1f} s")
    grid = tmp / "folder.yaml"
    grid.write_text(yaml.safe_dump(folder_grid(root, cfg, dry_run=dry_run), sort_keys=False))
    db = f"sqlite:///{tmp / 'folder.db'}"
    cmd = [*harness_command(), "benchmark", str(grid), "--db", db, "--out", str(tmp / "folder_pages"),
           "--storage-path", str(tmp / "ray_folder")]
    done = subprocess.run(cmd, capture_output=True, text=True)
    log(done.stdout[-2000:])
    if done.returncode != 0:
        return failed(name, f"harness benchmark exited {done.returncode}: {done.stderr.strip()[-300:]}")
    store = tables.open_reader(db)
    try:
        runs, epochs = tables.read_runs(store), tables.read_epochs(store)
    finally:
        store.close()
    bad = [f"run {r.id} {r.status}: {r.error or ''}" for r in runs.itertuples() if r.status != "completed"]
    if len(runs) != 2 or bad:
        return failed(name, f"{len(runs)} runs of 2; {'; '.join(bad)}")
    if not dry_run and any(not granted_ids(r.gpus) for r in runs.itertuples()):
        return failed(name, f"a trial trained on no card: runs.gpus {[r.gpus for r in runs.itertuples()]}")
    model = CPU_VARIANT[cfg["model"]] if dry_run else cfg["model"]
    n_train = len(list_folder(DataSpec(name="imagefolder", root=root, image_size=cfg["image_size"])).train)
    folder_rates = [steady_rate(epochs, int(r.id)) for r in runs.itertuples()]
    device_rate = on_device_rate(model, image_size=cfg["image_size"], batch=cfg["batch"], n_train=n_train,
                                 epochs=cfg["epochs"], device=device)
    ratio = min(folder_rates) / device_rate
    workers = gpu_trial_workers(os.cpu_count() or 1, node_gpus=1, granted_gpus=1)
    rows = [{"path": f"imagefolder, run {r.id} (seed {i})", "model": model, "train_images": n_train,
             "epochs": cfg["epochs"], "batch": cfg["batch"], "img_s_after_epoch_1": f"{rate:.0f}",
             "vs_on_device": f"{rate / device_rate:.2f}"} for i, (r, rate) in enumerate(zip(runs.itertuples(), folder_rates))]
    rows.append({"path": "on-device synthetic set (the same training)", "model": model, "train_images": n_train,
                 "epochs": cfg["epochs"], "batch": cfg["batch"], "img_s_after_epoch_1": f"{device_rate:.0f}",
                 "vs_on_device": "1.00"})
    verdict = ("decoding-bound: the loader workers starve the card" if ratio < DECODING_BOUND
               else "the loader workers keep up")
    what = (f"TINY (dry run, CPU): {model} at {cfg['image_size']} px from {cfg['jpeg_px']} px JPEGs" if dry_run else
            f"{model} at {cfg['image_size']} px from {cfg['jpeg_px']} px JPEGs, {workers} loader workers, pinned, non_blocking")
    (out / "imagefolder.md").write_text(f"{what}; `harness benchmark`, 2 trials one at a time, fitted recipe\n\n"
                                        + common.md_table(rows, list(rows[0])) + f"\n\n{verdict} (ratio {ratio:.2f})\n")
    return passed(name, f"{what}: {', '.join(f'{r:.0f}' for r in folder_rates)} img/s through the loader vs "
                        f"{device_rate:.0f} on the device (x{ratio:.2f}): {verdict}")


COMPILE = {"model": "vit_base", "image_size": 224, "batch": 128, "steps": 10, "repeats": 3}
COMPILE_DRY = {"model": "vit_tiny", "image_size": 32, "batch": 8, "steps": 2, "repeats": 2}


def run_compile(out: Path, log: Callable[[str], None], *, dry_run: bool) -> Check:
    """harness.train's epoch for ViT-B eager, then torch.compile'd (`--compile`): the first call's extra
    time is the compile time; steady img/s is the median of the repeats after it."""
    import statistics

    import throughput
    import torch

    name, cfg = "compile", COMPILE_DRY if dry_run else COMPILE
    device = torch.device("cpu" if dry_run else "cuda")
    if dry_run:
        # Inductor's C++ code generation for a ViT's forward and backward takes minutes on a loaded 2-core CPU:
        # the rehearsal traces the same graph through dynamo and AOTAutograd (backend aot_eager) and says so.
        import harness.train

        def aot_eager(model: Any) -> Any:
            torch._dynamo.reset()
            return torch.compile(model, dynamic=False, backend="aot_eager")

        harness.train.compile_model = aot_eager
    recipe = throughput.like_for_like(cfg["model"], cfg["batch"]).harness
    rows, rates = [], {}
    for compiled in (False, True):
        run, _ = throughput.harness_loop(cfg["model"], recipe, image_size=cfg["image_size"], batch_size=cfg["batch"],
                                         num_classes=10 if dry_run else 1000, device=device, steps=cfg["steps"],
                                         epochs=cfg["repeats"] + 2, compile=compiled)
        first = common.time_s(run, device)
        steady = statistics.median(common.time_s(run, device) for _ in range(cfg["repeats"]))
        rates[compiled] = cfg["batch"] * cfg["steps"] / steady
        rows.append({"path": "--compile" if compiled else "eager", "model": cfg["model"], "image_size": cfg["image_size"],
                     "batch": cfg["batch"], "first_epoch_s": f"{first:.1f}", "steady_epoch_s": f"{steady:.2f}",
                     "compile_s": f"{first - steady:.1f}" if compiled else "", "img_s": f"{rates[compiled]:.0f}"})
        log(f"  {rows[-1]}")
        del run
        if device.type == "cuda":
            torch.cuda.empty_cache()
    speedup = rates[True] / rates[False]
    label = "TINY (dry run, CPU, backend aot_eager): " if dry_run else ""
    (out / "compile.md").write_text(f"{label}harness.train's epoch, {cfg['steps']} updates, median of {cfg['repeats']} "
                                    f"after the first\n\n" + common.md_table(rows, list(rows[0])) + "\n")
    return passed(name, f"{label}{cfg['model']} {cfg['image_size']} px: compiled in {rows[1]['compile_s']} s, "
                        f"{rows[1]['img_s']} img/s vs {rows[0]['img_s']} eager (x{speedup:.2f})")


# --- the record: OUT/steps.tsv, one line a step (the script's own steps too), and the table ---------------

STEPS_FILE = "steps.tsv"


def record(out: Path, check: Check, seconds: float) -> None:
    out.mkdir(parents=True, exist_ok=True)
    reason = " ".join(check.reason.split()).replace("\t", " ")
    with open(out / STEPS_FILE, "a") as f:
        f.write(f"{check.name}\t{check.status}\t{seconds:.0f}\t{reason}\n")


def read_steps(out: Path) -> list[dict[str, str]]:
    path = out / STEPS_FILE
    if not path.is_file():
        return []
    keys = ("step", "result", "seconds", "reason")
    return [dict(zip(keys, line.split("\t", 3))) for line in path.read_text().splitlines() if line.strip()]


VERSIONS_FILE = "versions.tsv"  # written by gpu_check.sh's imports step: name, version


def read_versions(out: Path) -> dict[str, str]:
    path = out / VERSIONS_FILE
    if not path.is_file():
        return {}
    return dict(line.split("\t", 1) for line in path.read_text().splitlines() if "\t" in line)


def versions_line(versions: dict[str, str]) -> str:
    """'Python 3.12.3, torch 2.11.0+cu130 (CUDA 13.0, cuDNN 91900), torchvision ..., timm ..., Ray ..., Optuna ...'."""
    if not versions:
        return "versions: not recorded (the imports step did not finish)"
    v = versions.get
    return (f"Python {v('python', '?')}, torch {v('torch', '?')} (CUDA {v('cuda', '?')}, cuDNN {v('cudnn', '?')}), "
            f"torchvision {v('torchvision', '?')}, timm {v('timm', '?')}, Ray {v('ray', '?')}, Optuna {v('optuna', '?')}")


def write_report(steps: list[dict[str, str]], dev_name: str, out: Path, *, dry_run: bool = False,
                 wall: float | None = None, budget: float | None = None) -> Path:
    path = out / f"gpu_check-{common.slug(dev_name)}{'-dry-run' if dry_run else ''}.md"
    out.mkdir(parents=True, exist_ok=True)
    extra = []
    tables = [(p.relative_to(out).as_posix(), "Throughput (benchmarks/throughput.py)")
              for p in sorted((out / "throughput").glob("throughput-*.md"))]
    tables += [("randaugment.md", f"RandAugment {RA_POLICY}: on the device vs timm's PIL ops"),
               ("imagefolder.md", "The user's path: image-folder data through loader workers vs on the device"),
               ("compile.md", "--compile: ViT-B compile time and steady img/s vs eager")]
    for name, title in tables:
        if (out / name).is_file():
            body = (out / name).read_text()
            extra += [f"## {title}", "", body.split("\n", 1)[1] if body.startswith("#") else body, ""]
    smi = (out / "nvidia-smi.txt").read_text().strip() if (out / "nvidia-smi.txt").is_file() else ""
    timing = f"; {wall:.0f} s wall of a {budget:.0f} s budget (the report's own seconds not counted)" if wall is not None else ""
    text = "\n".join([
        f"# GPU check on {dev_name}{' (dry run: the CPU rehearsal)' if dry_run else ''}", "",
        f"- command: `bash benchmarks/gpu_check.sh{' --dry-run' if dry_run else ''}`; {common.stamp()}{timing}",
        f"- versions that ran: {versions_line(read_versions(out))}",
        *([f"- nvidia-smi: {smi}"] if smi else []), "",
        common.md_table(steps, ["step", "result", "seconds", "reason"]), "", *extra])
    path.write_text(text)
    return path


def summary(steps: list[dict[str, str]]) -> str:
    counts = {k: sum(s["result"] == k for s in steps) for k in ("PASS", "FAIL", "SKIP")}
    total = sum(float(s["seconds"] or 0) for s in steps)
    failed_ = [s["step"] for s in steps if s["result"] == "FAIL"]
    return (f"{counts['PASS']} passed, {counts['FAIL']} failed{' (' + ', '.join(failed_) + ')' if failed_ else ''}, "
            f"{counts['SKIP']} skipped in {total:.0f} s")


def main(argv: Iterable[str] | None = None, log: Callable[[str], None] = print) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma list of steps [default: {','.join(CHECKS)}]")
    p.add_argument("--out", type=Path, required=True, help="folder for steps.tsv, the tables and the report")
    p.add_argument("--dry-run", action="store_true", help="the CPU rehearsal of every step")
    p.add_argument("--report", action="store_true", help="write the table of the recorded steps and print the summary")
    p.add_argument("--wall", type=float, default=None, help="--report: seconds the script has run so far")
    p.add_argument("--budget", type=float, default=None, help="--report: the script's budget in seconds")
    args = p.parse_args(list(argv) if argv is not None else None)
    import torch

    device = torch.device("cpu" if args.dry_run else "cuda")
    if args.report:
        steps = read_steps(args.out)
        dev_name = common.device_name(device) if args.dry_run or torch.cuda.is_available() else "no GPU"
        path = write_report(steps, dev_name, args.out, dry_run=args.dry_run, wall=args.wall, budget=args.budget)
        versions = read_versions(args.out)
        ran = f"; torch {versions['torch']}" if "torch" in versions else ""
        log(f"gpu_check{' --dry-run' if args.dry_run else ''} on {dev_name}: {summary(steps)}{ran}; table: {path.name}")
        return 1 if any(s["result"] == "FAIL" for s in steps) else 0
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in only if c not in CHECKS]
    if unknown:
        p.error(f"unknown step(s) {unknown}; choose from {', '.join(CHECKS)}")
    if not args.dry_run and not torch.cuda.is_available():
        for name in only:
            record(args.out, failed(name, "torch.cuda.is_available() is false: this step checks a GPU (--dry-run "
                                          "rehearses it on the CPU)"), 0)
        return 2
    log(f"gpu check steps {', '.join(only)} on {common.device_name(device)}, torch {torch.__version__}"
        + (" (dry run)" if args.dry_run else ""))
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp_name:
        tmp = Path(tmp_name)
        steps: dict[str, Callable[[], Check]] = {
            "zero_gpu": lambda: run_zero_gpu(tmp, log, dry_run=args.dry_run),
            "sweep": lambda: run_sweep_step(tmp, log, dry_run=args.dry_run),
            "bf16": lambda: run_bf16(log, dry_run=args.dry_run),
            "peak": lambda: run_peak(args.out, log, dry_run=args.dry_run),
            "throughput": lambda: run_throughput(tmp, args.out, log, dry_run=args.dry_run)[0],
            "randaugment": lambda: run_randaugment(args.out, log, dry_run=args.dry_run),
            "imagefolder": lambda: run_imagefolder(tmp, args.out, log, dry_run=args.dry_run),
            "compile": lambda: run_compile(args.out, log, dry_run=args.dry_run)}
        for name in only:
            t0 = time.perf_counter()
            try:
                check = steps[name]()
            except Exception as e:  # noqa: BLE001 - a crashed step is a FAIL with its reason
                check = failed(name, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            record(args.out, check, time.perf_counter() - t0)
            log(f"{check.line()} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
