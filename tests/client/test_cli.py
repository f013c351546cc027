"""``neqforce simulate / forces / info`` end to end: embedded server, a running server, resume, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from neqforce.cli import app
from neqforce.client import simulate as simulate_module
from neqforce.client.outputs import read_forces, read_xi_csv
from neqforce.client.simulate import NEGFForces, Simulation
from neqforce.physics import HolsteinParams, cdw_ground_state, negf_forces
from neqforce.trajectory import read_trajectory

from .conftest import linear_forces

SMALL = ["--lx", "8", "--ly", "6"]
P = HolsteinParams(lx=8, ly=6)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def reference_run(tmp_path, force_fn, n_steps, seed=0, save_every=10, params=P, name="ref.h5"):
    sim = Simulation.create(tmp_path / name, params, cdw_ground_state(params), n_steps=n_steps, seed=seed,
                            save_every=save_every)
    return sim.run(force_fn)


def assert_same_run(a, b, atol=0.0) -> None:
    assert a.series_step == b.series_step
    assert a.params == b.params and a.seed == b.seed and a.dt == b.dt
    fa, fb = a.frames(), b.frames()
    for name in ("step", "q", "force", "density"):
        np.testing.assert_allclose(fa[name], fb[name], rtol=0, atol=atol, err_msg=name)
    np.testing.assert_allclose(a.checkpoint_q, b.checkpoint_q, rtol=0, atol=atol)
    np.testing.assert_array_equal(a.series_xi, b.series_xi)


def one_error_line(result) -> str:
    """The CLI's contract for bad input: no traceback, exactly one 'error: ...' line on stderr."""
    assert result.exit_code != 0, result.output
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


# ------------------------------------------------------------------------------------------ simulate
def test_simulate_embedded_negf(tmp_path):
    """No --server: an embedded server computes exact NEGF forces; all outputs are written."""
    out = tmp_path / "run"
    result = invoke("simulate", *SMALL, "--steps", 12, "--save-every", 4, "--seed", 3, "--backend", "negf",
                    "--out", out, "--no-progress")
    assert result.exit_code == 0, result.output
    assert "embedded server on 127.0.0.1:" in result.stdout
    assert "backend: negf" in result.stdout
    traj = read_trajectory(out / "trajectory.h5")
    assert traj.complete and traj.backend == "negf" and traj.model
    assert traj.extra["segments"][0]["server"] == "embedded"
    assert traj.versions["neqforce"]
    ref = reference_run(tmp_path, NEGFForces(P), 12, seed=3, save_every=4)
    assert_same_run(traj, ref, atol=1e-9)
    csv = read_xi_csv(out / "xi.csv")
    np.testing.assert_array_equal(csv["step"], np.arange(13))
    np.testing.assert_array_equal(csv["xi"], traj.series_xi)
    for name in ("density.png", "xi.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_simulate_against_running_server_onnx(tmp_path, server):
    """--server: the ONNX model of a running server drives the dynamics (checked against NumPy)."""
    out = tmp_path / "onnx.h5"
    result = invoke("simulate", *SMALL, "--steps", 15, "--seed", 5, "--server", server.address,
                    "--backend", "onnx", "--out", out, "--no-progress", "--no-plots")
    assert result.exit_code == 0, result.output
    traj = read_trajectory(out)
    assert traj.backend == "onnx" and traj.model == "linear"
    assert traj.extra["segments"][0]["server"] == server.address
    assert len(traj.extra["segments"][0]["server_models"]["linear"]) == 64  # sha256 of the model file
    assert (tmp_path / "onnx_xi.csv").exists() and not (tmp_path / "onnx_xi.png").exists()
    ref = reference_run(tmp_path, linear_forces, 15, seed=5)
    assert_same_run(traj, ref)


def test_auto_routes_by_coverage(tmp_path, server):
    """auto: the model covers the defaults; at another voltage the server falls back to NEGF."""
    for voltage, backend in (("3.0", "onnx"), ("2.0", "negf")):
        out = tmp_path / f"V{voltage}.h5"
        result = invoke("simulate", *SMALL, "--voltage", voltage, "--steps", 2, "--server", server.address,
                        "--out", out, "--no-progress", "--no-plots")
        assert result.exit_code == 0, result.output
        assert read_trajectory(out).backend == backend


@pytest.mark.parametrize("k", [1, 7])
def test_resume_after_interrupt_is_bit_for_bit(tmp_path, server, monkeypatch, k):
    """Ctrl-C after k force evaluations exits 130 with a valid file; --resume finishes it identically."""
    base = ["simulate", *SMALL, "--steps", 20, "--save-every", 3, "--seed", 11, "--server", server.address,
            "--backend", "onnx", "--no-progress", "--no-plots", "--checkpoint-every", 1000]
    full = invoke(*base, "--out", tmp_path / "full")
    assert full.exit_code == 0, full.output

    original = simulate_module.StreamForces.__call__
    calls = {"n": 0}

    def interrupted(self, q):
        if calls["n"] == k:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, q)

    monkeypatch.setattr(simulate_module.StreamForces, "__call__", interrupted)
    cut = invoke(*base, "--out", tmp_path / "cut")
    assert cut.exit_code == 130, cut.output
    assert "--resume" in cut.stderr
    partial = read_trajectory(tmp_path / "cut" / "trajectory.h5")
    assert not partial.complete and partial.checkpoint_step == k - 1
    assert (tmp_path / "cut" / "xi.csv").exists()
    monkeypatch.setattr(simulate_module.StreamForces, "__call__", original)

    again = invoke(*base, "--out", tmp_path / "cut")
    assert "already exists" in one_error_line(again)
    resumed = invoke("simulate", "--out", tmp_path / "cut", "--resume", "--server", server.address,
                     "--backend", "onnx", "--no-progress", "--no-plots")
    assert resumed.exit_code == 0, resumed.output
    a = read_trajectory(tmp_path / "full" / "trajectory.h5")
    b = read_trajectory(tmp_path / "cut" / "trajectory.h5")
    assert_same_run(a, b)
    assert b.complete and len(b.extra["segments"]) == 2


def test_server_failure_mid_run_keeps_the_steps(tmp_path, server, monkeypatch):
    """The server going away after k steps: one error line, exit 1, the k steps saved, resumable."""
    import grpc

    from neqforce.client import ForceServerError

    original = simulate_module.StreamForces.__call__
    calls = {"n": 0}

    def dies(self, q):
        if calls["n"] == 5:
            raise ForceServerError(grpc.StatusCode.UNAVAILABLE, "server 127.0.0.1:9 unavailable: gone")
        calls["n"] += 1
        return original(self, q)

    monkeypatch.setattr(simulate_module.StreamForces, "__call__", dies)
    out = tmp_path / "r"
    result = invoke("simulate", *SMALL, "--steps", 9, "--server", server.address, "--backend", "onnx",
                    "--out", out, "--no-progress", "--no-plots")
    assert result.exit_code == 1
    assert "UNAVAILABLE" in one_error_line(result)
    assert f"neqforce simulate --out {out} --resume" in result.stdout
    assert read_trajectory(out / "trajectory.h5").checkpoint_step == 4
    assert len(read_xi_csv(out / "xi.csv")["xi"]) == 5
    monkeypatch.setattr(simulate_module.StreamForces, "__call__", original)
    resumed = invoke("simulate", "--out", out, "--resume", "--server", server.address, "--backend", "onnx",
                     "--no-progress", "--no-plots")
    assert resumed.exit_code == 0, resumed.output
    assert read_trajectory(out / "trajectory.h5").complete


def test_resume_extends_a_finished_run(tmp_path, server):
    args = [*SMALL, "--seed", 2, "--server", server.address, "--backend", "onnx", "--no-progress",
            "--no-plots"]
    assert invoke("simulate", *args, "--steps", 6, "--out", tmp_path / "a").exit_code == 0
    assert invoke("simulate", *args, "--steps", 11, "--out", tmp_path / "b").exit_code == 0
    done = invoke("simulate", "--out", tmp_path / "a", "--resume", "--server", server.address,
                  "--no-progress")
    assert done.exit_code == 0 and "already complete" in done.stdout
    more = invoke("simulate", "--out", tmp_path / "a", "--resume", "--steps", 11, "--server", server.address,
                  "--backend", "onnx", "--no-progress", "--no-plots")
    assert more.exit_code == 0, more.output
    assert_same_run(read_trajectory(tmp_path / "a" / "trajectory.h5"),
                    read_trajectory(tmp_path / "b" / "trajectory.h5"))


def test_init_from_file(tmp_path, server):
    """--init FILE.npy starts from that configuration; the lattice size comes from the array."""
    q0 = 0.3 * np.random.default_rng(0).standard_normal((7, 5))
    np.save(tmp_path / "q0.npy", q0)
    result = invoke("simulate", "--init", tmp_path / "q0.npy", "--steps", 3, "--server", server.address,
                    "--backend", "onnx", "--out", tmp_path / "r", "--no-progress", "--no-plots")
    assert result.exit_code == 0, result.output
    traj = read_trajectory(tmp_path / "r" / "trajectory.h5")
    assert traj.params.shape == (7, 5)
    np.testing.assert_array_equal(traj.frames()["q"][0], q0)
    # and from that trajectory's last state
    result = invoke("simulate", "--init", tmp_path / "r" / "trajectory.h5", "--steps", 1, "--server",
                    server.address, "--backend", "onnx", "--out", tmp_path / "r2", "--no-progress",
                    "--no-plots")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(read_trajectory(tmp_path / "r2" / "trajectory.h5").frames()["q"][0],
                                  traj.checkpoint_q)


def test_ctrl_c_in_a_real_process_then_resume(tmp_path):
    """Ctrl-C in a terminal (SIGINT to the process group) of a real `neqforce simulate` on an embedded
    NEGF server: exit 130, no traceback, the step in the message, a valid file; --resume then equals an
    uninterrupted run. The run is far too long to end by itself (no race with its last step)."""
    from .ctrl_c import interrupt_when, start_simulate

    out = tmp_path / "run"
    sim = start_simulate([*SMALL, "--steps", "100000", "--seed", "4", "--backend", "negf", "--out", str(out),
                           "--no-progress", "--no-plots", "--checkpoint-every", "5"])
    path = out / "trajectory.h5"
    result = interrupt_when(sim, lambda: path.exists() and read_trajectory(path).checkpoint_step >= 10)
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and "neqforce simulate --out" in result.stderr, result.stderr
    partial = read_trajectory(path)
    assert f"interrupted at step {partial.checkpoint_step} of 100000" in result.stderr, result.stderr
    assert not partial.complete and partial.checkpoint_step >= 10
    assert partial.series_step == list(range(partial.checkpoint_step + 1))
    n = partial.checkpoint_step + 12
    cmd = [sys.executable, "-c", "from neqforce.cli import app; app(prog_name='neqforce')"]
    resumed = subprocess.run([*cmd, "simulate", "--out", str(out), "--resume", "--steps", str(n), "--backend",
                              "negf", "--no-progress", "--no-plots"], capture_output=True, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "BD 12 steps" in resumed.stdout, resumed.stdout  # the per-step figure counts only these
    ref = reference_run(tmp_path, NEGFForces(P), n, seed=4)
    assert_same_run(read_trajectory(path), ref, atol=1e-9)


# ------------------------------------------------------------------------------------------ forces, info
def test_forces_against_running_server(tmp_path, server):
    q = cdw_ground_state(P) + 0.05 * np.random.default_rng(1).standard_normal(P.shape)
    np.save(tmp_path / "q.npy", q)
    result = invoke("forces", tmp_path / "q.npy", "--out", tmp_path / "f.h5", "--server", server.address,
                    "--backend", "negf")
    assert result.exit_code == 0, result.output
    saved = read_forces(tmp_path / "f.h5")
    force, density = negf_forces(q, P)
    np.testing.assert_allclose(saved["force"], force, rtol=0, atol=1e-9)
    np.testing.assert_allclose(saved["density"], density, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(saved["q"], q)
    assert saved["backend"] == "negf" and saved["params"] == P

    result = invoke("forces", tmp_path / "f.h5", "--out", tmp_path / "f.npy", "--server", server.address,
                    "--backend", "onnx")
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), linear_forces(q)[0])


def test_forces_from_trajectory_frame_embedded(tmp_path, server):
    out = tmp_path / "t.h5"
    assert invoke("simulate", *SMALL, "--steps", 4, "--save-every", 2, "--server", server.address,
                  "--backend", "onnx", "--out", out, "--no-progress", "--no-plots").exit_code == 0
    result = invoke("forces", out, "--frame", 1, "--out", tmp_path / "f.h5", "--backend", "negf")
    assert result.exit_code == 0, result.output
    q = read_trajectory(out).frames()["q"][1]
    np.testing.assert_allclose(read_forces(tmp_path / "f.h5")["force"], negf_forces(q, P)[0], atol=1e-9)


def test_info(server, linear_model):
    result = invoke("info", "--server", server.address)
    assert result.exit_code == 0, result.output
    assert "linear" in result.stdout and "negf" in result.stdout
    data = json.loads(invoke("info", "--server", server.address, "--json").stdout)
    assert [m["name"] for m in data["models"]] == ["linear"]
    embedded = invoke("info", "--model", linear_model, "--json")
    assert embedded.exit_code == 0, embedded.output
    assert json.loads(embedded.stdout)["embedded"] is True
    text = invoke("info").stdout  # embedded, bundled model or none
    assert "(embedded)" in text and "backend negf" in text


# ------------------------------------------------------------------------------------------ bad input
def _npy(tmp_path, name, arr):
    np.save(tmp_path / name, arr)
    return tmp_path / name


@pytest.mark.parametrize("args, message", [
    (["--backend", "gpu"], "unknown backend"),
    (["--voltage", "nan"], "voltage must be finite"),
    (["--lx", "0"], "lx must be >= 1"),
    (["--gamma-bath", "-1"], "gamma_bath"),
    (["--steps", "-3"], "--steps"),
    (["--save-every", "0"], "save_every"),
    (["--dt", "0"], "dt must be > 0"),
    (["--init", "missing.npy"], "not found"),
    (["--resume"], "nothing to resume"),
    (["--model", "nope.onnx"], "model file not found"),
    (["--server", "127.0.0.1:1", "--timeout", "5"], "UNAVAILABLE"),
])
def test_simulate_bad_arguments(tmp_path, args, message):
    result = invoke("simulate", *SMALL, "--steps", 2, "--out", tmp_path / "o", "--no-progress", *args)
    assert message in one_error_line(result)
    assert not (tmp_path / "o" / "trajectory.h5").exists()


def test_simulate_bad_init_files(tmp_path):
    cases = {"1-D": (_npy(tmp_path, "v.npy", np.zeros(5)), "2-D"),
             "NaN": (_npy(tmp_path, "n.npy", np.where(np.eye(4, 3) > 0, np.nan, 0.0)), "NaN"),
             "text": (tmp_path / "q.txt", "unsupported")}
    (tmp_path / "q.txt").write_text("1 2 3")
    for path, message in cases.values():
        assert message in one_error_line(invoke("simulate", "--init", path, "--out", tmp_path / "o"))
    q = _npy(tmp_path, "q.npy", np.zeros((8, 6)))
    result = invoke("simulate", "--init", q, "--lx", 9, "--out", tmp_path / "o")
    assert "contradicts" in one_error_line(result)


def test_resume_with_other_parameters_is_refused(tmp_path, server):
    out = tmp_path / "r"
    assert invoke("simulate", *SMALL, "--steps", 2, "--server", server.address, "--out", out,
                  "--no-progress", "--no-plots").exit_code == 0
    line = one_error_line(invoke("simulate", "--out", out, "--resume", "--voltage", 2.0, "--server",
                                 server.address))
    assert "differs from the run being resumed" in line


def test_damaged_files_are_one_line(tmp_path):
    """A truncated/damaged trajectory (no datasets) and a non-HDF5 file: readable errors, no traceback."""
    import h5py

    from neqforce.trajectory import FORMAT

    (tmp_path / "run").mkdir()
    with h5py.File(tmp_path / "run" / "trajectory.h5", "w") as fh:
        fh.attrs["format"] = FORMAT
    assert "damaged" in one_error_line(invoke("simulate", "--out", tmp_path / "run", "--resume"))
    assert "damaged" in one_error_line(invoke("simulate", "--init", tmp_path / "run" / "trajectory.h5",
                                              "--out", tmp_path / "o"))
    (tmp_path / "x.h5").write_text("hello")
    assert "not a readable HDF5" in one_error_line(invoke("forces", tmp_path / "x.h5", "--out",
                                                          tmp_path / "f.npy"))


@pytest.mark.parametrize("make, extra, message", [
    (lambda p: p / "none.npy", [], "not found"),
    (lambda p: _npy(p, "b.npy", np.zeros((2, 3, 4))), [], "2-D"),
    (lambda p: _npy(p, "c.npy", np.full((8, 6), np.inf)), [], "NaN or Inf"),
    (lambda p: _npy(p, "d.npy", np.zeros((8, 6))), ["--backend", "cuda"], "unknown backend"),
    (lambda p: _npy(p, "e.npy", np.zeros((8, 6))), ["--frame", "0"], "--frame"),
    (lambda p: _npy(p, "f.npy", np.zeros((8, 6))), ["--out", "x.csv"], "unsupported output"),
    (lambda p: _npy(p, "g.npy", np.zeros((8, 6))), ["--k", "-1"], "k (stiffness)"),
])
def test_forces_bad_input(tmp_path, server, make, extra, message):
    args = ["forces", make(tmp_path), "--server", server.address, *extra]
    if "--out" not in extra:
        args += ["--out", tmp_path / "f.h5"]
    assert message in one_error_line(invoke(*args))


def test_server_side_refusal_is_one_line(tmp_path, server):
    """A request the server refuses (ONNX asked for parameters no model covers) → one line, exit 2."""
    q = _npy(tmp_path, "q.npy", np.zeros((8, 6)))
    result = invoke("forces", q, "--out", tmp_path / "f.h5", "--server", server.address, "--backend", "onnx",
                    "--voltage", "1.0")
    assert result.exit_code == 2
    assert "server: " in one_error_line(result)


def test_info_dead_server():
    result = invoke("info", "--server", "127.0.0.1:1", "--timeout", "3")
    assert result.exit_code == 1
    assert "UNAVAILABLE" in one_error_line(result)


def test_token_is_sent_and_required(tmp_path, linear_model):
    """A server with a bearer token: the CLI passes --token (or NEQFORCE_TOKEN); without it, one line."""
    from neqforce.server.app import ServerConfig, start_server

    srv = start_server(ServerConfig(host="127.0.0.1", port=0, models=[str(linear_model)], token="s3cret",
                                    metrics_port=None, grace_s=0.5))
    try:
        q = _npy(tmp_path, "q.npy", np.zeros((8, 6)))
        ok = invoke("forces", q, "--out", tmp_path / "f.npy", "--server", srv.address, "--token", "s3cret")
        assert ok.exit_code == 0, ok.output
        denied = invoke("forces", q, "--out", tmp_path / "g.npy", "--server", srv.address)
        assert denied.exit_code == 2 and "UNAUTHENTICATED" in one_error_line(denied)
        env = runner.invoke(app, ["info", "--server", srv.address], env={"NEQFORCE_TOKEN": "s3cret"})
        assert env.exit_code == 0, env.output
        missing_ca = invoke("info", "--server", srv.address, "--tls-ca", tmp_path / "ca.pem")
        assert "TLS CA file not found" in one_error_line(missing_ca)
    finally:
        srv.stop(grace=0.5)


def test_an_unexpected_error_is_not_masked_by_the_error_handlers():
    """The top-level group's handlers must not themselves fail (typer's vendored click has no Abort):
    an exception no handler is for propagates as itself."""
    import typer
    from typer.main import get_command

    from neqforce import cli as cli_module

    demo = typer.Typer(cls=cli_module._Group)

    @demo.command()
    def boom() -> None:
        raise RuntimeError("boom")

    @demo.command()
    def quiet() -> None:
        pass

    with pytest.raises(RuntimeError, match="boom"):
        get_command(demo).main(["boom"], prog_name="demo")
