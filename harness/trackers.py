"""TensorBoard and MLflow beside the database: every run's epochs where a user's own tools read them.

Written by the one process that records results, never by a trial: the grid engine's `Recorder`
(`benchmark`, `sweep`, `ablate`) and `runner.run_and_record` (`harness train`). Each calls the same
four things on a `Trackers`: `epoch` (every reported epoch; the test split's scores with the last),
`finish` (a run's final status), and `close` when the experiment's session ends.

- TensorBoard (on by default): the scalars of run R of experiment E under
  `<out>/tensorboard/<E's id>-<kind>-<name>/run-<R's id>-<model>-<recipe>`, one event file per run per
  driver session. A resumed (or retried) run re-reports epochs from its checkpoint; the new file is
  opened with `purge_step` at its first epoch, which tells TensorBoard to drop the earlier files'
  points from that epoch on, so a resume neither duplicates nor mixes two attempts' values.
- MLflow (`--mlflow URI`, the `mlflow` extra): one parent run per harness experiment, one nested run
  per harness run with its spec as params, its epochs as metrics by step and its test scores, all
  tagged with the harness ids so that a resumed experiment finds and continues the same MLflow runs.
  MLflow cannot replace a logged point: the epochs it already holds are not logged again (a re-run
  epoch keeps its first values there; the database has the re-run's). Its calls go through one
  background thread: recording never waits for a server.

The database stays the record: a tracker that fails warns once and stops; recording goes on.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from harness.errors import UserError

if TYPE_CHECKING:
    from harness.specs import RunSpec

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"  # under the command's --out folder (train: dashboards/)
MLFLOW_EXPERIMENT = "harness"  # the MLflow experiment every harness experiment's parent run goes in
# What each tracker gets of an epoch: the store's epoch metrics (train_batch_acc and val_acc_raw, which only
# the pages' fine print uses, left out) and, with the last epoch, the test split's scores.
EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "grad_norm", "images_per_s", "epoch_s")
TEST_METRICS = ("test_loss", "test_acc")
MLFLOW_STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "time_limit": "FINISHED", "diverged": "FAILED",
                 "failed": "FAILED", "interrupted": "KILLED"}
PROBE_TIMEOUT_S = 5.0  # an MLflow server that does not answer this fast is refused before anything runs
CLOSE_TIMEOUT_S = 60.0  # at the end, the MLflow calls still queued get this long (a server gone: warned, dropped)


def _finite(metrics: Mapping[str, Any], names: tuple[str, ...]) -> dict[str, float]:
    return {k: float(metrics[k]) for k in names
            if isinstance(metrics.get(k), (int, float)) and math.isfinite(metrics[k])}


def _slug(text: str) -> str:
    """A folder name from free text (a recipe label holds '/' and spaces)."""
    return re.sub(r"[^\w.@=+-]+", "_", text).strip("_") or "_"


def experiment_folder(experiment_id: int, kind: str, name: str) -> str:
    return _slug(f"{experiment_id}-{kind}-{name}")


def run_folder(run_id: int, spec: RunSpec) -> str:
    return _slug(f"run-{run_id}-{spec.model}-{spec.recipe.label()}")


class Tracker(Protocol):
    """One place runs are logged besides the database."""

    def epoch(self, run_id: int, spec: RunSpec, epoch: int, metrics: Mapping[str, float], test: Mapping[str, Any] | None) -> None: ...
    def finish(self, run_id: int, status: str) -> None: ...
    def close(self) -> None: ...


class TensorBoard:
    """Scalars per run under `folder` (the experiment's), through tensorboardX's writer (no TensorFlow)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.writers: dict[int, Any] = {}
        self.last: dict[int, int] = {}  # run id -> the last epoch written by this session's writer
        self.opened = 0

    def _writer(self, run_id: int, spec: RunSpec, epoch: int) -> Any:
        writer = self.writers.get(run_id)
        if writer is not None and epoch > self.last[run_id]:
            return writer
        if writer is not None:  # an epoch again (a trial retried from an earlier checkpoint): a new file purges
            writer.close()
        from tensorboardX import SummaryWriter

        self.opened += 1
        # purge_step: TensorBoard drops what earlier files hold from this epoch on (a resumed run's re-reported
        # epochs replace the first attempt's). The suffix keeps two writers opened within one second apart
        # (tensorboardX names a file by the second and the host only), in the order they were opened.
        writer = SummaryWriter(str(self.folder / run_folder(run_id, spec)), purge_step=epoch, flush_secs=10,
                               filename_suffix=f".{os.getpid()}.{self.opened:05d}")
        self.writers[run_id] = writer
        return writer

    def epoch(self, run_id: int, spec: RunSpec, epoch: int, metrics: Mapping[str, float], test: Mapping[str, Any] | None) -> None:
        writer = self._writer(run_id, spec, epoch)
        for name, value in _finite(metrics, EPOCH_METRICS).items():
            writer.add_scalar(name, value, epoch)
        for name, value in _finite(test or {}, TEST_METRICS).items():
            writer.add_scalar(name, value, epoch)
        self.last[run_id] = epoch

    def finish(self, run_id: int, status: str) -> None:
        writer = self.writers.pop(run_id, None)
        if writer is not None:
            writer.close()  # written out now: `tensorboard --logdir` sees a finished run whole

    def close(self) -> None:
        for run_id in list(self.writers):
            self.finish(run_id, "")


def _import_mlflow(uri: str) -> Any:
    try:
        import mlflow
    except ImportError:
        raise UserError("--mlflow", uri, "MLflow is an optional dependency, not installed here: install it with "
                        "`uv sync --extra mlflow` (pip: `pip install 'harness[mlflow]'`), or leave out --mlflow.") from None
    return mlflow


@contextmanager
def _quick_http() -> Iterator[None]:
    """MLflow's client retries an HTTP call 7 times with backoff (minutes): the probe asks once, briefly."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(int(PROBE_TIMEOUT_S))}
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def check_mlflow(uri: str) -> None:
    """Refuse an --mlflow URI that cannot be logged to, before anything runs or is written: MLflow not
    installed, a server nobody answers, a store MLflow will not open."""
    mlflow = _import_mlflow(uri)
    from urllib.error import HTTPError, URLError
    from urllib.request import urlopen

    example = "--mlflow sqlite:///mlflow.db (a local store) or --mlflow http://127.0.0.1:5000 (a running `mlflow server`)"
    if uri.startswith(("http://", "https://")):
        try:  # a TCP/HTTP answer first: MLflow's own client would retry a dead address for minutes
            urlopen(f"{uri.rstrip('/')}/health", timeout=PROBE_TIMEOUT_S).close()
        except HTTPError:
            pass  # something answers (a proxy, a server without /health): the client call below decides
        except (URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise UserError("--mlflow", uri, f"No MLflow server answers there ({reason}). Start one "
                            f"(`mlflow server --host 127.0.0.1 --port 5000`), or give another URI, e.g. {example}.") from None
    try:
        with _quick_http():
            mlflow.MlflowClient(uri).search_experiments(max_results=1)
    except Exception as e:  # noqa: BLE001 - any failure to open the store is the user's URI to fix
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "MLFLOW_ALLOW_FILE_STORE" in str(e):
            raise UserError("--mlflow", uri, f"MLflow {mlflow.__version__} no longer opens its file store (in "
                            "maintenance mode) unless MLFLOW_ALLOW_FILE_STORE=true is set. Give a database store, "
                            "e.g. --mlflow sqlite:///mlflow.db (view it with `mlflow ui --backend-store-uri "
                            "sqlite:///mlflow.db`), or set MLFLOW_ALLOW_FILE_STORE=true to keep the file store.") from None
        raise UserError("--mlflow", uri, f"MLflow cannot log there: {text[:300]}. Give a URI MLflow opens, e.g. {example}.") from None


def _params(spec: RunSpec) -> dict[str, str]:
    """The run's spec as MLflow params: nested fields flattened with dots (recipe.lr, data.name, seed)."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = str(value)[:6000]  # MLflow's limit on a param's value

    walk("", spec.model_dump(mode="json"))
    out["recipe.label"] = spec.recipe.label()
    return out


class MLflow:
    """Runs logged to an MLflow tracking URI (see the module docstring). Every client call runs on one
    background thread, in order; a failure warns once and drops the rest."""

    def __init__(self, uri: str, *, db: str, experiment_id: int, kind: str, name: str) -> None:
        from harness.store import shown_url

        self.uri, self.db, self.experiment_id = uri, shown_url(db), experiment_id
        self.kind, self.name = kind, name
        self.runs: dict[int, str] = {}  # harness run id -> MLflow run id
        self.skip_to: dict[int, int] = {}  # harness run id -> the last epoch MLflow already holds
        self.open: set[int] = set()  # runs logged this session and not finished yet
        self.parent: str | None = None
        self.failed = False
        self.calls: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self.thread = threading.Thread(target=self._work, name="harness-mlflow", daemon=True)
        self.thread.start()
        self._submit(self._start)

    # -- the background thread ----------------------------------------------------------------------------
    def _work(self) -> None:
        while (call := self.calls.get()) is not None:
            if not self.failed:
                try:
                    call()
                except Exception as e:  # noqa: BLE001 - the database is the record: warn, stop logging to MLflow
                    self.failed = True
                    log.warning("MLflow logging to %s stopped (the results database has everything): %s", self.uri, e)

    def _submit(self, call: Callable[[], None]) -> None:
        self.calls.put(call)

    def _start(self) -> None:
        from mlflow import MlflowClient

        self.client = client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
        self.mlflow_experiment = exp.experiment_id if exp is not None else client.create_experiment(MLFLOW_EXPERIMENT)
        mine = f"tags.`harness.db` = '{self._quote(self.db)}' and tags.`harness.experiment_id` = '{self.experiment_id}'"
        found = client.search_runs([self.mlflow_experiment], filter_string=f"{mine} and tags.`harness.kind` != 'run'",
                                   max_results=1)
        if found:  # a resumed experiment: the same parent run, running again
            self.parent = found[0].info.run_id
            client.update_run(self.parent, status="RUNNING")
        else:
            self.parent = client.create_run(self.mlflow_experiment, run_name=f"{self.kind} {self.name} (experiment {self.experiment_id})",
                                            tags={"harness.db": self.db, "harness.experiment_id": str(self.experiment_id),
                                                  "harness.kind": self.kind, "harness.name": self.name}).info.run_id

    @staticmethod
    def _quote(text: str) -> str:
        return text.replace("\\", "\\\\").replace("'", "\\'")

    def _run(self, run_id: int, spec: RunSpec) -> str:
        if run_id in self.runs:
            return self.runs[run_id]
        client = self.client
        found = client.search_runs([self.mlflow_experiment], filter_string=(
            f"tags.`mlflow.parentRunId` = '{self.parent}' and tags.`harness.run_id` = '{run_id}'"), max_results=1)
        if found:  # logged by an earlier session of this experiment: continue it after the epochs it holds
            mlflow_run = found[0].info.run_id
            history = client.get_metric_history(mlflow_run, "val_loss")
            self.skip_to[run_id] = max((m.step for m in history), default=0)
            client.update_run(mlflow_run, status="RUNNING")
        else:
            from mlflow.entities import Param

            mlflow_run = client.create_run(self.mlflow_experiment, run_name=f"run {run_id}: {spec.model} / {spec.recipe.label()} "
                                           f"seed {spec.seed}", tags={
                                               "mlflow.parentRunId": self.parent, "harness.kind": "run",
                                               "harness.run_id": str(run_id), "harness.db": self.db,
                                               "harness.experiment_id": str(self.experiment_id)}).info.run_id
            params = [Param(k, v) for k, v in _params(spec).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                client.log_batch(mlflow_run, params=params[i:i + 100])
        self.runs[run_id] = mlflow_run
        return mlflow_run

    # -- the Tracker calls (from the recording thread) -----------------------------------------------------
    def epoch(self, run_id: int, spec: RunSpec, epoch: int, metrics: Mapping[str, float], test: Mapping[str, Any] | None) -> None:
        values = {**_finite(metrics, EPOCH_METRICS), **_finite(test or {}, TEST_METRICS)}
        stamp = int(time.time() * 1000)
        self.open.add(run_id)

        def log_epoch() -> None:
            from mlflow.entities import Metric

            mlflow_run = self._run(run_id, spec)
            if epoch <= self.skip_to.get(run_id, 0):
                return
            self.client.log_batch(mlflow_run, metrics=[Metric(k, v, stamp, epoch) for k, v in values.items()])
        self._submit(log_epoch)

    def finish(self, run_id: int, status: str) -> None:
        self.open.discard(run_id)

        def end() -> None:
            if run_id in self.runs:
                self.client.set_tag(self.runs[run_id], "harness.status", status)
                self.client.set_terminated(self.runs[run_id], status=MLFLOW_STATUS.get(status, "FINISHED"))
        self._submit(end)

    def close(self) -> None:
        """The runs left open (interrupted) end KILLED, the parent too if any did, else FINISHED; the queued
        calls get CLOSE_TIMEOUT_S to reach the server."""
        stopped = bool(self.open)
        for run_id in list(self.open):
            self.finish(run_id, "interrupted")

        def end() -> None:
            if self.parent is not None:
                self.client.set_terminated(self.parent, status="KILLED" if stopped else "FINISHED")
        self._submit(end)
        self._submit(None)  # type: ignore[arg-type]
        self.thread.join(CLOSE_TIMEOUT_S)
        if self.thread.is_alive():
            log.warning("MLflow calls to %s still pending after %.0f s; dropped (the results database has them)",
                        self.uri, CLOSE_TIMEOUT_S)


class Trackers:
    """The trackers of one experiment session, called by its recorder. A tracker's failure is warned once and
    that tracker dropped: the database stays the record."""

    def __init__(self, trackers: list[Tracker], *, tensorboard: Path | None = None, mlflow: str | None = None) -> None:
        self.trackers, self.tensorboard, self.mlflow = trackers, tensorboard, mlflow

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for tracker in list(self.trackers):
            try:
                call(tracker)
            except Exception as e:  # noqa: BLE001 - a full disk under the event files must not stop the recording
                log.warning("%s stopped (the results database has everything): %s", type(tracker).__name__, e)
                self.trackers.remove(tracker)

    def epoch(self, run_id: int, spec: RunSpec | Callable[[], RunSpec], epoch: int, metrics: Mapping[str, float],
              test: Mapping[str, Any] | None = None) -> None:
        """Epoch `epoch` of run `run_id` (`spec`: the run's spec, or how to make it: asked only with trackers)."""
        if self.trackers:
            resolved = spec() if callable(spec) else spec
            self._each(lambda t: t.epoch(run_id, resolved, epoch, metrics, test))

    def finish(self, run_id: int, status: str) -> None:
        self._each(lambda t: t.finish(run_id, status))

    def close(self) -> None:
        self._each(lambda t: t.close())

    def lines(self) -> list[str]:
        """Where the trackers wrote, for the closing lines."""
        out = []
        if self.tensorboard is not None:
            out.append(f"tensorboard: {self.tensorboard} (`tensorboard --logdir {self.tensorboard.parent}`)")
        if self.mlflow is not None:
            out.append(f"mlflow: {self.mlflow} (experiment '{MLFLOW_EXPERIMENT}', one parent run per harness experiment)")
        return out


def open_trackers(*, tensorboard: Path | None, mlflow: str | None, db: str, experiment_id: int, kind: str,
                  name: str) -> Trackers:
    """The trackers of one experiment: TensorBoard under `tensorboard` (the tensorboard/ folder; None: none),
    MLflow at `mlflow` (checked already: `check_mlflow`; None: none)."""
    folder = Path(tensorboard) / experiment_folder(experiment_id, kind, name) if tensorboard is not None else None
    trackers: list[Tracker] = []
    if folder is not None:
        trackers.append(TensorBoard(folder))
    if mlflow is not None:
        trackers.append(MLflow(mlflow, db=db, experiment_id=experiment_id, kind=kind, name=name))
    return Trackers(trackers, tensorboard=folder, mlflow=mlflow)


def for_where(where: Any, *, experiment_id: int, kind: str, name: str) -> Trackers:
    """The trackers of a grid command's experiment from its `experiment.Where`: TensorBoard under
    `<out>/tensorboard/` unless `where.tensorboard` is off (or there is no `out`), MLflow at `where.mlflow`."""
    out = getattr(where, "out", None)
    tensorboard = Path(out) / TENSORBOARD_DIR if out is not None and getattr(where, "tensorboard", True) else None
    return open_trackers(tensorboard=tensorboard, mlflow=getattr(where, "mlflow", None), db=where.db,
                         experiment_id=experiment_id, kind=kind, name=name)
