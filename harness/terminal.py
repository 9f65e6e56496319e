"""What a person reads in a terminal: tables laid out once to its width (and never folded again),
messages folded to min(width, `MESSAGE_COLUMNS`). Only on a terminal: piped output and logs keep each
table row and each message on one line (what grep and a log reader want), and the .md/.csv files keep
every column. The live progress display (`harness.progress`) folds its log lines with `fold` too."""

from __future__ import annotations

import shutil
import sys
import textwrap
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    import pandas as pd

# Messages fold here even on a wider terminal (long lines are hard to read), and the fixed listings
# (`harness models`, `harness recipes`) are laid out for it: a laptop's half-screen terminal.
MESSAGE_COLUMNS = 100


class LaidOut(str):
    """Text already laid out to the terminal's width (a table from `to_text`): `echo` prints it as it is.
    Folding a table's lines again at MESSAGE_COLUMNS would split its header and rows mid-table on a
    terminal wider than that."""


def message_width(width: int) -> int:
    """The columns a message folds at on a terminal `width` wide."""
    return min(width, MESSAGE_COLUMNS)


def terminal_width(stream: TextIO | None = None) -> int | None:
    """The terminal's width when `stream` (stdout by default) is one (COLUMNS overrides it), else None."""
    stream = stream or sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream
        tty = False
    return shutil.get_terminal_size().columns if tty else None


def fold(text: str, width: int) -> str:
    """Each line longer than `width` folded at spaces, its continuations indented two more spaces than
    it; lines that fit (table rows laid out to the width) are left exactly as they are."""
    out: list[str] = []
    for line in text.splitlines() or [""]:
        if len(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()))
        out += textwrap.wrap(line, width, initial_indent="", subsequent_indent=indent + "  ", break_long_words=False,
                             break_on_hyphens=False) or [line]
    return "\n".join(out)


def echo(text: str = "", err: bool = False) -> None:
    """click.echo, with the message folded to the terminal (at most MESSAGE_COLUMNS) when it is one; a
    table from `to_text` (`LaidOut`) goes out as laid out."""
    import click

    width = terminal_width(sys.stderr if err else sys.stdout)
    click.echo(fold(str(text), message_width(width)) if width and not isinstance(text, LaidOut) else text, err=err)


def to_text(df: pd.DataFrame, *, width: int | None = None, columns: tuple[str, ...] | None = None) -> LaidOut:
    """A table for the terminal: laid out to `width` (default: the terminal's, when stdout is one) by rich,
    long cells folded onto more lines, never cut; with a width, only `columns` (those of them present) when
    given. Without a width (a pipe, a log) every column, each row on one line. `echo` prints it unfolded."""
    import io

    import pandas as pd
    from rich import box
    from rich.console import Console
    from rich.table import Table

    if df.empty:
        return LaidOut("(no runs)")
    width = width or terminal_width()
    if width is not None and columns is not None:
        df = df[[c for c in df.columns if c in columns]]
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True, show_lines=width is not None)
    for c in df.columns:
        table.add_column(str(c), overflow="fold")
    for row in df.itertuples(index=False):
        table.add_row(*("" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v) for v in row))
    console = Console(width=width or 100_000, file=io.StringIO(), record=True, color_system=None, soft_wrap=False)
    console.print(table)
    return LaidOut("\n".join(line.rstrip() for line in console.export_text().splitlines() if line.strip()))
