"""Real results databases for the report/dashboard tests: fit() runs recorded through the Store,
the same rows the sweep driver writes (no Ray, so a test stays a few seconds)."""

from __future__ import annotations

from harness.specs import RunSpec
from harness.store import Store
from harness.train import EpochReport, fit


def record(db: str, specs: list[RunSpec], *, kind: str = "benchmark", name: str = "grid", description: str = "",
           spec_yaml: str = "", status: str = "completed") -> int:
    """Run every spec in-process and record it under one experiment; returns the experiment id."""
    store = Store(db)
    exp = store.create_experiment(kind=kind, name=name, description=description, spec=spec_yaml, device="cpu (test)")
    for spec in specs:
        run = store.create_run(exp, model=spec.model, recipe=spec.recipe.label(), params=spec.model_dump(mode="json"),
                               seed=spec.seed, stands_for=spec.stands_for)

        def on_epoch(r: EpochReport, run: int = run) -> None:
            store.log_epoch(run, r.epoch, r.metrics)
            if r.evaluation is not None:
                store.save_evaluation(run, r.evaluation)
            if r.test is not None:
                store.save_test(run, r.test)

        result = fit(spec, on_epoch)
        store.finish_run(run, status=result.status, wall_s=result.wall_s)
    store.finish_experiment(exp, status)
    store.close()
    return exp
