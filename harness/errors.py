"""Domain errors. The CLI turns a `UserError` into one message and exit code 2."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Bad input: names the field, the value received and the fix.

    Raised before anything is written (database, checkpoints, dashboards), so a refused command
    leaves no trace.
    """

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field, self.value, self.fix = field, value, fix
        shown = repr(value)
        if len(shown) > 200:
            shown = shown[:200] + "..."
        super().__init__(f"{field}: got {shown}. {fix}")

    def __reduce__(self):  # pickled as its three fields: Ray rebuilds a trial's error from them
        return (type(self), (self.field, self.value, self.fix))


def close_matches(name: str, choices: Iterable[str]) -> str:
    """'did you mean' text for an unknown name, listing the valid ones."""
    choices = sorted(choices)
    near = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    hint = f"Did you mean {' or '.join(repr(n) for n in near)}? " if near else ""
    return f"{hint}Valid: {', '.join(choices)}."


def unknown(field: str, name: str, choices: Iterable[str]) -> UserError:
    return UserError(field, name, "Unknown name. " + close_matches(name, choices))
