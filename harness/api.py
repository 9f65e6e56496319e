"""The Python API: `harness.benchmark(...)`, `harness.sweep(...)`, `harness.train(...)`.

Each takes the command's flags as keywords (the same names, `-` as `_`: `--batch-size 64` is
`batch_size=64`, `--set lr=3e-4` is `sets={"lr": 3e-4}`, `--family convnext_tiny=swin` is
`family={"convnext_tiny": "swin"}`), runs what the command runs, and returns a `Result`: the experiment id,
its status and its tables as pandas DataFrames, read back from the results database. Nothing is printed
unless `echo` is given (`echo=print` prints what the command prints). Bad input raises
`harness.errors.UserError` (the field, the value, the fix) before anything is written; the CLI is a
skin over these functions that turns that into exit code 2.

    import harness
    result = harness.benchmark(models="resnet_test,vit_test", epochs=1, seeds=1)
    print(result.table)            # the before/after table
    print(result.experiment_id)    # its rows in results.db
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import UserError
from harness.experiment import DEFAULT_DB, DEFAULT_STORAGE, PAGES_EVERY_S, Where

if TYPE_CHECKING:
    import pandas as pd


def _quiet(line: str) -> None:
    """The API's default echo: the tables come back in the Result, not on stdout."""


@dataclass(frozen=True)
class Result:
    """What a command did: its experiment (`experiment_id` in `db`), how it ended (`status`: completed, or
    interrupted, which `resume=True` continues), and its tables by name (`table`: the main one)."""

    experiment_id: int
    status: str
    db: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    files: dict[str, Path] = field(default_factory=dict)  # what it wrote besides the database (a recipe file...)

    @property
    def table(self) -> pd.DataFrame:
        return next(iter(self.tables.values()))

    def __getitem__(self, name: str) -> pd.DataFrame:
        return self.tables[name]


def parse_families(family: str | dict[str, str] | tuple[str, ...] | list[str] | None, *,
                   models: list[str] | None) -> dict[str, str]:
    """`family=` (or --family, repeatable): {model: family}, 'MODEL=FAMILY' items, or FAMILY alone when one
    model runs. A model named that does not run is refused (a typo would otherwise be silently ignored)."""
    if family is None:
        return {}
    items = [family] if isinstance(family, str) else list(family.items()) if isinstance(family, dict) else list(family)
    out: dict[str, str] = {}
    for item in items:
        if isinstance(item, tuple):
            model, fam = item
        else:
            model, sep, fam = str(item).rpartition("=")
            if not sep:
                if not models or len(models) != 1:
                    raise UserError("--family", item, "Name the model it is for: --family MODEL=FAMILY (FAMILY alone "
                                    "only when one model runs).")
                model = models[0]
        if models is not None and model not in models:
            raise UserError("--family", f"{model}={fam}", f"{model} is not a model of this command ({', '.join(models)}); "
                            "give --family MODEL=FAMILY for a model it runs.")
        out[model] = fam
    return out


@contextlib.contextmanager
def _families(family: Any, models: list[str] | None) -> Iterator[None]:
    from harness.models import declared_families

    with declared_families(parse_families(family, models=models)):
        yield


def _where(db: str, out: Path | str | None, address: str | None, storage_path: Path | str,
           pages_every: float, tensorboard: bool = True, mlflow: str | None = None) -> Where:
    return Where(db=db, out=None if out is None else Path(out), address=address, storage_path=Path(storage_path),
                 pages_every_s=pages_every, tensorboard=tensorboard, mlflow=mlflow).check()


def benchmark(grid: Path | str | None = None, *, models: str | list[str] | None = None,
              recipes: str | list[str] | None = None, epochs: int | None = None, seeds: int | str | None = None,
              batch_size: int | None = None, data: str | None = None, image_size: int | None = None,
              scale: str | None = None, concurrency: int | None = None, sets: dict[str, Any] | None = None,
              lrs: str | None = None, family: Any = None, db: str = DEFAULT_DB, out: Path | str | None = "dashboards",
              address: str | None = None, storage_path: Path | str = DEFAULT_STORAGE, pages_every: float = PAGES_EVERY_S,
              tensorboard: bool = True, mlflow: str | None = None,
              resume: bool = False, pretrained: bool = False, pretrained_files: tuple[str, ...] = (),
              echo: Callable[[str], None] = _quiet) -> Result:
    """`harness benchmark`: models x recipes x seeds, then the before/after table (`result.table`; with an
    lr axis also `sensitivity` and `curve`). `out=None` writes no pages."""
    from harness.benchmark import load_grid, run_benchmark, split_names
    from harness.options import parse_pretrained

    models = models if isinstance(models, str) or models is None else ",".join(models)
    names = split_names(models)
    with _families(family, names):
        spec = load_grid(None if grid is None else Path(grid), models=models,  # as given: load_grid refuses an empty list
                         recipes=recipes if isinstance(recipes, str) or recipes is None else ",".join(recipes),
                         epochs=epochs, seeds=seeds, data=data, image_size=image_size, scale=scale,
                         concurrency=concurrency, batch_size=batch_size, sets=sets or {}, lrs=lrs,
                         pretrained=parse_pretrained(pretrained, tuple(pretrained_files), models=names))
        if family is not None and names is None:  # the grid file's models: a --family names one of them
            parse_families(family, models=[str(m) for m in spec.models])
        where = _where(db, out, address, storage_path, pages_every, tensorboard, mlflow)
        outcome = run_benchmark(spec, where, echo=echo, resume=resume, grid_file=None if grid is None else Path(grid))
    return Result(outcome.experiment_id, outcome.status, db, benchmark_tables(db, outcome.experiment_id))


def benchmark_tables(db: str, experiment_id: int) -> dict[str, pd.DataFrame]:
    """A benchmark's tables as the command prints them, read from the database: the before/after table and,
    with an lr axis, the sensitivity summary and the curve's points."""
    import harness.sensitivity as sens
    import harness.tables as rep

    store = rep.open_reader(db)
    try:
        tables = {"before_after": rep.before_after(store, experiment_id)}
        _, points, summary = sens.sensitivity(store, experiment_id)
        if not points.empty:
            tables.update(sensitivity=summary, curve=points)
        tables["runs"] = rep.read_runs(store, experiment_id)
    finally:
        store.close()
    return tables


def sweep(study: Path | str, *, validate: bool = False, resume: bool = False, family: str | None = None,
          db: str = DEFAULT_DB, out: Path | str | None = "dashboards", address: str | None = None,
          storage_path: Path | str = DEFAULT_STORAGE, pages_every: float = PAGES_EVERY_S, max_failures: int = 1,
          tensorboard: bool = True, mlflow: str | None = None,
          top: int = 10, pretrained: bool = False, pretrained_files: tuple[str, ...] = (),
          echo: Callable[[str], None] = _quiet) -> Result | list[str]:
    """`harness sweep STUDY`: the Optuna study through Ray Tune; `result.table` holds every trial, best first
    (`result.files["recipe"]`: the best trial's recipe file). `validate=True` checks the study file only
    (no torch, no Ray) and returns its lines."""
    import harness.study as study_mod

    if validate:
        with _families(family, None):
            return study_mod.check_study(Path(study), on_cluster=address is not None)
    from harness.options import parse_pretrained
    from harness.sweep import run_sweep

    with _families(family, None):
        model = study_mod.load_study(Path(study)).model if family is not None or pretrained_files else None
        with _families(family, [str(model)] if model is not None else None):
            where = _where(db, out, address, storage_path, pages_every, tensorboard, mlflow)
            result = run_sweep(Path(study), where, resume=resume, max_failures=max_failures, echo=echo, top=top,
                               pretrained=parse_pretrained(pretrained, tuple(pretrained_files),
                                                           models=[str(model)] if model is not None else None))
    tables = {"trials": result.table} if result.table is not None else {}
    files = {"recipe": result.recipe_file} if result.recipe_file is not None else {}
    return Result(result.experiment_id, result.status, db, tables, files)


def train(model: str | None = None, *, recipe: str = "fitted", data: str = "digits", data_root: Path | str | None = None,
          download: bool = False, image_size: int = 32, train_size: int | None = None, workers: int | None = None,
          epochs: int | None = None, batch_size: int | None = None, seed: int = 0, sets: dict[str, Any] | None = None,
          family: str | None = None, db: str = DEFAULT_DB, device: str = "auto", compile: bool = False,
          pretrained: bool = False, pretrained_file: Path | str | None = None, checkpoint_dir: Path | str | None = None,
          checkpoint_every: int = 0, max_hours: float | None = None, resume: Path | str | None = None,
          threads: int | None = None, echo: Callable[[str], None] = _quiet, **record: Any) -> Result:
    """`harness train`: one model, one recipe, in this process; `result.table` holds its epochs
    (`result["run"]`: its row). `record` goes to the recorder as given (e.g. the trackers' options)."""
    import harness.tables as rep
    from harness.options import make_data_spec
    from harness.process import resolve_device
    from harness.runner import resumed_spec, run_and_record
    from harness.specs import resolve_run
    from harness.store import check_url

    check_url(db)
    with _families(family, [model] if model is not None else None):
        if resume is not None:
            spec = resumed_spec(Path(resume), epochs)
        elif model is None:
            raise UserError("--model", None, "Name a model (see `harness models`), or pass --resume CHECKPOINT.")
        else:
            data_spec = make_data_spec(data_name=data, data_root=None if data_root is None else Path(data_root),
                                       download=download, image_size=image_size, train_size=train_size, workers=workers)
            spec = resolve_run(model=model, recipe=recipe, data=data_spec, overrides=sets or {}, batch_size=batch_size,
                               epochs=10 if epochs is None else epochs, seed=seed, device=device, compile=compile,
                               pretrained=pretrained, pretrained_file=None if pretrained_file is None else Path(pretrained_file),
                               checkpoint_dir=None if checkpoint_dir is None else Path(checkpoint_dir),
                               checkpoint_every=checkpoint_every, max_hours=max_hours, threads=threads)
        resolve_device(spec.device)
        before = _last_experiment(db)
        done = run_and_record(spec, db=db, resume=None if resume is None else Path(resume), echo=echo, **record)
    store = rep.open_reader(db)
    try:
        # The experiment this call made: the first `train` experiment of this model and recipe after the ones
        # there before (the recorder, in this process, made it).
        exps = rep.read_experiments(store)
        mine = exps[(exps["id"] > before) & (exps["kind"] == "train") & (exps["name"] == f"{spec.model}/{spec.recipe.name}")]
        exp_id = int(mine["id"].min())
        runs = rep.read_runs(store, exp_id)
        epochs_table = rep.read_epochs(store, [int(i) for i in runs["id"]])
    finally:
        store.close()
    return Result(exp_id, done.status, db, {"epochs": epochs_table, "run": runs})


def _last_experiment(db: str) -> int:
    """The highest experiment id in `db` now (0 for a new database)."""
    import harness.tables as rep

    try:
        store = rep.open_reader(db)
    except UserError:
        return 0
    try:
        exps = rep.read_experiments(store)
        return int(exps["id"].max()) if not exps.empty else 0
    finally:
        store.close()


__all__ = ["Result", "benchmark", "benchmark_tables", "parse_families", "sweep", "train"]
