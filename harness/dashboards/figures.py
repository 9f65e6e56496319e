"""The figures of the pages. A run's curves and its evaluation are figure dicts built here (no
go.Figure: validating every trace is most of a run page's cost, and there is one page per run); the
experiment-level figures (before/after, lr sensitivity, waterfall, overview) are go.Figures, one per page.

A curve of thousands of epochs is thinned to `MAX_POINTS` per trace (first, last and best epoch kept):
a browser draws 500 points as fast as 20, and the page stays small however long the run.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from harness import sensitivity
from harness.dashboards.markup import PALETTE, esc

# The overfitting colour codes of the fine-tuning write-up (61-class plant disease) for the train-val
# gap in points: < 5 good fit (green), 5-10 slight overfitting (orange), > 10 overfitting (red).
GAP_OK, GAP_WARN = 5.0, 10.0
GAP_COLORS = {"ok": "#2ca02c", "warn": "#ff7f0e", "bad": "#d62728"}
WEAK_CLASS_ACC = 50.0  # harness choice: per-class accuracy % drawn red below this (most of the class missed)
# Harness choice: points per trace at most. A screen 1,400 px wide shows no more detail than ~500 points
# per curve, and a run page of 10,000 epochs would otherwise carry ~2 MB of numbers.
MAX_POINTS = 500
# The layout keys of plotly's default template a hand-built figure takes (colours, grid, fonts), so it
# looks like the go.Figures beside it without carrying the whole template (~8 kB) in every figure.
TEMPLATE_KEYS = ("colorway", "font", "paper_bgcolor", "plot_bgcolor", "hovermode", "hoverlabel", "title")
AXIS_KEYS = ("gridcolor", "linecolor", "ticks", "zerolinecolor", "zerolinewidth", "automargin", "title")


def _warmup(params: Any) -> float:
    try:
        return float(params["recipe"]["warmup_epochs"])
    except (KeyError, TypeError, ValueError):
        return 0.0


def gap_color(gap: float) -> str:
    return GAP_COLORS["ok"] if gap < GAP_OK else GAP_COLORS["warn"] if gap <= GAP_WARN else GAP_COLORS["bad"]


def thin(ep: pd.DataFrame, max_points: int = MAX_POINTS) -> pd.DataFrame:
    """At most `max_points` rows of one run's epochs (sorted by epoch), evenly spread, keeping the first,
    the last and the best-val-accuracy epoch (the star of the accuracy panel must sit on its curve)."""
    if len(ep) <= max_points:
        return ep
    keep = set(np.linspace(0, len(ep) - 1, max_points - 1).round().astype(int).tolist())
    val = pd.to_numeric(ep["val_acc"], errors="coerce").to_numpy()
    if not np.isnan(val).all():
        keep.add(int(np.nanargmax(val)))
    return ep.iloc[sorted(keep)]


def _floats(values: Any, scale: float = 1.0) -> list:
    """A column as a JSON-ready list (None for missing), optionally scaled."""
    arr = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=float) * scale
    return [None if math.isnan(v) else float(v) for v in arr]


@functools.cache
def _template() -> dict:
    import plotly.io as pio

    layout = pio.templates[pio.templates.default].layout.to_plotly_json()
    out = {k: layout[k] for k in TEMPLATE_KEYS if k in layout}
    for axis in ("xaxis", "yaxis"):
        out[axis] = {k: v for k, v in layout.get(axis, {}).items() if k in AXIS_KEYS}
    return out


@functools.cache
def _grid(single: bool) -> dict:
    """The 2 x 2 layout of the curves (axis domains, panel titles), made once by make_subplots."""
    fig = make_subplots(rows=2, cols=2, horizontal_spacing=0.08, vertical_spacing=0.14, subplot_titles=(
        "loss" if single else "loss (train dotted, val solid)", "accuracy % (★ best epoch)",
        "learning rate (| warmup end)", "train − val gap (points)"))
    return fig.to_plotly_json()["layout"]


def _styled(layout: dict) -> dict:
    """`layout` over the template's look: each axis gets the template's axis style under its own keys."""
    t = _template()
    out = {k: v for k, v in t.items() if k not in ("xaxis", "yaxis")}
    for key, value in layout.items():
        base = t["xaxis"] if key.startswith("xaxis") else t["yaxis"] if key.startswith("yaxis") else None
        out[key] = {**base, **value} if base is not None and isinstance(value, dict) else value
    return out


def curves_figure(runs: pd.DataFrame, epochs: pd.DataFrame, title: str) -> dict:
    """The four panels of the fine-tuning write-up (61-class plant disease), as a figure dict. One run:
    train/val curves, best epoch marked, warmup end marked, gap bars coloured by size. Several runs: one
    colour per run, val solid, train dotted, gap lines over green/orange/red bands."""
    single = len(runs) == 1
    grid = _grid(single)
    cell = {(1, 1): ("x", "y"), (1, 2): ("x2", "y2"), (2, 1): ("x3", "y3"), (2, 2): ("x4", "y4")}
    data: list[dict] = []
    shapes: list[dict] = []
    annotations = list(grid.get("annotations", []))

    def add(row: int, col: int, **trace: Any) -> None:
        x, y = cell[row, col]
        data.append({"type": "scatter", **trace, "xaxis": x, "yaxis": y})

    warmups = set()
    for i, (_, run) in enumerate(runs.iterrows()):
        ep = thin(epochs[epochs["run_id"] == run["id"]].sort_values("epoch"))
        name = esc(f"#{run['id']} {run['label']} / {run['recipe']} / seed {run['seed']}")
        color = PALETTE[i % len(PALETTE)]
        group = f"run{run['id']}"
        x = [int(e) for e in ep["epoch"]]
        common = dict(legendgroup=group, mode="lines+markers", marker=dict(size=4))
        train_loss, val_loss = _floats(ep["train_loss"]), _floats(ep["val_loss"])
        train_acc, val_acc = _floats(ep["train_acc"], 100), _floats(ep["val_acc"], 100)
        gap = [None if a is None or b is None else a - b for a, b in zip(train_acc, val_acc)]
        if single:
            add(1, 1, x=x, y=train_loss, name="train loss", line=dict(color=PALETTE[0], dash="dot"), **common)
            add(1, 1, x=x, y=val_loss, name="val loss", line=dict(color=PALETTE[1]), **common)
            add(1, 2, x=x, y=train_acc, name="train acc", line=dict(color=PALETTE[0], dash="dot"), **common)
            add(1, 2, x=x, y=val_acc, name="val acc", line=dict(color=PALETTE[1]), **common)
        else:
            add(1, 1, x=x, y=val_loss, name=name, line=dict(color=color), **common)
            add(1, 1, x=x, y=train_loss, name=name, line=dict(color=color, dash="dot"), showlegend=False, **common)
            add(1, 2, x=x, y=val_acc, name=name, line=dict(color=color), showlegend=False, **common)
            add(1, 2, x=x, y=train_acc, name=name, line=dict(color=color, dash="dot"), showlegend=False, opacity=0.5, **common)
        scored = [(v, e) for v, e in zip(val_acc, x) if v is not None]
        if scored:
            best, at = max(scored, key=lambda p: (p[0], -p[1]))  # the first epoch that reached the best
            add(1, 2, x=[at], y=[best], mode="markers+text" if single else "markers",
                marker=dict(symbol="star", size=14, color="gold", line=dict(color="black", width=1)),
                text=[f"best {best:.1f}% @ {at}"], textposition="bottom right",
                name=f"best epoch {at}" if single else name, legendgroup=group, showlegend=single)
        add(2, 1, x=x, y=_floats(ep["lr"]), name="lr" if single else name, line=dict(color=PALETTE[2] if single else color),
            showlegend=single, **common)
        if single:
            data.append({"type": "bar", "x": x, "y": gap, "xaxis": "x4", "yaxis": "y4",
                         "marker": {"color": [gap_color(g) if g is not None else "#999" for g in gap]},
                         "name": "gap (green < 5, orange 5–10, red > 10)"})
        else:
            add(2, 2, x=x, y=gap, name=name, line=dict(color=color), showlegend=False, **common)
        w = _warmup(run["params"])
        if w > 0:
            warmups.add(w)
    for w in sorted(warmups):
        shapes.append(dict(type="line", x0=w, x1=w, xref="x3", y0=0, y1=1, yref="y3 domain",
                           line=dict(color="#555", dash="dash", width=1)))
        annotations.append(dict(x=w, xref="x3", y=1, yref="y3 domain", showarrow=False, xanchor="left", yanchor="top",
                                text=f"warmup end ({w:g})" if len(warmups) == 1 else f"{w:g}", font=dict(size=10)))
    if single:
        for y, key in ((GAP_OK, "warn"), (GAP_WARN, "bad")):
            shapes.append(dict(type="line", x0=0, x1=1, xref="x4 domain", y0=y, y1=y, yref="y4",
                               line=dict(color=GAP_COLORS[key], dash="dot", width=1)))
    else:
        for lo, hi, key in ((-100, GAP_OK, "ok"), (GAP_OK, GAP_WARN, "warn"), (GAP_WARN, 100, "bad")):
            shapes.append(dict(type="rect", x0=0, x1=1, xref="x4 domain", y0=lo, y1=hi, yref="y4", fillcolor=GAP_COLORS[key],
                               opacity=0.08, line=dict(width=0), layer="below"))
    axes = {k: {**v, "tickformat": "d"} if k.startswith("xaxis") else dict(v) for k, v in grid.items() if k[1:5] == "axis"}
    for k in ("xaxis3", "xaxis4"):
        axes[k]["title"] = {"text": "epoch"}
    axes["yaxis3"]["type"] = "log"
    layout = _styled({**axes, "annotations": annotations, "shapes": shapes, "title": {"text": esc(title, 200)},
                      "height": 720, "legend": {"font": {"size": 10}}, "margin": {"t": 80, "r": 20}, "barmode": "overlay"})
    return {"data": data, "layout": layout}


def evaluation_figures(ev: dict) -> tuple[dict, dict]:
    """Per-class accuracy bars and the confusion matrix of a run's best checkpoint, as figure dicts."""
    names = [esc(n, 40) for n in ev["class_names"]]
    acc = [100 * float(a) for a in ev["per_class_acc"]]
    bar = {"data": [{"type": "bar", "x": names, "y": acc, "text": [f"{a:.0f}" for a in acc], "textposition": "outside",
                     "marker": {"color": [PALETTE[1] if a < WEAK_CLASS_ACC else PALETTE[0] for a in acc]}}],
           "layout": _styled({"title": {"text": f"per-class accuracy % (best checkpoint, epoch {ev.get('epoch')})"},
                              "yaxis": {"range": [0, 105]}, "xaxis": {"type": "category", "title": {"text": "class"}},
                              "height": 380})}
    z = ev["confusion"]
    heat = {"data": [{"type": "heatmap", "z": z, "x": names, "y": names, "colorscale": "Blues", "text": z,
                      "texttemplate": "%{text}", "hovertemplate": "true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>"}],
            "layout": _styled({"title": {"text": "confusion matrix (rows: true class, columns: predicted)"}, "height": 520,
                               "xaxis": {"title": {"text": "predicted"}, "type": "category"},
                               "yaxis": {"title": {"text": "true"}, "type": "category", "autorange": "reversed"}})}
    return bar, heat


def _error_bars(table: pd.DataFrame, side: str, metric: str) -> dict:
    """Test accuracy of one run: its 95% binomial interval over the test images (asymmetric); several seeds:
    ± sample std. Best-of-epochs (validation) has no binomial interval (it is a maximum): std over seeds only."""
    mean, std = table[f"{side}_{metric}_mean"], table[f"{side}_{metric}_std"].fillna(0)
    if metric == "acc":
        lo, hi = table[f"{side}_acc_lo"], table[f"{side}_acc_hi"]
        return dict(type="data", symmetric=False, array=(hi - mean).where(hi.notna(), std).fillna(0),
                    arrayminus=(mean - lo).where(lo.notna(), std).fillna(0), visible=True)
    return dict(type="data", array=std, visible=True)


def _bar_label(model: str, before: str | None, after: str | None, at: str) -> str:
    """A pair's axis label on short lines (plotly breaks at <br>): "resnet18", "(for resnet50)", "naive → cnn",
    and with an lr axis which lrs. It needs no slant, and neighbours do not run into each other."""
    name, _, stands = str(model).partition(" (")
    lines = (name, f"({stands}" if stands else "", f"{before or '-'} → {after or '-'}", at)
    return "<br>".join(esc(line) for line in lines if line)


def before_after_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """Grouped bars per model: before (naive) vs after (its recipe), test acc and best val acc. Error bars:
    one seed = the 95% binomial interval of the test accuracy, several = std over seeds (the page says so
    under the figure). The recipes are named on the axis, in the legend and in the hover, never inside
    the bars, where the error bars cross them."""
    # One panel over the other, sharing the pairs' axis: each gets the page's width, so a pair's label has
    # room at 900 px with an lr axis (two pairs per model).
    fig = make_subplots(rows=2, cols=1, subplot_titles=("test accuracy %", "best val accuracy % (optimistic)"),
                        shared_xaxes=True, vertical_spacing=0.1)
    # With an lr axis a pair has two rows: each recipe at its own lr, and each at its best lr in the grid.
    at = table["lrs"].map({"best": "each at its best lr"}).fillna("") if "lrs" in table else [""] * len(table)
    x = [_bar_label(*cells) for cells in zip(table["model"], table["before_recipe"], table["after_recipe"], at)]
    for row, metric in ((1, "acc"), (2, "best")):
        for side, color, label in (("before", "#9e9e9e", "before"), ("after", "#1f77b4", "after")):
            recipes = table[f"{side}_recipe"].fillna("-").astype(str)
            fig.add_bar(x=x, y=table[f"{side}_{metric}_mean"], name=f"{label}: " + ", ".join(esc(r) for r in dict.fromkeys(recipes)),
                        error_y=_error_bars(table, side, metric), marker_color=color, customdata=[esc(r) for r in recipes],
                        hovertemplate="%{x}<br>%{customdata}: %{y:.1f}%<extra></extra>", legendgroup=side,
                        showlegend=row == 1, row=row, col=1)
    fig.update_layout(barmode="group", title=esc(title, 200), height=640, yaxis=dict(range=[0, 100]), yaxis2=dict(range=[0, 100]))
    fig.update_xaxes(tickangle=0)
    return fig


def sensitivity_figure(runs: pd.DataFrame, points: pd.DataFrame, summary: pd.DataFrame, title: str) -> go.Figure:
    """Final test accuracy against lr (log x), one panel per model (`sensitivity.sensitivity`'s frames): per
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
        vline(sensitivity.NAIVE_LR, "naive lr (Adam 1e-3)", "#555", 94 - 7 * len(recipes), "naive lr (Adam 1e-3)",
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
    fig.update_yaxes(range=[0, 100], title_text="final test accuracy % (the lr is chosen on val)", col=1)
    fig.update_layout(title=esc(title, 200), height=140 + 400 * nrows, legend=dict(font=dict(size=11)), margin=dict(t=90, r=20))
    return fig


def waterfall_figure(table: pd.DataFrame, title: str) -> go.Figure:
    """add: a waterfall from the start's accuracy, one bar per ingredient's Δ, its 95% interval as an
    error bar at the bar's end. drop: one bar per ingredient, the Δ of removing it, with its interval."""
    modes = [m for m in ("add", "drop") if (table["mode"] == m).any()]
    fig = make_subplots(rows=1, cols=len(modes), subplot_titles=[
        "add: naive → recipe, one ingredient at a time (test acc %)" if m == "add" else
        "drop: full recipe minus one ingredient (Δ test acc, points)" for m in modes])
    for col, mode in enumerate(modes, start=1):
        t = table[table["mode"] == mode].sort_values("rung")
        steps = t[t["rung"] > 0]
        if mode == "add":
            x = ["naive"] + [f"+{i}" for i in steps["ingredient"]]
            y = [t["acc_mean"].iloc[0]] + steps["delta_prev"].tolist()
            fig.add_trace(go.Waterfall(x=x, y=y, measure=["absolute"] + ["relative"] * len(steps), name="add",
                                       text=[f"{v:.1f}" if i == 0 else f"{v:+.1f}" for i, v in enumerate(y)],
                                       textposition="outside", connector=dict(line=dict(color="#999"))), row=1, col=col)
            fig.add_scatter(x=x[1:], y=(t["acc_mean"].iloc[0] + steps["delta_prev"].cumsum()).tolist(), mode="markers",
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


def overview_figure(exps: pd.DataFrame, runs: pd.DataFrame) -> go.Figure:
    """One point per run, one row per experiment: where every result stands at a glance, in what the
    tables report (test accuracy of the final weights); a run without a test score (running, or data
    without a test split) at its latest val accuracy, hollow."""
    names = {int(e["id"]): esc(f"#{int(e['id'])} {e['kind']}: {e['name']}", 60) for _, e in exps.iterrows()}
    fig = go.Figure()
    for status_, group in runs.groupby("status", sort=True):
        test = pd.to_numeric(group["test_acc"], errors="coerce")
        on_test = test.notna()
        acc = test.where(on_test, pd.to_numeric(group["final_val_acc"], errors="coerce"))
        split = on_test.map({True: "test", False: "latest val"})
        fig.add_scatter(x=100 * acc, y=[names.get(int(i), str(i)) for i in group["experiment_id"]],
                        mode="markers", name=esc(status_),
                        marker=dict(size=10, opacity=0.8, symbol=["circle" if t else "circle-open" for t in on_test]),
                        text=[esc(f"run #{int(r['id'])}: {r['label']} / {r['recipe']} / seed {r['seed']}") for _, r in group.iterrows()],
                        customdata=split, hovertemplate="%{text}<br>%{customdata} %{x:.1f}%<extra></extra>")
    fig.update_layout(xaxis=dict(title="test accuracy % (hollow: latest val, no test score yet)", range=[0, 100]),
                      yaxis=dict(type="category"), height=max(260, 60 + 40 * len(exps)), margin=dict(l=20, t=30))
    return fig


def lr_range_figure(curve: Any, title: str) -> go.Figure:
    """The doctor's lr range test (`doctor.LrCurve`): loss vs lr (log x), raw and smoothed, with the
    suggestion and the recipe's lr marked."""
    fig = go.Figure()
    fig.add_scatter(x=curve.lr, y=curve.loss, mode="markers", name="loss", opacity=0.4)
    fig.add_scatter(x=curve.lr, y=curve.smoothed, mode="lines", name="smoothed loss")
    for lr, label, dash in ((curve.suggested_lr, "steepest descent", "dash"), (curve.min_loss_lr, "lowest loss", "dot"),
                            (curve.recipe_lr, "recipe lr (at this batch)", "solid")):
        if lr:
            fig.add_vline(x=lr, line_dash=dash, annotation_text=f"{label} {lr:.2g}")
    finite = [v for v in curve.smoothed if v is not None and math.isfinite(v)]
    if finite:  # keep the divergence spike from flattening the interesting part
        fig.update_yaxes(range=[0, 1.5 * max(finite[: max(3, len(finite) * 9 // 10)])])
    fig.update_layout(title=title, xaxis_title="learning rate", yaxis_title="training loss", xaxis_type="log",
                      template="plotly_white")
    return fig
