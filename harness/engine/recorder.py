"""The driver side: how a trial's results are stored. The only writer of the results database for
grids, and only through `store.py`.

`Recorder` is a `ray.tune.Callback` in the driver: one `runs` row per trial, every epoch as it is
reported, the final status told apart (completed / stopped early / diverged / failed / interrupted),
the evaluation of the last report, and a whole copy of Tune's state files at most every second. Its
one listener is the terminal's `LiveView` (a line or a bar per trial); its `Trackers` (TensorBoard, MLflow:
`harness/trackers.py`) get every epoch after the database has it. The live pages are not its
business: they read the database on their own thread (`dashboards.LivePages`, started by `run.py`), so
a slow page never delays a result being recorded.
"""

from __future__ import annotations

import logging
import math
import re
import time
from pathlib import Path
from typing import Any

from ray import tune

from harness.engine.state import backup_state, looks_said
from harness.engine.trial import OPTUNA_KEY, WHERE, SpecMaker, trial_name
from harness.errors import UserError
from harness.progress import LiveView
from harness.store import Store, sqlite_path
from harness.trackers import Trackers

FINAL = ("completed", "stopped", "diverged", "failed", "time_limit")
BACKUP_EVERY_S = 1.0  # Tune saves its state at most every second (cluster.EXPERIMENT_STATE_PERIOD_S)

log = logging.getLogger(__name__)


def final_status(last_status: str | None) -> str:
    """A finished trial's status from its last report's: a report still "running" means the scheduler
    stopped it (ASHA) before its last epoch."""
    return {"running": "stopped"}.get(last_status, last_status or "completed")


# A restored Tuner unpickles its callbacks from the experiment folder; Tune.restore takes no new
# ones. The recorder pickles as a key into this registry, so the restored Tuner gets this
# process's live recorder (with its open store), never a stale copy.
_LIVE: dict[str, Recorder] = {}


def _live_recorder(key: str) -> tune.Callback:
    if key not in _LIVE:  # a key pickled before keys were canonical: "sqlite:///r.db#3"
        db, _, exp = key.rpartition("#")
        key = recorder_key(db, int(exp)) if exp.isdigit() else key
    if key not in _LIVE:  # a restored Tuner without its recorder would record nothing: refuse loudly
        raise RuntimeError(f"no live recorder for {key}: restore the experiment through harness.engine.run.run_trials")
    return _LIVE[key]


def recorder_key(db: str, exp: int) -> str:
    """The same database however its URL is spelled (sqlite:///./r.db and sqlite:///r.db)."""
    path = sqlite_path(db)
    return f"{path.resolve() if path is not None else db}#{exp}"


class Recorder(tune.Callback):
    """Tune's callbacks -> rows in the store and lines in the live view (see the module docstring).

    `make_spec` rebuilds a trial's RunSpec from its config (for the run row); `metric`/`mode` rank the
    "best so far" line; `total` is the number of trials the experiment will have; `stopper` names what
    stops a trial early, for its line ("ASHA" or "none"). `exp_dir` (Tune's experiment folder) is set
    by `run_trials` once known; with it, Tune's state is backed up as results come in."""

    def __init__(self, *, key: str, store: Store, experiment_id: int, make_spec: SpecMaker, metric: str, mode: str,
                 total: int, view: LiveView, stopper: str, trackers: Trackers | None = None) -> None:
        self.key, self.store, self.experiment_id, self.make_spec = key, store, experiment_id, make_spec
        self.metric, self.mode, self.total, self.view, self.stopper = metric, mode, total, view, stopper
        self.echo = view.echo
        self.trackers = trackers if trackers is not None else Trackers([])
        for line in self.trackers.lines():
            self.echo(line)
        self.exp_dir: Path | None = None
        self.looks_shown = 0  # --seeds auto: the searcher's look lines printed so far (run.py: those of before a resume)
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
        counts = self.store.status_counts(self.experiment_id)
        done = sum(v for k, v in counts.items() if k in FINAL)
        return f"[{counts.get('running', 0)} running, {done}/{self.total} done]"

    def _run_for(self, trial: Any) -> int:
        tid = trial.trial_id
        if tid not in self.run_ids:
            rid = self.store.run_for_trial(self.experiment_id, tid)
            if rid is None:
                spec = self.make_spec(trial.config)
                rid = self.store.create_run(self.experiment_id, model=spec.model, recipe=spec.recipe.label(),
                                            params=spec.model_dump(mode="json"), seed=spec.seed,
                                            stands_for=spec.stands_for, trial_id=tid,
                                            optuna_trial=trial.config.get(OPTUNA_KEY))
            self.run_ids[tid] = rid
        return self.run_ids[tid]

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rid = self._run_for(trial)
        self.store.start_run(rid)
        done = self.store.run_fields(rid, "epochs_done")["epochs_done"] or 0
        again = "resumed" if trial.trial_id in self.started or done else "started"
        self.started.add(trial.trial_id)
        self.echo(f"{self._name(trial)} {again}: {self.make_spec.label(trial.config)}  {self._counts()}")
        spec = self.make_spec(trial.config)
        self.view.run_started(trial.trial_id, f"{self._name(trial)}  {spec.model} / {spec.recipe.label()}", spec.epochs,
                              done=done)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        rid = self._run_for(trial)
        evaluation = result.pop("evaluation", None)  # large; only the database keeps it
        test = result.pop("test", None)
        if trial.trial_id not in self.last and int(result["epoch"]) > 1:
            self.echo(f"{self._name(trial)} continued from its checkpoint at epoch {int(result['epoch'])}")
        where = {k: result.get(k) for k in WHERE}  # left in the result: Tune's own logs show them too
        self.store.log_epoch(rid, int(result["epoch"]), result, where=where if where["node_id"] else None)
        if evaluation is not None:
            self.store.save_evaluation(rid, evaluation)
        if test is not None:
            self.store.save_test(rid, test)
        self.trackers.epoch(rid, lambda: self.make_spec(trial.config), int(result["epoch"]), result, test)
        self.last[trial.trial_id] = {k: result.get(k) for k in (self.metric, "epoch", "status", "time_total_s")}
        self.view.epoch(trial.trial_id, int(result["epoch"]), result)
        self._backup_state()

    def _backup_state(self) -> None:
        """A whole copy of Tune's state files, at most every second (see `backup_state`)."""
        if self.exp_dir is not None and time.monotonic() - self.backup_at >= BACKUP_EVERY_S:
            try:
                backup_state(self.exp_dir)
            except OSError as e:
                log.warning("Tune state not backed up: %s", e)
            self.backup_at = time.monotonic()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rid = self._run_for(trial)
        last = self.last.get(trial.trial_id)
        if last is None:  # nothing reported this session (resumed at its last epoch): keep what is recorded
            recorded = self.store.run_fields(rid, "status")["status"]
            status = recorded if recorded in FINAL else "completed"
            last = {k: (trial.last_result or {}).get(k) for k in (self.metric, "epoch", "status", "time_total_s")}
        else:
            status = final_status(last.get("status"))
        self.store.finish_run(rid, status=status, wall_s=last.get("time_total_s"))
        self.finished[trial.trial_id] = status
        self.trackers.finish(rid, status)
        if status in ("stopped", "diverged"):  # never resumed (a completed trial dropped it itself)
            self._drop_optimizer(trial)
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
        self._say_looks()

    def _say_looks(self) -> None:
        """--seeds auto: the look lines the searcher wrote since the last call (Tune calls the searcher's
        on_trial_complete just before this callback's), so a user sees why a seed starts or a model stops."""
        if self.exp_dir is None:
            return
        said = looks_said(self.exp_dir)
        for line in said[self.looks_shown:]:
            self.echo(f"look: {line}")
        self.looks_shown = max(self.looks_shown, len(said))

    @staticmethod
    def _drop_optimizer(trial: Any) -> None:
        """The finished trial's checkpoint keeps its weights, not the optimizer that only a resume reads
        (`train.keep_weights_only`; README "On a GPU machine" says what each trial keeps)."""
        from harness.train import keep_weights_only

        ckpt = getattr(trial, "checkpoint", None)
        path = Path(ckpt.path) / "last.pt" if ckpt is not None else None
        if path is None or not path.is_file():
            return
        try:
            keep_weights_only(path)
        except (OSError, UserError) as e:  # a full disk must not stop the recording: the file stays as it was
            log.warning("checkpoint of %s kept whole: %s", trial.trial_id, e)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.known.update(t.trial_id for t in trials)
        self._backup_state()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.known.update(t.trial_id for t in trials)

    def close_trackers(self) -> None:
        """When the session's trials end (run.py): the trackers' files closed, MLflow's runs ended."""
        self.trackers.close()

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        err = error_text(trial).splitlines()[0]
        epoch = (self.last.get(trial.trial_id) or {}).get("epoch") or 0
        self.echo(f"{self._name(trial)} crashed ({err}); retrying from its checkpoint at epoch {epoch} "
                  f"(failure {trial.num_failures} of at most {trial.max_failures} retried)")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        rid = self._run_for(trial)
        text = error_text(trial)
        self.store.finish_run(rid, status="failed", error=text,
                              wall_s=(self.last.get(trial.trial_id) or {}).get("time_total_s"))
        self.finished[trial.trial_id] = "failed"
        self.trackers.finish(rid, "failed")
        self.view.run_finished(trial.trial_id)
        self.echo(f"{self._name(trial)} failed: {text.splitlines()[0]}  {self._counts()}")


def error_text(trial: Any) -> str:
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

