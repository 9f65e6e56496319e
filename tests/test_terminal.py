"""What a person reads in a terminal: messages folded to at most 100 columns (to the terminal's width
when it is narrower), table rows left as laid out, and piped output (a log, grep) never folded."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from harness import terminal
from harness.cli import main

LONG = ("error: --models: got 'vit_bsae'. Unknown name. Did you mean 'vit_base'? Known: resnet18, resnet50, "
        "efficientnet_b0, efficientnet_b3, vit_tiny, vit_small, vit_base, swin_nano, swin_tiny, resnet_test, vit_test.")


def test_fold_keeps_every_word_and_leaves_lines_that_fit_alone():
    table = "  model      recipes            Δ [95% CI]\n  ─────────  ─────────────────  ──────────"
    lines = terminal.fold(LONG + "\n" + table, 100).splitlines()
    message, rows = lines[:-2], lines[-2:]
    assert max(map(len, lines)) <= 100 and len(message) > 1
    assert all(ln.startswith("  ") for ln in message[1:]) and rows == table.splitlines()  # rows untouched
    assert " ".join(" ".join(message).split()) == " ".join(LONG.split())  # nothing lost, nothing cut


@pytest.mark.parametrize("columns, fits", [(160, 100), (72, 72)])
def test_a_refusal_fits_the_terminal(monkeypatch, columns, fits):
    monkeypatch.setattr(terminal, "terminal_width", lambda stream=None: columns)
    r = CliRunner().invoke(main, ["benchmark", "--models", "vit_bsae", "--db", "sqlite:///results.db"])
    assert r.exit_code == 2
    lines = r.output.splitlines()
    assert len(lines) > 1 and max(map(len, lines)) <= fits, r.output
    assert "--models: got 'vit_bsae'" in lines[0] and "Did you mean 'vit_base'" in r.output


def test_a_pipe_gets_each_message_on_one_line():
    r = CliRunner().invoke(main, ["benchmark", "--models", "vit_bsae", "--db", "sqlite:///results.db"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and len(r.output) > 100


def test_validate_and_recipes_show_fit_100_columns(monkeypatch):
    monkeypatch.setattr(terminal, "terminal_width", lambda stream=None: 100)
    for args in (["sweep", "--validate", "studies/vit_lr.yaml"], ["recipes", "show", "vit"], ["--help"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
        assert max(map(len, r.output.splitlines())) <= 100, (args, [ln for ln in r.output.splitlines() if len(ln) > 100])
