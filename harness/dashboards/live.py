"""Pages while work runs: `LivePages`, the driver's background writer, and `watch`, for a database
another process writes (`harness report --watch`).

A grid's driver records every result in Tune's callback loop; its live pages used to be rewritten in
that same loop, so on a large database the driver recorded a finished trial ~40 s late and started the
next trials that much later. `LivePages` rewrites them on its own daemon thread, from its
own database connection (a reader: it never holds the writer), only the running experiment's pages and
the index, and only those whose rows changed (`write.write_pages`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from harness import tables as rep
from harness.dashboards.write import write_dashboards, write_pages

log = logging.getLogger(__name__)

# How long `stop()` waits for a rewrite under way to finish before leaving it (the thread is a daemon:
# it cannot keep the process alive). A rewrite of one experiment's changed pages takes about a second;
# one stuck on a locked database must not hold the end of the work.
STOP_WAIT_S = 10.0


class LivePages:
    """Rewrites the live pages of one running experiment every `every_s` seconds on a background thread.

    `start(experiment_id)` once the experiment's row exists; `stop()` when the work ends, then the caller
    writes the final pages (`write_dashboards(db, out)`). A rewrite that runs past a period boundary is
    followed by the next one at the next boundary: missed periods are skipped, never queued. Every failure
    in the thread is a logged warning (and counted in `failures`), never an exception in the caller."""

    def __init__(self, db: str, out: Path | str, *, every_s: float, warn: Callable[[str], None] | None = None) -> None:
        self.db, self.out, self.every_s = db, Path(out), float(every_s)
        self.warn = warn or log.warning
        self.rewrites = 0  # rewrites finished (or failed)
        self.skipped = 0  # period boundaries passed while a rewrite was running
        self.failures = 0
        self.experiment_id: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, experiment_id: int) -> None:
        if self._thread is not None:
            raise RuntimeError("LivePages.start() called twice; make one LivePages per experiment")
        self.experiment_id = int(experiment_id)
        self._thread = threading.Thread(target=self._loop, name=f"harness-live-pages-{experiment_id}", daemon=True)
        self._thread.start()

    def rewrite(self) -> None:
        """One incremental live write of the experiment's pages and the index (what the thread runs each period)."""
        write_pages(self.db, self.out, live=True, refresh_s=self.every_s, experiments=[self.experiment_id],
                    cancelled=self._stop.is_set)

    def _loop(self) -> None:
        next_at = time.monotonic() + self.every_s  # the first rewrite one period in, as before
        while not self._stop.wait(max(0.0, next_at - time.monotonic())):
            try:
                self.rewrite()
            except Exception as e:  # noqa: BLE001 - pages must never stop the work they show
                self.failures += 1
                self.warn(f"live pages not updated ({type(e).__name__}: {e})")
            self.rewrites += 1
            now = time.monotonic()
            missed = max(0, int((now - next_at) // self.every_s))  # boundaries passed while this rewrite ran
            self.skipped += missed
            next_at += (missed + 1) * self.every_s

    def stop(self, timeout: float = STOP_WAIT_S) -> bool:
        """Ask the thread to end and wait for it at most `timeout` seconds; True when it ended (False: a
        rewrite is still under way, stuck before its next page: it writes no further page, no manifest and
        no further period, so the caller's final pages are not overwritten by live ones)."""
        self._stop.set()
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def __enter__(self) -> LivePages:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def running_experiments(db: str) -> list[str]:
    """'benchmark #3'-style labels of the experiments in `db` whose status is still 'running'."""
    store = rep.open_reader(db)
    try:
        df = rep.read_running_experiments(store)
    finally:
        store.close()
    return [f"{k} #{int(i)}" for i, k in zip(df["id"], df["kind"])]


def watch(db: str, out: Path | str = "dashboards", *, every: int = 30, compare: list[int] | None = None,
          echo: Callable[[str], None] = print, sleep: Callable[[float], None] | None = None) -> int:
    """Rewrite the pages live every `every` seconds while an experiment in `db` is running (another
    process writes it). Returns, with the number of live writes, once none is running or on Ctrl-C;
    the caller then writes the final pages (live=False). An experiment whose driver was killed
    stays 'running' in the database: Ctrl-C ends the watch then.

    Ctrl-C sets a flag (a SIGINT handler) instead of raising KeyboardInterrupt wherever the main
    thread happens to be: raised inside a library's cleanup (a database connection closing, a file
    being replaced) it could be swallowed there, and the watch went on rewriting. A rewrite under way
    finishes; the wait between rewrites ends within 0.1 s; a second Ctrl-C interrupts the rewrite too."""
    import signal

    stop = []  # a list the handler appends to: no lock taken inside a signal handler

    def on_sigint(signum, frame):  # noqa: ANN001
        if stop:  # a second Ctrl-C: the rewrite under way may be stuck (a locked database): stop it too
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        stop.append(signum)

    try:
        previous = signal.signal(signal.SIGINT, on_sigint)
    except ValueError:  # not the main thread: Ctrl-C cannot reach this loop anyway
        previous = None
    writes = 0
    try:
        while not stop:
            running = running_experiments(db)
            if not running:
                return writes
            write_dashboards(db, out, compare=compare, live=True, refresh_s=every)
            writes += 1
            echo(f"pages updated {time.strftime('%H:%M:%S')} ({len(running)} running: {', '.join(running)})")
            if sleep is not None:
                sleep(every)
                continue
            end = time.monotonic() + every
            while not stop and time.monotonic() < end:  # short naps: a Ctrl-C ends the wait within 0.1 s
                time.sleep(0.1)
        echo("stopped watching (Ctrl-C); writing the final pages")
        return writes
    except KeyboardInterrupt:
        echo("stopped watching (Ctrl-C); writing the final pages")
        return writes
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
