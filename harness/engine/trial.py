"""The trial side: what runs inside a Ray worker.

`_trainable` is one trial: `train.fit()` with an `on_epoch` that hands every epoch (and the trial's
last.pt/best.pt as a Ray checkpoint) to `ray.tune.report`. A retried or resumed trial gets its
checkpoint back through `ray.tune.get_checkpoint()` and continues at epoch k+1. Workers are reused
across trials (`reuse_actors`), so everything process-wide a trial relies on is set by `fit()` at
its start, never inherited from the previous trial. `make_spec` turns a trial's Ray config back into
its `RunSpec`: `GridSpecs` for a fixed grid, `sweep.SweepSpecs` for sampled configs.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import ray
from ray import tune

from harness.data import gpu_trial_workers
from harness.errors import UserError
from harness.files import pid_alive
from harness.specs import RunSpec
from harness.train import EpochReport, fit, keep_weights_only

OPTUNA_KEY = "_optuna_trial"  # added to each sampled config by the searcher: the Optuna trial number
WHERE = ("node", "node_id", "gpus")  # where a trial ran: in every result, stored by the recorder


def where_am_i() -> dict[str, str | None]:
    """The machine a trial runs on, as the store records it (`runner.where_it_runs`), with its Ray
    node id and the GPU ids Ray granted it."""
    from harness.runner import where_it_runs

    return where_it_runs(gpu_ids=ray.get_gpu_ids(), node_id=ray.get_runtime_context().get_node_id())


def granted_gpus() -> float:
    """The GPUs Ray granted this trial (`resources.gpu`: 0.5 for half a card)."""
    return ray.get_runtime_context().get_assigned_resources().get("GPU", 0)


def granted_gpu_share() -> float | None:
    """The fraction of one card Ray granted this trial (`resources.gpu` below 1), for `fit` to cap its
    memory at (None: no GPU, or one card or more, which the trial has to itself)."""
    gpu = granted_gpus()
    return gpu if 0 < gpu < 1 else None


def node_gpus() -> float:
    """The GPUs of the node this trial runs on, as Ray counts them."""
    me = ray.get_runtime_context().get_node_id()
    return next((n["Resources"].get("GPU", 0) for n in ray.nodes() if n.get("NodeID") == me), 0)


class SpecMaker(Protocol):
    """A trial's Ray config -> its RunSpec (and a one-line label for the log)."""

    def __call__(self, config: dict[str, Any]) -> RunSpec: ...
    def label(self, config: dict[str, Any]) -> str: ...


@dataclass(frozen=True)
class GridSpecs:
    """config {'run': i} -> the i-th RunSpec of a fixed grid (benchmark, ablate)."""

    runs: tuple[RunSpec, ...]

    def __call__(self, config: dict[str, Any]) -> RunSpec:
        return self.runs[int(config["run"])]

    def label(self, config: dict[str, Any]) -> str:
        s = self(config)
        lr = f" / lr {s.tags['lr_point']} ({s.recipe.scaled_lr():.2g})" if "lr_point" in s.tags else ""
        return f"{s.label()} / {s.recipe.label()}{lr} / seed {s.seed}"


def device_for_grant(requested: str, gpu_ids: list, cuda_available: bool) -> str:
    """The device a Ray trial trains on, from what Ray granted it (`ray.get_gpu_ids()`), not from
    whether this process can see a GPU: Ray 2.60 leaves CUDA_VISIBLE_DEVICES untouched for a trial
    granted 0 GPUs (ray/_private/utils.py `set_visible_accelerator_ids` skips it unless
    RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1), so `cuda.is_available()` is true in a CPU trial on a GPU machine.

    - "auto": no GPU granted -> "cpu"; granted (a fraction shows as one id, e.g. ['0'] for gpu: 0.5)
      -> "cuda", which is the granted card: Ray sets CUDA_VISIBLE_DEVICES to the grant, so torch
      numbers the granted cards from cuda:0. Granted but CUDA unusable here -> the trial fails with the
      reason (training on the CPU would hold a card nobody uses and pass off CPU numbers as GPU ones).
    - "cpu": stays "cpu" (asked for explicitly, even with a grant).
    - "cuda" / "cuda:N" asked for explicitly: kept when the trial was granted a card for it; N counts
      the granted cards only (cuda:1 needs a grant of 2 GPUs). A CUDA device the trial was not
      granted is refused: it would train on a card Ray gave to another trial (or to nobody).
    """
    if requested == "auto":
        if gpu_ids and not cuda_available:
            raise RuntimeError(f"Ray granted this trial GPU {', '.join(map(str, gpu_ids))} but torch cannot use CUDA in "
                               "its worker (torch.cuda.is_available() is false: a CPU-only torch, or a driver the worker "
                               "cannot reach); fix the worker's CUDA, or set resources.gpu: 0 to train on the CPU.")
        return "cuda" if gpu_ids else "cpu"
    if not requested.startswith("cuda"):
        return requested
    tail = requested.partition(":")[2]
    if tail and not tail.isdigit():
        return requested  # not a device: process.resolve_device refuses it with torch's own message
    index = int(tail or 0)
    if index >= len(gpu_ids):
        granted = f"{len(gpu_ids)} GPU{'s' if len(gpu_ids) != 1 else ''} (visible to it as cuda:0..cuda:{len(gpu_ids) - 1})" \
            if gpu_ids else "no GPU"
        raise UserError("device", requested, f"this trial was granted {granted}; use device auto (the granted card), "
                        "or ask for more GPUs per trial in resources.gpu.")
    return requested


def trial_name(trial: Any) -> str:
    """'trial_7' (the Optuna trial number, as optuna-dashboard shows it) or 'run_3' (grid index)."""
    c = trial.config or {}
    if OPTUNA_KEY in c:
        return f"trial_{c[OPTUNA_KEY]}"
    if "run" in c:
        return f"run_{c['run']}"
    return f"trial_{str(trial.experiment_tag).split('_')[0]}"


TRIAL_PREFIX = "harness-trial-"  # + the worker's pid + "-": a trial's working copy of its checkpoints


def reap_orphans(tmpdir: Path) -> list[Path]:
    """Remove the working copies of trials killed with -9 (a TemporaryDirectory a SIGKILL cannot clean up,
    up to 4x the weights each): every folder is named for its worker's pid, and those whose process is
    gone are removed. A live pid (or a reused one) keeps its folder: never a running trial's."""
    gone = []
    for d in tmpdir.glob(f"{TRIAL_PREFIX}*-*"):
        pid = d.name[len(TRIAL_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    return gone


def _trainable(config: dict[str, Any], *, make_spec: SpecMaker) -> None:
    """One Ray trial: fit() reporting every epoch to Tune, with last.pt/best.pt as the checkpoint."""
    spec = make_spec(config)
    reap_orphans(Path(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory(prefix=f"{TRIAL_PREFIX}{os.getpid()}-") as tmp:
        local = Path(tmp)
        spec = spec.model_copy(update={"checkpoint_dir": local})
        resume = None
        restored = tune.get_checkpoint()  # set when Ray retries (max_failures) or --resume continues it
        if restored is not None:
            with restored.as_directory() as d:
                for f in ("last.pt", "best.pt"):
                    if (Path(d) / f).is_file():
                        shutil.copy2(Path(d) / f, local / f)
            resume = local / "last.pt" if (local / "last.pt").is_file() else None

        where = where_am_i()
        import torch

        grant = ray.get_gpu_ids()
        spec = spec.model_copy(update={"device": device_for_grant(spec.device, grant, torch.cuda.is_available())})
        if not spec.device.startswith("cuda"):  # granted a card but trains on the CPU: it used none
            where["gpus"] = ""
        elif spec.data.workers is None:  # folder data decoded by the host's cores, as many as the trial's card share
            workers = gpu_trial_workers(os.cpu_count() or 1, node_gpus=node_gpus(), granted_gpus=granted_gpus())
            spec = spec.model_copy(update={"data": spec.data.model_copy(update={"workers": workers})})

        share = granted_gpu_share()

        def on_epoch(r: EpochReport) -> None:
            metrics: dict[str, Any] = {**r.metrics, "epoch": r.epoch, "status": r.status, **where}
            if r.evaluation is not None:
                metrics["evaluation"] = r.evaluation  # popped by the driver's recorder (kept out of Ray's logs)
            if r.test is not None:
                metrics["test"] = r.test  # popped too: the test split's scores, recorded on the run
            if r.status == "completed" and r.checkpoint is not None:
                keep_weights_only(r.checkpoint)  # nothing resumes a completed trial: its storage keeps weights
            # Ray copies the folder to the trial's storage (synchronously) before this returns.
            ckpt = tune.Checkpoint.from_directory(str(local)) if r.checkpoint is not None else None
            tune.report(metrics, checkpoint=ckpt)

        fit(spec, on_epoch, resume=resume, gpu_share=share)

