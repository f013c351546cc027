"""Shared parts of the sweep tests: the ``neqforce`` CLI in a subprocess, a real Dask cluster
(``dask scheduler`` + ``dask worker`` processes on 127.0.0.1), and bit-for-bit run comparison."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from neqforce.trajectory import read_trajectory

#: The sweep the cluster tests share: 12×10 (outside the bundled model's 30×28 domain: AUTO -> exact
#: NEGF), V = 2.5 and 3.0, 3 seeds, checkpoints every 10 steps.
SWEEP_ARGS = ["--lx", "12", "--ly", "10", "--voltage", "2.5,3.0", "--seeds", "3", "--save-every", "5",
              "--checkpoint-every", "10", "--no-progress"]


def neqforce(*args: str, timeout: float = 240, **kw) -> subprocess.CompletedProcess:
    """Run the installed CLI; stdout/stderr captured as text."""
    return subprocess.run([neqforce_exe(), *args], capture_output=True, text=True, timeout=timeout, **kw)


def neqforce_exe() -> str:
    """The ``neqforce`` console script of this interpreter."""
    beside = Path(sys.executable).with_name("neqforce")
    return str(beside) if beside.exists() else (shutil.which("neqforce") or "neqforce")


def run_files(out: Path) -> dict[str, Path]:
    """Trajectory files of a sweep folder, keyed by point/seed."""
    files = sorted((out / "runs").glob("*/*/trajectory.h5"))
    return {str(f.parent.relative_to(out / "runs")): f for f in files}


def assert_same_run(a: Path, b: Path) -> None:
    """Two trajectory files hold bit-for-bit the same complete run."""
    ta, tb = read_trajectory(a), read_trajectory(b)
    assert ta.complete and tb.complete, (a, b)
    assert ta.params == tb.params and ta.seed == tb.seed
    assert ta.series_step == tb.series_step and ta.series_xi == tb.series_xi
    fa, fb = ta.frames(), tb.frames()
    for key in ("step", "q", "force", "density"):
        assert np.array_equal(fa[key], fb[key], equal_nan=True), (a, key)
    assert ta.checkpoint_step == tb.checkpoint_step
    assert np.array_equal(ta.checkpoint_q, tb.checkpoint_q)


def assert_same_sweep(a: Path, b: Path) -> None:
    fa, fb = run_files(a), run_files(b)
    assert fa and sorted(fa) == sorted(fb)
    for key in fa:
        assert_same_run(fa[key], fb[key])
    assert not list((b / "runs").glob("*/*/*.tmp")), "temporary files left behind"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class DaskCluster:
    address: str
    scheduler: subprocess.Popen
    workers: list[subprocess.Popen] = field(default_factory=list)

    def kill_worker(self, index: int) -> None:
        proc = self.workers[index]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def _wait_workers(address: str, n: int, timeout: float = 90) -> None:
    from distributed import Client

    deadline = time.monotonic() + timeout
    with Client(address, timeout="30s", set_as_default=False) as client:
        while len(client.nthreads()) < n:
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {len(client.nthreads())} of {n} Dask workers came up")
            time.sleep(0.2)


@pytest.fixture
def dask_cluster(tmp_path) -> Iterator[DaskCluster]:
    """A real ``dask scheduler`` and two single-threaded ``dask worker`` processes (no nanny: a killed
    worker stays dead) on 127.0.0.1."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, *args: str) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen([sys.executable, "-m", "dask", *args], stdout=log, stderr=subprocess.STDOUT,
                             cwd=tmp_path, start_new_session=True)
        procs.append(p)
        return p

    scheduler = start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard")
    cluster = DaskCluster(address=address, scheduler=scheduler)
    try:
        for i in range(2):
            cluster.workers.append(start(f"worker{i}", "worker", address, "--nthreads", "1", "--no-nanny",
                                         "--no-dashboard", "--name", f"w{i}"))
        _wait_workers(address, 2)
        yield cluster
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def checkpoint_step(path: Path) -> int:
    """Last committed step of a run file, read without taking the HDF5 file lock (a reader holding the
    lock would make the running task's in-place checkpoint wait); -1 when unreadable right now."""
    import h5py

    try:
        with h5py.File(path, "r", locking=False) as f:
            if "checkpoint/commit" in f:
                return int(f["checkpoint/commit"][0])
            return int(f["checkpoint/step"][()])
    except (OSError, KeyError, ValueError):
        return -1


def wait_for_progress(out: Path, min_step: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Block until some run file of ``out`` has a checkpoint at or beyond ``min_step``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended (rc {proc.returncode}) before reaching step {min_step}")
        files = list((out / "runs").glob("*/*/trajectory.h5")) if (out / "runs").exists() else []
        if any(checkpoint_step(f) >= min_step for f in files):
            return
        time.sleep(0.1)
    raise AssertionError(f"no run reached step {min_step} within {timeout} s")
