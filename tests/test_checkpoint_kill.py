"""Fault 6: a process killed (SIGKILL) while writing a checkpoint loses nothing already saved."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from harness.errors import UserError
from harness.train import load_checkpoint

WRITER = textwrap.dedent("""
    import io, sys, time, torch
    from pathlib import Path
    from harness.train import save_atomic
    path = Path(sys.argv[1])
    real_save = torch.save

    def save_that_stops_midway(obj, f, *a, **k):
        # The 4th save: half its bytes written to the temp file, then stop there and say so. The
        # test's SIGKILL lands on that event, so it is mid-write every time (a timed kill could find
        # the save finished between its look at the folder and the signal).
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        data = buf.getvalue()
        f.write(data[: len(data) // 2])
        f.flush()
        print("mid-write", flush=True)
        time.sleep(600)

    big = torch.randn(1_000_000)
    for i in range(1, 5):
        if i == 4:
            torch.save = save_that_stops_midway
        w = big + i
        save_atomic({"model": {"w": w}, "epoch": i, "checksum": float(w.double().sum())}, path)
        print(i, flush=True)
""")


@pytest.mark.slow
def test_sigkill_mid_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        lines = [proc.stdout.readline().strip() for _ in range(4)]  # three whole saves, then the 4th midway
        assert lines == ["1", "2", "3", "mid-write"], lines
        (temp,) = tmp_path.glob(".*.tmp-*")  # the 4th save's temp file, half written, not yet renamed
        assert 0 < temp.stat().st_size
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert list(tmp_path.glob(".*.tmp-*")) == [temp]  # the kill left the half-written temp file behind
    ckpt = load_checkpoint(path)  # what --resume does: the last complete save loads ...
    assert ckpt["epoch"] == 3
    assert float(ckpt["model"]["w"].double().sum()) == ckpt["checksum"]  # whole, not a half-written mix
    assert list(tmp_path.glob(".*.tmp-*")) == []  # ... and the stale temp file is gone
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_truncated_checkpoint_is_refused_with_clear_error(tmp_path):
    from harness.train import save_atomic

    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(1000)}, "epoch": 1}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt, truncated or tampered"):
        load_checkpoint(path)


def test_a_live_writers_save_in_flight_is_left_alone(tmp_path):
    """A reader (a resume's checks, export) loading last.pt while another process saves into the same
    folder must not delete that save's temp file: only a dead writer's (its pid gone) is stale."""
    from harness.train import save_atomic

    path = tmp_path / "last.pt"
    save_atomic({"model": {"w": torch.ones(3)}, "epoch": 1}, path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".last.pt.tmp-{int(gone.stdout)}-1"
    live = tmp_path / f".best.pt.tmp-{os.getpid()}-1"  # this process stands in for a writer mid-save
    for p in (dead, live):
        p.write_bytes(b"half a save")
    assert load_checkpoint(path)["epoch"] == 1
    assert not dead.exists() and live.read_bytes() == b"half a save"
