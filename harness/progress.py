"""Watching long work in the terminal: one live display for `train`, `sweep`, `benchmark`, `ablate`.

On a terminal, a `rich.progress` display sits under the log: one bar per running trial (epoch /
total, latest val acc, images/s) and one for the whole grid (runs done / total, elapsed, ETA from
the epoch times measured so far). When stdout is not a terminal (CI, `> log`), it prints one plain
line per epoch instead. The start / finish lines of each run are printed above the bars either way,
folded at min(width, 100) columns on a terminal as every message is (`terminal.fold`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

from harness import terminal

_TERMINAL_ECHOS = (print, click.echo, terminal.echo)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class _Run:
    label: str
    epochs: int
    done: int = 0
    task: TaskID | None = None


class LiveView:
    """What the terminal shows while runs train. `echo` prints a log line (above the bars when live).

    `total_runs` x `epochs_per_run` is the work ahead (a sweep's trials may stop early under ASHA: its
    ETA is then an upper bound); `slots` runs train side by side."""

    def __init__(self, *, title: str, total_runs: int, slots: int, echo: Callable[[str], None] = print,
                 live: bool | None = None) -> None:
        self.title, self.total_runs, self.slots = title, total_runs, max(1, slots)
        self._echo = echo
        # Live bars only where lines would reach the terminal anyway: a caller's own echo (a log file,
        # a list in a test) gets every line through it instead.
        self.live = (sys.stdout.isatty() and echo in _TERMINAL_ECHOS) if live is None else live
        self.runs: dict[str, _Run] = {}
        self.finished = 0
        self.epoch_seconds: list[float] = []  # measured epoch times: the ETA's unit of work
        self.epochs_per_run: int | None = None
        self.t0 = time.monotonic()
        self.progress: Progress | None = None
        self._overall: TaskID | None = None

    # --- lifetime ---
    def __enter__(self) -> LiveView:
        if self.live:
            self.progress = Progress(TextColumn("{task.description}"), BarColumn(bar_width=24), MofNCompleteColumn(),
                                     TextColumn("{task.fields[info]}"), console=Console(), transient=False,
                                     refresh_per_second=2)
            self.progress.start()
            self._overall = self.progress.add_task(self.title, total=self.total_runs, info="")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.progress is not None:
            self._refresh_overall()
            self.progress.stop()
            self.progress = None

    # --- log lines ---
    def echo(self, line: str) -> None:
        if self.progress is not None:
            # Folded as `terminal.echo` folds a message (rich's own wrapping would not indent the rest,
            # and soft_wrap leaves a long line to the terminal): a run's start line with an lr axis is
            # longer than 100 columns.
            width = terminal.message_width(self.progress.console.width)
            self.progress.console.print(terminal.fold(line, width), markup=False, highlight=False, soft_wrap=True)
        else:
            self._echo(line)

    # --- runs ---
    def run_started(self, key: str, label: str, epochs: int, done: int = 0) -> None:
        run = self.runs.get(key) or _Run(label, epochs)
        run.epochs, run.done = epochs, done
        self.runs[key] = run
        self.epochs_per_run = self.epochs_per_run or epochs
        if self.progress is not None and run.task is None:
            run.task = self.progress.add_task(f"  {label}", total=epochs, completed=done, info="")

    def epoch(self, key: str, epoch: int, metrics: dict[str, Any], *, plain: bool = True) -> None:
        """One epoch done: the run's bar moves; without a terminal, one plain line (unless the caller
        prints its own: `plain=False`)."""
        run = self.runs.get(key)
        if run is None:
            return
        run.done = epoch
        if isinstance(metrics.get("epoch_s"), (int, float)):
            self.epoch_seconds.append(float(metrics["epoch_s"]))
        acc, ips = metrics.get("val_acc"), metrics.get("images_per_s")
        info = f"val acc {acc:.4f}  {ips:.0f} img/s" if isinstance(acc, float) and isinstance(ips, (int, float)) else ""
        if self.progress is not None and run.task is not None:
            self.progress.update(run.task, completed=epoch, info=info)
            self._refresh_overall()
        elif plain:
            self._echo(f"{run.label} epoch {epoch}/{run.epochs}  {info}  [{self.summary()}]")

    def run_finished(self, key: str) -> None:
        run = self.runs.pop(key, None)
        self.finished += 1
        if self.progress is not None:
            if run is not None and run.task is not None:
                self.progress.remove_task(run.task)
            self._refresh_overall()

    # --- the whole ---
    def eta_s(self) -> float | None:
        """Epochs still to train (running runs' rest + runs not started) x the mean measured epoch time,
        spread over the slots."""
        if not self.epoch_seconds or self.epochs_per_run is None:
            return None
        left = sum(max(0, r.epochs - r.done) for r in self.runs.values())
        left += max(0, self.total_runs - self.finished - len(self.runs)) * self.epochs_per_run
        return left * (sum(self.epoch_seconds) / len(self.epoch_seconds)) / min(self.slots, max(1, self.total_runs - self.finished))

    def summary(self) -> str:
        eta = self.eta_s()
        return (f"{len(self.runs)} running, {self.finished}/{self.total_runs} done, "
                f"{_duration(time.monotonic() - self.t0)} elapsed" + (f", ETA {_duration(eta)}" if eta is not None else ""))

    def _refresh_overall(self) -> None:
        if self.progress is not None and self._overall is not None:
            self.progress.update(self._overall, completed=self.finished, info=self.summary())
