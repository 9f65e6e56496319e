"""Plotly dashboards: HTML pages written from the results database, and nothing else.

`write_dashboards(db, out)` is a pure function of the database: it reads the rows, builds Plotly
figures and writes simple pages around them, with plotly.js written once into the folder
(`plotly.min.js`) so every page opens offline from file://. It writes only the pages whose rows
changed since they were written (`write.py`: a stamp per page in `out/.pages.json`); `all=True`
rewrites every page; `write_pages` returns what was written and what was left unchanged.

Pages: index.html (the newest experiments; index-2.html, ... older ones; index-<kind>.html per kind),
experiment-<id>.html (its runs, curves overlaid), before_after-<id>.html (benchmarks: grouped bars +
the table), sensitivity-<id>.html (benchmarks with an lr axis), ablate-<id>.html, sweep-<id>.html
(Optuna's figures from the study in the same database + a trial table), run-<id>.html (the four panels
of the fine-tuning write-up (61-class plant disease); the per-class accuracy, confusion matrix and
prediction grid of the ViT-Tiny-on-CIFAR-10 CPU guide), compare.html (--compare).
Which pages an experiment gets beside its experiment page: `pages.KIND_PAGES`, by kind.

Live pages: while work runs, `LivePages` (the grid driver, on a background thread) and `watch`
(`harness report --watch`) write with live=True: the pages of running experiments and the index pages
that list one carry a "running — updated HH:MM:SS" banner and a `<meta http-equiv="refresh">`, so an
open browser tab reloads them; the final write (live=False) leaves both out. Each page is replaced
atomically, so a reload never sees half a page.

The rooms: `markup.py` (the page shell, escaping, tables), `figures.py`, `pages.py` (one builder per
page, the kind registry), `index.py` (the paginated index), `write.py` (stamps, what is stale,
writing), `live.py` (the background writer and the watch).
"""

from __future__ import annotations

from harness.dashboards.figures import (
    before_after_figure,
    curves_figure,
    evaluation_figures,
    overview_figure,
    sensitivity_figure,
    thin,
    waterfall_figure,
)
from harness.dashboards.index import PER_PAGE, compare_page, index_name, index_page
from harness.dashboards.live import LivePages, running_experiments, watch
from harness.dashboards.markup import PLOTLY_JS, Raw, esc, fig_html, link, mark_live, page, table, write_plotlyjs
from harness.dashboards.pages import (
    KIND_PAGES,
    ablate_page,
    before_after_page,
    experiment_page,
    quiet_optuna,
    run_page,
    sensitivity_page,
    sweep_page,
)
from harness.dashboards.write import MANIFEST, Written, write_dashboards, write_pages

__all__ = ["KIND_PAGES", "MANIFEST", "PER_PAGE", "PLOTLY_JS", "LivePages", "Raw", "Written", "ablate_page",
           "before_after_figure", "before_after_page", "compare_page", "curves_figure", "esc", "evaluation_figures",
           "experiment_page", "fig_html", "index_name", "index_page", "link", "mark_live", "overview_figure", "page",
           "quiet_optuna", "run_page", "running_experiments", "sensitivity_figure", "sensitivity_page", "sweep_page",
           "table", "thin", "waterfall_figure", "watch", "write_dashboards", "write_pages", "write_plotlyjs"]
