"""Plugins: your own models, datasets and recipes, registered from outside the harness.

A plugin is a Python module (`my_models`) or file (`path/to/my_models.py`) that, when imported,
calls the registries' own `register` functions:

    from harness.models import ModelEntry, register
    register(ModelEntry("my_net", "resnet", factory=build_my_net, description="..."))

Name it with `harness --plugin my_models ...` (repeatable), or ship it as an entry point in the
`harness.plugins` group of your package (loaded by every command):

    [project.entry-points."harness.plugins"]
    my_models = "my_pkg.models"            # a module: importing it registers
    my_recipes = "my_pkg.recipes:register" # module:attr: imported, then the attribute is loaded

An entry point is loaded as Python packaging defines it (`EntryPoint.load()`: the module, or the
object its `attr` names, dotted paths allowed). A loaded object that is callable is then called with
no arguments: that is how a `module:function` plugin registers (as a Sphinx extension's `setup` or a
Jupyter extension's loader is called), so registering can live in a function rather than at import.
pytest and flake8 only load their entry-point objects because they use them later as plugin objects
or checkers; the harness has nothing to use an object for but registering. A non-callable attribute
(a constant, say) is loaded and not called. `--plugin my_pkg.recipes:register` means the same.

Runs remember the plugins that were loaded when their spec was made (`RunSpec.plugins`: a file as its
absolute path, a module by name, an entry point as `module:attr`), and a Ray worker or a retried
trial loads them again before it builds anything: the package must be importable there, but need not
be installed as a distribution. A resumed checkpoint is different: it is a file that travels, so the
plugins it names load only when given again (`--plugin`, or installed as entry points); otherwise
`harness train --resume` refuses, naming them (`not_given`). Nothing a file names is run. The reliability tests use exactly this
to plant faults (tests/plugins/faults.py: a model that raises, returns NaN or sleeps on cue), so
the training loop carries no test branches.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

from harness.errors import UserError

ENTRY_POINT_GROUP = "harness.plugins"

_LOADED: dict[str, None] = {}  # ref -> None, in load order (a dict keeps the order and drops repeats)
_entry_points_loaded = False


def _is_file(ref: str) -> bool:
    return ref.endswith(".py") or "/" in ref or "\\" in ref


def resolve(ref: str, field: str = "--plugin") -> str:
    """A file plugin as an absolute path (workers run elsewhere); a module or `module:attr` as given."""
    if _is_file(ref):
        path = Path(ref).expanduser().resolve()
        if not path.is_file():
            raise UserError(field, ref, "No such plugin file; give a .py file or an importable module name.")
        return str(path)
    return ref


def _load_object(ref: str, field: str) -> None:
    """Import `module` or load `module:attr` (EntryPoint.load, the packaging spec's rules); call what
    an attr names when it is callable (the module docstring says why)."""
    ep = EntryPoint(name=ref, value=ref, group=ENTRY_POINT_GROUP)
    try:
        module, attr = ep.module, ep.attr  # a value outside the spec's `module[:attr]` pattern fails here
    except AttributeError:
        raise UserError(field, ref, "Not a plugin reference; give a module (my_pkg.plugin), module:function "
                        "(my_pkg.plugin:register) or the path of a .py file.") from None
    try:
        obj = ep.load()
    except ModuleNotFoundError as e:
        if e.name is not None and (module == e.name or module.startswith(e.name + ".")):
            raise UserError(field, ref, "No module of that name is importable here; install it, or give the "
                            "path of its .py file.") from None
        raise
    except AttributeError as e:
        if attr and attr.split(".")[-1] in str(e):
            raise UserError(field, ref, f"Module {module} has no {attr}; name a function in it, or the module "
                            "alone if importing it registers.") from None
        raise
    if attr and callable(obj):
        obj()


def load(refs: Iterable[str], field: str = "--plugin") -> tuple[str, ...]:
    """Import each plugin once (module, module:attr or .py file). Returns the resolved references."""
    resolved = []
    for ref in refs:
        key = resolve(ref, field)
        resolved.append(key)
        if key in _LOADED:
            continue
        if _is_file(key):
            # A stable module name per path: the same file loaded twice is one module.
            name = "harness_plugin_" + hashlib.sha1(key.encode()).hexdigest()[:12]
            spec = importlib.util.spec_from_file_location(name, key)
            module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
            sys.modules[name] = module
            spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            _load_object(key, field)
        _LOADED[key] = None
    return tuple(resolved)


def load_entry_points() -> None:
    """Load every plugin installed under the `harness.plugins` entry-point group (once), each as
    `module` or `module:attr` (extras ignored), so a run records what its workers must load again."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        load([f"{ep.module}:{ep.attr}" if ep.attr else ep.module], field=f"entry point {ep.name} ({ep.value})")


def not_given(refs: Iterable[str]) -> list[str]:
    """Of the plugins a stored spec names (a checkpoint's, a stored experiment's), those this process
    has not loaded from its own command line (`--plugin`) or its installed entry points. A stored spec
    is data that travels (checkpoints are shared between colleagues and clusters): loading what it
    names would run code the user never asked for, which `torch.load(weights_only=True)` exists to
    prevent. A file plugin counts as given when a loaded file has its file name (the same plugin
    checked out at another path)."""
    loaded = set(_LOADED)
    names = {Path(k).name for k in loaded if _is_file(k)}
    return [r for r in refs if r not in loaded and not (_is_file(r) and Path(r).name in names)]


def active() -> tuple[str, ...]:
    """The plugins loaded in this process, in order: what a RunSpec made now carries to its workers."""
    return tuple(_LOADED)
