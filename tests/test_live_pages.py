"""Live dashboards: pages written while work runs carry a banner and reload themselves; the final
write has neither; `harness report --watch` follows a database another process writes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from test_dashboards import parse

from harness.cli import main
from harness.dashboards import write_dashboards
from harness.store import Store

BANNER = re.compile(r"running — updated \d\d:\d\d:\d\d")
# How long a test waits for an event (a page written, a process ending) before calling it hung: a safety
# net, not a speed requirement. A fresh interpreter importing plotly/pandas takes 10-25 s on a loaded
# 2-core machine, so it is generous; a passing run never waits it out.
WAIT_S = 180
METRICS = {"train_loss": 1.2, "train_acc": 0.5, "train_batch_acc": 0.45, "val_loss": 1.3, "val_acc": 0.4,
           "val_acc_raw": 0.4, "lr": 1e-3, "grad_norm": 2.0, "epoch_s": 1.0, "images_per_s": 100.0}


def running_benchmark(db: str, tiny_spec) -> tuple[Store, int]:
    """A benchmark as its driver leaves it mid-way: one run 2 epochs in, one not started, both 'running'."""
    store = Store(db)
    exp = store.create_experiment(kind="benchmark", name="live", spec="models: [resnet18]\n", device="cpu (test)")
    for recipe, n_epochs in (("naive", 2), ("vit", 0)):
        spec = tiny_spec(recipe=recipe, epochs=4)
        run = store.create_run(exp, model=spec.model, recipe=spec.recipe.label(), params=spec.model_dump(mode="json"),
                               seed=0)
        for e in range(1, n_epochs + 1):
            store.log_epoch(run, e, {**METRICS, "val_acc": 0.3 + 0.1 * e})
    return store, exp


def pages(out: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(out.glob("*.html"))}


def test_live_pages_have_banner_and_refresh_and_the_final_write_neither(db_url, tmp_path, tiny_spec):
    """Every page of a running experiment (index, experiment, before/after, runs with and without
    epochs) says it is live and reloads; the final write (live=False) says neither."""
    store, _ = running_benchmark(db_url, tiny_spec)
    store.close()
    out = tmp_path / "dash"
    write_dashboards(db_url, out, live=True, refresh_s=7)
    got = pages(out)
    assert set(got) == {"index.html", "experiment-1.html", "before_after-1.html", "run-1.html", "run-2.html"}
    for name, text in got.items():
        assert len(BANNER.findall(text)) == 1, name
        assert text.count('<meta http-equiv="refresh" content="7">') == 1, name
        assert text.index('http-equiv="refresh"') < text.index("</head>") < text.index("running — updated")
        parse(out / name)  # still well-formed
    write_dashboards(db_url, out)
    for name, text in pages(out).items():
        assert not BANNER.search(text) and 'http-equiv="refresh"' not in text, name
    assert not list(out.glob(".*.tmp-*"))  # atomic writes leave no temp files


@pytest.mark.parametrize("kind,epochs_per_run", [
    ("benchmark", []),  # the driver has created the experiment, no run yet
    ("benchmark", [0, 0]),  # runs started, no epoch finished
    ("ablate", [2, 1, 0]),  # rungs at different points
    ("sweep", [1, 0]),  # no Optuna study in the database yet
])
def test_live_write_at_any_point_of_a_running_experiment(db_url, tmp_path, tiny_spec, kind, epochs_per_run):
    """What the driver sees when it calls write_dashboards(live=True) mid-way: runs with no epochs,
    runs still 'running'; every page is written and marked live."""
    store = Store(db_url)
    exp = store.create_experiment(kind=kind, name=f"live_{kind}", spec="search: {lr: {}}\n", device="cpu (test)")
    for i, n in enumerate(epochs_per_run):
        spec = tiny_spec(epochs=4, tags={"mode": "add", "rung": i, "ingredient": "" if i == 0 else f"step{i}"})
        run = store.create_run(exp, model=spec.model, recipe=spec.recipe.label(), params=spec.model_dump(mode="json"),
                               seed=0, optuna_trial=i if kind == "sweep" else None)
        for e in range(1, n + 1):
            store.log_epoch(run, e, {**METRICS, "val_acc": 0.3 + 0.1 * e})
    store.close()
    out = tmp_path / "d"
    write_dashboards(db_url, out, live=True)
    got = pages(out)
    assert {"index.html", f"experiment-{exp}.html"} <= set(got) and len(got) >= 2 + len(epochs_per_run)
    for name, text in got.items():
        assert len(BANNER.findall(text)) == 1 and '<meta http-equiv="refresh" content="30">' in text, name


def test_watch_with_nothing_running_writes_once_and_exits(db_url, tmp_path, tiny_spec, monkeypatch):
    store, exp = running_benchmark(db_url, tiny_spec)
    store.finish_experiment(exp, "completed")
    store.close()
    from harness import dashboards

    calls: list[bool] = []
    for name in ("write_dashboards", "write_pages"):  # the CLI's final write, whichever of the two it calls
        real = getattr(dashboards, name)
        monkeypatch.setattr(dashboards, name, lambda *a, real=real, **k: calls.append(k.get("live", False)) or real(*a, **k))
    # "exits" as an event, not a wall-clock bound: the watch loop never waits for a next round.
    waits: list[float] = []
    real_watch = dashboards.watch
    monkeypatch.setattr(dashboards, "watch", lambda *a, **k: real_watch(*a, **{**k, "sleep": waits.append}))
    r = CliRunner().invoke(main, ["report", "--watch", "--every", "1", "--db", db_url, "--out", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert calls == [False] and waits == []
    assert "pages updated" not in r.output and "dashboards: " in r.output
    assert not BANNER.search((tmp_path / "d" / "index.html").read_text(encoding="utf-8"))


def test_watch_follows_a_running_experiment_until_it_finishes(db_url, tmp_path, tiny_spec):
    """--watch rewrites live pages while the experiment runs, picks up new epochs, and ends by itself
    (exit 0, final pages without the banner) once the experiment is finished."""
    store, exp = running_benchmark(db_url, tiny_spec)
    store.close()
    out = tmp_path / "d"
    seen: dict[str, bool] = {}

    def writer() -> None:  # the other process: waits for a live page, logs an epoch, then finishes
        store = Store(db_url)  # its own connection, in its own thread
        try:
            t0 = time.monotonic()
            while time.monotonic() - t0 < WAIT_S:
                index = out / "index.html"
                if index.is_file() and BANNER.search(index.read_text(encoding="utf-8")):
                    seen["live"] = True
                    break
                time.sleep(0.1)
            store.log_epoch(2, 1, METRICS)
            t0 = time.monotonic()
            while time.monotonic() - t0 < WAIT_S:  # a later live write shows the new epoch
                text = (out / "run-2.html").read_text(encoding="utf-8")
                if "No epoch recorded yet" not in text and BANNER.search(text):
                    seen["epoch_live"] = True
                    break
                time.sleep(0.1)
        finally:  # always: the watch must end even when this thread's checks fail
            store.finish_run(1, status="completed")
            store.finish_run(2, status="completed")
            store.finish_experiment(exp, "completed")
            store.close()

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        r = CliRunner().invoke(main, ["report", "--watch", "--every", "1", "--db", db_url, "--out", str(out)])
    finally:
        thread.join(timeout=2 * WAIT_S + 30)
    assert r.exit_code == 0, r.output
    assert seen == {"live": True, "epoch_live": True}
    updates = [ln for ln in r.output.splitlines() if ln.startswith("pages updated")]
    assert len(updates) >= 2 and all(re.fullmatch(r"pages updated \d\d:\d\d:\d\d \(1 running: benchmark #1\)", ln)
                                     for ln in updates), r.output
    assert r.output.rstrip().splitlines()[-1].startswith("dashboards: ")
    for name, text in pages(out).items():
        assert not BANNER.search(text) and 'http-equiv="refresh"' not in text, name


def test_watch_ctrl_c_writes_final_pages_and_exits_0(db_url, tmp_path, tiny_spec):
    store, _ = running_benchmark(db_url, tiny_spec)
    store.close()
    out = tmp_path / "d"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "report", "--watch", "--every", "1", "--db", db_url,
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        t0 = time.monotonic()
        while not ((out / "index.html").is_file() and BANNER.search((out / "index.html").read_text(encoding="utf-8"))):
            assert proc.poll() is None and time.monotonic() - t0 < WAIT_S, proc.stdout.read() if proc.poll() is not None else "slow"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "stopped watching" in output and "dashboards: " in output
    for name, text in pages(out).items():
        assert not BANNER.search(text), name
