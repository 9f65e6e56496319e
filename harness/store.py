"""results.db: the harness's tables and its one writer.

Tables `experiments` -> `runs` -> `epochs`, plus `evaluations` (per-class accuracy, confusion
matrix and sample predictions of a run's best checkpoint) and `checks` (doctor results). Optuna
keeps its own tables (`studies`, `trials`, ...) in the same database; the names do not collide.

Only one process writes (the CLI process: `harness train`, or the sweep driver's Tune callback).
SQLite runs in WAL mode with a busy timeout so readers (report, optuna-dashboard) never block it,
and every write is its own committed transaction: a kill loses at most the epoch in flight.
PostgreSQL (`postgresql://user:password@host/db`, driver psycopg 3, installed with harness) is the
same schema on a server that several machines reach; every connection gives up after
`CONNECT_TIMEOUT_S` instead of hanging, and `check_url` turns a server that cannot be reached or
refuses us into one message naming the field, the URL (password hidden) and the fix.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import postgresql, sqlite

from harness import DEFAULT_DB  # noqa: F401 (re-exported: store.DEFAULT_DB)
from harness.errors import UserError

# 2: epochs gained train_batch_acc and val_acc_raw; 3: runs gained node/node_id/gpus and epochs node_id
# (both added in place to an older database: see Store._migrate); 4: runs gained the test split's scores
SCHEMA_VERSION = 5
# Seconds a connection to a database server may take before it is reported instead of waited for
# (a firewall that drops packets would otherwise hang the command for minutes: the TCP default).
CONNECT_TIMEOUT_S = 5
# INSERT ... ON CONFLICT DO UPDATE, per dialect: the two databases harness runs on.
UPSERT = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}

metadata = sa.MetaData()

meta = sa.Table(
    "harness_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

experiments = sa.Table(
    "experiments", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),  # train | sweep | benchmark | ablate | doctor
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("description", sa.Text, nullable=False, default=""),
    sa.Column("spec", sa.Text, nullable=False, default=""),  # the resolved spec as YAML
    sa.Column("code_version", sa.String(64), nullable=False, default=""),
    sa.Column("device", sa.Text, nullable=False, default=""),
    sa.Column("status", sa.String(16), nullable=False, default="running"),  # running | completed | interrupted | failed
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
    # Ray's experiment folder under --storage-path, unique to this experiment (engine.state.new_ray_folder):
    # two experiments numbered 1 in two databases never share one. NULL before schema v5.
    sa.Column("ray_folder", sa.Text),
)

runs = sa.Table(
    "runs", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id"), nullable=False, index=True),
    sa.Column("model", sa.String(64), nullable=False),  # what ran (e.g. vit_tiny)
    sa.Column("stands_for", sa.String(64)),  # the full model a CPU stand-in replaces (e.g. vit_base)
    sa.Column("recipe", sa.String(64), nullable=False),
    sa.Column("params", sa.JSON, nullable=False),  # the resolved RunSpec
    sa.Column("seed", sa.Integer, nullable=False),
    # running | completed | stopped (by ASHA) | diverged (NaN/Inf) | failed (exception) | interrupted | time_limit
    sa.Column("status", sa.String(16), nullable=False, default="running"),
    sa.Column("error", sa.Text),
    sa.Column("best_val_acc", sa.Float),
    sa.Column("best_epoch", sa.Integer),
    sa.Column("final_val_acc", sa.Float),
    # The final weights on the test split, scored once when the run ends (what the tables report; nothing
    # chooses on it): loss, accuracy, images, and which images were right (`evaluate.pack_correct`), so two runs on
    # the same images compare pair by pair. NULL: the run has not ended, or its data has no test split.
    sa.Column("test_loss", sa.Float),
    sa.Column("test_acc", sa.Float),
    sa.Column("n_test", sa.Integer),
    sa.Column("test_correct", sa.Text),
    sa.Column("epochs_done", sa.Integer, nullable=False, default=0),
    sa.Column("wall_s", sa.Float),
    sa.Column("images_per_s", sa.Float),
    sa.Column("trial_id", sa.String(64)),  # Ray Tune trial id
    sa.Column("optuna_trial", sa.Integer),  # Optuna trial number
    # Where it ran (its latest epoch's, for a trial retried on another node): hostname, Ray node id
    # (NULL outside Ray), and its GPUs as "<id>: <name>" joined by "; " ("" = CPU only).
    sa.Column("node", sa.String(255)),
    sa.Column("node_id", sa.String(64)),
    sa.Column("gpus", sa.Text),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("finished_at", sa.DateTime),
)

# train_acc: eval mode, no augmentation, on a fixed slice of the training set (the size of val);
# train_batch_acc: on the augmented/mixed training batches against their unmixed labels;
# val_acc: the weights the run keeps (the EMA when the recipe has one); val_acc_raw: the raw weights.
EPOCH_METRICS = ("train_loss", "train_acc", "train_batch_acc", "val_loss", "val_acc", "val_acc_raw", "lr", "grad_norm",
                 "epoch_s", "images_per_s")

epochs = sa.Table(
    "epochs", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("epoch", sa.Integer, primary_key=True),  # 1-based; a retried epoch replaces its row
    *(sa.Column(m, sa.Float) for m in EPOCH_METRICS),
    sa.Column("node_id", sa.String(64)),  # the Ray node that trained this epoch (NULL outside Ray)
)

evaluations = sa.Table(
    "evaluations", metadata,
    sa.Column("run_id", sa.Integer, sa.ForeignKey("runs.id"), primary_key=True),
    sa.Column("epoch", sa.Integer),  # the best checkpoint's epoch
    sa.Column("class_names", sa.JSON, nullable=False),
    sa.Column("per_class_acc", sa.JSON, nullable=False),
    sa.Column("confusion", sa.JSON, nullable=False),  # rows = true class, columns = predicted
    sa.Column("samples", sa.JSON, nullable=False),  # [{"png": base64, "true": i, "pred": j}], mistakes first
)

checks = sa.Table(
    "checks", metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("experiment_id", sa.Integer, sa.ForeignKey("experiments.id"), nullable=False, index=True),
    sa.Column("check", sa.String(64), nullable=False),
    sa.Column("status", sa.String(8), nullable=False),  # PASS | WARN | FAIL
    sa.Column("detail", sa.Text, nullable=False, default=""),
    sa.Column("fix", sa.Text, nullable=False, default=""),
    sa.Column("data", sa.JSON),
)

# Indexes for the pages' reads (every query on an index); beside the primary keys (epochs by
# (run_id, epoch), evaluations by run_id) and runs.experiment_id. The index's run counts per experiment
# and status group on the first; `harness report --watch` and the resume checks find running experiments
# with the second. Created on an older database too, when a writer opens it (`Store.__init__`).
PAGE_INDEXES = (sa.Index("ix_runs_experiment_status", runs.c.experiment_id, runs.c.status),
                sa.Index("ix_experiments_status", experiments.c.status))


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


def _finite(v: Any) -> Any:
    """NaN/Inf -> None: JSON and some databases refuse them, and a dashboard cannot plot them."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _connect_args(url: str) -> dict[str, Any]:
    return {"connect_timeout": CONNECT_TIMEOUT_S} if url.startswith("postgresql") else {}


def shown_url(url: str) -> str:
    """The URL as messages show it: the password, if any, as ***."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def make_engine(url: str) -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):  # noqa: ANN001
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers do not block the writer
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across process kills
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True, connect_args=_connect_args(url))


def sqlite_path(url: str) -> Path | None:
    u = sa.engine.make_url(url)
    if u.drivername.startswith("sqlite") and u.database and u.database != ":memory:":
        return Path(u.database)
    return None


def stored_experiment(db: str, *, kind: str, name: str) -> dict | None:
    """The latest `kind` experiment called `name` in `db`, reading only: None when the database or its
    harness tables do not exist (nothing is created). The one way a command asks before it writes
    (`--resume`'s lookup, a sweep's name already taken)."""
    path = sqlite_path(db)
    if path is not None and not path.exists():
        return None
    store = Store(db, create=False)
    try:
        if experiments.name not in sa.inspect(store.engine).get_table_names():
            return None
        return store.find_experiment(kind=kind, name=name)
    finally:
        store.close()


def check_url(url: str, *, must_exist: bool = False, field: str = "--db") -> None:
    """Refuse a URL that does not parse, a missing database (for readers), a folder that does not exist or
    cannot be written (for writers) or a foreign database.

    A server database is connected to (within CONNECT_TIMEOUT_S): an unreachable host, wrong
    credentials or a missing database are refused here, before anything is started or written.
    """
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise UserError(field, url, "Not a database URL; use e.g. sqlite:///results.db or postgresql://user@host/db.") from None
    path = sqlite_path(url)
    if path is not None:
        if path.exists() and path.is_dir():
            raise UserError(field, url, "That path is a folder; name a file, e.g. sqlite:///results.db.")
        if not path.exists():
            if must_exist:
                raise UserError(field, url, "No such database yet; run `harness train`, `benchmark` or `sweep` first, or fix the path.")
            _check_folder(path, url, field)
            return
        if not must_exist:
            _check_folder(path, url, field)
        # No open()/close() of the file here: closing any descriptor of an SQLite file drops every POSIX
        # lock this process holds on it, and a driver that writes the database also writes the live
        # pages (a disk I/O error on its next commit). SQLite itself tells a foreign file below.
    shown = shown_url(url)
    # A plain engine: make_engine's WAL pragma would rewrite the header of a database we may refuse.
    try:
        engine = sa.create_engine(url, connect_args=_connect_args(url))
    except (sa.exc.NoSuchModuleError, ImportError) as e:
        raise UserError(field, shown, f"No database driver for it ({str(e)[:120]}); use sqlite:///results.db or "
                        "postgresql://user:password@host/db (psycopg 3, installed with harness).") from None
    try:
        names = set(sa.inspect(engine).get_table_names())
    except sa.exc.DatabaseError as e:
        if "file is not a database" in str(e):
            raise UserError(field, shown, "Not an SQLite database; name a results database written by harness.") from None
        if path is None and isinstance(e, sa.exc.OperationalError):
            raise UserError(field, shown, _server_fix(parsed, e)) from None
        raise UserError(field, shown, f"Cannot open it as a database ({str(e).splitlines()[0][:120]}).") from None
    finally:
        engine.dispose()
    if names and "harness_meta" not in names and names & {"experiments", "runs", "epochs"}:
        raise UserError(field, shown, "This database has tables named like harness's but is not a harness database; "
                        "use another file or database.")
    if must_exist and "harness_meta" not in names:
        raise UserError(field, shown, "Not a harness results database (no harness_meta table); name one written by harness.")


def _check_folder(path: Path, url: str, field: str) -> None:
    """A database a writer will create or write: its folder must exist and take new files (SQLite
    writes its -wal and -shm files and the experiment lock beside it), the file itself be writable.
    Otherwise SQLAlchemy's error would come after Ray started, as a long traceback."""
    folder = path.parent.resolve() if str(path.parent) else Path.cwd()
    if not folder.is_dir():
        raise UserError(field, url, f"The folder {folder} does not exist; create it (mkdir -p {folder}) or name a "
                        "database in an existing folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(field, url, f"The folder {folder} is not writable by this user; SQLite writes its journal "
                        "beside the database. Name a database in a folder you can write.")
    if path.exists() and not os.access(path, os.W_OK):
        raise UserError(field, url, "The database file is read-only for this user; make it writable or name another.")


def _server_fix(u: sa.engine.URL, e: Exception) -> str:
    """What went wrong connecting to a database server, in one sentence with the fix (the driver's
    own first line in brackets; libpq never puts the password in it)."""
    text = str(getattr(e, "orig", None) or e)
    first = " ".join(text.split())[:200]
    host = f"{u.host or 'localhost'}:{u.port or 5432}"
    low = text.lower()
    if "password authentication failed" in low or "no password supplied" in low or ("role" in low and "does not exist" in low):
        return (f"The server at {host} refused the credentials ({first}); put the right user and password in the URL "
                "(postgresql://USER:PASSWORD@host/db), or in PGPASSWORD / ~/.pgpass, or ask the server's admin for a role.")
    if "database" in low and "does not exist" in low:
        return (f"No database {u.database!r} on the server at {host}; create it once "
                f"(`createdb -h {u.host or 'localhost'} -U {u.username or 'USER'} {u.database}`) or name an existing one.")
    if "timeout" in low or "timed out" in low:
        return (f"Nothing answered at {host} within {CONNECT_TIMEOUT_S} s; check the host name and port, and that the server "
                "runs and accepts TCP connections from this machine (listen_addresses, pg_hba.conf, firewall).")
    return (f"Cannot reach the database server at {host} ({first}); check the host name and port, and that the server "
            "runs and accepts connections from this machine (listen_addresses, pg_hba.conf, firewall).")


class Store:
    """The writer (and a convenient reader) of one results database."""

    def __init__(self, url: str = DEFAULT_DB, *, create: bool = True) -> None:
        self.url = url
        self.engine = make_engine(url)
        if create and self.engine.dialect.name not in UPSERT:
            raise UserError("--db", shown_url(url), f"harness writes results to {' or '.join(UPSERT)}; use sqlite:///results.db "
                            "or postgresql://user@host/db.")
        if create:
            metadata.create_all(self.engine)
            for index in PAGE_INDEXES:  # create_all adds none to a table that exists (an older database)
                try:
                    index.create(self.engine, checkfirst=True)
                except sa.exc.ProgrammingError:  # PostgreSQL: another writer created it between check and create
                    pass
            with self.engine.begin() as c:
                row = c.execute(sa.select(meta.c.value).where(meta.c.key == "schema_version")).first()
                if row is None:
                    c.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
                elif int(row[0]) < SCHEMA_VERSION:
                    self._migrate(c)

    def _migrate(self, c: sa.Connection) -> None:
        """An older schema -> this one: every column added since (all nullable) is added in place, and
        old rows keep NULL there (v2: the newer epoch metrics; v3: where each run and epoch ran; v4: test scores;
        v5: each experiment's Ray folder)."""
        for table in (experiments, runs, epochs):
            have = {col["name"] for col in sa.inspect(c).get_columns(table.name)}
            for col in table.columns:
                if col.name not in have:
                    assert col.nullable, f"{table.name}.{col.name}: only nullable columns can be added in place"
                    c.execute(sa.text(f"ALTER TABLE {table.name} ADD COLUMN {col.name} {col.type.compile(c.dialect)}"))
        c.execute(meta.update().where(meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION)))

    def close(self) -> None:
        self.engine.dispose()

    # --- experiments ---
    def create_experiment(self, *, kind: str, name: str, description: str = "", spec: str = "", device: str = "",
                          ray_folder: str | None = None) -> int:
        from harness import __version__

        with self.engine.begin() as c:
            return c.execute(experiments.insert().values(
                kind=kind, name=name, description=description, spec=spec, code_version=__version__,
                device=device, status="running", created_at=now(), ray_folder=ray_folder)).inserted_primary_key[0]

    def finish_experiment(self, experiment_id: int, status: str) -> None:
        with self.engine.begin() as c:
            c.execute(experiments.update().where(experiments.c.id == experiment_id)
                      .values(status=status, finished_at=now()))

    def find_experiment(self, *, kind: str, name: str) -> dict | None:
        """The latest experiment of that kind and name. Read-only, so it also reads a database of an older
        schema (not yet migrated: `ray_folder` missing there is None)."""
        with self.engine.connect() as c:
            have = {col["name"] for col in sa.inspect(c).get_columns(experiments.name)}
            row = c.execute(sa.select(*[col for col in experiments.c if col.name in have])
                            .where(experiments.c.kind == kind, experiments.c.name == name)
                            .order_by(experiments.c.id.desc())).mappings().first()
            return {col.name: None for col in experiments.c} | dict(row) if row else None

    # --- runs ---
    def create_run(self, experiment_id: int, *, model: str, recipe: str, params: dict, seed: int,
                   stands_for: str | None = None, trial_id: str | None = None, optuna_trial: int | None = None) -> int:
        with self.engine.begin() as c:
            return c.execute(runs.insert().values(
                experiment_id=experiment_id, model=model, stands_for=stands_for, recipe=recipe, params=params,
                seed=seed, status="running", epochs_done=0, trial_id=trial_id, optuna_trial=optuna_trial,
                created_at=now())).inserted_primary_key[0]

    def log_epoch(self, run_id: int, epoch: int, metrics: dict[str, float], *, where: dict[str, str] | None = None) -> None:
        """Insert or replace one epoch (a trial retried from a checkpoint re-reports later epochs),
        then refresh the run's summary from its epochs, in one transaction: an upsert on the
        (run_id, epoch) primary key and one UPDATE whose numbers SQL computes.

        `where` ({"node", "node_id", "gpus"}): the machine that trained this epoch. The epoch keeps its
        node id; the run gets this (its latest) epoch's node, node id and GPUs, so a trial retried on
        another node shows where it last ran. None (e.g. old callers): the run's are left as they are."""
        values = {m: _finite(metrics.get(m)) for m in EPOCH_METRICS}
        values["node_id"] = (where or {}).get("node_id")
        upsert = UPSERT[self.engine.dialect.name](epochs).values(run_id=run_id, epoch=epoch, **values)
        upsert = upsert.on_conflict_do_update(index_elements=[epochs.c.run_id, epochs.c.epoch],
                                              set_={m: upsert.excluded[m] for m in values})
        mine = epochs.c.run_id == run_id
        best_acc = sa.select(sa.func.max(epochs.c.val_acc)).where(mine).scalar_subquery()
        # The first epoch that reached the best accuracy (an alias: the max above must not be
        # correlated to this subquery's rows).
        ep = epochs.alias("ep")
        best_epoch = (sa.select(ep.c.epoch).where(ep.c.run_id == run_id, ep.c.val_acc == best_acc)
                      .order_by(ep.c.epoch).limit(1).scalar_subquery())
        with self.engine.begin() as c:
            c.execute(upsert)
            c.execute(runs.update().where(runs.c.id == run_id).values(
                epochs_done=sa.select(sa.func.count()).select_from(epochs).where(mine).scalar_subquery(),
                best_val_acc=best_acc, best_epoch=best_epoch,
                final_val_acc=values["val_acc"], images_per_s=values["images_per_s"],
                **({k: where.get(k) for k in ("node", "node_id", "gpus")} if where is not None else {})))

    def finish_run(self, run_id: int, *, status: str, error: str | None = None, wall_s: float | None = None) -> None:
        with self.engine.begin() as c:
            c.execute(runs.update().where(runs.c.id == run_id).values(
                status=status, error=error, wall_s=wall_s, finished_at=now()))

    def save_evaluation(self, run_id: int, evaluation: dict[str, Any]) -> None:
        with self.engine.begin() as c:
            c.execute(evaluations.delete().where(evaluations.c.run_id == run_id))
            c.execute(evaluations.insert().values(run_id=run_id, **evaluation))

    def save_test(self, run_id: int, test: dict[str, Any]) -> None:
        """The run's test scores (`evaluate.score_test`): a retried last epoch replaces them."""
        with self.engine.begin() as c:
            c.execute(runs.update().where(runs.c.id == run_id).values(
                **{k: _finite(test.get(k)) for k in ("test_loss", "test_acc", "n_test", "test_correct")}))

    def save_check(self, experiment_id: int, *, check: str, status: str, detail: str = "", fix: str = "",
                   data: Any = None) -> None:
        with self.engine.begin() as c:
            c.execute(checks.insert().values(experiment_id=experiment_id, check=check, status=status,
                                             detail=detail, fix=fix, data=data))

    def reopen_experiment(self, experiment_id: int) -> dict:
        """A resumed experiment is running again until it ends; its row."""
        with self.engine.begin() as c:
            c.execute(experiments.update().where(experiments.c.id == experiment_id).values(status="running", finished_at=None))
            return dict(c.execute(sa.select(experiments).where(experiments.c.id == experiment_id)).mappings().one())

    def status_counts(self, experiment_id: int) -> dict[str, int]:
        """{status: number of runs} of one experiment."""
        with self.engine.connect() as c:
            return dict(c.execute(sa.select(runs.c.status, sa.func.count()).where(runs.c.experiment_id == experiment_id)
                                  .group_by(runs.c.status)).all())

    def run_for_trial(self, experiment_id: int, trial_id: str) -> int | None:
        """The run recorded for a Ray trial of the experiment, if any."""
        with self.engine.connect() as c:
            return c.execute(sa.select(runs.c.id).where(runs.c.experiment_id == experiment_id,
                                                        runs.c.trial_id == trial_id)).scalar()

    def run_fields(self, run_id: int, *names: str) -> dict[str, Any]:
        """Some columns of one run, by name."""
        with self.engine.connect() as c:
            row = c.execute(sa.select(*(runs.c[n] for n in names)).where(runs.c.id == run_id)).mappings().first()
        return dict(row) if row is not None else dict.fromkeys(names)

    def start_run(self, run_id: int) -> None:
        """A run (re)started by its trial: running again, no error, not finished."""
        with self.engine.begin() as c:
            c.execute(runs.update().where(runs.c.id == run_id).values(status="running", error=None, finished_at=None))

    def settle_trial(self, experiment_id: int, trial_id: str, status: str, *, unless: tuple[str, ...],
                     error: str | None = None) -> None:
        """The run of a Ray trial gets `status` (and `error`, when given) unless it already holds one of
        `unless` (its final status)."""
        values: dict[str, Any] = {"status": status, "finished_at": now(), **({"error": error} if error else {})}
        with self.engine.begin() as c:
            c.execute(runs.update().where(runs.c.experiment_id == experiment_id, runs.c.trial_id == trial_id,
                                          runs.c.status.notin_(unless)).values(**values))

    def mark_unfinished(self, experiment_id: int, status: str = "interrupted") -> int:
        """Runs still 'running' when their experiment ends get `status` (e.g. after Ctrl-C)."""
        with self.engine.begin() as c:
            return c.execute(runs.update().where(runs.c.experiment_id == experiment_id, runs.c.status == "running")
                             .values(status=status, finished_at=now())).rowcount

    # --- reading ---
    def read_sql(self, query: str | sa.Select, **params: Any):
        import pandas as pd

        with self.engine.connect() as c:
            return pd.read_sql(sa.text(query) if isinstance(query, str) else query, c, params=params or None)


def unpack_correct(text: str, n: int) -> Any:
    """`runs.test_correct` back to n bools (a numpy array): base64 of numpy's packbits, one bit per test image,
    as `evaluate.pack_correct` writes it in the training process."""
    import numpy as np

    return np.unpackbits(np.frombuffer(base64.b64decode(text), dtype=np.uint8))[:n].astype(bool)


def json_safe(obj: Any) -> Any:
    """NaN/Inf -> None, tuples -> lists: a JSON column (and strict JSON, `doctor --json`) refuses NaN."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj
