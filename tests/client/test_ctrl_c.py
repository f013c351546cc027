"""Ctrl-C at random moments of real `neqforce simulate` processes: always exit 130 within a bound, one
message naming the step, a valid resumable file (issue: 2 of 20 Ctrl-C once hung in grpc Channel.close)."""

from __future__ import annotations

import random
import re
import time

import pytest

from neqforce.trajectory import read_trajectory

from .ctrl_c import start_simulate

#: Interrupts per test; each lands at a random moment after the server answered.
TRIALS = 10


@pytest.mark.parametrize("backend", ["onnx", "negf"])
def test_ctrl_c_at_random_moments(tmp_path, linear_model, backend):
    rng = random.Random(2026 + len(backend))
    model = ["--model", str(linear_model)] if backend == "onnx" else []
    for trial in range(TRIALS):
        out = tmp_path / f"run{trial}"
        sim = start_simulate(["--lx", "8", "--ly", "6", "--steps", "100000", "--backend", backend, *model,
                              "--out", str(out), "--no-progress", "--checkpoint-every", "7"])
        try:
            deadline = time.monotonic() + 300
            while "forces from" not in sim.stdout():  # the embedded server is up and answered
                assert sim.proc.poll() is None, "".join(sim.err)
                assert time.monotonic() < deadline, "the simulation did not start"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.5))
            done = sim.interrupt()
        finally:
            sim.kill()
        where = f"trial {trial} ({done.exit_s:.1f} s after Ctrl-C):\n{done.stderr}"
        assert done.returncode == 130, where
        assert "Traceback" not in done.stderr, where
        lines = [line for line in done.stderr.splitlines() if line.startswith("interrupted")]
        assert len(lines) == 1, where
        match = re.match(r"interrupted at step (\d+) of 100000", lines[0])
        if match is None:
            assert lines[0] == "interrupted before the first step; nothing was saved", where
            assert not (out / "trajectory.h5").exists(), where
            continue
        assert "writing ξ(t) and figures" in done.stdout, where  # says what the last seconds are for
        traj = read_trajectory(out / "trajectory.h5")  # valid and consistent (checked on read)
        assert traj.checkpoint_step == int(match.group(1)), where
        assert not traj.complete


def test_a_swallowed_ctrl_c_still_stops_the_run(tmp_path):
    """Ctrl-C arriving inside code that catches KeyboardInterrupt (as some libraries do) was lost: the
    run went on to the end and exited 0. Now the interrupt is remembered and the run stops after the
    step in progress, with that step saved."""
    import os
    import signal

    import numpy as np

    from neqforce.client.simulate import Simulation
    from neqforce.physics import HolsteinParams, staggered_sign

    class Swallowing:
        """A force source that receives the Ctrl-C during its 6th call and swallows KeyboardInterrupt."""

        def __init__(self) -> None:
            self.calls = 0

        def __call__(self, q):
            if self.calls == 5:
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(0.2)  # the handler runs here
                except KeyboardInterrupt:
                    pass
            self.calls += 1
            return -0.3 * q, None

    p = HolsteinParams(lx=6, ly=4)
    sim = Simulation.create(tmp_path / "run.h5", p, 0.4 * staggered_sign(6, 4), n_steps=50)
    with pytest.raises(KeyboardInterrupt):
        sim.run(Swallowing())
    traj = read_trajectory(tmp_path / "run.h5")
    assert traj.checkpoint_step == 5 and not traj.complete
    assert traj.series_step == list(range(6))
    assert np.all(np.isfinite(traj.checkpoint_q))


def test_ctrl_c_inside_a_finalizer_is_not_printed_as_a_traceback() -> None:
    """A Ctrl-C landing in a weakref callback or __del__ reaches sys.unraisablehook (Python would print
    "Exception ignored … Traceback"); while Interrupts is active and a Ctrl-C was counted it is dropped
    (check() raises it at the next safe point), other unraisables still reach the previous hook."""
    import sys
    import types

    from neqforce.client.interrupt import Interrupts

    seen: list[BaseException] = []
    before = sys.unraisablehook
    sys.unraisablehook = lambda u: seen.append(u.exc_value)
    try:
        with Interrupts() as guard:
            guard.count = 1  # as the SIGINT handler leaves it
            sys.unraisablehook(types.SimpleNamespace(exc_value=KeyboardInterrupt()))
            other = RuntimeError("finalizer bug")
            sys.unraisablehook(types.SimpleNamespace(exc_value=other))
            with pytest.raises(KeyboardInterrupt):
                guard.check()
        assert seen == [other]
    finally:
        sys.unraisablehook = before


def test_safe_point_raises_the_jobs_swallowed_ctrl_c_and_is_free_without_a_job() -> None:
    """Library loops (training epochs, the stages of `neqforce learn`) call safe_point(): it re-raises a
    Ctrl-C the active job counted even when its exception was swallowed, and does nothing otherwise."""
    from neqforce.client.interrupt import Interrupts, safe_point

    safe_point()  # no job: nothing
    with Interrupts() as guard:
        safe_point()  # no Ctrl-C yet
        guard.count = 1  # as the SIGINT handler leaves it when its exception was swallowed
        with pytest.raises(KeyboardInterrupt):
            safe_point()
    safe_point()  # the job is over


def test_ctrl_c_while_the_run_file_is_being_created_leaves_no_file(tmp_path, linear_model, monkeypatch):
    """The race a random Ctrl-C once hit in CI: the interrupt lands inside the creation of the run file
    (the file exists, the run object not yet). "nothing was saved" must then be true: no file."""
    import neqforce.client.jobs as jobs

    real = jobs._create

    def create_then_interrupt(path, *args, **kwargs):
        real(path, *args, **kwargs)
        assert path.exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(jobs, "_create", create_then_interrupt)
    opts = jobs.SimulateOptions(out=tmp_path / "r", params={"lx": 8, "ly": 6}, steps=5,
                                model=str(linear_model), progress=False, plots=False)
    with pytest.raises(KeyboardInterrupt) as info:
        jobs.run_simulation(opts, echo=lambda _: None)
    assert getattr(info.value, "report", None) is None  # the CLI then says "nothing was saved"
    assert not (tmp_path / "r" / "trajectory.h5").exists()


def test_ctrl_c_surfacing_as_another_exception_is_still_the_interrupt(tmp_path, linear_model, monkeypatch):
    """The race a random Ctrl-C hit in CI: SIGINT landing while scipy.optimize's C extension initialized
    during a lazy import came out as ``ImportError: initialization failed`` and the run exited 1 with a
    traceback. An exception whose chain holds the KeyboardInterrupt is the interrupt: steps saved, report
    attached, KeyboardInterrupt raised (→ exit 130 with the resume command)."""
    import neqforce.client.jobs as jobs
    from neqforce.client.interrupt import surfaced_interrupt

    calls = {"n": 0}
    real = jobs.StreamForces.__call__

    def call_then_fail_mid_import(self, q):
        calls["n"] += 1
        if calls["n"] == 12:
            try:
                raise KeyboardInterrupt
            except KeyboardInterrupt:
                raise ImportError("initialization failed")  # noqa: B904 - chained as CPython does
        return real(self, q)

    monkeypatch.setattr(jobs.StreamForces, "__call__", call_then_fail_mid_import)
    opts = jobs.SimulateOptions(out=tmp_path / "r", params={"lx": 8, "ly": 6}, steps=50, checkpoint_every=5,
                                model=str(linear_model), progress=False, plots=False)
    with pytest.raises(KeyboardInterrupt) as info:
        jobs.run_simulation(opts, echo=lambda _: None)
    report = info.value.report
    assert 0 <= report.last_step < 50
    traj = read_trajectory(tmp_path / "r" / "trajectory.h5")
    assert traj.checkpoint_step == report.last_step and not traj.complete
    # an ordinary failure stays a failure
    assert not surfaced_interrupt(ImportError("no module named x"))
    assert not surfaced_interrupt(KeyboardInterrupt())
