"""`--seeds auto`: the sequential seed rule. The searcher that drives it through Ray Tune (which runs it asks for,
when it adds a seed, when it is done, what survives a restart), and the look itself on real rows (a model is
decided when every comparison's interval, at the rule's level, excludes 0)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harness.engine.search import SEEDS_STATE, SeedLooks, SequentialSeeds, seeds_finished
from harness.engine.state import looks_said
from harness.evaluate import pack_correct
from harness.store import Store
from harness.tables import stats
from harness.tables.before_after import group_decided

# Two models x 2 recipes x 5 seeds, model-major as resolve_grid lays them out: groups[g][s] = (naive, fitted).
GROUPS = tuple(tuple((g * 10 + s, g * 10 + 5 + s) for s in range(5)) for g in range(2))


def drive(searcher: SequentialSeeds, *, slots: int = 2) -> list[int]:
    """Tune's loop, in order: fill the free slots with suggestions, finish the oldest running trial, repeat."""
    order, running, n = [], [], 0
    while True:
        while len(running) < slots:
            got = searcher.suggest(f"t{n}")
            if got is None or got == SequentialSeeds.FINISHED:
                break
            running.append(f"t{n}")
            order.append(got["run"])
            n += 1
        if got == SequentialSeeds.FINISHED and not running:
            return order
        assert running, "the searcher waits with nothing running: it would hang"
        searcher.on_trial_complete(running.pop(0), result={})


def test_seeds_added_only_where_undecided(tmp_path):
    looks_seen = []

    def judge(db, experiment_id, trial_ids):
        looks_seen.append(len(trial_ids))
        model = int(trial_ids and searcher.trial_run[trial_ids[0]] >= 10)
        return model == 0  # model 0 is decided at its first look; model 1 never is
    looks = SeedLooks(GROUPS, first=2, judge=judge, labels=("A", "B"))
    searcher = SequentialSeeds(looks, db="sqlite://", experiment_id=1, state_path=tmp_path / SEEDS_STATE)
    order = drive(searcher)
    # Model 0: seeds 0 and 1 only. Model 1: all five seeds, one at a time after its first look.
    assert sorted(i for i in order if i < 10) == [0, 1, 5, 6]
    assert sorted(i for i in order if i >= 10) == list(range(10, 20))
    assert order.index(12) > order.index(11) and order.index(13) > order.index(12)  # seed 2 after the first look
    assert sorted(looks_seen) == [4, 4, 6, 8, 10]  # model 0 once; model 1 at 2-5 seeds (at the cap: decided, or not)
    assert seeds_finished(tmp_path) == (True, 14)
    assert json.loads((tmp_path / SEEDS_STATE).read_text())["seeds"] == [2, 5]
    # A line per look, for the terminal (the recorder prints each once, as `look: ...`).
    assert looks_said(tmp_path) == [
        "A: decided at 2 seeds (every interval clear of 0): no more seeds",
        "B: undecided at 2 seeds: one more seed for each of its recipes",
        "B: undecided at 3 seeds: one more seed for each of its recipes",
        "B: undecided at 4 seeds: one more seed for each of its recipes",
        "B: still undecided at 5 seeds, the cap: no more seeds"]


def never(db, experiment_id, trial_ids) -> bool:
    return False  # module level: the searcher is pickled with Tune's state, its judge by reference


def test_a_stop_between_looks_is_not_complete_and_restore_keeps_the_looks(tmp_path):
    looks = SeedLooks(GROUPS, first=2, judge=never)
    searcher = SequentialSeeds(looks, db="sqlite://", experiment_id=1, state_path=tmp_path / SEEDS_STATE)
    ids = [f"t{i}" for i in range(8)]
    for t in ids:
        assert searcher.suggest(t) is not None  # the first look's 8 runs
    for t in ids[:4]:
        searcher.on_trial_complete(t)
    assert searcher.suggest("t8") is not None  # model 0's first look: undecided, seed 2 queued
    assert seeds_finished(tmp_path) == (False, 9)  # the driver stopped here: interrupted, not completed
    searcher.save(str(tmp_path / "searcher.pkl"))
    again = SequentialSeeds(looks, db="sqlite://", experiment_id=1, state_path=tmp_path / SEEDS_STATE)
    again.restore(str(tmp_path / "searcher.pkl"))
    assert again.trial_run == searcher.trial_run and again.seeds == [3, 2] and again.queue == searcher.queue
    assert seeds_finished(tmp_path / "nowhere") is None  # any other experiment


def _run(store, exp, recipe, seed, correct, trial):
    params = {"data": {"name": "digits"}, "recipe": {"batch_size": 64}, "epochs": 1, "train_images": 1000,
              "tags": {"seed_rule": "auto"}}
    rid = store.create_run(exp, model="resnet18", stands_for="resnet50", recipe=recipe, params=params, seed=seed,
                           trial_id=trial)
    acc = float(np.mean(correct))
    store.log_epoch(rid, 1, {"train_loss": 1.0, "train_acc": acc, "val_loss": 1.0, "val_acc": acc, "lr": 1e-3})
    store.save_test(rid, {"test_acc": acc, "test_loss": 1.0, "n_test": len(correct), "test_correct": pack_correct(correct)})
    store.finish_run(rid, status="completed")


@pytest.mark.parametrize("gap,decided", [(60, True), (1, False)])
def test_group_decided_on_real_rows(db_url, gap, decided):
    """Two seeds a side on 359 shared images: 60 more images right is decided at the rule's 98.75% (t over one
    degree of freedom included); 1 more image is not."""
    rng = np.random.default_rng(0)
    store = Store(db_url)
    exp = store.create_experiment(kind="benchmark", name="looks")
    trials = []
    for seed in range(2):
        before = rng.random(359) < 0.6
        after = before.copy()
        wrong = np.flatnonzero(~after)
        after[wrong[:gap + seed]] = True
        for recipe, correct in (("naive", before), ("cnn (fitted)", after)):
            trials.append(f"{recipe}-{seed}")
            _run(store, exp, recipe, seed, correct, trials[-1])
    store.close()
    assert group_decided(db_url, exp, trials) is decided
    assert group_decided(db_url, exp, trials[:2]) is False  # one seed a side: the rule never decides on one
    assert stats.sequential_confidence() < 0.99
