"""Files the harness writes: whole or not at all, and into a folder that is a folder.

`write_atomic` is the one way harness writes a file a reader may open at the same moment (a
checkpoint a resume loads, a page a browser shows, a table a test reads): into a temp file in the
same folder, fsync, then `os.replace`, so a reader sees the old file or the new one, never half
of one. A process killed mid-write leaves only a `.NAME.tmp-PID-THREAD` file (`clean_stale_temps`
removes those).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from harness.errors import UserError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temp path beside `path` for a writer that wants a file name (Ray's `save`, `shutil.copy2`);
    when the block ends, the file is fsynced and renamed onto `path`; on an error it is removed."""
    path = Path(path)
    # Per process and thread: the live pages' thread and the driver's final write may write one page at once.
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a failed write; after the rename there is nothing left


def write_atomic(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """Call `write(f)` on a temp file beside `path`, fsync it, then rename it onto `path`."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        write(f)
    return Path(path)


def copy_atomic(src: Path, dst: Path) -> Path:
    """`src` copied onto `dst` (with its times), atomically: a reader sees the old copy or the new one."""
    with atomic_path(dst) as tmp:
        shutil.copy2(src, tmp)
    return Path(dst)


def write_text_atomic(path: Path, text: str) -> Path:
    """`text` as UTF-8, atomically (see `write_atomic`)."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda f: f.write(data))


def check_out_dir(path: Path, *, flag: str = "--out", what: str = "the dashboards", default: str = "dashboards/") -> None:
    """Refuse an output folder that is an existing file, before anything runs or is written."""
    if path.exists() and not path.is_dir():
        raise UserError(flag, str(path), f"That path is a file; name a folder for {what}, e.g. {default}.")


def clean_stale_temps(folder: Path) -> None:
    """Remove temp files left by a process killed mid-save (the real files are intact): those whose writer
    (the pid in `.NAME.tmp-PID-THREAD`, files.atomic_path) is gone. A live writer's save in flight is
    never touched: a reader (a resume's checks, export) may look at a folder while a run writes it."""
    for p in folder.glob(".*.tmp-*"):
        pid = p.name.rsplit(".tmp-", 1)[-1].split("-", 1)[0]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        p.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs on this machine (another user's counts: it cannot be signalled, but lives)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
