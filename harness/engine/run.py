"""Running trials through Ray Tune: the wiring, clean stops, and the database made to agree with Tune.

`run_trials` is where `harness sweep`, `harness benchmark` and `harness ablate` end
(`experiment.run_experiment` calls it): given their `Trials` (a way to make each trial's `RunSpec`
from its Ray config, and either a fixed number of runs (a grid: config `{"run": i}`, `Trials.grid`)
or an Optuna study to sample from (`search.Search`)) and where they run and are recorded (the database
URL, Ray's address and storage folder, the live pages and trackers: plain values, so the engine imports
nothing above it), it starts
Ray (`cluster.ray_session`), creates or reopens the `experiments` row, builds the Tuner (or restores
it from the experiment folder), and runs it with the `Recorder` as its callback and the live pages
(if any) on a thread of their own. Ctrl-C and SIGTERM stop Tune gracefully; what finished is then
read back from the state Tune saved and the `runs` rows reconciled with it (`_reconcile`). An
interrupted experiment keeps its unfinished trials `interrupted` (and their Optuna trials RUNNING)
for `--resume`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import ray
from ray import tune

from harness.engine.cluster import (
    check_cluster_resources,
    check_ray_sees_the_gpus,
    check_shared_storage,
    describe_cluster,
    gpu_idle_warning,
    quiet_tune,
    ray_session,
)
from harness.engine.recorder import _LIVE, FINAL, Recorder, error_text, final_status, recorder_key
from harness.engine.search import Search, SeedLooks, seeds_finished, tune_config
from harness.engine.state import (
    check_claim,
    claim,
    forget_state_dir,
    looks_said,
    new_ray_folder,
    ray_folder,
    remember_state_dir,
    repair_checkpoints,
    repair_state,
)
from harness.engine.trial import GridSpecs, SpecMaker, _trainable
from harness.errors import UserError
from harness.progress import LiveView
from harness.resources import check_local_resources, local_gpus
from harness.specs import ResourcesSpec, RunSpec
from harness.store import Store
from harness.trackers import Trackers


class PageListener(Protocol):
    """The live pages (`dashboards.LivePages`): started once the experiment row exists, stopped when
    the trials end; they read the database on their own, never through the recorder."""

    def start(self, experiment_id: int) -> None: ...
    def stop(self) -> None: ...


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


@dataclass(frozen=True)
class Trials:
    """What a command runs: how each trial's RunSpec is made from its Ray config, how many trials, how
    many at a time, on what share of a machine (`gpu: auto` is resolved by `run_trials`), and for a
    sweep the Optuna search. The bounds (at least 1 trial at a time, no negative retries) are checked
    at the edge, where the field is (the spec's pydantic fields, the CLI's click types)."""

    make_spec: SpecMaker
    total: int
    concurrency: int
    resources: ResourcesSpec
    search: Search | None = None
    max_failures: int = 1  # Ray's retries of a crashing trial, from its last checkpoint
    looks: SeedLooks | None = None  # --seeds auto: `total` is the cap, the looks decide how many run
    resources_field: str = "resources"  # where the resources came from, for the refusals
    headline: Callable[[str, ResourcesSpec], str] | None = None  # (cluster, resolved resources) -> first line

    @classmethod
    def grid(cls, runs: list[RunSpec] | tuple[RunSpec, ...], *, concurrency: int, resources: ResourcesSpec,
             max_failures: int = 1, looks: SeedLooks | None = None) -> Trials:
        """Every RunSpec once (no early stopping, no Optuna): benchmark and ablate grids; with `looks`, the
        runs the sequential seed rule asks for, from the first seeds up to every run."""
        if not runs:
            raise UserError("runs", [], "Nothing to run; list at least one model and recipe.")
        return cls(GridSpecs(tuple(runs)), total=len(runs), concurrency=concurrency, resources=resources,
                   max_failures=max_failures, looks=looks)


def run_trials(trials: Trials, *, experiment: Experiment, db: str, storage_path: Path | str, address: str | None = None,
               pages: PageListener | None = None, trackers: Callable[..., Trackers] | None = None,
               echo: Callable[[str], None] = print) -> Outcome:
    """Run the trials through Ray Tune, recording each in `db`; returns how the experiment ended.

    Ray's experiment folder under `storage_path` is the experiment's own: `<kind>-<random>` (a
    sweep's `<study>-<random>`), kept in its row (`state.new_ray_folder`) and marked as its
    (`state.claim`). With `experiment.id` set the Tuner is restored from that folder: finished trials
    stay finished, unfinished ones continue from their last checkpoint, and only the missing samples
    are created. `address`: a Ray cluster to attach to (None: start Ray here). The live `pages` (if any)
run beside the trials, on their own thread. `trackers(experiment_id=, kind=, name=)` opens the
experiment's trackers once its row exists (`experiment.Where.open_trackers`; None: none).
    `resources.gpu: auto` is resolved here, where the cards are counted (`share_cards`); the headline
    sees the result. Bad input -> UserError before anything is written.
    """
    search, total, concurrency = trials.search, trials.total, trials.concurrency
    resources, resources_field = trials.resources, trials.resources_field
    ray_name = search.study.name if search is not None else None
    checked_here = address is None and not ray.is_initialized()
    if checked_here:  # before starting Ray: a trial bigger than the machine would stay PENDING forever
        torch_gpus = local_gpus()  # counted once: the share, the warning and the check of Ray's count
        resources = check_local_resources(resources, field=resources_field, concurrency=concurrency, gpus=torch_gpus)
        idle = gpu_idle_warning(resources, torch_gpus, field=resources_field)
    quiet_tune()
    with ray_session(address):
        if checked_here:  # the Ray just started must count the cards torch counted
            agree = check_ray_sees_the_gpus(resources, torch_gpus=torch_gpus,
                                            ray_gpus=ray.cluster_resources().get("GPU", 0), field=resources_field)
            if agree:
                echo(agree)
        else:  # the cluster's largest node
            resources = check_cluster_resources(resources, field=resources_field, concurrency=concurrency)
            idle = gpu_idle_warning(resources, ray.cluster_resources().get("GPU", 0), field=resources_field,
                                    where="the Ray cluster")
        if idle:
            echo(idle)
        storage = Path(storage_path).resolve()
        check_shared_storage(storage)
        cluster = describe_cluster()
        store = Store(db)
        restore = experiment.id is not None
        if restore:
            exp = experiment.id
            exp_dir = storage / ray_folder(store.reopen_experiment(exp), ray_name=ray_name)
            check_claim(exp_dir, db=db, experiment_id=exp)  # `resumable` asked before Ray started; asked again
        else:
            folder = new_ray_folder(experiment.kind, ray_name)
            exp = store.create_experiment(kind=experiment.kind, name=experiment.name, description=experiment.description,
                                          spec=experiment.spec_yaml, device=cluster, ray_folder=folder)
            exp_dir = storage / folder
            claim(exp_dir, db=db, experiment_id=exp, kind=experiment.kind, name=experiment.name)
        remember_state_dir(exp_dir)
        view = LiveView(title=f"{experiment.kind} {experiment.name}", total_runs=total, slots=concurrency, echo=echo)
        recorder = Recorder(key=recorder_key(db, exp), store=store, experiment_id=exp, make_spec=trials.make_spec,
                            metric=search.study.metric if search else "val_acc", mode=search.study.mode if search else "max",
                            total=total, view=view,
                            stopper="ASHA" if search is not None and search.study.scheduler.type == "asha" else "none",
                            trackers=trackers(experiment_id=exp, kind=experiment.kind, name=experiment.name) if trackers else None)
        trainable = tune.with_resources(tune.with_parameters(_trainable, make_spec=trials.make_spec),
                                        {"cpu": resources.cpu, "gpu": resources.gpu})
        try:
            recorder.exp_dir = exp_dir
            recorder.looks_shown = len(looks_said(exp_dir))  # a resume prints only its own looks
            if restore:
                repair_state(exp_dir, echo)
                repair_checkpoints(exp_dir, echo)
                tuner = tune.Tuner.restore(str(exp_dir), trainable, resume_unfinished=True, resume_errored=False)
                done = sum(n for s, n in store.status_counts(exp).items() if s in FINAL)
                echo(f"harness {experiment.kind} {experiment.name}: resuming ({done} of {total} trials finished)")
                view.finished = done
            else:
                config, param_space = tune_config(search, concurrency=concurrency, total=total, db=db, exp_dir=exp_dir,
                                                  looks=trials.looks, experiment_id=exp)
                tuner = tune.Tuner(trainable, param_space=param_space, tune_config=config,
                                   run_config=tune.RunConfig(
                                       name=exp_dir.name, storage_path=str(storage), callbacks=[recorder], verbose=0,
                                       failure_config=tune.FailureConfig(max_failures=trials.max_failures),
                                       # Only the latest checkpoint of a trial is needed to retry or resume it.
                                       checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
                echo(trials.headline(cluster, resources) if trials.headline else
                     f"harness {experiment.kind} {experiment.name}: {total} runs, {concurrency} at a time, "
                     f"{resources.cpu:g} CPU + {resources.gpu:g} GPU each ({cluster})")
            if pages is not None:
                pages.start(exp)
            try:
                with view:
                    status = _fit(tuner, store, exp, recorder, exp_dir, view.echo)
            finally:
                if pages is not None:
                    pages.stop()
            return Outcome(exp, status, exp_dir, set(recorder.known))
        finally:
            recorder.close_trackers()
            store.close()
            _LIVE.pop(recorder.key, None)
            forget_state_dir(exp_dir)


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
    for t in saved:  # finished in Tune, not in the database (a driver killed between the two)
        if t.trial_id in unfinished_ids or t.trial_id in recorder.finished:
            continue
        if t.status == "ERROR":  # with Ray's reason: a failed row always says why
            store.settle_trial(exp, t.trial_id, "failed", unless=FINAL, error=error_text(t) or None)
        else:
            store.settle_trial(exp, t.trial_id, final_status((t.last_result or {}).get("status")), unless=FINAL)
    unfinished = store.mark_unfinished(exp, "interrupted")
    n_rows = sum(store.status_counts(exp).values())
    looks = seeds_finished(exp_dir)  # --seeds auto: done when its looks are over, not when the cap ran
    missing = (not looks[0]) if looks is not None else len(saved) < recorder.total
    interrupted = interrupted or bool(unfinished_ids) or unfinished > 0 or missing
    status = "interrupted" if interrupted else "completed"
    store.finish_experiment(exp, status)
    if interrupted:
        echo(f"interrupted: {n_rows - unfinished} of {recorder.total} trials finished, {unfinished} interrupted "
             "(their epochs so far are recorded)")
    return status


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
