"""The sweep's search side in Ray's terms: Optuna's sampler behind Ray's `OptunaSearch`, ASHA whose
rungs survive a stopped driver, and the TuneConfig that wires them (or a plain grid over run
indices for benchmark and ablate), as Ray's own Optuna example does.

Private Ray attributes used (pinned by tests/test_engine_contract.py): OptunaSearch's `_ot_trials`,
`_ot_study` and `_completed_trials` (the subclass tags each Optuna trial with its Ray trial id and
tells Optuna the outcome itself).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from harness.engine.state import LOOKS_SAID, SEEDS_STATE, state_dir
from harness.engine.trial import OPTUNA_KEY, trial_name
from harness.files import atomic_path
from harness.specs import StudySpec

ASHA_STATE = "asha-state.pkl"  # beside Tune's own files in the experiment folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Search:
    """Trials sampled by the study's Optuna sampler (storage: the results database), stopped early
    by ASHA when the study says so."""

    study: StudySpec
    db: str


class _HarnessOptunaSearch(OptunaSearch):
    """OptunaSearch with the outcomes told apart (harness.study.outcome) and each Optuna trial
    tagged with its Ray trial id (user attr `ray_trial_id`, visible in optuna-dashboard)."""

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if params is not None:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("ray_trial_id", trial_id)
            params = {**params, OPTUNA_KEY: ot_trial.number}
        return params

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        from harness import study as study_mod

        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        result = result or {}
        study_mod.tell(self._ot_study, self._ot_trials[trial_id], result.get("status"), result.get(self.metric), error)
        self._completed_trials.add(trial_id)


class ResumableASHA(ASHAScheduler):
    """ASHA whose rungs survive a stopped driver.

    Tune pickles the scheduler once, with the Tuner, and never saves or restores its state (Ray 2.x),
    so a resumed sweep would start its rungs empty: cut-offs computed from the resumed trials alone.
    Here the state is written (ASHAScheduler.save, atomically) beside Tune's after every result and
    read back (ASHAScheduler.restore) at the first call after a restart. The trials it stopped are
    part of that state: Tune saves its own at most every second, so a trial stopped just before a
    kill can come back as unfinished, and is stopped again at its first result.

    The state file is found through the experiment folder `run_trials` is working in now
    (`state.state_dir`), so a moved `--storage-path` still finds it."""

    def __init__(self, *, state_path: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._state_name = Path(state_path).parent.name  # the experiment folder's name
        self._state_path = str(state_path)  # where it was first written (the fallback)
        self._stopped: set[str] = set()
        self._loaded = False

    def __getstate__(self) -> dict:  # what the Tuner pickles: never "already loaded"
        return {**self.__dict__, "_loaded": False}

    def _path(self) -> Path:
        folder = state_dir(self._state_name)
        return folder / ASHA_STATE if folder is not None else Path(self._state_path)

    def _load(self) -> None:
        if self._loaded:
            return
        path = self._path()
        if path.is_file():
            keep = {k: self.__dict__[k] for k in ("_state_name", "_state_path")}
            self.restore(str(path))
            self.__dict__.update(keep)
        self._loaded = True

    def _save(self) -> None:
        path = self._path()
        try:
            with atomic_path(path) as tmp:
                self.save(str(tmp))
        except OSError as e:  # a full disk must not stop the sweep; the resume then starts ASHA over
            log.warning("ASHA state not saved to %s: %s", path, e)

    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        self._load()
        if trial.trial_id not in self._trial_info:  # a restored trial keeps its bracket
            super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        self._load()
        if trial.trial_id in self._stopped:  # stopped before a restart that Tune's state missed
            return TrialScheduler.STOP
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            self._stopped.add(trial.trial_id)
        self._save()
        return decision

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        self._load()
        if trial.trial_id in self._trial_info:
            super().on_trial_complete(tune_controller, trial, result)
            self._save()

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        self._load()
        if trial.trial_id in self._trial_info:
            super().on_trial_remove(tune_controller, trial)
            self._save()


@dataclass(frozen=True)
class SeedLooks:
    """`--seeds auto`: a grid whose seeds are added while a comparison is undecided. `groups[g][s]`: the
    grid's run indices of comparison group g (one model's recipes) at seed s, every seed up to the cap.
    `judge(db, experiment_id, trial_ids)` says whether a group's finished runs decide it (harness's
    statistics, `tables.before_after.group_decided`: no Ray there)."""

    groups: tuple[tuple[tuple[int, ...], ...], ...]
    first: int
    judge: Callable[[str, int, list[str]], bool]
    labels: tuple[str, ...] = ()  # each group's name in the terminal's look lines (its model)


class SequentialSeeds(Searcher):
    """Ray Tune's searcher interface driving `SeedLooks`: the first `first` seeds of every group, then, as
    each group's launched runs all finish, one look (`judge`): decided, or at the cap -> the group closes;
    else its next seed's runs are queued. FINISHED once every group is closed. Its state travels with
    Tune's experiment state (save/restore: a resumed benchmark keeps its looks); whether it has finished is
    also written to SEEDS_STATE for `run._reconcile` (a stop between two looks is an interrupted
    experiment, not a completed one)."""

    def __init__(self, looks: SeedLooks, *, db: str, experiment_id: int, state_path: Path) -> None:
        super().__init__()
        self.looks, self.db, self.experiment_id = looks, db, experiment_id
        self.state_name, self.state_path = state_path.parent.name, str(state_path)
        self.group_of = {i: g for g, seeds in enumerate(looks.groups) for runs in seeds for i in runs}
        self.seeds = [min(looks.first, len(seeds)) for seeds in looks.groups]  # seeds launched per group
        self.queue = [i for g, seeds in enumerate(looks.groups) for runs in seeds[:self.seeds[g]] for i in runs]
        self.trial_run: dict[str, int] = {}  # Ray trial id -> grid run index
        self.done: set[int] = set()
        self.closed: set[int] = set()
        self.said: list[str] = []  # one line per look, for the terminal (the recorder prints them: LOOKS_SAID)

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the grid needs no metric: the looks read the database

    @property
    def finished(self) -> bool:
        return len(self.closed) == len(self.looks.groups) and not self.queue

    def suggest(self, trial_id: str) -> dict | str | None:
        if self.queue:
            i = self.queue.pop(0)
            self.trial_run[trial_id] = i
            self._save()
            return {"run": i}
        return Searcher.FINISHED if self.finished else None  # None: wait for a look

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        i = self.trial_run.get(trial_id)
        if i is None or i in self.done:
            return
        self.done.add(i)
        g = self.group_of[i]
        seeds = self.looks.groups[g]
        launched = [j for runs in seeds[:self.seeds[g]] for j in runs]
        if g in self.closed or not all(j in self.done for j in launched):
            return
        ids = [t for t, j in self.trial_run.items() if j in set(launched)]
        k, label = self.seeds[g], (self.looks.labels[g] if g < len(self.looks.labels) else f"group {g + 1}")
        if self.looks.judge(self.db, self.experiment_id, ids):
            self.closed.add(g)
            self.said.append(f"{label}: decided at {k} seeds (every interval clear of 0): no more seeds")
        elif k >= len(seeds):
            self.closed.add(g)
            self.said.append(f"{label}: still undecided at {k} seeds, the cap: no more seeds")
        else:
            self.queue += list(seeds[k])
            self.seeds[g] += 1
            self.said.append(f"{label}: undecided at {k} seeds: one more seed for each of its recipes")
        self._save()

    def _save(self) -> None:
        import json

        folder = state_dir(self.state_name)
        path = folder / SEEDS_STATE if folder is not None else Path(self.state_path)
        try:
            with atomic_path(path) as tmp:
                Path(tmp).write_text(json.dumps({"finished": self.finished, "launched": len(self.trial_run),
                                                 "seeds": self.seeds, LOOKS_SAID: self.said}))
        except OSError as e:
            log.warning("seed looks' state not saved to %s: %s", path, e)

    def save(self, checkpoint_path: str) -> None:
        import pickle

        with atomic_path(Path(checkpoint_path)) as tmp, open(tmp, "wb") as f:
            pickle.dump(self.__dict__, f)

    def restore(self, checkpoint_path: str) -> None:
        import pickle

        with open(checkpoint_path, "rb") as f:
            self.__dict__.update({"said": [], **pickle.load(f)})  # a state saved before looks were said


def seeds_finished(exp_dir: Path) -> tuple[bool, int] | None:
    """(finished, runs launched) of a `--seeds auto` grid from its state file; None for any other experiment."""
    import json

    path = Path(exp_dir) / SEEDS_STATE
    if not path.is_file():
        return None
    state = json.loads(path.read_text())
    return bool(state["finished"]), int(state["launched"])


def tune_config(search: Search | None, *, concurrency: int, total: int, db: str,
                 exp_dir: Path, looks: SeedLooks | None = None, experiment_id: int | None = None,
                 ) -> tuple[tune.TuneConfig, dict | None]:
    """(TuneConfig, param_space): an Optuna searcher + ASHA for a sweep, the sequential seeds' searcher for a
    `--seeds auto` grid, a grid over run indices otherwise."""
    common = dict(reuse_actors=True,  # a finished trial's worker takes the next: torch/timm imported once per slot
                  trial_name_creator=trial_name, trial_dirname_creator=trial_name)
    if looks is not None:
        searcher = SequentialSeeds(looks, db=db, experiment_id=int(experiment_id), state_path=exp_dir / SEEDS_STATE)
        searcher._save()
        return (tune.TuneConfig(search_alg=searcher, num_samples=total, max_concurrent_trials=concurrency,
                                scheduler=FIFOScheduler(), **common), None)
    if search is None:
        return (tune.TuneConfig(num_samples=1, max_concurrent_trials=concurrency, scheduler=FIFOScheduler(), **common),
                {"run": tune.grid_search(list(range(total)))})
    from harness import study as study_mod

    s = search.study
    searcher = _HarnessOptunaSearch(space=study_mod.search_space(s), metric=s.metric, mode=s.mode,
                                    sampler=study_mod.sampler(s), study_name=s.name,
                                    storage=study_mod.optuna_storage(search.db))
    scheduler = (ResumableASHA(state_path=exp_dir / ASHA_STATE, time_attr="epoch", metric=s.metric, mode=s.mode,
                               max_t=s.scheduler.max_epochs, grace_period=s.scheduler.grace_period,
                               reduction_factor=s.scheduler.reduction_factor)
                 if s.scheduler.type == "asha" else FIFOScheduler())
    return (tune.TuneConfig(search_alg=ConcurrencyLimiter(searcher, max_concurrent=concurrency), scheduler=scheduler,
                            num_samples=total, **common), None)
