"""The process a run trains in, and its device: everything process-wide the loop relies on, set
explicitly at the start of every run.

Ray reuses a worker for the next trial (`reuse_actors`), so a trial must not inherit the previous
one's torch threads, cuDNN/TF32 flags, dynamo state, GPU memory cap or cached memory. `fit()` calls
`prepare_process` first; `build_training` sets the backend flags and compiles through here.
"""

from __future__ import annotations

import gc
from collections.abc import Callable

import torch

from harness.errors import UserError
from harness.specs import RunSpec

# What fit() sets on a CPU run for the process-wide backend flags a CUDA run turns on (cuDNN autotuning,
# TF32): the values the process had when this module was imported, so a reused Ray worker's CPU trial
# does not inherit a CUDA trial's (they touch no CPU kernel: a CPU run's numbers are the same either way).
_CPU_BACKEND_FLAGS = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
                      torch.backends.cuda.matmul.allow_tf32)
_threads_before_fit: int | None = None  # torch's thread count before a fit() first changed it
_capped_devices: set[torch.device] = set()  # cards a fit() in this process capped (set_memory_share)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device", name, "CUDA is not available on this machine; use --device cpu (or auto).")
    return dev


def set_backend_flags(cuda: bool) -> None:
    """Set both ways on every build: a reused Ray worker must not carry the previous trial's."""
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls left outside autocast use tensor cores
        torch.backends.cudnn.allow_tf32 = True
    else:
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = _CPU_BACKEND_FLAGS


def compile_model(model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """torch.compile for one run, from a clean dynamo state and with fixed shapes.

    A Ray worker runs many trials in one process (reused actors; the throughput benchmark runs 224 then
    32 px): without the reset, dynamo's guards and recompile counts carry over, a second shape makes
    the default `dynamic=None` compile dynamic shapes (a decision torch also caches for later
    processes), and past the recompile limit it silently runs eager. Each run's shapes are fixed (one
    batch size, drop_last, one image size), so `dynamic=False` costs nothing."""
    torch._dynamo.reset()
    return torch.compile(model, dynamic=False)


def set_threads(threads: int | None) -> None:
    """torch's CPU threads for this run: `threads` when set; otherwise the count the process had before
    a fit() first changed it, so a reused Ray worker does not run a trial on the previous trial's count."""
    global _threads_before_fit
    if threads:
        if _threads_before_fit is None:
            _threads_before_fit = torch.get_num_threads()
        torch.set_num_threads(threads)
    elif _threads_before_fit is not None:
        torch.set_num_threads(_threads_before_fit)


def free_device_memory(device: torch.device) -> None:
    """Return the caching allocator's unused blocks to the card, after collecting what no longer has a
    reference: a reused Ray worker must not sit on the previous trial's cache while another trial
    shares its card."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def set_memory_share(device: torch.device, share: float | None) -> None:
    """Cap this process's allocations on `device` at the fraction of the card Ray granted (0 < share < 1:
    trials packed on one card then fail alone with an OOM instead of starving each other); any other
    share lifts a previous trial's cap (set both ways: the process may be a reused worker)."""
    if device.type != "cuda":
        return
    if share is not None and 0 < share < 1:
        torch.cuda.set_per_process_memory_fraction(share, device)
        _capped_devices.add(device)
    elif device in _capped_devices:  # a whole card now: lift the cap an earlier trial of this worker set
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        _capped_devices.discard(device)


def prepare_process(spec: RunSpec, gpu_share: float | None = None) -> torch.device:
    """Everything process-wide the loop relies on, set explicitly at the start of every fit (a Ray worker
    runs many trials in one process): the device (cuda:N current), torch threads, the memory share, the
    previous trial's cached memory freed. Backend flags and dynamo state are set in build_training."""
    device = resolve_device(spec.device)
    if device.type == "cuda":
        # Always an indexed device: torch's per-card calls (set_per_process_memory_fraction, ...) refuse a
        # bare "cuda", which is what a Ray trial on `device: auto` gets (its granted card is cuda:0).
        device = torch.device("cuda", device.index if device.index is not None else torch.cuda.current_device())
        # cuda:N the current device before anything is built: the streams, events (the divergence
        # check's, CUDA timing) and cuDNN/cuBLAS handles that take "the current device" are N's, not cuda:0's.
        torch.cuda.set_device(device)
    set_threads(spec.threads)
    free_device_memory(device)
    set_memory_share(device, gpu_share)
    return device


def nhwc_by_default(family: str, cuda: bool) -> bool:
    """Channels-last where it is faster. On CUDA, the CNNs: cuDNN's tensor-core convolutions want NHWC.
    On the CPU, only the depthwise-separable family: oneDNN's NHWC depthwise kernels made an
    efficientnet_b0 training step at 16 px 2.0x faster and its evaluation 4x (one thread, Intel Xeon,
    2026-12-07), while resnet18 got no faster (0.12 s a step NCHW, 0.13 s NHWC). Transformers: no convolutions
    to speak of. A changed layout changes the summation order, so the last digits move, as on another
    machine: what seeds are for."""
    if cuda:
        return family in ("resnet", "efficientnet")
    return family == "efficientnet"
