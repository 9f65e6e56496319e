"""A results table's legend on its page: one short line per column shown, under the table, and the
full legend (the paragraph the .md files carry, `tables.TABLE_LEGEND` and its kin) behind a toggle.

A reader scans the short list for the column in front of them; the methods (which interval, which test,
which sources) are a click away instead of a 14-line paragraph between the figure and the table.
"""

from __future__ import annotations

from collections.abc import Iterable

from harness.dashboards.markup import esc

# Before/after (`tables.format_before_after`): header -> what it holds, in a line.
BEFORE_AFTER = {
    "model": "what ran; on CPU the stand-in and the model it stands for",
    "recipes": "before → after: the baseline recipe and the one compared with it",
    "lr": "with an lr axis: each recipe at its own lr, or at its best lr in the grid (chosen on validation)",
    "seeds": "seeds paired on each side and why: fixed (--seeds N), decided or cap (--seeds auto: 2, then more "
             "while the verdict is undecided, up to 5); k → m when the sides differ",
    "batch, updates": "batch size and optimizer updates per run",
    "test acc %": "the final weights on the held-out test split; one seed: [95% interval over its images], "
                  "several: mean ± std",
    "test acc % (val where flagged)": "as test acc %; on validation where the data has no test split (the flags say so)",
    "collapsed": "runs that ended at chance, diverged or failed, as k/n",
    "Δ [CI]": "after − before in points, with a paired interval carrying the seeds and the shared test images "
              "(95%; 98.75% at each look of --seeds auto)",
    "interval": "how that interval was made: over seeds and test images together, or the test images for one seed",
    "verdict": "better / worse when the interval excludes 0, else no detectable difference",
    "best val acc %": "the best epoch on validation: optimistic, shown but never judged",
    "epochs to 90% of best": "the first epoch at 90% of the run's best validation accuracy",
    "final train–val gap (pts)": "train − val accuracy at the last epoch (eval mode, no augmentation)",
    "flags": "what to check before trusting the row",
}

# The ablation ladder (`tables.format_ablation`).
ABLATION = {
    "mode": "add: ingredients added one by one to the baseline; drop: the full recipe minus one",
    "rung": "the rung's place on the ladder (0 = where it starts)",
    "ingredient": "what this rung adds (+) or drops (−)",
    "seeds": "runs on this rung",
    "test acc %": "the final weights on the held-out test split; one seed: [95% interval], several: mean ± std",
    "Δ vs previous": "this ingredient's effect at this point of the order, points, paired 95% interval",
    "Δ vs full": "the full recipe's loss without this ingredient, points, paired 95% interval",
    "Δ vs start": "the ladder so far against its start",
    "verdict": "helps / hurts when the interval excludes 0, else no detectable difference",
}

# The lr sensitivity summary (`sensitivity.format_summary`); "naive lr" heads a column named with its value.
SENSITIVITY = {
    "model": "what ran",
    "recipe": "the recipe whose whole schedule the lr axis scales",
    "seeds x lrs": "runs per lr, lrs in the grid",
    "best lr on val (val %)": "the lr with the highest validation median (what chooses); at the grid's edge, the "
                              "lrs to add",
    "test % there": "the test median at that lr (what reports)",
    "window (1 SE, paired)": "the lrs whose paired difference from the best is within one standard error, and its "
                             "width in decades",
    "recommended lr": "of the window, the lr farthest from any lr where a seed collapsed or diverged",
    "LR sensitivity (Wortsman, test loss)": "mean excess test loss over one shared absolute lr range of at least two "
                                            "decades (lower: less sensitive); '-' without one",
    "mean shortfall from best (acc pts, own grid)": "best − test median, averaged over the recipe's own grid",
    "own lr": "the recipe's own lr against the best",
    "naive lr": "where the naive recipe's lr falls on this recipe's curve",
    "collapsed, diverged": "runs at chance, runs with NaN/Inf loss",
    "danger zone (lrs)": "lrs where one seed failed while another trained",
}


def note(notes: dict[str, str], header: str) -> str | None:
    """The line for `header`: its own, else that of the longest name it starts with ("naive lr 0.001")."""
    if header in notes:
        return notes[header]
    starts = [k for k in notes if header.startswith(k + " ")]
    return notes[max(starts, key=len)] if starts else None


def legend_html(notes: dict[str, str], columns: Iterable[str], full: str) -> str:
    """The short list for the `columns` shown (those with a line) and the full legend behind <details>."""
    items = "".join(f"<li><b>{esc(c)}</b>: {esc(line)}</li>" for c in columns if (line := note(notes, str(c))))
    return (f"<div class='legend'><ul>{items}</ul><details><summary>How these numbers are made</summary>"
            f"<p>{esc(full)}</p></details></div>")
