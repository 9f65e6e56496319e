"""Incremental pages (issue 22): a page is rewritten when what it shows changed, and only then; right
after a crash mid-write and after a resume; the index paginates; every query the pages make is on an
index (EXPLAIN on SQLite and PostgreSQL)."""

from __future__ import annotations

import re

import pytest
import sqlalchemy as sa
from test_dashboards import parse

from harness.dashboards import index as index_mod
from harness.dashboards import write as write_mod
from harness.dashboards import write_dashboards, write_pages
from harness.store import Store

METRICS = {"train_loss": 1.2, "train_acc": 0.5, "train_batch_acc": 0.45, "val_loss": 1.3, "val_acc": 0.4,
           "val_acc_raw": 0.4, "lr": 1e-3, "grad_norm": 2.0, "epoch_s": 1.0, "images_per_s": 100.0}
BANNER = re.compile(r"running — updated \d\d:\d\d:\d\d")


def fill(db: str, *, experiments: int = 2, runs: int = 2, epochs: int = 3, kinds: tuple[str, ...] = ("train",),
         finish: bool = True) -> Store:
    """Experiments of `kinds` (in turn), each with `runs` runs of `epochs` epochs; returns the open store."""
    store = Store(db)
    for i in range(experiments):
        exp = store.create_experiment(kind=kinds[i % len(kinds)], name=f"exp {i}", device="cpu (test)")
        for s in range(runs):
            run = store.create_run(exp, model="resnet18", recipe="naive", params={"recipe": {"warmup_epochs": 1}}, seed=s)
            for e in range(1, epochs + 1):
                store.log_epoch(run, e, {**METRICS, "val_acc": 0.1 * e + 0.01 * s})
            if finish:
                store.finish_run(run, status="completed", wall_s=1.0)
        if finish:
            store.finish_experiment(exp, "completed")
    return store


def test_unchanged_database_writes_nothing_and_all_rewrites_everything(db_url, tmp_path):
    fill(db_url).close()
    out = tmp_path / "d"
    first = write_pages(db_url, out)
    assert first.path == out / "index.html" and first.unchanged == 0
    assert set(first.written) == {"experiment-1.html", "experiment-2.html", "run-1.html", "run-2.html", "run-3.html",
                                  "run-4.html", "index.html"}
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = write_pages(db_url, out)
    assert again.written == [] and again.unchanged == len(first.written)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before  # not one file touched, the manifest neither
    forced = write_pages(db_url, out, all=True)
    assert sorted(forced.written) == sorted(first.written) and forced.unchanged == 0


def test_a_new_epoch_rewrites_its_run_its_experiment_and_the_index_only(db_url, tmp_path):
    store = fill(db_url, finish=False)
    out = tmp_path / "d"
    write_pages(db_url, out)
    store.log_epoch(3, 4, {**METRICS, "val_acc": 0.9})
    done = write_pages(db_url, out)
    assert sorted(done.written) == ["experiment-2.html", "index.html", "run-3.html"]
    assert "90.0" in (out / "run-3.html").read_text()
    # A retried epoch with other numbers (same epoch count) is a change too.
    store.log_epoch(1, 2, {**METRICS, "val_acc": 0.77})
    assert "run-1.html" in write_pages(db_url, out).written
    # A finished run, then its experiment.
    store.finish_run(2, status="completed", wall_s=3.0)
    assert sorted(write_pages(db_url, out).written) == ["experiment-1.html", "index.html", "run-2.html"]
    store.finish_experiment(1, "completed")
    assert sorted(write_pages(db_url, out).written) == ["experiment-1.html", "index.html"]
    store.close()


def test_a_missing_or_replaced_page_is_rewritten(db_url, tmp_path):
    fill(db_url).close()
    out = tmp_path / "d"
    write_pages(db_url, out)
    (out / "run-2.html").unlink()
    (out / "experiment-1.html").write_text("someone else's file")
    assert sorted(write_pages(db_url, out).written) == ["experiment-1.html", "run-2.html"]
    parse(out / "experiment-1.html")
    (out / write_mod.MANIFEST).write_text("{cut off")  # a manifest that cannot be read: everything again
    assert len(write_pages(db_url, out).written) == 7


def test_a_crash_mid_write_leaves_whole_pages_and_the_next_write_finishes(db_url, tmp_path, monkeypatch):
    """Killed while writing: the page being written keeps its previous whole content (atomic), and every
    page whose write was not recorded in the manifest is rewritten next time, so none stays stale."""
    store = fill(db_url, finish=False)
    out = tmp_path / "d"
    write_pages(db_url, out)
    old = (out / "run-3.html").read_text()
    for run in (1, 2, 3, 4):
        store.log_epoch(run, 4, {**METRICS, "val_acc": 0.95})
    store.close()
    real = write_mod.write_text_atomic
    written: list[str] = []

    def crash_on_third_page(path, text):
        if path.name.endswith(".html") and len(written) == 2:
            raise KeyboardInterrupt  # what a kill looks like from inside: nothing after this line runs
        written.append(path.name)
        return real(path, text)

    monkeypatch.setattr(write_mod, "write_text_atomic", crash_on_third_page)
    with pytest.raises(KeyboardInterrupt):
        write_pages(db_url, out)
    monkeypatch.setattr(write_mod, "write_text_atomic", real)
    assert not list(out.glob(".*.tmp-*"))
    for p in out.glob("*.html"):
        parse(p)  # every page whole
    assert (out / "run-3.html").read_text() == old or "95.0" in (out / "run-3.html").read_text()
    done = write_pages(db_url, out)
    assert {"run-1.html", "run-2.html", "run-3.html", "run-4.html", "index.html"} <= set(done.written) | set(written)
    for run in (1, 2, 3, 4):
        assert "95.0" in (out / f"run-{run}.html").read_text()
    assert write_pages(db_url, out).written == []


def test_live_then_final_and_a_resume(db_url, tmp_path):
    """A live write marks the running experiment's pages; an unchanged live write writes nothing; the final
    write rewrites them without the banner; a resume (running again, new epochs) rewrites them live."""
    store = fill(db_url, experiments=1, finish=False)
    other = store.create_experiment(kind="train", name="done before", device="cpu")
    store.finish_experiment(other, "completed")
    out = tmp_path / "d"
    write_pages(db_url, out)
    live = write_pages(db_url, out, live=True, experiments=[1])
    assert sorted(live.written) == ["experiment-1.html", "index.html", "run-1.html", "run-2.html"]
    assert BANNER.search((out / "run-1.html").read_text()) and not BANNER.search((out / "experiment-2.html").read_text())
    assert write_pages(db_url, out, live=True, experiments=[1]).written == []
    store.finish_run(1, status="completed")
    store.finish_run(2, status="completed")
    store.finish_experiment(1, "completed")
    final = write_pages(db_url, out)
    assert sorted(final.written) == ["experiment-1.html", "index.html", "run-1.html", "run-2.html"]
    for p in out.glob("*.html"):
        assert not BANNER.search(p.read_text()), p.name
    with store.engine.begin() as c:  # what a resume does to the rows
        c.execute(sa.text("UPDATE experiments SET status = 'running', finished_at = NULL WHERE id = 1"))
    store.log_epoch(1, 4, {**METRICS, "val_acc": 0.6})
    resumed = write_pages(db_url, out, live=True, experiments=[1])
    assert {"experiment-1.html", "run-1.html", "index.html"} <= set(resumed.written)
    assert BANNER.search((out / "run-1.html").read_text())
    store.close()


def test_the_index_paginates_newest_first_with_kind_pages(db_url, tmp_path, monkeypatch):
    monkeypatch.setattr(index_mod, "PER_PAGE", 3)
    monkeypatch.setattr(write_mod, "PER_PAGE", 3)
    fill(db_url, experiments=7, runs=1, epochs=1, kinds=("benchmark", "sweep")).close()
    out = tmp_path / "d"
    write_dashboards(db_url, out)
    ids = {}
    for name in ("index.html", "index-2.html", "index-3.html", "index-benchmark.html", "index-benchmark-2.html",
                 "index-sweep.html"):
        page = parse(out / name)
        for href in page.links:
            assert (out / href).is_file(), (name, href)
        ids[name] = [int(m) for m in re.findall(r'<a href="experiment-(\d+)\.html">exp', (out / name).read_text())]
    assert ids["index.html"] == [7, 6, 5] and ids["index-2.html"] == [4, 3, 2] and ids["index-3.html"] == [1]
    assert ids["index-benchmark.html"] == [7, 5, 3] and ids["index-benchmark-2.html"] == [1]
    assert ids["index-sweep.html"] == [6, 4, 2]
    first = (out / "index.html").read_text()
    assert "older →" in first and "← newer" not in first and "page 1 of 3" in first
    assert not (out / "index-4.html").exists()


def test_a_long_curve_is_thinned_keeping_first_last_and_best(db_url, tmp_path):
    from test_dashboards import plot_data

    from harness.dashboards.figures import MAX_POINTS

    store = Store(db_url)
    exp = store.create_experiment(kind="train", name="long")
    run = store.create_run(exp, model="resnet18", recipe="naive", params={}, seed=0)
    n = 3 * MAX_POINTS
    with store.engine.begin() as c:  # thousands of epochs in one transaction (log_epoch: one each)
        c.execute(sa.text("INSERT INTO epochs (run_id, epoch, val_acc, train_acc, train_loss, val_loss, lr) "
                          "VALUES (:r, :e, :v, 0.5, 1.0, 1.0, 0.001)"),
                  [{"r": run, "e": e, "v": 0.99 if e == 777 else 0.5} for e in range(1, n + 1)])
    store.close()
    write_dashboards(db_url, tmp_path)
    val = next(t for t in plot_data(parse(tmp_path / f"run-{run}.html")) if t.get("name") == "val acc")
    assert len(val["x"]) <= MAX_POINTS and val["x"][0] == 1 and val["x"][-1] == n and 777 in val["x"]


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db(request, tmp_path):
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        Store(url).close()
        return url
    return f"sqlite:///{tmp_path / 'results.db'}"


HARNESS = ("experiments", "runs", "epochs", "evaluations")


def test_every_page_query_is_on_an_index(any_db, tmp_path):
    """The reads of a full write and of a live write of one experiment, each EXPLAINed: a table is read
    whole only by a query that asks for all of it (no WHERE); every filtered read goes through an index.
    PostgreSQL prefers a sequential scan of a tiny table, so there it is asked with enable_seqscan off
    (a scan it still chooses then has no index to use)."""
    store = fill(any_db, experiments=3, kinds=("benchmark", "sweep", "train"))
    store.save_evaluation(1, {"epoch": 2, "class_names": ["a", "b"], "per_class_acc": [0.5, 0.5], "confusion": [[1, 1], [1, 1]],
                              "samples": []})
    seen: list[tuple[str, object]] = []
    engine_cls = sa.engine.Engine

    def capture(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT"):
            seen.append((statement, parameters))

    sa.event.listen(engine_cls, "before_cursor_execute", capture)
    try:
        write_pages(any_db, tmp_path / "full")
        write_pages(any_db, tmp_path / "live", live=True, experiments=[2])
    finally:
        sa.event.remove(engine_cls, "before_cursor_execute", capture)
    checked = 0
    with store.engine.connect() as c:
        pg = c.dialect.name == "postgresql"
        if pg:
            c.exec_driver_sql("SET enable_seqscan = off")
        for statement, params in dict.fromkeys((s, repr(p)) for s, p in seen):
            names = set(re.findall(r"\b(?:FROM|JOIN)\s+(\w+)", statement, re.I))
            if not names & set(HARNESS):
                continue  # the schema inspection, Optuna's tables
            args = eval(params)  # noqa: S307 - our own repr of the captured parameters
            plan = [str(r[-1] if not pg else r[0]) for r in c.exec_driver_sql("EXPLAIN " + ("" if pg else "QUERY PLAN ") + statement,
                                                                             args or ()).all()]
            filtered = " WHERE " in statement.upper()
            for line in plan:
                full = re.search(r"\bSCAN (\w+)(?! USING)" if not pg else r"Seq Scan on (\w+)", line)
                if full and full.group(1) in HARNESS + ("r", "e", "v"):
                    # a whole-table read is allowed only where the query reads the whole table
                    assert not filtered or _whole_read(statement, full.group(1)), (statement, plan)
            checked += 1
    store.close()
    assert checked >= 10, seen


def _whole_read(statement: str, table: str) -> bool:
    """The stamp reads of a full write read every run (and join each one's epochs, grouped, and its
    evaluation by primary key): their WHERE clauses filter the Optuna side or nothing of `table`."""
    return "GROUP BY" in statement.upper() and table in ("runs", "r", "studies", "trials")


def test_an_older_database_gains_the_page_indexes_when_a_writer_opens_it(db_url):
    fill(db_url, experiments=1).close()
    store = Store(db_url)
    with store.engine.begin() as c:  # as a database made before the indexes existed
        for name in ("ix_runs_experiment_status", "ix_experiments_status"):
            c.execute(sa.text(f"DROP INDEX {name}"))
    store.close()
    reader = Store(db_url, create=False)  # readers never change a database
    assert {"ix_runs_experiment_status"} - {i["name"] for i in sa.inspect(reader.engine).get_indexes("runs")}
    reader.close()
    store = Store(db_url)
    assert "ix_runs_experiment_status" in {i["name"] for i in sa.inspect(store.engine).get_indexes("runs")}
    assert "ix_experiments_status" in {i["name"] for i in sa.inspect(store.engine).get_indexes("experiments")}
    store.close()


def test_a_live_write_into_a_new_folder_links_no_page_it_did_not_write(db_url, tmp_path):
    """The live writer draws one experiment; the index lists the others without links until `harness report`
    writes their pages (no dead links in between)."""
    store = fill(db_url, experiments=2, finish=False)
    store.finish_experiment(1, "completed")
    store.close()
    out = tmp_path / "d"
    write_pages(db_url, out, live=True, experiments=[2])
    page = parse(out / "index.html")
    for href in page.links:
        assert (out / href).is_file(), href
    assert "not written yet" in (out / "index.html").read_text()
    write_pages(db_url, out)
    assert "experiment-1.html" in parse(out / "index.html").links
