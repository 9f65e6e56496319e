"""harness: which training recipe does this architecture need, and how much does it matter?

The Python API (`harness/api.py`): `harness.benchmark(...)`, `harness.sweep(...)`, `harness.train(...)`
take the commands' flags as keywords and return a `harness.api.Result` (the experiment id and the tables
as pandas DataFrames). Importing `harness` stays cheap: nothing heavy is imported until one is called
(`harness --help` and `harness sweep --validate` import no torch).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__version__ = "0.1.0"

# The results database when --db is not given (harness.store re-exports it; the CLI reads it from
# here so that `--help` and `sweep --validate` need not import SQLAlchemy).
DEFAULT_DB = "sqlite:///results.db"

API = ("benchmark", "sweep", "train")  # the API's functions, named as the modules that do the work


class _Entry:
    """`harness.train` and friends: the module of that name (`harness.train.fit`, `from harness import
    train`, monkeypatching its attributes all reach the module) that is also the API function when called.
    The API's names are the commands' and so the modules' names; this keeps both meanings working."""

    # No instance __dict__: `entry.__dict__` is the module's (through __getattr__), so pytest's monkeypatch,
    # which restores what it finds there, puts a patched function back instead of deleting it.
    __slots__ = ("_name",)

    def __init__(self, name: str) -> None:
        object.__setattr__(self, "_name", name)

    def _module(self) -> types.ModuleType:
        return importlib.import_module(f"harness.{self._name}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from harness import api

        return getattr(api, self._name)(*args, **kwargs)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._module(), attr)

    def __setattr__(self, attr: str, value: Any) -> None:
        setattr(self._module(), attr, value)

    def __delattr__(self, attr: str) -> None:
        delattr(self._module(), attr)

    def __dir__(self) -> list[str]:
        return dir(self._module())

    def __repr__(self) -> str:
        return f"<harness.{self._name}: the module, and harness.api.{self._name}() when called>"

    @property
    def __doc__(self) -> str | None:  # type: ignore[override]
        from harness import api

        return getattr(api, self._name).__doc__


_ENTRIES = {name: _Entry(name) for name in API}


class _Package(types.ModuleType):
    """The package's module type: importing a submodule sets `harness.<name>` to it; for the API's names the
    callable entry is returned instead, whatever was set."""

    def __getattribute__(self, name: str) -> Any:
        if name in API:
            return _ENTRIES[name]
        return super().__getattribute__(name)


sys.modules[__name__].__class__ = _Package
