"""Shared fixtures: a fresh results database per test (SQLite; also PostgreSQL for the tests in
BOTH_BACKENDS), one PostgreSQL server and one local Ray for the session, tiny, fast run specs, and
the HARNESS_REQUIRE_* switches that turn a skip into a failure (CI sets the ones it can honour)."""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach for the network
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


# Tests that run against both backends, as Optuna tests every storage: (test file, test name or "*").
# Their `db_url` is parametrized ["sqlite", "postgresql"]; every other test gets SQLite only. Chosen
# for what the server changes: the report's reads, and a sweep through Ray recorded, stopped by a
# signal and resumed, with its Optuna study in the same database (tests/test_store.py parametrizes
# its own empty database the same way). The signal-stop test here is the suite's one SIGTERM stop (on
# both backends); tests/test_faults.py stops drivers with SIGINT and kill -9, on SQLite. Not here, for
# CI time: the benchmark kill -9 resume (test_resume.py), ~190 s more on PostgreSQL on a 2-core
# machine; the sweep resume covers resume.
BOTH_BACKENDS = {
    ("test_report.py", "*"),
    ("test_sweep.py", "test_sweep_records_statuses_asha_stops_and_settles_optuna"),
}
# Each thing tested once: SQLite's stop and resume of a sweep is tests/test_faults.py's SIGINT test (and
# kill -9 of a benchmark, tests/test_resume.py), so the SIGTERM stop runs on PostgreSQL only.
POSTGRES_ONLY = {("test_sweep.py", "test_interrupted_sweep_resumes_to_exactly_trials")}


def pytest_generate_tests(metafunc):
    if "db_url" not in metafunc.fixturenames:
        return
    module = Path(str(metafunc.definition.fspath)).name
    if {(module, "*"), (module, metafunc.definition.originalname)} & BOTH_BACKENDS:
        metafunc.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)
    elif (module, metafunc.definition.originalname) in POSTGRES_ONLY:
        metafunc.parametrize("db_url", ["postgresql"], indirect=True)


@pytest.fixture
def db_url(request, tmp_path):
    """A fresh results database: an SQLite file, or (param "postgresql") a new database on the session's
    server with the harness schema already created, as a server database usually is before a sweep
    points at it (so a test polling it while a subprocess starts never meets a missing table)."""
    if getattr(request, "param", "sqlite") == "postgresql":
        from harness.store import Store

        url = request.getfixturevalue("pg_url")
        Store(url).close()
        return url
    return f"sqlite:///{tmp_path / 'results.db'}"


# --- PostgreSQL: one server per test session from Debian's binaries, in a temp folder, on a local port ---

PG_USER, PG_PASSWORD = "harness", "harness-test-pw"


def _pg_bindir() -> Path | None:
    """Where initdb and pg_ctl are: on PATH, else Debian's /usr/lib/postgresql/<version>/bin (the newest)."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    versions = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    versions.sort(key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0)
    return versions[-1] if versions else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PgServer:
    """A throwaway PostgreSQL cluster: `initdb` in a temp folder, `pg_ctl start` on 127.0.0.1:<port>,
    password (scram) auth over TCP for the superuser `harness`. Run as root, the binaries run as
    `postgres` (PostgreSQL refuses to run as root)."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="harness-pg-"))
        self.data = self.root / "data"
        self.host, self.port = "127.0.0.1", free_port()
        self._names = itertools.count()
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        (self.root / "pw").write_text(PG_PASSWORD)
        if self._as:
            shutil.chown(self.root, "postgres")
            shutil.chown(self.root / "pw", "postgres")

    def _run(self, *args: str, timeout: float = 120) -> None:
        res = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout, cwd=self.root)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")

    def start(self) -> None:
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", PG_USER, f"--pwfile={self.root / 'pw'}",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync")
        # fsync off: a test server's data is thrown away. The socket in our folder, not /var/run/postgresql.
        opts = (f"-p {self.port} -c listen_addresses={self.host} -k {self.root} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200")
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"),
                  "-w", "-t", "120", "start", timeout=180)

    def stop(self) -> None:
        try:
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "-t", "60", "stop",
                      timeout=90)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str, *, user: str = PG_USER, password: str = PG_PASSWORD) -> str:
        return f"postgresql://{user}:{password}@{self.host}:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as c:
            c.execute(sql)

    def create_database(self) -> str:
        name = f"t{os.getpid()}_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name}")
        return name

    def drop_database(self, name: str) -> None:
        self.admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="session")
def pg_server():
    """The session's PostgreSQL server, started on first use. Skipped (with the reason) when the binaries
    are missing, unless HARNESS_REQUIRE_POSTGRES is set (CI sets it): then a missing server fails."""
    bindir = _pg_bindir()
    if bindir is None:
        why = ("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; "
               "install Debian's `postgresql` package (.ci/run does) to run the PostgreSQL tests")
        if os.environ.get("HARNESS_REQUIRE_POSTGRES"):
            pytest.fail(why + " (HARNESS_REQUIRE_POSTGRES is set)")
        pytest.skip(why)
    server = PgServer(bindir)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(pg_server):
    """A new, empty database on the session's server, dropped after the test:
    postgresql://harness:...@127.0.0.1:PORT/tNNN_K."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


def require_or_skip(switch: str, why: str) -> None:
    """Skip with `why`, or fail when the environment variable `switch` is set (CI sets it where the
    machine can run the test): a missing prerequisite must not pass CI as a quiet skip."""
    if os.environ.get(switch):
        pytest.fail(f"{why} ({switch} is set)")
    pytest.skip(why)


def pytest_runtest_setup(item):
    """A `gpu`-marked test skips without CUDA, or fails with HARNESS_REQUIRE_CUDA=1 (a GPU machine's CI)."""
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            require_or_skip("HARNESS_REQUIRE_CUDA", "needs CUDA (torch.cuda.is_available() is false)")


# --- Ray: one local instance for the whole session -------------------------------------------------

@pytest.fixture(scope="session")
def ray_local():
    """One local Ray (2 CPUs) for every in-process test that needs one, started on first use and shut
    down at the end of the session: ray.init costs seconds, several times that on a loaded 2-core
    machine. harness.engine reuses an initialized Ray (`_ray`: "unless this process already did") and
    leaves it running, so run_trials/run_sweep and in-process `harness benchmark/ablate/sweep` calls all
    run on this one. address="local": a new Ray for the tests even when a cluster already runs on this
    machine. Tests whose driver must be killed run it as a subprocess, which starts its own Ray."""
    import ray

    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_tripwire(monkeypatch):
    """For bad-input tests: any attempt to start or attach to Ray fails the test and is recorded (the
    list it returns must stay empty). Works with the session's Ray up too: harness.engine would reuse
    it without calling ray.init, so `ray.is_initialized` reads False here and `ray.init` is the tripwire."""
    import ray

    calls: list[tuple] = []

    def tripwire(*a, **k):
        calls.append((a, k))
        raise AssertionError("bad input started Ray")

    monkeypatch.setattr(ray, "init", tripwire)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    return calls


# --- what a run that never stopped records -----------------------------------------------------------

# Per-epoch metrics that are functions of (spec, seed): each epoch reseeds every RNG from (seed, epoch),
# so a run resumed from its checkpoint replays the same batches, augmentations and mixing. The timing
# columns (epoch_s, images_per_s) are not.
DETERMINISTIC_METRICS = ("train_loss", "train_acc", "train_batch_acc", "val_loss", "val_acc", "val_acc_raw", "lr",
                         "grad_norm")


def recorded_metrics(db: str, run_id: int) -> list[tuple]:
    from dbrows import rows

    cols = ", ".join(DETERMINISTIC_METRICS)
    return [tuple(r[m] for m in DETERMINISTIC_METRICS)
            for r in rows(db, f"SELECT {cols} FROM epochs WHERE run_id = :r ORDER BY epoch", r=run_id)]


def uninterrupted_metrics(db: str, run_id: int, plan_file: Path | None = None) -> list[tuple]:
    """The deterministic metrics of every epoch of run `run_id` as a run that never stopped has them:
    its stored spec (`runs.params`, the resolved RunSpec) trained again here, in this process, from
    scratch, without Ray. Same spec, same torch thread count (spec.threads), same machine: the same
    floating-point path, so the numbers are equal, not close. `plan_file`: a fault plugin's plan to
    empty first (its models then only count steps: same numbers, no sleeping)."""
    import json
    import warnings

    from dbrows import rows

    from harness.specs import RunSpec
    from harness.train import fit

    if plan_file is not None:
        plan_file.write_text("{}")
    (run,) = rows(db, "SELECT params FROM runs WHERE id = :r", r=run_id)
    params = run["params"] if isinstance(run["params"], dict) else json.loads(run["params"])
    spec = RunSpec.model_validate(params).model_copy(update={"checkpoint_dir": None})
    assert spec.threads, "a run recorded without a thread count is not reproducible bit for bit"
    with warnings.catch_warnings():  # the fault plugin asks Ray for a trial name; here there is none
        warnings.filterwarnings("ignore", message=".*get_trial_name.*", category=UserWarning)
        result = fit(spec)
    return [tuple(m[k] for k in DETERMINISTIC_METRICS) for m in result.history]


@pytest.fixture
def tiny_data():
    from harness.data import DataSpec

    return DataSpec(name="synthetic", image_size=16, num_classes=4, train_size=64)


@pytest.fixture
def tiny_spec(tiny_data):
    """A resnet18 run on 64 synthetic 16 px images: a full epoch in well under a second."""
    from harness.specs import resolve_run

    def make(**fields):
        fields.setdefault("epochs", 2)
        fields.setdefault("threads", 1)
        overrides = fields.pop("overrides", {"batch_size": 16})
        return resolve_run(model=fields.pop("model", "resnet18"), recipe=fields.pop("recipe", "naive"),
                           data=fields.pop("data", tiny_data), overrides=overrides, **fields)

    return make


@pytest.fixture
def fault_plugin(tmp_path):
    """fault_plugin({"*": {"raise_at_step": 9}}) -> the path of a copy of tests/plugins/faults.py with
    that plan beside it, loaded in this process (pass it as `--plugin PATH` to a subprocess)."""
    import json
    import shutil
    from pathlib import Path

    from harness import plugins

    made: list[str] = []

    def make(plan: dict, folder: str = "fault_plugin") -> Path:
        where = tmp_path / folder
        where.mkdir(exist_ok=True)
        path = Path(shutil.copy(Path(__file__).parent / "plugins" / "faults.py", where / "faults.py"))
        (where / "faults.json").write_text(json.dumps(plan))
        made.extend(plugins.load([str(path)]))
        return path

    yield make
    # Later tests' specs would still name this test's file, which pytest deletes once the test passes.
    for key in made:
        plugins._LOADED.pop(key, None)


# --- the working tree stays clean: no test writes its outputs into the repository -----------------------

REPO = Path(__file__).resolve().parent.parent
# What a command writes into its current folder and git would pick up: `recipes/` (recommended recipe files)
# is not ignored. dashboards/, ray_results/ and results.db are (.gitignore), and tests of `harness train`
# (no --out: TensorBoard goes to ./dashboards/tensorboard) still write there.
STRAY = ("recipes",)


@pytest.fixture(scope="session", autouse=True)
def no_outputs_in_the_repository():
    """A test that runs a command with the repository as its folder leaves its outputs there (three recommended
    recipe files were once committed that way): fail the session if one appears that was not there before."""
    before = {name for name in STRAY if (REPO / name).exists()}
    yield
    new = [name for name in STRAY if (REPO / name).exists() and name not in before]
    assert not new, f"tests wrote {new} into the repository {REPO}; run commands in tmp_path (monkeypatch.chdir)"
