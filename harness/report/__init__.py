"""Tables over the results database (pandas): the statistics (`stats.py`), reading the database
(`read.py`) and the tables built from it (`tables.py`): the before/after table of a benchmark, the
ablation ladder's, and the per-run summaries the pages draw. `from harness import report as rep` and
`rep.before_after(...)` keep working: every public name is here."""

from __future__ import annotations

from harness.report.stats import (  # noqa: F401
    CONFIDENCE, Z95, BOOTSTRAP_QUANTILES, BOOTSTRAP_RESAMPLES, NO_DIFFERENCE, VERDICTS, CHANCE_MARGIN, NEAR_BEST,
    DATASET_CLASSES, wilson, newcombe, paired_bootstrap, verdict)
from harness.report.read import (  # noqa: F401
    open_reader, read_experiments, read_running_experiments, WHERE_COLUMNS, read_runs, read_epochs,
    read_evaluation_sizes,
    RUN_STAMP_COLUMNS, read_run_stamps, read_run_counts, read_run_points, read_evaluations, read_study_stamps)
from harness.report.tables import (  # noqa: F401
    RUN_SUMMARY_COLUMNS, run_summary, TABLE_COLUMNS, compare, before_after, format_final, format_before_after,
    TABLE_LEGEND, to_markdown, to_text, save_before_after, latest_benchmark, check_runs_exist, ABLATION_VERDICT,
    ABLATION_COLUMNS, ablation_table, format_ablation, ABLATION_LEGEND, save_ablation)

__all__ = ["ABLATION_COLUMNS", "ABLATION_LEGEND", "ABLATION_VERDICT", "BOOTSTRAP_QUANTILES",
           "BOOTSTRAP_RESAMPLES", "CHANCE_MARGIN", "CONFIDENCE", "DATASET_CLASSES", "NEAR_BEST",
           "NO_DIFFERENCE", "RUN_STAMP_COLUMNS", "RUN_SUMMARY_COLUMNS", "TABLE_COLUMNS", "TABLE_LEGEND",
           "VERDICTS", "WHERE_COLUMNS", "Z95", "ablation_table", "before_after", "check_runs_exist", "compare",
           "format_ablation", "format_before_after", "format_final", "latest_benchmark", "newcombe",
           "open_reader", "paired_bootstrap", "read_epochs", "read_evaluation_sizes",
           "read_evaluations", "read_experiments", "read_run_counts", "read_run_points", "read_run_stamps",
    "read_running_experiments", "read_runs", "read_study_stamps", "run_summary", "save_ablation",
    "save_before_after", "to_markdown",
           "to_text", "verdict", "wilson"]
