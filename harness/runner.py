"""One run in this process, recorded: `fit()` with an `on_epoch` callable that writes the store.

Used by `harness train`, and by `harness doctor` for its checks (`record_checks`). Sweeps, benchmarks
and ablations go through Ray instead (harness/engine/),
whose driver writes the same rows.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import yaml

from harness import plugins
from harness.errors import UserError
from harness.locks import checkpoint_lock
from harness.models import check_weights, get_model_entry
from harness.process import resolve_device
from harness.progress import LiveView
from harness.specs import RunSpec
from harness.store import Store, json_safe, shown_url
from harness.trackers import check_mlflow, open_trackers
from harness.train import EpochReport, RunResult, fit


def describe_device(spec: RunSpec) -> str:
    import torch

    dev = resolve_device(spec.device)
    if dev.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(dev)})"
    return f"cpu ({torch.get_num_threads()} threads)"


def where_it_runs(device: str = "cpu", *, gpu_ids: list | None = None, node_id: str | None = None) -> dict[str, str | None]:
    """Where a run runs, as the store records it: hostname, Ray node id (None outside Ray) and its GPUs
    as "<id>: <name>" joined by "; " ("" = CPU only). In a Ray trial `gpu_ids` are the ids Ray granted;
    Ray sets CUDA_VISIBLE_DEVICES to them, so torch's cuda:i is the i-th. Outside Ray, the card of
    `device` (a CPU run records none)."""
    import socket

    import torch

    gpus = ""
    if gpu_ids:
        names = [torch.cuda.get_device_name(i) if torch.cuda.is_available() else "?" for i in range(len(gpu_ids))]
        gpus = "; ".join(f"{gid}: {name}" for gid, name in zip(gpu_ids, names))
    elif gpu_ids is None:
        dev = resolve_device(device)
        if dev.type == "cuda":
            index = dev.index if dev.index is not None else torch.cuda.current_device()
            gpus = f"{index}: {torch.cuda.get_device_name(index)}"
    return {"node": socket.gethostname(), "node_id": node_id, "gpus": gpus}


def resumed_spec(checkpoint: Path, epochs: int | None = None) -> RunSpec:
    """The spec a `harness train --resume CHECKPOINT` continues, writing in CHECKPOINT's folder: the
    checkpoint holds the resolved spec, so resuming needs no other flag. `epochs` other than its own
    stretches the lr schedule to that many (train.restore); fewer than the epochs done is refused.

    The plugins the checkpoint names are not loaded from it (a checkpoint travels; what it names would
    run as code): each must have been given again (`--plugin`, or an installed entry point), or the
    resume is refused naming them (`plugins.not_given`). The spec then carries the plugins loaded here."""
    from harness.specs import parse_spec
    from harness.train import check_resume_epochs, load_checkpoint

    ckpt = load_checkpoint(checkpoint)
    if epochs is not None:
        check_resume_epochs(ckpt, epochs, checkpoint)
    config = ckpt["config"]
    config.pop("fault", None)  # checkpoints before plugins carried a test-only field (always null)
    missing = plugins.not_given(config.get("plugins") or ())
    if missing:
        given = " ".join(f"--plugin {m}" for m in missing)
        raise UserError("--resume", str(checkpoint), f"It was trained with plugin code harness does not load from a "
                        f"checkpoint: {', '.join(missing)}. If you trust that code, give it again: "
                        f"`harness {given} train --resume {checkpoint}` (or install it as a harness.plugins entry point).")
    config["plugins"] = list(plugins.active())
    # The run continues in the folder it resumes from: the one the checkpoint names may be another
    # machine's path, or the original of a copy (which the resume would then overwrite).
    config["checkpoint_dir"] = str(Path(checkpoint).parent)
    return parse_spec(RunSpec, {**config, "epochs": config["epochs"] if epochs is None else epochs}, "--resume")


def _state_misfit(state: dict[str, Any], spec: RunSpec) -> str | None:
    """How the state dict `state` does not fit `spec.model` as this process builds it (None: it fits), checked
    on the meta device (no memory, no weights). The class count is read from the state itself: the tensors
    whose shape changes with it are found by building the model for 2 and for 3 classes."""
    import torch

    from harness.models import build_model

    def shapes(n: int) -> dict[str, tuple[int, ...]]:
        with torch.device("meta"):
            model = build_model(spec.model, num_classes=n, image_size=spec.data.image_size)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    two, three = shapes(2), shapes(3)
    classes = 2
    for k, shape in two.items():
        if shape != three[k] and k in state and len(state[k].shape) == len(shape):
            dim = next(i for i, (a, b) in enumerate(zip(shape, three[k])) if a != b)
            classes = int(state[k].shape[dim])
            break
    want = shapes(classes) if classes not in (2, 3) else (two if classes == 2 else three)
    missing = [k for k in want if k not in state]
    extra = [k for k in state if k not in want]
    wrong = [f"{k} {tuple(state[k].shape)} (the model's {want[k]})" for k in want
             if k in state and tuple(state[k].shape) != want[k]]
    if not (missing or extra or wrong):
        return None
    parts = [f"{len(v)} {what}: {', '.join(v[:3])}{', ...' if len(v) > 3 else ''}"
             for v, what in ((missing, "missing"), (extra, "unexpected"), (wrong, "of another shape")) if v]
    return "; ".join(parts)


def check_resumable(checkpoint: Path, spec: RunSpec) -> None:
    """Everything `fit(resume=...)` will read from `checkpoint` and its best.pt, checked before a row or file
    is written: an optimizer and scheduler state (a finished trial's slimmed last.pt has none), weights that
    fit the model (and its EMA's), an optimizer over as many parameters, and a whole best.pt that fits too."""
    import torch

    from harness.models import build_model
    from harness.train import load_checkpoint

    checkpoint = Path(checkpoint)
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("optimizer") is None or ckpt.get("scheduler") is None:
        raise UserError("--resume", str(checkpoint), "this checkpoint holds a finished trial's weights only (no "
                        "optimizer state); start a new run from them with --pretrained-file instead.")
    fix = (f"resume needs {spec.model} as it was when the checkpoint was written (the same timm or plugin version), "
           "or start a new run from its weights with --pretrained-file.")
    states = [("its weights", checkpoint, ckpt["model"])]
    if ckpt.get("ema") is not None:
        states.append(("its EMA weights", checkpoint, {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}))
    best = checkpoint.with_name("best.pt")
    if best.is_file():  # restore() reads it as the best epoch so far; the run ends by evaluating it
        states.append(("its weights", best, load_checkpoint(best, "--resume")["model"]))
    for what, path, state in states:
        misfit = _state_misfit(state, spec)
        if misfit is not None:
            raise UserError("--resume", str(path), f"{what} do not fit {spec.model} as built here ({misfit}); {fix}")
    with torch.device("meta"):
        n_params = sum(p.requires_grad for p in build_model(spec.model, num_classes=2, image_size=spec.data.image_size).parameters())
    saved = ckpt["optimizer"]
    n_saved = sum(len(g.get("params", ())) for g in saved.get("param_groups", ())) if isinstance(saved, dict) else -1
    if n_saved != n_params:
        raise UserError("--resume", str(checkpoint), f"its optimizer state covers {n_saved} parameter tensors, the "
                        f"model has {n_params}; {fix}")


def format_epoch(r: EpochReport, epochs: int) -> str:
    m = r.metrics
    return (f"epoch {r.epoch:>3}/{epochs}  train loss {m['train_loss']:.4f} acc {m['train_acc']:.3f}  "
            f"val loss {m['val_loss']:.4f} acc {m['val_acc']:.3f}  lr {m['lr']:.2e}  "
            f"grad {m['grad_norm']:.2f}  {m['epoch_s']:.1f}s  {m['images_per_s']:.0f} img/s")


def run_and_record(spec: RunSpec, *, db: str, resume: Path | None = None,
                   echo: Callable[[str], None] = print, tensorboard: Path | None = None,
                   mlflow: str | None = None) -> RunResult:
    """`spec` trained in this process, every epoch recorded in `db` as it ends (a `train` experiment of
    one run). Ctrl-C leaves the run `interrupted`, with what it recorded, and re-raises. Every epoch also
    goes to the trackers (harness/trackers.py): TensorBoard scalars under `tensorboard` (the tensorboard/
    folder; None: none) and an MLflow run at the tracking URI `mlflow` (None: none)."""
    plugins.load(spec.plugins)  # those loaded here when the spec was made (a resumed one: given again, resumed_spec)
    get_model_entry(spec.model)  # an unknown name refused before anything is written
    if resume is None:  # a bad weights file, or timm's weights not in the local cache (never fetched here), refused before a row
        check_weights([spec])
    if resume is not None:  # as is a checkpoint the run could not continue from
        check_resumable(resume, spec)
    device = describe_device(spec)
    where = where_it_runs(spec.device)
    if mlflow is not None:  # MLflow installed, its server answering: refused before a row exists
        check_mlflow(mlflow)
    with ExitStack() as held:
        if spec.checkpoint_dir is not None:  # a resumed run's folder, or one given: one writer at a time, before a row
            held.enter_context(checkpoint_lock(spec.checkpoint_dir))
        return _record(spec, db=db, resume=resume, echo=echo, tensorboard=tensorboard, mlflow=mlflow,
                       device=device, where=where)


def _record(spec: RunSpec, *, db: str, resume: Path | None, echo: Callable[[str], None], tensorboard: Path | None,
            mlflow: str | None, device: str, where: dict) -> RunResult:
    """run_and_record's rows, once every check has passed."""
    kind = "train"
    entry = get_model_entry(spec.model)
    store = Store(db)
    exp = store.create_experiment(kind=kind, name=f"{spec.model}/{spec.recipe.name}", device=device,
                                  spec=yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False))
    run = store.create_run(exp, model=spec.model, recipe=spec.recipe.label(), params=spec.model_dump(mode="json"),
                           seed=spec.seed, stands_for=spec.stands_for)
    if spec.checkpoint_dir is None:
        spec = spec.model_copy(update={"checkpoint_dir": Path("checkpoints") / f"run-{run}"})
    echo(f"harness {kind}: {entry.describe(spec.data.image_size)} with recipe {spec.recipe.label()} "
         f"(lr {spec.recipe.scaled_lr():.3g} at batch {spec.recipe.batch_size}) on {spec.data.name}, "
         f"{spec.epochs} epochs, seed {spec.seed}, {device}")
    for note in spec.recipe.fit_notes:
        echo(f"  fitted: {note}")
    warning = entry.size_warning(spec.data.image_size)
    if warning:
        echo(f"warning: {warning}")

    trackers = open_trackers(tensorboard=tensorboard, mlflow=mlflow, db=db, experiment_id=exp, kind=kind,
                             name=f"{spec.model}/{spec.recipe.name}")
    for line in trackers.lines():
        echo(line)
    view = LiveView(title=f"{kind} {spec.label()}", total_runs=1, slots=1, echo=echo)

    def on_epoch(r: EpochReport) -> None:
        store.log_epoch(run, r.epoch, r.metrics, where=where)
        if r.evaluation is not None:
            store.save_evaluation(run, r.evaluation)
        if r.test is not None:
            store.save_test(run, r.test)
        trackers.epoch(run, spec, r.epoch, r.metrics, r.test)
        view.echo(format_epoch(r, spec.epochs))
        view.epoch("run", r.epoch, r.metrics, plain=False)  # the line above is the plain form

    try:
        if resume is not None:
            from harness.train import load_checkpoint

            # Epochs before the checkpoint: where they ran is not in it, so not claimed for this machine.
            for i, m in enumerate(load_checkpoint(resume)["history"], start=1):
                store.log_epoch(run, i, m)
                trackers.epoch(run, spec, i, m)
        with view:
            view.run_started("run", spec.label(), spec.epochs)
            result = fit(spec, on_epoch, resume=resume, log=view.echo)
            view.run_finished("run")
    except KeyboardInterrupt:
        store.finish_run(run, status="interrupted", error="interrupted by the user")
        store.finish_experiment(exp, "interrupted")
        trackers.close()  # the run left open ends as interrupted there too
        echo(f"interrupted; epochs so far are in {shown_url(db)} (run {run}); resume with "
             f"`harness train --resume {spec.checkpoint_dir}/last.pt`")
        raise
    except Exception as e:
        store.finish_run(run, status="failed", error=f"{type(e).__name__}: {e}")
        store.finish_experiment(exp, "failed")
        trackers.finish(run, "failed")
        trackers.close()
        raise
    store.finish_run(run, status=result.status, wall_s=result.wall_s)
    store.finish_experiment(exp, "completed")
    trackers.finish(run, result.status)
    trackers.close()
    best = f"{result.best_val_acc:.3f} at epoch {result.best_epoch}" if result.best_val_acc is not None else "none"
    t = result.test
    test = f"; test acc {t['test_acc']:.3f} on {t['n_test']} held-out images (final weights)" if t else "; no test split"
    echo(f"{result.status}: best val acc {best}, final {result.final_val_acc:.3f}{test}, {result.wall_s:.0f}s")
    echo(f"results: run {run} (experiment {exp}) in {shown_url(db)}; checkpoints in {spec.checkpoint_dir}/; "
         f"dashboards: `harness report --db {shown_url(db)}`")
    store.close()
    return result


def record_checks(report: Any, *, db: str, spec_yaml: str, html: Path | None) -> int:
    """The doctor's `DoctorReport` recorded: one experiment of kind 'doctor', one `checks` row per result
    (the lr curve in its data)."""
    store = Store(db)
    try:
        exp = store.create_experiment(kind="doctor", name=f"{report.label()} / {report.recipe.name}",
                                      description=report.data, spec=spec_yaml, device=report.device)
        for r in report.results:
            data = dict(r.data)
            if r.check == "lr_range" and html is not None:
                data["html"] = str(html)
            store.save_check(exp, check=r.check, status=r.status, detail=r.detail, fix=r.fix,
                             data=json_safe({**data, "seconds": report.seconds.get(r.check),
                                              "cpu_seconds": report.cpu_seconds.get(r.check)}))
        store.finish_experiment(exp, "completed")
        return exp
    finally:
        store.close()
