"""Tables over the results database (pandas): the statistics (`stats.py`), reading the database
(`read.py`) and the tables built from it (`before_after.py`, read by people through `text.py`): the before/after table of a benchmark,
the ablation ladder's (`ablation.py`), and the per-run summaries the pages draw. Every public name is
here: `from harness import tables as rep`, then `rep.before_after(...)`. (Named `report` until
2026-12-06; `harness report` is the command that writes the pages.)"""

from __future__ import annotations

from harness.tables.ablation import (  # noqa: F401
    ABLATION_COLUMNS,
    ABLATION_LEGEND,
    ABLATION_VERDICT,
    ablation_table,
    format_ablation,
    save_ablation,
)
from harness.tables.before_after import (  # noqa: F401
    RUN_SUMMARY_COLUMNS,
    TABLE_COLUMNS,
    UNFINISHED,
    before_after,
    best_lr,
    check_runs_exist,
    compare,
    latest_benchmark,
    run_summary,
    splits_of,
)
from harness.tables.read import (  # noqa: F401
    RUN_STAMP_COLUMNS,
    TEST_COLUMNS,
    WHERE_COLUMNS,
    open_reader,
    read_epochs,
    read_evaluation_sizes,
    read_evaluations,
    read_experiments,
    read_run_counts,
    read_run_points,
    read_run_stamps,
    read_running_experiments,
    read_runs,
    read_study_stamps,
    read_test_correct,
)
from harness.tables.stats import (  # noqa: F401
    COLLAPSE_ALPHA,
    CONFIDENCE,
    DATASET_CLASSES,
    NEAR_BEST,
    NO_DIFFERENCE,
    PAIRED_IMAGES_METHOD,
    SEED_T_METHOD,
    VERDICTS,
    Z95,
    beats_chance,
    newcombe,
    paired_image_interval,
    seed_t_interval,
    verdict,
    wilson,
)
from harness.tables.text import (  # noqa: F401
    TABLE_LEGEND,
    TERMINAL_COLUMNS,
    format_acc,
    format_before_after,
    save_before_after,
    to_markdown,
)

__all__ = ["ABLATION_COLUMNS", "ABLATION_LEGEND", "ABLATION_VERDICT", "COLLAPSE_ALPHA", "CONFIDENCE",
           "DATASET_CLASSES", "NEAR_BEST", "NO_DIFFERENCE", "PAIRED_IMAGES_METHOD", "RUN_STAMP_COLUMNS",
           "RUN_SUMMARY_COLUMNS", "SEED_T_METHOD", "TABLE_COLUMNS", "TABLE_LEGEND", "TERMINAL_COLUMNS", "TEST_COLUMNS", "UNFINISHED",
           "VERDICTS", "WHERE_COLUMNS", "Z95", "ablation_table", "beats_chance", "before_after", "best_lr",
           "check_runs_exist", "compare", "format_ablation", "format_acc", "format_before_after", "latest_benchmark",
           "newcombe", "open_reader", "paired_image_interval", "read_epochs", "read_evaluation_sizes",
           "read_evaluations", "read_experiments", "read_run_counts", "read_run_points", "read_run_stamps",
           "read_running_experiments", "read_runs", "read_study_stamps", "read_test_correct", "run_summary",
           "save_ablation", "save_before_after", "seed_t_interval", "splits_of", "to_markdown", "to_text", "verdict", "wilson"]

from harness.terminal import to_text  # noqa: E402,F401 (tables for the terminal live with the other terminal output)
