"""Fault 6: a process killed (SIGKILL) while writing a checkpoint loses nothing already saved."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from harness.errors import UserError
from harness.train import load_checkpoint

WRITER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from harness.train import save_atomic
    path = Path(sys.argv[1])
    big = torch.randn(4_000_000)  # 16 MB: each save takes long enough to be killed mid-write
    i = 0
    while True:
        i += 1
        w = big + i
        save_atomic({"model": {"w": w}, "epoch": i, "checksum": float(w.double().sum())}, path)
        print(i, flush=True)
""")


@pytest.mark.slow
def test_sigkill_mid_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):  # let a few saves complete
            assert proc.stdout.readline()
        # Kill as soon as a temp file is being written, i.e. mid-save.
        deadline = time.monotonic() + 30
        while not list(tmp_path.glob(".*.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert list(tmp_path.glob(".*.tmp-*")), "the kill did not land mid-write; nothing was tested"
    ckpt = load_checkpoint(path)  # what --resume does: the last complete save loads ...
    assert ckpt["epoch"] >= 3
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
