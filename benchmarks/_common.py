"""What the benchmark scripts share: the device's name and peak, timing on the device, tables.

Imported by benchmarks/throughput.py, packing.py, loader.py and gpu_check.py (each run as a
script from the repository root, or loaded by the tests). torch is imported where a function
needs it, so the pure parts (the peak table, the tables) load without it.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import os
import platform
import re
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"


def importable_harness() -> None:
    """Run as a script from anywhere: put the checkout first on sys.path so `import harness` finds it."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


# Dense (no structured sparsity) bf16 tensor-core peaks in TFLOPS, per GPU, from NVIDIA's datasheets.
# The datasheets print the sparse figure with an asterisk ("with sparsity"); dense is half of it:
# - H100 SXM 1,979* -> 989.4; H100 PCIe 1,513* -> 756; H100 NVL 1,671* -> 835 (H100 datasheet,
#   nvidia.com/en-us/data-center/h100, "H100 NVL" column is per GPU)
# - H200 SXM 1,979* -> 989.4; H200 NVL 1,671* -> 835 (H200 datasheet, nvidia.com/en-us/data-center/h200)
# - GH200 (its H100/H200 is the SXM part) 989.4 (GH200 datasheet); B200 4.5 PF* -> 2,250 (HGX B200)
# - A100 624* -> 312; A10 250* -> 125; L40S 733* -> 362; L4 242* -> 121 (each card's datasheet)
# - A10G (AWS's A10 variant) 70: AWS G5 documentation; RTX 4090 165.2 and RTX 3090 71 (FP32 accumulate):
#   the Ada and Ampere GA102 architecture whitepapers
# The longest name contained in the device's name wins, so "H200 NVL" beats "H200", "L40S" beats
# "L4", "GH200" beats "H200" (CUDA reports e.g. "NVIDIA H200 NVL", "NVIDIA H100 80GB HBM3").
# Anything else: pass --peak-tflops.
PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4,
    "H200 NVL": 835.0, "H200": 989.4, "GH200": 989.4,
    "B200": 2250.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0,
    "RTX 4090": 165.2, "RTX 3090": 71.0,
}


def peak_tflops(name: str) -> float | None:
    """The dense bf16 peak of the GPU called `name` (as torch.cuda.get_device_name gives it), or None."""
    hits = [key for key in PEAK_TFLOPS if key.lower() in name.lower()]
    return PEAK_TFLOPS[max(hits, key=len)] if hits else None


def mfu_pct(fwd_gflops: float, images_per_s: float, peak: float) -> float:
    """Model FLOPs utilisation in %: training = 3 x forward FLOPs (forward + a backward of twice its cost),
    forward FLOPs counted at 2 per multiply-accumulate (so 3 x FLOPs = 6 x MACs), over the peak."""
    return 100 * 3 * fwd_gflops * 1e9 * images_per_s / (peak * 1e12)


def device_name(device: torch.device) -> str:
    import torch

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


def working_device(device: torch.device) -> torch.device:
    """The device with its index, made the process's current one on CUDA: kernels and events launched
    without a device then go to the card the benchmark times. `cuda` alone means the current card
    (torch.cuda.set_device refuses a device without an index)."""
    import torch

    if device.type != "cuda":
        return device
    if device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    torch.cuda.set_device(device)
    return device


def sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_s(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds for fn() to finish on the device: CUDA events on a GPU, a wall clock on the CPU.

    The events are created and recorded on `device`'s current stream, not on the process's current
    device: with --device cuda:1 they would otherwise time cuda:0's (empty) stream, i.e. the host."""
    import torch

    if device.type == "cuda":
        with torch.cuda.device(device):
            stream = torch.cuda.current_stream(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            sync(device)
            start.record(stream)
            fn()
            end.record(stream)
            end.synchronize()
            return start.elapsed_time(end) / 1000
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def md_table(rows: Iterable[dict[str, Any]], columns: list[str]) -> str:
    def cell(v: Any) -> str:
        return "" if v is None else (f"{v:g}" if isinstance(v, float) else str(v))

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})


def stamp() -> str:
    """When and under what load a table was measured (a number without its load means little)."""
    return f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; load average {os.getloadavg()[0]:.2f}"


def command_line(script: str, argv: list[str]) -> str:
    return " ".join(["uv run python", f"benchmarks/{script}", *argv])
