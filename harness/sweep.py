"""Sweeps and the benchmark grid through Ray Tune: the only module that imports Ray or Optuna.

Three layers, as in Ray Tune's own Optuna example:
- `_trainable`: one Ray trial = `harness.train.fit()` with a `report` that hands every epoch (and
  the trial's last.pt/best.pt as a Ray checkpoint) to `ray.tune.report`. A retried or resumed trial
  gets its last checkpoint back through `ray.tune.get_checkpoint()` and continues at epoch k+1.
- `_Recorder`: a driver-side `ray.tune.Callback`, the only database writer. One `runs` row per
  trial, every epoch, the final status told apart (completed / stopped by ASHA / diverged / failed /
  interrupted), the evaluation of the last report.
- `run_sweep` / `run_grid`: wire `Tuner` + `OptunaSearch` (Optuna storage = the results database)
  + `ASHAScheduler` + `ConcurrencyLimiter` + `tune.with_resources`, or a plain grid for benchmarks.

Optuna outcomes (`_HarnessOptunaSearch`): Ray's OptunaSearch tells Optuna COMPLETE with the truncated
score when ASHA stops a trial, and NaN results can leave a trial RUNNING. Here a trial that finished
all its epochs is COMPLETE (value = the metric at its last epoch), one stopped early is PRUNED (Optuna
keeps its per-epoch values), a diverged or crashed one is FAIL; when a sweep ends no Optuna trial of
the study is left RUNNING. While a sweep is interrupted (Ctrl-C, SIGTERM, a killed driver) its
unfinished trials stay RUNNING in Optuna and `interrupted` in `runs`, because `--resume` continues them.
"""

from __future__ import annotations

import logging
import math
import os
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Under `uv run`, Ray's uv hook would re-create the project's environment for every worker from the
# working folder (and refuses to start when the project is elsewhere, e.g. `uv run --project`). Local
# workers run this very interpreter, and cluster nodes must have the harness installed anyway.
# Set RAY_ENABLE_UV_RUN_RUNTIME_ENV=1 to get Ray's behaviour back.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import optuna  # noqa: E402
import ray  # noqa: E402
import sqlalchemy as sa
import yaml
from optuna.trial import TrialState
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter
from ray.tune.search.optuna import OptunaSearch

from harness.errors import UserError
from harness.models import CPU_VARIANT
from harness.recipes import with_overrides
from harness.specs import FaultSpec, ParamSpec, ResourcesSpec, RunSpec, StudySpec, load_study, parse_spec
from harness.store import Store, check_url, experiments, now, runs, sqlite_path
from harness.train import EpochReport, fit

OPTUNA_KEY = "_optuna_trial"  # added to each sampled config by the searcher: the Optuna trial number
FINAL = ("completed", "stopped", "diverged", "failed", "time_limit")
DEFAULT_STORAGE = Path("ray_results")
# Ray saves its experiment state (trials, searcher) at most this often (s). Tune's default ("auto",
# >= 10 s) would let a killed driver lose up to 10 s of trial bookkeeping; the state is small.
EXPERIMENT_STATE_PERIOD_S = "1"

log = logging.getLogger(__name__)


# --- validation (nothing here writes or starts anything) -----------------------------------------

def validate_study(path: Path) -> StudySpec:
    """The study file, fully checked: names, bounds, every candidate value as a recipe value."""
    study = load_study(path)
    where = f"{path}: "
    base = study.base_recipe()
    grid_sizes = []
    for key, p in study.search.items():
        candidates: list[tuple[str, Any]] = ([("values", v) for v in p.values or []] if p.type == "choice"
                                             else [("low", _cast(p, p.low)), ("high", _cast(p, p.high))])
        for sub, value in candidates:
            if p.type == "choice" and not isinstance(value, (str, int, float, bool)) and value is not None:
                raise UserError(f"{where}search.{key}.values", value, "A choice takes plain values "
                                "(numbers, names, true/false, null), not lists or mappings.")
            try:
                with_overrides(base, {key: value}, "search")
            except UserError as e:
                raise UserError(f"{where}search.{key}.{sub}", value, f"Not a valid {key}: {e.fix}") from None
        if study.sampler.type == "grid":
            if p.type not in ("choice", "int"):
                raise UserError(f"{where}search.{key}.type", p.type, "sampler grid needs a finite grid: "
                                "use type: choice (or int) for every parameter, or sampler: {type: tpe}.")
            grid_sizes.append(len(p.values) if p.type == "choice" else int(p.high) - int(p.low) + 1)
    if study.sampler.type == "grid":
        size = math.prod(grid_sizes)
        if study.trials > size:
            raise UserError(f"{where}trials", study.trials, f"The grid has only {size} points; set trials: {size}.")
    if study.sampler.type == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UserError(f"{where}sampler.type", "cmaes", "Optuna's CMA-ES sampler needs the cmaes package: "
                            "`uv add cmaes`, or use sampler: {type: tpe}.") from None
    return study


def _cast(p: ParamSpec, v: float | None) -> Any:
    return int(v) if p.type in ("int", "logint") and v is not None else v


def check_resources(resources: ResourcesSpec, *, field: str, address: str | None) -> str:
    """Refuse per-trial resources no node can give (Ray would leave the trial PENDING forever).

    Without a Ray cluster this checks this machine; with `address` (or a Ray already started in this
    process) it checks the largest node of the cluster. Returns a description of what is there.
    """
    if address is None and not ray.is_initialized():
        import torch

        cpus, gpus = os.cpu_count() or 1, torch.cuda.device_count()
        where = "this machine"
    else:
        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        cpus = max((n.get("CPU", 0) for n in nodes), default=0)
        gpus = max((n.get("GPU", 0) for n in nodes), default=0)
        where = "the largest node of the Ray cluster"
    if resources.cpu > cpus:
        raise UserError(f"{field}.cpu", resources.cpu, f"{where} has {cpus:g} CPU cores; ask for at most {cpus:g} per trial "
                        "(trials run side by side up to `concurrency`).")
    if resources.gpu > 0 and gpus == 0:
        raise UserError(f"{field}.gpu", resources.gpu, f"{where} has no GPU; set resources.gpu: 0 "
                        "(the study then runs on CPU), or run on a GPU machine / pass --address of a cluster with GPUs.")
    if resources.gpu > gpus:
        raise UserError(f"{field}.gpu", resources.gpu, f"{where} has {gpus:g} GPUs; ask for at most {gpus:g} per trial "
                        "(fractions such as 0.25 pack several trials on one card).")
    return f"{where}: {cpus:g} CPUs, {gpus:g} GPUs"


def _study_yaml(study: StudySpec) -> str:
    return yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)


def _existing(db: str, name: str) -> tuple[dict | None, bool]:
    """(harness experiment row, whether an Optuna study of that name exists), reading only."""
    path = sqlite_path(db)
    if path is not None and not path.exists():
        return None, False
    engine = sa.create_engine(db)
    try:
        tables = set(sa.inspect(engine).get_table_names())
        exp = None
        if "experiments" in tables:
            with engine.connect() as c:
                row = c.execute(sa.select(experiments).where(experiments.c.kind == "sweep", experiments.c.name == name)
                                .order_by(experiments.c.id.desc())).mappings().first()
                exp = dict(row) if row else None
        has_optuna = False
        if "studies" in tables:
            with engine.connect() as c:
                has_optuna = c.execute(sa.text("SELECT 1 FROM studies WHERE study_name = :n"), {"n": name}).first() is not None
        return exp, has_optuna
    finally:
        engine.dispose()


# --- the trial ---------------------------------------------------------------------------------

def _trial_name(trial: Any) -> str:
    """'trial_7' (the Optuna trial number, as optuna-dashboard shows it) or 'run_3' (grid index)."""
    c = trial.config or {}
    if OPTUNA_KEY in c:
        return f"trial_{c[OPTUNA_KEY]}"
    if "run" in c:
        return f"run_{c['run']}"
    return f"trial_{str(trial.experiment_tag).split('_')[0]}"


@dataclass(frozen=True)
class SweepSpecs:
    """config sampled by Optuna -> RunSpec (the study's base run with the sampled recipe fields)."""

    base: RunSpec
    fault_trials: tuple[int, ...] | None = None  # Optuna trial numbers the base's fault applies to; None = all
    faults: tuple[tuple[int, FaultSpec], ...] = ()  # tests: (trial number, its own fault), overriding the base's

    def __call__(self, config: dict[str, Any]) -> RunSpec:
        params = {k: v for k, v in config.items() if not k.startswith("_")}
        spec = self.base.model_copy(update={"recipe": with_overrides(self.base.recipe, params, "search")})
        if self.base.fault is not None and self.fault_trials is not None and config.get(OPTUNA_KEY) not in self.fault_trials:
            spec = spec.model_copy(update={"fault": None})
        own = dict(self.faults).get(config.get(OPTUNA_KEY))
        if own is not None:
            spec = spec.model_copy(update={"fault": own})
        return spec

    def label(self, config: dict[str, Any]) -> str:
        return " ".join(f"{k}={_fmt(v)}" for k, v in config.items() if not k.startswith("_"))


@dataclass(frozen=True)
class GridSpecs:
    """config {'run': i} -> the i-th RunSpec of the benchmark grid."""

    runs: tuple[RunSpec, ...]

    def __call__(self, config: dict[str, Any]) -> RunSpec:
        return self.runs[int(config["run"])]

    def label(self, config: dict[str, Any]) -> str:
        s = self(config)
        return f"{s.label()} / {s.recipe.label()} / seed {s.seed}"


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _trainable(config: dict[str, Any], *, make_spec: Callable[..., RunSpec]) -> None:
    """One Ray trial: fit() reporting every epoch to Tune, with last.pt/best.pt as the checkpoint."""
    spec = make_spec(config)
    with tempfile.TemporaryDirectory(prefix="harness-trial-") as tmp:
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

        def report(r: EpochReport) -> None:
            metrics: dict[str, Any] = {**r.metrics, "epoch": r.epoch, "status": r.status}
            if r.evaluation is not None:
                metrics["evaluation"] = r.evaluation  # popped by the driver's recorder (kept out of Ray's logs)
            # Ray copies the folder to the trial's storage (synchronously) before this returns.
            ckpt = tune.Checkpoint.from_directory(str(local)) if r.checkpoint is not None else None
            tune.report(metrics, checkpoint=ckpt)

        fit(spec, report, resume=resume)


# --- Optuna ------------------------------------------------------------------------------------

def _distribution(p: ParamSpec) -> optuna.distributions.BaseDistribution:
    if p.type == "choice":
        return optuna.distributions.CategoricalDistribution(p.values)
    if p.type in ("int", "logint"):
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.type == "logint")
    return optuna.distributions.FloatDistribution(p.low, p.high, log=p.type == "loguniform")


def _sampler(study: StudySpec) -> optuna.samplers.BaseSampler:
    s = study.sampler
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.type == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=s.seed)
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=s.seed)
    if s.type == "grid":
        space = {k: (p.values if p.type == "choice" else list(range(int(p.low), int(p.high) + 1)))
                 for k, p in study.search.items()}
        return optuna.samplers.GridSampler(space, seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed)


def optuna_storage(db: str) -> optuna.storages.RDBStorage:
    kwargs = {"connect_args": {"timeout": 60}} if db.startswith("sqlite") else {"pool_pre_ping": True}
    return optuna.storages.RDBStorage(db, engine_kwargs=kwargs)


class _HarnessOptunaSearch(OptunaSearch):
    """OptunaSearch with the outcomes told apart (see the module docstring) and each Optuna trial
    tagged with its Ray trial id (user attr `ray_trial_id`, visible in optuna-dashboard)."""

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if params is not None:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            params = {**params, OPTUNA_KEY: ot_trial.number}
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        result = result or {}
        value, status = result.get(self.metric), result.get("status")
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        if status == "completed" and finite and not error:
            state, values = TrialState.COMPLETE, float(value)
        elif status in ("running", "time_limit") and finite and not error:
            state, values = TrialState.PRUNED, None  # stopped early: Optuna keeps its per-epoch values
        else:
            state, values = TrialState.FAIL, None  # crashed, diverged, or no finite metric
        self._ot_study.tell(self._ot_trials[trial_id], values, state=state, skip_if_finished=True)
        self._completed_trials.add(trial_id)


def settle_optuna(db: str, study_name: str, keep: set[str] = frozenset()) -> int:
    """Fail every RUNNING Optuna trial of the study except those of Ray trials in `keep` (to be
    resumed). Returns how many were failed."""
    storage = optuna_storage(db)
    try:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            return 0
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("ray_trial_id") in keep:
                continue
            storage.set_trial_user_attr(t._trial_id, "harness_note", "left RUNNING by an interrupted driver; failed by harness")
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            n += 1
        return n
    finally:
        storage.remove_session()
        storage.engine.dispose()


# --- the recorder (driver side, the only DB writer) --------------------------------------------

_LIVE: dict[str, _Recorder] = {}


def _live_recorder(key: str) -> tune.Callback:
    """Unpickling target: a restored Tuner gets this process's recorder, not a stale copy."""
    return _LIVE.get(key) or tune.Callback()


class _Recorder(tune.Callback):
    def __init__(self, *, key: str, store: Store, experiment_id: int, make_spec: Any, metric: str, mode: str,
                 total: int, echo: Callable[[str], None], db: str, study_name: str | None = None,
                 scheduler: str = "ASHA") -> None:
        self.key, self.store, self.experiment_id, self.make_spec = key, store, experiment_id, make_spec
        self.metric, self.mode, self.total, self.echo, self.db = metric, mode, total, echo, db
        self.study_name, self.scheduler = study_name, scheduler
        self.run_ids: dict[str, int] = {}
        self.last: dict[str, dict[str, Any]] = {}  # last result per trial seen in this session
        self.finished: dict[str, str] = {}  # trial_id -> final status (this session)
        self.started: set[str] = set()
        self.known: set[str] = set()  # every trial Tune holds (finished, running, pending)
        self.best: tuple[float, str] | None = None
        self.t0 = time.monotonic()
        _LIVE[key] = self

    def __reduce__(self) -> tuple:
        return (_live_recorder, (self.key,))

    # helpers
    def _name(self, trial: Any) -> str:
        return _trial_name(trial).replace("_", " #" if OPTUNA_KEY in trial.config else " ")

    def _counts(self) -> str:
        with self.store.engine.connect() as c:
            rows = c.execute(sa.select(runs.c.status, sa.func.count()).where(runs.c.experiment_id == self.experiment_id)
                             .group_by(runs.c.status)).all()
        counts = dict(rows)
        done = sum(v for k, v in counts.items() if k in FINAL)
        return f"[{counts.get('running', 0)} running, {done}/{self.total} done]"

    def _run_for(self, trial: Any) -> int:
        tid = trial.trial_id
        if tid in self.run_ids:
            return self.run_ids[tid]
        with self.store.engine.connect() as c:
            rid = c.execute(sa.select(runs.c.id).where(runs.c.experiment_id == self.experiment_id,
                                                       runs.c.trial_id == tid)).scalar()
        if rid is None:
            spec = self.make_spec(trial.config)
            rid = self.store.create_run(self.experiment_id, model=spec.model, recipe=spec.recipe.label(),
                                        params=spec.model_dump(mode="json"), seed=spec.seed, stands_for=spec.stands_for,
                                        trial_id=tid, optuna_trial=trial.config.get(OPTUNA_KEY))
        self.run_ids[tid] = rid
        return rid

    def _set_status(self, rid: int, status: str, error: str | None = None, wall_s: float | None = None) -> None:
        if status == "running":
            with self.store.engine.begin() as c:
                c.execute(runs.update().where(runs.c.id == rid).values(status="running", error=None, finished_at=None))
        else:
            self.store.finish_run(rid, status=status, error=error, wall_s=wall_s)

    # Tune hooks
    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rid = self._run_for(trial)
        self._set_status(rid, "running")
        again = "resumed" if trial.trial_id in self.started or self._epochs(rid) else "started"
        self.started.add(trial.trial_id)
        self.echo(f"{self._name(trial)} {again}: {self.make_spec.label(trial.config)}  {self._counts()}")

    def _epochs(self, rid: int) -> int:
        with self.store.engine.connect() as c:
            return c.execute(sa.select(runs.c.epochs_done).where(runs.c.id == rid)).scalar() or 0

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        rid = self._run_for(trial)
        evaluation = result.pop("evaluation", None)  # large; only the database keeps it
        if trial.trial_id not in self.last and int(result["epoch"]) > 1:
            self.echo(f"{self._name(trial)} continued from its checkpoint at epoch {int(result['epoch'])}")
        self.store.log_epoch(rid, int(result["epoch"]), result)
        if evaluation is not None:
            self.store.save_evaluation(rid, evaluation)
        self.last[trial.trial_id] = {k: result.get(k) for k in (self.metric, "epoch", "status", "time_total_s")}

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rid = self._run_for(trial)
        last = self.last.get(trial.trial_id)
        if last is None:  # nothing reported this session (resumed at its last epoch): keep what is recorded
            with self.store.engine.connect() as c:
                recorded = c.execute(sa.select(runs.c.status).where(runs.c.id == rid)).scalar()
            status = recorded if recorded in FINAL else "completed"
            last = {k: (trial.last_result or {}).get(k) for k in (self.metric, "epoch", "status", "time_total_s")}
        else:
            status = {"running": "stopped"}.get(last.get("status"), last.get("status") or "completed")
        self.store.finish_run(rid, status=status, wall_s=last.get("time_total_s"))
        self.finished[trial.trial_id] = status
        value = last.get(self.metric)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, (int, float)) and math.isfinite(value) else f"{self.metric} {value}"
        what = {"stopped": f"stopped by {self.scheduler} after epoch {last.get('epoch')}",
                "completed": f"completed {last.get('epoch')} epochs",
                "diverged": f"diverged (loss NaN/Inf) at epoch {last.get('epoch')}"}.get(status, status)
        if status == "completed" and isinstance(value, (int, float)) and math.isfinite(value):
            better = self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0])
            if better:
                self.best = (value, self._name(trial))
        best = f"  best so far {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        self.echo(f"{self._name(trial)} {what}: {shown}{best}  {self._counts()}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.known.update(t.trial_id for t in trials)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.known.update(t.trial_id for t in trials)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        err = _error_text(trial).splitlines()[0]
        epoch = (self.last.get(trial.trial_id) or {}).get("epoch") or 0
        self.echo(f"{self._name(trial)} crashed ({err}); retrying from its checkpoint at epoch {epoch} "
                  f"(failure {trial.num_failures} of at most {trial.max_failures} retried)")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rid = self._run_for(trial)
        text = _error_text(trial)
        self.store.finish_run(rid, status="failed", error=text,
                              wall_s=(self.last.get(trial.trial_id) or {}).get("time_total_s"))
        self.finished[trial.trial_id] = "failed"
        self.echo(f"{self._name(trial)} failed: {text.splitlines()[0]}  {self._counts()}")


def _error_text(trial: Any) -> str:
    """'ExcType: message' first (with a hint for known causes), then the traceback tail."""
    raw = ""
    path = trial.error_file
    if path and Path(path).is_file():
        raw = Path(path).read_text(errors="replace")
        # The file accumulates one block per failure; keep the latest.
        raw = raw.rsplit("Failure # ", 1)[-1]
    raw = re.sub(r"\x1b\[[0-9;]*m", "", raw)  # Ray colours its tracebacks
    lines = [ln for ln in raw.splitlines() if ln.strip()]
    summary = next((ln.strip() for ln in reversed(lines)
                    if ":" in ln and not ln.startswith((" ", "\t")) and "Error" in ln.split(":")[0]), None)
    summary = summary or (lines[-1].strip() if lines else "the trial's worker died (no error text)")
    if "OutOfMemoryError" in raw or "out of memory" in raw.lower():
        summary += "  [cause: out of GPU memory; lower batch_size, or give each trial more GPU (resources.gpu)]"
    tail = "\n".join(lines[-40:])
    return f"{summary}\n\n{tail}"[:8000]


# --- running Tune ------------------------------------------------------------------------------

@contextmanager
def _ray(address: str | None) -> Iterator[None]:
    """Start (or attach to) Ray unless this process already did; shut down only what we started."""
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as e:
        if address is None:
            raise
        raise UserError("--address", address, f"Cannot attach to a Ray cluster there ({str(e).splitlines()[0][:160]}); "
                        "start one with `ray start --head` and pass its address, or leave --address out.") from None
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def _sigterm_stops_tune() -> Iterator[None]:
    """Ray Tune stops gracefully on SIGINT (and SIGUSR1) but not on SIGTERM: make SIGTERM do the same."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if callable(signal.getsignal(signal.SIGUSR1)):  # Tune's handler is installed: graceful stop
            signal.raise_signal(signal.SIGUSR1)
        else:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _quiet_tune() -> None:
    os.environ["TUNE_GLOBAL_CHECKPOINT_S"] = EXPERIMENT_STATE_PERIOD_S
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")  # the recorder prints one line per failure
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "0")
    for name in ("ray", "ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _run_config(name: str, storage: Path, recorder: _Recorder, max_failures: int) -> tune.RunConfig:
    return tune.RunConfig(
        name=name, storage_path=str(storage), callbacks=[recorder], verbose=0,
        failure_config=tune.FailureConfig(max_failures=max_failures),
        # Only the latest checkpoint of a trial is needed to retry or resume it.
        checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
    )


def _describe_cluster() -> str:
    r = ray.cluster_resources()
    return f"ray: {r.get('CPU', 0):g} CPUs, {r.get('GPU', 0):g} GPUs"


# --- the benchmark grid ------------------------------------------------------------------------

def run_grid(runs_: list[RunSpec], *, db: str, experiment_name: str, kind: str = "benchmark", description: str = "",
             spec_yaml: str = "", concurrency: int, resources: ResourcesSpec, address: str | None = None,
             storage_path: Path | str = DEFAULT_STORAGE, max_failures: int = 1,
             echo: Callable[[str], None] = print) -> int:
    """Every RunSpec once through Ray Tune (no early stopping, no Optuna); returns the experiment id.

    The same trainable and recorder as sweeps: one `runs` row per spec (trial_id = Ray's), every epoch,
    the final status. An interrupted grid ends with status `interrupted` on the experiment and its
    unfinished runs.
    """
    if not runs_:
        raise UserError("runs", [], "Nothing to run; list at least one model and recipe.")
    check_url(db)
    if concurrency < 1:
        raise UserError("concurrency", concurrency, "Run at least 1 trial at a time.")
    if address is None and not ray.is_initialized():  # before starting Ray, as run_sweep does
        check_resources(resources, field="resources", address=None)
    _quiet_tune()
    with _ray(address):
        check_resources(resources, field="resources", address=address)
        store = Store(db)
        exp = store.create_experiment(kind=kind, name=experiment_name, description=description, spec=spec_yaml,
                                      device=_describe_cluster())
        storage = Path(storage_path).resolve()
        ray_name = f"{kind}-{exp}"
        make_spec = GridSpecs(tuple(runs_))
        recorder = _Recorder(key=f"{db}#{exp}", store=store, experiment_id=exp, make_spec=make_spec, metric="val_acc",
                             mode="max", total=len(runs_), echo=echo, db=db, scheduler="none")
        trainable = tune.with_resources(tune.with_parameters(_trainable, make_spec=make_spec),
                                        {"cpu": resources.cpu, "gpu": resources.gpu})
        tuner = tune.Tuner(
            trainable, param_space={"run": tune.grid_search(list(range(len(runs_))))},
            # reuse_actors: a finished trial's worker takes the next run, so torch and timm are imported
            # once per concurrent slot, not once per run (~13 s of CPU each on a 2-core machine).
            tune_config=tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrency, scheduler=FIFOScheduler(),
                                        reuse_actors=True, trial_name_creator=_trial_name,
                                        trial_dirname_creator=_trial_name),
            run_config=_run_config(ray_name, storage, recorder, max_failures))
        echo(f"harness {kind} {experiment_name}: {len(runs_)} runs, {concurrency} at a time, "
             f"{resources.cpu:g} CPU + {resources.gpu:g} GPU each ({_describe_cluster()})")
        status = _fit(tuner, store, exp, recorder, storage / ray_name, echo)
        echo(f"{kind} {status}: experiment {exp} in {db}; Ray files in {storage / ray_name}")
        store.close()
        _LIVE.pop(recorder.key, None)
        return exp


def _fit(tuner: tune.Tuner, store: Store, exp: int, recorder: _Recorder, exp_dir: Path,
         echo: Callable[[str], None]) -> str:
    """tuner.fit() with clean stops; returns the experiment's final status.

    What finished is read back from the experiment state Tune saved last (its in-memory trials are
    all marked TERMINATED by its cleanup after a Ctrl-C), and the runs rows are reconciled with it.
    """
    interrupted = False
    with _sigterm_stops_tune():
        try:
            tuner.fit()
        except KeyboardInterrupt:  # a second Ctrl-C while Tune was stopping
            interrupted = True
        except Exception:
            store.mark_unfinished(exp, "interrupted")
            store.finish_experiment(exp, "failed")
            raise
    try:
        saved = tune.ExperimentAnalysis(str(exp_dir)).trials
    except Exception:  # noqa: BLE001 - no state saved at all (stopped during start-up)
        saved = []
    unfinished_ids = {t.trial_id for t in saved if t.status not in ("TERMINATED", "ERROR")}
    recorder.known.update(t.trial_id for t in saved)
    with store.engine.begin() as c:
        for t in saved:  # finished in Tune, not in the database (a driver killed between the two)
            if t.trial_id in unfinished_ids or t.trial_id in recorder.finished:
                continue
            last = t.last_result or {}
            status = "failed" if t.status == "ERROR" else {"running": "stopped"}.get(last.get("status"), last.get("status") or "completed")
            c.execute(runs.update().where(runs.c.experiment_id == exp, runs.c.trial_id == t.trial_id,
                                          runs.c.status.notin_(FINAL)).values(status=status, finished_at=now()))
    unfinished = store.mark_unfinished(exp, "interrupted")
    with store.engine.connect() as c:
        n_rows = c.execute(sa.select(sa.func.count()).where(runs.c.experiment_id == exp)).scalar()
    interrupted = interrupted or bool(unfinished_ids) or unfinished > 0 or len(saved) < recorder.total
    status = "interrupted" if interrupted else "completed"
    store.finish_experiment(exp, status)
    if interrupted:
        echo(f"interrupted: {n_rows - unfinished} of {recorder.total} trials finished, {unfinished} interrupted "
             "(their epochs so far are recorded)")
    return status


# --- sweeps ------------------------------------------------------------------------------------

@dataclass
class SweepResult:
    experiment_id: int
    status: str
    storage: Path
    table: Any = None  # pandas DataFrame of the trials, best first
    best: dict[str, Any] | None = field(default=None)


def run_sweep(study_path: Path, *, db: str, resume: bool = False, address: str | None = None,
              storage_path: Path | str = DEFAULT_STORAGE, max_failures: int = 1, echo: Callable[[str], None] = print,
              fault: FaultSpec | None = None, fault_trials: tuple[int, ...] | None = None,
              faults: dict[int, FaultSpec] | None = None,
              top: int = 10) -> SweepResult:
    """Run (or with `resume`, continue) the study in `study_path`. Bad input -> UserError, nothing written."""
    study = validate_study(study_path)
    check_url(db)
    if max_failures < 0:
        raise UserError("--max-failures", max_failures, "Use 0 (no retries) or more.")
    exp_row, has_optuna = _existing(db, study.name)
    storage = Path(storage_path).resolve()
    exp_dir = storage / study.name
    if resume:
        if exp_row is None:
            raise UserError(f"{study_path}: name", study.name, f"No sweep of that name in {db} to resume; "
                            "run it without --resume (or pass the --db it was recorded in).")
        stored = parse_spec(StudySpec, yaml.safe_load(exp_row["spec"]), f"{db} study {study.name}")
        if not tune.Tuner.can_restore(str(exp_dir)):
            raise UserError("--storage-path", str(storage), f"No Ray experiment state for {study.name} in {exp_dir}; "
                            "pass the --storage-path the sweep ran with (Ray's files live there).")
        if stored.model_dump() != study.model_dump():
            changed = [k for k in StudySpec.model_fields if getattr(stored, k) != getattr(study, k)]
            echo(f"note: {study_path} differs from the stored study in {', '.join(changed)}; "
                 "--resume continues the study as it was started.")
        study = stored
    else:
        if exp_row is not None or has_optuna:
            stored = parse_spec(StudySpec, yaml.safe_load(exp_row["spec"]), "stored") if exp_row else None
            if stored is not None and stored.search != study.search:
                raise UserError(f"{study_path}: name", study.name, f"A study of that name with a different search space is "
                                f"already in {db}; give this one a new name (or --resume to continue the stored one).")
            raise UserError(f"{study_path}: name", study.name, f"A study of that name is already in {db}; continue it with "
                            "--resume, or give this one a new name.")
        if exp_dir.exists():
            raise UserError("--storage-path", str(exp_dir), "Ray files of a study with this name are already there but "
                            f"{db} has no record of it; delete that folder, or pass another --storage-path or --db.")
    local = address is None and not ray.is_initialized()
    if local:  # before starting Ray: a trial bigger than the machine would stay PENDING forever
        check_resources(study.resources, field=f"{study_path}: resources", address=None)

    _quiet_tune()
    with _ray(address):
        if not local:
            check_resources(study.resources, field=f"{study_path}: resources", address=address)
        store = Store(db)
        if resume:
            exp = exp_row["id"]
            with store.engine.begin() as c:
                c.execute(experiments.update().where(experiments.c.id == exp).values(status="running", finished_at=None))
        else:
            exp = store.create_experiment(kind="sweep", name=study.name, description=study.description,
                                          spec=_study_yaml(study), device=_describe_cluster())
        base = _base_run(study, fault)
        make_spec = SweepSpecs(base, fault_trials, tuple((faults or {}).items()))
        recorder = _Recorder(key=f"{db}#{exp}", store=store, experiment_id=exp, make_spec=make_spec, metric=study.metric,
                             mode=study.mode, total=study.trials, echo=echo, db=db, study_name=study.name,
                             scheduler="ASHA" if study.scheduler.type == "asha" else "none")
        trainable = tune.with_resources(tune.with_parameters(_trainable, make_spec=make_spec),
                                        {"cpu": study.resources.cpu, "gpu": study.resources.gpu})
        if resume:
            # Tune restores its trials, the searcher (with its Optuna trials) and the scheduler from
            # the experiment folder; finished trials stay finished, unfinished ones continue from
            # their last checkpoint, and only the remaining samples are created.
            tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=False)
            with store.engine.connect() as c:
                done = c.execute(sa.select(sa.func.count()).where(runs.c.experiment_id == exp,
                                                                  runs.c.status.in_(FINAL))).scalar()
            echo(f"harness sweep {study.name}: resuming ({done} of {study.trials} trials finished)")
        else:
            searcher = _HarnessOptunaSearch(space={k: _distribution(p) for k, p in study.search.items()},
                                            metric=study.metric, mode=study.mode, sampler=_sampler(study),
                                            study_name=study.name, storage=optuna_storage(db))
            sched = (ASHAScheduler(time_attr="epoch", metric=study.metric, mode=study.mode,
                                   max_t=study.scheduler.max_epochs, grace_period=study.scheduler.grace_period,
                                   reduction_factor=study.scheduler.reduction_factor)
                     if study.scheduler.type == "asha" else FIFOScheduler())
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=study.concurrency),
                                            scheduler=sched, num_samples=study.trials,
                                            trial_name_creator=_trial_name, trial_dirname_creator=_trial_name),
                run_config=_run_config(study.name, storage, recorder, max_failures))
            echo(f"harness sweep {study.name}: {study.trials} trials of {base.label()} on {study.data.name} "
                 f"{study.data.image_size}px, up to {study.scheduler.max_epochs} epochs, {study.concurrency} at a time, "
                 f"{study.resources.cpu:g} CPU + {study.resources.gpu:g} GPU each, sampler {study.sampler.type}, "
                 f"scheduler {study.scheduler.type} ({_describe_cluster()})")
        status = _fit(tuner, store, exp, recorder, exp_dir, echo)
        # Optuna trials of unfinished Ray trials stay RUNNING while the sweep can be resumed;
        # anything else RUNNING (an orphan of a killed driver, a NaN the searcher could not tell) fails.
        settle_optuna(db, study.name, keep=recorder.known if status == "interrupted" else set())
        result = summarize(store, exp, study, echo=echo, top=top)
        result.status, result.storage = status, exp_dir
        echo(f"results: experiment {exp} ({study.trials} trials) in {db} (tables experiments/runs/epochs; "
             f"Optuna study '{study.name}' in the same database: `optuna-dashboard {db}`); "
             f"Ray files and trial checkpoints in {exp_dir}")
        if status == "interrupted":
            echo(f"continue with: harness sweep {study_path} --resume --db {db} --storage-path {storage}")
        store.close()
        _LIVE.pop(recorder.key, None)
        return result


def _base_run(study: StudySpec, fault: FaultSpec | None) -> RunSpec:
    stands_for = {v: k for k, v in CPU_VARIANT.items()}.get(study.model)
    data = study.data
    if data.root is not None:  # trials run in Ray workers whose working folder is not ours
        data = data.model_copy(update={"root": data.root.resolve()})
    if fault is not None and fault.raise_once_file is not None:
        fault = fault.model_copy(update={"raise_once_file": fault.raise_once_file.resolve()})
    return RunSpec(model=study.model, recipe=study.base_recipe(), data=data, epochs=study.scheduler.max_epochs,
                   seed=study.seed, threads=max(1, int(study.resources.cpu)), stands_for=stands_for, fault=fault)


def summarize(store: Store, exp: int, study: StudySpec, *, echo: Callable[[str], None], top: int = 10) -> SweepResult:
    """Top trials as a table and the best parameters as YAML, from the database alone."""
    import pandas as pd

    df = store.read_sql("SELECT id, trial_id, optuna_trial, status, epochs_done, params, error FROM runs "
                        "WHERE experiment_id = :e ORDER BY id", e=exp)
    result = SweepResult(exp, "completed", Path())
    if df.empty:
        echo("no trials ran")
        return result
    ep = store.read_sql(f"SELECT run_id, epoch, {study.metric} AS m FROM epochs WHERE run_id IN "
                        f"(SELECT id FROM runs WHERE experiment_id = :e) ORDER BY run_id, epoch", e=exp)
    final = ep.groupby("run_id")["m"].last()
    best = ep.groupby("run_id")["m"].max() if study.mode == "max" else ep.groupby("run_id")["m"].min()
    rows = []
    for r in df.itertuples():
        params = r.params if isinstance(r.params, dict) else yaml.safe_load(r.params)
        rows.append({"trial": r.optuna_trial, "status": r.status, "epochs": r.epochs_done,
                     f"final {study.metric}": final.get(r.id), f"best {study.metric}": best.get(r.id),
                     **{k: params["recipe"][k] for k in study.search}, "run": r.id})
    table = pd.DataFrame(rows)
    rank = table[f"final {study.metric}"].astype(float)
    order = table.assign(_done=table.status.eq("completed"), _v=rank if study.mode == "min" else -rank)
    table = table.loc[order.sort_values(["_done", "_v"], ascending=[False, True]).index]
    counts = table.status.value_counts().to_dict()
    echo("")
    echo(f"{study.name}: {len(table)} trials — " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format", "{:.4g}".format):
        echo(table.head(top).to_string(index=False))
    result.table = table
    winner = table[table.status == "completed"].head(1)
    if winner.empty:
        echo("no trial completed all its epochs; no best parameters to report")
        return result
    w = winner.iloc[0]
    params = {k: (v.item() if hasattr(v, "item") else v) for k, v in w[list(study.search)].items()}
    params = {k: int(v) if study.search[k].type in ("int", "logint") else v for k, v in params.items()}
    result.best = {"run": int(w["run"]), "trial": w["trial"], "value": float(w[f"final {study.metric}"]), "params": params}
    snippet = yaml.safe_dump({"recipe": study.recipe, "fixed": {**study.fixed, **params}}, sort_keys=False)
    echo("")
    echo(f"best: trial {w['trial']} (run {int(w['run'])}), {study.metric} {w[f'final {study.metric}']:.4f} "
         f"after {int(w['epochs'])} epochs. As YAML (a study's recipe + fixed, or `harness train --set`):")
    echo(snippet.rstrip())
    sets = " ".join(f"--set {k}={v}" for k, v in {**study.fixed, **params}.items())
    echo(f"# harness train --model {study.model} --recipe {study.recipe} {sets}")
    return result
