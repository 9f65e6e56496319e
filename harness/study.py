"""The Optuna side of a sweep (the dashboards import Optuna only for its plots).

A study file is checked here (`validate_study`: names, bounds, every candidate value as a recipe
value; `study_warnings`: what is valid but likely wrong) without torch, timm or Ray, so
`harness sweep --validate` answers in about a second. The
search space, sampler and storage Ray's `OptunaSearch` is given are built here, and so is the
rule that turns a finished trial into its Optuna state (`outcome`): a trial that finished all its
epochs is COMPLETE (value = the metric at its last epoch), one stopped early is PRUNED (Optuna
keeps its per-epoch values), a diverged or crashed one is FAIL. Ray's own OptunaSearch would tell
Optuna COMPLETE with the truncated score when ASHA stops a trial.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.errors import UserError
from harness.recipes import with_overrides
from harness.specs import ParamSpec, StudySpec, load_study

if TYPE_CHECKING:
    import optuna
    from optuna.trial import TrialState

# optuna and sqlalchemy are imported inside the functions that use them: validating a study file
# (`harness sweep --validate`) needs neither, and importing them is most of its time.


# --- validation (nothing here writes or starts anything) -----------------------------------------

def validate_study(path: Path) -> StudySpec:
    """The study file, fully checked: names, bounds, every candidate value as a recipe value."""
    study = load_study(path)
    where = f"{path}: "
    base = study.base_recipe()
    grid_sizes = []
    for key, p in study.search.items():
        candidates: list[tuple[str, Any]] = ([("values", v) for v in p.values or []] if p.type == "choice"
                                             else [("low", _cast(p, p.low)), ("high", _cast(p, p.high))])
        for sub, value in candidates:
            if p.type == "choice" and not isinstance(value, (str, int, float, bool)) and value is not None:
                raise UserError(f"{where}search.{key}.values", value, "A choice takes plain values "
                                "(numbers, names, true/false, null), not lists or mappings.")
            try:
                with_overrides(base, {key: value}, "search")
            except UserError as e:
                raise UserError(f"{where}search.{key}.{sub}", value, f"Not a valid {key}: {e.fix}") from None
        if study.sampler.type == "grid":
            if p.type not in ("choice", "int"):
                raise UserError(f"{where}search.{key}.type", p.type, "sampler grid needs a finite grid: "
                                "use type: choice (or int) for every parameter, or sampler: {type: tpe}.")
            grid_sizes.append(len(p.values) if p.type == "choice" else int(p.high) - int(p.low) + 1)
    if study.sampler.type == "grid":
        size = math.prod(grid_sizes)
        if study.trials > size:
            raise UserError(f"{where}trials", study.trials, f"The grid has only {size} points; set trials: {size}.")
    if study.sampler.type == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise UserError(f"{where}sampler.type", "cmaes", "Optuna's CMA-ES sampler needs the cmaes package: "
                            "`uv add cmaes`, or use sampler: {type: tpe}.") from None
    return study


def longest_warmup(study: StudySpec) -> tuple[float, str]:
    """The longest lr warmup (epochs) any trial of the study can get, and the field it comes from:
    the high end (or largest value) of a searched warmup_epochs, else the fitted base recipe's."""
    p = study.search.get("warmup_epochs")
    if p is None:
        where = "fixed.warmup_epochs" if "warmup_epochs" in study.fixed else "the fitted recipe's warmup_epochs"
        return float(study.base_recipe().warmup_epochs), where
    if p.type == "choice":
        return max([float(v) for v in p.values or [] if isinstance(v, (int, float))], default=0.0), "search.warmup_epochs.values"
    return float(p.high or 0), "search.warmup_epochs.high"


def study_warnings(study: StudySpec, path: Path | str | None = None) -> list[str]:
    """What a valid study may still get wrong (printed, not refused): an ASHA grace period that ends
    inside the warmup, where trials are cut on how far their lr ramp has got, not on their recipe; a
    grid study with fewer trials than grid points. No torch, timm or Ray, like `validate_study`."""
    where = f"{path}: " if path is not None else ""
    out = []
    s = study.scheduler
    warmup, source = longest_warmup(study)
    if s.type == "asha" and warmup > 0 and s.grace_period <= warmup:
        k = math.floor(warmup) + 1  # the first epoch that ends after the longest warmup
        w = f"{warmup:g} epoch{'' if warmup == 1 else 's'}"
        raise_grace = (f"set scheduler.grace_period to at least {k} (the longest warmup, {w}, + 1)"
                       if k <= s.max_epochs else
                       f"raise scheduler.max_epochs well above {k} and grace_period to at least {k} (the longest warmup, "
                       f"{w}, + 1)")
        shorten = (f"or search warmup_epochs only below {s.grace_period}" if "warmup_epochs" in study.search
                   else f"or set fixed.warmup_epochs below {s.grace_period}")
        out.append(f"{where}scheduler.grace_period: got {s.grace_period}. ASHA's first cut (after epoch {s.grace_period}) "
                   f"falls within the warmup ({source}: up to {w}): trials still ramping their lr "
                   f"are stopped for it, so the study compares lr ramps, not recipes. Fix: {raise_grace}, {shorten}.")
    if study.sampler.type == "grid":  # more trials than points is refused by validate_study
        size = math.prod(len(v) for v in grid_space(study).values())
        if study.trials < size:
            out.append(f"{where}trials: got {study.trials}. The grid has {size} points; only {study.trials} of them "
                       f"(picked in an order shuffled by sampler.seed) will run. Fix: set trials: {size} to run the whole grid.")
    return out


def check_study(path: Path, *, on_cluster: bool = False) -> list[str]:
    """`harness sweep --validate`: the study file alone (names, bounds, and, on this machine, whether a
    trial fits it), in about a second: no torch, timm, Ray or database. UserError when it is wrong;
    otherwise its warnings and one line saying what it would run."""
    from harness.resources import check_local_resources

    s = validate_study(path)
    lines = [f"warning: {w}" for w in study_warnings(s, path)]
    if not on_cluster:  # a cluster's nodes are checked when the sweep attaches
        here = check_local_resources(s.resources, field=f"{path}: resources", concurrency=s.concurrency)
        lines.append(f"{path}: resources: {gpu_shares(s.resources, s.concurrency, here=here.gpu)}")
    lines.append(f"{path}: ok — study {s.name!r}: {s.trials} trials of {s.model} ({s.base_recipe().label()} recipe) on "
                 f"{s.data.name} {s.data.image_size}px, searching {', '.join(s.search)}; sampler {s.sampler.type}, "
                 f"scheduler {s.scheduler.type} (max {s.scheduler.max_epochs} epochs)")
    return lines


def gpu_shares(resources, concurrency: int, *, here: float) -> str:
    """What each trial asks Ray for, here and on 1- and 8-GPU machines: `gpu: auto` resolves per
    machine (`resources.share_cards`), a number is asked for as written."""
    from harness.resources import share_cards

    def on(gpus: int) -> str:
        g = share_cards(resources, gpus=gpus, concurrency=concurrency).gpu
        per_card = f" ({int(1 // g)} trials a card)" if 0 < g < 1 else ""
        return f"{g:g} GPU{per_card}"

    return (f"cpu {resources.cpu:g}, gpu {resources.gpu} per trial, {concurrency} at a time: here {here:g} GPU; "
            f"on a 1-GPU machine {on(1)}; on an 8-GPU machine {on(8)}")


def _cast(p: ParamSpec, v: float | None) -> Any:
    return int(v) if p.type in ("int", "logint") and v is not None else v


# --- what Ray's OptunaSearch is given ----------------------------------------------------------

def search_space(study: StudySpec) -> dict[str, optuna.distributions.BaseDistribution]:
    return {k: _distribution(p) for k, p in study.search.items()}


def _distribution(p: ParamSpec) -> optuna.distributions.BaseDistribution:
    import optuna

    if p.type == "choice":
        return optuna.distributions.CategoricalDistribution(p.values)
    if p.type in ("int", "logint"):
        return optuna.distributions.IntDistribution(int(p.low), int(p.high), log=p.type == "logint")
    return optuna.distributions.FloatDistribution(p.low, p.high, log=p.type == "loguniform")


def sampler(study: StudySpec) -> optuna.samplers.BaseSampler:
    import optuna

    s = study.sampler
    if s.type == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.type == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=s.seed)
    if s.type == "gp":
        return optuna.samplers.GPSampler(seed=s.seed)
    if s.type == "grid":
        return _grid_sampler_class()(grid_space(study), seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed)


def grid_space(study: StudySpec) -> dict[str, list[Any]]:
    """Every value each parameter of a grid study takes (choice values, or each int from low to high)."""
    return {k: (p.values if p.type == "choice" else list(range(int(p.low), int(p.high) + 1)))
            for k, p in study.search.items()}


_GRID_SAMPLER: type | None = None


def _grid_sampler_class() -> type[optuna.samplers.GridSampler]:
    """Optuna's GridSampler without its stop at the end of the grid (built on first use: optuna is
    imported lazily; module `__getattr__` below lets pickle find it by name, as Tune saves the searcher).

    `GridSampler.after_trial` calls `study.stop()` once the last grid point is told (optuna 5.0,
    samplers/_grid.py: `if len(target_grids) == 0: study.stop()`, and the same for the last
    unfinished point), and `Study.stop` raises RuntimeError outside `study.optimize`
    (`if not self._thread_local.in_optimize_loop: raise`; optuna issues #4121/#5141: the ask-and-tell
    interface, which is how Ray's OptunaSearch drives Optuna). The raise came out of `study.tell` in
    the searcher's on_trial_complete, so Tune took the grid's last trial for crashed and retried it
    (or, with --max-failures 0, recorded it failed), although Optuna had stored it COMPLETE (`_tell`
    stores the state in a `finally`). There is no optimize loop to stop: the harness bounds the trials
    itself (Tune's num_samples = `trials`, which `validate_study` keeps within the grid), so the stop
    is dropped and every other part of GridSampler (grid ids, the seeded order) is Optuna's."""
    global _GRID_SAMPLER
    if _GRID_SAMPLER is None:
        import optuna

        class HarnessGridSampler(optuna.samplers.GridSampler):
            def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
                return None  # GridSampler's only post-trial step is study.stop(); see above

        HarnessGridSampler.__module__, HarnessGridSampler.__qualname__ = __name__, "HarnessGridSampler"
        HarnessGridSampler.__doc__ = _grid_sampler_class.__doc__
        _GRID_SAMPLER = HarnessGridSampler
    return _GRID_SAMPLER


def __getattr__(name: str) -> Any:  # PEP 562: `harness.study.HarnessGridSampler` for pickle
    if name == "HarnessGridSampler":
        return _grid_sampler_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def optuna_storage(db: str) -> optuna.storages.RDBStorage:
    """The results database is the Optuna storage too (optuna-dashboard reads the same file)."""
    import optuna
    import sqlalchemy as sa

    from harness.store import CONNECT_TIMEOUT_S

    kwargs = ({"connect_args": {"timeout": 60}} if db.startswith("sqlite") else
              {"pool_pre_ping": True, "connect_args": {"connect_timeout": CONNECT_TIMEOUT_S}})
    try:
        return optuna.storages.RDBStorage(db, engine_kwargs=kwargs)
    except (sa.exc.IntegrityError, sa.exc.OperationalError) as e:
        # Two sweeps creating Optuna's tables at once (a duplicate version row, or "table ... already exists"):
        # the other one's are there now. Any other error is not this race.
        if isinstance(e, sa.exc.OperationalError) and "already exists" not in str(e):
            raise
        return optuna.storages.RDBStorage(db, engine_kwargs=kwargs)


def outcome(status: str | None, value: Any, error: bool) -> tuple[TrialState, float | None]:
    """How a finished Ray trial is told to Optuna (see the module docstring)."""
    from optuna.trial import TrialState

    finite = isinstance(value, (int, float)) and math.isfinite(value)
    if status == "completed" and finite and not error:
        return TrialState.COMPLETE, float(value)
    if status in ("running", "time_limit") and finite and not error:
        return TrialState.PRUNED, None  # stopped early: Optuna keeps its per-epoch values
    return TrialState.FAIL, None  # crashed, diverged, or no finite metric


def tell(study: optuna.Study, trial: optuna.Trial, status: str | None, value: Any, error: bool) -> None:
    state, values = outcome(status, value, error)
    study.tell(trial, values, state=state, skip_if_finished=True)


def study_exists(db: str, name: str) -> bool:
    """Whether the database holds an Optuna study of this name (reading only: no tables created)."""
    import optuna
    import sqlalchemy as sa

    from harness.store import sqlite_path

    path = sqlite_path(db)
    if path is not None and not path.exists():
        return False
    engine = sa.create_engine(db)
    try:
        if "studies" not in sa.inspect(engine).get_table_names():  # no Optuna tables: RDBStorage would create them
            return False
    finally:
        engine.dispose()
    storage = optuna_storage(db)
    try:
        return name in optuna.study.get_all_study_names(storage)
    finally:
        storage.remove_session()
        storage.engine.dispose()


def settle(db: str, study_name: str, keep: set[str] = frozenset()) -> int:
    """Fail every RUNNING Optuna trial of the study except those of Ray trials in `keep` (to be
    resumed). Returns how many were failed."""
    import optuna
    from optuna.trial import TrialState

    storage = optuna_storage(db)
    try:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
        except KeyError:
            return 0
        n = 0
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if t.user_attrs.get("ray_trial_id") in keep:
                continue
            storage.set_trial_user_attr(t._trial_id, "harness_note", "left RUNNING by an interrupted driver; failed by harness")
            study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            n += 1
        return n
    finally:
        storage.remove_session()
        storage.engine.dispose()


def quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
