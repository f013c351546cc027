"""Bad input to ``neqforce sweep``: one ``error:`` line on stderr, exit 2, nothing started; and the
grid parser behind it."""

from __future__ import annotations

import json

import pytest

from neqforce.client.sweep_grid import grid_points, parse_grid, parse_values
from neqforce.physics import HolsteinParams

from .conftest import free_port, neqforce


def test_ranges_lists_and_single_values():
    assert parse_values("voltage", "2.0:4.0:0.25") == [2.0, 2.25, 2.5, 2.75, 3.0, 3.25, 3.5, 3.75, 4.0]
    assert parse_values("voltage", "0.1:0.3:0.1") == [0.1, 0.2, 0.3]  # no 0.30000000000000004, no lost end
    assert parse_values("voltage", "2.5:3.4:0.5") == [2.5, 3.0]
    assert parse_values("lx", "8,12") == [8, 12] and parse_values("ly", "10") == [10]
    assert parse_values("gamma_bath", "1e-3") == [0.001]


def test_grid_points_product_and_fixed_values():
    points = grid_points(parse_grid({"lx": "12", "ly": "10", "voltage": "2.5,3.0", "temperature": "0.1,0.2"}))
    assert [p.name for p in points] == ["temperature=0.1_voltage=2.5", "temperature=0.1_voltage=3",
                                        "temperature=0.2_voltage=2.5", "temperature=0.2_voltage=3"]
    assert all(p.params.shape == (12, 10) for p in points)
    assert points[3].params == HolsteinParams(lx=12, ly=10, temperature=0.2, voltage=3.0)
    assert grid_points(parse_grid({}))[0].name == "base"


@pytest.mark.parametrize(("name", "spec", "message"), [
    ("voltage", "", "empty range"),
    ("voltage", "4.0:2.0:0.5", "reversed range"),
    ("voltage", "2.0:4.0:0", "step of zero"),
    ("voltage", "2.0:4.0:-0.5", "negative step"),
    ("voltage", "2.0:x:0.5", "not a number"),
    ("voltage", "2,2", "appears twice"),
    ("lx", "8.5", "not an integer"),
    ("temperature", "-0.1,0.1", "temperature must be >= 0"),
    ("volts", "2", "unknown parameter 'volts'"),
])
def test_grid_errors(name, spec, message):
    with pytest.raises(ValueError, match=message):
        grid_points(parse_grid({name: spec}))


@pytest.mark.parametrize(("args", "message"), [
    (["--voltage", ""], "empty range"),
    (["--voltage", "4.0:2.0:0.5"], "reversed range"),
    (["--voltage", "2.0:4.0:0"], "step of zero"),
    (["--volts", "2.0:4.0:0.5"], "unknown parameter 'volts'"),
    (["--kappa=0.1:0.2:0"], "step of zero"),
    (["--seeds", "0"], "--seeds must be >= 1"),
    (["--backend", "gpu"], "--backend must be one of"),
    (["--model", "missing.onnx"], "model file not found: missing.onnx"),
    (["--server", "127.0.0.1:1", "--model", "x.onnx"], "--model selects the model computed in the workers"),
])
def test_cli_bad_input_is_one_line(tmp_path, args, message):
    out = tmp_path / "sweep"
    r = neqforce("sweep", "--out", str(out), "--lx", "8", "--ly", "6", "--no-progress", *args, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert not out.exists()


def test_cli_unreachable_scheduler(tmp_path):
    out = tmp_path / "sweep"
    address = f"tcp://127.0.0.1:{free_port()}"
    r = neqforce("sweep", "--out", str(out), "--lx", "8", "--ly", "6", "--voltage", "3.0", "--seeds", "1",
                 "--steps", "2", "--no-progress", "--scheduler", address, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot reach the Dask scheduler at {address}"), \
        r.stderr
    assert not (out / "runs").exists()


def test_cli_malformed_scheduler(tmp_path):
    r = neqforce("sweep", "--out", str(tmp_path / "s"), "--lx", "8", "--ly", "6", "--seeds", "1",
                 "--steps", "2", "--no-progress", "--scheduler", "not an address", timeout=120)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: --scheduler 'not an address': not an address like tcp://HOST:PORT"], r.stderr


def test_auto_refuses_an_expensive_negf_sweep(tmp_path):
    """V = 4.5 on 30×28 is outside the bundled model's domain (V in [2, 4]): AUTO would run exact NEGF
    for hours; the sweep says so for the point, refuses before starting anything, and names --backend
    negf. V = 3.0 is covered: the model."""
    out = tmp_path / "sweep"
    r = neqforce("sweep", "--out", str(out), "--voltage", "3.0,4.5", "--seeds", "8", "--steps", "2000",
                 "--no-progress", timeout=180)
    assert r.returncode == 2, r.stderr
    assert "voltage = 4.5: no loaded model covers the parameters" in r.stdout and "projected" in r.stdout
    assert "voltage=4.5 outside [2, 4]" in r.stdout
    assert "voltage = 3: onnx (voltage)" in r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--backend negf" in lines[0], r.stderr
    assert not (out / "runs").exists()


def test_first_seed_shifts_the_seeds_and_keeps_every_run_identical(tmp_path):
    """--first-seed F runs seeds F … F+N-1: each is the run with that seed of a sweep from 0 (and so
    `simulate --seed s`); the manifest records the seeds, the resume command keeps the option."""
    from .conftest import assert_same_run, neqforce, run_files

    common = ["--lx", "6", "--ly", "4", "--voltage", "3.0", "--steps", "8", "--backend", "negf",
              "--no-progress", "--no-plots", "--workers", "1"]
    shifted, base = tmp_path / "shifted", tmp_path / "base"
    r = neqforce("sweep", "--out", str(shifted), "--seeds", "2", "--first-seed", "5", *common)
    assert r.returncode == 0, r.stdout + r.stderr
    r = neqforce("sweep", "--out", str(base), "--seeds", "7", *common)
    assert r.returncode == 0, r.stdout + r.stderr
    files = run_files(shifted)
    assert sorted(k.split("/")[1] for k in files) == ["seed5", "seed6"]
    for key, path in files.items():
        assert_same_run(path, run_files(base)[key])
    manifest = json.loads((shifted / "sweep.json").read_text())
    assert manifest["request"]["seeds"] == [5, 6]
    bad = neqforce("sweep", "--out", str(tmp_path / "bad"), "--seeds", "2", "--first-seed", "-1", *common)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0
