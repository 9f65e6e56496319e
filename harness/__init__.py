from __future__ import annotations

__version__ = "0.1.0"

# The results database when --db is not given (harness.store re-exports it; the CLI reads it from
# here so that `--help` and `sweep --validate` need not import SQLAlchemy).
DEFAULT_DB = "sqlite:///results.db"
