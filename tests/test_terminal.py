"""What a person reads in a terminal: messages folded to at most 100 columns (to the terminal's width
when it is narrower), table rows left as laid out, and piped output (a log, grep) never folded."""

from __future__ import annotations

import io
import math
import re

import pandas as pd
import pytest
from click.testing import CliRunner

from harness import terminal
from harness.cli import main

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
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


# --- tables laid out once, progress lines folded: at 72, 100 and 160 columns, with and without an lr axis ---

def before_after_rows(lr_axis: bool) -> pd.DataFrame:
    """The default run's before/after table as `format_before_after` shows it (one seed: Wilson intervals),
    its raw rows written here so the test stays in milliseconds; with an lr axis each pair has two rows."""
    from harness import tables as rep

    rows = []
    for model, stand, recipe in (("resnet18", "resnet50", "cnn (fitted)"), ("vit_tiny", "vit_base", "vit (fitted)")):
        for lrs in ("own", "best") if lr_axis else ("",):
            row = dict.fromkeys(rep.TABLE_COLUMNS, math.nan)
            row.update(model=f"{model} (for {stand})", ran=model, stands_for=stand, before_recipe="naive", after_recipe=recipe,
                       lrs=lrs or None, chosen_on="val median" if lrs == "best" else "", before_lr=0.001, after_lr=0.003,
                       before_runs=1, after_runs=1, batch=64, updates=160, split="test", n_images=360,
                       before_best_mean=99.7, after_best_mean=93.1, before_acc_mean=99.4, before_acc_lo=98.0,
                       before_acc_hi=99.8, after_acc_mean=91.1, after_acc_lo=87.7, after_acc_hi=93.6, before_collapsed=0,
                       after_collapsed=0, delta=-8.3, delta_lo=-11.5, delta_hi=-5.4, interval="Newcombe paired (one seed)",
                       verdict="worse (one seed)", before_epochs_to_90=3.0, after_epochs_to_90=7.0, before_gap=0.4,
                       after_gap=2.1, flags="")
            rows.append(row)
    return rep.format_before_after(pd.DataFrame(rows, columns=rep.TABLE_COLUMNS), terminal=True)


@pytest.mark.parametrize("lr_axis", [False, True])
@pytest.mark.parametrize("columns", [72, 100, 160])
def test_a_table_is_laid_out_once_to_the_terminal(monkeypatch, capsys, columns, lr_axis):
    """echo prints a table as to_text laid it out: on a 160-column terminal it is not folded again at 100
    (which split the header and every row mid-table), and no line passes the terminal's width."""
    from harness import tables as rep

    monkeypatch.setattr(terminal, "terminal_width", lambda stream=None: columns)
    shown = before_after_rows(lr_axis)
    laid = terminal.to_text(shown, columns=rep.TERMINAL_COLUMNS)
    terminal.echo(laid)
    out = capsys.readouterr().out
    assert out == laid + "\n"  # printed exactly as laid out
    lines = out.splitlines()
    assert max(map(len, lines)) <= columns, "\n" + out
    rule = next(i for i, ln in enumerate(lines) if set(ln.strip()) == {"─"})  # under the header, over the rows
    header = " ".join(lines[:rule]).split()
    assert "model" in header and "verdict" in header and ("lr" in header) == lr_axis
    assert sum(ln.startswith(("resnet18", "vit_tiny")) for ln in lines) == (4 if lr_axis else 2)  # every row begins at the left
    if columns == 160:  # wide enough: the header on one line, over 100 columns, never folded there again
        assert rule == 1 and max(map(len, lines)) > 100


@pytest.mark.parametrize("lr_axis", [False, True])
@pytest.mark.parametrize("columns", [72, 100, 160])
def test_progress_lines_fold_at_the_message_width(monkeypatch, columns, lr_axis):
    """The live display's log lines (a run started, finished: above the bars) fold as messages do, at
    min(width, 100): with an lr axis a run's start line is about 116 columns."""
    from rich.console import Console

    from harness import progress

    buf = io.StringIO()
    monkeypatch.setattr(progress, "Console", lambda: Console(file=buf, width=columns, force_terminal=True, color_system=None))
    lr = " / lr x3 (0.003)" if lr_axis else ""
    started = f"run 1 started: resnet18 (CPU stand-in for resnet50) / cnn (fitted){lr} / seed 0  [2 running, 0/8 done]"
    finished = (f"run 1 completed: resnet18 (CPU stand-in for resnet50) / cnn (fitted){lr} / seed 0: test acc 0.9111, "
                "best val acc 0.9312 (epoch 1)  [1 running, 1/8 done, 1m02s elapsed, ETA 3m10s]")
    with progress.LiveView(title="benchmark naive_vs_recipe", total_runs=8, slots=2, live=True) as view:
        view.run_started("1", f"run 1  resnet18 / cnn (fitted){lr}", epochs=1)
        view.echo(started)
        view.epoch("1", 1, {"val_acc": 0.93, "images_per_s": 450.0, "epoch_s": 2.0})
        view.run_finished("1")
        view.echo(finished)
    text = ANSI.sub("", buf.getvalue()).replace("\r", "\n")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    width = min(columns, 100)
    logged = [ln for ln in lines if not ln.startswith(("benchmark", "  run 1"))]  # the log lines, not the bars
    assert max(map(len, logged)) <= width, "\n" + text
    assert max(map(len, lines)) <= columns, "\n" + text  # the bars fit the terminal too
    assert " ".join(" ".join(logged).split()).count("run 1 started") == 1 and "ETA 3m10s" in text  # nothing cut
    assert any(ln.startswith("  ") for ln in logged) == (max(len(started), len(finished)) > width)  # folded, indented
