"""One builder per page: experiment, before/after, lr sensitivity, ablation, sweep, run; and
`KIND_PAGES`, the registry that says which pages an experiment of each kind gets beside its
experiment page. Each builder returns the page's HTML; writing (and deciding what is stale) is
`write.py`'s.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness import sensitivity
from harness import tables as rep
from harness.dashboards.figures import (
    GAP_OK,
    GAP_WARN,
    before_after_figure,
    curves_figure,
    evaluation_figures,
    gap_color,
    sensitivity_figure,
    waterfall_figure,
)
from harness.dashboards.legend import ABLATION, BEFORE_AFTER, SENSITIVITY, legend_html
from harness.dashboards.markup import Raw, esc, fig_html, frame_table, link, page, pct, status, table
from harness.models import stand_in_label
from harness.store import Store

# Harness choice: runs drawn in an experiment page's overlaid curves at most (the best by val accuracy).
# Past a few dozen the lines are a blur, and a 1,000-trial sweep's page would carry every epoch of
# every trial (megabytes) and take a browser many seconds to draw; each run's page has its own curves.
MAX_OVERLAID = 30

_QUIET = threading.local()  # set while this thread builds a sweep page (see quiet_optuna)


class _PageThreadFilter(logging.Filter):
    """Drops Optuna's log records made by a thread while it builds a sweep page, and only those: the
    driver's own Optuna messages (another thread) still reach the terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_QUIET, "on", False)


_FILTER = _PageThreadFilter()


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """No Optuna chatter from a page: a live sweep page drew "There are no complete trials" / "Your
    study does not have any completed trials" five times per rewrite until a trial completed. The
    figures say as much. Logger filters apply where a record is made, so every optuna logger gets one;
    setting Optuna's verbosity instead would be process-wide, racing the driver's thread."""
    for name in [n for n in logging.root.manager.loggerDict if n == "optuna" or n.startswith("optuna.")]:
        logging.getLogger(name).addFilter(_FILTER)  # once per logger: addFilter skips a filter it has
    _QUIET.on = True
    try:
        with warnings.catch_warnings():  # ExperimentalWarning, "too few trials for importances", ...
            warnings.simplefilter("ignore")
            yield
    finally:
        _QUIET.on = False


# --- pages --------------------------------------------------------------------------------------

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


def experiment_page(exp: pd.Series, runs: pd.DataFrame, epochs: pd.DataFrame, links: list[Raw]) -> str:
    """Its runs, their curves overlaid (the `MAX_OVERLAID` best when there are more) and its spec;
    `links`: the kind's own pages (`KIND_PAGES`)."""
    body = experiment_header(exp, runs)
    if links:
        body += "<p>" + " · ".join(links) + "</p>"
    body += "<h2>Runs</h2>" + runs_table(runs)
    if not epochs.empty:
        shown, note = runs, ""
        if len(runs) > MAX_OVERLAID:
            shown = runs.sort_values("best_val_acc", ascending=False, na_position="last").head(MAX_OVERLAID).sort_values("id")
            note = (f"<p class='muted'>The {MAX_OVERLAID} runs with the best validation accuracy of {len(runs)}; "
                    "every run's own page has its curves.</p>")
        body += "<h2>Training curves, overlaid</h2>" + note + fig_html(
            curves_figure(shown, epochs[epochs["run_id"].isin(shown["id"])], f"{exp['name']}: all runs"),
            f"curves-exp-{int(exp['id'])}")
    else:
        body += "<p class='empty'>No epoch recorded yet.</p>"
    body += f"<h2>Spec</h2><pre>{esc(exp['spec'])}</pre>"
    return page(f"{exp['kind']} #{exp['id']}: {exp['name']}", body)


def table_section(title: str, legend: str, notes: dict[str, str], shown: pd.DataFrame, *, cls: str, stem: str, eid: int,
                  curves: str) -> str:
    """A results table, its legend under it (a line per column from `notes`, the full `legend` behind a
    toggle: `legend.legend_html`), then links to its Markdown and CSV copies (`stem`.md, .csv) and to the
    experiment page with the curves."""
    return (f"<h2>{esc(title)}</h2>" + frame_table(shown, cls) + legend_html(notes, shown.columns, legend)
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
        body += ("<p class='muted'>Error bars: one seed, the 95% interval over the images; several, ± std over the seeds. "
                 "Hover a bar for its recipe and value.</p>")
        body += table_section("Before/after table", rep.TABLE_LEGEND, BEFORE_AFTER, rep.format_before_after(table_df),
                              cls="before-after", stem=f"before_after-{eid}", eid=eid, curves="curves of every run")
    return page(f"before/after: {exp['name']}", body)


def sensitivity_page(exp: pd.Series, runs: pd.DataFrame, sens: tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]) -> str:
    """Accuracy against lr per model x recipe over seeds (`sensitivity.save_sensitivity`'s frames), then its two tables."""
    eid, (lr_runs, points, summary) = int(exp["id"]), sens
    body = experiment_header(exp, runs) + f"<p>{link(f'before_after-{eid}.html', 'before/after table and bars')}</p>"
    body += fig_html(sensitivity_figure(lr_runs, points, summary, f"{exp['name']}: final accuracy against learning rate"),
                     f"sensitivity-{eid}")
    body += table_section("LR sensitivity per recipe", sensitivity.LEGEND, SENSITIVITY, sensitivity.format_summary(summary),
                          cls="sensitivity", stem=f"sensitivity-{eid}", eid=eid, curves="curves of every run")
    body += "<h2>Per learning rate</h2>" + frame_table(sensitivity.format_curve(points), "sensitivity-lr")
    return page(f"lr sensitivity: {exp['name']}", body)


def ablate_page(exp: pd.Series, runs: pd.DataFrame, table_df: pd.DataFrame) -> str:
    eid = int(exp["id"])
    body = experiment_header(exp, runs)
    if table_df.empty:
        return page(f"ablation: {exp['name']}", body + "<p class='empty'>No runs recorded yet.</p>")
    body += fig_html(waterfall_figure(table_df, esc(f"{exp['name']}: which ingredient matters")), f"waterfall-{eid}")
    body += ("<p class='note'>In <b>add</b> mode the order matters: an ingredient's Δ is measured on top of the ones "
             "before it, and ingredients interact (a warmup matters more at a high lr). <b>drop</b> mode — the full "
             "recipe minus one ingredient — is the check.</p>")
    body += table_section("Ladder", rep.ABLATION_LEGEND, ABLATION, rep.format_ablation(table_df), cls="ablate",
                          stem=f"ablate-{eid}", eid=eid, curves="every rung's curves overlaid")
    return page(f"ablation: {exp['name']}", body)


def sweep_page(db: Any, exp: pd.Series, runs: pd.DataFrame) -> str:
    """optuna.visualization figures from the study named like the experiment, plus a trial table.
    `db`: the database URL, or an Optuna storage already open on it."""
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

        with quiet_optuna():
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
                with quiet_optuna():  # "too few trials for importances", "no complete trials": the figure says enough
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


def run_page(run: pd.Series, epochs: pd.DataFrame, exp_name: str, ev: dict | None) -> str:
    """The four panels of the fine-tuning write-up (61-class plant disease), the final gap's verdict, the
    ViT-Tiny-on-CIFAR-10 CPU guide's evaluation (`ev`, or None) and the spec."""
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


# --- which pages each kind of experiment gets -------------------------------------------------------

@dataclass(frozen=True)
class Made:
    """A page built for an experiment beside its experiment page, and how the other pages link to it."""

    name: str  # the file, e.g. before_after-3.html
    html: str
    label: str  # its link on the index ("before/after")
    blurb: str  # its link on the experiment page
    files: tuple[tuple[str, str], ...] = ()  # (file, label) written with it and linked from the index (md, csv)


@dataclass
class ExperimentRows:
    """What a kind's page builder reads: one experiment's row, runs and epochs, and the open reader."""

    db: str
    store: Store
    exp: pd.Series
    runs: pd.DataFrame
    epochs: pd.DataFrame
    out: Path
    # What one write shares between experiments: Optuna's storage, opened once (opening it checks the
    # schema: half a second, per sweep page, 250 times on a database of 500 experiments).
    shared: dict[str, Any] = field(default_factory=dict)

    def optuna_storage(self) -> Any:
        if "optuna" not in self.shared:
            from harness.study import optuna_storage  # the sweep's own: with its connect timeouts

            with quiet_optuna():
                self.shared["optuna"] = optuna_storage(self.db)
        return self.shared["optuna"]


def benchmark_pages(x: ExperimentRows) -> list[Made]:
    eid = int(x.exp["id"])
    sens = sensitivity.save_sensitivity(x.store, eid, x.out)
    lr_axis = not sens[1].empty  # a benchmark with an lr axis (`--lrs`)
    _, _, tbl = rep.save_before_after(x.store, eid, x.out)
    made = [Made(f"before_after-{eid}.html", before_after_page(x.exp, x.runs, tbl, lr_axis=lr_axis), "before/after",
                 "before/after table and bars", ((f"before_after-{eid}.md", "md"), (f"before_after-{eid}.csv", "csv")))]
    if lr_axis:
        made.append(Made(f"sensitivity-{eid}.html", sensitivity_page(x.exp, x.runs, sens), "lr sensitivity",
                         "lr sensitivity: accuracy against learning rate"))
    return made


def ablate_pages(x: ExperimentRows) -> list[Made]:
    eid = int(x.exp["id"])
    _, _, tbl = rep.save_ablation(x.store, eid, x.out)
    return [Made(f"ablate-{eid}.html", ablate_page(x.exp, x.runs, tbl), "ablation", "ablation: waterfall and table",
                 ((f"ablate-{eid}.md", "md"), (f"ablate-{eid}.csv", "csv")))]


def sweep_pages(x: ExperimentRows) -> list[Made]:
    eid = int(x.exp["id"])
    try:
        storage = x.optuna_storage()
    except Exception:  # noqa: BLE001 - no Optuna tables (yet): the page says there is no study
        storage = x.db
    return [Made(f"sweep-{eid}.html", sweep_page(storage, x.exp, x.runs), "sweep", "Optuna figures and trial table")]


# The pages an experiment of each kind gets besides experiment-<id>.html and its runs' pages.
KIND_PAGES: dict[str, Callable[[ExperimentRows], list[Made]]] = {
    "benchmark": benchmark_pages, "ablate": ablate_pages, "sweep": sweep_pages}


def experiment_pages(x: ExperimentRows) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Every page of one experiment (its kind's, then experiment-<id>.html), as ([(file, html)], the
    index's links [(href, text)])."""
    eid = int(x.exp["id"])
    made = KIND_PAGES.get(str(x.exp["kind"]), lambda _: [])(x)
    html = experiment_page(x.exp, x.runs, x.epochs, [link(m.name, m.blurb) for m in made])
    links = [(f"experiment-{eid}.html", "curves")]
    for m in made:
        links += [(m.name, m.label), *m.files]
    return [*((m.name, m.html) for m in made), (f"experiment-{eid}.html", html)], links
