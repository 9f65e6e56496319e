"""benchmarks/gpu_check.py's verdicts, on CPU: each check function reads what a GPU run would write
(runs in a real results database written through harness.store, as the recorder writes them; the
throughput CSV's rows) and says PASS or FAIL with a reason. The measuring itself needs a GPU;
benchmarks/gpu_check.sh runs it there."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
import tarfile
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
    says why, and $OUT holds only what comes back (steps.tsv, the log, the archive)."""
    script = REPO / "benchmarks" / "gpu_check.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")})
    assert done.returncode == 2 and "FAIL setup: no nvidia-smi" in done.stdout, done
    assert "machine\tFAIL\t0\tnvidia-smi not found" in (tmp_path / "out" / "steps.tsv").read_text()
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"steps.tsv", "gpu_check.log", "gpu_check.tar.gz"}
    assert not (REPO / "gpu_check_out").exists()


def script_shares() -> tuple[dict[str, int], int]:
    """gpu_check.sh's SHARES (step -> seconds, in order) and DEFAULT_BUDGET, as bash reads them."""
    text = (REPO / "benchmarks" / "gpu_check.sh").read_text()
    (shares,) = re.findall(r'^SHARES="([^"]+)"$', text, flags=re.M)
    (budget,) = re.findall(r"^DEFAULT_BUDGET=(\d+)$", text, flags=re.M)
    return {k: int(v) for k, v in (s.split(":") for s in shares.split())}, int(budget)


def test_the_step_budgets_setup_and_report_add_up_to_the_deadline(gc):
    """One command on the lent machine: setup, every step and the report share one 420 s deadline (a call
    may run 10 minutes; the rest of the 15 is the machine's start and a rerun). Every step has a share, the
    Python steps run in gpu_check.py's order, and the report comes last."""
    shares, budget = script_shares()
    assert budget <= 420 and sum(shares.values()) == budget
    assert list(shares) == ["setup", "imports", "gpu_tests", *gc.CHECKS, "report"]
    assert all(v > 0 for v in shares.values())
    loop = re.search(r"for name in ([a-z0-9_ ]+); do", (REPO / "benchmarks" / "gpu_check.sh").read_text()).group(1)
    assert tuple(loop.split()) == gc.CHECKS


STUB = """#!/usr/bin/env bash
# A stand-in Python for gpu_check.sh: each step passes at once, except throughput, which outlasts its slot.
case "$1" in
  -V) echo "Python 3.12.0" ;;
  -) cat > /dev/null; printf 'python\\t3.12.0\\ntorch\\t2.11.0\\n' > "$2"; echo "imported"; echo "versions: stub" ;;
  -m) echo "1 skipped" ;;
  *) work=$(echo "$@" | sed 's/.*--out \\([^ ]*\\).*/\\1/')
     if [ "$2" = --report ]; then echo "# stub" > "$work/gpu_check-stub.md"
       echo "stub summary $(wc -l < "$work/steps.tsv") lines"; ! grep -q FAIL "$work/steps.tsv"
     elif [ "$3" = throughput ]; then echo "row 1" > "$work/throughput.md"
       setsid sleep 60 & echo $! > "$STUB_PIDFILE"; sleep 30  # a daemon, as Ray's are, then too long
     else printf '%s\\tPASS\\t0\\tstub\\n' "$3" >> "$work/steps.tsv"; fi ;;
esac
"""


def test_a_step_that_outlasts_its_slot_is_stopped_and_the_next_skipped_for_time(tmp_path):
    """With a 12 s budget: the stub's throughput step is stopped at its slot's end (FAIL, timed out), the
    step whose slot is then all but gone is skipped ("no time left"), the later ones run in theirs; $OUT gets
    the report, steps.tsv, the log and one archive holding the rest (the partial table too), and the last
    line printed is the summary."""
    (tmp_path / "repo" / "benchmarks").mkdir(parents=True)
    shutil.copy(REPO / "benchmarks" / "gpu_check.sh", tmp_path / "repo" / "benchmarks")
    stub = tmp_path / "python"
    stub.write_text(STUB)
    stub.chmod(0o755)
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(tmp_path / "repo" / "benchmarks" / "gpu_check.sh"), "--dry-run", "--budget", "12",
                           "--python", str(stub)], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(out), "STUB_PIDFILE": str(tmp_path / "daemon.pid")})
    assert done.returncode == 1, done  # the timed-out step is a failure
    steps = {line.split("\t")[0]: line.split("\t") for line in (out / "steps.tsv").read_text().splitlines()}
    assert steps["throughput"][1] == "FAIL" and "timed out at the end of its slot" in steps["throughput"][3]
    assert steps["randaugment"][1] == "SKIP" and steps["randaugment"][3].startswith("no time left")
    assert steps["imagefolder"][1] == "PASS" and steps["compile"][1] == "PASS"
    assert {p.name for p in out.iterdir()} == {"gpu_check-stub.md", "steps.tsv", "gpu_check.log", "gpu_check.tar.gz"}
    with tarfile.open(out / "gpu_check.tar.gz") as tar:
        names = {Path(n).name for n in tar.getnames()}
    assert {"throughput.md", "throughput.log", "versions.tsv"} <= names and "steps.tsv" not in names
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("stub summary") and "s wall of a 12 s budget" in last
    assert "ended 1 process(es) it left running" in steps["throughput"][3]  # the daemon, and nothing else
    stat = Path(f"/proc/{(tmp_path / 'daemon.pid').read_text().strip()}/stat")
    assert not stat.exists() or stat.read_text().split(") ")[1][0] == "Z"  # gone, or dead and not yet reaped


def test_budget_must_be_whole_seconds(tmp_path):
    done = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--budget", "7m"], capture_output=True,
                          text=True, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out")})
    assert done.returncode == 2 and "--budget '7m' is not a whole number of seconds" in done.stderr


def test_report_carries_the_versions_that_ran(gc, tmp_path):
    (tmp_path / "versions.tsv").write_text("python\t3.12.3\ntorch\t2.11.0+cu130\ncuda\t13.0\ncudnn\t91900\n"
                                           "torchvision\t0.26.0\ntimm\t1.0.31\nray\t2.60.0\noptuna\t5.0.0\n")
    gc.record(tmp_path, gc.passed("peak", "fine"), 1)
    text = gc.write_report(gc.read_steps(tmp_path), "NVIDIA H100 80GB HBM3", tmp_path, wall=300, budget=420).read_text()
    assert ("versions that ran: Python 3.12.3, torch 2.11.0+cu130 (CUDA 13.0, cuDNN 91900), torchvision 0.26.0, "
            "timm 1.0.31, Ray 2.60.0, Optuna 5.0.0") in text
    assert "300 s wall of a 420 s budget" in text


def test_throughput_rows_without_time_are_named_not_failed(gc):
    row = {"runs_as": "vit_base", "image_size": "224", "error": "", "reference_img_s": "900", "harness_img_s": "950",
           "reference_full_img_s": "800", "harness_full_img_s": "850", "augment": "rrc + flip + rand-m9-mstd0.5-inc1",
           "harness_mfu_pct": "20.1", "ratio": "1.05", "ratio_full": "1.06"}
    late = {"runs_as": "efficientnet_b3", "image_size": "224", "error": "no time left (70 s given, ...)"}
    check = gc.check_throughput([row, late], peak_known=True)
    assert check.status == "PASS" and "not measured, no time left: efficientnet_b3" in check.reason
    assert gc.check_throughput([late], peak_known=True).status == "FAIL"


def test_the_sweep_step_runs_a_shipped_study_at_gpu_auto(gc):
    """The sweep step's study is the shipped vit_lr, shortened, at gpu: auto: 2 at a time get half a card each
    on one card, a card each on more (share_cards spreads them; an explicit gpu: 0.5 would stack both on card 0
    of a multi-GPU node)."""
    from harness.resources import share_cards
    from harness.specs import StudySpec, parse_spec

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
