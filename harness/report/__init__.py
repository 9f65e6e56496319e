"""Tables over the results database (pandas): the statistics (`stats.py`), reading the database
(`read.py`) and the tables built from it (`tables.py`): the before/after table of a benchmark, the
ablation ladder's (`ablation.py`), and the per-run summaries the pages draw. `from harness import report as rep` and
`rep.before_after(...)` keep working: every public name is here."""

from __future__ import annotations

from harness.report.stats import (  # noqa: F401
    CONFIDENCE, Z95, NO_DIFFERENCE, VERDICTS, COLLAPSE_ALPHA, NEAR_BEST, DATASET_CLASSES, PAIRED_IMAGES_METHOD,
    SEED_T_METHOD, wilson, newcombe, paired_image_interval, seed_t_interval, beats_chance, verdict)
from harness.report.read import (  # noqa: F401
    open_reader, read_experiments, read_running_experiments, WHERE_COLUMNS, TEST_COLUMNS, read_runs, read_epochs,
    read_evaluation_sizes, read_test_correct,
    RUN_STAMP_COLUMNS, read_run_stamps, read_run_counts, read_run_points, read_evaluations, read_study_stamps)
from harness.report.tables import (  # noqa: F401
    RUN_SUMMARY_COLUMNS, run_summary, TABLE_COLUMNS, UNFINISHED, compare, best_lr, before_after, format_acc, splits_of,
    format_before_after, TABLE_LEGEND, to_markdown, to_text, save_before_after, latest_benchmark, check_runs_exist)
from harness.report.ablation import (  # noqa: F401
    ABLATION_VERDICT, ABLATION_COLUMNS, ablation_table, format_ablation, ABLATION_LEGEND, save_ablation)

__all__ = ["ABLATION_COLUMNS", "ABLATION_LEGEND", "ABLATION_VERDICT", "COLLAPSE_ALPHA", "CONFIDENCE",
           "DATASET_CLASSES", "NEAR_BEST", "NO_DIFFERENCE", "PAIRED_IMAGES_METHOD", "RUN_STAMP_COLUMNS",
           "RUN_SUMMARY_COLUMNS", "SEED_T_METHOD", "TABLE_COLUMNS", "TABLE_LEGEND", "TEST_COLUMNS", "UNFINISHED",
           "VERDICTS", "WHERE_COLUMNS", "Z95", "ablation_table", "beats_chance", "before_after", "best_lr",
           "check_runs_exist", "compare", "format_ablation", "format_acc", "format_before_after", "latest_benchmark",
           "newcombe", "open_reader", "paired_image_interval", "read_epochs", "read_evaluation_sizes",
           "read_evaluations", "read_experiments", "read_run_counts", "read_run_points", "read_run_stamps",
           "read_running_experiments", "read_runs", "read_study_stamps", "read_test_correct", "run_summary",
           "save_ablation", "save_before_after", "seed_t_interval", "splits_of", "to_markdown", "to_text", "verdict", "wilson"]
