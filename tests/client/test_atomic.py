"""neqforce.atomic: the one temp-file-then-rename helper every writer uses."""

from __future__ import annotations

import os
import stat

import h5py
import numpy as np
import pytest

from neqforce.atomic import FILE_MODE, atomic_path, atomic_write, atomic_write_bytes, atomic_write_text


def test_write_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.txt"]
    assert stat.S_IMODE(os.stat(target).st_mode) == FILE_MODE
    assert FILE_MODE & 0o044  # readable by others, not mkstemp's 0600


def test_error_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "f.npy"
    atomic_write_bytes(target, b"old")
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as fh:
        fh.write(b"half")
        raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.npy"]


def test_atomic_path_for_hdf5(tmp_path):
    target = tmp_path / "x.h5"
    with atomic_path(target) as tmp, h5py.File(tmp, "w") as f:
        f["a"] = np.arange(3)
        assert not target.exists()
    with h5py.File(target, "r") as f:
        np.testing.assert_array_equal(f["a"][()], np.arange(3))


def test_mode_is_checked(tmp_path):
    with pytest.raises(ValueError, match="mode"), atomic_write(tmp_path / "x", "ab"):
        pass


def test_no_other_hand_written_rename_left():
    """The five writers (trajectory, dataset manifest, outputs, forces, ground-state cache) use the helper."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    for rel in ("neqforce/trajectory.py", "training/dataset.py", "client/outputs.py",
                "physics/ground_state.py"):
        text = (root / rel).read_text()
        assert "os.replace(" not in text and "mkstemp" not in text, rel
