"""Ctrl-C to a real `neqforce train` process: exit 130 with one line (no traceback), ``last.pt`` whole, and
the same command with ``--resume`` continues from the last finished epoch."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import torch


def test_ctrl_c_during_training_leaves_a_resumable_run(tiny_dataset, tmp_path):
    beside = Path(sys.executable).with_name("neqforce")
    exe = str(beside) if beside.exists() else (shutil.which("neqforce") or "neqforce")
    run = tmp_path / "run"
    args = [exe, "train", tiny_dataset, "--out", str(run), "--preset", "compact", "--hidden", "8",
            "--patience", "1000", "--threads", "1", "--test-ids", "V3.000_s1"]
    proc = subprocess.Popen([*args, "--epochs", "100000"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("epoch") and int(line.split()[1]) >= 3:
                proc.send_signal(signal.SIGINT)
                break
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(lines) + rest
    assert proc.returncode == 130, text
    assert "Traceback" not in text
    said = [x for x in text.splitlines() if x.startswith("interrupted")]
    assert len(said) == 1 and "--resume" in said[0], text
    state = torch.load(run / "last.pt", weights_only=False)
    done = state["epoch"] + 1  # the next epoch to run
    assert done >= 3
    res = subprocess.run([*args, "--epochs", str(done + 2), "--resume"], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"resumed at epoch {done}" in res.stdout
    assert (run / "model.pt").is_file()
