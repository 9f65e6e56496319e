"""One driver per experiment: a lock held from the name or `--resume` check to the end of the run.

Two drivers on one experiment (two `--resume`s of one interrupted benchmark, two sweeps of one study
name started within seconds) would reopen the same rows, restore the same Ray folder, share one Optuna
study and mark each other's running trials FAILED. So `experiment.run_experiment` takes this lock,
keyed by the database and the experiment's kind and name (a sweep's name is its Optuna study's), before
it looks anything up, and a second driver is refused (exit 2) with who holds it: host, pid, since when.

The lock is the operating system's or the server's, never a row or a file's mere existence, so a
holder that dies (`kill -9`, a crash, a lost machine) cannot leave it taken:

- SQLite: `fcntl.flock` on a file beside the database (`.<db file>.lock-<kind>-<digest>`, removed
  when the driver ends; a killed driver's file stays, unlocked). The kernel drops the lock when the holder's last descriptor closes, which
  a killed process's exit does; the descriptor is not inherited by the processes the driver starts
  (Python opens it close-on-exec), so Ray's workers outliving a killed driver do not keep it. The file
  holds the holder's host, pid and start time, for the refusal.
- PostgreSQL: `pg_try_advisory_lock` on a session of its own (a dedicated connection kept open to the
  end). The server drops a session lock when its session ends: at once when the holder's process dies
  (its socket closes), within TCP keepalive time (~1 min, set below) when its machine is gone. The
  holder is named from `pg_stat_activity` (its application_name and the session's start).

An in-memory SQLite database is one process's own: no lock.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
import zlib
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from harness.errors import UserError

# The first key of harness's advisory locks: other applications on the same server use their own.
PG_NAMESPACE = zlib.crc32(b"harness experiment lock") & 0x7FFFFFFF
# A dead driver machine's session (and its lock) ends after idle + interval x count seconds of silence,
# instead of the kernel's default two hours.
PG_KEEPALIVE = {"tcp_keepalives_idle": 30, "tcp_keepalives_interval": 10, "tcp_keepalives_count": 3}


def _key(kind: str, name: str) -> bytes:
    return hashlib.sha256(f"{kind}\0{name}".encode()).digest()


def lock_file(db_file: Path, kind: str, name: str) -> Path:
    """The lock file of experiment (`kind`, `name`) beside an SQLite database file (its real path: two
    spellings of one database share one lock). The name is hashed: it may be long or hold any character."""
    real = Path(os.path.realpath(db_file))
    return real.with_name(f".{real.name}.lock-{kind}-{_key(kind, name).hex()[:16]}")


def _me(kind: str, name: str) -> dict[str, Any]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "kind": kind, "name": name,
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}


EXPERIMENT_WHY = ("two drivers on one experiment would restore the same trials and mark each other's as failed. "
                  "Wait for it to end (or stop it: Ctrl-C), then --resume; or give this one a new name.")
CHECKPOINT_WHY = ("two runs writing one checkpoint folder would overwrite each other's last.pt and best.pt. Wait for "
                  "it to end (or stop it: Ctrl-C), then resume from the folder it leaves; or give this run another "
                  "--checkpoint-dir.")


def _refuse(field: str, kind: str, name: str, who: str, why: str = EXPERIMENT_WHY) -> UserError:
    return UserError(field, name, f"Another harness driver is running this {kind} ({who}); {why}")


def _holder_text(info: dict[str, Any] | None) -> str:
    if not info:
        return "holder unknown: it has not written its name yet"
    return f"pid {info.get('pid')} on {info.get('host')}, since {info.get('since')}"


def _open_locked(path: Path, kind: str, name: str, field: str, why: str = EXPERIMENT_WHY) -> int:
    """A descriptor of `path` holding its flock; UserError naming the holder when another has it."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # close-on-exec: no child process inherits the lock
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                info = json.loads(os.pread(fd, 4096, 0).decode() or "null")
            except ValueError:
                info = None
            os.close(fd)
            raise _refuse(field, kind, name, _holder_text(info), why) from None
        try:  # the file a holder removed as it ended is no lock: take the one at the path now
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


@contextmanager
def _flock(path: Path, kind: str, name: str, field: str, why: str = EXPERIMENT_WHY) -> Iterator[None]:
    fd = _open_locked(path, kind, name, field, why)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_me(kind, name)).encode(), 0)
        yield
    finally:
        # Removed while still locked (a driver that finds the path gone or replaced tries again), so a
        # finished or refused command leaves its folder as it found it; a killed holder's file stays,
        # unlocked, for the next driver to take.
        path.unlink(missing_ok=True)
        os.close(fd)  # releases the lock


@contextmanager
def _advisory(url: str, kind: str, name: str, field: str) -> Iterator[None]:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    from harness.store import CONNECT_TIMEOUT_S, shown_url

    k2 = int.from_bytes(_key(kind, name)[:4], "big") & 0x7FFFFFFF
    me = _me(kind, name)
    # application_name (at most 63 bytes) is how a refused driver learns who holds the lock.
    app = f"harness {kind} pid {me['pid']} on {me['host']}"[:63]
    options = " ".join(f"-c {k}={v}" for k, v in PG_KEEPALIVE.items())
    engine = sa.create_engine(url, poolclass=NullPool, connect_args={
        "connect_timeout": CONNECT_TIMEOUT_S, "application_name": app, "options": options,
        "keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3})
    try:
        conn = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except sa.exc.OperationalError as e:
        engine.dispose()
        raise UserError("--db", shown_url(url), f"Cannot open a session for the experiment's lock "
                        f"({str(e.orig or e).splitlines()[0][:160]}).") from None
    try:
        got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k1, :k2)"), {"k1": PG_NAMESPACE, "k2": k2}).scalar()
        if not got:
            row = conn.execute(sa.text(
                "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
                "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
                "AND l.classid = :k1 AND l.objid = :k2 AND l.objsubid = 2"), {"k1": PG_NAMESPACE, "k2": k2}).first()
            who = "holder unknown: its session is not visible to this user"
            if row is not None:
                since = row.backend_start.astimezone(dt.UTC).isoformat(timespec="seconds") if row.backend_start else "?"
                who = f"{row.application_name or 'a session'} (from {row.client_addr or 'a local socket'}), since {since}"
            raise _refuse(field, kind, name, who)
        try:
            yield
        finally:
            try:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k1, :k2)"), {"k1": PG_NAMESPACE, "k2": k2})
            except sa.exc.DBAPIError:
                pass  # the session is gone (a server restart): its locks went with it, and close() below is all
    finally:
        conn.close()
        engine.dispose()


@contextmanager
def experiment_lock(db: str, *, kind: str, name: str, field: str = "name") -> Iterator[None]:
    """Hold the lock of experiment (`kind`, `name`) in database `db` for the block; a UserError naming
    the holder when another driver has it. `db` has passed `store.check_url` (its folder exists)."""
    from harness.store import sqlite_path

    path = sqlite_path(db)
    if path is not None:
        with _flock(lock_file(path, kind, name), kind, name, field):
            yield
    elif db.startswith("postgresql"):
        with _advisory(db, kind, name, field):
            yield
    else:  # sqlite:// in memory: this process's own
        yield


@contextmanager
def checkpoint_lock(folder: Path, field: str = "--resume") -> Iterator[None]:
    """One `harness train` writing checkpoint folder `folder` at a time (a resumed run's, or one given
    with --checkpoint-dir): two `train --resume` of one last.pt would each continue the run from it and
    overwrite each other's checkpoints. An flock on a file in the folder, as `experiment_lock` beside a
    SQLite database (a killed holder's lock is the kernel's to drop); a folder made here for the lock and
    refused is removed again."""
    made = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with _flock(folder / ".harness-train.lock", "train", str(folder), field, CHECKPOINT_WHY):
            yield
    except UserError:
        if made:
            with suppress(OSError):  # no longer empty: someone else's now
                folder.rmdir()
        raise
