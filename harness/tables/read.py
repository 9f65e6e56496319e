"""Reading the results database into pandas: experiments, runs, epochs, evaluations, and the stamps
the pages use to tell whether they are stale. Every query here is on an index
(tests/test_pages_incremental.py checks the plans); the writer is `store.py`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import sqlalchemy as sa

from harness.models import stand_in_label
from harness.store import Store, check_url, unpack_correct


def open_reader(db: str) -> Store:
    """A reader on an existing harness database (UserError if missing or foreign); creates nothing."""
    check_url(db, must_exist=True)
    return Store(db, create=False)


def read_experiments(store: Store) -> pd.DataFrame:
    return store.read_sql("SELECT * FROM experiments ORDER BY id")


def read_running_experiments(store: Store) -> pd.DataFrame:
    """id and kind of the experiments still `running` (on `ix_experiments_status`)."""
    return store.read_sql("SELECT id, kind FROM experiments WHERE status = 'running' ORDER BY id")


# Where each run ran (schema v3): hostname, Ray node id, GPUs ("" = CPU only); None when not recorded.
WHERE_COLUMNS = ("node", "node_id", "gpus")


# The test split's scores (schema v4); NULL until a run ends. The per-image bits (`test_correct`) are
# read only where runs are compared image by image (`read_test_correct`), not with every run.
TEST_COLUMNS = ("test_loss", "test_acc", "n_test")


def _runs_table_columns(store: Store) -> list[str]:
    """The runs table's columns as this database has them (any schema version: readers never migrate), asked
    once per Store: the live pages read runs every few seconds, and a column appears only when a writer
    migrates, which a reader opened before it does not need to see."""
    if getattr(store, "_runs_columns", None) is None:
        store._runs_columns = [c["name"] for c in sa.inspect(store.engine).get_columns("runs")]  # type: ignore[attr-defined]
    return store._runs_columns  # type: ignore[attr-defined]


def _run_columns(store: Store) -> str:
    """The runs table's columns but `test_correct` (read only by `read_test_correct`)."""
    return ", ".join(c for c in _runs_table_columns(store) if c != "test_correct")


def read_runs(store: Store, experiment_id: int | None = None, run_ids: list[int] | None = None) -> pd.DataFrame:
    cols = _run_columns(store)
    if run_ids is not None:
        if not run_ids:
            return store.read_sql(f"SELECT {cols} FROM runs WHERE 0")
        ids = ",".join(str(int(i)) for i in run_ids)
        df = store.read_sql(f"SELECT {cols} FROM runs WHERE id IN ({ids}) ORDER BY id")
    elif experiment_id is not None:
        df = store.read_sql(f"SELECT {cols} FROM runs WHERE experiment_id = :e ORDER BY id", e=int(experiment_id))
    else:
        df = store.read_sql(f"SELECT {cols} FROM runs ORDER BY id")
    df["params"] = df["params"].map(_json)
    for col in (*WHERE_COLUMNS, *TEST_COLUMNS):  # a database from before schema v3 / v4, read as it is
        if col not in df:
            df[col] = None
    # Table cells: the short form, "vit_tiny (for vit_base)"; the pages say "CPU stand-in" around them.
    df["label"] = [stand_in_label(m, s, short=True) for m, s in zip(df["model"], df["stands_for"])]
    return df


def read_test_correct(store: Store, run_ids: list[int]) -> dict[int, np.ndarray]:
    """Per run id: which test images it got right (bools in the test split's order); runs without them
    (not ended, no test split, an older database) are absent."""
    if not run_ids or "test_correct" not in _runs_table_columns(store):
        return {}
    ids = ",".join(str(int(i)) for i in run_ids)
    df = store.read_sql(f"SELECT id, n_test, test_correct FROM runs WHERE id IN ({ids}) AND test_correct IS NOT NULL")
    return {int(r.id): unpack_correct(r.test_correct, int(r.n_test)) for r in df.itertuples()}


def read_epochs(store: Store, run_ids: list[int] | None = None) -> pd.DataFrame:
    if run_ids is None:
        return store.read_sql("SELECT * FROM epochs ORDER BY run_id, epoch")
    if not run_ids:
        return store.read_sql("SELECT * FROM epochs WHERE 0")
    ids = ",".join(str(int(i)) for i in run_ids)
    return store.read_sql(f"SELECT * FROM epochs WHERE run_id IN ({ids}) ORDER BY run_id, epoch")


def _json(v):
    """JSON columns come back as str from SQLite through pandas; decode once here."""
    import json

    if isinstance(v, (bytes, str)):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def read_evaluation_sizes(store: Store, run_ids: list[int]) -> pd.DataFrame:
    """Per run (one query for all): `n_val`, the validation images its stored evaluation was scored
    on (the total of its confusion matrix), and `eval_classes`, the classes it names; 0 without one."""
    columns = ["run_id", "n_val", "eval_classes"]
    if not run_ids:
        return pd.DataFrame(columns=columns)
    ids = ",".join(str(int(i)) for i in run_ids)
    ev = store.read_sql("SELECT r.id AS run_id, e.class_names, e.confusion FROM runs r "
                        f"LEFT JOIN evaluations e ON e.run_id = r.id WHERE r.id IN ({ids})")
    confusion, names = ev["confusion"].map(_json), ev["class_names"].map(_json)
    ev["n_val"] = [int(np.asarray(c).sum()) if isinstance(c, list) and c else 0 for c in confusion]
    ev["eval_classes"] = [len(n) if isinstance(n, list) else 0 for n in names]
    return ev[columns]


# --- what the pages read to tell whether they are stale (write.py): one query each, on indexes --------

# The columns of a run that its pages show and that change while it runs (params, model, seed are set once).
RUN_STAMP_COLUMNS = ("status", "error", "best_val_acc", "best_epoch", "final_val_acc", "epochs_done", "wall_s",
                     "images_per_s", "finished_at", *WHERE_COLUMNS)


def _runs_scope(column: str, experiment_ids: list[int] | None) -> str:
    """A WHERE clause limiting `column` (an experiment id) to `experiment_ids` (ints only: no injection)."""
    if experiment_ids is None:
        return ""
    return f"WHERE {column} IN ({','.join(str(int(i)) for i in experiment_ids) or 'NULL'})"


def read_run_stamps(store: Store, experiment_ids: list[int] | None = None) -> pd.DataFrame:
    """Per run (of `experiment_ids`, or all): its experiment, the columns of `RUN_STAMP_COLUMNS` this
    database has, a fingerprint of its epochs (count, last epoch, sums of the drawn metrics: a retried
    epoch with other numbers changes a sum) and its evaluation's epoch. One query."""
    have = {c["name"] for c in sa.inspect(store.engine).get_columns("runs")}
    cols = ", ".join(f"r.{c}" for c in RUN_STAMP_COLUMNS if c in have)  # a database from before schema v3 lacks some
    drawn = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
    metrics = ", ".join(f"sum({m}) AS sum_{m}" for m in drawn)
    inner = ("" if experiment_ids is None else
             f"WHERE run_id IN (SELECT id FROM runs {_runs_scope('experiment_id', experiment_ids)})")
    sums = ", ".join(f"e.sum_{m}" for m in drawn)
    return store.read_sql(
        f"SELECT r.id, r.experiment_id, {cols}, e.n_epochs, e.last_epoch, {sums}, "
        f"v.epoch AS eval_epoch FROM runs r "
        f"LEFT JOIN (SELECT run_id, count(*) AS n_epochs, max(epoch) AS last_epoch, {metrics} FROM epochs {inner} "
        f"GROUP BY run_id) e ON e.run_id = r.id LEFT JOIN evaluations v ON v.run_id = r.id "
        f"{_runs_scope('r.experiment_id', experiment_ids)} ORDER BY r.id")


def read_run_counts(store: Store) -> pd.DataFrame:
    """Per experiment and run status: how many runs (n), their best and summed test acc (what the tables
    report: the index ranks by it) and summed best val acc (changes every epoch: the index's stamp). One
    grouped query over the runs' (experiment_id, status) index."""
    return store.read_sql("SELECT experiment_id, status, count(*) AS n, max(test_acc) AS best, "
                          "sum(test_acc) AS total, sum(best_val_acc) AS total_val FROM runs GROUP BY experiment_id, status")


def read_run_points(store: Store, experiment_ids: list[int]) -> pd.DataFrame:
    """The runs of `experiment_ids` as the index's overview figure draws them (no params, no epochs)."""
    df = store.read_sql("SELECT id, experiment_id, status, test_acc, final_val_acc, best_val_acc, model, stands_for, recipe, seed "
                        "FROM runs "
                        f"{_runs_scope('experiment_id', experiment_ids)} ORDER BY id")
    df["label"] = [stand_in_label(m, s, short=True) for m, s in zip(df["model"], df["stands_for"])]
    return df


def read_evaluations(store: Store, run_ids: list[int]) -> dict[int, dict]:
    """The stored evaluations of `run_ids`, by run id (JSON decoded), in one query."""
    if not run_ids:
        return {}
    df = store.read_sql(f"SELECT * FROM evaluations WHERE run_id IN ({','.join(str(int(i)) for i in run_ids)})")
    out = {}
    for row in df.to_dict("records"):
        for k in ("class_names", "per_class_acc", "confusion", "samples"):
            row[k] = _json(row[k])
        out[int(row["run_id"])] = row
    return out


def read_study_stamps(store: Store) -> pd.DataFrame:
    """Per Optuna study in the database (none: an empty frame): its trials, finished trials, last finish
    and its intermediate values (count, sum): what the sweep page's figures are drawn from."""
    names = set(sa.inspect(store.engine).get_table_names())
    columns = ["study_name", "n_trials", "n_done", "last_done", "n_values", "sum_values"]
    if not {"studies", "trials", "trial_intermediate_values"} <= names:
        return pd.DataFrame(columns=columns)
    return store.read_sql(
        "SELECT s.study_name, count(t.trial_id) AS n_trials, sum(CASE WHEN t.state = 'RUNNING' THEN 0 ELSE 1 END) AS n_done, "
        "max(t.datetime_complete) AS last_done, max(v.n) AS n_values, max(v.total) AS sum_values FROM studies s "
        "LEFT JOIN trials t ON t.study_id = s.study_id LEFT JOIN (SELECT t2.study_id, count(*) AS n, "
        "sum(i.intermediate_value) AS total FROM trial_intermediate_values i JOIN trials t2 ON t2.trial_id = i.trial_id "
        "GROUP BY t2.study_id) v ON v.study_id = s.study_id GROUP BY s.study_name")
