"""benchmarks/gpu_check.py's verdicts, on CPU: each check function reads what a GPU run would write
(runs in a real results database written through harness.store, as the recorder writes them; the
throughput CSV's rows) and says PASS or FAIL with a reason. The measuring itself needs a GPU;
benchmarks/gpu_check.sh runs it there."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from harness.store import Store

REPO = Path(__file__).resolve().parent.parent
H200 = "NVIDIA H200"


@pytest.fixture(scope="module")
def gc():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "benchmarks" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module
    spec.loader.exec_module(module)
    return module


def fake_runs(gc, tmp_path, trials: list[tuple[str, str | None]]):
    """A database holding one experiment with a run per (status, gpus) pair, read back as gpu_check reads it."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    db = f"sqlite:///{tmp_path / 'results.db'}"
    store = Store(db)
    try:
        exp = store.create_experiment(kind="benchmark", name="gpu_check")
        for i, (status, gpus) in enumerate(trials):
            run = store.create_run(exp, model="resnet18", recipe="naive", params={}, seed=i, stands_for="resnet50")
            store.log_epoch(run, 1, {"val_acc": 0.5, "images_per_s": 1000.0},
                            where={"node": "gpu-box", "node_id": "abc", "gpus": gpus})
            store.finish_run(run, status=status, error=None if status == "completed" else "boom", wall_s=3.0)
    finally:
        store.close()
    return gc.read_runs(db)


def test_granted_ids(gc):
    assert gc.granted_ids("0: NVIDIA H200; 1: NVIDIA H200") == ["0", "1"]
    assert gc.granted_ids("") == [] and gc.granted_ids(None) == []


def test_placement_pass_on_the_granted_card(gc, tmp_path):
    runs = fake_runs(gc, tmp_path, [("completed", f"0: {H200}"), ("completed", f"0: {H200}")])
    check = gc.check_placement(runs, used_cards={"0"}, cards=1, expected=2)
    assert check.status == "PASS" and "nvidia-smi saw them there" in check.reason


def test_placement_without_process_evidence_reads_the_database(gc, tmp_path):
    runs = fake_runs(gc, tmp_path, [("completed", f"0: {H200}"), ("completed", f"0: {H200}")])
    check = gc.check_placement(runs, used_cards=None, cards=1, expected=2)
    assert check.status == "PASS" and "runs.gpus only" in check.reason


@pytest.mark.parametrize(("trials", "used", "cards", "says"), [
    ([("completed", ""), ("completed", f"0: {H200}")], {"0"}, 1, "granted no card"),
    ([("completed", "0: ?"), ("completed", "0: ?")], None, 1, "could not see"),
    ([("completed", f"0: {H200}"), ("failed", f"0: {H200}")], {"0"}, 1, "failed: boom"),
    ([("completed", f"1: {H200}"), ("completed", f"1: {H200}")], {"0", "1"}, 2, "no trial was granted"),
    ([("completed", f"0: {H200}"), ("completed", f"1: {H200}")], {"0"}, 2, "never ran a Ray trial process"),
    ([("completed", f"0: {H200}"), ("completed", f"0: {H200}")], {"0"}, 4, "3 other card(s) idled"),
    ([("completed", f"0: {H200}")], {"0"}, 1, "expected 2 runs"),
])
def test_placement_failures(gc, tmp_path, trials, used, cards, says):
    check = gc.check_placement(fake_runs(gc, tmp_path, trials), used_cards=used, cards=cards, expected=2)
    assert check.status == "FAIL" and says in check.reason, check


def test_zero_gpu(gc, tmp_path):
    ok = fake_runs(gc, tmp_path / "a", [("completed", "")])
    assert gc.check_zero_gpu(ok, used_cards=set()).status == "PASS"
    assert gc.check_zero_gpu(ok, used_cards=None).status == "PASS"
    behind = gc.check_zero_gpu(ok, used_cards={"0"})
    assert behind.status == "FAIL" and "behind Ray's back" in behind.reason
    granted = gc.check_zero_gpu(fake_runs(gc, tmp_path / "b", [("completed", f"0: {H200}")]), used_cards=set())
    assert granted.status == "FAIL" and "were granted cards" in granted.reason


def test_bf16(gc):
    good = {m: {"loss": 6.9, "steps": gc.BF16_STEPS, "amp": True, "error": ""} for m in gc.FULL_MODELS}
    assert gc.check_bf16(good).status == "PASS"
    nan = {**good, "vit_base": {**good["vit_base"], "loss": float("nan")}}
    assert "vit_base: loss nan" in gc.check_bf16(nan).reason
    oom = {**good, "swin_tiny": {"loss": None, "steps": 0, "amp": False, "error": "OutOfMemoryError: ..."}}
    assert gc.check_bf16(oom).status == "FAIL"
    missing = {m: r for m, r in good.items() if m != "resnet50"}
    assert "not run: resnet50" in gc.check_bf16(missing).reason


def test_throughput(gc):
    row = {"runs_as": "vit_base", "image_size": "224", "error": "", "reference_img_s": "900", "harness_img_s": "950",
           "reference_full_img_s": "800", "harness_full_img_s": "850", "augment": "rrc + flip + rand-m9-mstd0.5-inc1",
           "harness_mfu_pct": "40.1", "ratio": "1.05", "ratio_full": "1.06"}
    assert gc.check_throughput([row], peak_known=True).status == "PASS"
    assert "RandAugment was not on" in gc.check_throughput([{**row, "augment": "rrc + flip"}], peak_known=True).reason
    assert "no MFU" in gc.check_throughput([{**row, "harness_mfu_pct": ""}], peak_known=True).reason
    assert gc.check_throughput([{**row, "harness_mfu_pct": ""}], peak_known=False).status == "PASS"
    assert gc.check_throughput([{**row, "error": "OOM: ..."}], peak_known=True).status == "FAIL"


def test_report_names_the_device_and_summarises(gc, tmp_path):
    gc.record(tmp_path, gc.passed("bf16", "fine"), 12)
    gc.record(tmp_path, gc.failed("zero_gpu", "a Ray process\ton card 0"), 3)
    (tmp_path / "steps.tsv").open("a").write("gpu_tests\tSKIP\t5\tno CUDA here\n")  # a line the script writes
    steps = gc.read_steps(tmp_path)
    path = gc.write_report(steps, "NVIDIA H200 NVL", tmp_path)
    assert path.name == "gpu_check-nvidia-h200-nvl.md"
    text = path.read_text()
    assert "# GPU check on NVIDIA H200 NVL" in text and "| zero_gpu | FAIL | 3 | a Ray process on card 0 |" in text
    assert gc.summary(steps) == "1 passed, 1 failed (zero_gpu), 1 skipped in 20 s"


def test_script_is_valid_bash_and_refuses_a_machine_without_a_gpu(tmp_path):
    """`bash -n` passes; on a machine without nvidia-smi (and without --dry-run) it stops with status 2,
    says why, and writes only under $OUT."""
    script = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")})
    assert done.returncode == 2 and "FAIL setup: no nvidia-smi" in done.stdout, done
    assert "machine\tFAIL\t0\tnvidia-smi not found" in (tmp_path / "out" / "steps.tsv").read_text()
    assert not (REPO / "gpu_check_out").exists()


def test_the_sweep_step_runs_a_shipped_study_at_gpu_auto(gc):
    """The sweep step's study is the shipped vit_lr, shortened, at gpu: auto: 2 at a time get half a card each
    on one card, a card each on more (share_cards spreads them; an explicit gpu: 0.5 would stack both on card 0
    of a multi-GPU node)."""
    from harness.specs import StudySpec, parse_spec, share_cards

    study = parse_spec(StudySpec, gc.sweep_study(), "sweep step")
    assert (study.trials, study.scheduler.max_epochs, study.concurrency) == (gc.SWEEP_TRIALS, gc.SWEEP_EPOCHS, 2)
    assert study.model == "vit_tiny" and study.resources.gpu == "auto"
    assert share_cards(study.resources, gpus=1, concurrency=study.concurrency).gpu == gc.FRACTION
    assert share_cards(study.resources, gpus=4, concurrency=study.concurrency).gpu == 1.0


def test_bf16_steps_plumbing_on_cpu(gc):
    """The bf16 check's training call, on the CPU with a stand-in at 32 px (no autocast there): it takes
    its BF16_STEPS steps through harness.train and reports a finite loss."""
    import math

    import torch

    r = gc.bf16_steps("resnet18", torch.device("cpu"), image_size=32, batch=4)
    assert r["steps"] == gc.BF16_STEPS and math.isfinite(r["loss"]) and r["amp"] is False and r["error"] == ""
