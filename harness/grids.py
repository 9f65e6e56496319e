"""The one skeleton of the commands that run trials through Ray: `benchmark`, `ablate` and `sweep`.

Each is resolve -> check -> run -> finish -> pages:

- resolve: the command turns its input into trials (`benchmark.resolve_grid`, `ablate.resolve_ablation`,
  `sweep`'s study) and an `engine.Experiment`;
- check: `Where.check()` (the database, the output folder), done once at the edge by the CLI, plus the
  command's own (`--resume`: `engine.resumable`);
- run: `run()` hands the trials to `engine.run_trials` with the live pages beside them;
- finish: the command's tables, from the database (`report.py`, `sensitivity.py`), then the pages
  (`dashboards.write_dashboards`), and the lines that say where everything is.

It returns an `Outcome`; whether the process exits 0 or 130 (interrupted, resumable) is decided only
by `cli.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_STORAGE = Path("ray_results")  # Ray's experiment folders (state and trial checkpoints)
PAGES_EVERY_S = 30.0  # live pages are rewritten this often while trials run (one full grid epoch on CPU)


@dataclass(frozen=True)
class Where:
    """Where a command's trials run and where its results go, resolved once from the shared flags
    (`--db`, `--out`, `--address`, `--storage-path`, `--pages-every`) and passed down as one object.
    `out` None: no pages (a library caller's choice: the CLI always names a folder)."""

    db: str
    out: Path | None = Path("dashboards")
    address: str | None = None
    storage_path: Path = DEFAULT_STORAGE
    pages_every_s: float = PAGES_EVERY_S

    def check(self) -> Where:
        """Refuse a bad database URL or an output path that is a file, before anything runs or is written."""
        from harness.files import check_out_dir
        from harness.store import check_url

        check_url(self.db)
        if self.out is not None:
            check_out_dir(Path(self.out))
        return self

    @property
    def shown_db(self) -> str:
        from harness.store import shown_url

        return shown_url(self.db)


def live_pages(where: Where):
    """The live pages of `where.out` (None without one), rewritten on their own thread while trials
    run: recording never waits for a page."""
    if where.out is None:
        return None
    from harness.dashboards import LivePages

    return LivePages(where.db, Path(where.out), every_s=where.pages_every_s)


def run(where: Where, make_spec, *, experiment, total: int, resources, concurrency: int, search=None,
        ray_name: str | None = None, max_failures: int = 1, resources_field: str = "resources",
        headline: Callable[[str], str] | None = None, echo: Callable[[str], None] = print):
    """Sampled trials (a sweep) through `engine.run_trials`, with the live pages; the engine's Outcome."""
    from harness import engine

    return engine.run_trials(make_spec, experiment=experiment, total=total, resources=resources,
                             concurrency=concurrency, db=where.db, search=search, address=where.address,
                             storage_path=where.storage_path, ray_name=ray_name, max_failures=max_failures,
                             resources_field=resources_field, headline=headline, pages=live_pages(where), echo=echo)


def run_grid(where: Where, runs: list, *, experiment, resources, concurrency: int, max_failures: int = 1,
             echo: Callable[[str], None] = print):
    """A fixed list of RunSpecs, each once (benchmark, ablate), through `engine.run_grid`, with the live pages."""
    from harness import engine

    return engine.run_grid(runs, db=where.db, experiment=experiment, concurrency=concurrency, resources=resources,
                           address=where.address, storage_path=where.storage_path, max_failures=max_failures,
                           pages=live_pages(where), echo=echo)


def write_pages(where: Where) -> Path | None:
    """The final pages (no live banner), rewritten where what they show changed; the index's path."""
    if where.out is None:
        return None
    from harness.dashboards import write_dashboards

    return write_dashboards(where.db, Path(where.out))
