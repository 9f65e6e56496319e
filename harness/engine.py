"""The one grid engine: trials through Ray Tune, recorded by one driver-side recorder. The only
module that imports Ray.

`harness sweep`, `harness benchmark` and `harness ablate` all end in `run_trials`: given a way to
make each trial's `RunSpec` from its Ray config (`make_spec`) and either a fixed number of runs
(a grid: config `{"run": i}`) or an Optuna study to sample from (`Search`: config = sampled recipe
fields, stopped early by ASHA), it wires Ray Tune the way Ray's own Optuna example does:

- how a trial runs: `_trainable` = `harness.train.fit()` with a `report` that hands every epoch
  (and the trial's last.pt/best.pt as a Ray checkpoint) to `ray.tune.report`. A retried or resumed
  trial gets its checkpoint back through `ray.tune.get_checkpoint()` and continues at epoch k+1.
  Workers are reused across trials (`reuse_actors`): torch and timm are imported once per slot.
- how a result is stored: `Recorder`, a `ray.tune.Callback` in the driver, the only database
  writer. One `runs` row per trial, every epoch, the final status told apart (completed / stopped
  early / diverged / failed / interrupted), the evaluation of the last report.
- stops: Ctrl-C and SIGTERM stop Tune gracefully; what finished is read back from the state Tune
  saved and the `runs` rows reconciled with it (`_reconcile`). An interrupted experiment keeps its
  unfinished trials `interrupted` (and their Optuna trials RUNNING) for `--resume`.

Private Ray attributes used (pinned by tests/test_engine_contract.py): OptunaSearch's `_ot_trials`,
`_ot_study` and `_completed_trials` (the subclass tags each Optuna trial with its Ray trial id and
tells Optuna the outcome itself).

Length (~870 lines): this is every line of Ray the harness has, kept in one module on purpose
(DESIGN.md: "Ray is imported in one module"); the recorder is most of it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

# Under `uv run`, Ray's uv hook would re-create the project's environment for every worker from the
# working folder (and refuses to start when the project is elsewhere, e.g. `uv run --project`). Local
# workers run this very interpreter, and cluster nodes must have the harness installed anyway.
# Set RAY_ENABLE_UV_RUN_RUNTIME_ENV=1 to get Ray's behaviour back. (Read when Ray is imported.)
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

import ray  # noqa: E402
import sqlalchemy as sa  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler  # noqa: E402
from ray.tune.search import ConcurrencyLimiter  # noqa: E402
from ray.tune.search.optuna import OptunaSearch  # noqa: E402

from harness.errors import UserError  # noqa: E402
from harness.progress import LiveView  # noqa: E402
from harness.specs import ResourcesSpec, RunSpec, StudySpec, _check_resources, check_local_resources  # noqa: E402
from harness.store import Store, check_url, experiments, now, runs, shown_url  # noqa: E402
from harness.train import EpochReport, fit  # noqa: E402

OPTUNA_KEY = "_optuna_trial"  # added to each sampled config by the searcher: the Optuna trial number
FINAL = ("completed", "stopped", "diverged", "failed", "time_limit")
DEFAULT_STORAGE = Path("ray_results")
# Ray saves its experiment state (trials, searcher) at most this often (s). Tune's default ("auto",
# >= 10 s) would let a killed driver lose up to 10 s of trial bookkeeping; the state is small.
EXPERIMENT_STATE_PERIOD_S = "1"
WHERE = ("node", "node_id", "gpus")  # where a trial ran: in every result, stored by the recorder
CONNECT_TIMEOUT_S = 5  # a cluster address that does not answer in this long is reported, not waited for
STORAGE_PROBE_S = 30  # how long every node gets to say whether it sees --storage-path

log = logging.getLogger(__name__)


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
        return f"{s.label()} / {s.recipe.label()} / seed {s.seed}"


@dataclass(frozen=True)
class Search:
    """Trials sampled by the study's Optuna sampler (storage: the results database), stopped early
    by ASHA when the study says so."""

    study: StudySpec
    db: str


@dataclass(frozen=True)
class Experiment:
    """The `experiments` row the trials are recorded under; `id` set = continue that one (--resume)."""

    kind: str  # sweep | benchmark | ablate
    name: str
    description: str = ""
    spec_yaml: str = ""
    id: int | None = None


@dataclass
class Outcome:
    experiment_id: int
    status: str  # completed | interrupted
    exp_dir: Path  # Ray's experiment folder (state and trial checkpoints)
    known: set[str] = field(default_factory=set)  # every Ray trial id Tune holds (resumable ones included)


# --- resources ---------------------------------------------------------------------------------

def check_resources(resources: ResourcesSpec, *, field: str, address: str | None) -> str:
    """Refuse per-trial resources no node can give (Ray would leave the trial PENDING forever).

    Without a Ray cluster this checks this machine; with `address` (or a Ray already started in this
    process) it checks the largest node of the cluster. Returns a description of what is there.
    """
    if address is None and not ray.is_initialized():
        return check_local_resources(resources, field=field)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    return _check_resources(resources, max((n.get("CPU", 0) for n in nodes), default=0),
                            max((n.get("GPU", 0) for n in nodes), default=0), "the largest node of the Ray cluster", field)


def gpu_idle_warning(resources: ResourcesSpec, gpus: float, *, field: str, where: str = "this machine") -> str | None:
    """One line when trials ask for no GPU where there are some (None otherwise).

    Ray >= 2.60 no longer hides the cards from a task granted 0 GPUs, but the trainable follows the
    grant (`device_for_grant`), so such trials train on the CPU while the GPUs idle: say so, and how to
    share a card instead (benchmark and ablate do that themselves on a GPU machine)."""
    if resources.gpu > 0 or gpus <= 0:
        return None
    key = field.rsplit(": ", 1)[-1]  # a study's field is "<file>: resources"
    return (f"warning: {field}.gpu is 0 on {where} with {gpus:g} GPU{'s' if gpus != 1 else ''}: trials train on the CPU; "
            f"set {key}: {{gpu: 0.5}} (or 1/concurrency) to share a card between trials, or 1 for a card each.")


def _local_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def device_for_grant(requested: str, gpu_ids: list, cuda_available: bool) -> str:
    """The device a Ray trial trains on, from what Ray granted it (`ray.get_gpu_ids()`), not from
    whether this process can see a GPU: Ray 2.60 leaves CUDA_VISIBLE_DEVICES untouched for a trial
    granted 0 GPUs (ray/_private/utils.py `set_visible_accelerator_ids` skips it unless
    RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1), so `cuda.is_available()` is true in a CPU trial on a GPU machine.

    - "auto": no GPU granted -> "cpu"; granted (a fraction shows as one id, e.g. ['0'] for gpu: 0.5)
      -> "cuda", which is the granted card: Ray sets CUDA_VISIBLE_DEVICES to the grant, so torch
      numbers the granted cards from cuda:0. Granted but CUDA unusable here -> "cpu", as `auto` does
      everywhere.
    - "cpu": stays "cpu" (asked for explicitly, even with a grant).
    - "cuda" / "cuda:N" asked for explicitly: kept when the trial was granted a card for it; N counts
      the granted cards only (cuda:1 needs a grant of 2 GPUs). A CUDA device the trial was not
      granted is refused: it would train on a card Ray gave to another trial (or to nobody).
    """
    if requested == "auto":
        return "cuda" if gpu_ids and cuda_available else "cpu"
    if not requested.startswith("cuda"):
        return requested
    tail = requested.partition(":")[2]
    if tail and not tail.isdigit():
        return requested  # not a device: train.resolve_device refuses it with torch's own message
    index = int(tail or 0)
    if index >= len(gpu_ids):
        granted = f"{len(gpu_ids)} GPU{'s' if len(gpu_ids) != 1 else ''} (visible to it as cuda:0..cuda:{len(gpu_ids) - 1})" \
            if gpu_ids else "no GPU"
        raise UserError("device", requested, f"this trial was granted {granted}; use device auto (the granted card), "
                        "or ask for more GPUs per trial in resources.gpu.")
    return requested


def resumable(db: str, *, kind: str, name: str, storage_path: Path | str, again: str) -> dict:
    """The latest unfinished `kind` experiment called `name`, with Ray's state there to continue it
    (grids keep theirs in <storage_path>/<kind>-<id>); UserError otherwise. Reads only."""
    from harness.store import sqlite_path

    path = sqlite_path(db)
    row = None
    if path is None or path.exists():
        store = Store(db, create=False)
        try:
            row = store.find_experiment(kind=kind, name=name)
        except sa.exc.SQLAlchemyError:  # not a harness database (yet)
            row = None
        finally:
            store.close()
    if row is None:
        raise UserError("--resume", name, f"No {kind} of that name in {shown_url(db)} to continue; run `{again}` without "
                        "--resume (or pass the --db it was recorded in).")
    if row["status"] == "completed":
        raise UserError("--resume", name, f"The {kind} of that name in {shown_url(db)} (experiment {row['id']}) already completed; "
                        f"nothing to continue. Run `{again}` without --resume for a new one.")
    exp_dir = Path(storage_path).resolve() / f"{kind}-{row['id']}"
    if not can_restore(exp_dir):
        raise UserError("--storage-path", str(storage_path), f"No Ray state for {kind} experiment {row['id']} in {exp_dir}; "
                        "pass the --storage-path it ran with (default ray_results, relative to where it ran).")
    return row


def can_restore(exp_dir: Path) -> bool:
    """Whether Ray saved an experiment state there that `run_trials` can continue."""
    return tune.Tuner.can_restore(str(exp_dir))


def check_shared_storage(storage: Path, *, field: str = "--storage-path") -> None:
    """On a cluster of several nodes, refuse a storage path some node cannot see.

    Ray keeps trial checkpoints and experiment state under `storage`; a node that writes them to its
    own disk leaves the driver (and a retried trial on another node) without them. The driver writes
    a marker file there and a zero-CPU task on each node looks for it (zero CPU: it runs even where
    every CPU is taken)."""
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) < 2:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    made = not storage.exists()
    storage.mkdir(parents=True, exist_ok=True)
    marker = storage / f".harness-probe-{uuid.uuid4().hex}"
    marker.write_text("harness: can every node see this folder?\n")

    def sees(path: str) -> tuple[bool, str]:  # nested: pickled by value, so a node's worker imports no harness
        import os
        import socket

        return os.path.exists(path), socket.gethostname()

    probe = ray.remote(num_cpus=0)(sees)
    try:
        refs = {n["NodeID"]: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(marker)) for n in nodes}
        try:
            seen = dict(zip(refs, ray.get(list(refs.values()), timeout=STORAGE_PROBE_S)))
        except ray.exceptions.GetTimeoutError:
            raise UserError(field, str(storage), f"Not every node of the Ray cluster answered within {STORAGE_PROBE_S} s "
                            "when asked whether it sees this folder; check `ray status` and try again.") from None
    finally:
        marker.unlink(missing_ok=True)
    blind = [f"{host} (node {node_id[:8]})" for node_id, (found, host) in seen.items() if not found]
    if blind:
        if made:
            shutil.rmtree(storage, ignore_errors=True)
        raise UserError(field, str(storage), f"{', '.join(blind)} cannot see this folder (Ray keeps trial checkpoints and "
                        "its state there, and a trial retried on another node needs them): put it on a filesystem every "
                        "node mounts at the same path (NFS, a shared disk), e.g. --storage-path /shared/ray_results.")


def where_am_i() -> dict[str, str]:
    """The machine a trial runs on: hostname, Ray node id, and its GPUs as "<id>: <name>" joined by
    "; " ("" = CPU only). Ray sets CUDA_VISIBLE_DEVICES to the trial's GPUs, so torch's device i is
    Ray's i-th GPU id."""
    gpus = ""
    ids = ray.get_gpu_ids()
    if ids:
        import torch

        names = [torch.cuda.get_device_name(i) if torch.cuda.is_available() else "?" for i in range(len(ids))]
        gpus = "; ".join(f"{gid}: {name}" for gid, name in zip(ids, names))
    return {"node": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id(), "gpus": gpus}


def describe_cluster() -> str:
    r = ray.cluster_resources()
    return f"ray: {r.get('CPU', 0):g} CPUs, {r.get('GPU', 0):g} GPUs"


# --- how a trial runs --------------------------------------------------------------------------

def trial_name(trial: Any) -> str:
    """'trial_7' (the Optuna trial number, as optuna-dashboard shows it) or 'run_3' (grid index)."""
    c = trial.config or {}
    if OPTUNA_KEY in c:
        return f"trial_{c[OPTUNA_KEY]}"
    if "run" in c:
        return f"run_{c['run']}"
    return f"trial_{str(trial.experiment_tag).split('_')[0]}"


def _trainable(config: dict[str, Any], *, make_spec: SpecMaker) -> None:
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

        where = where_am_i()
        import torch

        spec = spec.model_copy(update={"device": device_for_grant(spec.device, ray.get_gpu_ids(), torch.cuda.is_available())})

        def report(r: EpochReport) -> None:
            metrics: dict[str, Any] = {**r.metrics, "epoch": r.epoch, "status": r.status, **where}
            if r.evaluation is not None:
                metrics["evaluation"] = r.evaluation  # popped by the driver's recorder (kept out of Ray's logs)
            # Ray copies the folder to the trial's storage (synchronously) before this returns.
            ckpt = tune.Checkpoint.from_directory(str(local)) if r.checkpoint is not None else None
            tune.report(metrics, checkpoint=ckpt)

        fit(spec, report, resume=resume)


class _HarnessOptunaSearch(OptunaSearch):
    """OptunaSearch with the outcomes told apart (harness.study.outcome) and each Optuna trial
    tagged with its Ray trial id (user attr `ray_trial_id`, visible in optuna-dashboard)."""

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if params is not None:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            params = {**params, OPTUNA_KEY: ot_trial.number}
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from harness import study as study_mod

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        result = result or {}
        study_mod.tell(self._ot_study, self._ot_trials[trial_id], result.get("status"), result.get(self.metric), error)
        self._completed_trials.add(trial_id)


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs survive a stopped driver.

    Tune pickles the scheduler once, with the Tuner, and never saves or restores its state (Ray 2.x),
    so a resumed sweep would start its rungs empty: cut-offs computed from the resumed trials alone.
    Here the state is written (ASHAScheduler.save, atomically) beside Tune's after every result and
    read back (ASHAScheduler.restore) at the first call after a restart. The trials it stopped are
    part of that state: Tune saves its own at most every second, so a trial stopped just before a
    kill can come back as unfinished, and is stopped again at its first result.

    The state file is found through the experiment folder `run_trials` is working in now
    (`_STATE_DIRS`), so a moved `--storage-path` still finds it."""

    def __init__(self, *, state_path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state_name = Path(state_path).parent.name  # the experiment folder's name
        self._state_path = str(state_path)  # where it was first written (the fallback)
        self._stopped: set[str] = set()
        self._loaded = False

    def __getstate__(self) -> dict:  # what the Tuner pickles: never "already loaded"
        return {**self.__dict__, "_loaded": False}

    def _path(self) -> Path:
        folder = _STATE_DIRS.get(self._state_name)
        return folder / ASHA_STATE if folder is not None else Path(self._state_path)

    def _load(self) -> None:
        if self._loaded:
            return
        path = self._path()
        if path.is_file():
            keep = {k: self.__dict__[k] for k in ("_state_name", "_state_path")}
            self.restore(str(path))
            self.__dict__.update(keep)
        self._loaded = True

    def _save(self) -> None:
        path = self._path()
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            self.save(str(tmp))
            os.replace(tmp, path)
        except OSError as e:  # a full disk must not stop the sweep; the resume then starts ASHA over
            log.warning("ASHA state not saved to %s: %s", path, e)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load()
        if trial.trial_id not in self._trial_info:  # a restored trial keeps its bracket
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._load()
        if trial.trial_id in self._stopped:  # stopped before a restart that Tune's state missed
            return TrialScheduler.STOP
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            self._stopped.add(trial.trial_id)
        self._save()
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._load()
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
            self._save()

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._load()
        if trial.trial_id in self._trial_info:
            super().on_trial_remove(tune_controller, trial)
            self._save()


_STATE_DIRS: dict[str, Path] = {}  # experiment folder name -> where run_trials finds it in this process
ASHA_STATE = "asha-state.pkl"  # beside Tune's own files in the experiment folder


def _tune_config(search: Search | None, *, concurrency: int, total: int, db: str,
                 exp_dir: Path) -> tuple[tune.TuneConfig, dict | None]:
    """(TuneConfig, param_space): an Optuna searcher + ASHA for a sweep, a grid over run indices otherwise."""
    common = dict(reuse_actors=True,  # a finished trial's worker takes the next: torch/timm imported once per slot
                  trial_name_creator=trial_name, trial_dirname_creator=trial_name)
    if search is None:
        return (tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrency, scheduler=FIFOScheduler(), **common),
                {"run": tune.grid_search(list(range(total)))})
    from harness import study as study_mod

    s = search.study
    searcher = _HarnessOptunaSearch(space=study_mod.search_space(s), metric=s.metric, mode=s.mode,
                                    sampler=study_mod.sampler(s), study_name=s.name,
                                    storage=study_mod.optuna_storage(search.db))
    scheduler = (ResumableASHA(state_path=exp_dir / ASHA_STATE, time_attr="epoch", metric=s.metric, mode=s.mode,
                               max_t=s.scheduler.max_epochs, grace_period=s.scheduler.grace_period,
                               reduction_factor=s.scheduler.reduction_factor)
                 if s.scheduler.type == "asha" else FIFOScheduler())
    return (tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency), scheduler=scheduler,
                            num_samples=total, **common), None)


# --- how a result is stored (driver side, the only DB writer) -----------------------------------

# A restored Tuner unpickles its callbacks from the experiment folder; Tune.restore takes no new
# ones. The recorder pickles as a key into this registry, so the restored Tuner gets this
# process's live recorder (with its open store), never a stale copy.
_LIVE: dict[str, Recorder] = {}


def _live_recorder(key: str) -> tune.Callback:
    if key not in _LIVE:  # a key pickled before keys were canonical: "sqlite:///r.db#3"
        db, _, exp = key.rpartition("#")
        key = _recorder_key(db, int(exp)) if exp.isdigit() else key
    if key not in _LIVE:  # a restored Tuner without its recorder would record nothing: refuse loudly
        raise RuntimeError(f"no live recorder for {key}: restore the experiment through harness.engine.run_trials")
    return _LIVE[key]


def _recorder_key(db: str, exp: int) -> str:
    """The same database however its URL is spelled (sqlite:///./r.db and sqlite:///r.db)."""
    from harness.store import sqlite_path

    path = sqlite_path(db)
    return f"{path.resolve() if path is not None else db}#{exp}"


class Recorder(tune.Callback):
    def __init__(self, *, key: str, store: Store, experiment_id: int, make_spec: SpecMaker, metric: str, mode: str,
                 total: int, view: LiveView, stopper: str, pages: Callable[[], None] | None = None,
                 pages_every_s: float = 30.0) -> None:
        self.key, self.store, self.experiment_id, self.make_spec = key, store, experiment_id, make_spec
        self.metric, self.mode, self.total, self.view, self.stopper = metric, mode, total, view, stopper
        self.echo = view.echo
        self.pages, self.pages_every_s = pages, pages_every_s
        self.pages_at = time.monotonic()  # the first rewrite comes one period in
        self.exp_dir: Path | None = None  # set by run_trials: where Tune keeps its state
        self.backup_at = 0.0
        self.run_ids: dict[str, int] = {}
        self.last: dict[str, dict[str, Any]] = {}  # last result per trial seen in this session
        self.finished: dict[str, str] = {}  # trial_id -> final status (this session)
        self.started: set[str] = set()
        self.known: set[str] = set()  # every trial Tune holds (finished, running, pending)
        self.best: tuple[float, str] | None = None
        _LIVE[key] = self

    def __reduce__(self) -> tuple:
        return (_live_recorder, (self.key,))

    def _name(self, trial: Any) -> str:
        return trial_name(trial).replace("_", " #" if OPTUNA_KEY in trial.config else " ")

    def _counts(self) -> str:
        with self.store.engine.connect() as c:
            counts = dict(c.execute(sa.select(runs.c.status, sa.func.count())
                                    .where(runs.c.experiment_id == self.experiment_id).group_by(runs.c.status)).all())
        done = sum(v for k, v in counts.items() if k in FINAL)
        return f"[{counts.get('running', 0)} running, {done}/{self.total} done]"

    def _run_for(self, trial: Any) -> int:
        tid = trial.trial_id
        if tid not in self.run_ids:
            with self.store.engine.connect() as c:
                rid = c.execute(sa.select(runs.c.id).where(runs.c.experiment_id == self.experiment_id,
                                                           runs.c.trial_id == tid)).scalar()
            if rid is None:
                spec = self.make_spec(trial.config)
                rid = self.store.create_run(self.experiment_id, model=spec.model, recipe=spec.recipe.label(),
                                            params=spec.model_dump(mode="json"), seed=spec.seed,
                                            stands_for=spec.stands_for, trial_id=tid,
                                            optuna_trial=trial.config.get(OPTUNA_KEY))
            self.run_ids[tid] = rid
        return self.run_ids[tid]

    def _recorded(self, rid: int, column: sa.Column) -> Any:
        with self.store.engine.connect() as c:
            return c.execute(sa.select(column).where(runs.c.id == rid)).scalar()

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rid = self._run_for(trial)
        with self.store.engine.begin() as c:
            c.execute(runs.update().where(runs.c.id == rid).values(status="running", error=None, finished_at=None))
        done = self._recorded(rid, runs.c.epochs_done) or 0
        again = "resumed" if trial.trial_id in self.started or done else "started"
        self.started.add(trial.trial_id)
        self.echo(f"{self._name(trial)} {again}: {self.make_spec.label(trial.config)}  {self._counts()}")
        spec = self.make_spec(trial.config)
        self.view.run_started(trial.trial_id, f"{self._name(trial)}  {spec.model} / {spec.recipe.label()}", spec.epochs,
                              done=done)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        rid = self._run_for(trial)
        evaluation = result.pop("evaluation", None)  # large; only the database keeps it
        if trial.trial_id not in self.last and int(result["epoch"]) > 1:
            self.echo(f"{self._name(trial)} continued from its checkpoint at epoch {int(result['epoch'])}")
        where = {k: result.get(k) for k in WHERE}  # left in the result: Tune's own logs show them too
        self.store.log_epoch(rid, int(result["epoch"]), result, where=where if where["node_id"] else None)
        if evaluation is not None:
            self.store.save_evaluation(rid, evaluation)
        self.last[trial.trial_id] = {k: result.get(k) for k in (self.metric, "epoch", "status", "time_total_s")}
        self.view.epoch(trial.trial_id, int(result["epoch"]), result)
        self._rewrite_pages()
        self._backup_state()

    def _backup_state(self) -> None:
        """A whole copy of Tune's state files, at most every second (see `backup_state`)."""
        if self.exp_dir is not None and time.monotonic() - self.backup_at >= 1.0:
            try:
                backup_state(self.exp_dir)
            except OSError as e:
                log.warning("Tune state not backed up: %s", e)
            self.backup_at = time.monotonic()

    def _rewrite_pages(self) -> None:
        """The live pages, at most every `pages_every_s` (each write is atomic; a failure is logged, not fatal)."""
        if self.pages is None or time.monotonic() - self.pages_at < self.pages_every_s:
            return
        try:
            self.pages()
        except Exception as e:  # noqa: BLE001 - a page is never worth a sweep
            self.echo(f"warning: live pages not updated ({type(e).__name__}: {e})")
        self.pages_at = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rid = self._run_for(trial)
        last = self.last.get(trial.trial_id)
        if last is None:  # nothing reported this session (resumed at its last epoch): keep what is recorded
            recorded = self._recorded(rid, runs.c.status)
            status = recorded if recorded in FINAL else "completed"
            last = {k: (trial.last_result or {}).get(k) for k in (self.metric, "epoch", "status", "time_total_s")}
        else:  # a last report still "running" = the scheduler stopped it
            status = {"running": "stopped"}.get(last.get("status"), last.get("status") or "completed")
        self.store.finish_run(rid, status=status, wall_s=last.get("time_total_s"))
        self.finished[trial.trial_id] = status
        self.view.run_finished(trial.trial_id)
        value = last.get(self.metric)
        finite = isinstance(value, (int, float)) and math.isfinite(value)
        shown = f"{self.metric} {value:.4f}" if finite else f"{self.metric} {value}"
        what = {"stopped": f"stopped by {self.stopper} after epoch {last.get('epoch')}",
                "completed": f"completed {last.get('epoch')} epochs",
                "diverged": f"diverged (loss NaN/Inf) at epoch {last.get('epoch')}"}.get(status, status)
        if status == "completed" and finite:
            if self.best is None or (value > self.best[0] if self.mode == "max" else value < self.best[0]):
                self.best = (value, self._name(trial))
        best = f"  best so far {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        self.echo(f"{self._name(trial)} {what}: {shown}{best}  {self._counts()}")

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.known.update(t.trial_id for t in trials)
        self._rewrite_pages()
        self._backup_state()

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
        self.view.run_finished(trial.trial_id)
        self.echo(f"{self._name(trial)} failed: {text.splitlines()[0]}  {self._counts()}")


def _error_text(trial: Any) -> str:
    """'ExcType: message' first (with a hint for known causes), then the traceback tail."""
    raw = ""
    path = trial.error_file
    if path and Path(path).is_file():
        raw = Path(path).read_text(errors="replace")
        raw = raw.rsplit("Failure # ", 1)[-1]  # the file accumulates one block per failure; keep the latest
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

STATE_BACKUP = ".harness-last-good"  # in the experiment folder: Tune's state files as last seen whole
_STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "tuner.pkl")


def _whole(path: Path) -> bool:
    """Whether a Tune state file is complete: Tune copies them into the storage folder in place, so a
    driver killed mid-copy leaves an empty or cut-off file that Tuner.restore cannot read."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if not data:
        return False
    if path.name.startswith("experiment_state-"):  # JSON; the others are pickles (search_gen_state's ".json" too)
        try:
            json.loads(data)
        except ValueError:
            return False
    return True


def backup_state(exp_dir: Path) -> None:
    """Keep a copy of each of Tune's state files that is whole (each copy replaced atomically)."""
    good = exp_dir / STATE_BACKUP
    for pattern in _STATE_FILES:
        for f in exp_dir.glob(pattern):
            kept = good / f.name
            mtime = f.stat().st_mtime
            if (kept.is_file() and kept.stat().st_mtime >= mtime) or time.time() - mtime < 0.5:
                continue  # already kept, or maybe still being written (a .pkl cannot be checked like JSON)
            if _whole(f):
                good.mkdir(exist_ok=True)
                tmp = kept.with_name(f".{f.name}.tmp-{os.getpid()}")
                shutil.copy2(f, tmp)
                os.replace(tmp, kept)


def repair_state(exp_dir: Path, echo: Callable[[str], None]) -> None:
    """Before a restore: put back the last whole copy of any state file a kill left cut off."""
    good = exp_dir / STATE_BACKUP
    for kept in sorted(good.glob("*")) if good.is_dir() else []:
        if kept.name.startswith("."):
            continue
        live = exp_dir / kept.name
        if not _whole(live):
            shutil.copy2(kept, live)
            echo(f"note: {live.name} was cut off (the driver was killed while Tune wrote it); "
                 "using its last whole copy, up to a second older")
    for pattern in _STATE_FILES:
        for live in exp_dir.glob(pattern):
            if not _whole(live):
                raise UserError("--resume", str(exp_dir), f"Ray's saved state {live.name} is cut off (the driver was "
                                "killed while writing it) and no whole copy was kept; run without --resume "
                                "(what finished stays in the database).")


def run_trials(make_spec: SpecMaker, *, experiment: Experiment, total: int, resources: ResourcesSpec,
               concurrency: int, db: str, search: Search | None = None, address: str | None = None,
               storage_path: Path | str = DEFAULT_STORAGE, ray_name: str | None = None, max_failures: int = 1,
               resources_field: str = "resources", headline: Callable[[str], str] | None = None,
               pages: Callable[[], None] | None = None, pages_every_s: float = 30.0,
               echo: Callable[[str], None] = print) -> Outcome:
    """Run the trials through Ray Tune, recording each in `db`; returns how the experiment ended.

    `ray_name` names Ray's experiment folder under `storage_path` (default `<kind>-<experiment id>`);
    with `experiment.id` set the Tuner is restored from that folder: finished trials stay finished,
    unfinished ones continue from their last checkpoint, and only the missing samples are created.
    `pages` (the live dashboards) is called at most every `pages_every_s` while trials run.
    Bad input -> UserError before anything is written.
    """
    check_url(db)
    if concurrency < 1:
        raise UserError("concurrency", concurrency, "Run at least 1 trial at a time.")
    if max_failures < 0:
        raise UserError("--max-failures", max_failures, "Use 0 (no retries) or more.")
    checked_here = address is None and not ray.is_initialized()
    if checked_here:  # before starting Ray: a trial bigger than the machine would stay PENDING forever
        check_resources(resources, field=resources_field, address=None)
        idle = gpu_idle_warning(resources, _local_gpus(), field=resources_field)
    _quiet_tune()
    with _ray(address):
        if not checked_here:  # the cluster's largest node
            check_resources(resources, field=resources_field, address=address)
            idle = gpu_idle_warning(resources, ray.cluster_resources().get("GPU", 0), field=resources_field,
                                    where="the Ray cluster")
        if idle:
            echo(idle)
        check_shared_storage(Path(storage_path).resolve())
        cluster = describe_cluster()
        store = Store(db)
        restore = experiment.id is not None
        if restore:
            exp = experiment.id
            with store.engine.begin() as c:
                c.execute(experiments.update().where(experiments.c.id == exp).values(status="running", finished_at=None))
        else:
            exp = store.create_experiment(kind=experiment.kind, name=experiment.name, description=experiment.description,
                                          spec=experiment.spec_yaml, device=cluster)
        storage = Path(storage_path).resolve()
        exp_dir = storage / (ray_name or f"{experiment.kind}-{exp}")
        _STATE_DIRS[exp_dir.name] = exp_dir
        view = LiveView(title=f"{experiment.kind} {experiment.name}", total_runs=total, slots=concurrency, echo=echo)
        recorder = Recorder(key=_recorder_key(db, exp), store=store, experiment_id=exp, make_spec=make_spec,
                            metric=search.study.metric if search else "val_acc", mode=search.study.mode if search else "max",
                            total=total, view=view, pages=pages, pages_every_s=pages_every_s,
                            stopper="ASHA" if search is not None and search.study.scheduler.type == "asha" else "none")
        trainable = tune.with_resources(tune.with_parameters(_trainable, make_spec=make_spec),
                                        {"cpu": resources.cpu, "gpu": resources.gpu})
        try:
            recorder.exp_dir = exp_dir
            if restore:
                repair_state(exp_dir, echo)
                tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=False)
                with store.engine.connect() as c:
                    done = c.execute(sa.select(sa.func.count()).where(runs.c.experiment_id == exp,
                                                                      runs.c.status.in_(FINAL))).scalar()
                echo(f"harness {experiment.kind} {experiment.name}: resuming ({done} of {total} trials finished)")
                view.finished = done
            else:
                tune_config, param_space = _tune_config(search, concurrency=concurrency, total=total, db=db, exp_dir=exp_dir)
                tuner = tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                                   run_config=tune.RunConfig(
                                       name=exp_dir.name, storage_path=str(storage), callbacks=[recorder], verbose=0,
                                       failure_config=tune.FailureConfig(max_failures=max_failures),
                                       # Only the latest checkpoint of a trial is needed to retry or resume it.
                                       checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
                echo(headline(cluster) if headline else
                     f"harness {experiment.kind} {experiment.name}: {total} runs, {concurrency} at a time, "
                     f"{resources.cpu:g} CPU + {resources.gpu:g} GPU each ({cluster})")
            with view:
                status = _fit(tuner, store, exp, recorder, exp_dir, view.echo)
            return Outcome(exp, status, exp_dir, set(recorder.known))
        finally:
            store.close()
            _LIVE.pop(recorder.key, None)


def _fit(tuner: tune.Tuner, store: Store, exp: int, recorder: Recorder, exp_dir: Path,
         echo: Callable[[str], None]) -> str:
    """tuner.fit() with clean stops; returns the experiment's final status."""
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
    return _reconcile(store, exp, recorder, exp_dir, echo, interrupted)


def _reconcile(store: Store, exp: int, recorder: Recorder, exp_dir: Path, echo: Callable[[str], None],
               interrupted: bool) -> str:
    """Make the runs rows agree with the experiment state Tune saved last (its in-memory trials are
    all marked TERMINATED by its cleanup after a Ctrl-C), then close the experiment."""
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


@contextmanager
def _ray(address: str | None) -> Iterator[None]:
    """Start (or attach to) Ray unless this process already did; shut down only what we started."""
    if ray.is_initialized():
        yield
        return
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if address is not None:
        _probe(address)
        # Ray retries a refused GCS connection for ~20 s (one try a second); the head answered the
        # probe, so a few tries tell a wrong token or version from a slow start.
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(CONNECT_TIMEOUT_S))
    try:
        # "local": a new Ray for this run even when `ray start` left one running on this machine
        # (address=None would attach to it, and to its CPUs and its other jobs).
        ray.init(address=address or "local", include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR,
                 configure_logging=True)
    except (ConnectionError, ValueError, RuntimeError) as e:
        if address is None:
            raise
        raise UserError("--address", address, _attach_fix(address, e)) from None
    try:
        yield
    finally:
        ray.shutdown()


def _probe(address: str) -> None:
    """A TCP connect to the head first: ray.init waits indefinitely for an address nobody answers."""
    if address in ("auto", "local"):
        return
    host, _, port = address.split("://", 1)[-1].rpartition(":")
    if not host or not port.isdigit():
        raise UserError("--address", address, "Give the head node's HOST:PORT as `ray start --head` printed it "
                        "(e.g. 10.0.0.5:6379), or leave --address out to run on this machine.")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise UserError("--address", address, f"Nothing answered at {host}:{port} within {CONNECT_TIMEOUT_S} s "
                        f"({e.strerror or type(e).__name__}); start the head there with `ray start --head --port {port}`, "
                        "check the host name, port and firewall, or leave --address out to run on this machine.") from None


def _attach_fix(address: str, e: BaseException) -> str:
    """Why attaching to a cluster that answered failed, with the fix."""
    chain, cause = [], e
    while cause is not None:
        chain.append(f"{type(cause).__name__}: {cause}")
        cause = cause.__cause__ or cause.__context__
    text = " ".join(chain)
    if "InvalidAuthToken" in text or "AuthenticationError" in text:
        return ("The cluster there requires Ray's token authentication and this machine did not present its token: "
                "export RAY_AUTH_MODE=token here (as on every node), with the head's token in ~/.ray/auth_token "
                "(`ray get-auth-token` on the head prints it) or in RAY_AUTH_TOKEN.")
    return (f"Cannot attach to a Ray cluster there ({str(e).splitlines()[0][:160]}); check that it is a Ray head "
            "node's GCS port and that this machine runs the same Ray version, or leave --address out.")


@contextmanager
def _sigterm_stops_tune() -> Iterator[None]:
    """Ray Tune stops gracefully on SIGINT (and SIGUSR1) but not on SIGTERM: make SIGTERM do the same."""
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


def run_grid(runs_: list[RunSpec], *, db: str, experiment: Experiment, concurrency: int, resources: ResourcesSpec,
             address: str | None = None, storage_path: Path | str = DEFAULT_STORAGE, max_failures: int = 1,
             pages: Callable[[], None] | None = None, pages_every_s: float = 30.0,
             echo: Callable[[str], None] = print) -> Outcome:
    """Every RunSpec once (no early stopping, no Optuna): benchmark and ablate grids. With
    `experiment.id` set, that grid continues from Ray's saved state (`resumable` finds it)."""
    if not runs_:
        raise UserError("runs", [], "Nothing to run; list at least one model and recipe.")
    outcome = run_trials(GridSpecs(tuple(runs_)), experiment=experiment, total=len(runs_), resources=resources,
                         concurrency=concurrency, db=db, address=address, storage_path=storage_path,
                         max_failures=max_failures, pages=pages, pages_every_s=pages_every_s, echo=echo)
    echo(f"{experiment.kind} {outcome.status}: experiment {outcome.experiment_id} in {shown_url(db)}; "
         f"Ray files in {outcome.exp_dir}")
    return outcome
