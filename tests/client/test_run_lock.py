"""One writer per output: a second simulate/sweep on an --out that a running one writes is refused with
one line (neqforce.runlock), and the running one finishes intact."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neqforce.client.cli import EXIT_INTERRUPTED
from neqforce.runlock import FolderBusy, FolderLock
from neqforce.trajectory import read_trajectory

EXE = str(Path(sys.executable).with_name("neqforce"))
TINY = ["--backend", "negf", "--lx", "6", "--ly", "4", "--no-plots", "--no-progress"]


def _neqforce(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout)


def _start_long_run(out: Path, *extra: str) -> subprocess.Popen:
    """A real NEGF simulate that runs until stopped, returned once its trajectory file exists."""
    cmd = [EXE, "simulate", "--backend", "negf", "--lx", "10", "--ly", "8", "--steps", "100000",
           "--out", str(out), "--no-plots", "--no-progress", *extra]
    run = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (out / "trajectory.h5").exists() and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return run


def test_second_lock_refused_until_released(tmp_path: Path) -> None:
    with FolderLock(tmp_path, "--out") as first:
        assert first.held
        with pytest.raises(FolderBusy, match=r"being written by another neqforce process \(pid \d+"):
            FolderLock(tmp_path, "--out").__enter__()
    with FolderLock(tmp_path, "--out") as again:  # released at the end of the block
        assert again.held


def test_lock_taken_once_the_folder_exists(tmp_path: Path) -> None:
    out = tmp_path / "new"
    with FolderLock(out, "--out") as lock:
        assert not lock.held  # nothing to lock yet: the command creates the folder later
        out.mkdir()
        lock.acquire()
        assert lock.held
        lock.acquire()  # no-op when held
        assert lock.held


def test_simulate_refused_while_its_output_is_written(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    with FolderLock(out, "--out", name=".trajectory.h5.lock", target=out / "trajectory.h5"):
        r = _neqforce("simulate", *TINY, "--steps", "3", "--out", str(out))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "is being written by another neqforce process" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (out / "trajectory.h5").exists()
    r = _neqforce("simulate", *TINY, "--steps", "3", "--out", str(out))  # lock released: runs
    assert r.returncode == 0, r.stderr
    assert read_trajectory(out / "trajectory.h5").complete


def test_other_trajectory_files_of_one_folder_are_independent(tmp_path: Path) -> None:
    with FolderLock(tmp_path, "--out", name=".a.h5.lock", target=tmp_path / "a.h5"):
        r = _neqforce("simulate", *TINY, "--steps", "2", "--out", str(tmp_path / "b.h5"))
    assert r.returncode == 0, r.stderr


def test_two_real_simulate_processes_on_one_out(tmp_path: Path) -> None:
    """A second process (even with --overwrite) must not write into a running run's file."""
    out = tmp_path / "run"
    first = _start_long_run(out)
    try:
        assert first.poll() is None, "the first run ended before the test could race it"
        second = _neqforce("simulate", *TINY, "--steps", "3", "--out", str(out), "--overwrite")
        assert second.returncode == 2, second.stderr
        assert "is being written by another neqforce process" in second.stderr
        assert first.poll() is None
        first.send_signal(signal.SIGINT)  # the first run saves and stops
        _, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == EXIT_INTERRUPTED, err
    traj = read_trajectory(out / "trajectory.h5")  # intact, and still the first run's
    assert traj.params.shape == (10, 8) and traj.series_step[-1] >= 0 and not traj.complete


def test_sweep_refused_while_its_folder_is_written(tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    out.mkdir()
    with FolderLock(out, "--out"):
        r = _neqforce("sweep", "--voltage", "3.0", "--seeds", "1", "--steps", "2", *TINY, "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert "is being written by another neqforce process" in r.stderr and "Traceback" not in r.stderr
    assert not (out / "runs").exists()


def test_run_stops_when_its_folder_is_renamed_and_reused(tmp_path: Path) -> None:
    """A run whose folder is moved away while it writes, with a new run started under the old name, must
    not write its checkpoints into the new run's file: it stops with one line; both files stay intact."""
    out, moved = tmp_path / "run", tmp_path / "moved"
    first = _start_long_run(out, "--checkpoint-every", "5")
    try:
        time.sleep(0.5)
        assert first.poll() is None
        out.rename(moved)
        second = _neqforce("simulate", *TINY, "--steps", "3", "--out", str(out))  # a new run, old name
        assert second.returncode == 0, second.stderr
        _, err = first.communicate(timeout=60)  # its next checkpoint finds the path taken
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 2, err
    # its next checkpoint came before the new run's file existed ("removed or moved") or after ("replaced")
    assert re.search(r"was (removed or moved|replaced) while this run was writing it", err), err
    assert "Traceback" not in err
    assert read_trajectory(out / "trajectory.h5").params.shape == (6, 4)  # the new run's, intact
    old = read_trajectory(moved / "trajectory.h5")  # the first run's checkpoints went with its folder
    assert old.params.shape == (10, 8) and old.series_step[-1] >= 0


def test_dataset_generation_refused_while_its_folder_is_written(tmp_path: Path) -> None:
    from neqforce.physics import HolsteinParams
    from neqforce.training.dataset import DatasetSpec, RunSpec, generate_dataset

    spec = DatasetSpec(params=HolsteinParams(lx=6, ly=4), runs=(RunSpec(voltage=3.0, seed=0, n_steps=2),))
    with FolderLock(tmp_path, "output folder"):
        with pytest.raises(FolderBusy, match="choose another output folder"):
            generate_dataset(tmp_path, spec, workers=1, show_progress=False)
    assert not list(tmp_path.glob("*.h5"))
