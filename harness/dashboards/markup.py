"""The page shell and its parts: escaping, tables, links, the live banner, plotly.js once per folder.

Every string that came from a user (experiment names, descriptions, class names, errors) goes through
`esc()` before it reaches HTML or a Plotly label: names may hold markup or scripts.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from harness.files import write_text_atomic

PLOTLY_JS = "plotly.min.js"
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
MAX_SHOWN = 300  # characters of a user string shown in a table cell (the full text is on the experiment page)
CONFIG = {"displaylogo": False, "responsive": True}


class Raw(str):
    """HTML we built ourselves (already escaped): table cells that must not be escaped again."""


def esc(value: Any, limit: int | None = None) -> str:
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return html.escape(text, quote=True)


# A dash inside a header word ("train–val") is a line-break opportunity for the browser; word joiners
# (U+2060) around it keep the word whole, as `th`'s CSS keeps every other word whole.
_INNER_DASH = re.compile(r"(?<=\S)([-–])(?=\S)")


def header(text: Any) -> str:
    """A column header as a table shows it: its dashes joined to their word (not escaped here)."""
    return _INNER_DASH.sub("\u2060\\1\u2060", str(text))


def _cell(v: Any) -> str:
    if isinstance(v, Raw):
        return v
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return esc(v, MAX_SHOWN)


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    """A table (in a box that scrolls sideways when it is wider than the page: its headers never break
    inside a word) whose rows mix text with HTML we built (`Raw`: links, status badges). Written by hand
    because pandas' to_html escapes every cell or none, and the text cells must be escaped; a table
    of plain text goes through `frame_table`."""
    head = "".join(f"<th>{esc(header(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def frame_table(df: pd.DataFrame, cls: str = "") -> str:
    """A table of plain-text cells, written and escaped by pandas (long strings cut as in `table`)."""
    cells = df.map(lambda v: v[:MAX_SHOWN] + "…" if isinstance(v, str) and len(v) > MAX_SHOWN else v)
    cells.columns = [header(c) for c in cells.columns]
    with pd.option_context("display.max_colwidth", None):
        html_table = cells.to_html(index=False, escape=True, border=0, classes=cls or None, na_rep="",
                                   float_format="{:.4g}".format)
    return f'<div class="scroll">{html_table}</div>'



def link(href: str, text: Any) -> Raw:
    return Raw(f'<a href="{esc(href)}">{esc(text, MAX_SHOWN)}</a>')


def fig_html(fig: Any, div_id: str) -> str:
    """A figure's div and its Plotly.newPlot call. `fig` is a go.Figure or a figure dict ({data, layout})
    built by hand: a dict is not validated trace by trace, which is most of the time a Figure takes
    (about 0.1 s for a run's four panels, the cost of 10,000 run pages)."""
    import plotly.io as pio

    return pio.to_html(fig, full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG,
                       validate=not isinstance(fig, dict))


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem auto;max-width:1400px;padding:0 1rem;color:#222}
nav{margin-bottom:1rem;font-size:.9rem} nav a{margin-right:1rem}
h1{font-size:1.5rem;word-break:break-word} h2{font-size:1.2rem;margin-top:2rem}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top;max-width:40rem;overflow-wrap:break-word}
th{background:#f4f4f4;word-break:keep-all;overflow-wrap:normal;hyphens:none}
.legend{font-size:.85rem;margin:.25rem 0 1rem} .legend ul{margin:.25rem 0;padding-left:1.25rem} .legend details p{max-width:60rem}
.muted{color:#777} .note{background:#fff8e1;border-left:4px solid #ffb300;padding:.5rem 1rem}
.empty{font-size:1.2rem;padding:2rem;background:#f4f4f4;border-radius:6px}
.grid{display:flex;flex-wrap:wrap;gap:.5rem} .grid figure{margin:0;text-align:center;font-size:.75rem;border:3px solid #2ca02c;padding:2px}
.grid figure.wrong{border-color:#d62728} .grid img{width:64px;height:64px;image-rendering:pixelated;display:block}
pre{background:#f7f7f7;padding:.5rem;overflow:auto;max-height:20rem;white-space:pre-wrap;word-break:break-word}
.live{position:sticky;top:0;z-index:10;background:#e3f2fd;border-left:4px solid #1e88e5;padding:.4rem 1rem;margin:0 0 1rem}
.status-completed{color:#2ca02c}.status-diverged,.status-failed{color:#d62728}.status-stopped,.status-interrupted,.status-time_limit{color:#ff7f0e}
"""


def page(title: str, body: str, *, plots: bool = True, nav: bool = True) -> str:
    script = f'<script src="{PLOTLY_JS}" charset="utf-8"></script>' if plots else ""
    back = '<nav><a href="index.html">← all experiments</a></nav>' if nav else ""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title, 200)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{script}<style>{STYLE}</style></head>'
            f'<body>{back}{body}</body></html>\n')


def mark_live(html_page: str, *, refresh_s: float, stamp: str) -> str:
    """A page made by `page()` as a live one: a meta refresh (the browser reloads it every
    `refresh_s` seconds, whole seconds) and a banner saying when it was written (`stamp`, HH:MM:SS)."""
    every = max(1, round(refresh_s))
    refresh = f'<meta http-equiv="refresh" content="{every}">'
    banner = (f'<p class="live" role="status"><b>running — updated {esc(stamp)}</b> '
              f'<span class="muted">· this page reloads every {every} s until the work ends</span></p>')
    return html_page.replace("<head>", "<head>" + refresh, 1).replace("<body>", "<body>" + banner, 1)


def write_plotlyjs(out: Path) -> None:
    """plotly.js once per folder (3.5 MB) instead of inside every page, rewritten when the installed
    plotly's differs. Not plotly's include_plotlyjs="directory": that mode puts a <script> tag in
    every figure (a run page has three) and writes the bundle only from write_html of a whole page,
    and only when none is there (a stale copy outlives a plotly upgrade). The doctor's single-figure
    page does use it."""
    from plotly.offline import get_plotlyjs

    target = out / PLOTLY_JS
    js = get_plotlyjs()
    if not target.is_file() or target.stat().st_size != len(js.encode("utf-8")):
        write_text_atomic(target, js)


def status(s: Any) -> Raw:
    return Raw(f'<span class="status-{esc(s)}">{esc(s)}</span>')


def pct(v: Any) -> str:
    return "" if v is None or pd.isna(v) else f"{100 * float(v):.1f}"
