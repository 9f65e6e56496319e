"""The private Ray and Optuna attributes the harness still relies on, pinned: if an upgrade renames
one, this fails with the name instead of a sweep failing mid-run (see harness/engine.py's docstring)."""

from __future__ import annotations

import inspect


def test_optuna_search_private_attributes(tmp_path):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from harness.study import optuna_storage

    search = OptunaSearch(space={"lr": optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)}, metric="val_acc",
                          mode="max", study_name="s", storage=optuna_storage(f"sqlite:///{tmp_path / 'o.db'}"))
    search.suggest("t1")
    # harness.engine._HarnessOptunaSearch reads these three:
    assert isinstance(search._ot_trials["t1"], optuna.trial.Trial)
    assert isinstance(search._ot_study, optuna.Study)
    assert isinstance(search._completed_trials, set)
    # harness.study.settle gives FrozenTrial._trial_id to the storage:
    (frozen,) = search._ot_study.get_trials()
    assert isinstance(frozen._trial_id, int)


def test_tuner_restore_takes_no_callbacks():
    """Why harness.engine keeps a registry of live recorders: a restored Tuner unpickles its callbacks
    and Tuner.restore cannot be given new ones. If Ray adds that, the registry can go."""
    from ray import tune

    assert "callbacks" not in inspect.signature(tune.Tuner.restore).parameters
    assert "run_config" not in inspect.signature(tune.Tuner.restore).parameters
