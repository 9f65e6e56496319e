"""Every grid resumable: a benchmark driver killed with -9 mid-grid, then `--resume`, ends with the rows
a grid that never stopped has (each run's epochs 1..N, once, with the same numbers), even with another
experiment run in between from the same folder into another database; the live pages say "running"
while it runs and not after; ASHA's rungs survive a restarted driver; a Ray folder that holds another
experiment's state is refused."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import sqlalchemy as sa
import yaml
from conftest import recorded_metrics, uninterrupted_metrics
from dbrows import rows

STEPS_PER_EPOCH = 4  # 64 images / batch 16
GRID = {
    "name": "kgrid",
    "models": ["faulty_resnet_test"],  # resnet18 from tests/plugins/faults.py, sleeping before each step
    "recipes": ["naive", "cnn"],
    "epochs": 3,
    "seeds": 1,
    "batch_size": 16,
    "data": {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 64},
    "scale": "full",
    "concurrency": 1,
    "resources": {"cpu": 1},
}
BANNER = "running — updated"


def epoch_keys(db_url: str) -> list[tuple]:
    """(model, recipe, seed, epoch) of every epoch row, duplicates kept."""
    return sorted((r["model"], r["recipe"], r["seed"], r["epoch"]) for r in rows(
        db_url, "SELECT r.model, r.recipe, r.seed, e.epoch FROM epochs e JOIN runs r ON r.id = e.run_id"))


def slow_plugin(tmp_path: Path, seconds_per_epoch: float) -> Path:
    where = tmp_path / "plugin"
    where.mkdir(exist_ok=True)
    (where / "faults.json").write_text(json.dumps({"*": {"sleep_per_step": seconds_per_epoch / STEPS_PER_EPOCH}}))
    return Path(shutil.copy(Path(__file__).parent / "plugins" / "faults.py", where / "faults.py"))


def benchmark_cmd(plugin: Path, grid: Path, db_url: str, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness.cli", "--plugin", str(plugin), "benchmark", str(grid), "--db", db_url,
            "--out", str(out), "--pages-every", "1", *extra]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill9_benchmark_then_resume_equals_uninterrupted(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(GRID))
    plugin = slow_plugin(tmp_path, seconds_per_epoch=3.0)
    db_url = f"sqlite:///{tmp_path / 'results.db'}"
    out = tmp_path / "dash"
    proc = subprocess.Popen(benchmark_cmd(plugin, grid, db_url, out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=tmp_path, start_new_session=True)
    saw_banner = False
    try:
        t0 = time.monotonic()
        while True:  # until run 0 finished and run 1 is midway
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() - t0 < 300, "timed out waiting for the grid"
            index = out / "index.html"
            saw_banner = saw_banner or (index.is_file() and BANNER in index.read_text(encoding="utf-8"))
            try:
                done = rows(db_url, "SELECT count(*) AS n FROM runs WHERE status = 'completed'")[0]["n"]
                midway = rows(db_url, "SELECT count(*) AS n FROM runs WHERE status = 'running' AND epochs_done >= 1")[0]["n"]
            except sa.exc.OperationalError:
                done = midway = 0
            if done >= 1 and midway >= 1 and saw_banner:
                break
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert saw_banner, "the live page never said it was running"
    before = epoch_keys(db_url)
    assert before and len(set(before)) == len(before)

    # Another experiment, numbered 1 in its own database, run to the end from the same folder with the same
    # default --storage-path: it gets a Ray folder of its own, and neither touches the other's.
    other_url = f"sqlite:///{tmp_path / 'other.db'}"
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**GRID, "models": ["resnet_test"], "recipes": ["naive"], "epochs": 1}))
    b = subprocess.run([sys.executable, "-m", "harness.cli", "benchmark", str(other), "--db", other_url,
                        "--out", str(tmp_path / "other_dash")], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert b.returncode == 0, b.stdout + b.stderr
    (a_exp,) = rows(db_url, "SELECT id, ray_folder FROM experiments")
    (b_exp,) = rows(other_url, "SELECT id, ray_folder FROM experiments")
    assert a_exp["id"] == b_exp["id"] == 1 and a_exp["ray_folder"] != b_exp["ray_folder"]
    b_folder = tmp_path / "ray_results" / b_exp["ray_folder"]
    b_files = {p.relative_to(b_folder): p.read_bytes() for p in b_folder.rglob("*") if p.is_file()}
    b_rows = rows(other_url, "SELECT r.id, r.status, e.epoch, e.val_acc FROM runs r JOIN epochs e ON e.run_id = r.id")

    res = subprocess.run(benchmark_cmd(plugin, grid, db_url, out, "--resume"), capture_output=True, text=True,
                         cwd=tmp_path, timeout=400)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "resuming (1 of 2 trials finished)" in res.stdout, res.stdout
    after = epoch_keys(db_url)
    assert set(before) <= set(after)  # nothing recorded was lost
    (exp,) = rows(db_url, "SELECT id, status FROM experiments")
    assert exp["status"] == "completed"
    assert len(rows(db_url, "SELECT id FROM runs")) == 2  # the same runs continued, none added
    assert BANNER not in (out / "index.html").read_text(encoding="utf-8")  # the final write removed it
    # B untouched: its rows and every file of its Ray folder as they were
    assert rows(other_url, "SELECT r.id, r.status, e.epoch, e.val_acc FROM runs r JOIN epochs e ON e.run_id = r.id") == b_rows
    assert {p.relative_to(b_folder): p.read_bytes() for p in b_folder.rglob("*") if p.is_file()} == b_files

    # What the same grid records when it never stops: each run's epochs 1..N, once. (A reference run of
    # the grid gave exactly these rows; it cost a minute of CI, so the expectation is written out.)
    runs = rows(db_url, "SELECT model, recipe, seed FROM runs")
    assert after == sorted((r["model"], r["recipe"], r["seed"], k) for r in runs for k in range(1, GRID["epochs"] + 1))

    again = subprocess.run(benchmark_cmd(plugin, grid, db_url, out, "--resume"), capture_output=True, text=True,
                           cwd=tmp_path, timeout=120)
    assert again.returncode == 2 and "already completed" in again.stderr, again.stdout + again.stderr

    # And the numbers, not only the (run, epoch) keys: every epoch of both runs, the one killed midway and
    # continued from its checkpoint included, is what that run trained here from scratch, never stopped
    # (its stored spec, in this process, the plugin's sleep switched off), records: equal, not close.
    for r in rows(db_url, "SELECT id FROM runs"):
        assert recorded_metrics(db_url, r["id"]) == uninterrupted_metrics(db_url, r["id"], plugin.with_name("faults.json"))


def test_a_ray_folder_of_another_experiment_is_refused(tmp_path):
    """--resume finds its experiment's own folder (kept in its row) and refuses one another experiment
    claimed, naming that experiment and its database, before anything starts."""
    from harness.engine import resumable
    from harness.engine.state import claim
    from harness.errors import UserError
    from harness.store import Store

    db, other = f"sqlite:///{tmp_path / 'a.db'}", f"sqlite:///{tmp_path / 'b.db'}"
    store = Store(db)
    exp = store.create_experiment(kind="benchmark", name="g", ray_folder="benchmark-0123abcd")
    store.finish_experiment(exp, "interrupted")
    store.close()
    claim(tmp_path / "ray" / "benchmark-0123abcd", db=other, experiment_id=1, kind="benchmark", name="g")
    with pytest.raises(UserError, match=r"holds benchmark 'g' \(experiment 1 in sqlite:///.*b\.db\), not experiment 1 in "
                                        r"sqlite:///.*a\.db"):
        resumable(db, kind="benchmark", name="g", storage_path=tmp_path / "ray", again="harness benchmark")


def _trial(tid: str) -> SimpleNamespace:
    return SimpleNamespace(trial_id=tid, config={}, status="RUNNING")


def test_asha_rungs_survive_a_restarted_driver(tmp_path):
    """The scheduler Tune pickled at the start (empty) is what a restored Tuner gets back; its first
    call loads the saved rungs: the same cut-offs, and a trial ASHA stopped is not revived even if
    Tune's own state (saved at most every second) still lists it as unfinished."""
    from ray.tune.schedulers import TrialScheduler

    from harness.engine import ResumableASHA

    state = tmp_path / "asha-state.pkl"
    sched = ResumableASHA(state_path=state, time_attr="epoch", metric="val_acc", mode="max", max_t=9,
                          grace_period=1, reduction_factor=3)
    as_pickled_at_start = pickle.dumps(sched)
    decisions = {}
    for i, acc in enumerate([0.9, 0.8, 0.7, 0.2, 0.1]):
        t = _trial(f"t{i}")
        sched.on_trial_add(None, t)
        decisions[t.trial_id] = sched.on_trial_result(None, t, {"epoch": 1, "val_acc": acc})
    assert TrialScheduler.STOP in decisions.values()  # ASHA did cut some
    rungs = [(m, dict(r)) for m, r in sched._brackets[0]._rungs]

    restored = pickle.loads(as_pickled_at_start)  # a new driver: Tune restores the start-time pickle
    late = _trial("t9")
    restored.on_trial_add(None, late)
    assert [(m, dict(r)) for m, r in restored._brackets[0]._rungs] == rungs  # the rung records are back
    # A trial ASHA stopped, which Tune's own (older) state still had as unfinished, is stopped again.
    stopped = next(tid for tid, d in decisions.items() if d == TrialScheduler.STOP)
    assert restored.on_trial_result(None, _trial(stopped), {"epoch": 2, "val_acc": 0.99}) == TrialScheduler.STOP
    # A weak newcomer is cut against the old records (a fresh ASHA would let it pass: no records yet).
    assert restored.on_trial_result(None, late, {"epoch": 1, "val_acc": 0.05}) == TrialScheduler.STOP
    fresh = ResumableASHA(state_path=tmp_path / "other.pkl", time_attr="epoch", metric="val_acc", mode="max", max_t=9,
                          grace_period=1, reduction_factor=3)
    fresh.on_trial_add(None, _trial("x"))
    assert fresh.on_trial_result(None, _trial("x"), {"epoch": 1, "val_acc": 0.05}) == TrialScheduler.CONTINUE


def test_state_cut_off_by_a_kill_is_repaired_from_its_last_whole_copy(tmp_path):
    """Tune copies its state files into the storage folder in place; a driver killed mid-copy leaves
    an empty or cut-off file (seen: `Failed to restore the run state`, then trials without configs).
    The recorder keeps the last whole copy; a restore puts it back first."""
    from harness.engine import STATE_BACKUP, backup_state, repair_state

    exp_dir = tmp_path / "benchmark-1"
    exp_dir.mkdir()
    state = exp_dir / "experiment_state-2026.json"
    state.write_text(json.dumps({"trial_data": [1, 2, 3]}))
    old = time.time() - 5
    os.utime(state, (old, old))  # written a while ago: not mid-write
    backup_state(exp_dir)
    assert (exp_dir / STATE_BACKUP / state.name).is_file()
    state.write_text('{"trial_da')  # the kill lands mid-copy
    backup_state(exp_dir)  # a cut-off file never replaces the whole copy
    notes: list[str] = []
    repair_state(exp_dir, notes.append)
    assert json.loads(state.read_text()) == {"trial_data": [1, 2, 3]}
    assert notes and "cut off" in notes[0]
    repair_state(exp_dir, notes.append)  # a whole file is left alone
    assert len(notes) == 1


def test_a_checkpoint_tune_deleted_before_saving_its_state_is_given_back(tmp_path):
    """Tune deletes a trial's older checkpoint the moment it registers a newer one (num_to_keep=1) and saves
    its state only later: a kill in between leaves a state naming a deleted checkpoint, and Tune's restore
    then fails on every retry (CI, 2026-12-07: the kill -9 test's trial ended `failed`). Made here with
    Tune's own checkpoint manager and state encoder: the registered successor takes the deleted one's
    name (not a later folder no driver registered); a trial with nothing left starts over; finished
    trials are not touched."""
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.utils.serialization import TuneFunctionEncoder

    from harness.engine.state import repair_checkpoints

    exp_dir = tmp_path / "sweep-x"

    def checkpoint(trial: str, i: int, epoch: int) -> _TrainingResult:
        folder = exp_dir / trial / f"checkpoint_{i:06d}"
        folder.mkdir(parents=True)
        (folder / "last.pt").write_text(f"epoch {epoch}")
        return _TrainingResult(checkpoint=Checkpoint.from_directory(str(folder)), metrics={"epoch": epoch})

    trial_data = []
    for trial, status in (("trial_0", "TERMINATED"), ("trial_1", "RUNNING"), ("trial_2", "RUNNING")):
        manager = _CheckpointManager(CheckpointConfig(num_to_keep=1))
        manager.register_checkpoint(checkpoint(trial, 0, epoch=1))
        # The state as Tune saved it: naming checkpoint_000000.
        trial_data.append([json.dumps({"status": status}), json.dumps({"checkpoint_manager": manager}, cls=TuneFunctionEncoder)])
        if trial != "trial_2":
            manager.register_checkpoint(checkpoint(trial, 1, epoch=2))  # Tune deletes checkpoint_000000 here
            checkpoint(trial, 2, epoch=3)  # persisted by the worker, never registered: the driver was killed
    shutil.rmtree(exp_dir / "trial_2" / "checkpoint_000000")  # nothing left of this one
    (exp_dir / "experiment_state-2026-12-07_23-57-03.json").write_text(json.dumps({"trial_data": trial_data}))
    assert not (exp_dir / "trial_1" / "checkpoint_000000").exists()

    notes: list[str] = []
    repair_checkpoints(exp_dir, notes.append)
    t1 = exp_dir / "trial_1"
    assert sorted(p.name for p in t1.glob("checkpoint_*")) == ["checkpoint_000000", "checkpoint_000002"]
    assert (t1 / "checkpoint_000000" / "last.pt").read_text() == "epoch 2"  # the registered one, not epoch 3
    assert (exp_dir / "trial_2" / "checkpoint_000000").is_dir() and not any((exp_dir / "trial_2" / "checkpoint_000000").iterdir())
    assert not (exp_dir / "trial_0" / "checkpoint_000000").exists()  # finished: Tune does not restore it
    assert len(notes) == 2 and "checkpoint_000001" in notes[0] and "starts over" in notes[1]
    repair_checkpoints(exp_dir, notes.append)  # nothing more to mend
    assert len(notes) == 2


def test_working_copies_of_killed_trials_are_reaped(tmp_path):
    """A trial killed with -9 leaves its working copy behind; the next trial on that machine removes the
    ones whose worker is gone and never one whose worker lives."""
    import os
    import subprocess
    import sys

    from harness.engine.trial import TRIAL_PREFIX, reap_orphans

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    orphan, alive, other = (tmp_path / f"{TRIAL_PREFIX}{dead.pid}-x1", tmp_path / f"{TRIAL_PREFIX}{os.getpid()}-x2",
                            tmp_path / f"{TRIAL_PREFIX}abc")
    for d in (orphan, alive, other):
        d.mkdir()
        (d / "last.pt").write_bytes(b"weights")
    assert reap_orphans(tmp_path) == [orphan]
    assert not orphan.exists() and alive.is_dir() and other.is_dir()
