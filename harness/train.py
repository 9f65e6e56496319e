"""The one training loop. No Ray, no Optuna, no database: a resolved `RunSpec` in, one
`EpochReport` per epoch out through the `on_epoch` callable, a `RunResult` back.

`harness train`, every benchmark run and every sweep trial call `fit()`; so do the tests.
`fit()` = `prepare_process()` (what a reused Ray worker must not carry over from its previous trial:
device, threads, GPU memory share and cache), then `build_training()` once, then per epoch
`train_epoch()` (the GPU path: data resident on the device, on-device augmentation, no host sync per
step), evaluation, checkpoint, on_epoch.
benchmarks/throughput.py times `train_epoch()` itself against a plain timm loop.

The process state is set in `process.py`, the per-class evaluation is in `evaluate.py`; checkpoints and
resuming stay here, beside the loop whose state they hold.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness import data as data_mod
from harness import plugins
from harness.errors import UserError
from harness.evaluate import evaluate, evaluate_classes, score_test
from harness.files import clean_stale_temps, write_atomic
from harness.models import build_model, get_model_entry
from harness.process import compile_model, free_device_memory, nhwc_by_default, prepare_process, set_backend_flags
from harness.recipes import build_loss, build_mixup, build_optimizer, build_scheduler
from harness.specs import RunSpec

NAN_CHECK_EVERY = 20  # steps between loss finiteness checks (each check is one device sync)
# The optimizer flags that say how its step runs on the device it was built for, not what it learned:
# a checkpoint's values are not carried over (a CPU checkpoint would make a GPU run's AdamW non-fused).
OPTIMIZER_DEVICE_FLAGS = ("fused", "foreach", "capturable")


@dataclass
class EpochReport:
    epoch: int  # 1-based
    metrics: dict[str, float]  # the store's EPOCH_METRICS
    checkpoint: Path | None  # last.pt as of this epoch, when checkpointing
    status: str  # running, or the final status on the last report: completed | diverged | time_limit
    evaluation: dict[str, Any] | None = None  # on the last report: the best checkpoint's evaluation
    test: dict[str, Any] | None = None  # on the last report: the final weights on the test split (score_test)


@dataclass
class RunResult:
    status: str
    best_val_acc: float | None
    best_epoch: int | None
    final_val_acc: float | None
    epochs_done: int
    wall_s: float
    history: list[dict[str, float]] = field(default_factory=list)
    evaluation: dict[str, Any] | None = None
    test: dict[str, Any] | None = None
    error: str | None = None


# --- checkpoints --------------------------------------------------------------------------------

def save_atomic(obj: Any, path: Path) -> None:
    """torch.save is not atomic: through `files.write_atomic` (temp file, fsync, os.replace)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path: Path, field_name: str = "--resume") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(field_name, str(path), "No such checkpoint file; runs write last.pt and best.pt in their checkpoint folder.")
    clean_stale_temps(path.parent)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure to unpickle means the file is unusable
        raise UserError(field_name, str(path), "Not a loadable harness checkpoint (corrupt, truncated or tampered with; "
                        f"weights-only loading refused it: {str(e).splitlines()[0][:160]}).") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "epoch" not in ckpt:
        raise UserError(field_name, str(path), "Not a harness checkpoint (no model/epoch entries).")
    return ckpt


# --- the loop -----------------------------------------------------------------------------------

def _seed_epoch(seed: int, epoch: int) -> int:
    """Every epoch reseeds all RNGs from (seed, epoch): a resumed run replays the same batches,
    augmentations and mixup draws as an uninterrupted one, without saving RNG state."""
    s = (seed * 1_000_003 + epoch) % 2**31
    torch.manual_seed(s)
    np.random.seed(s)  # timm's Mixup draws from numpy
    random.seed(s)
    return s


@dataclass
class Training:
    """What one run trains with, built once by `build_training`. fit() and
    benchmarks/throughput.py both step through it, so the benchmark times the real path."""

    model: torch.nn.Module  # the module whose weights are evaluated and saved
    step_model: Callable[[torch.Tensor], torch.Tensor]  # the same module, torch.compile'd when spec.compile
    optimizer: torch.optim.Optimizer
    scheduler: Any  # timm scheduler, stepped per update
    criterion: torch.nn.Module
    mixup: Any  # timm Mixup or None
    augment: data_mod.BatchAugment
    ema: Any  # timm ModelEmaV3 or None
    params: list[torch.nn.Parameter]
    max_norm: float  # inf = measure the gradient norm, clip nothing
    channels_last: bool
    use_amp: bool
    device: torch.device
    batch_size: int
    steps_per_epoch: int

    def autocast(self) -> Any:
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.use_amp)

    @property
    def eval_channels_last(self) -> bool:
        """Evaluation batches in the training memory format (process.nhwc_by_default: on the CPU too)."""
        return self.channels_last


@dataclass
class EpochSums:
    """One epoch's training totals, still on the device (reading them is the epoch's one sync)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    grad_norm_sum: torch.Tensor
    seen: int
    steps: int
    diverged: bool  # a finiteness check failed mid-epoch


def build_training(spec: RunSpec, ds: data_mod.Dataset, device: torch.device, *,
                   log: Callable[[str], None] = lambda s: None) -> Training:
    recipe = spec.recipe
    entry = get_model_entry(spec.model)
    model = build_model(spec.model, num_classes=ds.num_classes, image_size=spec.data.image_size,
                        drop_path_rate=recipe.drop_path_rate, drop_rate=recipe.drop_rate,
                        pretrained=spec.pretrained, pretrained_file=spec.pretrained_file, log=log).to(device)
    cuda = device.type == "cuda"
    channels_last = spec.channels_last if spec.channels_last is not None else nhwc_by_default(entry.family, cuda)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    set_backend_flags(cuda)
    batch_size = min(recipe.batch_size, len(ds.train))
    steps_per_epoch = max(1, len(ds.train) // batch_size)
    optimizer = build_optimizer(model, recipe, fused=cuda)  # fused Adam/AdamW: one kernel for the whole update
    ema = None
    if recipe.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=recipe.ema_decay, use_warmup=True)
    return Training(
        model=model, step_model=compile_model(model) if spec.compile else model,  # compiled once, reused every epoch
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, recipe, epochs=spec.epochs, steps_per_epoch=steps_per_epoch),
        criterion=build_loss(recipe), mixup=build_mixup(recipe, ds.num_classes),
        augment=data_mod.BatchAugment(ds, recipe, device=device),
        ema=ema, params=[p for p in model.parameters() if p.requires_grad],
        max_norm=recipe.grad_clip if recipe.grad_clip > 0 else math.inf, channels_last=channels_last,
        use_amp=spec.amp and cuda, device=device, batch_size=batch_size, steps_per_epoch=steps_per_epoch)


def train_epoch(t: Training, split: data_mod.Split, g: torch.Generator, global_step: int) -> tuple[EpochSums, int]:
    """One pass over `split`: uint8 batches -> on-device augmentation -> one update each.

    Nothing here waits for the device: totals stay device tensors, and the finiteness check
    (every NAN_CHECK_EVERY steps) is read one check late on CUDA, when the device is long past it.
    Returns the epoch's totals and the new global step."""
    t.model.train()
    cuda = t.device.type == "cuda"
    loss_sum = torch.zeros((), device=t.device)
    correct = torch.zeros((), device=t.device, dtype=torch.long)
    gn_sum = torch.zeros((), device=t.device)
    seen, steps, diverged = 0, 0, False
    checks: list[tuple[torch.Tensor, Any]] = []
    for x, y in split.batches(t.batch_size, shuffle=True, generator=g, drop_last=True):
        x = t.augment(x, g)
        if t.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        target = y
        if t.mixup is not None:
            x, target = t.mixup(x, y)
        with t.autocast():
            out = t.step_model(x)
            loss = t.criterion(out, target)
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # The global norm before clipping is what tells a healthy run from an exploding one.
        if math.isinf(t.max_norm):  # no clipping: measure only (clip_grad_norm_ would rescale every grad by 1)
            gn = torch.nn.utils.get_total_norm([p.grad for p in t.params if p.grad is not None], foreach=cuda or None)
        else:
            gn = torch.nn.utils.clip_grad_norm_(t.params, max_norm=t.max_norm, foreach=cuda or None)
        gn_sum += gn.float()
        t.optimizer.step()
        global_step += 1
        t.scheduler.step_update(num_updates=global_step)
        if t.ema is not None:
            t.ema.update(t.model, step=global_step)
        loss_sum += loss.detach().float() * len(y)
        correct += (out.argmax(1) == y).sum()  # against the unmixed labels
        seen += len(y)
        steps += 1
        if steps % NAN_CHECK_EVERY == 0:
            checks.append(_finite_on_host(loss_sum))
            if len(checks) > (1 if cuda else 0) and not _host_value(checks.pop(0)):
                diverged = True
                break
    return EpochSums(loss_sum, correct, gn_sum, seen, steps, diverged), global_step


def _finite_on_host(x: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Start copying isfinite(x) to the host without waiting (pinned, non-blocking on CUDA)."""
    flag = torch.isfinite(x).to("cpu", non_blocking=True)
    event = None
    if x.device.type == "cuda":
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(x.device))  # the stream of the device doing the work
    return flag, event


def _host_value(check: tuple[torch.Tensor, Any]) -> bool:
    flag, event = check
    if event is not None:
        event.synchronize()  # waits only for the device to reach the check's step, not for the queue
    return bool(flag)


@dataclass
class Progress:
    """What a run carries from epoch to epoch, and a checkpoint across a stop."""

    epoch: int = 0  # the last epoch done
    global_step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int | None = None
    best_state: dict[str, torch.Tensor] | None = None  # on the host: the best epoch's (EMA) weights

    def improve(self, epoch: int, val_acc: float, model: torch.nn.Module) -> bool:
        if not val_acc > self.best_acc:  # NaN is never an improvement
            return False
        self.best_acc, self.best_epoch = val_acc, epoch
        self.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return True


def check_resume_epochs(ckpt: dict[str, Any], epochs: int, path: Path | str) -> None:
    """Refuse a resume asked to end before the epochs the checkpoint has already trained."""
    done = int(ckpt["epoch"])
    if epochs < done:
        planned = ckpt["config"].get("epochs")
        raise UserError("--epochs", epochs, f"{path} has already trained {done} epochs (of {planned}); pass --epochs "
                        f"{done} or more, or leave --epochs out (its own {planned}).")


def optimizer_state_for(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> dict[str, Any]:
    """A saved optimizer state made loadable into `optimizer` as built for this run's device: each
    group's OPTIMIZER_DEVICE_FLAGS are the new optimizer's, not the checkpoint's. load_state_dict
    copies every saved group key, so a CPU checkpoint resumed on a GPU would otherwise lose the fused
    AdamW build_training asked for (and a GPU one resumed on a CPU keep it); the flags also decide
    where load_state_dict puts each 'step' (on the device for fused/capturable)."""
    groups = []
    for saved, built in zip(state["param_groups"], optimizer.param_groups):
        groups.append({**saved, **{k: built[k] for k in OPTIMIZER_DEVICE_FLAGS if k in built}})
    return {**state, "param_groups": groups}


def restore(path: Path, spec: RunSpec, t: Training, log: Callable[[str], None] = lambda s: None) -> Progress:
    """Load last.pt into the training state; best.pt (when there) is the best so far.

    When `spec.epochs` differs from the checkpoint's, the lr schedule is stretched (or compressed):
    the saved scheduler state (which holds the old length) is not loaded, and the scheduler
    build_training made for `spec.epochs` is stepped to the checkpoint's update, so the run goes
    on as if it had been planned for `spec.epochs` from the start (the recipe stays as it was
    fitted to the old length: warmup updates, augmentation strength)."""
    ckpt = load_checkpoint(path)
    if ckpt["config"].get("model") != spec.model:
        raise UserError("--resume", str(path), f"checkpoint is of {ckpt['config'].get('model')}, not {spec.model}; "
                        "resume with the same model.")
    check_resume_epochs(ckpt, spec.epochs, path)
    if ckpt.get("optimizer") is None:
        raise UserError("--resume", str(path), "this checkpoint holds a finished trial's weights only (no optimizer "
                        "state); start a new run from them with --pretrained-file instead.")
    t.model.load_state_dict(ckpt["model"])
    t.optimizer.load_state_dict(optimizer_state_for(t.optimizer, ckpt["optimizer"]))
    planned = ckpt["config"].get("epochs", spec.epochs)
    if planned == spec.epochs:
        t.scheduler.load_state_dict(ckpt["scheduler"])
    else:  # the saved state would keep the old length: the extra epochs would all run at min_lr
        lr_old = max(g["lr"] for g in t.optimizer.param_groups)  # the old schedule's lr at this update
        t.scheduler.step_update(num_updates=ckpt["global_step"])
        lr_new = max(g["lr"] for g in t.optimizer.param_groups)
        how = ("extending", "stretched") if spec.epochs > planned else ("shortening", "compressed")
        log(f"{how[0]} {planned} -> {spec.epochs} epochs: the lr schedule is {how[1]} to {spec.epochs} epochs "
            f"from update {ckpt['global_step']} (lr {lr_old:.2e} -> {lr_new:.2e})")
    if t.ema is not None and ckpt.get("ema") is not None:
        t.ema.load_state_dict(ckpt["ema"])
    best_path = Path(path).with_name("best.pt")
    best_state = (torch.load(best_path, map_location="cpu", weights_only=True)["model"] if best_path.is_file()
                  else {k: v.detach().cpu().clone() for k, v in t.model.state_dict().items()})
    return Progress(ckpt["epoch"], ckpt["global_step"], list(ckpt["history"]), ckpt["best_val_acc"],
                    ckpt.get("best_epoch"), best_state)


def save_checkpoints(spec: RunSpec, t: Training, p: Progress, *, improved: bool) -> Path:
    """last.pt every epoch (everything resume needs), best.pt when it improved (the best epoch's weights
    and what they scored: no optimizer, which would triple its size for nothing a resume reads),
    epoch_N.pt every `checkpoint_every`."""
    folder = spec.checkpoint_dir
    assert folder is not None
    state = {"epoch": p.epoch, "global_step": p.global_step, "model": t.model.state_dict(),
             "optimizer": t.optimizer.state_dict(), "scheduler": t.scheduler.state_dict(),
             "scaler": None,  # bf16 autocast needs no loss scaling
             "ema": t.ema.state_dict() if t.ema is not None else None,
             "best_val_acc": p.best_acc, "best_epoch": p.best_epoch,
             "config": spec.model_dump(mode="json"), "history": p.history}
    save_atomic(state, folder / "last.pt")
    if improved:
        save_atomic({"epoch": p.best_epoch, "model": p.best_state, "best_val_acc": p.best_acc,
                     "config": state["config"]}, folder / "best.pt")
    if spec.checkpoint_every and p.epoch % spec.checkpoint_every == 0:
        save_atomic(state, folder / f"epoch_{p.epoch}.pt")
    return folder / "last.pt"


def keep_weights_only(path: Path) -> None:
    """Drop what only a resume reads (optimizer, scheduler) from a finished run's last.pt: a completed
    Ray trial is never resumed, and AdamW's two moments are twice the weights (a ViT-B's last.pt goes
    from ~1.0 GB to ~0.35 GB). The weights (and the EMA's, which were the ones evaluated) stay."""
    ckpt = load_checkpoint(path)
    save_atomic({**ckpt, "optimizer": None, "scheduler": None}, path)


def measure(t: Training, sums: EpochSums, ds: data_mod.Dataset, train_probe: data_mod.Split,
            t0: float) -> tuple[dict[str, float], bool]:
    """One epoch's metrics (the store's EPOCH_METRICS) and whether the run diverged; t0 = the epoch's start."""
    seen = sums.seen
    train_loss = float(sums.loss_sum) / max(seen, 1)  # the epoch's sync: every queued step has run
    train_s = time.monotonic() - t0
    eval_model = t.ema.module if t.ema is not None else t.model
    batch = 2 * t.batch_size
    cl = t.eval_channels_last
    val_loss, val_acc = evaluate(eval_model, ds.val, t.augment, batch_size=batch, autocast=t.autocast, channels_last=cl)
    # The raw weights too when an EMA is kept: the two can differ by tens of points on short runs.
    val_acc_raw = val_acc if t.ema is None else evaluate(t.model, ds.val, t.augment, batch_size=batch,
                                                         autocast=t.autocast, channels_last=cl)[1]
    # Train accuracy as val is measured (eval mode, no augmentation, no mixing) on a fixed slice
    # of the training set: accuracy on augmented/mixed batches against unmixed labels is no
    # measure of fit, and made "train - val gaps" of -59 points.
    _, train_acc = evaluate(eval_model, train_probe, t.augment, batch_size=batch, autocast=t.autocast, channels_last=cl)
    metrics = {"train_loss": train_loss, "train_acc": train_acc, "train_batch_acc": float(sums.correct) / max(seen, 1),
               "val_loss": val_loss, "val_acc": val_acc, "val_acc_raw": val_acc_raw,
               "lr": max(g["lr"] for g in t.optimizer.param_groups),
               "grad_norm": float(sums.grad_norm_sum) / max(sums.steps, 1), "epoch_s": time.monotonic() - t0,
               "images_per_s": seen / train_s if train_s > 0 else 0.0}
    diverged = sums.diverged or not math.isfinite(train_loss) or not math.isfinite(val_loss)
    return metrics, diverged


def run_status(spec: RunSpec, epoch: int, *, diverged: bool, hours: float) -> str:
    """running, or how the run ends after this epoch: diverged | time_limit | completed."""
    if diverged:
        return "diverged"
    if spec.max_hours is not None and hours >= spec.max_hours and epoch < spec.epochs:
        return "time_limit"
    return "completed" if epoch >= spec.epochs else "running"


def fit(spec: RunSpec, on_epoch: Callable[[EpochReport], None] = lambda r: None, *,
        resume: Path | None = None, log: Callable[[str], None] = lambda s: None,
        gpu_share: float | None = None) -> RunResult:
    """Train `spec` from scratch (or from `resume`), reporting every epoch; the best weights are evaluated at the end.

    `gpu_share`: the fraction of one card Ray granted this trial (None or >= 1: the whole card); on
    CUDA the process's allocations are capped at it (`set_memory_share`)."""
    t_start = time.monotonic()
    plugins.load(spec.plugins)  # a Ray worker or a resumed run imports the models/datasets the spec names
    device = prepare_process(spec, gpu_share)
    try:
        return _fit(spec, device, on_epoch, resume=resume, log=log, t_start=t_start)
    finally:  # the run's tensors died with _fit's frame (on success): give their cache back to the card
        free_device_memory(device)


def run_data(spec: RunSpec) -> data_mod.DataSpec:
    """The run's data spec with its loader workers counted from the CPUs the run was granted
    (spec.threads: a Ray trial's CPUs), not the machine's, when the spec leaves them unset."""
    if spec.data.workers is not None or not spec.threads:
        return spec.data
    return spec.data.model_copy(update={"workers": data_mod.auto_workers(spec.threads)})


def _fit(spec: RunSpec, device: torch.device, on_epoch: Callable[[EpochReport], None], *, resume: Path | None,
         log: Callable[[str], None], t_start: float) -> RunResult:
    _seed_epoch(spec.seed, 0)
    ds = data_mod.load(run_data(spec), device)
    train_probe = data_mod.probe(ds)  # fixed training images covering every class (train_acc, the gap)
    # A resumed run's weights come from its checkpoint: the pretrained ones it started from are not
    # fetched or read again (the hub may be offline, the file gone).
    start = spec if resume is None else spec.model_copy(update={"pretrained": False, "pretrained_file": None})
    t = build_training(start, ds, device, log=log)
    p = Progress()
    if resume is not None:
        p = restore(resume, spec, t, log)
        log(f"resumed from {resume} at epoch {p.epoch}")
    if spec.checkpoint_dir is not None:
        spec.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        clean_stale_temps(spec.checkpoint_dir)

    status, evaluation, test = "running", None, None
    for epoch in range(p.epoch + 1, spec.epochs + 1):
        t0 = time.monotonic()
        g = torch.Generator(device=device).manual_seed(_seed_epoch(spec.seed, epoch))
        sums, p.global_step = train_epoch(t, ds.train, g, p.global_step)
        metrics, diverged = measure(t, sums, ds, train_probe, t0)
        p.epoch = epoch
        p.history.append(metrics)
        eval_model = t.ema.module if t.ema is not None else t.model
        improved = not diverged and p.improve(epoch, metrics["val_acc"], eval_model)
        ckpt_path = None
        if spec.checkpoint_dir is not None and not diverged:  # a diverged epoch never overwrites a good last.pt
            ckpt_path = save_checkpoints(spec, t, p, improved=improved)
        status = run_status(spec, epoch, diverged=diverged, hours=(time.monotonic() - t_start) / 3600)
        if status != "running" and ds.test is not None:  # the final weights, as the final val acc: the verdict's
            test = score_test(eval_model, ds.test, t.augment, batch_size=2 * t.batch_size, autocast=t.autocast,
                              channels_last=t.eval_channels_last)
        if status != "running" and p.best_state is not None:
            eval_model.load_state_dict(p.best_state)  # the run ends: evaluate its best weights per class
            evaluation = {"epoch": p.best_epoch, **evaluate_classes(eval_model, ds, t.augment, batch_size=2 * t.batch_size,
                                                                   autocast=t.autocast, samples=spec.eval_samples,
                                                                   channels_last=t.eval_channels_last)}
        on_epoch(EpochReport(epoch, metrics, ckpt_path, status, evaluation, test))
        if status != "running":
            break
    if status == "running":  # resumed at or past the last epoch: nothing left to train
        status = "completed"
    final = p.history[-1]["val_acc"] if p.history else None
    return RunResult(status, p.best_acc if p.best_epoch is not None else None, p.best_epoch, final, len(p.history),
                     time.monotonic() - t_start, p.history, evaluation, test)
