"""``neqforce dataset idealized``: exact NEGF labels of idealized metallic domains on long devices.

Every training frame of the dynamics is a thermal configuration: rough walls, a noisy CDW. Next to the
straight wall of a long, smooth metallic domain (docs/nonlocality.md §1) the voltage committee 0.3 was
wrong together and did not say so (80×28, W = 66: MSE 5.0e-3 at spread 0.06). These frames cover that
corner of configuration space on purpose. Each is one device (ly = 28) whose W columns next to an
electrode are metallic and whose rest is the bulk CDW, with every shape parameter drawn at random:

    Q_i = Q_m + σ_m ξ_i                         in the metal (x < W_y at the left electrode)
    Q_i = q0 (1 + a) (−1)^(x+y) + σ_c ξ_i        in the CDW

with the wall column W_y = W + round(r η_y) per row (r: roughness in columns), Q_m ∈ [−0.5, −0.2],
σ_m ∈ [0.02, 0.15], σ_c ∈ [0, 0.15] (0: an ideal CDW), a ∈ [−0.05, 0.05], W ∈ [12, lx − 12] (or a
given range, ``--widths``), V from the model's voltages, 1 in 5 domains at the right electrode. Draws come
from ``default_rng([seed, lx, ly, i])``, so frame i is the same whatever the count; :data:`RESERVED_SEED`
is the noise seed of the controlled configurations of ``bench/nonlocality.py`` and is refused, so those
stay unseen by training.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from neqforce.physics import HolsteinParams, bulk_cdw_amplitude, staggered_sign

from .learn_frames import Candidate, label_jobs

#: Noise seed of bench/nonlocality.py's controlled configurations (the evaluation of this corner).
RESERVED_SEED = 7
VOLTAGES = (2.5, 3.0, 3.5, 4.0)


def dynamics_like_lattices(lx: int, ly: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` rough configurations (n, lx, ly) like the dynamics visits: a metallic domain (Q = −0.35) of
    random length, 0 to lx columns, at a random electrode with a wall that wanders by a column, the rest a
    ±2.4 CDW, plus noise of 0.3 everywhere; the global features (metallic runs) are then off their
    saturated values. Used to check batch invariance (export, sweep tests)."""
    stag = (-1.0) ** (np.arange(lx)[:, None] + np.arange(ly)[None, :])
    wall = rng.integers(0, lx + 1, size=(n, 1, ly)) + rng.integers(-1, 2, size=(n, 1, ly))
    x = np.arange(lx)[None, :, None]
    metal = np.where(rng.random((n, 1, 1)) < 0.5, x < wall, x >= lx - wall)
    return np.where(metal, -0.35, 2.4 * stag) + 0.3 * rng.standard_normal((n, lx, ly))


def idealized_configuration(lx: int, ly: int, seed: int, index: int,
                            voltages: Sequence[float] = VOLTAGES,
                            widths: tuple[int, int] | None = None) -> tuple[np.ndarray, float, dict]:
    """Frame ``index`` of family ``seed`` on an lx × ly device: (Q (lx, ly), V, its shape parameters);
    ``widths``: the range [W_min, W_max] of the metallic length (default [12, lx − 12])."""
    rng = np.random.default_rng([seed, lx, ly, index])
    v = float(voltages[int(rng.integers(len(voltages)))])
    q0 = bulk_cdw_amplitude(HolsteinParams(lx=lx, ly=ly, voltage=v))
    lo, hi = widths if widths is not None else (12, lx - 12)
    w = int(rng.integers(lo, hi + 1))
    shape = {"W": w, "side": "right" if rng.random() < 0.2 else "left",
             "Q_metal": float(rng.uniform(-0.5, -0.2)), "sigma_metal": float(rng.uniform(0.02, 0.15)),
             "sigma_cdw": float(0.0 if rng.random() < 0.3 else rng.uniform(0.0, 0.15)),
             "amplitude": float(rng.uniform(-0.05, 0.05)), "roughness": float(rng.choice([0.0, 0.5, 1.5]))}
    xi = rng.standard_normal((lx, ly))
    wall = np.clip(w + np.round(shape["roughness"] * rng.standard_normal(ly)).astype(int), 1, lx - 1)
    x = np.arange(lx)[:, None]
    metal = x < wall[None, :]
    if shape["side"] == "right":
        metal = metal[::-1]
    q = np.where(metal, shape["Q_metal"] + shape["sigma_metal"] * xi,
                 q0 * (1.0 + shape["amplitude"]) * staggered_sign(lx, ly) + shape["sigma_cdw"] * xi)
    return q, v, shape


def label_idealized(out: Path, *, lattices: Sequence[tuple[int, int, int]], seed: int,
                    voltages: Sequence[float] = VOLTAGES, widths: tuple[int, int] | None = None,
                    workers: int | None = None,
                    scheduler: str | None = None, echo: Callable[[str], None] = print) -> list[Path]:
    """Label ``count`` idealized domains per (lx, ly, count) of ``lattices`` into ``out`` (one file per
    frame, ``ideal_{lx}x{ly}_s{seed}_i{index}.h5``; rerunning labels only missing files)."""
    if seed == RESERVED_SEED:
        raise ValueError(f"seed {RESERVED_SEED} is the noise seed of bench/nonlocality.py's controlled "
                         "configurations, the held-out check of these frames; pick another")
    jobs: list[tuple[Path, list[Candidate]]] = []
    shapes: dict[str, dict] = {}
    for lx, ly, count in lattices:
        if lx < 30 or ly < 1 or count < 1:
            raise ValueError(f"lattice {lx}x{ly} x {count}: need lx >= 30, ly >= 1 and a count >= 1")
        if widths is not None and not 1 <= widths[0] <= widths[1] <= lx - 1:
            raise ValueError(f"--widths {widths[0]}:{widths[1]}: need 1 <= min <= max <= lx - 1 = {lx - 1}")
        for i in range(count):
            q, v, shape = idealized_configuration(lx, ly, seed, i, voltages, widths)
            name = f"ideal_{lx}x{ly}_s{seed}_i{i}"
            shapes[name] = {**shape, "voltage": v}
            params = HolsteinParams(lx=lx, ly=ly, voltage=v)
            jobs.append((out / f"{name}.h5", [Candidate(name, params, f"idealized:{name}", 0, 0.0, q)]))
    # cheapest first: a small lattice's files land while the long ones still run
    jobs.sort(key=lambda job: job[1][0].params.lx)
    label_jobs(jobs, 0.1, {"kind_of_source": "idealized metallic domains (training/idealized.py)",
                           "seed": seed, "voltages": list(voltages),
                           "widths": list(widths) if widths else None, "frames": shapes},
               scheduler=scheduler, workers=workers, echo=echo)
    return [p for p, _ in jobs]
