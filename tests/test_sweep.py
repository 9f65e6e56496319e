"""Sweeps and the benchmark grid through Ray Tune, for real: Ray local (2 CPUs: the session's `ray_local`,
tests/conftest.py), resnet_test (timm's test-size ResNet) on 64 synthetic 16 px images, the results database checked row by row."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import torch
import yaml
from conftest import DETERMINISTIC_METRICS, recorded_metrics, uninterrupted_metrics
from dbrows import rows

from harness.experiment import Where

pytestmark = pytest.mark.timeout(600)


@pytest.mark.slow
def test_run_grid_records_every_run_and_epoch(ray_local, tiny_spec, db_url, tmp_path):
    """Every RunSpec becomes one completed `runs` row with all its epochs and an evaluation."""
    from harness.engine import Experiment, Trials, run_trials
    from harness.specs import ResourcesSpec

    specs = [tiny_spec(recipe="naive", epochs=2), tiny_spec(recipe="cnn", epochs=3)]
    lines: list[str] = []
    outcome = run_trials(Trials.grid(specs, concurrency=2, resources=ResourcesSpec(cpu=1)),
                         db=db_url, storage_path=tmp_path / "ray",
                         experiment=Experiment("benchmark", "grid"), echo=lines.append)
    exp = outcome.experiment_id
    # Rows appear in the order the trials start (a race between the two), so sort by recipe.
    got = rows(db_url, "SELECT id, recipe, status, epochs_done, trial_id FROM runs WHERE experiment_id = :e "
                       "ORDER BY recipe DESC", e=exp)
    assert [(r["recipe"], r["status"], r["epochs_done"]) for r in got] == [("naive", "completed", 2), ("cnn (fitted)", "completed", 3)]
    assert all(r["trial_id"] for r in got)
    epochs = {(e["run_id"], e["epoch"]) for e in rows(db_url, "SELECT run_id, epoch FROM epochs")}
    assert epochs == {(got[0]["id"], 1), (got[0]["id"], 2), (got[1]["id"], 1), (got[1]["id"], 2), (got[1]["id"], 3)}
    assert len(rows(db_url, "SELECT run_id FROM evaluations")) == 2
    (e,) = rows(db_url, "SELECT kind, status FROM experiments WHERE id = :e", e=exp)
    assert e == {"kind": "benchmark", "status": "completed"}
    assert outcome.status == "completed" and outcome.exp_dir.parent == (tmp_path / "ray").resolve()
    # Not a terminal: one plain line per epoch, with the numbers the database holds.
    for r in got:
        for e in rows(db_url, "SELECT epoch, val_acc FROM epochs WHERE run_id = :r ORDER BY epoch", r=r["id"]):
            want = f" epoch {e['epoch']}/{r['epochs_done']}  val acc {e['val_acc']:.4f}"
            assert sum(want in ln for ln in lines) >= 1, (want, lines)
    per_epoch = [ln for ln in lines if re.match(r"run \d  .+ epoch \d/\d  val acc", ln)]
    assert len(per_epoch) == 5, lines  # 2 + 3 epochs, one line each
    assert all("done" in ln and "elapsed" in ln for ln in per_epoch)


@pytest.mark.slow
def test_recording_never_waits_for_the_live_pages(ray_local, tiny_spec, db_url, tmp_path):
    """Issue 22: the live pages are rewritten off the thread that records results. A page writer stuck
    from its first rewrite on (a locked database, a slow disk) holds nothing: every epoch of every run
    is recorded, the grid completes, and stopping the pages does not wait for the stuck rewrite."""
    import threading

    from harness.dashboards import LivePages
    from harness.engine import Experiment, Trials, run_trials
    from harness.specs import ResourcesSpec

    entered, release = threading.Event(), threading.Event()

    class StuckPages(LivePages):
        def rewrite(self) -> None:
            entered.set()
            release.wait()  # until the test ends

    pages = StuckPages(db_url, tmp_path / "pages", every_s=0.05)

    try:
        outcome = run_trials(Trials.grid([tiny_spec(recipe="naive", epochs=3), tiny_spec(recipe="cnn", epochs=3)],
                                         concurrency=2, resources=ResourcesSpec(cpu=1)),
                             db=db_url, storage_path=tmp_path / "ray", pages=pages,
                             experiment=Experiment("benchmark", "stuck pages"), echo=lambda s: None)
        assert entered.is_set()  # the writer did start, and was stuck while the trials ran
        assert pages.rewrites == 0 and pages._thread.is_alive()  # still stuck after stop() gave up waiting
        assert outcome.status == "completed"
        got = rows(db_url, "SELECT status, epochs_done FROM runs WHERE experiment_id = :e", e=outcome.experiment_id)
        assert [(r["status"], r["epochs_done"]) for r in got] == [("completed", 3)] * 2
        assert len(rows(db_url, "SELECT epoch FROM epochs")) == 6
    finally:
        release.set()


STUDY = {
    "name": "t_sweep",
    "model": "resnet_test",
    "recipe": "naive",
    "data": {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 64},
    "metric": "val_acc",
    # A wide lr range: the high end trains badly, so ASHA has something to stop.
    "search": {"lr": {"type": "loguniform", "low": 1.0e-5, "high": 1.0}},
    "fixed": {"batch_size": 16},
    "sampler": {"type": "tpe", "seed": 0},
    "scheduler": {"type": "asha", "max_epochs": 4, "grace_period": 1, "reduction_factor": 2},
    "trials": 6,
    "concurrency": 2,
    "resources": {"cpu": 1},
}
STEPS_PER_EPOCH = 4  # 64 images / batch 16


def write_study(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**STUDY, **changes}, sort_keys=False))
    return path


def optuna_states(db_url: str, name: str) -> list[str]:
    return [r["state"] for r in rows(db_url, "SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id "
                                             "WHERE s.study_name = :n ORDER BY t.number", n=name)]


def assert_study_settled(db_url: str, name: str, trials: int, max_epochs: int = 4) -> list[dict]:
    """Exactly `trials` runs, one per Ray trial and per Optuna trial, every epoch 1..n recorded,
    final statuses only, and Optuna agreeing trial by trial."""
    got = rows(db_url, "SELECT r.id, r.status, r.epochs_done, r.trial_id, r.optuna_trial FROM runs r "
                       "JOIN experiments e ON e.id = r.experiment_id WHERE e.name = :n ORDER BY r.id", n=name)
    assert len(got) == trials
    assert len({r["trial_id"] for r in got}) == trials and len({r["optuna_trial"] for r in got}) == trials
    for r in got:
        assert r["status"] in ("completed", "stopped", "diverged"), r
        epochs = [e["epoch"] for e in rows(db_url, "SELECT epoch FROM epochs WHERE run_id = :r ORDER BY epoch", r=r["id"])]
        assert epochs == list(range(1, r["epochs_done"] + 1)), (r, epochs)
        assert (r["epochs_done"] == max_epochs) == (r["status"] == "completed"), r
    states = optuna_states(db_url, name)
    assert len(states) == trials and "RUNNING" not in states
    by_number = {r["optuna_trial"]: r["status"] for r in got}
    expected = {"completed": "COMPLETE", "stopped": "PRUNED", "diverged": "FAIL"}
    assert [expected[by_number[n]] for n in range(trials)] == states
    return got


@pytest.mark.slow
def test_sweep_records_statuses_asha_stops_and_settles_optuna(ray_local, tmp_path, db_url):
    """A real ASHA sweep: every trial and epoch in `runs`/`epochs`, ASHA stops some trials early
    (recorded as `stopped`, PRUNED in Optuna, not COMPLETE), no Optuna trial left RUNNING."""
    from harness.sweep import run_sweep

    lines: list[str] = []
    result = run_sweep(write_study(tmp_path / "s.yaml"), Where(db=db_url, out=tmp_path / "dash", storage_path=tmp_path / "ray"),
                       echo=lines.append)
    assert result.status == "completed"
    got = assert_study_settled(db_url, "t_sweep", 6)
    stopped = [r for r in got if r["status"] == "stopped"]
    assert stopped and all(r["epochs_done"] < 4 for r in stopped)
    assert any(r["status"] == "completed" for r in got)
    (exp,) = rows(db_url, "SELECT kind, status, spec FROM experiments")
    assert exp["kind"] == "sweep" and exp["status"] == "completed" and "lr:" in exp["spec"]
    text = "\n".join(lines)
    assert "stopped by ASHA after epoch" in text and "best so far" in text
    assert "fixed:\n  batch_size: 16\n  lr: " in text  # the ready-to-use YAML snippet
    assert str(tmp_path / "ray" / "t_sweep-") in lines[-1]  # the experiment's own Ray folder, named in its row
    assert f"the best trial's model: harness export {result.best['run']} --out t_sweep.pth" in text
    # Every trial finished (completed, or stopped by ASHA): its stored checkpoint keeps the weights, not
    # the optimizer nothing will resume.
    kept = list((tmp_path / "ray").glob("t_sweep-*/trial_*/checkpoint_*/last.pt"))
    assert len(kept) == 6 and all(torch.load(k, weights_only=True)["optimizer"] is None for k in kept)
    # The reported best is the database's best completed run (ties on 16 validation images are
    # possible: then any run with the best value), with that run's lr, and Optuna's best value.
    done = rows(db_url, "SELECT id, final_val_acc, params FROM runs WHERE status = 'completed'")
    top = max(r["final_val_acc"] for r in done)
    assert result.best is not None and result.best["value"] == top
    (winner,) = [r for r in done if r["id"] == result.best["run"]]
    assert winner["final_val_acc"] == top
    params = winner["params"] if isinstance(winner["params"], dict) else json.loads(winner["params"])
    assert result.best["params"] == {"lr": params["recipe"]["lr"]}
    assert f"  lr: {yaml.safe_dump(params['recipe']['lr']).splitlines()[0]}" in text  # the snippet holds it
    # The best trial's whole recipe handed back as a file `harness train --recipe FILE` runs, chosen on val.
    from harness.recipe_file import load_recipe_file

    assert result.recipe_file == tmp_path / "dash" / "recipes" / f"recommended-{result.experiment_id}-t_sweep.yaml"
    assert load_recipe_file(result.recipe_file, "recipe").model_dump(mode="json") == params["recipe"]
    assert f"recommended recipe: {result.recipe_file}" in text and "not used to choose" in text
    import optuna

    from harness.study import optuna_storage

    assert optuna.load_study(study_name="t_sweep", storage=optuna_storage(db_url)).best_value == top

    # The same name again: refused (with the fix), nothing new written.
    from harness.errors import UserError

    with pytest.raises(UserError, match="--resume"):
        run_sweep(write_study(tmp_path / "s.yaml"), Where(db=db_url, out=None, storage_path=tmp_path / "ray"), echo=lines.append)
    with pytest.raises(UserError, match="different search space"):
        run_sweep(write_study(tmp_path / "s2.yaml", search={"lr": {"type": "uniform", "low": 0.1, "high": 0.2}}),
                  Where(db=db_url, out=None, storage_path=tmp_path / "ray"), echo=lines.append)
    assert len(rows(db_url, "SELECT id FROM runs")) == 6


def _wait_for(predicate, timeout: float, proc: subprocess.Popen) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"sweep exited early:\n{proc.stdout.read()}")
        try:
            if predicate():
                return
        except sa.exc.OperationalError:  # tables not created yet
            pass
        time.sleep(0.5)
    raise AssertionError("timed out waiting for the sweep")


def _sigterm_when(cmd: list[str], predicate, *, cwd: Path, env: dict | None = None) -> tuple[int, str]:
    """Run a driver, send it SIGTERM once `predicate()` holds; its exit code and output."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
    try:
        _wait_for(predicate, timeout=300, proc=proc)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out


def _metrics_by_epoch(db_url: str) -> dict[tuple[int, int], tuple]:
    cols = ", ".join(DETERMINISTIC_METRICS)
    return {(e["run_id"], e["epoch"]): tuple(e[m] for m in DETERMINISTIC_METRICS)
            for e in rows(db_url, f"SELECT run_id, epoch, {cols} FROM epochs")}


@pytest.mark.slow
def test_interrupted_sweep_resumes_to_exactly_trials(ray_local, tmp_path, db_url, fault_plugin):
    """The suite's SIGTERM stop, on PostgreSQL (SIGINT and kill -9, on SQLite: tests/test_faults.py).
    A driver stopped by SIGTERM mid-trial stops cleanly (exit 130, no traceback, the resume command
    printed, unfinished runs `interrupted` and none left `running`, the experiment `interrupted`, Optuna
    trials RUNNING only for the trials --resume continues); --resume continues the unfinished trial from
    its checkpoint (epochs 1..n, none lost), never re-runs a finished one, and the study ends with exactly
    `trials` trials, none RUNNING in Optuna, and every epoch's numbers those of a sweep never stopped."""
    from harness.sweep import run_sweep

    # 4 epochs of >= 1 s and a stop once the running trial has exactly 1: the signal lands with >= 3 s
    # of that trial left, more than a graceful stop takes, so it is reliably caught mid-trial.
    max_epochs = 4
    # The slowness comes from a plugin model (tests/plugins/faults.py) that sleeps before each step.
    plugin = fault_plugin({"*": {"sleep_per_step": 1.0 / STEPS_PER_EPOCH}})
    study = write_study(tmp_path / "s.yaml", trials=3, model="faulty_resnet_test",
                        scheduler={"type": "none", "max_epochs": max_epochs})
    cmd = [sys.executable, "-m", "harness.cli", "--plugin", str(plugin), "sweep", str(study), "--db", db_url,
           "--storage-path", str(tmp_path / "ray")]
    # Stop it once a trial has finished and another is part-way through.
    code, out = _sigterm_when(cmd, lambda: rows(db_url, "SELECT count(*) AS n FROM runs WHERE status = 'completed'")[0]["n"] >= 1
                              and rows(db_url, "SELECT count(*) AS n FROM runs WHERE status = 'running' "
                                               "AND epochs_done = 1")[0]["n"] >= 1, cwd=tmp_path)
    assert code == 130, out  # a clean stop, not a traceback
    assert "continue with: harness sweep" in out and "Traceback" not in out, out
    before = rows(db_url, "SELECT id, status, epochs_done, trial_id, optuna_trial FROM runs ORDER BY id")
    assert {r["status"] for r in before} <= {"completed", "interrupted"}, before  # nothing left `running`
    finished = {r["id"]: r for r in before if r["status"] == "completed"}
    interrupted = [r for r in before if r["status"] == "interrupted"]
    assert finished and interrupted and all(r["epochs_done"] >= 1 for r in interrupted)
    (exp,) = rows(db_url, "SELECT status FROM experiments")
    assert exp["status"] == "interrupted"
    # The unfinished trials stay RUNNING in Optuna because --resume continues them (so may a trial Ray
    # had suggested but not started yet); no finished trial is RUNNING.
    running = {n for n, st in enumerate(optuna_states(db_url, "t_sweep")) if st == "RUNNING"}
    assert {r["optuna_trial"] for r in interrupted} <= running and not running & {r["optuna_trial"] for r in finished.values()}
    if db_url.startswith("sqlite"):
        con = sqlite3.connect(db_url.removeprefix("sqlite:///"))
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        con.close()
    metrics_before = _metrics_by_epoch(db_url)

    lines: list[str] = []
    result = run_sweep(study, Where(db=db_url, out=None, storage_path=tmp_path / "ray"), resume=True, echo=lines.append)
    assert result.status == "completed"
    assert result.best is not None and len(result.table) == 3  # the resumed study's own summary, handed back
    got = assert_study_settled(db_url, "t_sweep", 3, max_epochs=max_epochs)
    assert all(r["status"] == "completed" for r in got)
    numbers = {r["id"]: r["optuna_trial"] for r in got}
    for rid in finished:  # not re-run: no line about them this time
        assert not any(ln.startswith(f"trial #{numbers[rid]} ") for ln in lines), lines
    metrics_after = _metrics_by_epoch(db_url)
    # every epoch recorded before the stop is still there, with the same numbers
    assert {k: metrics_after.get(k) for k in metrics_before} == metrics_before
    # Continued from its checkpoint, normally at epoch k+1. Seen once in three CI runs (2026-11-30): a trial
    # whose epoch k was recorded when the signal came, but whose checkpoint of it Tune's saved state did
    # not hold yet, started again from its previous checkpoint (or from epoch 1); it then re-reports the
    # epochs it had, with the same numbers (checked above and below), so nothing recorded is lost or changed.
    continued = 0
    for r in interrupted:
        k = r["epochs_done"]
        continued += any(ln.startswith(f"trial #{numbers[r['id']]} continued from its checkpoint at epoch {k + 1}")
                         for ln in lines) or k == max_epochs
    assert continued or len(interrupted) == 1, lines  # with several interrupted, at least one from its last epoch
    (exp,) = rows(db_url, "SELECT status FROM experiments")
    assert exp["status"] == "completed"
    # The numbers, not just the (run, epoch) keys: each trial trained again here from scratch, never
    # stopped (its stored spec, the plugin's sleep switched off), gives every recorded epoch exactly.
    for r in got:
        assert recorded_metrics(db_url, r["id"]) == uninterrupted_metrics(db_url, r["id"], plugin.with_name("faults.json")), r


# The last commit whose engine was one module (harness/engine.py): Tune's state it saved pickles
# `harness.engine.ResumableASHA`, `_HarnessOptunaSearch`, `_trainable` and `_live_recorder` by those names.
MONOLITHIC_ENGINE = "60022d4"


@pytest.mark.slow
def test_a_sweep_saved_by_the_one_module_engine_resumes(ray_local, tmp_path, fault_plugin):
    """A `ray_results/` folder written by the code before the engine became a package (issue 21) still
    resumes: that code, taken from git, runs a sweep that SIGTERM stops mid-trial; today's code then
    continues it to exactly `trials` trials, settled in the database and in Optuna."""
    from harness.sweep import run_sweep

    repo = Path(__file__).resolve().parent.parent
    old = tmp_path / "old"
    old.mkdir()
    archive = subprocess.run(["git", "-C", str(repo), "archive", MONOLITHIC_ENGINE, "harness"], capture_output=True)
    if archive.returncode != 0:  # a source tarball has no history to take it from; a git checkout must have it
        why = f"no git history with {MONOLITHIC_ENGINE} here: {archive.stderr.decode()[:200]}"
        if (repo / ".git").exists():
            pytest.fail(why)
        pytest.skip(why)
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
    env = {**os.environ, "PYTHONPATH": str(old)}  # Ray's workers inherit it: the old trainable trains too
    where = subprocess.run([sys.executable, "-c", "import harness.engine as e; print(e.__file__)"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert where == str(old / "harness" / "engine.py")  # the one-module engine runs, not today's package
    db_url = f"sqlite:///{tmp_path / 'results.db'}"
    max_epochs = 4
    plugin = fault_plugin({"*": {"sleep_per_step": 1.0 / STEPS_PER_EPOCH}})
    # resnet18: the old code's registry has no resnet_test. ASHA: its state is pickled too.
    study = write_study(tmp_path / "s.yaml", trials=3, model="faulty_resnet18")
    code, out = _sigterm_when(
        [sys.executable, "-m", "harness.cli", "--plugin", str(plugin), "sweep", str(study), "--db", db_url,
         "--storage-path", str(tmp_path / "ray")],
        lambda: rows(db_url, "SELECT count(*) AS n FROM runs WHERE status = 'running' AND epochs_done >= 1")[0]["n"] >= 1,
        cwd=tmp_path, env=env)
    assert code == 130, out
    pickled = (tmp_path / "ray" / "t_sweep" / "tuner.pkl").read_bytes()
    assert b"harness.engine" in pickled and b"harness.engine.search" not in pickled  # the old module's names
    lines: list[str] = []
    result = run_sweep(study, Where(db=db_url, out=None, storage_path=tmp_path / "ray"), resume=True, echo=lines.append)
    assert result.status == "completed", lines
    assert_study_settled(db_url, "t_sweep", 3, max_epochs=max_epochs)


# --- bad input: one message with the YAML path, exit 2, nothing written, no Ray started ----------

BAD = [
    ({"nmae": "x"}, "nmae", "Did you mean 'name'"),
    ({"search": {"lr": {"type": "loguniform", "low": 1e-3, "high": 1e-4}}}, "search.lr.low", "swap"),
    ({"search": {"lr": {"type": "loguniform", "low": 0, "high": 1e-4}}}, "search.lr.low", "log scale"),
    ({"search": {"lr": {"type": "uniform", "lw": 0, "high": 1e-4}}}, "search.lr.lw", "Unknown key"),
    ({"search": {"optimizer": {"type": "choice", "values": []}}}, "search.optimizer.values", "non-empty"),
    ({"search": {"optimizer": {"type": "choice", "values": ["adamw", "adamz"]}}}, "search.optimizer.values", "adamz"),
    ({"search": {"lr": {"type": "uniform", "low": -1, "high": 1e-3}}}, "search.lr.low", "Not a valid lr"),
    ({"search": {"learning_rate": {"type": "uniform", "low": 0.1, "high": 0.2}}}, "search.learning_rate", "Unknown name"),
    ({"model": "vit_bsae"}, "model", "vit_base"),
    ({"recipe": "deit"}, "recipe", "Unknown name"),
    ({"sampler": {"type": "tpee"}}, "sampler.type", "tpe"),
    ({"scheduler": {"type": "hyperband"}}, "scheduler.type", "asha"),
    ({"scheduler": {"type": "asha", "max_epochs": 3, "grace_period": 5}}, "scheduler.grace_period", "at most 3"),
    ({"trials": 0}, "trials", "greater than or equal to 1"),
    ({"resources": {"cpu": 1, "gpu": 0.5}}, "resources.gpu", "no GPU"),
    ({"resources": {"cpu": 512}}, "resources.cpu", "at most"),
    ({"sampler": {"type": "grid"}}, "search.lr.type", "grid"),
    ({"sampler": {"type": "grid"}, "search": {"lr": {"type": "choice", "values": [0.1, 0.01]}}}, "trials",
     "only 2 points; set trials: 2"),
]


@pytest.mark.parametrize("changes,field,fix", BAD, ids=[b[1] for b in BAD])
def test_bad_study_refused_before_anything(tmp_path, changes, field, fix, monkeypatch, ray_tripwire):
    from click.testing import CliRunner

    from harness.cli import main

    if "gpu" in str(changes):
        monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    path = write_study(tmp_path / "bad.yaml", **changes)
    monkeypatch.chdir(tmp_path)
    for args in (["sweep", "--validate", str(path)], ["sweep", str(path), "--db", f"sqlite:///{tmp_path / 'r.db'}"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 2, res.output
        assert f"{path}: {field}" in res.output and fix in res.output, res.output
    assert not ray_tripwire and not (tmp_path / "r.db").exists() and not (tmp_path / "ray_results").exists()


def test_missing_empty_and_non_yaml_files(tmp_path):
    from click.testing import CliRunner

    from harness.cli import main

    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    for name, fix in (("missing.yaml", "No such file"), ("empty.yaml", "empty"), ("bad.yaml", "YAML syntax")):
        res = CliRunner().invoke(main, ["sweep", str(tmp_path / name), "--db", f"sqlite:///{tmp_path / 'r.db'}"])
        assert res.exit_code == 2 and fix in res.output, res.output
    assert not (tmp_path / "r.db").exists()


def test_resume_of_unknown_study_refused(tmp_path):
    from click.testing import CliRunner

    from harness.cli import main

    res = CliRunner().invoke(main, ["sweep", str(write_study(tmp_path / "s.yaml")), "--resume",
                                    "--db", f"sqlite:///{tmp_path / 'r.db'}"])
    assert res.exit_code == 2 and "No sweep of that name" in res.output, res.output
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("studies/*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_validate(path):
    """Each shipped study is valid, runs on this CPU machine as shipped, and says how to scale it up."""
    from harness.resources import check_local_resources
    from harness.study import validate_study

    study = validate_study(path)
    here = check_local_resources(study.resources, field="resources", concurrency=study.concurrency)
    assert study.resources.gpu == "auto" and here.gpu >= 0  # the cards shared on a GPU machine, none here
    assert study.model in ("vit_tiny", "swin_nano", "resnet18", "efficientnet_b0")
    assert "Scale up" in path.read_text()


def test_optuna_outcomes_told_apart_and_nothing_left_running(tmp_path):
    """The known OptunaSearch traps, without Ray: an ASHA-stopped trial (last status 'running') is
    PRUNED, not COMPLETE with its truncated score; NaN, diverged and crashed trials are FAIL; a
    completed one is COMPLETE with its final value; settle_optuna fails whatever is still RUNNING
    except trials kept for --resume."""
    import optuna

    from harness.engine import OPTUNA_KEY, _HarnessOptunaSearch
    from harness.study import optuna_storage
    from harness.study import settle as settle_optuna

    db = f"sqlite:///{tmp_path / 'o.db'}"
    search = _HarnessOptunaSearch(space={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)},
                                  metric="val_acc", mode="max", sampler=optuna.samplers.RandomSampler(seed=0),
                                  study_name="s", storage=optuna_storage(db))
    outcomes = {
        "a": ({"val_acc": 0.9, "status": "completed", "training_iteration": 4}, False, "COMPLETE"),
        "b": ({"val_acc": 0.4, "status": "running", "training_iteration": 1}, False, "PRUNED"),
        "c": ({"val_acc": float("nan"), "status": "completed", "training_iteration": 4}, False, "FAIL"),
        "d": ({"val_acc": 0.1, "status": "diverged", "training_iteration": 2}, False, "FAIL"),
        "e": (None, True, "FAIL"),
    }
    for tid in [*outcomes, "keep", "orphan"]:
        config = search.suggest(tid)
        assert 1e-4 <= config["lr"] <= 1e-1 and isinstance(config[OPTUNA_KEY], int)
    for tid, (result, error, _) in outcomes.items():
        if result and result["status"] == "running":
            search.on_trial_result(tid, result)
        search.on_trial_complete(tid, result=result, error=error)
    assert settle_optuna(db, "s", keep={"keep"}) == 1  # the orphan
    study = optuna.load_study(study_name="s", storage=optuna_storage(db))
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in study.get_trials()}
    assert states == {**{tid: o[2] for tid, o in outcomes.items()}, "keep": "RUNNING", "orphan": "FAIL"}
    assert study.best_value == 0.9  # the stopped trial's 0.4 is not a COMPLETE score
    assert settle_optuna(db, "s") == 1 and "RUNNING" not in {t.state.name for t in study.get_trials()}


@pytest.mark.slow
def test_grid_study_ends_cleanly_every_point_complete(ray_local, tmp_path, db_url):
    """Issue 20 item 8: Optuna's GridSampler calls study.stop() when the last grid point is told, which
    raises outside study.optimize; the grid's last trial was taken for crashed and retried (failed with
    max_failures=0). Now each point runs once and ends COMPLETE, in `runs` and in Optuna."""
    import json

    from harness.sweep import run_sweep

    grid = [0.001, 0.01, 0.1]
    lines: list[str] = []
    result = run_sweep(write_study(tmp_path / "g.yaml", name="t_grid", search={"lr": {"type": "choice", "values": grid}},
                                   sampler={"type": "grid", "seed": 0}, scheduler={"type": "none", "max_epochs": 2},
                                   trials=3, concurrency=1),
                       Where(db=db_url, out=None, storage_path=tmp_path / "ray"), max_failures=0, echo=lines.append)
    assert result.status == "completed"
    got = rows(db_url, "SELECT id, status, error, epochs_done, params FROM runs ORDER BY id")
    assert [(r["status"], r["error"], r["epochs_done"]) for r in got] == [("completed", None, 2)] * 3, got
    lrs = [(json.loads(r["params"]) if isinstance(r["params"], str) else r["params"])["recipe"]["lr"] for r in got]
    assert sorted(lrs) == grid  # each grid point exactly once
    epochs = [(e["run_id"], e["epoch"]) for e in rows(db_url, "SELECT run_id, epoch FROM epochs ORDER BY run_id, epoch")]
    assert epochs == [(r["id"], k) for r in got for k in (1, 2)]
    assert optuna_states(db_url, "t_grid") == ["COMPLETE"] * 3
    (exp,) = rows(db_url, "SELECT status FROM experiments")
    assert exp["status"] == "completed"
    text = "\n".join(lines)
    assert "crashed" not in text and "failed" not in text and "retrying" not in text, text
