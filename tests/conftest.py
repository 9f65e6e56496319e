"""Shared fixtures: a fresh results database per test (SQLite; also PostgreSQL for the tests in
BOTH_BACKENDS), one PostgreSQL server for the session, and tiny, fast run specs."""

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
# its own empty database the same way). Not here, for CI time: the benchmark kill -9 resume
# (test_resume.py), ~190 s more on PostgreSQL on a 2-core machine; the sweep resume covers resume.
BOTH_BACKENDS = {
    ("test_report.py", "*"),
    ("test_sweep.py", "test_sweep_records_statuses_asha_stops_and_settles_optuna"),
    ("test_sweep.py", "test_interrupted_sweep_resumes_to_exactly_trials"),
}


def pytest_generate_tests(metafunc):
    if "db_url" not in metafunc.fixturenames:
        return
    module = Path(str(metafunc.definition.fspath)).name
    if {(module, "*"), (module, metafunc.definition.originalname)} & BOTH_BACKENDS:
        metafunc.parametrize("db_url", ["sqlite", "postgresql"], indirect=True)


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

    def make(plan: dict, folder: str = "fault_plugin") -> Path:
        where = tmp_path / folder
        where.mkdir(exist_ok=True)
        path = Path(shutil.copy(Path(__file__).parent / "plugins" / "faults.py", where / "faults.py"))
        (where / "faults.json").write_text(json.dumps(plan))
        plugins.load([str(path)])
        return path

    return make
