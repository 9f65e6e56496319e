"""PostgreSQL as the results database, for real (the session's server, conftest `pg_server`): bad
server URLs refused fast with one message (password hidden), exit 2 and nothing written; readers
working while another process writes; the Optuna study and harness's tables in one database."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from dbrows import tables

from harness.store import CONNECT_TIMEOUT_S

STUDY = Path(__file__).parents[1] / "studies" / "vit_lr.yaml"


def test_postgresql_urls_use_the_installed_driver():
    """`postgresql://` needs no driver suffix: psycopg 3 installs with harness and SQLAlchemy picks it."""
    import psycopg  # noqa: F401

    from harness.store import make_engine, shown_url

    assert sa.create_engine("postgresql://u@h/d").dialect.driver == "psycopg"
    assert make_engine("postgresql://u:pw@h/d").dialect.name == "postgresql"
    assert shown_url("postgresql://u:s3cret@h:5433/d") == "postgresql://u:***@h:5433/d"
    assert shown_url("sqlite:///results.db") == "sqlite:///results.db"


# --- bad server URLs: one message naming the URL (password hidden) and the fix, exit 2, fast, nothing written

@pytest.fixture
def silent_port():
    """A TCP port that accepts connections and never answers (a hung server, or one behind a firewall
    that drops packets): only the connect timeout ends the wait."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    yield s.getsockname()[1]
    s.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens there once closed


CASES = {  # case: (URL from (server, database, silent port), what the message says)
    "wrong password": (lambda pg, db, q: pg.url(db, password="wrong-secret-1"), "refused the credentials"),
    "unknown role": (lambda pg, db, q: pg.url(db, user="nobody"), "refused the credentials"),
    "missing database": (lambda pg, db, q: pg.url("no_such_db"), "createdb -h 127.0.0.1 -U harness no_such_db"),
    "nothing listening": (lambda pg, db, q: f"postgresql://harness:s3cret-x@127.0.0.1:{_closed_port()}/x", "Cannot reach"),
    "no answer": (lambda pg, db, q: f"postgresql://harness:s3cret-x@127.0.0.1:{q}/x", f"within {CONNECT_TIMEOUT_S} s"),
}


@pytest.fixture
def no_ray(tmp_path, monkeypatch, ray_tripwire):
    """Bad input must not start Ray (tests/conftest.py `ray_tripwire`: never reached, even with the
    session's Ray up); the command runs in an empty folder."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work
    assert not ray_tripwire, "bad input tried to start Ray"


@pytest.mark.parametrize("case", CASES)
def test_bad_server_url_refused_fast(case, pg_server, pg_url, silent_port, no_ray):
    from harness.cli import main

    make, fix = CASES[case]
    url = make(pg_server, pg_url.rsplit("/", 1)[1], silent_port)
    password = sa.engine.make_url(url).password
    shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    for args in (["report", "--db", url, "--out", "dash"], ["sweep", str(STUDY), "--db", url],
                 ["train", "--model", "resnet18", "--data", "synthetic", "--epochs", "1", "--db", url]):
        t0 = time.monotonic()
        res = CliRunner().invoke(main, args)
        took = time.monotonic() - t0
        assert res.exit_code == 2, (args[0], res.output)
        assert res.output.count("error: ") == 1 and "Traceback" not in res.output, res.output
        assert f"--db: got '{shown}'" in res.output and fix in res.output, res.output
        assert password not in res.output  # the password is never printed
        # The property: the connect timeout ends the wait ("no answer": without it a server that accepts
        # and never answers is waited for forever). The store's connect and Optuna's may each spend one
        # timeout, and a loaded 2-core machine adds seconds: the margin is wide, the failure still clear.
        assert took < 3 * CONNECT_TIMEOUT_S + 30, f"{case} ({args[0]}): {took:.1f} s"
    assert not any(no_ray.iterdir())  # no dashboards, no checkpoints, no ray_results
    assert tables(pg_url) == set()  # and nothing in the database the good URL names


def test_unroutable_host_gives_up_within_the_connect_timeout(no_ray):
    """10.255.255.1 is not routed (packets vanish): without connect_timeout the TCP connect would hang
    for minutes. (A sandbox whose proxy answers for it fails faster, with another message.)"""
    from harness.cli import main

    t0 = time.monotonic()
    res = CliRunner().invoke(main, ["report", "--db", "postgresql://harness:pw-x@10.255.255.1:5432/harness"])
    took = time.monotonic() - t0
    assert res.exit_code == 2 and "10.255.255.1:5432" in res.output and "pw-x" not in res.output, res.output
    # The property: the connect timeout ends it. Without one the kernel's SYN retries take ~127 s
    # (tcp_syn_retries 6); libpq may try the host twice (with and without TLS) and a loaded machine
    # adds seconds, so the margin is wide and still far from the ~2 min a missing timeout costs.
    assert took < 4 * CONNECT_TIMEOUT_S + 30, f"{took:.1f} s"
    assert not any(no_ray.iterdir())


# --- readers while a writer writes ---------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    from harness.store import Store
    store = Store(sys.argv[1])
    exp = store.create_experiment(kind="benchmark", name="live", device="cpu")
    runs = [store.create_run(exp, model="resnet18", recipe=r, params={"recipe": {}}, seed=0) for r in ("naive", "cnn")]
    print("started", flush=True)
    for epoch in range(1, 41):
        for i, run in enumerate(runs):
            store.log_epoch(run, epoch, {"val_acc": 0.01 * epoch + 0.1 * i, "train_acc": 0.02 * epoch, "lr": 1e-3,
                                         "train_loss": 1.0 / epoch, "val_loss": 1.1 / epoch},
                            where={"node": "writer-box", "node_id": "n" * 56, "gpus": ""})
        time.sleep(0.05)
    for run in runs:
        store.finish_run(run, status="completed", wall_s=2.0)
    store.finish_experiment(exp, "completed")
    store.close()
""")


def test_readers_work_while_another_process_writes(pg_url, tmp_path):
    """The driver writes (its own process, one transaction per epoch); report and the dashboards read at
    the same time, never block it, and every read sees whole epochs: a run's epochs_done always
    equals its epoch rows in that read."""
    from harness import tables as rep
    from harness.dashboards import write_dashboards

    writer = subprocess.Popen([sys.executable, "-c", WRITER, pg_url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True)
    try:
        assert writer.stdout.readline().strip() == "started", writer.stdout.read()
        consistent = "SELECT r.id, r.epochs_done, (SELECT count(*) FROM epochs e WHERE e.run_id = r.id) AS n FROM runs r"
        seen, pages = set(), 0
        while writer.poll() is None:
            reader = rep.open_reader(pg_url)
            for r in reader.read_sql(consistent).to_dict("records"):
                assert r["epochs_done"] == r["n"], r  # one statement, one snapshot: never half an epoch
                seen.add(int(r["n"]))
            reader.close()
            write_dashboards(pg_url, tmp_path / "dash", live=True, refresh_s=1)
            pages += 1
        out = writer.stdout.read()
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0, out
    assert pages >= 2 and len(seen) >= 2, (pages, seen)  # the reads really overlapped the writes
    reader = rep.open_reader(pg_url)
    runs = rep.read_runs(reader)
    reader.close()
    assert runs["epochs_done"].tolist() == [40, 40] and set(runs["node"]) == {"writer-box"}
    write_dashboards(pg_url, tmp_path / "dash")
    assert f"<td>writer-box · {'n' * 8}</td><td>CPU only</td>" in (tmp_path / "dash" / "experiment-1.html").read_text()


# --- Optuna and harness in one database ---------------------------------------------------------

def test_optuna_study_and_harness_tables_share_the_database(pg_url, tmp_path):
    """The study lives in the results database as with SQLite: harness.study.optuna_storage on the same
    URL, optuna.load_study (optuna-dashboard's way in) finds it, and the sweep page draws its figures
    beside the trial table with where each trial ran."""
    import optuna

    from harness.dashboards import write_dashboards
    from harness.store import Store, metadata
    from harness.study import optuna_storage

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(pg_url)
    exp = store.create_experiment(kind="sweep", name="pg sweep", spec="search:\n  lr: {type: loguniform}\n")
    study = optuna.create_study(study_name="pg sweep", storage=optuna_storage(pg_url), direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    for n in range(4):
        trial = study.ask()
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)
        run = store.create_run(exp, model="resnet18", recipe="naive", params={"recipe": {"lr": lr}}, seed=0, optuna_trial=n)
        for epoch in (1, 2):
            acc = 0.1 * epoch + lr
            store.log_epoch(run, epoch, {"val_acc": acc, "train_acc": acc, "lr": lr},
                            where={"node": f"node-{n % 2}", "node_id": str(n % 2) * 56, "gpus": f"0: GPU {n % 2}"})
            trial.report(acc, epoch)
        store.finish_run(run, status="completed")
        study.tell(trial, acc)
    store.finish_experiment(exp, "completed")
    store.close()
    assert set(metadata.tables) | {"studies", "trials", "trial_values"} <= tables(pg_url)
    assert optuna.load_study(study_name="pg sweep", storage=pg_url).best_value == pytest.approx(study.best_value)
    write_dashboards(pg_url, tmp_path / "d")
    sweep = (tmp_path / "d" / f"sweep-{exp}.html").read_text()
    assert f"optuna-{exp}-0" in sweep and "No Optuna study" not in sweep
    assert f"<td>node-0 · {'0' * 8}</td><td>0: GPU 0</td>" in sweep and f"<td>node-1 · {'1' * 8}</td><td>0: GPU 1</td>" in sweep
