"""An experiment from the command line to its closing lines: the one skeleton of `benchmark`,
`ablate` and `sweep`, written once.

    the experiment's lock -> resume lookup -> the command's check -> its trials through the engine,
      with live pages -> its tables -> the final pages -> "results: ... / continue with: ..."

The lock (harness/locks.py) is held from before the lookup to the closing lines: a second driver of
the same kind and name is refused, naming who holds it.

A command supplies only what is its own, as a `Command`: its name and spec, its trials (an
`engine.Trials`), what `--resume` accepts, and its tables. `run_experiment` does the rest for all
three alike. `Where` (the shared flags, resolved once at the edge and checked by `Where.check`) goes
to the command whole and to the engine as the plain values it needs (the engine imports nothing above
it). Whether the process then exits 0 or 130 (interrupted, resumable) is decided only by `cli.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from harness import DEFAULT_DB

if TYPE_CHECKING:
    from harness.engine import Outcome, Trials
    from harness.recipes import Recipe

DEFAULT_STORAGE = Path("ray_results")  # Ray's experiment folders (state and trial checkpoints)
PAGES_EVERY_S = 30.0  # live pages are rewritten this often while trials run (one full grid epoch on CPU)


@dataclass(frozen=True)
class Where:
    """Where a command's trials run and where its results go, resolved once from the shared flags
    (`--db`, `--out`, `--address`, `--storage-path`, `--pages-every`) and passed down as one object.
    `out` None: no pages (a library caller's choice: the CLI always names a folder)."""

    db: str = DEFAULT_DB
    out: Path | None = Path("dashboards")
    address: str | None = None
    storage_path: Path = DEFAULT_STORAGE
    pages_every_s: float = PAGES_EVERY_S
    tensorboard: bool = True  # every run's scalars under <out>/tensorboard/ (harness/trackers.py)
    mlflow: str | None = None  # an MLflow tracking URI every run is also logged to (harness/trackers.py)

    def check(self) -> Where:
        """Refuse a bad database URL or an output path that is a file, before anything runs or is written."""
        from harness.files import check_out_dir
        from harness.store import check_url

        check_url(self.db)
        if self.out is not None:
            check_out_dir(Path(self.out))
        if self.mlflow is not None:  # MLflow installed, its server answering: refused before any row
            from harness.trackers import check_mlflow

            check_mlflow(self.mlflow)
        return self

    @property
    def shown_db(self) -> str:
        from harness.store import shown_url

        return shown_url(self.db)

    def live_pages(self):
        """The live pages of `out` (None without one), rewritten on their own thread while trials run:
        recording never waits for a page."""
        if self.out is None:
            return None
        from harness.dashboards import LivePages

        return LivePages(self.db, Path(self.out), every_s=self.pages_every_s)

    def open_trackers(self, *, experiment_id: int, kind: str, name: str):
        """The experiment's trackers (TensorBoard under `out`, MLflow at `mlflow`), opened by the engine
        once the experiment's row exists."""
        from harness.trackers import for_where

        return for_where(self, experiment_id=experiment_id, kind=kind, name=name)

    def write_pages(self) -> Path | None:
        """The final pages (no live banner), rewritten where what they show changed; the index's path."""
        if self.out is None:
            return None
        from harness.dashboards import write_dashboards

        return write_dashboards(self.db, Path(self.out))


class Reported(NamedTuple):
    """What a command's `report` gives back: the lines naming its files, and what `run_experiment`
    returns to the command's caller (a sweep's `SweepResult`; None for the grids)."""

    lines: list[str]
    result: Any = None


class Ran(NamedTuple):
    """How an experiment ended (the engine's `Outcome`) and what its command's `report` returned."""

    outcome: Outcome
    result: Any = None


class Command(Protocol):
    """What one command brings to `run_experiment`; everything else is the skeleton's."""

    kind: str  # benchmark | ablate | sweep: the experiment row's kind
    name: str  # the experiment's name: what --resume looks up
    description: str
    again: str  # the command line that starts it anew (named in --resume's refusals; + --resume continues it)

    def spec_yaml(self) -> str:
        """The experiment's spec as stored in its row (what --resume compares with)."""

    def resumed(self, row: dict[str, Any], where: Where, echo: Callable[[str], None]) -> Command:
        """The command as the stored experiment `row` was started: its own rule for a spec that changed
        (continue as started, with a note; or refuse)."""

    def check_new(self, where: Where) -> None:
        """Before a new experiment writes anything: a name already taken, weights out of reach."""

    def describe(self) -> list[str]:
        """The lines printed before the trials start."""

    def trials(self, where: Where) -> Trials:
        """The trials, for the engine (a sweep's Optuna search keeps its study in `where.db`)."""

    def report(self, where: Where, outcome: Outcome, echo: Callable[[str], None]) -> Reported:
        """After the trials: print the command's tables (read from the database) and write their files;
        return the lines that name those files, and what the command's caller gets back."""


def continue_with(command: Command, where: Where) -> str:
    """The command line that continues `command` after an interruption: the same for every command."""
    return f"{command.again} --resume --db {where.shown_db} --storage-path {where.storage_path}"


def recommended_path(out: Path | None, experiment_id: int, what: str) -> Path | None:
    """Where a command hands back the recipe it recommends for `what` (a model, a study): a file in
    `out/recipes/`; None without an output folder (the recommendation is printed, no file written)."""
    return Path(out) / "recipes" / f"recommended-{experiment_id}-{what}.yaml" if out is not None else None


def hand_back_recipe(recipe: Recipe, path: Path | None, *, comment: list[str], epochs: int, title: str = "recommended recipe",
              about: str = "") -> tuple[str, str]:
    """A recommended recipe handed back, by benchmark and sweep alike: written to `path` (`recommended_path`;
    None: nothing written) with `comment` (what chose it, by which rule, its test accuracy) in its header,
    as a file `harness train --recipe FILE` runs and a study's `recipe:` accepts. Returns the line that
    names the file (`about`: what it is, after the path) and the same recipe as timm train.py flags."""
    from harness.recipe_file import timm_train_flags, write_recipe_file

    if path is not None:
        write_recipe_file(recipe, path, comment=comment)
    return (f"{title}: {path or '(no output folder: not written)'}{about}",
            f"  as timm train.py flags: {timm_train_flags(recipe, epochs=epochs)}")


def run_experiment(command: Command, where: Where, *, resume: bool = False,
                   echo: Callable[[str], None] = print, ray_name: str | None = None,
                   resume_field: str = "--resume") -> Ran:
    """Run `command` as one experiment in `where` (checked by the caller: `Where.check`). With `resume`,
    continue the interrupted experiment of its kind and name (`engine.resumable` finds it and its Ray
    folder, `command.resumed` decides what runs). `ray_name`: the folder name of experiments recorded
    before folders were per experiment (a sweep's was its study's name). Returns the engine's Outcome
    (status "interrupted" means resumable, and the closing lines say how) with what `command.report`
    handed back."""
    from harness.locks import experiment_lock

    # One driver per experiment, from the name/--resume check to the closing lines (harness/locks.py).
    field = resume_field if resume or resume_field != "--resume" else f"{command.kind} name"
    with experiment_lock(where.db, kind=command.kind, name=command.name, field=field):
        return _run_locked(command, where, resume=resume, echo=echo, ray_name=ray_name, resume_field=resume_field)


def _run_locked(command: Command, where: Where, *, resume: bool, echo: Callable[[str], None], ray_name: str | None,
                resume_field: str) -> Ran:
    from harness import engine

    exp_id = None
    if resume:
        row = engine.resumable(where.db, kind=command.kind, name=command.name, storage_path=where.storage_path,
                               again=command.again, ray_name=ray_name, field=resume_field)
        command, exp_id = command.resumed(row, where, echo), row["id"]
    else:
        command.check_new(where)
    for line in command.describe():
        echo(line)
    outcome = engine.run_trials(command.trials(where), experiment=engine.Experiment(
        command.kind, command.name, command.description, command.spec_yaml(), id=exp_id),
        db=where.db, storage_path=where.storage_path, address=where.address, pages=where.live_pages(),
        trackers=where.open_trackers, echo=echo)
    files, result = command.report(where, outcome, echo)
    index = where.write_pages()
    echo("")
    for line in files:
        echo(line)
    if index is not None:
        echo(f"dashboards: {index} (every experiment; open it in a browser, works offline)")
    echo(f"results: experiment {outcome.experiment_id} ({command.kind} {command.name}, {outcome.status}) in "
         f"{where.shown_db}; Ray files and trial checkpoints in {outcome.exp_dir}")
    if outcome.status == "interrupted":
        echo(f"continue with: {continue_with(command, where)} (experiment {outcome.experiment_id} keeps what finished)")
    return Ran(outcome, result)
