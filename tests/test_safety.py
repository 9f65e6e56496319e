"""Nothing runs that was not asked for, nothing is overwritten, two drivers never share an experiment, and
every check comes before the first row (docs/reliability.md, rows 13-17). Each refusal is exit 2 with one
line, and the test reads back that nothing was written: no database, no marker, files byte-identical."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner
from dbrows import rows

from harness.cli import main
from harness.errors import UserError
from harness.locks import experiment_lock, lock_file
from harness.store import Store

TINY = ["--data", "synthetic", "--image-size", "16", "--threads", "1", "--set", "batch_size=16"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def refused(r, *says: str) -> str:
    """Exit 2, one `error:` line and no traceback; the line holds every `says`."""
    assert r.exit_code == 2, (r.output, r.exception)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for s in says:
        assert s in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished 1-epoch `harness train` run: its database and its checkpoint folder (last.pt, best.pt)."""
    root = tmp_path_factory.mktemp("trained")
    db = f"sqlite:///{root / 'results.db'}"
    r = run("train", "--model", "resnet_test", "--recipe", "naive", "--epochs", 1, "--db", db,
            "--checkpoint-dir", root / "ck", *TINY)
    assert r.exit_code == 0, r.output
    return db, root / "ck"


@pytest.fixture
def ck(trained, tmp_path):
    """A private copy of the trained run's checkpoint folder."""
    return Path(shutil.copytree(trained[1], tmp_path / "ck"))


def edit_checkpoint(path: Path, **changes) -> None:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    config = changes.pop("config", {})
    torch.save({**ckpt, **changes, "config": {**ckpt["config"], **config}}, path)


# --- 1. a resume runs no code the checkpoint names ---------------------------------------------------

def test_resume_does_not_run_the_plugins_a_checkpoint_names(ck, tmp_path, monkeypatch):
    """A last.pt naming a plugin file and a module:function plugin (each writes a marker when run):
    `train --resume` refuses, naming both and --plugin; neither runs, nothing is recorded. Given again
    with --plugin, the file is trusted and the resume trains."""
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(marker)!r}, 'a').write('file ')\n")
    (tmp_path / "evil_mod.py").write_text(f"def boom():\n    open({str(marker)!r}, 'a').write('module ')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    edit_checkpoint(ck / "last.pt", config={"plugins": [str(evil), "evil_mod:boom"]})
    db = f"sqlite:///{tmp_path / 'r.db'}"
    refused(run("train", "--resume", ck / "last.pt", "--epochs", 2, "--db", db),
            "--resume", str(evil), "evil_mod:boom", f"harness --plugin {evil} --plugin evil_mod:boom train --resume")
    assert not marker.exists() and "evil_mod" not in sys.modules
    assert not (tmp_path / "r.db").exists()

    edit_checkpoint(ck / "last.pt", config={"plugins": [str(evil)]})
    r = run("--plugin", evil, "train", "--resume", ck / "last.pt", "--epochs", 2, "--db", db)
    assert r.exit_code == 0, r.output
    assert marker.read_text() == "file "  # run once: because the command line named it
    (run_row,) = rows(db, "SELECT params FROM runs")
    assert str(evil) in yaml.safe_load(run_row["params"])["plugins"]  # the spec carries what was given


# --- 4. every check of a resume before the first row --------------------------------------------------

def test_resume_of_a_slimmed_last_pt_writes_no_row(ck, tmp_path):
    """A finished trial's last.pt (weights only: no optimizer, no scheduler) is refused before the
    database is created: no experiment, run or epoch row (today's code left a failed one of each)."""
    edit_checkpoint(ck / "last.pt", optimizer=None, scheduler=None)
    refused(run("train", "--resume", ck / "last.pt", "--epochs", 2, "--db", f"sqlite:///{tmp_path / 'r.db'}"),
            "--resume", "no optimizer state", "--pretrained-file")
    assert not (tmp_path / "r.db").exists()


def test_truncated_best_pt_beside_a_good_last_pt_is_refused(ck, tmp_path):
    """best.pt cut in half (a copy interrupted) beside a whole last.pt: exit 2 naming best.pt, not the
    RuntimeError torch.load raised after the rows were written; nothing recorded, last.pt untouched."""
    data = (ck / "best.pt").read_bytes()
    (ck / "best.pt").write_bytes(data[: len(data) // 2])
    before = (ck / "last.pt").read_bytes()
    refused(run("train", "--resume", ck / "last.pt", "--epochs", 2, "--db", f"sqlite:///{tmp_path / 'r.db'}"),
            str(ck / "best.pt"), "Not a loadable harness checkpoint")
    assert not (tmp_path / "r.db").exists()
    assert (ck / "last.pt").read_bytes() == before


def test_weights_that_do_not_fit_the_model_are_refused_before_a_row(ck, tmp_path):
    """A state dict missing a tensor and with one of another shape: named, before anything is written."""
    state = torch.load(ck / "last.pt", map_location="cpu", weights_only=True)["model"]
    first, second = list(state)[:2]
    state.pop(first)
    state[second] = torch.zeros(3, 3)
    edit_checkpoint(ck / "last.pt", model=state)
    line = refused(run("train", "--resume", ck / "last.pt", "--epochs", 2, "--db", f"sqlite:///{tmp_path / 'r.db'}"),
                   "do not fit resnet_test", f"1 missing: {first}", f"1 of another shape: {second} (3, 3)")
    assert "--pretrained-file" in line
    assert not (tmp_path / "r.db").exists()


@pytest.mark.parametrize("command", [
    ["train", "--model", "resnet_test", "--epochs", "1", *TINY],
    ["benchmark", "--models", "resnet_test", "--recipes", "naive", "--epochs", "1"],
    ["sweep", "STUDY"],
])
def test_database_in_a_folder_that_does_not_exist(command, tmp_path, monkeypatch, ray_tripwire):
    """`--db sqlite:///<no such folder>/x.db`: exit 2 naming the folder, before Ray starts (today: a
    136-line SQLAlchemy traceback, after Ray had started for benchmark and sweep); nothing written."""
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({"name": "s", "model": "resnet_test", "recipe": "naive", "trials": 1,
                                     "data": {"name": "synthetic", "image_size": 16},
                                     "search": {"lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}}))
    missing = tmp_path / "no" / "such"
    command = [str(study) if c == "STUDY" else c for c in command]
    refused(run(*command, "--db", f"sqlite:///{missing / 'x.db'}"), "--db", f"The folder {missing} does not exist")
    assert not ray_tripwire
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


def test_a_recipe_files_name_is_validated_like_a_study_name(tmp_path):
    """A recipe file's `name:` becomes part of a page's path (lr_range_<model>_<name>.html): `team/vit`
    is refused with the file and the rule, before anything runs."""
    from harness.recipe_file import write_recipe_file
    from harness.recipes import get_recipe

    path = write_recipe_file(get_recipe("naive").model_copy(update={"name": "team/vit"}), tmp_path / "r.yaml")
    db = tmp_path / "r.db"
    refused(run("train", "--model", "resnet_test", "--recipe", path, "--db", f"sqlite:///{db}", *TINY),
            "--recipe.name: got 'team/vit'", "letters, digits", f"Fix it in {path}")
    assert not db.exists()


# --- 2. export never overwrites ----------------------------------------------------------------------

def test_export_refuses_an_existing_file_a_collision_and_the_database(trained, tmp_path):
    """`--out keep.txt` (exists), `--out results.db` (the database itself, even with --force), `--out w.md`
    (the weights and the card one file): exit 2 naming the path, every file byte-identical, nothing new.
    --force replaces an existing file, written whole."""
    db, _ = trained
    db_file = Path(db.removeprefix("sqlite:///"))
    keep, card = tmp_path / "keep.txt", tmp_path / "card.md"
    keep.write_text("mine")
    card.write_text("theirs")
    db_bytes = db_file.read_bytes()
    refused(run("export", 1, "--out", keep, "--db", db), f"{keep} already exists", "--force")
    refused(run("export", 1, "--out", tmp_path / "card.pth", "--db", db), f"{card} already exists")  # the card's path
    refused(run("export", 1, "--out", db_file, "--db", db, "--force"), "is the results database")
    refused(run("export", 1, "--out", tmp_path / "w.md", "--db", db), "would be one file")
    assert keep.read_text() == "mine" and card.read_text() == "theirs" and db_file.read_bytes() == db_bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.md", "keep.txt"]

    r = run("export", 1, "--out", keep, "--db", db, "--force")
    assert r.exit_code == 0, r.output
    assert set(torch.load(keep, weights_only=True)) == set(torch.load(trained[1] / "last.pt", weights_only=True)["model"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.md", "keep.md", "keep.recipe.yaml", "keep.txt"]  # no temp


# --- 3. one driver per experiment --------------------------------------------------------------------

HOLD = ("import sys, time\nfrom harness.locks import experiment_lock\n"
        "with experiment_lock(sys.argv[1], kind=sys.argv[2], name=sys.argv[3]):\n"
        "    print('held', flush=True)\n    time.sleep(600)\n")


def hold(db: str, kind: str, name: str) -> subprocess.Popen:
    """Another driver: a process holding the experiment's lock until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, db, kind, name], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    assert p.stdout.readline().strip() == "held"
    return p


def take_after_kill(db: str, holder: subprocess.Popen) -> float:
    """kill -9 the holder; seconds until this process takes the lock (polled every 10 ms, at most 60 s)."""
    os.kill(holder.pid, signal.SIGKILL)
    t0 = time.monotonic()
    while True:
        try:
            with experiment_lock(db, kind="sweep", name="s"):
                took = time.monotonic() - t0
            break
        except UserError:
            assert time.monotonic() - t0 < 60, "the lock of a killed holder was not freed in 60 s"
            time.sleep(0.01)
    holder.wait()
    print(f"lock taken {took * 1000:.0f} ms after kill -9 of its holder ({db.split(':')[0]})")
    return took


HOLD_FOLDER = ("import sys, time\nfrom pathlib import Path\nfrom harness.locks import checkpoint_lock\n"
               "with checkpoint_lock(Path(sys.argv[1])):\n    print('held', flush=True)\n    time.sleep(600)\n")


def test_a_second_resume_of_one_checkpoint_is_refused_and_its_files_stay(ck, tmp_path):
    """Two `train --resume` of one last.pt at once: the one that finds the folder's lock held (a process
    holding it stands in for the first) is refused naming the holder's pid, before anything is written;
    last.pt and best.pt are byte for byte as they were. Once the holder is gone (kill -9), the resume
    trains, in the folder it resumed from, and leaves no lock file."""
    db = f"sqlite:///{tmp_path / 'r.db'}"
    before = {p.name: p.read_bytes() for p in ck.iterdir()}
    holder = subprocess.Popen([sys.executable, "-c", HOLD_FOLDER, str(ck)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused(run("train", "--resume", ck / "last.pt", "--epochs", 2, "--db", db),
                "--resume", f"pid {holder.pid}", "overwrite each other's last.pt", "--checkpoint-dir")
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "r.db").exists()
    assert {p.name: p.read_bytes() for p in ck.iterdir() if p.name in before} == before
    r = run("train", "--resume", ck / "last.pt", "--epochs", 2, "--db", db)
    assert r.exit_code == 0, r.output
    assert torch.load(ck / "last.pt", map_location="cpu", weights_only=True)["epoch"] == 2
    assert sorted(p.name for p in ck.iterdir()) == ["best.pt", "last.pt"]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_a_second_driver_is_refused_with_the_holder_and_a_killed_holders_lock_is_taken(backend, tmp_path, request):
    """Two holders of one experiment's lock: the second is refused naming host, pid and since when; another
    experiment (kind or name) is not held up. A holder killed with -9 frees it (flock: the kernel closes its
    descriptor; PostgreSQL: the server ends its session), and a new driver takes it over."""
    db = request.getfixturevalue("pg_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'r.db'}"
    holder = hold(db, "sweep", "s")
    try:
        with pytest.raises(UserError) as e:
            with experiment_lock(db, kind="sweep", name="s", field="s.yaml: name"):
                pass
        text = str(e.value)
        assert text.startswith("s.yaml: name: got 's'. Another harness driver is running this sweep")
        assert f"pid {holder.pid}" in text and f"on {os.uname().nodename}" in text and "since 20" in text
        with experiment_lock(db, kind="benchmark", name="s"), experiment_lock(db, kind="sweep", name="t"):
            pass
    finally:
        took = take_after_kill(db, holder)
    assert took < 60
    if backend == "sqlite":
        assert not lock_file(tmp_path / "r.db", "sweep", "s").exists()  # the new holder removed it as it ended
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # a lock is no database: none was created


def test_a_second_benchmark_resume_is_refused_and_the_rows_stay(tmp_path, ray_tripwire):
    """Two `harness benchmark --resume` of one interrupted benchmark at once: the one that finds the lock
    held is refused before it reads or starts anything (Ray untouched), naming the holder's pid; the
    interrupted experiment's rows are as they were. (The holder stands in for the first resume: the lock
    is what `run_experiment` takes before its --resume lookup.)"""
    db = f"sqlite:///{tmp_path / 'r.db'}"
    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump({"name": "twice", "models": ["resnet_test"], "recipes": ["naive"], "epochs": 1,
                                    "data": {"name": "synthetic", "image_size": 16}}))
    store = Store(db)
    exp = store.create_experiment(kind="benchmark", name="twice", spec="{}", ray_folder="benchmark-x")
    run_id = store.create_run(exp, model="resnet_test", recipe="naive", params={}, seed=0)
    store.log_epoch(run_id, 1, {"val_acc": 0.5})
    store.finish_run(run_id, status="interrupted")
    store.finish_experiment(exp, "interrupted")
    store.close()
    tables = ("experiments", "runs", "epochs")
    before = {t: rows(db, f"SELECT * FROM {t}") for t in tables}
    holder = hold(db, "benchmark", "twice")
    try:
        refused(run("benchmark", grid, "--resume", "--db", db, "--storage-path", tmp_path / "ray", "--out", tmp_path / "d"),
                "--resume: got 'twice'", f"pid {holder.pid}")
    finally:
        holder.kill()
        holder.wait()
    assert not ray_tripwire
    assert {t: rows(db, f"SELECT * FROM {t}") for t in tables} == before
    assert not (tmp_path / "ray").exists() and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_two_sweeps_of_one_name_started_together(tmp_path):
    """Two `harness sweep` processes of one study name started at the same moment: one runs it, the other
    is refused (exit 2) before its Ray starts, by the lock or, if it came after, the taken name. One
    experiment, one Optuna study with its own trials only, all COMPLETE (today both ran in one study and
    each one's clean-up failed the other's running trials)."""
    db = f"sqlite:///{tmp_path / 'r.db'}"
    study = tmp_path / "s.yaml"
    study.write_text(yaml.safe_dump({
        "name": "twin", "model": "resnet_test", "recipe": "naive", "trials": 1, "concurrency": 1,
        "data": {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 64},
        "search": {"lr": {"type": "loguniform", "low": 1e-3, "high": 1e-2}}, "fixed": {"batch_size": 16},
        "sampler": {"type": "random", "seed": 0}, "scheduler": {"type": "none", "max_epochs": 1},
        "resources": {"cpu": 1}}))
    procs = []
    for i in range(2):
        env = {**os.environ, "RAY_TMPDIR": tempfile.mkdtemp(prefix="rt", dir="/tmp")}  # short Unix socket paths
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "harness.cli", "sweep", str(study), "--db", db, "--storage-path", str(tmp_path / f"ray{i}"),
             "--out", str(tmp_path / f"d{i}")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            cwd=tmp_path, env=env, start_new_session=True))
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=400)[0])
        finally:
            if p.poll() is None:
                p.kill()
                p.communicate()
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    loser = outs[[p.returncode for p in procs].index(2)]
    assert loser.strip().startswith(f"error: {study}: name: got 'twin'.") and len(loser.strip().splitlines()) == 1, loser
    assert "Another harness driver is running this sweep" in loser or "already in" in loser, loser
    (exp,) = rows(db, "SELECT id, status FROM experiments WHERE kind = 'sweep'")
    assert exp["status"] == "completed"
    assert [r["status"] for r in rows(db, "SELECT status FROM runs WHERE experiment_id = :e", e=exp["id"])] == ["completed"]
    states = rows(db, "SELECT t.state FROM trials t JOIN studies s ON s.study_id = t.study_id WHERE s.study_name = 'twin'")
    assert [s["state"] for s in states] == ["COMPLETE"]
    assert len(rows(db, "SELECT * FROM studies")) == 1
