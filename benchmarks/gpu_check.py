"""What CPU tests cannot check, checked on a GPU machine in minutes (run it through gpu_check.sh).

    bash benchmarks/gpu_check.sh            # every check; the table -> benchmarks/results/gpu_check-<gpu>.md
    uv run python benchmarks/gpu_check.py --only throughput,bf16

Checks (each prints PASS or FAIL with its reason; the exit status is 1 when any fails):

- fractional: `harness benchmark` on a 2-run grid with `resources: {gpu: 0.5}` and concurrency 2.
  From results.db (`runs.gpus`: the cards Ray granted each trial, "<id>: <name>") each run was
  granted a card that CUDA could name; from nvidia-smi, sampled during the grid, Ray's trial
  processes used only granted cards (and every granted card was used).
- zero_gpu: a trial granted no GPU (`resources: {gpu: 0}` through harness.engine.run_grid:
  `harness benchmark` itself shares the card when a grid asks for none on a GPU machine) records
  no card and no Ray trial process appears on any GPU while it runs.
- bf16: a few bf16 training steps of each full model (resnet50, efficientnet_b3, vit_base,
  swin_tiny) at 224 px through harness.train: finite loss, autocast on.
- throughput: benchmarks/throughput.py at 224 px, with RandAugment on both sides (reference_full
  = timm's own loader), every row measured, MFU filled in where the peak is known.

This module's check functions are pure (a runs table in, a Check out) and tested on CPU with a
fake database (tests/test_gpu_check.py); what they read is measured only on a GPU.
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
CHECKS = ("fractional", "zero_gpu", "bf16", "throughput")
# The fractional check's grid asks for gpu: auto, as the shipped grids do: on a GPU machine harness then
# shares the cards (specs.share_cards): 2 trials get half a card each on one card, a card
# each on two or more, so "both on one card while another idles" is a failure on a multi-GPU node. A grid
# that asks for gpu: 0.5 itself would stack on card 0 there: Ray places fractions first-fit.
FRACTION = 0.5  # the share each of the 2 trials gets on a one-card machine
BF16_STEPS = 3  # training steps per full model: enough to see a finite loss after an update
BF16_BATCH = 32
RAY_PROCESS_PREFIX = "ray::"  # Ray names its worker processes "ray::<task>" (setproctitle)

# The fractional check's grid: two CPU stand-in runs (naive and tuned resnet18) of one epoch on 512
# synthetic 32 px images -- what is checked is where they run, not what they learn.
FRACTIONAL_GRID = """\
name: gpu_check_fractional
description: two fractional trials, each should land on a card Ray granted it (benchmarks/gpu_check.py)
models: [resnet50]
recipes: [naive, tuned]
epochs: 1
seeds: 1
batch_size: 64
data: {name: synthetic, image_size: 32, train_size: 512}
scale: tiny
concurrency: 2
resources: {cpu: 1, gpu: auto}
"""


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


def check_fractional(runs: Any, *, used_cards: set[str] | None, cards: int) -> Check:
    """`runs`: harness.report.read_runs of the fractional grid. `used_cards`: GPU indices on which
    nvidia-smi saw a Ray trial process during the grid (None = nvidia-smi showed no processes at all,
    e.g. inside a container's PID namespace: then only the database's record is checked)."""
    name = "fractional"
    if len(runs) != 2:
        return failed(name, f"expected 2 runs in the grid's experiment, found {len(runs)}")
    bad = [f"run {r.id} {r.status}: {r.error or ''}".strip() for r in runs.itertuples() if r.status != "completed"]
    if bad:
        return failed(name, "; ".join(bad))
    grants = {int(r.id): granted_ids(r.gpus) for r in runs.itertuples()}
    if any(not ids for ids in grants.values()):
        return failed(name, f"a trial of a grid harness shares over the cards was granted no card (Ray ids by run: "
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
        return failed(name, f"both trials were put on card {next(iter(granted))} while {cards - 1} other card(s) idled "
                            f"({detail}): fractional shares should spread over a multi-GPU node (issue 23 item 6)")
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
                            "the trial trained on the GPU behind Ray's back (issue 23 item 1)")
    evidence = ("and nvidia-smi saw no Ray process on any card" if used_cards is not None
                else "(nvidia-smi listed no processes: runs.gpus only)")
    return passed(name, f"{len(runs)} run(s) granted no card, completed {evidence}")


def check_bf16(results: dict[str, dict[str, Any]]) -> Check:
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
                  f" ({BF16_STEPS} steps, batch {BF16_BATCH}, 224 px)")


def check_throughput(rows: list[dict[str, str]], *, peak_known: bool) -> Check:
    """`rows`: benchmarks/throughput.py's CSV. Every model measured on all four paths (RandAugment on in
    reference_full and harness_full), MFU filled in when the device's peak is known."""
    name = "throughput"
    if not rows:
        return failed(name, "no rows")
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
    return passed(name, ", ".join(f"{r['runs_as']} ratio {r['ratio']} / full {r['ratio_full']}" for r in rows))


# --- measuring -------------------------------------------------------------------------------------------

class GpuProcesses:
    """Which GPUs Ray's trial processes use, from nvidia-smi every `every` s while the block runs.
    `cards()` is the set of GPU indices, or None when nvidia-smi listed no compute process at all
    (a container may hide other processes: then there is no evidence either way)."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.any_process, self.ray_cards = every, False, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._index = self._uuid_to_index()

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
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def cards(self) -> set[str] | None:
        return set(self.ray_cards) if self.any_process or self.ray_cards else None


def read_runs(db: str) -> Any:
    """Every run in the database, through harness's own reader."""
    from harness import report

    store = report.open_reader(db)
    try:
        return report.read_runs(store)
    finally:
        store.close()


def harness_command() -> list[str]:
    """`harness` as this Python runs it (the uv venv's, or the image's python3 with the wheels on PYTHONPATH)."""
    return [sys.executable, "-c", "import sys; from harness.cli import main; sys.exit(main())"]


def run_fractional(tmp: Path, log: Callable[[str], None]) -> Check:
    import torch

    grid = tmp / "fractional.yaml"
    grid.write_text(FRACTIONAL_GRID)
    db = f"sqlite:///{tmp / 'fractional.db'}"
    cmd = [*harness_command(), "benchmark", str(grid), "--db", db, "--out", str(tmp / "pages"),
           "--storage-path", str(tmp / "ray_fractional")]
    with GpuProcesses() as procs:
        done = subprocess.run(cmd, capture_output=True, text=True)
    log(done.stdout[-2000:])
    if done.returncode != 0:
        return failed("fractional", f"harness benchmark exited {done.returncode}: {done.stderr.strip()[-300:]}")
    return check_fractional(read_runs(db), used_cards=procs.cards(), cards=torch.cuda.device_count())


def zero_gpu_grid(db: str, storage: str) -> None:
    """One CPU stand-in trial granted no GPU, through the engine (in a spawned process: a clean driver)."""
    from harness import data as data_mod
    from harness.engine import Experiment, run_grid
    from harness.specs import ResourcesSpec, resolve_run

    data = data_mod.DataSpec(name="synthetic", image_size=32, train_size=512)
    spec = resolve_run(model="resnet18", recipe="tuned", data=data, epochs=1, eval_samples=0)
    run_grid([spec], db=db, experiment=Experiment("benchmark", "gpu_check_zero_gpu"), concurrency=1,
             resources=ResourcesSpec(cpu=1, gpu=0), storage_path=storage)


def run_zero_gpu(tmp: Path, log: Callable[[str], None]) -> Check:
    db = f"sqlite:///{tmp / 'zero_gpu.db'}"
    proc = multiprocessing.get_context("spawn").Process(target=zero_gpu_grid, args=(db, str(tmp / "ray_zero")))
    with GpuProcesses() as procs:
        proc.start()
        proc.join()
    if proc.exitcode != 0:
        return failed("zero_gpu", f"the 0-GPU grid exited {proc.exitcode}")
    return check_zero_gpu(read_runs(db), used_cards=procs.cards())


def bf16_steps(model: str, device: Any, *, image_size: int = 224, batch: int = BF16_BATCH) -> dict[str, Any]:
    """BF16_STEPS training steps of `model` through harness.train (build_training + train_epoch, the loop
    fit() runs) with its family's published recipe: the mean loss, the steps taken, whether autocast was on."""
    import torch

    from harness import data as data_mod
    from harness.specs import resolve_run
    from harness.train import build_training, train_epoch

    # Half a batch spare: however the set's split rounds, BF16_STEPS full batches remain.
    data = data_mod.DataSpec(name="synthetic", image_size=image_size, train_size=batch * BF16_STEPS + batch // 2,
                             val_fraction=0.02)
    spec = resolve_run(model=model, recipe="tuned@published", data=data, overrides={"batch_size": batch},
                       epochs=1, device=str(device))
    ds = data_mod.load(spec.data, device)
    t = build_training(spec, ds, device)
    sums, _ = train_epoch(t, ds.train, torch.Generator(device=device).manual_seed(0), 0)
    return {"loss": float(sums.loss_sum) / max(sums.seen, 1), "steps": sums.steps, "amp": t.use_amp, "error": ""}


def run_bf16(log: Callable[[str], None]) -> Check:
    import torch

    results: dict[str, dict[str, Any]] = {}
    for model in FULL_MODELS:
        try:
            results[model] = bf16_steps(model, torch.device("cuda"))
        except Exception as e:  # noqa: BLE001 - one model failing is this check's finding, not the end of the script
            results[model] = {"loss": None, "steps": 0, "amp": False, "error": f"{type(e).__name__}: {str(e)[:200]}"}
        finally:
            torch.cuda.empty_cache()
        log(f"  bf16 {model}: {results[model]}")
    return check_bf16(results)


def run_throughput(tmp: Path, log: Callable[[str], None]) -> tuple[Check, str]:
    import torch

    import throughput

    out = tmp / "throughput"
    throughput.main(["--models", ",".join(FULL_MODELS), "--image-sizes", "224", "--steps", "10", "--repeats", "3",
                     "--out", str(out)], log=log)
    (csv_path,) = out.glob("throughput-*.csv")
    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    peak = common.peak_tflops(torch.cuda.get_device_name())
    md = next(out.glob("throughput-*.md")).read_text()
    return check_throughput(rows, peak_known=peak is not None), md


def write_report(checks: list[Check], dev_name: str, out: Path, throughput_md: str) -> Path:
    path = out / f"gpu_check-{common.slug(dev_name)}.md"
    out.mkdir(parents=True, exist_ok=True)
    text = "\n".join([
        f"# GPU check on {dev_name}", "",
        f"- command: `bash benchmarks/gpu_check.sh`; {common.stamp()}", "",
        common.md_table([{"check": c.name, "result": c.status, "reason": c.reason} for c in checks],
                        ["check", "result", "reason"]), "",
        *(["## Throughput (benchmarks/throughput.py at 224 px)", "", throughput_md.split("\n", 1)[1]] if throughput_md else []),
        ""])
    path.write_text(text)
    return path


def main(argv: Iterable[str] | None = None, log: Callable[[str], None] = print) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(CHECKS), help=f"comma list of checks [default: {','.join(CHECKS)}]")
    p.add_argument("--out", type=Path, default=common.RESULTS, help="folder for gpu_check-<gpu>.md")
    args = p.parse_args(list(argv) if argv is not None else None)
    only = [c.strip() for c in args.only.split(",") if c.strip()]
    unknown = [c for c in only if c not in CHECKS]
    if unknown:
        p.error(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    import torch

    if not torch.cuda.is_available():
        log("FAIL cuda: torch.cuda.is_available() is false: this script checks a GPU machine (no check ran)")
        return 2  # the machine, not a check, is wrong (gpu_check.sh's setup failures exit 2 too)
    dev_name = torch.cuda.get_device_name()
    log(f"gpu check on {dev_name} ({torch.cuda.device_count()} visible), torch {torch.__version__}")
    checks: list[Check] = []
    throughput_md = ""
    with tempfile.TemporaryDirectory(prefix="gpu_check-") as tmp_name:
        tmp = Path(tmp_name)
        # The Ray checks first, before this process makes a CUDA context of its own.
        steps: dict[str, Callable[[], Check]] = {
            "zero_gpu": lambda: run_zero_gpu(tmp, log), "fractional": lambda: run_fractional(tmp, log),
            "bf16": lambda: run_bf16(log)}
        for name in ("zero_gpu", "fractional", "bf16"):
            if name in only:
                t0 = time.perf_counter()
                try:
                    check = steps[name]()
                except Exception as e:  # noqa: BLE001 - a crashed check is a FAIL with its reason
                    check = failed(name, f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
                checks.append(check)
                log(f"{check.line()} ({time.perf_counter() - t0:.0f} s)")
        if "throughput" in only:
            try:
                check, throughput_md = run_throughput(tmp, log)
            except Exception as e:  # noqa: BLE001
                check = failed("throughput", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
            checks.append(check)
            log(check.line())
    path = write_report(checks, dev_name, args.out, throughput_md)
    log("")
    for c in checks:
        log(c.line())
    log(f"table: {path}")
    return 1 if any(c.status != "PASS" for c in checks) else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
