"""TensorBoard and MLflow beside the database (harness/trackers.py): what `train` and the grid commands
write there, read back with the tools' own readers (TensorBoard's EventAccumulator, mlflow.search_runs);
a resumed run neither duplicates nor mixes epochs; bad --mlflow input exits 2 before any row."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from dbrows import rows

from harness.cli import main

TINY = ["--data", "synthetic", "--image-size", "16", "--threads", "1", "--set", "batch_size=16"]
EPOCH_TAGS = {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "grad_norm", "images_per_s", "epoch_s"}

mlflow = pytest.importorskip("mlflow", reason="the mlflow extra: uv sync --extra mlflow (CI syncs it)")


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in a run's folder as TensorBoard itself loads it (all event files, purges applied)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def runs_of(uri: str):
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(experiment_names=["harness"])


def train(*args):
    return CliRunner().invoke(main, ["train", *map(str, args)], catch_exceptions=False)


def test_train_writes_tensorboard_and_mlflow(tmp_path, monkeypatch):
    """`harness train --mlflow sqlite:///...`: every epoch's metrics and the test scores as TensorBoard scalars
    under dashboards/tensorboard/<experiment>/<run>, and as a nested MLflow run with the spec as params; both
    hold the numbers the database holds."""
    monkeypatch.chdir(tmp_path)
    db, uri = f"sqlite:///{tmp_path / 'r.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = train("--model", "resnet_test", "--recipe", "naive", "--epochs", 2, "--db", db, "--mlflow", uri, *TINY)
    assert r.exit_code == 0, r.output
    (run,) = rows(db, "select * from runs")
    epochs = rows(db, "select * from epochs order by epoch")
    folder = tmp_path / "dashboards" / "tensorboard" / "1-train-resnet_test_naive" / "run-1-resnet_test-naive"
    assert f"tensorboard: {Path('dashboards') / 'tensorboard' / '1-train-resnet_test_naive'}" in r.output
    got = scalars(folder)
    assert EPOCH_TAGS | {"test_acc", "test_loss"} == set(got)
    assert got["val_acc"] == [(e["epoch"], pytest.approx(e["val_acc"])) for e in epochs]
    assert got["test_acc"] == [(2, pytest.approx(run["test_acc"]))]

    df = runs_of(uri)
    parent, child = df[df["tags.mlflow.parentRunId"].isna()], df[df["tags.mlflow.parentRunId"].notna()]
    assert len(parent) == 1 and len(child) == 1
    c = child.iloc[0]
    assert c["tags.mlflow.parentRunId"] == parent.iloc[0]["run_id"] and c["status"] == "FINISHED"
    assert (c["params.model"], c["params.seed"], c["params.recipe.name"], c["params.data.name"]) == ("resnet_test", "0", "naive",
                                                                                                      "synthetic")
    assert float(c["params.recipe.lr"]) == pytest.approx(json_params(run)["recipe"]["lr"])
    assert c["metrics.test_acc"] == pytest.approx(run["test_acc"]) and c["metrics.val_acc"] == pytest.approx(epochs[-1]["val_acc"])
    history = mlflow.MlflowClient(uri).get_metric_history(c["run_id"], "val_loss")
    assert [m.step for m in history] == [1, 2]


def json_params(run: dict) -> dict:
    import json

    return json.loads(run["params"]) if isinstance(run["params"], str) else run["params"]


def test_a_resumed_run_neither_duplicates_nor_mixes_epochs(tmp_path, tiny_spec):
    """A driver session ends mid-run (epochs 1-3 logged), the next one re-reports from its checkpoint (epoch 3
    again, with other values, then 4): TensorBoard shows each epoch once with the re-run's value (the new
    file's purge_step drops the old file's points from epoch 3 on); MLflow keeps one run, each step once, its
    parent and run ended KILLED after the first session and FINISHED after the second."""
    from harness.trackers import open_trackers

    spec, uri = tiny_spec(epochs=4), f"sqlite:///{tmp_path / 'mlflow.db'}"
    ids = dict(db="sqlite:///r.db", experiment_id=5, kind="benchmark", name="b")
    first = open_trackers(tensorboard=tmp_path / "tb", mlflow=uri, **ids)
    for epoch in (1, 2, 3):
        first.epoch(7, spec, epoch, {"val_loss": 1.0 / epoch, "val_acc": 0.1 * epoch})
    first.close()  # the run was not finished: interrupted
    df = runs_of(uri)
    assert sorted(df["status"]) == ["KILLED", "KILLED"]
    second = open_trackers(tensorboard=tmp_path / "tb", mlflow=uri, **ids)
    for epoch in (3, 4):
        second.epoch(7, lambda: spec, epoch, {"val_loss": 1.0 / epoch, "val_acc": 0.5 + 0.1 * epoch})
    second.finish(7, "completed")
    second.close()

    (folder,) = (tmp_path / "tb" / "5-benchmark-b").iterdir()
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2  # one file per driver session
    assert scalars(folder)["val_acc"] == [(1, pytest.approx(0.1)), (2, pytest.approx(0.2)), (3, pytest.approx(0.8)),
                                          (4, pytest.approx(0.9))]
    df = runs_of(uri)
    assert len(df) == 2 and sorted(df["status"]) == ["FINISHED", "FINISHED"]
    child = df[df["tags.harness.kind"] == "run"].iloc[0]
    assert child["tags.harness.run_id"] == "7" and child["tags.harness.status"] == "completed"
    history = mlflow.MlflowClient(uri).get_metric_history(child["run_id"], "val_acc")
    assert [m.step for m in history] == [1, 2, 3, 4]  # epoch 3 once: MLflow cannot replace a point, the first stays


@pytest.mark.slow
def test_benchmark_logs_every_run_under_one_parent(ray_local, tmp_path, monkeypatch):
    """A benchmark through Ray: the driver's recorder writes a TensorBoard folder per run under
    <out>/tensorboard/<experiment>/ and one MLflow run per run, nested under the experiment's parent run, each
    with its test accuracy as the database has it."""
    monkeypatch.chdir(tmp_path)
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "tb", "models": ["resnet_test"], "recipes": ["naive", "fitted"], "epochs": 2,
                                    "seeds": 1, "data": {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 64},
                                    "set": {"batch_size": 16}}))
    db, uri = f"sqlite:///{tmp_path / 'results.db'}", f"sqlite:///{tmp_path / 'mlflow.db'}"
    r = CliRunner().invoke(main, ["benchmark", str(grid), "--db", db, "--out", str(tmp_path / "dash"), "--mlflow", uri])
    assert r.exit_code == 0, r.output
    runs = rows(db, "select * from runs order by id")
    (exp,) = rows(db, "select * from experiments")
    folders = sorted((tmp_path / "dash" / "tensorboard" / f"{exp['id']}-benchmark-tb").iterdir(),
                     key=lambda f: int(f.name.split("-")[1]))  # run-<id>-<model>-<recipe>
    assert [f.name.split("-")[1] for f in folders] == [str(run["id"]) for run in runs]
    for run, folder in zip(runs, folders):
        got = scalars(folder)
        assert [step for step, _ in got["val_loss"]] == [1, 2] and got["test_acc"] == [(2, pytest.approx(run["test_acc"]))]
    df = runs_of(uri)
    parents = df[df["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1 and parents.iloc[0]["tags.harness.experiment_id"] == str(exp["id"])
    children = df[df["tags.mlflow.parentRunId"] == parents.iloc[0]["run_id"]]
    children = children.sort_values("tags.harness.run_id", key=lambda ids: ids.astype(int))
    assert list(children["tags.harness.run_id"]) == [str(run["id"]) for run in runs]
    assert list(children["metrics.test_acc"]) == pytest.approx([run["test_acc"] for run in runs])
    assert set(children["status"]) == {"FINISHED"} and set(df["status"]) == {"FINISHED"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("uri, says", [
    ("http://127.0.0.1:{port}", "No MLflow server answers there"),
    ("file:{tmp}/mlruns", "MLFLOW_ALLOW_FILE_STORE=true"),
])
def test_an_mlflow_uri_that_cannot_be_logged_to_exits_2_before_any_row(uri, says, tmp_path, monkeypatch, ray_tripwire):
    """A server nobody answers, or a file store MLflow refuses: one message naming --mlflow, the URI and the
    fix; exit 2; no results database, no Ray."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    uri = uri.format(port=free_port(), tmp=tmp_path)
    for args in (["benchmark", "--models", "resnet_test", "--epochs", "1"], ["train", "--model", "resnet_test", *TINY]):
        r = CliRunner().invoke(main, [*args, "--db", f"sqlite:///{tmp_path / 'r.db'}", "--mlflow", uri])
        assert r.exit_code == 2, r.output
        text = " ".join(r.output.split())
        assert f"error: --mlflow: got {uri!r}." in text and says in text and "--mlflow sqlite:///mlflow.db" in text
        assert not (tmp_path / "r.db").exists()
    assert ray_tripwire == []


def test_mlflow_not_installed_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` raises ImportError, as without the extra
    r = train("--model", "resnet_test", "--db", f"sqlite:///{tmp_path / 'r.db'}", "--mlflow", "sqlite:///m.db", *TINY)
    assert r.exit_code == 2 and "uv sync --extra mlflow" in r.output.replace("\n", " "), r.output
    assert not (tmp_path / "r.db").exists()


@pytest.mark.slow
def test_train_logs_to_a_real_mlflow_server(tmp_path, monkeypatch):
    """`mlflow server` started here (its own SQLite store, no job runner): `harness train --mlflow http://...`
    logs through it, and mlflow.search_runs against the server returns the run with its test accuracy."""
    monkeypatch.chdir(tmp_path)
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # its job runner would start ~10 processes
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'srv.db'}",
                               "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240  # ~15 s idle; a minute on a loaded 2-core machine
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "mlflow server did not start"
                time.sleep(0.5)
        db = f"sqlite:///{tmp_path / 'r.db'}"
        r = train("--model", "resnet_test", "--recipe", "naive", "--epochs", 1, "--db", db, "--mlflow", uri, "--no-tensorboard", *TINY)
        assert r.exit_code == 0, r.output
        assert not (tmp_path / "dashboards").exists()
        (run,) = rows(db, "select * from runs")
        child = runs_of(uri).dropna(subset=["tags.mlflow.parentRunId"])
        assert len(child) == 1 and child.iloc[0]["metrics.test_acc"] == pytest.approx(run["test_acc"])
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its one worker: the group this test started
        server.wait(30)
