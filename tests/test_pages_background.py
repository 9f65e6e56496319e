"""Live pages off the recording thread (issue 22): `LivePages` rewrites one running experiment's pages on
a daemon thread; a rewrite that blocks never blocks the caller or `stop()`; a slow rewrite makes the
missed periods skipped, not queued; failures are warnings; Optuna says nothing while a sweep page is drawn."""

from __future__ import annotations

import threading
import time

import pytest

from harness.dashboards import LivePages, write_pages
from harness.dashboards import live as live_mod
from harness.store import Store

METRICS = {"train_loss": 1.2, "train_acc": 0.5, "val_loss": 1.3, "val_acc": 0.4, "lr": 1e-3}
# How long a test waits for something the thread does before calling it hung: a safety net, not a speed
# requirement (a loaded 2-core machine imports plotly and writes pages slowly); a passing run never waits it out.
WAIT_S = 120
PERIOD_S = 0.05  # the live period in these tests: short, so that the thread goes round often


def until(condition, what: str) -> None:
    t0 = time.monotonic()
    while not condition():
        assert time.monotonic() - t0 < WAIT_S, f"timed out waiting for {what}"
        time.sleep(0.01)


def two_experiments(db: str) -> Store:
    """Experiment 1 finished (2 runs), experiment 2 running (2 runs, one with an epoch)."""
    store = Store(db)
    for status in ("completed", "running"):
        exp = store.create_experiment(kind="train", name=f"exp {status}", device="cpu (test)")
        for seed in range(2):
            run = store.create_run(exp, model="resnet18", recipe="naive", params={}, seed=seed)
            if seed == 0 or status == "completed":
                store.log_epoch(run, 1, METRICS)
        if status == "completed":
            store.finish_experiment(exp, "completed")
    return store


def test_a_blocked_rewrite_blocks_neither_recording_nor_stop(db_url, tmp_path, monkeypatch):
    store = two_experiments(db_url)
    entered, release = threading.Event(), threading.Event()
    calls: list[int] = []

    def stuck(*args, **kwargs):
        calls.append(1)
        entered.set()
        release.wait(WAIT_S)  # a rewrite stuck on something (a locked database, a slow disk)

    monkeypatch.setattr(live_mod, "write_pages", stuck)
    pages = LivePages(db_url, tmp_path / "d", every_s=PERIOD_S)
    pages.start(2)
    until(entered.is_set, "the first rewrite")
    for epoch in range(2, 6):  # the recorder goes on while the page thread is stuck
        store.log_epoch(3, epoch, METRICS)
    store.finish_run(3, status="completed")
    assert store.read_sql("SELECT epochs_done FROM runs WHERE id = 3").iloc[0, 0] == 5
    assert pages.stop(timeout=0.2) is False  # returned, the rewrite still under way (the thread is a daemon)
    release.set()
    until(lambda: not pages._thread.is_alive(), "the thread to end after its rewrite")
    assert calls == [1]  # stopped: no rewrite after the stuck one
    store.close()


def test_a_slow_rewrite_skips_the_missed_periods(db_url, tmp_path, monkeypatch):
    """A rewrite that outlasts several periods is followed by one rewrite at the next boundary, not by
    one per missed period."""
    two_experiments(db_url).close()
    gates = [threading.Event(), threading.Event()]
    started: list[float] = []

    def slow(*args, **kwargs):
        started.append(time.monotonic())
        gates[len(started) - 1].wait(WAIT_S)

    monkeypatch.setattr(live_mod, "write_pages", slow)
    pages = LivePages(db_url, tmp_path / "d", every_s=PERIOD_S)
    pages.start(2)
    until(lambda: len(started) == 1, "the first rewrite")
    until(lambda: time.monotonic() - started[0] > 5 * PERIOD_S, "five periods to pass")
    gates[0].set()
    until(lambda: len(started) == 2, "the next rewrite")
    assert pages.skipped >= 4 and pages.rewrites == 1  # the missed boundaries counted as skipped
    gates[1].set()
    assert pages.stop(timeout=WAIT_S)
    assert len(started) <= 3  # (a third may begin while stop is asked; never a queue of five)


def test_the_thread_writes_only_the_running_experiment_and_the_index(db_url, tmp_path):
    two_experiments(db_url).close()
    out = tmp_path / "d"
    pages = LivePages(db_url, out, every_s=PERIOD_S)
    pages.start(2)
    until(lambda: pages.rewrites >= 1, "a rewrite")
    assert pages.stop(timeout=WAIT_S)
    assert pages.failures == 0
    assert {p.name for p in out.glob("*.html")} == {"index.html", "experiment-2.html", "run-3.html", "run-4.html"}
    assert "running — updated" in (out / "run-3.html").read_text()


def test_a_live_rewrite_stopped_late_does_not_overwrite_the_final_pages(db_url, tmp_path):
    """stop() gave up waiting on a live rewrite (stuck reading the database), the driver wrote the final
    pages, then the stuck rewrite went on: it writes no page and no stamps once it is told to stop."""
    store = two_experiments(db_url)
    out = tmp_path / "d"
    stopped = threading.Event()
    final = write_pages(db_url, out)  # the driver's final pages
    before = {p.name: p.read_text() for p in out.glob("*.html")}
    manifest = (out / ".pages.json").read_text()
    stopped.set()  # the rewrite resumes after stop(): it reads everything as live, and must write nothing
    store.finish_experiment(2, "completed")  # whatever it read is now stale, as the stuck rewrite's view was
    store.close()
    late = write_pages(db_url, out, live=True, experiments=[2], cancelled=stopped.is_set)
    assert late.written == [] and final.written
    assert {p.name: p.read_text() for p in out.glob("*.html")} == before
    assert (out / ".pages.json").read_text() == manifest


def test_a_failing_rewrite_is_a_warning(db_url, tmp_path, monkeypatch):
    two_experiments(db_url).close()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(live_mod, "write_pages", broken)
    warned: list[str] = []
    pages = LivePages(db_url, tmp_path / "d", every_s=PERIOD_S, warn=warned.append)
    pages.start(2)
    until(lambda: pages.failures >= 2, "two failed rewrites")
    assert pages.stop(timeout=WAIT_S)
    assert warned[0] == "live pages not updated (OSError: disk full)"


def test_start_twice_is_refused(db_url, tmp_path):
    two_experiments(db_url).close()
    pages = LivePages(db_url, tmp_path / "d", every_s=60)
    pages.start(2)
    with pytest.raises(RuntimeError):
        pages.start(2)
    assert pages.stop(timeout=WAIT_S)


def test_a_sweep_page_without_finished_trials_prints_no_optuna_warnings(db_url, tmp_path, capfd):
    import optuna

    store = Store(db_url)
    exp = store.create_experiment(kind="sweep", name="quiet", spec="search: {lr: {type: loguniform}}\n")
    store.create_run(exp, model="resnet18", recipe="naive", params={}, seed=0, optuna_trial=0)
    store.close()
    study = optuna.create_study(study_name="quiet", storage=db_url, direction="maximize")
    study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})  # RUNNING, none complete
    capfd.readouterr()
    write_pages(db_url, tmp_path / "d", live=True, experiments=[exp])
    err = capfd.readouterr().err
    assert "no complete trials" not in err and "does not have any completed trials" not in err, err
    assert "not available yet" in (tmp_path / "d" / f"sweep-{exp}.html").read_text() or \
        "optimization history" in (tmp_path / "d" / f"sweep-{exp}.html").read_text()
