"""neqforce.trajectory: append-only checkpoints, the commit marker, old files, tampered files."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest

from neqforce.client.simulate import Simulation
from neqforce.physics import HolsteinParams, staggered_sign
from neqforce.trajectory import (
    FORMAT,
    FORMAT_V1,
    TrajectoryError,
    TrajectoryWriter,
    read_trajectory,
    step_times,
)

P = HolsteinParams(lx=6, ly=4)
Q0 = 0.4 * staggered_sign(6, 4)


def linear(q: np.ndarray) -> tuple[np.ndarray, None]:
    """A cheap force field (no NEGF needed to test the file format)."""
    return -0.3 * q, None


def run(path, n_steps=40, stop_at=None, checkpoint_every=5, save_every=4):
    sim = Simulation.create(path, P, Q0, n_steps=n_steps, seed=3, save_every=save_every, overwrite=True)
    sim.run(linear, checkpoint_every=checkpoint_every, stop_at=stop_at)
    return sim


def test_checkpoints_append_in_place(tmp_path):
    """After the first write, checkpoints write into the same file (same inode, preallocated room)
    instead of rewriting it; the end of the run stores it compact."""
    path = tmp_path / "t.h5"
    sim = Simulation.create(path, P, Q0, n_steps=40, seed=3, save_every=4)
    inode = os.stat(path).st_ino
    sim.run(linear, checkpoint_every=5, stop_at=12)
    assert os.stat(path).st_ino == inode
    Simulation.open(path).run(linear, checkpoint_every=5, stop_at=30)
    assert os.stat(path).st_ino == inode
    with h5py.File(path) as f:
        assert f.attrs["format"] == FORMAT
        assert f["series/xi"].shape[0] >= 1024 and f["frames/q"].chunks is None  # room, contiguous
        assert list(f["checkpoint/commit"][()][:3]) == [30, 31, 8]
    Simulation.open(path).run(linear, checkpoint_every=5)
    traj = read_trajectory(path)
    assert traj.complete and traj.series_step == list(range(41))
    assert traj.frame_step == list(range(0, 41, 4))
    with h5py.File(path) as f:
        assert f["series/xi"].shape == (41,) and f["frames/q"].compression == "gzip"  # compact
        assert list(f["checkpoint/commit"][()][:3]) == [40, 41, 11]
    whole = read_trajectory(run(tmp_path / "whole.h5").path)
    np.testing.assert_array_equal(whole.checkpoint_q, traj.checkpoint_q)
    np.testing.assert_array_equal(whole.frames()["q"], traj.frames()["q"])
    assert whole.series_xi == traj.series_xi


def test_rows_past_the_marker_are_ignored_and_overwritten(tmp_path):
    """A checkpoint interrupted after appending rows but before moving the marker: readers see the
    previous checkpoint; resuming overwrites the leftovers and ends bit-for-bit like a clean run."""
    path = tmp_path / "t.h5"
    run(path, stop_at=12)
    with h5py.File(path, "r+") as f:
        for name in ("step", "time", "xi"):
            f[f"series/{name}"][13:16] = -7
        f["checkpoint/slots"][1 - int(f["checkpoint/commit"][3])] = 99.0
    traj = read_trajectory(path)
    assert traj.series_step == list(range(13)) and traj.checkpoint_step == 12
    assert np.all(traj.checkpoint_q != 99.0)
    Simulation.open(path).run(linear, checkpoint_every=5)
    clean = read_trajectory(run(tmp_path / "clean.h5").path)
    resumed = read_trajectory(path)
    assert resumed.series_step == clean.series_step and resumed.series_xi == clean.series_xi
    np.testing.assert_array_equal(resumed.frames()["q"], clean.frames()["q"])


def write_v1(path, traj) -> None:
    """The previous format, written as the old writer did (fixed-size datasets, checkpoint/step, q)."""
    with h5py.File(path, "w") as f:
        for key in ("params", "seed", "dt", "save_every", "n_steps", "backend", "model", "q0_bulk",
                    "created", "complete"):
            f.attrs[key] = traj.params.to_json() if key == "params" else getattr(traj, key)
        f.attrs["format"] = FORMAT_V1
        f.attrs["versions"] = json.dumps(traj.versions)
        f.attrs["extra"] = json.dumps(traj.extra)
        steps = np.asarray(traj.series_step)
        f["series/step"], f["series/time"], f["series/xi"] = steps, steps * traj.dt, traj.series_xi
        for name, value in traj.frames().items():
            f[f"frames/{name}"] = value
        f["checkpoint/step"] = traj.checkpoint_step
        f["checkpoint/q"] = traj.checkpoint_q


def test_old_format_is_read_and_resumed(tmp_path):
    partial = read_trajectory(run(tmp_path / "p.h5", stop_at=17).path)
    old = tmp_path / "old.h5"
    write_v1(old, partial)
    assert read_trajectory(old).series_step == list(range(18))
    Simulation.open(old).run(linear, checkpoint_every=5)
    resumed = read_trajectory(old)
    clean = read_trajectory(run(tmp_path / "clean.h5").path)
    assert resumed.series_xi == clean.series_xi
    np.testing.assert_array_equal(resumed.checkpoint_q, clean.checkpoint_q)
    with h5py.File(old) as f:
        assert f.attrs["format"] == FORMAT  # upgraded on its first checkpoint


def _tamper_attr(name, value):
    def edit(f):
        f.attrs[name] = value
    return edit


def _tamper_commit(index, value):
    def edit(f):
        f["checkpoint/commit"][index] = value
    return edit


def _tamper_state(key, value):
    """Change the run's state (JSON in the slot the marker names)."""
    def edit(f):
        commit = f["checkpoint/commit"][()]
        slot, n = int(commit[3]), int(commit[4])
        state = json.loads(bytes(f["checkpoint/state"][slot, :n]))
        state[key] = value
        text = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
        f["checkpoint/state"][slot, :len(text)] = text
        f["checkpoint/commit"][4] = len(text)
    return edit


@pytest.mark.parametrize("edit, message", [
    (_tamper_attr("save_every", 0), "save_every = 0"),
    (_tamper_attr("dt", -0.1), "dt = -0.1"),
    (_tamper_commit(0, -5), "checkpoint step = -5"),
    (_tamper_commit(0, 99), "past the run's"),
    (_tamper_commit(3, 7), "slot 7"),
    (_tamper_commit(1, 10**6), r"the checkpoint says 1000000 \(truncated file\)"),
    (_tamper_commit(4, 0), "run state of 0 bytes"),
    (_tamper_commit(1, 10), "series/step is not 0..12"),
    (_tamper_attr("save_every", 3), "expected every 3 steps"),
    (_tamper_state("complete", True), "marked complete at step 12"),
    (_tamper_state("n_steps", -3), "n_steps = -3"),
])
def test_tampered_files_say_what_is_wrong(tmp_path, edit, message):
    path = tmp_path / "t.h5"
    run(path, stop_at=12)
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(TrajectoryError, match=message) as info:
        TrajectoryWriter.resume(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("dataset, rows, message", [
    ("series/xi", 5, "series/xi has 5 rows, the checkpoint says 13"),
    ("frames/q", 1, "frames/q has 1 frames, the checkpoint says 4"),
    ("checkpoint/step", None, "checkpoint step = -5"),
])
def test_tampered_old_format_too(tmp_path, dataset, rows, message):
    partial = read_trajectory(run(tmp_path / "p.h5", stop_at=12).path)
    old = tmp_path / "old.h5"
    write_v1(old, partial)
    with h5py.File(old, "r+") as f:
        value = f[dataset][()]
        del f[dataset]
        f[dataset] = -5 if rows is None else value[:rows]
    with pytest.raises(TrajectoryError, match=message):
        read_trajectory(old)


def test_times_are_rounded_to_the_step():
    assert step_times([3], 0.1)[0] == 0.3 and repr(float(step_times([3], 0.1)[0])) == "0.3"
    np.testing.assert_allclose(step_times(np.arange(1000), 0.05), np.arange(1000) * 0.05, rtol=0, atol=1e-12)


_WRITER = """
import os, sys
import numpy as np
from neqforce.physics import HolsteinParams
from neqforce.trajectory import Trajectory, TrajectoryWriter
path = sys.argv[1]
if os.path.exists(path):
    w = TrajectoryWriter.resume(path)
else:
    w = TrajectoryWriter(path, Trajectory(params=HolsteinParams(lx=6, ly=4), seed=0, dt=0.1, save_every=3,
                                          n_steps=10**8))
    w.record(0, np.zeros((6, 4)), np.zeros((6, 4)), None, 0.0)
    w.checkpoint()  # the file exists before "ready"
step = w.traj.checkpoint_step + 1
print("ready", flush=True)
while True:  # almost all of its time is spent checkpointing: a kill lands inside a write
    w.record(step, np.full((6, 4), float(step)), np.zeros((6, 4)), None, step * 1e-3)
    if step % 2 == 0:
        w.checkpoint()
    step += 1
"""


def test_sigkill_during_checkpoints_leaves_a_consistent_file(tmp_path):
    """A writer killed (SIGKILL) at random moments, 8 times, resuming each time: the file always
    reads back consistent, its resume state is the marker's step, and the series has no gap."""
    import random
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "k.h5"
    rng = random.Random(7)
    last = -1
    for _ in range(8):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.6))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        traj = read_trajectory(path)  # consistency is checked on read
        assert traj.checkpoint_step >= last
        np.testing.assert_array_equal(traj.checkpoint_q, np.full((6, 4), float(traj.checkpoint_step)))
        assert traj.series_xi == [s * 1e-3 for s in range(traj.checkpoint_step + 1)]
        last = traj.checkpoint_step
    assert last > 0


def test_reading_while_the_run_checkpoints_is_consistent(tmp_path):
    """A reader polling a file whose run does nothing but checkpoint (each of the two slots reused every
    other checkpoint): every read succeeds and is one checkpoint — resume state and series agree. Before
    the reader's seqlock, a read took the run state of a slot being rewritten within a second."""
    import subprocess
    import sys
    import time

    path = tmp_path / "live.h5"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        last, reads, t_end = -1, 0, time.monotonic() + 6.0
        while time.monotonic() < t_end:
            traj = read_trajectory(path)
            np.testing.assert_array_equal(traj.checkpoint_q, np.full((6, 4), float(traj.checkpoint_step)))
            assert len(traj.series_xi) == traj.checkpoint_step + 1 and traj.checkpoint_step >= last
            last, reads = traj.checkpoint_step, reads + 1
        assert reads > 20 and last > 100, (reads, last)
    finally:
        proc.kill()
        proc.wait()


def test_a_read_takes_its_checkpoint_from_the_file_it_opened(tmp_path):
    """A run that finishes renames its compact rewrite onto the path; a read that opened the file before
    must take the checkpoint from the file it opened (its offsets), not from whatever the path names now."""
    from neqforce.trajectory import _read_open

    live, done = tmp_path / "live.h5", tmp_path / "done.h5"
    run(live, stop_at=20)
    run(done)
    expected = read_trajectory(live)
    with h5py.File(live, "r", locking=False) as f:
        os.replace(done, live)
        traj, _ = _read_open(live, f)
    assert traj.checkpoint_step == expected.checkpoint_step == 20
    np.testing.assert_array_equal(traj.checkpoint_q, expected.checkpoint_q)
    assert traj.series_xi == expected.series_xi
    assert read_trajectory(live).checkpoint_step == 40
