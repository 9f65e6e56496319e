"""The pages laid out for reading, measured in a real headless Chromium at 1400 px (the width the
screenshots in docs/ are taken at) and at 900 px: no table header breaks inside a word or spills out of
its cell, and no two texts of a figure overlap (the before/after bars carry no labels inside them, where
the error bars crossed them). A script added to a copy of each page measures the rendered layout and
writes it into the DOM, which `--dump-dom` hands back."""

from __future__ import annotations

import json
import os
import re

import pytest
from dbfill import record
from test_dashboards import CHROMIUM, dump_dom

from harness.dashboards import write_dashboards

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None and not os.environ.get("HARNESS_REQUIRE_CHROMIUM"),
                                                   reason="chromium is not installed (CI installs it: .ci/run)")]

# Runs after Plotly drew (the page's own scripts ran first): each header cell's words, whether one of
# them sits on two lines, whether its text fits its box; each figure's visible texts' boxes.
MEASURE = """<script>
window.addEventListener('load', function () { setTimeout(function () {
  var out = {headers: [], figures: []};
  document.querySelectorAll('th').forEach(function (th) {
    var broken = [], walker = document.createTreeWalker(th, NodeFilter.SHOW_TEXT), node;
    while ((node = walker.nextNode())) {
      var re = /\\S+/g, m;
      while ((m = re.exec(node.data))) {
        var r = document.createRange(); r.setStart(node, m.index); r.setEnd(node, m.index + m[0].length);
        var tops = {}; Array.prototype.forEach.call(r.getClientRects(), function (c) { tops[Math.round(c.top)] = 1; });
        if (Object.keys(tops).length > 1) broken.push(m[0]);
      }
    }
    out.headers.push({text: th.textContent, broken: broken, fits: th.scrollWidth <= th.clientWidth});
  });
  document.querySelectorAll('.js-plotly-plot').forEach(function (div) {
    var boxes = [];
    div.querySelectorAll('svg text').forEach(function (t) {
      var b = t.getBoundingClientRect();
      if (t.textContent.trim() && b.width > 0 && b.height > 0 && getComputedStyle(t).display !== 'none')
        boxes.push({text: t.textContent, l: b.left, r: b.right, t: b.top, b: b.bottom});
    });
    out.figures.push({id: div.id, texts: boxes, in_bars: div.querySelectorAll('text.bartext').length});
  });
  var pre = document.createElement('pre'); pre.id = 'measured'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
}, 300); });
</script>"""


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """The default run's shape, small: two models (CPU stand-ins), naive against each one's fitted recipe,
    one seed, one epoch on synthetic images (a few seconds), written as `harness report` writes them."""
    from harness.data import DataSpec
    from harness.specs import resolve_run

    root = tmp_path_factory.mktemp("layout")
    db = f"sqlite:///{root / 'results.db'}"
    data = DataSpec(name="synthetic", image_size=16, num_classes=4, train_size=64)
    specs = [resolve_run(model=m, recipe=r, data=data, overrides={"batch_size": 16}, epochs=1, seed=0, threads=1, stands_for=s)
             for m, s, fitted in (("resnet18", "resnet50", "cnn"), ("vit_tiny", "vit_base", "vit")) for r in ("naive", fitted)]
    exp = record(db, specs, name="naive_vs_recipe", description="before/after: each model's naive recipe against its own")
    write_dashboards(db, root / "dash")
    return root / "dash", exp


def measure(page, tmp_path, width: int) -> dict:
    probe = page.with_name(f"measure-{width}-{page.name}")  # beside the page: plotly.min.js loads from the folder
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", MEASURE + "</body>"), encoding="utf-8")
    dom = dump_dom(probe, tmp_path / "profile", width=width)
    found = re.search(r'<pre id="measured">(.*?)</pre>', dom, re.S)
    assert found, f"{page.name}: the measuring script did not run"
    return json.loads(found.group(1).replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").replace("&quot;", '"'))


def overlaps(texts: list[dict], slack: float = 1.0) -> list[tuple[str, str]]:
    """Pairs of texts whose boxes overlap by more than `slack` px both ways."""
    return [(a["text"], b["text"]) for i, a in enumerate(texts) for b in texts[i + 1:]
            if min(a["r"], b["r"]) - max(a["l"], b["l"]) > slack and min(a["b"], b["b"]) - max(a["t"], b["t"]) > slack]


@pytest.mark.parametrize("width", [1400, 900])
def test_headers_whole_and_figure_texts_apart(pages, tmp_path, width):
    out, exp = pages
    for name in ("index.html", f"before_after-{exp}.html", f"experiment-{exp}.html"):
        m = measure(out / name, tmp_path, width)
        assert m["headers"], name
        broken = [(h["text"], h["broken"]) for h in m["headers"] if h["broken"]]
        spilled = [h["text"] for h in m["headers"] if not h["fits"]]
        assert not broken and not spilled, (name, width, broken, spilled)
        assert m["figures"], name
        for fig in m["figures"]:
            assert not overlaps(fig["texts"]), (name, width, fig["id"], overlaps(fig["texts"]))
            assert fig["in_bars"] == 0, (name, fig["id"])  # no labels inside bars
    ba = (out / f"before_after-{exp}.html").read_text(encoding="utf-8")
    # The legend is a short list under the table, the full text behind a toggle.
    assert ba.index("<table") < ba.index("class='legend'") < ba.index("<details>")
