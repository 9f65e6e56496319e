"""Plotly dashboards: HTML pages written from the results database, and nothing else.

`write_dashboards(db, out)` is a pure function of the database: it reads the rows, builds Plotly
figures and writes simple pages around them (`fig.to_html(full_html=False)`), with plotly.js
written once into the folder (`plotly.min.js`) so every page opens offline from file://.

Pages: index.html (every experiment), experiment-<id>.html (its runs, curves overlaid),
before_after-<id>.html (benchmarks: grouped bars + the table), sensitivity-<id>.html (benchmarks
with an lr axis: accuracy against lr per recipe, every seed a dot, + its tables), sweep-<id>.html
(Optuna's figures from the study in the same database + a trial table), run-<id>.html (seed 003's
four panels, seed 002's per-class accuracy, confusion matrix and prediction grid), compare.html
(--compare).

Live pages: while work runs, `write_dashboards(db, out, live=True)` (the grid driver every ~30 s,
`harness report --watch`) marks every page it writes with a "running — updated HH:MM:SS" banner
and a `<meta http-equiv="refresh">`, so an open browser tab reloads it; the final write
(live=False) leaves both out. Each page is replaced atomically, so a reload never sees half a page.

Every string that came from a user (experiment names, descriptions, class names, errors) goes
through `esc()` before it reaches HTML or a Plotly label: names may hold markup or scripts.

Length (~700 lines): one builder per page kind (index, experiment, sweep, run, before/after, lr
sensitivity, ablation, compare) and the live/watch mode, sharing the page shell, the escaping and the table helpers.
"""

from __future__ import annotations

import html
import math
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from harness import report as rep
from harness import sensitivity
from harness.files import check_out_dir, write_text_atomic
from harness.models import stand_in_label
from harness.store import Store, shown_url

PLOTLY_JS = "plotly.min.js"
# Seed 003's overfitting colour codes for the train-val gap in points: < 5 good fit (green), 5-10
# slight overfitting (orange), > 10 overfitting (red).
GAP_OK, GAP_WARN = 5.0, 10.0
GAP_COLORS = {"ok": "#2ca02c", "warn": "#ff7f0e", "bad": "#d62728"}
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
WEAK_CLASS_ACC = 50.0  # harness choice: per-class accuracy % drawn red below this (most of the class missed)
MAX_SHOWN = 300  # characters of a user string shown in a table cell (the full text is on the experiment page)
CONFIG = {"displaylogo": False, "responsive": True}


class Raw(str):
    """HTML we built ourselves (already escaped): table cells that must not be escaped again."""


def esc(value: Any, limit: int | None = None) -> str:
    text = "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return html.escape(text, quote=True)


def _cell(v: Any) -> str:
    if isinstance(v, Raw):
        return v
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return esc(v, MAX_SHOWN)


def table(headers: Iterable[str], rows: Iterable[Iterable[Any]], cls: str = "") -> str:
    """A table whose rows mix text with HTML we built (`Raw`: links, status badges). Written by hand
    because pandas' to_html escapes every cell or none, and the text cells must be escaped; a table
    of plain text goes through `frame_table`."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def frame_table(df: pd.DataFrame, cls: str = "") -> str:
    """A table of plain-text cells, written and escaped by pandas (long strings cut as in `table`)."""
    cells = df.map(lambda v: v[:MAX_SHOWN] + "…" if isinstance(v, str) and len(v) > MAX_SHOWN else v)
    with pd.option_context("display.max_colwidth", None):
        return cells.to_html(index=False, escape=True, border=0, classes=cls or None, na_rep="",
                             float_format="{:.4g}".format)


def link(href: str, text: Any) -> Raw:
    return Raw(f'<a href="{esc(href)}">{esc(text, MAX_SHOWN)}</a>')


def fig_html(fig: go.Figure, div_id: str) -> str:
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=CONFIG)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem auto;max-width:1400px;padding:0 1rem;color:#222}
nav{margin-bottom:1rem;font-size:.9rem} nav a{margin-right:1rem}
h1{font-size:1.5rem;word-break:break-word} h2{font-size:1.2rem;margin-top:2rem}
table{border-collapse:collapse;font-size:.85rem;margin:.5rem 0} th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top;max-width:40rem;word-break:break-word}
th{background:#f4f4f4} .muted{color:#777} .note{background:#fff8e1;border-left:4px solid #ffb300;padding:.5rem 1rem}
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


# --- figures ------------------------------------------------------------------------------------

def _warmup(params: Any) -> float:
    try:
        return float(params["recipe"]["warmup_epochs"])
    except (KeyError, TypeError, ValueError):
        return 0.0


def gap_color(gap: float) -> str:
    return GAP_COLORS["ok"] if gap < GAP_OK else GAP_COLORS["warn"] if gap <= GAP_WARN else GAP_COLORS["bad"]


def curves_figure(runs: pd.DataFrame, epochs: pd.DataFrame, title: str) -> go.Figure:
    """Seed 003's four panels. One run: train/val curves, best epoch marked, warmup end marked, gap
    bars coloured by size. Several runs: one colour per run, val solid, train dotted, gap lines
    over green/orange/red bands."""
    single = len(runs) == 1
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.08, vertical_spacing=0.14, subplot_titles=(
        "loss (train dotted, val solid)" if not single else "loss", "accuracy % (★ best epoch)",
        "learning rate (| warmup end)", "train − val accuracy gap (points)"))
    warmups = set()
    for i, (_, run) in enumerate(runs.iterrows()):
        ep = epochs[epochs["run_id"] == run["id"]].sort_values("epoch")
        name = esc(f"#{run['id']} {run['label']} / {run['recipe']} / seed {run['seed']}")
        color = PALETTE[i % len(PALETTE)]
        group = f"run{run['id']}"
        x = ep["epoch"].tolist()
        common = dict(legendgroup=group, mode="lines+markers", marker=dict(size=4))
        if single:
            fig.add_scatter(x=x, y=ep["train_loss"], name="train loss", line=dict(color=PALETTE[0], dash="dot"), row=1, col=1, **common)
            fig.add_scatter(x=x, y=ep["val_loss"], name="val loss", line=dict(color=PALETTE[1]), row=1, col=1, **common)
            fig.add_scatter(x=x, y=100 * ep["train_acc"], name="train acc", line=dict(color=PALETTE[0], dash="dot"), row=1, col=2, **common)
            fig.add_scatter(x=x, y=100 * ep["val_acc"], name="val acc", line=dict(color=PALETTE[1]), row=1, col=2, **common)
        else:
            fig.add_scatter(x=x, y=ep["val_loss"], name=name, line=dict(color=color), row=1, col=1, **common)
            fig.add_scatter(x=x, y=ep["train_loss"], name=name, line=dict(color=color, dash="dot"), showlegend=False, row=1, col=1, **common)
            fig.add_scatter(x=x, y=100 * ep["val_acc"], name=name, line=dict(color=color), showlegend=False, row=1, col=2, **common)
            fig.add_scatter(x=x, y=100 * ep["train_acc"], name=name, line=dict(color=color, dash="dot"), showlegend=False,
                            row=1, col=2, opacity=0.5, **common)
        valid = ep.dropna(subset=["val_acc"])
        if not valid.empty:
            best = valid.loc[valid["val_acc"].idxmax()]
            fig.add_scatter(x=[best["epoch"]], y=[100 * best["val_acc"]], mode="markers+text" if single else "markers",
                            marker=dict(symbol="star", size=14, color="gold", line=dict(color="black", width=1)),
                            text=[f"best {100 * best['val_acc']:.1f}% @ {int(best['epoch'])}"], textposition="bottom right",
                            name=f"best epoch {int(best['epoch'])}" if single else name, legendgroup=group, showlegend=single,
                            row=1, col=2)
        fig.add_scatter(x=x, y=ep["lr"], name="lr" if single else name, line=dict(color=PALETTE[2] if single else color),
                        showlegend=single, row=2, col=1, **common)
        gap = 100 * (ep["train_acc"] - ep["val_acc"])
        if single:
            fig.add_bar(x=x, y=gap, marker_color=[gap_color(g) if pd.notna(g) else "#999" for g in gap],
                        name="gap (green < 5, orange 5–10, red > 10)", row=2, col=2)
        else:
            fig.add_scatter(x=x, y=gap, name=name, line=dict(color=color), showlegend=False, row=2, col=2, **common)
        w = _warmup(run["params"])
        if w > 0:
            warmups.add(w)
    for w in sorted(warmups):
        fig.add_vline(x=w, line=dict(color="#555", dash="dash", width=1), row=2, col=1,
                      annotation_text=f"warmup end ({w:g})" if len(warmups) == 1 else f"{w:g}", annotation_font_size=10)
    if not single:
        for lo, hi, key in ((-100, GAP_OK, "ok"), (GAP_OK, GAP_WARN, "warn"), (GAP_WARN, 100, "bad")):
            fig.add_hrect(y0=lo, y1=hi, fillcolor=GAP_COLORS[key], opacity=0.08, line_width=0, row=2, col=2)
    else:
        for y, key in ((GAP_OK, "warn"), (GAP_WARN, "bad")):
            fig.add_hline(y=y, line=dict(color=GAP_COLORS[key], dash="dot", width=1), row=2, col=2)
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_xaxes(title_text="epoch", row=2)
    fig.update_xaxes(tickformat="d")  # epochs are whole numbers
    fig.update_layout(title=esc(title, 200), height=720, legend=dict(font=dict(size=10)), margin=dict(t=80, r=20),
                      barmode="overlay")
    return fig


def _error_bars(table: pd.DataFrame, side: str, metric: str) -> dict:
    """Final accuracy of one run: its 95% binomial interval (asymmetric); several seeds: ± sample std.
    Best-of-epochs has no binomial interval (it is a maximum): std over seeds only."""
    mean, std = table[f"{side}_{metric}_mean"], table[f"{side}_{metric}_std"].fillna(0)
    if metric == "final":
        lo, hi = table[f"{side}_final_lo"], table[f"{side}_final_hi"]
        return dict(type="data", symmetric=False, array=(hi - mean).where(hi.notna(), std).fillna(0),
                    arrayminus=(mean - lo).where(lo.notna(), std).fillna(0), visible=True)
    return dict(type="data", array=std, visible=True)


def before_after_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """Grouped bars per model: before (naive) vs after (its recipe), final and best val acc. Error bars:
    one seed = the 95% binomial interval of the final accuracy, several = std over seeds."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("final val accuracy % (95% interval)", "best val accuracy %"),
                        horizontal_spacing=0.08)
    # With an lr axis a pair has two rows: each recipe at its own lr, and each at its best lr in the grid.
    at = table["lrs"].map({"best": " (each at its best lr)"}).fillna("") if "lrs" in table else [""] * len(table)
    x = [esc(f"{m} · {a or '-'}{w}") for m, a, w in zip(table["model"], table["after_recipe"], at)]
    for col, metric in ((1, "final"), (2, "best")):
        for side, color, label in (("before", "#9e9e9e", "before"), ("after", "#1f77b4", "after")):
            recipes = table[f"{side}_recipe"].fillna("-").astype(str)
            fig.add_bar(x=x, y=table[f"{side}_{metric}_mean"], name=f"{label}: " + ", ".join(esc(r) for r in dict.fromkeys(recipes)),
                        error_y=_error_bars(table, side, metric),
                        marker_color=color, text=[esc(r) for r in recipes], textposition="inside",
                        hovertemplate="%{x}<br>%{text}: %{y:.1f}%<extra></extra>", legendgroup=side, showlegend=col == 1,
                        row=1, col=col)
    fig.update_layout(barmode="group", title=esc(title, 200), height=480, yaxis=dict(range=[0, 100]), yaxis2=dict(range=[0, 100]))
    return fig


def sensitivity_figure(runs: pd.DataFrame, points: pd.DataFrame, summary: pd.DataFrame, title: str) -> go.Figure:
    """Final val accuracy against lr (log x), one panel per model (`sensitivity.sensitivity`'s frames): per
    recipe the seeds' median with its min–max band, every seed a dot (✕ collapsed or diverged, hollow not
    finished), chance dotted, each recipe's own lr dashed in its colour and the naive lr dash-dotted."""
    models, recipes = list(dict.fromkeys(points["model"])), list(dict.fromkeys(points["recipe"]))
    color = {r: PALETTE[i % len(PALETTE)] for i, r in enumerate(recipes)}
    ncols = 2 if len(models) == 4 else min(len(models), 3)
    nrows = math.ceil(len(models) / ncols)
    fig = make_subplots(rows=nrows, cols=ncols, shared_yaxes=True, horizontal_spacing=0.03, vertical_spacing=0.12,
                        subplot_titles=[esc(m, 80) for m in models])

    def vline(x: float, text: str, c: str, y: float, hover: str, line: dict, **cell: int) -> None:
        fig.add_scatter(x=[x, x], y=[0, 100], mode="lines", name=text, line=line, showlegend=False,
                        hovertemplate=f"{hover}: %{{x:.3g}}<extra></extra>", **cell)
        fig.add_annotation(x=math.log10(x), y=y, text=text, showarrow=False, xanchor="left", xshift=2, font=dict(color=c, size=11),
                           bgcolor="rgba(255,255,255,0.8)", **cell)  # a log axis places annotations at log10(x)

    shown: set[str] = set()  # recipes already in the legend
    for i, model in enumerate(models):
        cell = dict(row=i // ncols + 1, col=i % ncols + 1)
        mine = runs[runs["model_label"] == model]
        vline(sensitivity.NAIVE_LR, "naive lr (seed 000)", "#555", 94 - 7 * len(recipes), "naive lr (seed 000)",
              dict(color="#bbb", dash="dashdot", width=4), **cell)  # under the own lrs: the naive recipe's is 1e-3 too
        for j, recipe in enumerate(recipes):
            p = points[(points["model"] == model) & (points["recipe"] == recipe)]
            if p.empty:
                continue
            c, name, first = color[recipe], esc(recipe, 60), recipe not in shown
            shown.add(recipe)
            fig.add_scatter(x=[*p["lr"], *p["lr"][::-1]], y=[*p["max"], *p["min"][::-1]], fill="toself", fillcolor=c,
                            opacity=0.15, line=dict(width=0), hoverinfo="skip", showlegend=False, legendgroup=name, **cell)
            fig.add_scatter(x=p["lr"], y=p["median"], mode="lines+markers", name=f"{name}: median [min–max]", legendgroup=name,
                            showlegend=first, line=dict(color=c, width=2.5), marker=dict(size=8, color=c),
                            customdata=p[["seeds", "min", "max", "collapsed", "diverged"]].to_numpy(),
                            hovertemplate=(f"<b>{name}</b> lr %{{x:.3g}}<br>median %{{y:.1f}}% [%{{customdata[1]:.1f}}–"
                                           "%{customdata[2]:.1f}] over %{customdata[0]} seeds<br>collapsed %{customdata[3]}, "
                                           "diverged %{customdata[4]}<extra></extra>"), **cell)
            r = mine[mine["recipe"] == recipe]
            k, n = r.groupby("lr").cumcount(), r.groupby("lr")["lr"].transform("size")
            jitter = 10 ** (0.03 * (j - (len(recipes) - 1) / 2) + 0.012 * (k - (n - 1) / 2))  # decades, so seeds don't overlap
            bad = r["collapsed"] | r["diverged"]
            fig.add_scatter(x=r["lr"] * jitter, y=r["acc"].fillna(r["acc_so_far"]), mode="markers", legendgroup=name, showlegend=False,
                            marker=dict(color=c, size=[11 if b else 7 for b in bad], opacity=0.8, line=dict(width=1, color=c),
                                        symbol=["x" if b else "circle-open" if s in ("running", "interrupted") else "circle"
                                                for b, s in zip(bad, r["status"])]),
                            customdata=list(zip(r["run_id"], r["seed"], r["lr"], r["status"].map(esc),
                                                ["collapsed" if cl else "" for cl in r["collapsed"]])),
                            hovertemplate=(f"{name} · run #%{{customdata[0]}} · seed %{{customdata[1]}}<br>lr %{{customdata[2]:.3g}}: "
                                           "%{y:.1f}%<br>%{customdata[3]} %{customdata[4]}<extra></extra>"), **cell)
            own = summary[(summary["model"] == model) & (summary["recipe"] == recipe)]["own_lr"]
            if not own.empty and pd.notna(own.iloc[0]):
                vline(float(own.iloc[0]), "own lr", c, 94 - 7 * j, f"{name}: own lr", dict(color=c, dash="dash", width=1.5), **cell)
        chance = 100 * float(mine["chance"].astype(float).median())
        if not math.isnan(chance):
            fig.add_hline(y=chance, line=dict(color="#777", dash="dot", width=1.5), annotation_text=f"chance {chance:.0f}%",
                          annotation_position="top left", annotation_font=dict(size=10, color="#777"), **cell)
    for sym, text in (("circle", "seed"), ("x", "seed collapsed or diverged")):
        fig.add_scatter(x=[None], y=[None], mode="markers", marker=dict(symbol=sym, color="#555", size=9), name=text)
    fig.update_xaxes(type="log", title_text="peak learning rate (at the run's batch; log scale)", exponentformat="e", dtick="D2")
    fig.update_yaxes(range=[0, 100], title_text="final val accuracy %", col=1)
    fig.update_layout(title=esc(title, 200), height=140 + 400 * nrows, legend=dict(font=dict(size=11)), margin=dict(t=90, r=20))
    return fig


def evaluation_figures(ev: dict) -> tuple[go.Figure, go.Figure]:
    names = [esc(n, 40) for n in ev["class_names"]]
    acc = [100 * float(a) for a in ev["per_class_acc"]]
    bar = go.Figure(go.Bar(x=names, y=acc, marker_color=[PALETTE[1] if a < WEAK_CLASS_ACC else PALETTE[0] for a in acc],
                           text=[f"{a:.0f}" for a in acc], textposition="outside"))
    bar.update_layout(title=f"per-class accuracy % (best checkpoint, epoch {ev.get('epoch')})", yaxis=dict(range=[0, 105]),
                      xaxis=dict(type="category", title="class"), height=380)
    z = ev["confusion"]
    heat = go.Figure(go.Heatmap(z=z, x=names, y=names, colorscale="Blues", text=z, texttemplate="%{text}",
                                hovertemplate="true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>"))
    heat.update_layout(title="confusion matrix (rows: true class, columns: predicted)", height=520,
                       xaxis=dict(title="predicted", type="category"),
                       yaxis=dict(title="true", type="category", autorange="reversed"))
    return bar, heat


def samples_grid(ev: dict) -> str:
    names = ev["class_names"]

    def name(i: Any) -> str:
        return str(names[i]) if isinstance(i, int) and 0 <= i < len(names) else str(i)

    samples = sorted(ev["samples"], key=lambda s: s.get("true") == s.get("pred"))  # mistakes first (stable)
    cells = []
    for s in samples:
        wrong = s.get("true") != s.get("pred")
        png = "".join(ch for ch in str(s.get("png", "")) if ch.isalnum() or ch in "+/=")  # base64 alphabet only
        cells.append(f'<figure class="{"wrong" if wrong else "right"}"><img alt="validation image" src="data:image/png;base64,{png}">'
                     f'<figcaption>pred {esc(name(s.get("pred")), 20)}<br>true {esc(name(s.get("true")), 20)}</figcaption></figure>')
    n_wrong = sum(s.get("true") != s.get("pred") for s in samples)
    return (f"<p>{len(samples)} validation images, {n_wrong} mistakes first (red border), then correct ones (green).</p>"
            f'<div class="grid">{"".join(cells)}</div>')


# --- pages --------------------------------------------------------------------------------------

def has_nodes(runs: pd.DataFrame) -> bool:
    """Whether any run says where it ran (schema v3); pages of older databases show no node columns."""
    return "node" in runs and bool(runs["node"].notna().any())


def gpus_text(gpus: Any) -> str:
    """The GPUs cell: "0: NVIDIA H100; 1: ..." as recorded, "CPU only" for "", blank when not recorded."""
    if not isinstance(gpus, str):
        return ""
    return gpus or "CPU only"


def node_text(r: pd.Series) -> str:
    """The node cell: the hostname, and the Ray node id's first 8 characters when Ray ran it (two
    nodes can share a hostname: several raylets on one machine, or containers)."""
    if not isinstance(r.get("node"), str):
        return ""
    node_id = r.get("node_id")
    return f"{r['node']} · {node_id[:8]}" if isinstance(node_id, str) and node_id else r["node"]


def where_cells(r: pd.Series, nodes: bool) -> list[str]:
    """The node and GPUs cells of a runs table row (none when no run of the table records a node)."""
    return [node_text(r), gpus_text(r["gpus"])] if nodes else []


WHERE_HEADERS = ["node", "GPUs"]


def where_line(run: pd.Series) -> str:
    """The run page's 'ran on' line (nothing when the run does not say where it ran)."""
    if not isinstance(run.get("node"), str):
        return ""
    ray_id = f" (Ray node {esc(run['node_id'][:12])}…)" if isinstance(run.get("node_id"), str) and run["node_id"] else ""
    return (f"<p class='where'>ran on <b>{esc(run['node'])}</b>{ray_id} · GPUs: {esc(gpus_text(run.get('gpus')))}"
            + (" · the latest epoch's node: a trial retried elsewhere shows where it ended" if ray_id else "") + "</p>")


def runs_table(runs: pd.DataFrame, summary: pd.DataFrame | None = None) -> str:
    nodes = has_nodes(runs)
    rows = []
    for _, r in runs.iterrows():
        rows.append([link(f"run-{int(r['id'])}.html", f"#{int(r['id'])}"), r["label"], r["recipe"], r["seed"], status(r["status"]),
                     pct(r["best_val_acc"]), r["best_epoch"] if pd.notna(r["best_epoch"]) else "", pct(r["final_val_acc"]),
                     r["epochs_done"], "" if pd.isna(r["wall_s"]) else f"{r['wall_s']:.0f}", *where_cells(r, nodes),
                     r["error"] or ""])
    return table(["run", "model (what ran)", "recipe", "seed", "status", "best val %", "best epoch", "final val %",
                  "epochs", "wall s", *(WHERE_HEADERS if nodes else []), "error"], rows)


def experiment_header(exp: pd.Series, runs: pd.DataFrame) -> str:
    counts = runs["status"].value_counts().to_dict() if not runs.empty else {}
    summary = ", ".join(f"{v} {esc(k)}" for k, v in counts.items()) or "no runs yet"
    desc = f"<p>{esc(exp['description'])}</p>" if exp["description"] else ""
    stand_ins = sorted({stand_in_label(m, s, short=True) for m, s in zip(runs.get("model", []), runs.get("stands_for", []))
                        if isinstance(s, str) and s})
    note = (f'<p class="note">CPU stand-ins ran (same family, smaller; not the full models): {esc(", ".join(stand_ins))}.</p>'
            if stand_ins else "")
    return (f"<h1>{esc(exp['kind'])} #{int(exp['id'])}: {esc(exp['name'])}</h1>{desc}"
            f"<p class='muted'>status {status(exp['status'])} · {summary} · device {esc(exp['device'])} · "
            f"started {esc(str(exp['created_at'])[:19])} UTC · harness {esc(exp['code_version'])}</p>{note}")


def experiment_page(exp: pd.Series, runs: pd.DataFrame, epochs: pd.DataFrame, *, lr_axis: bool = False) -> str:
    links = []
    if exp["kind"] == "benchmark":
        links.append(link(f"before_after-{int(exp['id'])}.html", "before/after table and bars"))
    if lr_axis:
        links.append(link(f"sensitivity-{int(exp['id'])}.html", "lr sensitivity: accuracy against learning rate"))
    if exp["kind"] == "sweep":
        links.append(link(f"sweep-{int(exp['id'])}.html", "Optuna figures and trial table"))
    if exp["kind"] == "ablate":
        links.append(link(f"ablate-{int(exp['id'])}.html", "ablation: waterfall and table"))
    body = experiment_header(exp, runs)
    if links:
        body += "<p>" + " · ".join(links) + "</p>"
    body += "<h2>Runs</h2>" + runs_table(runs)
    if not epochs.empty:
        body += "<h2>Training curves, overlaid</h2>" + fig_html(
            curves_figure(runs, epochs, f"{exp['name']}: all runs"), f"curves-exp-{int(exp['id'])}")
    else:
        body += "<p class='empty'>No epoch recorded yet.</p>"
    body += f"<h2>Spec</h2><pre>{esc(exp['spec'])}</pre>"
    return page(f"{exp['kind']} #{exp['id']}: {exp['name']}", body)


def table_section(title: str, legend: str, shown: pd.DataFrame, *, cls: str, stem: str, eid: int, curves: str) -> str:
    """A results table under its legend, then links to its Markdown and CSV copies (`stem`.md, .csv)
    and to the experiment page with the curves."""
    return (f"<h2>{esc(title)}</h2><p class='muted'>{esc(legend)}</p>" + frame_table(shown, cls)
            + f"<p>Also as {link(f'{stem}.md', 'Markdown')} and {link(f'{stem}.csv', 'CSV')}; "
            f"{esc(curves)}: {link(f'experiment-{eid}.html', 'experiment page')}.</p>")


def before_after_page(exp: pd.Series, runs: pd.DataFrame, table_df: pd.DataFrame, *, lr_axis: bool = False) -> str:
    eid = int(exp["id"])
    body = experiment_header(exp, runs)
    if lr_axis:
        body += f"<p>{link(f'sensitivity-{eid}.html', 'lr sensitivity: accuracy against learning rate, every seed')}</p>"
    if table_df.empty:
        body += "<p class='empty'>No runs recorded yet.</p>"
    else:
        body += fig_html(before_after_figure(table_df, f"{exp['name']}: before → after"), f"before-after-{eid}")
        body += table_section("Before/after table", rep.TABLE_LEGEND, rep.format_before_after(table_df), cls="before-after",
                              stem=f"before_after-{eid}", eid=eid, curves="curves of every run")
    return page(f"before/after: {exp['name']}", body)


def sensitivity_page(exp: pd.Series, runs: pd.DataFrame, sens: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> str:
    """Accuracy against lr per model x recipe over seeds (`sensitivity.save_sensitivity`'s frames), then its two tables."""
    eid, (lr_runs, points, summary) = int(exp["id"]), sens
    body = experiment_header(exp, runs) + f"<p>{link(f'before_after-{eid}.html', 'before/after table and bars')}</p>"
    body += fig_html(sensitivity_figure(lr_runs, points, summary, f"{exp['name']}: final accuracy against learning rate"),
                     f"sensitivity-{eid}")
    body += table_section("LR sensitivity per recipe", sensitivity.LEGEND, sensitivity.format_summary(summary), cls="sensitivity",
                          stem=f"sensitivity-{eid}", eid=eid, curves="curves of every run")
    body += "<h2>Per learning rate</h2>" + frame_table(sensitivity.format_curve(points), "sensitivity-lr")
    return page(f"lr sensitivity: {exp['name']}", body)


def waterfall_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """add: a waterfall from the start's accuracy, one bar per ingredient's Δ, its 95% interval as an
    error bar at the bar's end. drop: one bar per ingredient, the Δ of removing it, with its interval."""
    modes = [m for m in ("add", "drop") if (table["mode"] == m).any()]
    fig = make_subplots(rows=1, cols=len(modes), subplot_titles=[
        "add: naive → recipe, one ingredient at a time (val acc %)" if m == "add" else
        "drop: full recipe minus one ingredient (Δ val acc, points)" for m in modes])
    for col, mode in enumerate(modes, start=1):
        t = table[table["mode"] == mode].sort_values("rung")
        steps = t[t["rung"] > 0]
        if mode == "add":
            x = ["naive"] + [f"+{i}" for i in steps["ingredient"]]
            y = [t["final_mean"].iloc[0]] + steps["delta_prev"].tolist()
            fig.add_trace(go.Waterfall(x=x, y=y, measure=["absolute"] + ["relative"] * len(steps), name="add",
                                       text=[f"{v:.1f}" if i == 0 else f"{v:+.1f}" for i, v in enumerate(y)],
                                       textposition="outside", connector=dict(line=dict(color="#999"))), row=1, col=col)
            fig.add_scatter(x=x[1:], y=(t["final_mean"].iloc[0] + steps["delta_prev"].cumsum()).tolist(), mode="markers",
                            marker=dict(size=1, color="black"), name="95% interval of Δ", showlegend=col == 1,
                            error_y=dict(type="data", symmetric=False, array=(steps["delta_prev_hi"] - steps["delta_prev"]).tolist(),
                                         arrayminus=(steps["delta_prev"] - steps["delta_prev_lo"]).tolist(), color="black"),
                            row=1, col=col)
        else:
            fig.add_bar(x=[f"−{i}" for i in steps["ingredient"]], y=steps["delta_prev"], name="drop",
                        marker_color=["#d62728" if v < 0 else "#2ca02c" for v in steps["delta_prev"].fillna(0)],
                        error_y=dict(type="data", symmetric=False, array=(steps["delta_prev_hi"] - steps["delta_prev"]).tolist(),
                                     arrayminus=(steps["delta_prev"] - steps["delta_prev_lo"]).tolist()),
                        row=1, col=col)
    fig.update_layout(title=title, height=520, showlegend=True)
    return fig


def ablate_page(exp: pd.Series, runs: pd.DataFrame, table_df: pd.DataFrame) -> str:
    eid = int(exp["id"])
    body = experiment_header(exp, runs)
    if table_df.empty:
        return page(f"ablation: {exp['name']}", body + "<p class='empty'>No runs recorded yet.</p>")
    body += fig_html(waterfall_figure(table_df, esc(f"{exp['name']}: which ingredient matters")), f"waterfall-{eid}")
    body += ("<p class='note'>In <b>add</b> mode the order matters: an ingredient's Δ is measured on top of the ones "
             "before it, and ingredients interact (a warmup matters more at a high lr). <b>drop</b> mode — the full "
             "recipe minus one ingredient — is the check.</p>")
    body += table_section("Ladder", rep.ABLATION_LEGEND, rep.format_ablation(table_df), cls="ablate", stem=f"ablate-{eid}",
                          eid=eid, curves="every rung's curves overlaid")
    return page(f"ablation: {exp['name']}", body)


def sweep_page(db: str, exp: pd.Series, runs: pd.DataFrame) -> str:
    """optuna.visualization figures from the study named like the experiment, plus a trial table."""
    import yaml

    eid = int(exp["id"])
    body = experiment_header(exp, runs)
    try:
        spec = yaml.safe_load(exp["spec"] or "") or {}
    except yaml.YAMLError:
        spec = {}
    keys = list((spec.get("search") or {}).keys()) if isinstance(spec, dict) else []
    study, why = None, ""
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.load_study(study_name=exp["name"], storage=db)
    except Exception as e:  # noqa: BLE001 - a missing/foreign study is shown, not fatal
        why = f"{type(e).__name__}: {e}"
    if study is None:
        body += f"<p class='note'>No Optuna study named like this experiment in the database ({esc(why, 300)}).</p>"
    else:
        from optuna import visualization as vis

        figures = (("optimization history", vis.plot_optimization_history),
                   ("intermediate values (where ASHA stopped trials)", vis.plot_intermediate_values),
                   ("parallel coordinates", vis.plot_parallel_coordinate),
                   ("hyperparameter importances", vis.plot_param_importances),
                   ("slice", vis.plot_slice))
        for i, (title, make) in enumerate(figures):
            try:
                with warnings.catch_warnings():  # "too few trials for importances" etc.: the figure says enough
                    warnings.simplefilter("ignore")
                    fig = make(study)
                fig.update_layout(title=f"{title}: {esc(exp['name'], 100)}", height=460)
                body += f"<h2>{esc(title)}</h2>" + fig_html(fig, f"optuna-{eid}-{i}")
            except Exception as e:  # noqa: BLE001 - e.g. importances need >= 2 finished trials with varied params
                body += f"<h2>{esc(title)}</h2><p class='muted'>not available yet: {esc(e, 300)}</p>"
    nodes = has_nodes(runs)  # where each trial ran, once a database records it
    rows = []
    for _, r in runs.sort_values("best_val_acc", ascending=False, na_position="last").iterrows():
        recipe = (r["params"] or {}).get("recipe", {}) if isinstance(r["params"], dict) else {}
        rows.append([link(f"run-{int(r['id'])}.html", f"#{int(r['id'])}"),
                     "" if pd.isna(r["optuna_trial"]) else int(r["optuna_trial"]), status(r["status"]),
                     pct(r["best_val_acc"]), r["best_epoch"] if pd.notna(r["best_epoch"]) else "", r["epochs_done"],
                     *[recipe.get(k, "") for k in keys], *where_cells(r, nodes),
                     r["error"] or ""])
    body += "<h2>Trials (best first)</h2>" + table(["run", "optuna trial", "status", "best val %", "best epoch", "epochs",
                                                    *keys, *(WHERE_HEADERS if nodes else []), "error"], rows)
    body += f"<p>{link(f'experiment-{eid}.html', 'training curves of every trial')}</p>"
    return page(f"sweep: {exp['name']}", body)


def run_page(store: Store, run: pd.Series, epochs: pd.DataFrame, exp_name: str) -> str:
    rid = int(run["id"])
    title = f"run #{rid}: {run['label']} / {run['recipe']} / seed {run['seed']}"
    exp_link = link(f"experiment-{int(run['experiment_id'])}.html", exp_name)
    body = (f"<h1>{esc(title)}</h1><p class='muted'>experiment {exp_link} · "
            f"status {status(run['status'])} · best val {pct(run['best_val_acc'])}% at epoch "
            f"{'' if pd.isna(run['best_epoch']) else int(run['best_epoch'])} · final {pct(run['final_val_acc'])}% · "
            f"{int(run['epochs_done'])} epochs</p>") + where_line(run)
    if isinstance(run["stands_for"], str) and run["stands_for"]:
        body += f"<p class='note'>Ran: {esc(stand_in_label(run['model'], run['stands_for']))}.</p>"
    if run["error"]:
        body += f"<pre>{esc(run['error'])}</pre>"
    if epochs.empty:
        body += "<p class='empty'>No epoch recorded yet.</p>"
    else:
        one = run.to_frame().T
        body += fig_html(curves_figure(one, epochs, title), f"curves-run-{rid}")
        last = epochs.sort_values("epoch").iloc[-1]
        gap = 100 * (last["train_acc"] - last["val_acc"]) if pd.notna(last["train_acc"]) and pd.notna(last["val_acc"]) else math.nan
        if not math.isnan(gap):
            verdict = ("good fit (gap < 5 points)" if gap < GAP_OK else "slight overfitting (gap 5–10 points)"
                       if gap <= GAP_WARN else "overfitting (gap > 10 points): add regularisation")
            body += f"<p>Final train − val gap: <b style='color:{gap_color(gap)}'>{gap:+.1f} points</b>, {verdict}.</p>"
    ev = rep.read_evaluation(store, rid)
    if ev is None:
        body += "<p class='muted'>No evaluation stored (it is computed on the best checkpoint when a run ends).</p>"
    else:
        bar, heat = evaluation_figures(ev)
        body += "<h2>Evaluation of the best checkpoint</h2>" + fig_html(bar, f"per-class-{rid}") + fig_html(heat, f"confusion-{rid}")
        body += "<h2>Validation predictions</h2>" + samples_grid(ev)
    params = run["params"]
    if isinstance(params, dict):
        import yaml

        body += f"<h2>Resolved run spec</h2><pre>{esc(yaml.safe_dump(params, sort_keys=False))}</pre>"
    return page(title, body)


def index_page(db: str, exps: pd.DataFrame, runs: pd.DataFrame, made: dict[int, list[Raw]]) -> str:
    body = f"<h1>harness results</h1><p class='muted'>database {esc(shown_url(db))}</p>"
    if exps.empty:
        body += ("<div class='empty'><b>Nothing yet.</b> This database holds no experiments. Run "
                 "<code>harness benchmark</code>, <code>harness sweep STUDY.yaml</code> or <code>harness train --model …</code>, "
                 "then <code>harness report</code> again.</div>")
        return page("harness results: nothing yet", body, plots=False, nav=False)
    rows = []
    for _, e in exps.sort_values("id", ascending=False).iterrows():
        eid = int(e["id"])
        er = runs[runs["experiment_id"] == eid]
        counts = ", ".join(f"{v} {k}" for k, v in er["status"].value_counts().items()) or "none"
        best = er["best_val_acc"].max() if not er.empty else math.nan
        rows.append([eid, e["kind"], link(f"experiment-{eid}.html", e["name"]), e["description"], status(e["status"]),
                     counts, pct(best), str(e["created_at"])[:19], Raw(" · ".join(made.get(eid, [])))])
    body += (f"<p>{len(exps)} experiments, {len(runs)} runs.</p>"
             + table(["id", "kind", "name", "description", "status", "runs", "best val %", "started", "pages"], rows))
    if not runs.empty:
        body += "<h2>Best validation accuracy of every run</h2>" + fig_html(overview_figure(exps, runs), "overview")
    return page("harness results", body, nav=False)


def overview_figure(exps: pd.DataFrame, runs: pd.DataFrame) -> go.Figure:
    """One point per run (best val acc), one row per experiment: where every result stands at a glance."""
    names = {int(e["id"]): esc(f"#{int(e['id'])} {e['kind']}: {e['name']}", 60) for _, e in exps.iterrows()}
    fig = go.Figure()
    for status_, group in runs.groupby("status", sort=True):
        fig.add_scatter(x=100 * group["best_val_acc"].astype(float), y=[names.get(int(i), str(i)) for i in group["experiment_id"]],
                        mode="markers", name=esc(status_), marker=dict(size=10, opacity=0.8),
                        text=[esc(f"run #{int(r['id'])}: {r['label']} / {r['recipe']} / seed {r['seed']}") for _, r in group.iterrows()],
                        hovertemplate="%{text}<br>best val %{x:.1f}%<extra></extra>")
    fig.update_layout(xaxis=dict(title="best val accuracy %", range=[0, 100]), yaxis=dict(type="category"),
                      height=max(260, 60 + 40 * len(exps)), margin=dict(l=20, t=30))
    return fig


def compare_page(runs: pd.DataFrame, epochs: pd.DataFrame) -> str:
    ids = ", ".join(f"#{int(i)}" for i in runs["id"])
    body = f"<h1>Compare runs {esc(ids)}</h1>" + runs_table(runs)
    if epochs.empty:
        body += "<p class='empty'>No epoch recorded yet for these runs.</p>"
    else:
        body += fig_html(curves_figure(runs, epochs, f"runs {ids}"), "curves-compare")
    return page(f"compare {ids}", body)


def write_dashboards(db: str, out: Path | str = "dashboards", *, compare: list[int] | None = None,
                     live: bool = False, refresh_s: float = 30) -> Path:
    """Every page for the database at `db` into `out`; returns the path of index.html (or of
    compare.html when `compare` run ids are given). UserError, before writing, for a database that
    does not exist or is not harness's, and for a missing run id.

    `live`: the work is still running (another process writing `db`): every page carries the
    "running — updated HH:MM:SS" banner and reloads itself every `refresh_s` seconds; the final
    write, live=False, has neither."""
    out = Path(out)
    check_out_dir(out)
    stamp = time.strftime("%H:%M:%S")

    def write(name: str, html_page: str) -> Path:
        return write_text_atomic(out / name, mark_live(html_page, refresh_s=refresh_s, stamp=stamp) if live else html_page)

    store = rep.open_reader(db)
    try:
        if compare:
            rep.check_runs_exist(store, compare)
        exps = rep.read_experiments(store)
        runs = rep.read_runs(store)
        epochs = rep.read_epochs(store)
        out.mkdir(parents=True, exist_ok=True)
        write_plotlyjs(out)
        made: dict[int, list[Raw]] = {}
        for _, exp in exps.iterrows():
            eid = int(exp["id"])
            er = runs[runs["experiment_id"] == eid]
            ee = epochs[epochs["run_id"].isin(er["id"])]
            sens = sensitivity.save_sensitivity(store, eid, out) if exp["kind"] == "benchmark" else None
            lr_axis = sens is not None and not sens[1].empty  # a benchmark with an lr axis (`--lrs`)
            write(f"experiment-{eid}.html", experiment_page(exp, er, ee, lr_axis=lr_axis))
            made[eid] = [link(f"experiment-{eid}.html", "curves")]
            if exp["kind"] == "benchmark":
                _, _, tbl = rep.save_before_after(store, eid, out)
                write(f"before_after-{eid}.html", before_after_page(exp, er, tbl, lr_axis=lr_axis))
                made[eid] += [link(f"before_after-{eid}.html", "before/after"), link(f"before_after-{eid}.md", "md"),
                              link(f"before_after-{eid}.csv", "csv")]
            if lr_axis:
                write(f"sensitivity-{eid}.html", sensitivity_page(exp, er, sens))
                made[eid].append(link(f"sensitivity-{eid}.html", "lr sensitivity"))
            if exp["kind"] == "ablate":

                _, _, tbl = rep.save_ablation(store, eid, out)
                write(f"ablate-{eid}.html", ablate_page(exp, er, tbl))
                made[eid] += [link(f"ablate-{eid}.html", "ablation"), link(f"ablate-{eid}.md", "md"),
                              link(f"ablate-{eid}.csv", "csv")]
            if exp["kind"] == "sweep":
                write(f"sweep-{eid}.html", sweep_page(db, exp, er))
                made[eid].append(link(f"sweep-{eid}.html", "sweep"))
            for _, run in er.iterrows():
                write(f"run-{int(run['id'])}.html", run_page(store, run, ee[ee["run_id"] == run["id"]], exp["name"]))
        index = write("index.html", index_page(db, exps, runs, made))
        if compare:
            chosen = runs[runs["id"].isin(compare)].set_index("id").loc[list(dict.fromkeys(compare))].reset_index()
            return write("compare.html", compare_page(chosen, epochs[epochs["run_id"].isin(compare)]))
        return index
    finally:
        store.close()


def running_experiments(db: str) -> list[str]:
    """'benchmark #3'-style labels of the experiments in `db` whose status is still 'running'."""
    store = rep.open_reader(db)
    try:
        df = store.read_sql("SELECT id, kind FROM experiments WHERE status = 'running' ORDER BY id")
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
