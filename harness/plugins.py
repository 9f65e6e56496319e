"""Plugins: your own models, datasets and recipes, registered from outside the harness.

A plugin is a Python module (`my_models`) or file (`path/to/my_models.py`) that, when imported,
calls the registries' own `register` functions:

    from harness.models import ModelEntry, register
    register(ModelEntry("my_net", "resnet", factory=build_my_net, description="..."))

Name it with `harness --plugin my_models ...` (repeatable), or ship it as an entry point in the
`harness.plugins` group of your package (loaded by every command). Runs remember the plugins that
were loaded when their spec was made (`RunSpec.plugins`): a Ray worker, a resumed checkpoint or a
retried trial imports them again before it builds anything. The reliability tests use exactly this
to plant faults (tests/plugins/faults.py: a model that raises, returns NaN or sleeps on cue), so
the training loop carries no test branches.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path

from harness.errors import UserError

ENTRY_POINT_GROUP = "harness.plugins"

_LOADED: dict[str, None] = {}  # ref -> None, in load order (a dict keeps the order and drops repeats)
_entry_points_loaded = False


def _is_file(ref: str) -> bool:
    return ref.endswith(".py") or "/" in ref or "\\" in ref


def resolve(ref: str, field: str = "--plugin") -> str:
    """A file plugin as an absolute path (workers run elsewhere); a module name as given."""
    if _is_file(ref):
        path = Path(ref).expanduser().resolve()
        if not path.is_file():
            raise UserError(field, ref, "No such plugin file; give a .py file or an importable module name.")
        return str(path)
    return ref


def load(refs: Iterable[str], field: str = "--plugin") -> tuple[str, ...]:
    """Import each plugin once (module name or .py file). Returns the resolved references."""
    resolved = []
    for ref in refs:
        key = resolve(ref, field)
        resolved.append(key)
        if key in _LOADED:
            continue
        try:
            if _is_file(key):
                # A stable module name per path: the same file loaded twice is one module.
                name = "harness_plugin_" + hashlib.sha1(key.encode()).hexdigest()[:12]
                spec = importlib.util.spec_from_file_location(name, key)
                module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
                sys.modules[name] = module
                spec.loader.exec_module(module)  # type: ignore[union-attr]
            else:
                importlib.import_module(key)
        except ModuleNotFoundError as e:
            if e.name == key:
                raise UserError(field, ref, "No module of that name is importable here; install it, or give the "
                                "path of its .py file.") from None
            raise
        _LOADED[key] = None
    return tuple(resolved)


def load_entry_points() -> None:
    """Import every plugin installed under the `harness.plugins` entry-point group (once)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        load([ep.module], field=f"entry point {ep.name}")  # recorded: runs carry it to their workers


def active() -> tuple[str, ...]:
    """The plugins loaded in this process, in order: what a RunSpec made now carries to its workers."""
    return tuple(_LOADED)
