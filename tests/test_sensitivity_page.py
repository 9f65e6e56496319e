"""The lr sensitivity page (sensitivity-<id>.html): written for a benchmark with an lr axis, linked from
the index, the experiment page and the before/after page, holding every run's accuracy on a log lr
axis with the own-lr, naive-lr and chance lines; none (and no link) for a benchmark without one."""

from __future__ import annotations

import json
import math
import re

import pandas as pd
import pytest
from conftest import require_or_skip
from test_dashboards import CHROMIUM, dump_dom, parse, plot_data, typed

from harness.dashboards import write_dashboards
from harness.sensitivity import NAIVE_LR
from harness.store import Store

OWN = {"naive": 1e-3, "tuned": 4e-3}  # each recipe's own (fitted) lr at batch 64
LRS = (("x0.1", 0.1), ("x1", 1.0), ("x10", 10.0))
# Final val accuracy (a fraction, n/64 so that 100 x it is exact) per recipe, lr point and seed; None: diverged.
FINAL = {("naive", "x0.1"): (40 / 64, 44 / 64), ("naive", "x1"): (50 / 64, 52 / 64), ("naive", "x10"): (6 / 64, None),
         ("tuned", "x0.1"): (30 / 64, 34 / 64), ("tuned", "x1"): (56 / 64, 58 / 64), ("tuned", "x10"): (48 / 64, 5 / 64)}  # seeds disagree
CHANCE = 10.0  # digits: 10 classes


def params(recipe: str, tags: dict | None) -> dict:
    return {"data": {"name": "digits"}, "recipe": {"batch_size": 64}, "epochs": 2, "train_images": 100,
            **({"tags": tags} if tags else {})}


def epochs(store: Store, run: int, final: float) -> None:
    store.log_epoch(run, 1, {"train_loss": 2.0, "val_loss": 2.1, "train_acc": 0.3, "val_acc": 0.25, "lr": 1e-3})
    store.log_epoch(run, 2, {"train_loss": 1.0, "val_loss": 1.1, "train_acc": final + 0.05, "val_acc": final, "lr": 1e-4})
    # The same accuracy on 64 test images: what the page draws (6 or 5 of 64 is not above chance: collapsed).
    store.save_test(run, {"test_acc": final, "test_loss": 1.1, "n_test": 64, "test_correct": None})


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    """Two benchmarks: one with an lr axis (2 recipes x 3 lrs x 2 seeds; at x10 naive collapses and diverges, tuned
    trains on one seed and collapses on the other: the danger zone), one without."""
    url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'results.db'}"
    store = Store(url)
    exp = store.create_experiment(kind="benchmark", name="lr axis", device="cpu (test)")
    expected = []  # (run id, lr, acc %)
    for recipe, own in OWN.items():
        for point, mult in LRS:
            for seed, final in enumerate(FINAL[recipe, point]):
                tags = {"lr_point": point, "lr_mult": mult, "lr": own * mult, "own_lr": own}
                run = store.create_run(exp, model="resnet18", recipe=recipe, params=params(recipe, tags), seed=seed)
                if final is None:  # a NaN loss in epoch 2: one epoch recorded, then diverged
                    store.log_epoch(run, 1, {"train_loss": 2.0, "val_loss": 2.1, "train_acc": 0.3, "val_acc": 0.25, "lr": 1e-2})
                    store.finish_run(run, status="diverged", error="loss is NaN")
                else:
                    epochs(store, run, final)
                    store.finish_run(run, status="completed", wall_s=1.0)
                expected.append((run, own * mult, CHANCE if final is None else 100 * final))
    store.finish_experiment(exp, "completed")
    plain = store.create_experiment(kind="benchmark", name="no lr axis", device="cpu (test)")
    for recipe in OWN:
        run = store.create_run(plain, model="resnet18", recipe=recipe, params=params(recipe, None), seed=0)
        epochs(store, run, 0.5)
        store.finish_run(run, status="completed", wall_s=1.0)
    store.finish_experiment(plain, "completed")
    store.close()
    return url, exp, plain, expected


@pytest.fixture(scope="module")
def pages(db, tmp_path_factory):
    out = tmp_path_factory.mktemp("dash")
    return out, write_dashboards(db[0], out)


def layout(path) -> dict:
    """The layout of the page's (first) Plotly figure: Plotly.newPlot(id, data, layout, config)."""
    text = path.read_text(encoding="utf-8")
    m = re.search(r"Plotly\.newPlot\(\s*\"[^\"]+\",\s*", text)
    dec = json.JSONDecoder()
    _, end = dec.raw_decode(text, m.end())
    return typed(dec.raw_decode(text, text.index("{", end))[0])


def test_sensitivity_page_holds_every_run_and_is_linked(db, pages):
    _, exp, plain, expected = db
    out, index = pages
    name = f"sensitivity-{exp}.html"
    page = parse(out / name)
    assert page.script_srcs == ["plotly.min.js"] and page.plot_divs == [f"sensitivity-{exp}"]
    for href in page.links:
        assert (out / href).is_file(), href  # no dead links: before/after, experiment page, .md, .csv
    assert {f"sensitivity-{exp}.md", f"sensitivity-{exp}.csv", f"before_after-{exp}.html"} <= set(page.links)
    # Linked from the index, the experiment page and the before/after page.
    assert name in parse(index).links
    assert name in parse(out / f"experiment-{exp}.html").links
    assert name in parse(out / f"before_after-{exp}.html").links

    traces = plot_data(page)
    # Every seed a dot at its true accuracy (the diverged run at chance); hover names the run; x jittered around its lr.
    dots = [t for t in traces if t.get("mode") == "markers" and t.get("customdata")]
    shown = {int(c[0]): (c[2], y, sym, x) for t in dots
             for c, y, sym, x in zip(t["customdata"], t["y"], t["marker"]["symbol"], t["x"])}
    assert sorted(shown) == sorted(r for r, _, _ in expected)
    for run, lr, acc in expected:
        lr_shown, y, sym, x = shown[run]
        assert lr_shown == pytest.approx(lr) and y == pytest.approx(acc), run
        assert abs(math.log10(x / lr)) < 0.1  # jitter: a small fraction of a decade
        assert sym == ("x" if acc <= 12 else "circle"), run  # collapsed (9.4%) and diverged (at chance) marked x
    # One median line per recipe through the per-lr medians.
    for recipe, own in OWN.items():
        line = next(t for t in traces if t.get("mode") == "lines+markers" and t.get("name", "").startswith(recipe))
        assert line["x"] == pytest.approx([own * m for _, m in LRS])
        want = [100 * pd.Series([f for f in FINAL[recipe, p]]).fillna(CHANCE / 100).median() for p, _ in LRS]
        assert line["y"] == pytest.approx(want)
    # The own-lr lines (in the recipe's colour), the naive lr, chance, a log x axis and a 0-100 y axis.
    own_lines = [t for t in traces if t.get("mode") == "lines" and t.get("name") == "own lr"]
    assert sorted(t["x"][0] for t in own_lines) == pytest.approx(sorted(OWN.values()))
    assert len({t["line"]["color"] for t in own_lines}) == 2
    naive = next(t for t in traces if t.get("mode") == "lines" and t.get("name") == "naive lr (Adam 1e-3)")
    assert naive["x"] == pytest.approx([NAIVE_LR, NAIVE_LR])
    lay = layout(out / name)
    labels = {}  # their labels, placed at log10(lr) on the log axis
    for a in lay["annotations"]:
        labels.setdefault(a["text"], []).append(10 ** a["x"] if a["text"] in ("own lr", "naive lr (Adam 1e-3)") else a["x"])
    assert sorted(labels["own lr"]) == pytest.approx(sorted(OWN.values()))
    assert labels["naive lr (Adam 1e-3)"] == pytest.approx([NAIVE_LR])
    assert lay["xaxis"]["type"] == "log"
    assert lay["yaxis"]["range"] == [0, 100]
    assert any(s.get("y0") == pytest.approx(CHANCE) and s["line"]["dash"] == "dot" for s in lay["shapes"])
    text = (out / name).read_text(encoding="utf-8")
    assert "LR sensitivity per recipe" in text and "Per learning rate" in text and "seeds disagree" in text

    # The Markdown and CSV beside it: the curve, one row per recipe x lr.
    md = (out / f"sensitivity-{exp}.md").read_text(encoding="utf-8")
    assert "## Per recipe" in md and "## Per learning rate" in md
    csv = pd.read_csv(out / f"sensitivity-{exp}.csv")
    assert len(csv) == len(OWN) * len(LRS)
    assert sorted(csv["lr"]) == pytest.approx(sorted(own * m for own in OWN.values() for _, m in LRS))

    # A benchmark without an lr axis: no page, no files, no link.
    assert not list(out.glob(f"sensitivity-{plain}.*"))
    for p in (index, out / f"experiment-{plain}.html", out / f"before_after-{plain}.html"):
        assert f"sensitivity-{plain}.html" not in parse(p).links
    assert "sensitivity" not in (out / f"experiment-{plain}.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_sensitivity_page_renders_in_headless_chromium(db, pages, tmp_path):
    if CHROMIUM is None:
        require_or_skip("HARNESS_REQUIRE_CHROMIUM", "chromium is not installed (CI installs it: .ci/run)")
    out, _ = pages
    dom = dump_dom(out / f"sensitivity-{db[1]}.html", tmp_path / "profile")
    assert dom.count('class="main-svg"') >= 1  # Plotly drew the figure
    assert "naive lr (Adam 1e-3)" in dom and "own lr" in dom
