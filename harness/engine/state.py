"""Tune's saved state: finding it, keeping it whole, and whether an experiment can continue.

Tune writes its experiment state into the storage folder in place, so a driver killed mid-copy can
leave a state file cut off; the recorder keeps the last whole copy of each (`backup_state`, at most
every second) and a resume puts it back first (`repair_state`). `resumable` answers, before Ray
starts, whether `--resume` has something to continue: an unfinished experiment of that name in the
database and Ray's state for it under `--storage-path`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from ray import tune

from harness.errors import UserError
from harness.files import copy_atomic
from harness.store import shown_url, stored_experiment

SEEDS_STATE = "seeds-state.json"  # --seeds auto: whether the looks are over (read by run._reconcile), what they said
LOOKS_SAID = "said"  # in the sequential seeds' state file: a line per look, printed by the recorder
STATE_BACKUP = ".harness-last-good"  # in the experiment folder: Tune's state files as last seen whole
CLAIM = ".harness-experiment.json"  # in the experiment folder: the database and experiment it belongs to
_STATE_FILES = ("experiment_state-*.json", "search_gen_state-*.json", "searcher-state-*.pkl", "tuner.pkl")

# Experiment folder name -> where it is in this process, for the scheduler Tune unpickles from it
# (`search.ResumableASHA` finds its own state file here: a moved --storage-path still works). Set by
# `run.run_trials` for the experiment it runs and removed when it ends.
_STATE_DIRS: dict[str, Path] = {}


def state_dir(name: str) -> Path | None:
    return _STATE_DIRS.get(name)


def remember_state_dir(exp_dir: Path) -> None:
    _STATE_DIRS[exp_dir.name] = exp_dir


def forget_state_dir(exp_dir: Path) -> None:
    if _STATE_DIRS.get(exp_dir.name) == exp_dir:
        del _STATE_DIRS[exp_dir.name]


def new_ray_folder(kind: str, ray_name: str | None = None) -> str:
    """A new experiment's Ray folder name: its kind (or a sweep's study name) and a random suffix, kept in
    its `experiments` row. Not the experiment's id alone: experiment 1 of two databases run from one
    folder would share `benchmark-1`, and the second would overwrite the first's state."""
    return f"{ray_name or kind}-{uuid.uuid4().hex[:8]}"


def ray_folder(row: dict, *, ray_name: str | None = None) -> str:
    """The Ray folder of an experiment row: the one it records, or for an experiment started before rows
    recorded it, the name it had then (a sweep's study name, a grid's <kind>-<id>)."""
    return row.get("ray_folder") or ray_name or f"{row['kind']}-{row['id']}"


def claim(exp_dir: Path, *, db: str, experiment_id: int, kind: str, name: str) -> None:
    """Mark `exp_dir` as this experiment's (read back by `check_claim` before a resume)."""
    exp_dir.mkdir(parents=True, exist_ok=True)
    (exp_dir / CLAIM).write_text(json.dumps({"db": shown_url(db), "experiment": experiment_id, "kind": kind,
                                             "name": name}) + "\n")


def check_claim(exp_dir: Path, *, db: str, experiment_id: int, field: str = "--storage-path") -> None:
    """Refuse to continue an experiment from a folder that holds another one's state (a folder from before
    the claim existed carries none and is taken as it is)."""
    try:
        mark = json.loads((exp_dir / CLAIM).read_text())
    except (OSError, ValueError):
        return
    if (mark.get("db"), mark.get("experiment")) != (shown_url(db), experiment_id):
        raise UserError(field, str(exp_dir), f"This Ray folder holds {mark.get('kind')} {mark.get('name')!r} (experiment "
                        f"{mark.get('experiment')} in {mark.get('db')}), not experiment {experiment_id} in {shown_url(db)}: "
                        "continuing from it would mix the two. Pass the --storage-path and --db this experiment ran with.")


def resumable(db: str, *, kind: str, name: str, storage_path: Path | str, again: str, ray_name: str | None = None,
              field: str = "--resume") -> dict:
    """The latest unfinished `kind` experiment called `name`, with Ray's state there to continue it
    (in <storage_path>/<its ray_folder>, a folder that is this experiment's: `check_claim`); UserError
    otherwise. Reads only."""
    row = stored_experiment(db, kind=kind, name=name)
    if row is None:
        raise UserError(field, name, f"No {kind} of that name in {shown_url(db)} to continue; run `{again}` without "
                        "--resume (or pass the --db it was recorded in).")
    if row["status"] == "completed":
        raise UserError(field, name, f"The {kind} of that name in {shown_url(db)} (experiment {row['id']}) already completed; "
                        f"nothing to continue. Run `{again}` without --resume for a new one.")
    exp_dir = Path(storage_path).resolve() / ray_folder(row, ray_name=ray_name)
    check_claim(exp_dir, db=db, experiment_id=row["id"])
    if not can_restore(exp_dir):
        raise UserError("--storage-path", str(storage_path), f"No Ray state for {kind} experiment {row['id']} in {exp_dir}; "
                        "pass the --storage-path it ran with (default ray_results, relative to where it ran).")
    return row


def can_restore(exp_dir: Path) -> bool:
    """Whether Ray saved an experiment state there that `run_trials` can continue."""
    return tune.Tuner.can_restore(str(exp_dir))


def _whole(path: Path) -> bool:
    """Whether a Tune state file is complete: Tune copies them into the storage folder in place, so a
    driver killed mid-copy leaves an empty or cut-off file that Tuner.restore cannot read."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if not data:
        return False
    if path.name.startswith("experiment_state-"):  # JSON; the others are pickles (search_gen_state's ".json" too)
        try:
            json.loads(data)
        except ValueError:
            return False
    return True


def backup_state(exp_dir: Path) -> None:
    """Keep a copy of each of Tune's state files that is whole (each copy replaced atomically)."""
    good = exp_dir / STATE_BACKUP
    for pattern in _STATE_FILES:
        for f in exp_dir.glob(pattern):
            kept = good / f.name
            mtime = f.stat().st_mtime
            if (kept.is_file() and kept.stat().st_mtime >= mtime) or time.time() - mtime < 0.5:
                continue  # already kept, or maybe still being written (a .pkl cannot be checked like JSON)
            if _whole(f):
                good.mkdir(exist_ok=True)
                copy_atomic(f, kept)


def repair_state(exp_dir: Path, echo: Callable[[str], None]) -> None:
    """Before a restore: put back the last whole copy of any state file a kill left cut off."""
    good = exp_dir / STATE_BACKUP
    for kept in sorted(good.glob("*")) if good.is_dir() else []:
        if kept.name.startswith("."):
            continue
        live = exp_dir / kept.name
        if not _whole(live):
            copy_atomic(kept, live)
            echo(f"note: {live.name} was cut off (the driver was killed while Tune wrote it); "
                 "using its last whole copy, up to a second older")
    for pattern in _STATE_FILES:
        for live in exp_dir.glob(pattern):
            if not _whole(live):
                raise UserError("--resume", str(exp_dir), f"Ray's saved state {live.name} is cut off (the driver was "
                                "killed while writing it) and no whole copy was kept; run without --resume "
                                "(what finished stays in the database).")


def repair_checkpoints(exp_dir: Path, echo: Callable[[str], None]) -> None:
    """Before a restore: give every unfinished trial the checkpoint Tune's saved state names.

    Tune deletes a trial's older checkpoint the moment it registers a newer one (`num_to_keep=1`) but saves
    its experiment state only at its next step, so a driver killed in between leaves a state that names a
    deleted checkpoint; Tune's restore of that trial then fails ("does not exist on storage anymore") on
    every retry, and the trial ends `failed` (seen in CI, 2026-12-07). The checkpoint Tune registered in its
    place is the first one after it still on disk (registering it is what deleted the named one; any later
    folder is one a worker wrote but the driver never registered, so its epochs may not be recorded): that
    one is moved to the name the state holds. The trainable reads its epoch from last.pt and continues from
    there. With none, an empty folder: the trial starts over.

    The state's checkpoint record is a cloudpickle inside Tune's JSON, read here exactly as `Tuner.restore`
    reads it a moment later (the same trust: the experiment's own folder)."""
    from ray.tune.utils.serialization import TuneFunctionDecoder

    states = sorted(exp_dir.glob("experiment_state-*.json"))
    if not states:
        return
    try:
        trial_data = json.loads(states[-1].read_text()).get("trial_data", [])
    except (OSError, ValueError):
        return  # repair_state has refused a cut-off state already; nothing here to mend
    for trial_json, meta_json in trial_data:
        if json.loads(trial_json).get("status") in ("TERMINATED", "ERROR"):
            continue  # not restored
        try:
            meta = json.loads(meta_json, cls=TuneFunctionDecoder, allow_cloudpickle=True)
            latest = meta["checkpoint_manager"].latest_checkpoint_result
            named = Path(latest.checkpoint.path) if latest is not None and latest.checkpoint is not None else None
        except Exception:  # noqa: BLE001 - another Ray's layout: leave the restore to Tune as it is
            continue
        if named is None:
            continue
        named = exp_dir / named.parent.name / named.name  # the state's paths are where the storage was then
        if named.exists():
            continue
        newer = sorted(p for p in named.parent.glob("checkpoint_*") if p.name > named.name)
        if newer:
            newer[0].rename(named)
            echo(f"note: {named.parent.name}: Tune's saved state names {named.name}, which Tune had already "
                 f"replaced by {newer[0].name} when the driver was killed; continuing from {newer[0].name}")
        else:
            named.mkdir(parents=True)
            echo(f"note: {named.parent.name}: its checkpoint {named.name} is gone; the trial starts over")


def looks_said(exp_dir: Path) -> list[str]:
    """The sequential seeds' look lines so far (`search.SequentialSeeds`); [] for any other experiment."""
    try:
        return list(json.loads((Path(exp_dir) / SEEDS_STATE).read_text()).get(LOOKS_SAID, []))
    except (OSError, ValueError):
        return []
