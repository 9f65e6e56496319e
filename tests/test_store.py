"""The Store on both backends (SQLite and the session's PostgreSQL server), as Optuna tests every
storage: tables beside Optuna's, an epoch re-reported after a retry replaces its row, where each run
ran is kept, and an older schema is upgraded in place."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from dbrows import tables


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request, tmp_path):
    """A database with no tables at all, on each backend."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'results.db'}"


A = {"node": "box-a", "node_id": "a" * 56, "gpus": ""}
B = {"node": "box-b", "node_id": "b" * 56, "gpus": "0: NVIDIA H100 80GB HBM3; 1: NVIDIA H100 80GB HBM3"}


def test_store_on_an_empty_database(empty_db):
    """The Store creates its tables next to Optuna's; a re-reported epoch (a trial retried on another
    node) replaces its row instead of adding one, the run shows where its latest epoch ran, and a
    reader sees it all."""
    import optuna

    from harness import tables as rep
    from harness.store import Store, check_url, metadata
    from harness.study import optuna_storage

    check_url(empty_db)  # reachable and empty: fine for a writer
    store = Store(empty_db)
    exp = store.create_experiment(kind="sweep", name="s", spec="a: 1", device="ray: 2 nodes")
    run = store.create_run(exp, model="resnet18", recipe="naive", params={"recipe": {"lr": 0.1}}, seed=0, trial_id="t1",
                           optuna_trial=0)
    store.log_epoch(run, 1, {"val_acc": 0.5, "train_loss": 1.0}, where=A)
    store.log_epoch(run, 2, {"val_acc": float("nan")}, where=A)  # NaN -> NULL, not an error
    store.log_epoch(run, 2, {"val_acc": 0.7}, where=B)  # retried on node B from epoch 1's checkpoint
    store.finish_run(run, status="completed", wall_s=3.0)
    store.finish_experiment(exp, "completed")
    store.close()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="s", storage=optuna_storage(empty_db), direction="maximize")
    study.tell(study.ask(), 0.7)
    assert set(metadata.tables) | {"studies", "trials"} <= tables(empty_db)  # harness's and Optuna's

    check_url(empty_db, must_exist=True)
    reader = rep.open_reader(empty_db)
    runs, epochs = rep.read_runs(reader), rep.read_epochs(reader)
    reader.close()
    (r,) = runs.to_dict("records")
    assert (r["status"], r["epochs_done"], r["best_val_acc"], r["best_epoch"], r["final_val_acc"]) == ("completed", 2, 0.7, 2, 0.7)
    assert (r["node"], r["node_id"], r["gpus"]) == ("box-b", "b" * 56, B["gpus"])
    assert r["params"] == {"recipe": {"lr": 0.1}}
    assert epochs[["epoch", "node_id"]].values.tolist() == [[1, "a" * 56], [2, "b" * 56]]
    assert optuna.load_study(study_name="s", storage=empty_db).best_value == 0.7


def test_where_is_optional_and_cpu_only_is_an_empty_string(empty_db):
    """Callers that do not say where (old tests, tools) leave the run's node as it was; "" GPUs means
    CPU only, NULL means never recorded (an older database)."""
    from harness import tables as rep
    from harness.store import Store

    store = Store(empty_db)
    exp = store.create_experiment(kind="train", name="t")
    run = store.create_run(exp, model="m", recipe="r", params={}, seed=0)
    store.log_epoch(run, 1, {"val_acc": 0.1})
    plain = rep.read_runs(store).iloc[0]
    assert plain["node"] is None and plain["gpus"] is None
    store.log_epoch(run, 2, {"val_acc": 0.2}, where={"node": "laptop", "node_id": None, "gpus": ""})
    store.log_epoch(run, 3, {"val_acc": 0.3})  # no where: the run keeps what it had
    r = rep.read_runs(store).iloc[0]
    assert (r["node"], r["node_id"], r["gpus"], r["epochs_done"]) == ("laptop", None, "", 3)
    store.close()


def _old_schema(url: str, version: int) -> None:
    """The harness tables as an older harness made them (v2: no node/GPU columns; v1: also without
    train_batch_acc/val_acc_raw), with one experiment, one run and one epoch in them."""
    from harness import store as st

    old = sa.MetaData()
    for t in (st.meta, st.experiments, st.runs, st.epochs, st.evaluations, st.checks):
        t.to_metadata(old)
    gone = {"runs": ["node", "node_id", "gpus"], "epochs": ["node_id"]}
    if version < 2:
        gone["epochs"] += ["train_batch_acc", "val_acc_raw"]
    for table, cols in gone.items():
        for col in cols:
            old.tables[table]._columns.remove(old.tables[table].c[col])
    engine = sa.create_engine(url)
    old.create_all(engine)
    with engine.begin() as c:
        c.execute(old.tables["harness_meta"].insert().values(key="schema_version", value=str(version)))
        c.execute(old.tables["experiments"].insert().values(id=1, kind="train", name="x", created_at=st.now()))
        c.execute(old.tables["runs"].insert().values(id=1, experiment_id=1, model="m", recipe="r", params={}, seed=0,
                                                     status="completed", epochs_done=1, created_at=st.now()))
        c.execute(old.tables["epochs"].insert().values(run_id=1, epoch=1, val_acc=0.25))
    engine.dispose()


@pytest.mark.parametrize("version", [1, 2])
def test_older_schema_gains_the_new_columns_in_place(empty_db, version):
    """A database from an older harness is upgraded when a writer opens it: old rows keep their values,
    the new columns are NULL for them, and new epochs record where they ran."""
    from harness import store as st

    _old_schema(empty_db, version)
    st.check_url(empty_db, must_exist=True)
    store = st.Store(empty_db)
    with store.engine.connect() as c:
        assert c.execute(sa.select(st.meta.c.value).where(st.meta.c.key == "schema_version")).scalar() == str(st.SCHEMA_VERSION)
        assert c.execute(sa.select(st.runs.c.model, st.runs.c.node, st.runs.c.gpus)).one() == ("m", None, None)
        assert c.execute(sa.select(st.epochs.c.val_acc, st.epochs.c.val_acc_raw, st.epochs.c.node_id)).one() == (0.25, None, None)
    store.log_epoch(1, 2, {"val_acc": 0.5, "val_acc_raw": 0.45}, where={"node": "n", "node_id": "i", "gpus": ""})
    with store.engine.connect() as c:
        assert c.execute(sa.select(st.runs.c.node, st.runs.c.epochs_done, st.runs.c.best_val_acc)).one() == ("n", 2, 0.5)
    store.close()
    assert {c["name"] for c in sa.inspect(sa.create_engine(empty_db)).get_columns("runs")} >= {"node", "node_id", "gpus"}


def test_foreign_tables_refused_on_both(empty_db):
    """Tables named like harness's that harness did not make: refused before anything is written."""
    from harness.errors import UserError
    from harness.store import check_url

    engine = sa.create_engine(empty_db)
    with engine.begin() as c:
        c.execute(sa.text("CREATE TABLE runs (id INTEGER PRIMARY KEY, what TEXT)"))
    engine.dispose()
    with pytest.raises(UserError, match="not a harness database"):
        check_url(empty_db)
    with pytest.raises(UserError, match="not a harness database"):
        check_url(empty_db, must_exist=True)  # a reader too
    assert tables(empty_db) == {"runs"}


def test_a_reader_leaves_an_older_database_as_it_is(empty_db, tmp_path):
    """Readers (report, dashboards) never migrate: a v2 database is read as it is, its runs say nowhere
    that they ran, and the pages show no node columns."""
    from harness import store as st
    from harness import tables as rep
    from harness.dashboards import write_dashboards

    _old_schema(empty_db, 2)
    reader = rep.open_reader(empty_db)
    r = rep.read_runs(reader).iloc[0]
    reader.close()
    assert (r["model"], r["node"], r["node_id"], r["gpus"]) == ("m", None, None, None)
    write_dashboards(empty_db, tmp_path / "d")
    assert "<th>node</th>" not in (tmp_path / "d" / "experiment-1.html").read_text()
    engine = sa.create_engine(empty_db)
    with engine.connect() as c:
        assert c.execute(sa.select(st.meta.c.value).where(st.meta.c.key == "schema_version")).scalar() == "2"
    engine.dispose()
    assert "node" not in {c["name"] for c in sa.inspect(sa.create_engine(empty_db)).get_columns("runs")}


def test_harness_train_records_this_machine(empty_db, tiny_spec, tmp_path, monkeypatch):
    """A plain `harness train` run (no Ray) records the hostname, no Ray node id, and "" GPUs on a CPU."""
    import socket

    from harness import tables as rep
    from harness.runner import run_and_record

    monkeypatch.chdir(tmp_path)
    run_and_record(tiny_spec(epochs=1, device="cpu"), db=empty_db, echo=lambda _: None)
    reader = rep.open_reader(empty_db)
    r, e = rep.read_runs(reader).iloc[0], rep.read_epochs(reader).iloc[0]
    reader.close()
    assert (r["node"], r["node_id"], r["gpus"], e["node_id"]) == (socket.gethostname(), None, "", None)
