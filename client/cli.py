"""``neqforce simulate``, ``forces``, ``info``: thin wrappers over :mod:`neqforce.client.jobs`.

Errors a user can fix print one line ``error: ...`` on stderr and exit with code 2; a failure of the
server or the dynamics exits with 1; Ctrl-C during a simulation exits with 130 after saving.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any

import typer

EXIT_USAGE = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130

_PHYS = "Physics (docs/physics.md; default: the value in parentheses, or the stored one on --resume)"
#: Help of the physics options (units: energies in units of the hopping scale, docs/physics.md).
PHYS_HELP = {
    "voltage": "Bias V; mu_L = -V at the left electrode (gate), mu_R = 0 (3.0).",
    "temperature": "Electron and Langevin temperature T (0.1).",
    "t": "Nearest-neighbour hopping t (1.0).",
    "g": "Electron-phonon coupling g (sqrt(2.24) = 1.4967).",
    "k": "Lattice stiffness k (1.0).",
    "kappa": "Nearest-neighbour elastic coupling kappa (0.18).",
    "gamma_lead": "Electrode broadening Gamma of columns 0 and lx-1 (1.0).",
    "gamma_bath": "Bath broadening of every site (0.001).",
}
_SERVER = "Server"

# Options shared by `simulate` and `forces` (one definition each; typer reads the Annotated metadata).
VoltageOpt = Annotated[float | None, typer.Option("--voltage", "-V", rich_help_panel=_PHYS,
                                                  help=PHYS_HELP["voltage"])]
TemperatureOpt = Annotated[float | None, typer.Option("--temperature", "-T", rich_help_panel=_PHYS,
                                                      help=PHYS_HELP["temperature"])]
HoppingOpt = Annotated[float | None, typer.Option("--t", rich_help_panel=_PHYS, help=PHYS_HELP["t"])]
CouplingOpt = Annotated[float | None, typer.Option("--g", rich_help_panel=_PHYS, help=PHYS_HELP["g"])]
StiffnessOpt = Annotated[float | None, typer.Option("--k", rich_help_panel=_PHYS, help=PHYS_HELP["k"])]
KappaOpt = Annotated[float | None, typer.Option("--kappa", rich_help_panel=_PHYS, help=PHYS_HELP["kappa"])]
GammaLeadOpt = Annotated[float | None, typer.Option("--gamma-lead", rich_help_panel=_PHYS,
                                                    help=PHYS_HELP["gamma_lead"])]
GammaBathOpt = Annotated[float | None, typer.Option("--gamma-bath", rich_help_panel=_PHYS,
                                                    help=PHYS_HELP["gamma_bath"])]
TlsCaOpt = Annotated[Path | None, typer.Option("--tls-ca", rich_help_panel=_SERVER,
                                               help="PEM CA certificate: connect with TLS.")]
TimeoutOpt = Annotated[float, typer.Option(rich_help_panel=_SERVER,
                                           help="Seconds to wait for one response (exact NEGF of 3000+ "
                                                "sites takes about a minute per core).")]


def _error(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return " ".join(text.split())


def _rpc_error(exc: BaseException) -> typer.Exit:
    """A failed server call (grpc.RpcError or ForceServerError) as one line; usage errors exit 2."""
    import grpc

    code = exc.code() if hasattr(exc, "code") else None
    details = exc.details() if hasattr(exc, "details") else str(exc)
    usage = code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
                     grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED,
                     grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.RESOURCE_EXHAUSTED)
    name = code.name if code is not None else "RPC error"
    return _error(f"server: {name}: {_one_line(Exception(details))}", EXIT_USAGE if usage else EXIT_FAILURE)


def _guarded(fn, *args: Any, **kwargs: Any) -> Any:
    """Call a library function; turn the errors a user sees into one line and an exit code."""
    import grpc

    from neqforce.client import ForceServerError

    from .interrupt import surfaced_interrupt

    try:
        return fn(*args, **kwargs)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        if surfaced_interrupt(exc):  # e.g. "ImportError: initialization failed" from a Ctrl-C mid-import
            raise KeyboardInterrupt from exc
        if isinstance(exc, (ForceServerError, grpc.RpcError)):
            raise _rpc_error(exc) from None
        if isinstance(exc, (ValueError, FileExistsError, FileNotFoundError, IsADirectoryError,
                            NotADirectoryError, PermissionError)):
            raise _error(_one_line(exc)) from None
        if isinstance(exc, (OSError, RuntimeError, FloatingPointError)):
            raise _error(_one_line(exc), EXIT_FAILURE) from None
        raise


def _physics_options(lx: int | None, ly: int | None, voltage: float | None, temperature: float | None,
                     t: float | None, g: float | None, k: float | None, kappa: float | None,
                     gamma_lead: float | None, gamma_bath: float | None) -> dict[str, Any]:
    return {"lx": lx, "ly": ly, "voltage": voltage, "temperature": temperature, "t": t, "g": g, "k": k,
            "kappa": kappa, "gamma_lead": gamma_lead, "gamma_bath": gamma_bath}


def _fmt_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def register(app: typer.Typer) -> None:
    """Add ``simulate``, ``forces`` and ``info`` to the ``neqforce`` app."""

    @app.command()
    def simulate(
        out: Path = typer.Option(Path("runs/sim"), "--out", "-o",
                                 help="Output folder (trajectory.h5, xi.csv, density.png, xi.png), or a "
                                      "file name ending in .h5 (then NAME_xi.csv, … beside it)."),
        steps: int | None = typer.Option(None, help="BD steps (default: 600; on --resume: the run's, "
                                                    "a larger value extends it)."),
        dt: float | None = typer.Option(None, help="Time step in 1/gamma (default: 0.1)."),
        seed: int | None = typer.Option(None, help="Noise seed (noise of step s from "
                                                   "SeedSequence of (seed, s)) (default: 0)."),
        save_every: int | None = typer.Option(None, "--save-every",
                                              help="Store Q, F, n every this many steps (default: 10); ξ "
                                                   "is stored every step."),
        checkpoint_every: int = typer.Option(50, "--checkpoint-every",
                                             help="Append to the trajectory file every this many steps "
                                                  "(and at least once a minute)."),
        init: str = typer.Option("cdw", help="Initial state: 'cdw' (relaxed V = 0 CDW) or a file: .npy "
                                             "array (lx, ly) or .h5 trajectory (its last state)."),
        frame: int | None = typer.Option(None, help="With --init FILE.h5: use this saved frame "
                                                    "(negative counts from the end)."),
        resume: bool = typer.Option(False, "--resume",
                                    help="Continue the interrupted run in --out (bit-for-bit the same as "
                                         "an uninterrupted one)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --out."),
        plots: bool = typer.Option(True, "--plots/--no-plots", help="Write density.png and xi.png."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
        backend: str = typer.Option("auto", rich_help_panel=_SERVER,
                                    help="auto (a model covering the parameters, else NEGF), onnx or negf."),
        server: str | None = typer.Option(None, rich_help_panel=_SERVER,
                                          help="HOST:PORT of a running server (default: start an embedded "
                                               "one on a free loopback port)."),
        token: str | None = typer.Option(None, envvar="NEQFORCE_TOKEN", rich_help_panel=_SERVER,
                                         help="Bearer token of the server (env NEQFORCE_TOKEN)."),
        tls_ca: TlsCaOpt = None,
        model: Path | None = typer.Option(None, rich_help_panel=_SERVER,
                                          help="ONNX model for the embedded server (default: the bundled "
                                               "model, or exact NEGF only if there is none)."),
        timeout: TimeoutOpt = 300.0,
        lx: int | None = typer.Option(None, rich_help_panel=_PHYS, help="Sites along x (transport) (30)."),
        ly: int | None = typer.Option(None, rich_help_panel=_PHYS, help="Sites along y (periodic) (28)."),
        voltage: VoltageOpt = None,
        temperature: TemperatureOpt = None,
        t: HoppingOpt = None,
        g: CouplingOpt = None,
        k: StiffnessOpt = None,
        kappa: KappaOpt = None,
        gamma_lead: GammaLeadOpt = None,
        gamma_bath: GammaBathOpt = None,
    ) -> None:
        """Brownian-dynamics quench of the CDW (docs/physics.md) with forces from a server; writes an HDF5
        trajectory, ξ(t) as CSV, and density/ξ(t) figures. Ctrl-C saves; --resume continues."""
        from .interrupt import Interrupts
        from .jobs import SimulateOptions, resume_command, run_simulation

        opts = SimulateOptions(
            out=out, params=_physics_options(lx, ly, voltage, temperature, t, g, k, kappa, gamma_lead,
                                             gamma_bath),
            steps=steps, dt=dt, seed=seed, save_every=save_every, checkpoint_every=checkpoint_every,
            init=init, frame=frame, backend=backend, server=server, token=token,
            tls_ca=str(tls_ca) if tls_ca else None, model=str(model) if model else None, timeout=timeout,
            resume=resume, overwrite=overwrite, plots=plots, progress=progress)
        again = (f"second Ctrl-C: stopping now; the trajectory file holds every step up to the last "
                 f"checkpoint. Continue with: {resume_command(opts)}")
        with Interrupts(second_message=again, bound_exit=True):
            try:
                report = _guarded(run_simulation, opts, echo=typer.echo)
            except KeyboardInterrupt as exc:
                rep = getattr(exc, "report", None)
                if rep is None:
                    typer.echo("\ninterrupted before the first step; nothing was saved", err=True)
                else:
                    typer.echo(f"\ninterrupted at step {rep.last_step} of {rep.n_steps}; everything so far "
                               f"is saved in {rep.outputs.trajectory}. Continue with:\n"
                               f"  {resume_command(opts)}", err=True)
                raise typer.Exit(EXIT_INTERRUPTED) from None
        timing = _fmt_seconds(report.wall_s)
        if report.steps_run > 0 and report.bd_wall_s > 0:
            timing += (f"; BD {report.steps_run} steps in {_fmt_seconds(report.bd_wall_s)} "
                       f"({report.bd_wall_s / report.steps_run * 1e3:.1f} ms/step)")
        if report.relax_wall_s >= 1.0:
            timing += f"; initial-state relaxation {_fmt_seconds(report.relax_wall_s)}"
        typer.echo(f"done: {report.last_step} steps, final ξ = {report.final_xi:.2f}, "
                   f"backend {report.backend} ({report.model or '-'}), {timing}")
        for p in report.written:
            typer.echo(f"  {p}")

    @app.command()
    def forces(
        input_path: Path = typer.Argument(..., metavar="INPUT",
                                          help="Configuration Q: .npy array (lx, ly), or .h5 trajectory "
                                               "(its last state, or --frame)."),
        out: Path = typer.Option(..., "--out", "-o", help="Output: .npy (F only) or .h5 (q, F, n, "
                                                          "parameters, backend, model)."),
        frame: int | None = typer.Option(None, help="Saved frame of an .h5 trajectory (negative counts "
                                                    "from the end)."),
        backend: str = typer.Option("auto", rich_help_panel=_SERVER, help="auto, onnx or negf."),
        server: str | None = typer.Option(None, rich_help_panel=_SERVER,
                                          help="HOST:PORT of a running server (default: embedded)."),
        token: str | None = typer.Option(None, envvar="NEQFORCE_TOKEN", rich_help_panel=_SERVER,
                                         help="Bearer token (env NEQFORCE_TOKEN)."),
        tls_ca: TlsCaOpt = None,
        model: Path | None = typer.Option(None, rich_help_panel=_SERVER,
                                          help="ONNX model for the embedded server."),
        timeout: TimeoutOpt = 300.0,
        voltage: VoltageOpt = None,
        temperature: TemperatureOpt = None,
        t: HoppingOpt = None,
        g: CouplingOpt = None,
        k: StiffnessOpt = None,
        kappa: KappaOpt = None,
        gamma_lead: GammaLeadOpt = None,
        gamma_bath: GammaBathOpt = None,
    ) -> None:
        """Forces F_i (and densities n_i) of one configuration, from a server; lattice size from the array;
        physics: stored in an .h5 input, else the defaults (in parentheses), overridden by the options."""
        from .interrupt import Interrupts
        from .jobs import compute_forces_file

        with Interrupts(bound_exit=True):
            try:
                rep = _guarded(compute_forces_file, input_path, out, frame=frame,
                               params=_physics_options(None, None, voltage, temperature, t, g, k, kappa,
                                                       gamma_lead, gamma_bath),
                               backend=backend, server=server, token=token,
                               tls_ca=str(tls_ca) if tls_ca else None, model=str(model) if model else None,
                               timeout=timeout)
            except KeyboardInterrupt:
                typer.echo(f"\ninterrupted; nothing was written to {out}", err=True)
                raise typer.Exit(EXIT_INTERRUPTED) from None
        p = rep.params
        typer.echo(f"{p.lx}×{p.ly}, V = {p.voltage:g}: backend {rep.backend} ({rep.model or '-'}), "
                   f"max|F| = {rep.max_abs_force:.4g} → {rep.out}")

    @app.command()
    def info(
        server: str | None = typer.Option(None, help="HOST:PORT of a running server (default: embedded)."),
        token: str | None = typer.Option(None, envvar="NEQFORCE_TOKEN", help="Bearer token."),
        tls_ca: Path | None = typer.Option(None, "--tls-ca", help="PEM CA certificate: connect with TLS."),
        model: Path | None = typer.Option(None, help="ONNX model for the embedded server."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON instead of text."),
        timeout: float = typer.Option(30.0, help="Seconds."),
    ) -> None:
        """What a force server offers: backends, models (parameters they cover), limits."""
        from .jobs import fetch_server_info, format_server_info

        data = _guarded(fetch_server_info, server, token=token, tls_ca=str(tls_ca) if tls_ca else None,
                        model=str(model) if model else None, timeout=timeout)
        typer.echo(json.dumps(data, indent=2, sort_keys=True, default=str) if as_json
                   else format_server_info(data))
