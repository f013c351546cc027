"""Ctrl-C to a real `neqforce train` process: exit 130 with one line (no traceback), ``last.pt`` whole, and
the same command with ``--resume`` continues from the last finished epoch."""

from __future__ import annotations

import subprocess

import torch

from .interrupted import interrupt_when, neqforce_exe


def test_ctrl_c_during_training_leaves_a_resumable_run(tiny_dataset, tmp_path):
    run = tmp_path / "run"
    args = ["train", tiny_dataset, "--out", str(run), "--preset", "compact", "--hidden", "8",
            "--patience", "1000", "--threads", "1", "--test-ids", "V3.000_s1"]
    code, text = interrupt_when([*args, "--epochs", "100000"],
                                lambda line: line.startswith("epoch") and int(line.split()[1]) >= 3)
    assert code == 130, text
    assert "Traceback" not in text
    said = [x for x in text.splitlines() if x.startswith("interrupted")]
    assert len(said) == 1 and "--resume" in said[0], text
    state = torch.load(run / "last.pt", weights_only=False)
    done = state["epoch"] + 1  # the next epoch to run
    assert done >= 3
    res = subprocess.run([neqforce_exe(), *args, "--epochs", str(done + 2), "--resume"], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"resumed at epoch {done}" in res.stdout
    assert (run / "model.pt").is_file()
