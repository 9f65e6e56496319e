"""Writing the pages: only those whose rows changed.

Each page is drawn from some rows; a *stamp* is a digest of those rows (and of whether the page is
live), and `out/.pages.json` (the manifest) holds, per page file, the stamp it was drawn from and the
file's identity once written (inode, mtime, size). A page is rewritten when its stamp differs, when
its file is missing, or when the file is not the one the manifest recorded (another writer replaced
it). The stamps:

- run-<id>.html: the run's changing columns (`report.RUN_STAMP_COLUMNS`), a fingerprint of its epochs
  (count, last, sums of the drawn metrics) and its evaluation's epoch;
- an experiment's pages (experiment-<id>.html and its kind's, `pages.KIND_PAGES`, with their .md/.csv):
  the experiment's row, its runs' stamps and, for a sweep, its Optuna study's trials;
- each index page: its experiments' rows, their runs per status (count, best, sum of bests), their
  pages' links, the page count and the kinds.

Crash safety: each page is written atomically, and its manifest entry is recorded only after it; the
manifest itself is written atomically every `SAVE_EVERY` pages and at the end. A crash loses at most
entries, never a page: a page without its entry is rewritten next time. A resume changes the
experiment's row (running again) and its runs' epochs, so their stamps.
"""

from __future__ import annotations

import builtins  # `all` is write_pages' keyword (the CLI's --all)
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness import tables as rep
from harness.dashboards.index import KIND_NAME, PER_PAGE, compare_page, index_name, index_page, index_pages
from harness.dashboards.markup import mark_live, write_plotlyjs
from harness.dashboards.pages import ExperimentRows, experiment_pages, run_page
from harness.files import check_out_dir, write_text_atomic

MANIFEST = ".pages.json"
# Pages written between two saves of the manifest: a crash then rewrites at most this many pages that
# were already right, and a full write of 10,000 pages saves it 20 times rather than 10,000.
SAVE_EVERY = 500
# Run ids per query when reading many runs' rows (SQLite's default limit is 32,766 host parameters
# and long IN lists parse slowly; ids are inlined as integers).
CHUNK = 500


@dataclass
class Written:
    """What one `write_pages` did: `path` (index.html, or compare.html), the page files it wrote, and how
    many it left as they were because nothing they show changed."""

    path: Path
    written: list[str] = field(default_factory=list)
    unchanged: int = 0


def _plain(v: Any) -> Any:
    """A value as the same Python value whatever the column's dtype came out as: pandas reads a column's
    missing values as None, NaN or NaT depending on the other rows (one finished run turns every run's
    finished_at from None to NaT), and a stamp must not change with other rows."""
    if isinstance(v, (tuple, list)):
        return tuple(_plain(x) for x in v)
    if v is None or (not isinstance(v, str) and pd.api.types.is_scalar(v) and pd.isna(v)):
        return None
    if hasattr(v, "isoformat"):
        return v.isoformat()
    v = v.item() if hasattr(v, "item") else v
    return int(v) if isinstance(v, float) and v.is_integer() else v  # an int column with a NULL reads as floats


def plain_rows(df: pd.DataFrame) -> list[tuple]:
    """`df`'s rows as tuples of plain values, column by column (what `_plain` does one value at a time,
    at a tenth of the cost: 10,000 runs' stamps are read on every write). Numbers as floats (an int column
    with a NULL reads as floats), missing values as None, everything else as str."""
    columns = []
    for name in df.columns:
        col = df[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            col = col.astype(float)
        elif not pd.api.types.is_object_dtype(col):
            col = col.astype(str).where(col.notna())
        else:
            col = col.map(lambda v: v if v is None or isinstance(v, str) else repr(_plain(v)))
        columns.append(col.astype(object).where(col.notna(), None).tolist())
    return list(zip(*columns)) if columns else []


def digest(*parts: Any) -> str:
    """A short stable digest of values (rows as tuples; missing values, timestamps and numpy numbers
    made plain first)."""
    return hashlib.sha1(repr(_plain(parts)).encode("utf-8")).hexdigest()[:20]


def _digest_plain(row: tuple, mark: tuple) -> str:
    """`digest` of a row already made plain (`plain_rows`)."""
    return hashlib.sha1(repr((row, mark)).encode("utf-8")).hexdigest()[:20]


def _identity(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return [st.st_ino, st.st_mtime_ns, st.st_size]


class Manifest:
    """page file -> [stamp, inode, mtime_ns, size]; experiment id -> its index links."""

    def __init__(self, out: Path, *, forget: bool = False) -> None:
        self.path = out / MANIFEST
        self.pages: dict[str, list] = {}
        self.links: dict[str, list[list[str]]] = {}
        if not forget and self.path.is_file():
            try:
                data = json.loads(self.path.read_text(encoding="utf-8"))
                self.pages, self.links = dict(data.get("pages", {})), dict(data.get("links", {}))
            except (ValueError, AttributeError):  # cut off or foreign: every page is rewritten
                pass
        self.unsaved = 0

    def fresh(self, name: str, stamp: str) -> bool:
        entry = self.pages.get(name)
        return bool(entry) and entry[0] == stamp and entry[1:] == _identity(self.path.parent / name)

    def record(self, name: str, stamp: str) -> None:
        self.pages[name] = [stamp, *(_identity(self.path.parent / name) or [])]
        self.unsaved += 1
        if self.unsaved >= SAVE_EVERY:
            self.save()

    def save(self) -> None:
        write_text_atomic(self.path, json.dumps({"pages": self.pages, "links": self.links}, separators=(",", ":")))
        self.unsaved = 0


def _chunks(ids: list[int]) -> Iterable[list[int]]:
    for i in range(0, len(ids), CHUNK):
        yield ids[i:i + CHUNK]


class _Cancelled(Exception):
    """Raised inside write_pages when its caller no longer wants the write (see `cancelled`)."""


def write_pages(db: str, out: Path | str = "dashboards", *, compare: list[int] | None = None, live: bool = False,
                refresh_s: float = 30, all: bool = False, experiments: Iterable[int] | None = None,
                cancelled: Callable[[], bool] = lambda: False) -> Written:
    """The pages of the database at `db` in `out` whose rows changed since they were written (every page
    with `all`), and the index pages; returns what it wrote (`Written`). UserError, before writing, for a
    database that does not exist or is not harness's, and for a missing run id (`compare`).

    `live`: the work is still running (another process or thread writing `db`): the pages of running
    experiments and the index pages that list one carry the "running — updated HH:MM:SS" banner and reload themselves every
    `refresh_s` seconds; the final write (live=False) rewrites them without. `experiments`: only these
    experiments' pages (and the index): what the live pages of one running experiment need.
    `cancelled`: asked before each page and before the manifest is saved; once true, the write stops
    where it is (`LivePages.stop`: a live rewrite that outlasted the wait must not overwrite the final
    pages written after it, nor their stamps)."""
    out = Path(out)
    check_out_dir(out)
    clock = time.strftime("%H:%M:%S")
    store = rep.open_reader(db)
    try:
        if compare:
            rep.check_runs_exist(store, compare)
        exps = rep.read_experiments(store)
        only = None if experiments is None else [int(i) for i in experiments]
        scope = exps if only is None else exps[exps["id"].isin(only)]
        stamps = rep.read_run_stamps(store, only)
        studies = rep.read_study_stamps(store) if (scope["kind"] == "sweep").any() else None
        out.mkdir(parents=True, exist_ok=True)
        write_plotlyjs(out)
        manifest = Manifest(out, forget=all)
        done = Written(out / "index.html")

        def write(name: str, html: str, stamp: str, live_page: bool) -> None:
            if cancelled():
                raise _Cancelled
            write_text_atomic(out / name, mark_live(html, refresh_s=refresh_s, stamp=clock) if live_page else html)
            manifest.record(name, stamp)  # after the page: a crash in between leaves it to be rewritten
            done.written.append(name)

        shared: dict[str, Any] = {}  # what the experiments' page builders open once per write (Optuna's storage)
        # The stamps made plain in one pass, then split by experiment: per experiment, pandas' per-call
        # cost (~13 ms) was most of an unchanged re-run of 500 experiments.
        plain_by_exp: dict[int, list[tuple]] = {}
        eid_at = list(stamps.columns).index("experiment_id")
        for r in plain_rows(stamps):
            plain_by_exp.setdefault(int(r[eid_at]), []).append(r)
        for exp in scope.itertuples(index=False):
            eid = int(exp.id)
            live_here = live and exp.status == "running"
            mark = (live_here, refresh_s if live_here else None)
            run_stamps = {int(r[0]): _digest_plain(r, mark) for r in plain_by_exp.get(eid, [])}
            study = ()
            if exp.kind == "sweep" and studies is not None:
                study = tuple(tuple(r) for r in studies[studies["study_name"] == exp.name].itertuples(index=False, name=None))
            exp_stamp = digest(tuple(exp), tuple(sorted(run_stamps.values())), study, mark)
            group = list(dict.fromkeys([f"experiment-{eid}.html",
                                        *(h for h, _ in manifest.links.get(str(eid), []) if h.endswith(".html"))]))
            side = [h for h, _ in manifest.links.get(str(eid), []) if not h.endswith(".html")]
            group_stale = (str(eid) not in manifest.links or not builtins.all(manifest.fresh(n, exp_stamp) for n in group)
                           or not builtins.all((out / n).is_file() for n in side))
            stale_runs = [rid for rid, s in run_stamps.items() if not manifest.fresh(f"run-{rid}.html", s)]
            done.unchanged += (0 if group_stale else len(group)) + len(run_stamps) - len(stale_runs)
            if not group_stale and not stale_runs:
                continue
            row = scope[scope["id"] == eid].iloc[0]
            if group_stale:
                runs = rep.read_runs(store, eid)
                epochs = rep.read_epochs(store, runs["id"].tolist())
                pages, links = experiment_pages(ExperimentRows(db, store, row, runs, epochs, out, shared))
                manifest.links.pop(str(eid), None)  # until every page of the group is written
                for name, html in pages:
                    write(name, html, exp_stamp, live_here)
                manifest.links[str(eid)] = [list(p) for p in links]
            for ids in _chunks(stale_runs):
                if group_stale:
                    chunk, chunk_epochs = runs[runs["id"].isin(ids)], epochs[epochs["run_id"].isin(ids)]
                else:
                    chunk, chunk_epochs = rep.read_runs(store, run_ids=ids), rep.read_epochs(store, ids)
                evaluations = rep.read_evaluations(store, ids)
                per_run = dict(tuple(chunk_epochs.groupby("run_id"))) if not chunk_epochs.empty else {}
                for _, run in chunk.iterrows():
                    rid = int(run["id"])
                    html = run_page(run, per_run.get(rid, chunk_epochs.iloc[0:0]), row["name"], evaluations.get(rid))
                    write(f"run-{rid}.html", html, run_stamps[rid], live_here)

        _write_index(db, store, exps, manifest, write, done, live=live, refresh_s=refresh_s)
        if compare:
            chosen = rep.read_runs(store, run_ids=list(dict.fromkeys(compare)))
            chosen = chosen.set_index("id").loc[list(dict.fromkeys(compare))].reset_index()
            html = compare_page(chosen, rep.read_epochs(store, chosen["id"].tolist()))
            write("compare.html", html, digest(time.time_ns()), live)  # asked for by name: always written
            done.path = out / "compare.html"
        if manifest.unsaved and not cancelled():  # an unchanged database: not even the manifest is written
            manifest.save()
        return done
    except _Cancelled:  # what was written stays; its stamps were not all saved, so it is rewritten next time
        return done
    finally:
        store.close()


def _write_index(db: str, store: Any, exps: pd.DataFrame, manifest: Manifest, write: Any, done: Written, *,
                 live: bool, refresh_s: float) -> None:
    """index.html, index-2.html, ... and per kind index-<kind>.html, ...: each rewritten when its stamp changed."""
    counts = rep.read_run_counts(store)
    totals = (len(exps), int(counts["n"].sum()) if not counts.empty else 0)
    newest = exps.sort_values("id", ascending=False)
    kinds = {str(k): int(n) for k, n in newest["kind"].value_counts(sort=False).items() if KIND_NAME.fullmatch(str(k))}
    if len(kinds) < 2:  # one kind: its page would be the index again
        kinds = {}
    columns = ["id", "kind", "name", "description", "status", "created_at"]
    lists = [(None, newest)] + [(k, newest[newest["kind"] == k]) for k in kinds]
    for kind, chosen in lists:
        for number in range(1, index_pages(len(chosen)) + 1):
            page_exps = chosen.iloc[(number - 1) * PER_PAGE:number * PER_PAGE]
            ids = page_exps["id"].astype(int).tolist()
            page_counts = counts[counts["experiment_id"].isin(ids)]
            # An experiment whose pages were never written here (a live write into a new folder) has none.
            links = {i: [tuple(h) for h in manifest.links.get(str(i), [])] for i in ids}
            # Live only where something on it runs: the older pages of a long index keep no banner (and are
            # not rewritten twice, live and final, around every grid).
            page_live = live and bool((page_exps["status"] == "running").any())
            mark = (page_live, refresh_s if page_live else None)
            stamp = digest(tuple(page_exps[columns].itertuples(index=False, name=None)),
                           tuple(page_counts.sort_values(["experiment_id", "status"]).itertuples(index=False, name=None)),
                           tuple(sorted(links.items())), number, len(chosen), tuple(kinds.items()), totals, mark)
            name = index_name(kind, number)
            if manifest.fresh(name, stamp):
                done.unchanged += 1
                continue
            points = rep.read_run_points(store, ids) if ids else pd.DataFrame()
            html = index_page(db, page_exps, page_counts, points, links, number=number, kind=kind, matching=len(chosen),
                              kinds=kinds, totals=totals)
            write(name, html, stamp, page_live)


def write_dashboards(db: str, out: Path | str = "dashboards", *, compare: list[int] | None = None, live: bool = False,
                     refresh_s: float = 30, all: bool = False, experiments: Iterable[int] | None = None) -> Path:
    """`write_pages`, returning only the path of index.html (or of compare.html when `compare` run ids are given)."""
    return write_pages(db, out, compare=compare, live=live, refresh_s=refresh_s, all=all, experiments=experiments).path


__all__ = ["MANIFEST", "Manifest", "Written", "digest", "write_dashboards", "write_pages"]
