"""PostgreSQL as the results database, for real: the session's server (conftest `pg_server`), the
same Store on both backends, an older schema upgraded in place, and bad server URLs refused fast with
one message, exit 2 and nothing written."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
import sqlalchemy as sa


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_db(request, tmp_path):
    """An empty database (no tables at all) on each backend."""
    if request.param == "postgresql":
        return request.getfixturevalue("pg_url")
    return f"sqlite:///{tmp_path / 'results.db'}"


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_postgresql_urls_use_the_installed_driver():
    """`postgresql://` needs no driver suffix: psycopg 3 ships with harness and SQLAlchemy picks it."""
    import psycopg  # noqa: F401

    assert sa.create_engine("postgresql://u@h/d").dialect.driver == "psycopg"


def test_store_on_an_empty_database(empty_db):
    """Store creates its tables next to Optuna's, writes runs/epochs with where they ran, replaces a
    re-reported epoch instead of duplicating it, and a reader sees it all."""
    import optuna

    from harness import report as rep
    from harness.store import HARNESS_TABLES, Store, check_url
    from harness.sweep import optuna_storage

    check_url(empty_db)  # reachable, empty: fine for a writer
    store = Store(empty_db)
    exp = store.create_experiment(kind="sweep", name="s", spec="a: 1", device="ray: 2 nodes")
    run = store.create_run(exp, model="resnet18", recipe="naive", params={"recipe": {"lr": 0.1}}, seed=0, trial_id="t1",
                           optuna_trial=0)
    a = {"node": "box-a", "node_id": "a" * 56, "gpus": ""}
    b = {"node": "box-b", "node_id": "b" * 56, "gpus": "0: NVIDIA H100"}
    store.log_epoch(run, 1, {"val_acc": 0.5, "train_loss": 1.0}, where=a)
    store.log_epoch(run, 2, {"val_acc": float("nan")}, where=a)  # NaN -> NULL, not an error
    store.log_epoch(run, 2, {"val_acc": 0.7}, where=b)  # retried on another node: replaces epoch 2
    store.finish_run(run, status="completed", wall_s=3.0)
    store.finish_experiment(exp, "completed")
    store.close()
    study = optuna.create_study(study_name="s", storage=optuna_storage(empty_db))
    study.tell(study.ask(), 0.7)
    assert set(HARNESS_TABLES) | {"studies", "trials"} <= tables(empty_db)

    check_url(empty_db, must_exist=True)
    reader = rep.open_reader(empty_db)
    runs = rep.read_runs(reader)
    epochs = rep.read_epochs(reader)
    reader.close()
    (r,) = runs.to_dict("records")
    assert (r["status"], r["epochs_done"], r["best_val_acc"], r["best_epoch"]) == ("completed", 2, 0.7, 2)
    assert (r["node"], r["node_id"], r["gpus"]) == ("box-b", "b" * 56, "0: NVIDIA H100")
    assert r["params"] == {"recipe": {"lr": 0.1}}
    assert epochs[["epoch", "node_id"]].values.tolist() == [[1, "a" * 56], [2, "b" * 56]]
    assert optuna.load_study(study_name="s", storage=empty_db).best_value == 0.7


def test_older_schema_gains_node_columns_in_place(empty_db):
    """A schema-v2 database (before node/GPU recording) is upgraded in place: old rows keep their values,
    the new columns are NULL for them."""
    from harness import store as st

    old = sa.MetaData()
    for t in (st.meta, st.experiments, st.runs, st.epochs):
        t.to_metadata(old)
    old.tables["runs"]._columns.remove(old.tables["runs"].c.node)  # the v2 shape: without the v3 columns
    old.tables["runs"]._columns.remove(old.tables["runs"].c.node_id)
    old.tables["runs"]._columns.remove(old.tables["runs"].c.gpus)
    old.tables["epochs"]._columns.remove(old.tables["epochs"].c.node_id)
    engine = sa.create_engine(empty_db)
    old.create_all(engine)
    with engine.begin() as c:
        c.execute(old.tables["harness_meta"].insert().values(key="schema_version", value="2"))
        c.execute(old.tables["experiments"].insert().values(id=1, kind="train", name="x", created_at=st.now()))
        c.execute(old.tables["runs"].insert().values(id=1, experiment_id=1, model="m", recipe="r", params={}, seed=0,
                                                     status="completed", epochs_done=1, created_at=st.now()))
        c.execute(old.tables["epochs"].insert().values(run_id=1, epoch=1, val_acc=0.25))
    engine.dispose()

    store = st.Store(empty_db)
    with store.engine.connect() as c:
        assert c.execute(sa.select(st.meta.c.value).where(st.meta.c.key == "schema_version")).scalar() == str(st.SCHEMA_VERSION)
        assert c.execute(sa.select(st.runs.c.model, st.runs.c.node)).one() == ("m", None)
        assert c.execute(sa.select(st.epochs.c.val_acc, st.epochs.c.node_id)).one() == (0.25, None)
    store.log_epoch(1, 2, {"val_acc": 0.5}, where={"node": "n", "node_id": "i", "gpus": ""})
    with store.engine.connect() as c:
        assert c.execute(sa.select(st.runs.c.node, st.runs.c.epochs_done)).one() == ("n", 2)
    store.close()


# --- bad server URLs: one message naming the URL (password hidden) and the fix, exit 2, fast, nothing written

@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers (a firewall-dropped or hung server)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once closed


CASES = {
    "wrong password": (lambda pg, db, q: pg.url(db, password="wrong-secret-1"), "refused the credentials"),
    "unknown role": (lambda pg, db, q: pg.url(db, user="nobody"), "refused the credentials"),
    "missing database": (lambda pg, db, q: pg.url("no_such_db"), "createdb"),
    "nothing listening": (lambda pg, db, q: f"postgresql://harness:s3cret-x@127.0.0.1:{_closed_port()}/x", "Cannot reach"),
    "no answer": (lambda pg, db, q: f"postgresql://harness:s3cret-x@127.0.0.1:{q}/x", "within 5 s"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_server_url_refused_fast(case, pg_server, pg_url, silent_server, tmp_path, monkeypatch):
    from click.testing import CliRunner

    import harness.sweep
    from harness.cli import main

    def tripwire(*a, **k):
        raise AssertionError("bad input started Ray")

    monkeypatch.setattr(harness.sweep.ray, "init", tripwire)
    monkeypatch.chdir(tmp_path)
    make, fix = CASES[case]
    db = pg_url.rsplit("/", 1)[1]
    url = make(pg_server, db, silent_server)
    study = Path(__file__).parents[1] / "studies" / "vit_lr.yaml"
    for args in (["report", "--db", url, "--out", "dash"], ["sweep", str(study), "--db", url]):
        t0 = time.monotonic()
        res = CliRunner().invoke(main, args)
        took = time.monotonic() - t0
        assert res.exit_code == 2, res.output
        assert res.output.count("error: ") == 1 and "Traceback" not in res.output, res.output
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
        assert f"--db: got '{shown}'" in res.output and fix in res.output, res.output
        assert sa.engine.make_url(url).password not in res.output  # the password is never printed
        assert took < 20, f"{case}: {took:.1f} s"
    assert not any(tmp_path.iterdir())  # no dashboards, no ray_results
    assert tables(pg_url) == set()  # and nothing in the database
