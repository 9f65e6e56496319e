"""Packing small trials on one GPU: 4 trials one after another (1 GPU each) against 4 at once
(0.25 GPU each), wall time and GPU utilisation.

    uv run python benchmarks/packing.py                      # through harness.engine.run_trials (Ray Tune)
    uv run python benchmarks/packing.py --processes          # one plain process per trial, no Ray

Each trial is a sweep-like run: `fit()` of --model (own fitted recipe) on 32 px data for --epochs.
Via Ray the trials go through `harness.engine.run_trials`, the sweeps' own path, with Ray's
fractional GPUs doing the packing, and their times are read back from the run's results database
(`harness.tables`). With --processes (or where Ray is not installed) each trial runs `run_trial`
in its own spawned process (`multiprocessing`, as a Ray worker would be). On a CPU it says it
needs a GPU and exits 0. Results: benchmarks/results/packing-<gpu>.{md,csv}.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import multiprocessing
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/_common.py, as a script or from the tests
import _common as common  # noqa: E402

common.importable_harness()

from harness import data as data_mod  # noqa: E402
from harness.process import resolve_device  # noqa: E402
from harness.specs import resolve_run  # noqa: E402

TRIALS = 4  # the case: four small trials sharing one card (--trials)
SYNTHETIC_IMAGES = 10_000  # CIFAR-sized training set for --data synthetic
TARGET_UTIL_PCT = 85.0  # issue target: a 32 px sweep keeps the GPU >= 85% busy
SPEEDUP_WORTH_IT = 1.05  # packed must finish at least 5% sooner to recommend packing


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


def trial_data(data: str, train_size: int | None) -> data_mod.DataSpec:
    return data_mod.DataSpec(name=data, image_size=32, train_size=train_size)


def packing_specs(args: argparse.Namespace, device: str = "cuda") -> list[Any]:
    data = trial_data(args.data, args.train_size)
    return [resolve_run(model=args.model, recipe="fitted", data=data, epochs=args.epochs, seed=i,
                        device=device, compile=args.compile, eval_samples=0) for i in range(args.trials)]


def run_trial(spec: Any) -> dict[str, float | None]:
    """One sweep-like trial in this process: fit() on 32 px data; its wall time and median images/s.
    The --processes path runs it in a spawned process per trial (a fresh CUDA context, as a Ray worker)."""
    from harness.train import fit

    result = fit(spec)
    return {"fit_s": result.wall_s, "images_per_s": statistics.median(h["images_per_s"] for h in result.history),
            "val_acc": result.final_val_acc}


def pack_with_ray(args: argparse.Namespace, mode: str, tmp: Path, log: Callable[[str], None], *,
                  device: str = "cuda", gpu_per_trial: float | None = None) -> dict[str, Any]:
    """The trials through harness.engine.run_trials, the sweeps' own path: 1 GPU each one at a time, or
    1/trials GPU each all at once (Ray fractional resources, floored: 7 x round(1/7, 3) > 1 GPU);
    times read back with harness.tables."""
    import os

    from harness import tables as report
    from harness.engine import Experiment, Trials, run_trials
    from harness.specs import ResourcesSpec

    cpus = max(1, (os.cpu_count() or args.trials) // args.trials)
    concurrency, gpu = (1, 1.0) if mode == "sequential" else (args.trials, math.floor(1000 / args.trials) / 1000)
    gpu = gpu if gpu_per_trial is None else gpu_per_trial
    db = f"sqlite:///{tmp / f'{mode}.db'}"
    trials = Trials.grid(packing_specs(args, device), concurrency=concurrency, resources=ResourcesSpec(cpu=cpus, gpu=gpu))
    exp = run_trials(trials, db=db, storage_path=tmp / "ray",
                     experiment=Experiment("benchmark", f"packing-{mode}"), echo=log).experiment_id
    store = report.open_reader(db)
    try:
        runs = report.read_runs(store, exp)
    finally:
        store.close()
    ok = runs[runs["status"] == "completed"]
    return {"fit_s": ok["wall_s"].dropna().tolist(), "img_s": ok["images_per_s"].dropna().tolist(),
            "errors": [f"{r.status}: {r.error}" for r in runs.itertuples() if r.status != "completed"],
            "gpu_per_trial": gpu}


def pack_with_processes(args: argparse.Namespace, mode: str, device: str) -> dict[str, Any]:
    """Without Ray: each trial `run_trial` in its own spawned process (CUDA cannot be forked), one at a
    time or all at once; a fresh process per trial (max_tasks_per_child=1), as each Ray trial gets."""
    ctx = multiprocessing.get_context("spawn")
    fits, errors = [], []
    with ProcessPoolExecutor(max_workers=1 if mode == "sequential" else args.trials, mp_context=ctx,
                             max_tasks_per_child=1) as pool:
        futures = [pool.submit(run_trial, spec) for spec in packing_specs(args, device)]
        for f in futures:
            try:
                fits.append(f.result())
            except Exception as e:  # noqa: BLE001 - a failed trial is a row's error, not the end of the benchmark
                errors.append(f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
    return {"fit_s": [f["fit_s"] for f in fits], "img_s": [f["images_per_s"] for f in fits], "errors": errors,
            "gpu_per_trial": "process"}


def packing(args: argparse.Namespace, device: torch.device, dev_name: str, log: Callable[[str], None]) -> int:
    if device.type != "cuda":
        log("packing needs a CUDA GPU: it measures 4 trials sharing one card against 4 in a row. "
            "Nothing measured on this device.")
        return 0
    how = "processes" if args.processes else "ray"
    if how == "ray":
        try:
            import harness.engine  # noqa: F401  (Ray; the GPU image may lack it: then plain processes)
        except ImportError:
            how = "processes"
    index = device.index or 0
    rows = []
    for mode in ("sequential", "concurrent"):
        with tempfile.TemporaryDirectory() as tmp, UtilSampler(index) as util:
            t0 = time.perf_counter()
            r = pack_with_ray(args, mode, Path(tmp), log) if how == "ray" else pack_with_processes(args, mode, str(device))
            wall = time.perf_counter() - t0
        rows.append({"mode": mode, "trials": args.trials, "via": how, "gpu_per_trial": r["gpu_per_trial"],
                     "wall_s": round(wall, 1),
                     "mean_fit_s": round(statistics.mean(r["fit_s"]), 1) if r["fit_s"] else None,
                     "mean_trial_img_s": round(statistics.mean(r["img_s"]), 1) if r["img_s"] else None,
                     "gpu_util_mean_pct": util.mean(), "util_samples": len(util.samples), "error": "; ".join(r["errors"])})
        log(f"  {mode}: {rows[-1]}")
    speedup = rows[0]["wall_s"] / rows[1]["wall_s"]
    stem = f"packing-{common.device_slug(device, dev_name)}"
    common.write_csv(args.out / f"{stem}.csv", rows, list(rows[0]))
    verdict = (f"pack {args.trials} per GPU (resources.gpu: {rows[1]['gpu_per_trial']})" if speedup > SPEEDUP_WORTH_IT
               else "run trials one per GPU (resources.gpu: 1): packing did not help")
    util_c = rows[1]["gpu_util_mean_pct"]
    text = "\n".join([
        f"# Packing {args.trials} small trials on {dev_name}", "",
        f"- command: `{common.command_line('packing.py', args.argv)}`",
        f"- trial: {args.model}, own fitted recipe, {args.data} at 32 px ({args.train_size or 'all'} images), {args.epochs} epochs, "
        f"{'torch.compile' if args.compile else 'eager'}; via "
        f"{'harness.engine.run_trials (Ray Tune)' if how == 'ray' else 'one spawned process per trial'}",
        f"- {common.stamp()}; GPU utilisation from nvidia-smi every 0.5 s", "",
        common.md_table(rows, list(rows[0])), "",
        f"{args.trials} concurrent finish {speedup:.2f}x sooner than {args.trials} in a row: {verdict}.",
        f"Target: a 32 px sweep keeps the GPU >= {TARGET_UTIL_PCT:g}% busy: "
        f"{'n/a' if util_c is None else ('met' if util_c >= TARGET_UTIL_PCT else 'missed')} ({util_c}% packed).", ""])
    (args.out / f"{stem}.md").write_text(text)
    log(text)
    log(f"results: {args.out / (stem + '.md')}, {args.out / (stem + '.csv')}")
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=f"Target: a 32 px sweep keeps the GPU >= {TARGET_UTIL_PCT:g}% busy.")
    p.add_argument("--trials", type=int, default=TRIALS, help=f"trials per mode [default: {TRIALS}]")
    p.add_argument("--model", default="resnet18", help="the trials' model [default: resnet18]")
    p.add_argument("--data", default="synthetic", choices=["synthetic", "digits"],
                   help=f"32 px data (synthetic = {SYNTHETIC_IMAGES:,} CIFAR-sized images) [default: synthetic]")
    p.add_argument("--epochs", type=int, default=5, help="epochs per trial [default: 5]")
    p.add_argument("--train-size", type=int, default=None,
                   help=f"training images per trial [default: synthetic {SYNTHETIC_IMAGES:,}; digits all]")
    p.add_argument("--processes", action="store_true",
                   help="one spawned process per trial instead of harness.engine.run_trials (Ray)")
    p.add_argument("--compile", action="store_true", help="torch.compile each trial's model")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--out", type=Path, default=common.RESULTS, help="folder for the table [default: benchmarks/results]")
    args = p.parse_args(argv)
    args.argv = argv
    if args.train_size is None and args.data == "synthetic":
        args.train_size = SYNTHETIC_IMAGES
    return args


def main(argv: list[str] | None = None, log: Callable[[str], None] = print) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device = common.working_device(resolve_device(args.device))
    return packing(args, device, common.device_name(device), log)


if __name__ == "__main__":
    sys.exit(main())
