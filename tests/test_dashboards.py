"""Dashboards: valid HTML holding each figure's data, hostile strings escaped, an empty and an
interrupted database handled, Optuna figures for sweeps, and the pages rendered by a real browser."""

from __future__ import annotations

import base64
import html
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from dbfill import record

from harness.cli import main
from harness.dashboards import write_dashboards
from harness.errors import UserError
from harness.store import Store

HOSTILE = '<script>alert("x")</script> \'quote" &amp; é 漢字 🙂 <img src=x onerror=alert(1)>'
LONG = HOSTILE + "x" * 10_000


class Page(HTMLParser):
    """Collects what a test needs and fails on tags closed out of order (a sign of broken escaping)."""

    VOID = {"meta", "br", "img", "link", "input", "hr"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.plot_divs: list[str] = []
        self.scripts: list[str] = []
        self.links: list[str] = []
        self.script_srcs: list[str] = []
        self._in_script = False
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "div" and "plotly-graph-div" in (a.get("class") or ""):
            self.plot_divs.append(a.get("id", ""))
        if tag == "a" and a.get("href"):
            self.links.append(a["href"])
        if tag == "script":
            self._in_script = True
            if a.get("src"):
                self.script_srcs.append(a["src"])
            self.scripts.append("")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts[-1] += data


def parse(path: Path) -> Page:
    p = Page()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    assert not p.errors, (path.name, p.errors[:3])
    assert p.stack == [], (path.name, p.stack)
    return p


def typed(v):
    """Plotly writes numpy arrays as typed arrays ({"dtype": "f8", "bdata": base64}); decode to lists."""
    if isinstance(v, dict) and "bdata" in v:
        arr = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        return arr.reshape(v["shape"] if isinstance(v.get("shape"), list) else
                           [int(n) for n in str(v["shape"]).split(",")] if v.get("shape") else -1).tolist()
    if isinstance(v, dict):
        return {k: typed(x) for k, x in v.items()}
    if isinstance(v, list):
        return [typed(x) for x in v]
    return v


def plot_data(page: Page) -> list[dict]:
    """The trace objects of every Plotly figure on the page (Plotly.newPlot(id, data, layout, config))."""
    traces = []
    for s in page.scripts:
        for m in re.finditer(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*(\[.*?\]),\s*\{", s, re.S):
            traces += typed(json.loads(m.group(1)))
    return traces


@pytest.fixture(scope="module")
def bench_db(tmp_path_factory):
    """A real benchmark-shaped database: resnet18 naive vs cnn, 2 seeds, 2 epochs, with hostile names."""
    from harness.data import DataSpec
    from harness.specs import resolve_run

    db = f"sqlite:///{tmp_path_factory.mktemp('db') / 'results.db'}"
    data = DataSpec(name="synthetic", image_size=16, num_classes=4, train_size=64)
    specs = [resolve_run(model="resnet18", recipe=r, data=data, overrides={"batch_size": 16}, epochs=2, seed=s, threads=1,
                         stands_for="resnet50") for r in ("naive", "tuned") for s in (0, 1)]
    exp = record(db, specs, name=LONG, description=HOSTILE)
    return db, exp


@pytest.fixture(scope="module")
def pages(bench_db, tmp_path_factory):
    db, _ = bench_db
    out = tmp_path_factory.mktemp("dash")
    index = write_dashboards(db, out)
    return out, index


def test_every_page_is_valid_html_with_its_figures_data(bench_db, pages):
    db, exp = bench_db
    out, index = pages
    assert index == out / "index.html"
    store = Store(db, create=False)
    runs = store.read_sql("SELECT * FROM runs ORDER BY id")
    epochs = store.read_sql("SELECT * FROM epochs ORDER BY run_id, epoch")
    store.close()
    names = {p.name for p in out.iterdir()}
    expected = {"index.html", "plotly.min.js", f"experiment-{exp}.html", f"before_after-{exp}.html",
                f"before_after-{exp}.md", f"before_after-{exp}.csv", *(f"run-{i}.html" for i in runs["id"])}
    assert expected <= names
    for name in sorted(n for n in names if n.endswith(".html")):
        page = parse(out / name)
        assert page.script_srcs == ["plotly.min.js"], name  # plotly.js once, beside the pages: opens offline
        assert page.plot_divs, name
        for href in page.links:
            assert (out / href).is_file(), (name, href)  # no dead links
    assert (out / "plotly.min.js").stat().st_size > 1_000_000

    # Each run page holds its own curves: the val accuracy of every epoch, in percent.
    for _, run in runs.iterrows():
        page = parse(out / f"run-{run['id']}.html")
        assert {f"curves-run-{run['id']}", f"per-class-{run['id']}", f"confusion-{run['id']}"} <= set(page.plot_divs)
        traces = plot_data(page)
        val = next(t for t in traces if t.get("name") == "val acc")
        want = (100 * epochs[epochs["run_id"] == run["id"]]["val_acc"]).tolist()
        assert val["y"] == pytest.approx(want)
        gap = next(t for t in traces if t.get("type") == "bar" and str(t.get("name", "")).startswith("gap"))
        e = epochs[epochs["run_id"] == run["id"]]
        assert gap["y"] == pytest.approx((100 * (e["train_acc"] - e["val_acc"])).tolist())
        text = (out / f"run-{run['id']}.html").read_text()
        assert text.count('src="data:image/png;base64,') > 0  # the prediction grid

    # The before/after bars carry the table's means.
    page = parse(out / f"before_after-{exp}.html")
    bars = [t for t in plot_data(page) if t.get("type") == "bar"]
    naive = runs[runs["recipe"] == "naive"]["best_val_acc"].mean() * 100
    assert any(b["y"][0] == pytest.approx(naive) for b in bars)
    assert "resnet18 (for resnet50)" in (out / f"before_after-{exp}.html").read_text()
    # Runs that do not say where they ran (dbfill records none): no node column, no "ran on" line.
    assert "<th>node</th>" not in (out / f"experiment-{exp}.html").read_text()
    assert "ran on" not in (out / "run-1.html").read_text()


def test_legend_under_the_table_and_the_index_in_test_accuracy(bench_db, pages):
    """Every column of the before/after table has its line in the short legend under the table (the full
    text behind a toggle), and the index reports what the tables report: test accuracy, not best val."""
    from harness import tables as rep
    from harness.dashboards.legend import BEFORE_AFTER, note

    db, exp = bench_db
    out, _ = pages
    store = Store(db, create=False)
    shown = rep.format_before_after(rep.before_after(store, exp))
    runs = store.read_sql("SELECT experiment_id, test_acc FROM runs ORDER BY id")
    store.close()
    missing = [c for c in shown.columns if note(BEFORE_AFTER, c) is None]
    assert not missing, f"add a line for {missing} to harness/dashboards/legend.py BEFORE_AFTER"
    text = (out / f"before_after-{exp}.html").read_text(encoding="utf-8")
    legend = text[text.index("class='legend'"):]
    assert text.index("<table") < text.index("class='legend'")  # under the table
    assert legend.count("<li>") == len(shown.columns) and "<details><summary>" in legend
    assert html.escape(rep.TABLE_LEGEND, quote=True) in legend.split("<details>", 1)[1]  # the full text, behind it
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "<th>best test acc %</th>" in index and "best val %" not in index
    points = next(t for t in plot_data(parse(out / "index.html")) if t.get("type") == "scatter")
    assert sorted(points["x"]) == pytest.approx(sorted(100 * runs["test_acc"]))


def test_hostile_strings_escaped_everywhere(bench_db, pages):
    out, _ = pages
    for p in out.glob("*.html"):
        text = p.read_text(encoding="utf-8")
        assert "<script>alert" not in text and "<img src=x" not in text, p.name
        assert "\\u003cscript\\u003ealert" not in text or p.suffix == ".html"  # inside plot JSON only as escaped text
    index = (out / "index.html").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in index
    assert "漢字 🙂" in index  # unicode survives
    exp_page = next(out.glob("experiment-*.html")).read_text(encoding="utf-8")
    assert "x" * 10_000 in exp_page  # the full 10 kB name on the experiment page
    # And the database keeps the string intact.
    db, exp = bench_db
    store = Store(db, create=False)
    assert store.read_sql("SELECT name FROM experiments").iloc[0]["name"] == LONG
    store.close()


def test_hostile_class_names_escaped(db_url, tmp_path):
    store = Store(db_url)
    exp = store.create_experiment(kind="train", name="x")
    run = store.create_run(exp, model="resnet18", recipe="naive", params={}, seed=0)
    store.log_epoch(run, 1, {"train_acc": 0.5, "val_acc": 0.4, "train_loss": 1.0, "val_loss": 1.1, "lr": 1e-3})
    store.save_evaluation(run, {"epoch": 1, "class_names": [HOSTILE, "b"], "per_class_acc": [0.5, 0.25],
                                "confusion": [[1, 1], [3, 1]],
                                "samples": [{"png": "iVBORw0KGgo=\"><script>alert(2)</script>", "true": 0, "pred": 0},
                                            {"png": "iVBORw0KGgo=", "true": 0, "pred": 1}]})
    store.finish_run(run, status="completed")
    store.close()
    write_dashboards(db_url, tmp_path)
    text = (tmp_path / f"run-{run}.html").read_text(encoding="utf-8")
    parse(tmp_path / f"run-{run}.html")
    assert "<script>alert" not in text and "<img src=x" not in text
    assert "&lt;script&gt;" in text  # the class name, shown as text in the prediction grid
    assert text.index('class="wrong"') < text.index('class="right"')  # mistakes first
    heat = next(t for t in plot_data(parse(tmp_path / f"run-{run}.html")) if t.get("type") == "heatmap")
    assert heat["z"] == [[1, 1], [3, 1]]


def test_empty_database_gives_a_nothing_yet_page(db_url, tmp_path):
    Store(db_url).close()
    index = write_dashboards(db_url, tmp_path / "d")
    text = index.read_text()
    parse(index)
    assert "Nothing yet" in text and "harness benchmark" in text


def test_interrupted_sweep_database(db_url, tmp_path):
    """A sweep killed mid-trial: runs still 'running', no evaluation, an Optuna study with a RUNNING trial."""
    import optuna

    store = Store(db_url)
    exp = store.create_experiment(kind="sweep", name="cut short", spec="search: {lr: {type: loguniform}}\n")
    done = store.create_run(exp, model="vit_tiny", recipe="vit", params={"recipe": {"lr": 1e-3, "warmup_epochs": 1}}, seed=0,
                            optuna_trial=0)
    for e in (1, 2):
        store.log_epoch(done, e, {"train_acc": 0.3 * e, "val_acc": 0.25 * e, "train_loss": 1 / e, "val_loss": 1 / e, "lr": 1e-3})
    store.finish_run(done, status="stopped")
    cut = store.create_run(exp, model="vit_tiny", recipe="vit", params={"recipe": {"lr": 3e-4}}, seed=0, optuna_trial=1)
    store.log_epoch(cut, 1, {"train_acc": 0.2, "val_acc": 0.15, "train_loss": 2.0, "val_loss": 2.1, "lr": 3e-4})
    never = store.create_run(exp, model="vit_tiny", recipe="vit", params={}, seed=0, optuna_trial=2)  # no epoch at all
    store.close()
    study = optuna.create_study(study_name="cut short", storage=db_url, direction="maximize")
    t = study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
    t.report(0.25, 1)
    t.report(0.5, 2)
    study.tell(t, 0.5)
    study.ask({"lr": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})  # left RUNNING by the kill
    write_dashboards(db_url, tmp_path)
    for name in (f"experiment-{exp}.html", f"sweep-{exp}.html", f"run-{cut}.html", f"run-{never}.html", "index.html"):
        parse(tmp_path / name)
    sweep = (tmp_path / f"sweep-{exp}.html").read_text()
    assert "optuna-1-0" in sweep and "optuna-1-1" in sweep  # history and intermediate values drawn
    # Each Optuna figure is drawn or says why not (a RUNNING trial, too few trials): never a traceback.
    for title in ("optimization history", "parallel coordinates", "hyperparameter importances", "slice"):
        assert f"<h2>{title}" in sweep
    assert "<td>lr</td>" not in sweep and "<th>lr</th>" in sweep  # the search key is a trial-table column
    assert "<th>node</th>" not in sweep and "<th>GPUs</th>" not in sweep  # no run says where it ran
    assert "No epoch recorded yet" in (tmp_path / f"run-{never}.html").read_text()


def test_sweep_page_has_optuna_figures(db_url, tmp_path):
    import optuna

    store = Store(db_url)
    exp = store.create_experiment(kind="sweep", name="lr sweep", spec="search:\n  lr: {type: loguniform}\n  wd: {type: uniform}\n")
    store.close()
    study = optuna.create_study(study_name="lr sweep", storage=db_url, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))

    def objective(trial):
        lr, wd = trial.suggest_float("lr", 1e-4, 1e-1, log=True), trial.suggest_float("wd", 0, 0.1)
        for step in range(1, 4):
            trial.report(step * lr, step)
        return lr - wd

    study.optimize(objective, n_trials=6)
    write_dashboards(db_url, tmp_path)
    page = parse(tmp_path / f"sweep-{exp}.html")
    assert [f"optuna-{exp}-{i}" for i in range(5)] == [d for d in page.plot_divs if d.startswith("optuna")]
    values = [v for t in plot_data(page) for v in (t.get("y") or []) if isinstance(v, float)]
    assert any(v == pytest.approx(study.best_value) for v in values)


def test_pages_show_where_each_run_ran(db_url, tmp_path):
    """Node and GPUs of every run: columns on the sweep and experiment pages, a line on the run page
    (the latest epoch's node for a trial retried elsewhere); "" GPUs reads "CPU only"."""
    store = Store(db_url)
    exp = store.create_experiment(kind="sweep", name="spread", spec="search:\n  lr: {type: loguniform}\n")
    metrics = {"train_acc": 0.5, "val_acc": 0.4, "train_loss": 1.0, "val_loss": 1.1, "lr": 1e-3}
    gpu = store.create_run(exp, model="resnet18", recipe="naive", params={"recipe": {"lr": 1e-3}}, seed=0, optuna_trial=0)
    store.log_epoch(gpu, 1, metrics, where={"node": "box-a", "node_id": "a" * 56, "gpus": ""})
    store.log_epoch(gpu, 2, metrics, where={"node": "gpu-box-b", "node_id": "b" * 56, "gpus": "0: NVIDIA H100; 1: NVIDIA H100"})
    cpu = store.create_run(exp, model="resnet18", recipe="naive", params={"recipe": {"lr": 1e-2}}, seed=0, optuna_trial=1)
    store.log_epoch(cpu, 1, metrics, where={"node": HOSTILE, "node_id": None, "gpus": ""})
    older = store.create_run(exp, model="resnet18", recipe="naive", params={}, seed=0, optuna_trial=2)
    store.log_epoch(older, 1, metrics)  # a caller that does not say where
    store.close()
    write_dashboards(db_url, tmp_path)
    for name in (f"sweep-{exp}.html", f"experiment-{exp}.html"):
        text = (tmp_path / name).read_text(encoding="utf-8")
        parse(tmp_path / name)
        assert "<th>node</th><th>GPUs</th>" in text, name
        # The hostname and the Ray node id's start: two nodes may share a hostname.
        assert f"<td>gpu-box-b · {'b' * 8}</td><td>0: NVIDIA H100; 1: NVIDIA H100</td>" in text, name
        assert "<td>CPU only</td>" in text and "box-a" not in text, name  # the latest epoch's node only
        assert "<script>alert" not in text and "&lt;script&gt;" in text, name
    run_page = (tmp_path / f"run-{gpu}.html").read_text(encoding="utf-8")
    assert f"ran on <b>gpu-box-b</b> (Ray node {'b' * 12}…) · GPUs: 0: NVIDIA H100; 1: NVIDIA H100" in run_page
    assert "ran on" in (tmp_path / f"run-{cpu}.html").read_text() and "GPUs: CPU only" in (tmp_path / f"run-{cpu}.html").read_text()
    assert "ran on" not in (tmp_path / f"run-{older}.html").read_text()


def test_report_cli_compare_and_bad_input(bench_db, tmp_path):
    db, _ = bench_db
    out = tmp_path / "cmp"
    r = CliRunner().invoke(main, ["report", "--db", db, "--out", str(out), "--compare", "1", "3"])
    assert r.exit_code == 0, r.output
    assert "compare:" in r.output and "index.html" in r.output
    page = parse(out / "compare.html")
    names = [t["name"] for t in plot_data(page) if t.get("showlegend") is not False and t.get("name", "").startswith("#")]
    assert names[0].startswith("#1 ") and names[1].startswith("#3 ")

    out2 = tmp_path / "never"
    r = CliRunner().invoke(main, ["report", "--db", db, "--out", str(out2), "--compare", "1", "999"])
    assert r.exit_code == 2 and "--compare: got 999" in r.output
    assert not out2.exists()  # nothing written
    r = CliRunner().invoke(main, ["report", "--db", f"sqlite:///{tmp_path / 'missing.db'}", "--out", str(out2)])
    assert r.exit_code == 2 and "No such database" in r.output and not (tmp_path / "missing.db").exists()
    (tmp_path / "foreign.db").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    r = CliRunner().invoke(main, ["report", "--db", f"sqlite:///{tmp_path / 'foreign.db'}", "--out", str(out2)])
    assert r.exit_code == 2 and "--db" in r.output
    assert not out2.exists()


def test_out_must_be_a_folder(bench_db, tmp_path):
    db, _ = bench_db
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="--out"):
        write_dashboards(db, tmp_path / "file")


CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def dump_dom(path: Path, profile: Path, *, width: int | None = None) -> str:
    """The page's DOM after its scripts ran, in headless Chromium (a window `width` px wide when given)."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
           *([f"--window-size={width},900"] if width else []), "--hide-scrollbars",
           "--virtual-time-budget=5000", "--dump-dom", path.resolve().as_uri()]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("HARNESS_REQUIRE_CHROMIUM"),
                    reason="chromium is not installed (CI installs it: .ci/run)")
def test_pages_render_in_headless_chromium(bench_db, pages, tmp_path):
    """A real browser opens the pages from file:// (offline) and Plotly draws every figure."""
    assert CHROMIUM, "HARNESS_REQUIRE_CHROMIUM is set but chromium is missing"
    _, exp = bench_db
    out, index = pages
    for page, figures in ((index, 1), (out / f"before_after-{exp}.html", 1), (out / "run-1.html", 3)):
        dom = dump_dom(page, tmp_path / "profile")
        assert dom.count('class="main-svg"') >= figures, page.name  # Plotly rendered its SVG
        assert "resnet18 (for resnet50)" in dom or page == index
        assert "<script>alert" not in dom
