"""`neqforce simulate` as a new user meets it: checks before any work, what runs and what it will
cost, the NEGF cliff refusal, relaxation progress, honest timings, bounded figures."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from typer.testing import CliRunner

from neqforce.cli import app
from neqforce.client.cost import CostRefused
from neqforce.client.jobs import SimulateOptions, run_simulation
from neqforce.trajectory import read_trajectory

runner = CliRunner()


def invoke(*args, env=None):
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_error_line(result) -> str:
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("args, message", [
    (["--dt", "-0.5"], "--dt must be > 0"),
    (["--seed", "-1"], "--seed must be >= 0"),
    (["--timeout", "0"], "--timeout must be > 0"),
    (["--out", "/proc/neqforce-x"], "cannot write the output folder /proc/neqforce-x (--out)"),
])
def test_options_are_checked_before_any_work(tmp_path, args, message):
    """An unreachable --server proves the order: the option's error comes, not UNAVAILABLE."""
    result = invoke("simulate", "--lx", 8, "--ly", 6, "--steps", 2, "--out", tmp_path / "o", "--no-progress",
                    "--server", "127.0.0.1:1", "--timeout", 3, *args)
    line = one_error_line(result)
    assert message in line and "UNAVAILABLE" not in line, line


def test_out_inside_a_file_names_the_output_folder(tmp_path):
    (tmp_path / "plain").write_text("x")
    line = one_error_line(invoke("simulate", "--out", tmp_path / "plain" / "run", "--server", "127.0.0.1:1"))
    assert f"cannot write the output folder {tmp_path / 'plain' / 'run'}" in line


def test_says_what_runs_and_what_it_costs(tmp_path, linear_model):
    """Before the first step: the expected backend and why; after it: the measured time and the
    projection for the remaining steps."""
    result = invoke("simulate", "--lx", 8, "--ly", 6, "--steps", 6, "--model", linear_model, "--voltage", 2.5,
                    "--out", tmp_path / "r", "--no-progress", "--no-plots")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "expected: exact NEGF (no model covers voltage = 2.5 (model: 3))" in out, out
    assert "backend: negf" in out
    assert "first step:" in out and "projected for the 6 steps left" in out, out
    covered = invoke("simulate", "--lx", 8, "--ly", 6, "--steps", 3, "--model", linear_model,
                     "--out", tmp_path / "c", "--no-progress", "--no-plots")
    assert "expected: ONNX model linear (it covers these parameters)" in covered.stdout, covered.stdout


def test_negf_cliff_is_refused_after_one_step_unless_insisted(tmp_path, linear_model):
    """A projection over the limit on unrequested NEGF stops after the first step, with the options in
    one line, and leaves no run behind; --backend negf insists. (The limit is lowered so that a small
    lattice crosses it; the CLI's limit is COST_LIMIT_S = 30 min.)"""
    opts = SimulateOptions(out=tmp_path / "cliff", params={"lx": 8, "ly": 6, "voltage": 2.5}, steps=400,
                           model=str(linear_model), progress=False, plots=False, cost_limit_s=1e-3)
    with pytest.raises(CostRefused) as info:
        run_simulation(opts, echo=lambda _: None)
    message = str(info.value)
    assert "\n" not in message and "exact NEGF at 8×6" in message
    for option in ("--backend negf", "--steps", "--lx", "--model"):
        assert option in message
    assert not (tmp_path / "cliff" / "trajectory.h5").exists()
    opts.backend, opts.steps = "negf", 3
    report = run_simulation(opts, echo=lambda _: None)
    assert report.complete and report.backend == "negf"


def test_relaxation_progress_cache_and_separate_timing(tmp_path, linear_model):
    """A lattice without a cached ground state: say so, say where it is cached, and keep its time out
    of the per-step figure."""
    env = {"NEQFORCE_CACHE": str(tmp_path / "cache")}
    result = invoke("simulate", "--lx", 5, "--ly", 4, "--steps", 4, "--model", linear_model, "--out",
                    tmp_path / "r", "--no-progress", "--no-plots", env=env)
    assert result.exit_code == 0, result.output
    cached = list((tmp_path / "cache" / "ground_state").glob("*.npy"))
    assert len(cached) == 1
    assert "relaxing the V = 0 CDW on 5×4 with exact NEGF" in result.stdout
    assert f"cached in {cached[0]}" in result.stdout
    assert "BD 4 steps in" in result.stdout and "ms/step" in result.stdout
    again = invoke("simulate", "--lx", 5, "--ly", 4, "--steps", 2, "--model", linear_model, "--out",
                   tmp_path / "r2", "--no-progress", "--no-plots", env=env)
    assert "relaxing" not in again.stdout  # cached now


def test_one_column_lattice_gets_a_bounded_figure(tmp_path, linear_model):
    """lx = 1 (allowed by the physics: the column touches both electrodes) once made a 1590×26250 px
    figure; figure sizes are capped."""
    result = invoke("simulate", "--lx", 1, "--ly", 28, "--steps", 3, "--save-every", 1, "--model",
                    linear_model, "--out", tmp_path / "r", "--no-progress",
                    env={"NEQFORCE_CACHE": str(tmp_path / "cache")})
    assert result.exit_code == 0, result.output
    header = (tmp_path / "r" / "density.png").read_bytes()[:24]
    width, height = struct.unpack(">II", header[16:24])  # PNG IHDR
    assert width <= 2400 and height <= 2100, (width, height)


def test_xi_csv_times_are_rounded(tmp_path, linear_model):
    result = invoke("simulate", "--lx", 8, "--ly", 6, "--steps", 5, "--model", linear_model, "--out",
                    tmp_path / "r", "--no-progress", "--no-plots")
    assert result.exit_code == 0, result.output
    rows = (tmp_path / "r" / "xi.csv").read_text().splitlines()
    assert rows[4].split(",")[1] == "0.3", rows[4]  # not 0.30000000000000004
    np.testing.assert_allclose(read_trajectory(tmp_path / "r" / "trajectory.h5").xi_series()[0],
                               0.1 * np.arange(6), rtol=0, atol=1e-12)


def test_progress_total_is_the_number_of_steps(tmp_path, linear_model):
    result = invoke("simulate", "--lx", 8, "--ly", 6, "--steps", 7, "--model", linear_model, "--out",
                    tmp_path / "r", "--no-plots")
    assert result.exit_code == 0, result.output
    assert "7/7" in result.stderr and "8/8" not in result.stderr, result.stderr
