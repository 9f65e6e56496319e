"""The one grid engine: trials through Ray Tune, recorded by one driver-side recorder. The only
package that imports Ray.

Its rooms, and which way the arrows run (each imports only those to its right):

    run.py       run_trials(Trials, db=, storage_path=, ...): the Tuner, clean stops, reconciling the database with Tune
      -> recorder.py  the driver-side writer (a Tune Callback): runs and epochs through store.py
      -> search.py    Optuna search, ResumableASHA, the TuneConfig
      -> trial.py     the trainable (train.fit in a Ray worker), the device Ray granted, where it runs
      -> state.py     Tune's saved state: backup, repair, whether --resume can continue
      -> cluster.py   starting or attaching to Ray; resource, storage and GPU checks

Everything a caller uses is importable from `harness.engine`. Names that Tune pickles into an
experiment folder (`ResumableASHA`, `_HarnessOptunaSearch`, `_trainable`, `trial_name` (Tune's
`trial_name_creator`), `_live_recorder`: the recorder pickles as a key into this process's registry)
were pickled by earlier versions under `harness.engine.<name>`; they are re-exported here so a
`ray_results/` folder written before the engine became a package still resumes
(tests/test_sweep.py::test_a_sweep_saved_by_the_one_module_engine_resumes).
"""

from __future__ import annotations

import os

# Under `uv run`, Ray's uv hook would re-create the project's environment for every worker from the
# working folder (and refuses to start when the project is elsewhere, e.g. `uv run --project`). Local
# workers run this very interpreter, and cluster nodes must have the harness installed anyway.
# Set RAY_ENABLE_UV_RUN_RUNTIME_ENV=1 to get Ray's behaviour back. Read when Ray is imported, so it is
# set here, before any room imports Ray.
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")

from harness.engine.cluster import (  # noqa: E402
                                    CONNECT_TIMEOUT_S,
                                    check_cluster_resources,
                                    check_shared_storage,
                                    describe_cluster,
                                    gpu_idle_warning,
)
from harness.engine.recorder import FINAL, Recorder, _live_recorder  # noqa: E402
from harness.engine.run import Experiment, Outcome, PageListener, Trials, run_trials  # noqa: E402
from harness.engine.search import ASHA_STATE, ResumableASHA, Search, SeedLooks, SequentialSeeds, _HarnessOptunaSearch  # noqa: E402
from harness.engine.state import STATE_BACKUP, backup_state, can_restore, repair_state, resumable  # noqa: E402
from harness.engine.trial import OPTUNA_KEY, GridSpecs, SpecMaker, _trainable, device_for_grant, trial_name, where_am_i  # noqa: E402

__all__ = ["ASHA_STATE", "CONNECT_TIMEOUT_S", "FINAL", "OPTUNA_KEY", "STATE_BACKUP", "Experiment",
           "GridSpecs", "Outcome", "PageListener", "Recorder", "ResumableASHA", "Search",
           "SeedLooks", "SequentialSeeds", "SpecMaker", "Trials", "_HarnessOptunaSearch",
           "_live_recorder", "_trainable", "backup_state", "can_restore", "check_cluster_resources", "check_shared_storage",
           "describe_cluster", "device_for_grant", "gpu_idle_warning", "repair_state", "resumable",
           "run_trials", "trial_name", "where_am_i"]
