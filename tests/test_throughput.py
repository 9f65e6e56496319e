"""benchmarks/throughput.py, packing.py and loader.py: each benchmark runs end to end and writes its table.

On CPU it runs the stand-ins at tiny sizes (the numbers only prove it works); the GPU test runs
the same path on CUDA and skips without it, or fails when HARNESS_REQUIRE_CUDA is set (for a GPU
machine's CI, where a missing CUDA must not pass as a skip).
"""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from conftest import require_or_skip

REPO = Path(__file__).resolve().parent.parent


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def throughput():
    return load("throughput")


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_tiny_cpu_run_writes_table(throughput, tmp_path):
    """Two CPU stand-ins at 16 px: a CSV with every column, positive rates, and a Markdown table
    that marks the targets and says the run is on CPU."""
    lines: list[str] = []
    rc = throughput.main(["--tiny", "--models", "resnet50,vit_base", "--image-sizes", "16", "--batch-size", "8",
                          "--steps", "2", "--repeats", "2", "--threads", "1", "--out", str(tmp_path)], log=lines.append)
    assert rc == 0
    csv_path, md_path = tmp_path / "throughput-cpu-tiny.csv", tmp_path / "throughput-cpu-tiny.md"
    rows = read_rows(csv_path)
    assert list(rows[0]) == throughput.COLUMNS
    assert [(r["model"], r["runs_as"]) for r in rows] == [("resnet50", "resnet18"), ("vit_base", "vit_tiny")]
    for r in rows:
        assert r["error"] == ""
        for col in ("reference_img_s", "harness_img_s", "reference_full_img_s", "harness_full_img_s", "fwd_gflops",
                    "ratio", "ratio_full"):
            assert float(r[col]) > 0, (col, r)
        assert float(r["ratio"]) == pytest.approx(float(r["harness_img_s"]) / float(r["reference_img_s"]), rel=0.01)
        assert r["reference_mfu_pct"] == ""  # no peak on a CPU: MFU left empty, not invented
        assert "(published)" in r["recipe"] and "rand-m" in r["augment"]  # like for like: the published recipe
    md = md_path.read_text()
    assert "targets are for one H100 and were not measured here" in md
    assert "resnet18 (stand-in for resnet50) 16px: harness/reference >= 0.95" in md
    assert any(str(md_path) in line for line in lines)  # ends by printing where the results are


def test_failing_model_becomes_a_row(throughput, tmp_path):
    """A model that cannot run at the size is recorded with its error; the others still run."""
    rc = throughput.main(["--tiny", "--models", "swin_tiny", "--image-sizes", "24", "--batch-size", "4", "--steps", "1",
                          "--repeats", "1", "--threads", "1", "--out", str(tmp_path)], log=lambda s: None)
    assert rc == 1  # every row failed
    (row,) = read_rows(tmp_path / "throughput-cpu-tiny.csv")
    assert row["runs_as"] == "swin_nano" and "divisible by 8" in row["error"]


def test_packing_needs_a_gpu(tmp_path):
    lines: list[str] = []
    assert load("packing").main(["--device", "cpu", "--out", str(tmp_path)], log=lines.append) == 0
    assert "needs a CUDA GPU" in lines[0]


@pytest.mark.slow
def test_packing_trial_in_a_spawned_process():
    """The no-Ray path: a trial is `run_trial` in a spawned process (what the hidden --trial re-entry did
    through a subprocess); its time and rate come back, no error."""
    packing = load("packing")
    args = packing.parse_args(["--trials", "1", "--train-size", "16", "--epochs", "1"])
    r = packing.pack_with_processes(args, "concurrent", "cpu")
    assert r["errors"] == [] and len(r["fit_s"]) == 1 and r["img_s"][0] > 0


def test_loader_tiny_run(tmp_path):
    """A few JPEGs decoded by one worker: a rate per worker and a verdict per model (timm's RTX 3090 rates:
    no throughput table in this folder)."""
    lines: list[str] = []
    rc = load("loader").main(["--images", "8", "--size", "32", "--workers", "1", "--batch-size", "4", "--device", "cpu",
                              "--out", str(tmp_path)], log=lines.append)
    assert rc == 0
    md = (tmp_path / "loader-cpu.md").read_text()
    assert "timm's RTX 3090 AMP figures" in md and "vit_base" in md


@pytest.mark.gpu
def test_gpu_run_reports_mfu(throughput, tmp_path):
    """On a GPU: bf16, MFU filled in (peak known or passed), harness within the same order as the reference."""
    if not torch.cuda.is_available():
        require_or_skip("HARNESS_REQUIRE_CUDA", "needs CUDA (torch.cuda.is_available() is false)")
    rc = throughput.main(["--models", "resnet18,vit_tiny", "--image-sizes", "32", "--batch-size", "64", "--steps", "5",
                          "--repeats", "3", "--peak-tflops", "100", "--out", str(tmp_path)], log=lambda s: None)
    assert rc == 0
    (csv_path,) = [p for p in tmp_path.glob("throughput-*.csv")]
    for r in read_rows(csv_path):
        assert r["amp"] == "bf16" and r["error"] == ""
        assert float(r["harness_mfu_pct"]) > 0
        assert float(r["ratio"]) > 0.5


@pytest.mark.parametrize(("flag", "script"), [("--packing", "packing.py"), ("--loader-images", "loader.py")])
def test_old_mode_flags_point_to_their_script(throughput, capsys, flag, script):
    """The modes throughput.py had before the split name the script that measures them now."""
    with pytest.raises(SystemExit) as e:
        throughput.main([flag, "3"] if flag.endswith("images") else [flag])
    assert e.value.code == 2 and f"benchmarks/{script}" in capsys.readouterr().err
