"""The index: the experiments newest first, `PER_PAGE` to a page (index.html, index-2.html, ...), and
the same per kind (index-benchmark.html, index-benchmark-2.html, ...), each with a name filter; and the
compare page. A database of hundreds of experiments gets pages of a fixed size, not one table (and one
figure) of everything.
"""

from __future__ import annotations

import math
import re

import pandas as pd

from harness.dashboards.figures import curves_figure, overview_figure
from harness.dashboards.markup import Raw, esc, fig_html, link, page, pct, status, table
from harness.dashboards.pages import runs_table
from harness.store import shown_url

# Harness choice: experiments per index page. 50 rows and their overview figure (one row per
# experiment, one point per run) open at once and fit a few screens; older ones are a click away.
PER_PAGE = 50
# Kinds that get their own index pages: the file name is made of the kind, so only plain names.
KIND_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")

# A few lines of script: typing in the box hides the rows of this page whose text does not contain it.
FILTER = ('<p><input id="filter" type="search" placeholder="filter this page by name, kind, status…" size="40" '
          'oninput="var q=this.value.toLowerCase();document.querySelectorAll(\'table.experiments tbody tr\')'
          '.forEach(function(r){r.style.display=r.textContent.toLowerCase().indexOf(q)<0?\'none\':\'\'})"></p>')


def index_name(kind: str | None = None, number: int = 1) -> str:
    """index.html, index-2.html, ...; index-<kind>.html, index-<kind>-2.html, ..."""
    stem = "index" if kind is None else f"index-{kind}"
    return f"{stem}.html" if number == 1 else f"{stem}-{number}.html"


def index_pages(total: int) -> int:
    return max(1, math.ceil(total / PER_PAGE))


def index_page(db: str, exps: pd.DataFrame, counts: pd.DataFrame, runs: pd.DataFrame, links: dict[int, list[tuple[str, str]]],
               *, number: int = 1, kind: str | None = None, matching: int | None = None, kinds: dict[str, int] | None = None,
               totals: tuple[int, int] = (0, 0)) -> str:
    """One index page: `exps` (this page's experiments, newest first), `counts` (experiment_id, status,
    n, best: their runs per status), `runs` (their runs, for the overview figure), `links` (each
    experiment's pages), page `number` of the `matching` experiments (of `kind`, or all). Like the tables, it
    reports test accuracy: the best run's final weights on the test split (validation only chooses)."""
    n_exps, n_runs = totals
    body = f"<h1>harness results</h1><p class='muted'>database {esc(shown_url(db))}</p>"
    if n_exps == 0:
        body += ("<div class='empty'><b>Nothing yet.</b> This database holds no experiments. Run "
                 "<code>harness benchmark</code>, <code>harness sweep STUDY.yaml</code> or <code>harness train --model …</code>, "
                 "then <code>harness report</code> again.</div>")
        return page("harness results: nothing yet", body, plots=False, nav=False)
    matching = n_exps if matching is None else matching
    pages = index_pages(matching)
    kinds = kinds or {}
    menu = [link(index_name(), f"all ({n_exps})") if kind is not None else Raw(f"<b>all ({n_exps})</b>")]
    menu += [Raw(f"<b>{esc(k)} ({n})</b>") if k == kind else link(index_name(k), f"{k} ({n})") for k, n in kinds.items()]
    body += f"<p>{n_exps} experiments, {n_runs} runs. Newest first; kind: " + " · ".join(menu) + "</p>"
    nav = []
    if number > 1:
        nav.append(link(index_name(kind, number - 1), "← newer"))
    nav.append(Raw(f"page {number} of {pages}"))
    if number < pages:
        nav.append(link(index_name(kind, number + 1), "older →"))
    pager = "<p class='pager'>" + " · ".join(nav) + "</p>" if pages > 1 else ""
    rows = []
    for _, e in exps.iterrows():
        eid = int(e["id"])
        c = counts[counts["experiment_id"] == eid]
        text = ", ".join(f"{int(n)} {s}" for s, n in sorted(zip(c["status"], c["n"]), key=lambda p: -p[1])) or "none"
        best = pd.to_numeric(c["best"], errors="coerce").max() if not c.empty else math.nan
        made = links.get(eid, [(f"experiment-{eid}.html", "curves")])
        rows.append([eid, e["kind"], link(f"experiment-{eid}.html", e["name"]) if made else e["name"], e["description"],
                     status(e["status"]), text, pct(best), str(e["created_at"])[:19],
                     Raw(" · ".join(link(h, t) for h, t in made)) if made else "not written yet: harness report writes them"])
    body += pager + FILTER + table(["id", "kind", "name", "description", "status", "runs", "best test acc %", "started", "pages"],
                                   rows, cls="experiments") + pager
    if not runs.empty:
        body += ("<h2>Test accuracy of every run on this page</h2><p class='muted'>The final weights on the held-out test "
                 "split, as the tables report; hollow: no test score (yet), its latest validation accuracy instead.</p>"
                 + fig_html(overview_figure(exps, runs), "overview"))
    title = "harness results" + (f": {kind}" if kind else "") + (f", page {number}" if number > 1 else "")
    return page(title, body, nav=False)


def compare_page(runs: pd.DataFrame, epochs: pd.DataFrame) -> str:
    ids = ", ".join(f"#{int(i)}" for i in runs["id"])
    body = f"<h1>Compare runs {esc(ids)}</h1>" + runs_table(runs)
    if epochs.empty:
        body += "<p class='empty'>No epoch recorded yet for these runs.</p>"
    else:
        body += fig_html(curves_figure(runs, epochs, f"runs {ids}"), "curves-compare")
    return page(f"compare {ids}", body)
