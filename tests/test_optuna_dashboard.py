"""optuna-dashboard (the dev group's pinned release) on the results database a real `harness sweep` wrote:
the README's one command, `optuna-dashboard sqlite:///results.db`, serves the study and its trials."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from dbrows import rows

optuna_dashboard = pytest.importorskip("optuna_dashboard", reason="the dev group: uv sync")


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


@pytest.mark.slow
def test_optuna_dashboard_serves_a_sweeps_trials(ray_local, tmp_path):
    from test_sweep import write_study

    from harness.experiment import Where
    from harness.sweep import run_sweep

    db = f"sqlite:///{tmp_path / 'results.db'}"
    study = write_study(tmp_path / "s.yaml", trials=2, scheduler={"type": "none", "max_epochs": 1})
    run_sweep(study, Where(db=db, out=None, storage_path=tmp_path / "ray"), echo=lambda _: None)
    recorded = rows(db, "select optuna_trial, status, final_val_acc from runs order by optuna_trial")
    assert len(recorded) == 2

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("optuna-dashboard", path=str(Path(sys.executable).parent)) or "optuna-dashboard"
    server = subprocess.Popen([exe, db, "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 120  # a few seconds idle; longer on a loaded 2-core machine
        while True:
            try:
                summaries = get(f"{base}/studies")["study_summaries"]
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "optuna-dashboard did not start"
                time.sleep(0.5)
        (summary,) = [s for s in summaries if s["study_name"] == "t_sweep"]
        assert summary["directions"] == ["maximize"]
        trials = get(f"{base}/studies/{summary['study_id']}")["trials"]
        # Each Optuna trial the dashboard shows is a run harness recorded: same number, its value the run's val acc.
        assert [(t["number"], t["state"]) for t in trials] == [(r["optuna_trial"], "Complete") for r in recorded]
        assert [t["values"][0] for t in trials] == pytest.approx([r["final_val_acc"] for r in recorded])
        assert {p["name"] for t in trials for p in t["params"]} == {"lr"}
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the dashboard and its workers: the group this test started
        server.wait(30)
