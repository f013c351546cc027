"""Compact, committable copies of NEGF-BD datasets: ``neqforce dataset pack`` / ``unpack``.

NEGF labels are the expensive part of the pipeline (~1–2 s per 30×28 frame on one core), so a dataset
that must outlive the machine it was made on is packed into a folder small enough for git::

    manifest.json          the dataset's own dataset.json, plus per run: the SHA-256 of its float64
                           (Q, F) frames (``dataset_sha256``) and of the packed float32 arrays
    V3.000_s4.npz …        one per complete run: q, force float32 (S, lx, ly); step int32 (S,);
                           series_step int32, series_xi, series_force_std_max float32 (ξ = k/lx is
                           restored exactly on unpacking); meta
                           (JSON: every attribute of the trajectory — parameters, seed, dt, backend,
                           versions, extra)

Only Q and F are kept: the density is recomputed on unpacking from the force law
F = g(n − ½) − kQ − κΣ_nn Q (docs/physics.md), i.e. n = ½ + (F − F_elastic)/g. Rounding Q and F to
float32 changes forces by ~1e-7 relative, far below any model error reported in this project.
``unpack`` writes ordinary trajectory files (``neqforce.trajectory/2``), so every tool reads them.

A ``neqforce sweep`` folder (``sweep.json``, ``runs/<point>/seed<k>/trajectory.h5``) packs the same way:
runs are named ``<point>_seed<k>``, the manifest keeps ``sweep.json`` and each run's path, and ``unpack``
restores that layout (the sweep's summaries and ``bench/voltage_dynamics.py`` read it again).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np

from neqforce.atomic import atomic_path
from neqforce.physics import elastic_force
from neqforce.physics.params import HolsteinParams
from neqforce.trajectory import Trajectory, read_trajectory, write_trajectory

PACK_FORMAT = "neqforce.dataset-pack/1"
MANIFEST = "manifest.json"
SWEEP_MANIFEST = "sweep.json"
_META_FIELDS = ("seed", "dt", "save_every", "n_steps", "backend", "model", "q0_bulk", "extra", "versions",
                "created")


def exact_xi(xi32: np.ndarray, lx: int) -> np.ndarray:
    """ξ series as written by the run: ξ = k / lx exactly (SPEC §5, a count of metallic columns).

    The pack stores ξ in float32, where e.g. 27/30 becomes 0.89999998 (before the metrics of
    :mod:`neqforce.physics.domain_wall` tolerated that, an unpacked run reached ξ = 0.9 one column late).
    Rounding ξ·lx to the nearest integer restores the value the run wrote, bit for bit.
    """
    return np.round(np.asarray(xi32, dtype=np.float64) * lx) / lx


def _run_name(f: Path) -> str:
    """``<point>_seed<k>`` of a sweep run ``runs/<point>/seed<k>/trajectory.h5``."""
    return f"{f.parent.parent.name}_{f.parent.name}"


def _safe_relative(path: str) -> Path:
    """A run's path inside the unpacked folder; refuses absolute paths and ``..`` (a pack is data)."""
    p = Path(path)
    if p.is_absolute() or ".." in p.parts:
        raise ValueError(f"run path {path!r} leaves the unpack folder (damaged pack)")
    return p


def _sha(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def pack_dataset(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> dict:
    """Pack every complete run of dataset folder ``src`` into ``dst``; returns the manifest written.

    Incomplete runs are listed under ``skipped`` (pack again when they are finished). Each file is
    written atomically, the manifest last, so an interrupted pack never looks complete.
    """
    src, dst = Path(src), Path(dst)
    sweep = (src / SWEEP_MANIFEST).exists()
    files = sorted(src.glob("runs/*/seed*/trajectory.h5")) if sweep else sorted(src.glob("*.h5"))
    if not files:
        pattern = "runs/*/seed*/trajectory.h5" if sweep else "*.h5"
        raise ValueError(f"no trajectory files ({pattern}) in {src}")
    dst.mkdir(parents=True, exist_ok=True)
    source = src / (SWEEP_MANIFEST if sweep else "dataset.json")
    source_manifest = json.loads(source.read_text()) if source.exists() else {}
    runs, skipped = [], []
    previous = {}  # a pack already in dst: its runs whose float32 data are unchanged are kept as they are
    if (dst / MANIFEST).exists():
        previous = {r["name"]: r for r in json.loads((dst / MANIFEST).read_text()).get("runs", [])}
    for f in files:
        name = _run_name(f) if sweep else f.stem
        t = read_trajectory(f)
        if not t.complete:
            skipped.append(name)
            continue
        fr = t.frames()
        q32, f32 = fr["q"].astype(np.float32), fr["force"].astype(np.float32)
        old = previous.get(name)
        if old and (dst / old["file"]).exists() and old["sha256_float32"] == _sha(q32, f32):
            runs.append(old)  # e.g. an unpacked run: its float64 hash stays that of the original
            continue
        meta = {"params": t.params.to_dict(), **{k: getattr(t, k) for k in _META_FIELDS}}
        arrays = {"q": q32, "force": f32, "step": fr["step"].astype(np.int32),
                  "series_step": np.asarray(t.series_step, dtype=np.int32),
                  "series_xi": np.asarray(t.series_xi, dtype=np.float32),
                  "series_force_std_max": t.spread_series()[1].astype(np.float32),
                  "meta": np.array(json.dumps(meta, sort_keys=True, default=float))}
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        with atomic_path(dst / f"{name}.npz") as tmp:
            Path(tmp).write_bytes(buf.getvalue())
        run = {"name": name, "file": f"{name}.npz", "frames": int(len(q32)),
               "sha256_float64": _sha(fr["q"], fr["force"]), "sha256_float32": _sha(q32, f32)}
        if sweep:
            run["path"] = f.relative_to(src).as_posix()
        runs.append(run)
    manifest = {"format": PACK_FORMAT, "source": source_manifest, "runs": runs, "skipped": skipped}
    if sweep:
        manifest["layout"] = "sweep"
    with atomic_path(dst / MANIFEST) as tmp:
        Path(tmp).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def unpack_dataset(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> list[Path]:
    """Rebuild trajectory files in ``dst`` from pack folder ``src`` (existing identical runs are kept).

    Every run's float32 arrays are checked against the manifest's hash first (a damaged or edited pack
    is refused with the run's name).
    """
    src, dst = Path(src), Path(dst)
    manifest_path = src / MANIFEST
    if not manifest_path.exists():
        raise ValueError(f"{src} is not a dataset pack (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != PACK_FORMAT:
        raise ValueError(f"{manifest_path}: format {manifest.get('format')!r}, expected {PACK_FORMAT!r}")
    dst.mkdir(parents=True, exist_ok=True)
    sweep = manifest.get("layout") == "sweep"
    if manifest.get("source"):
        with atomic_path(dst / (SWEEP_MANIFEST if sweep else "dataset.json")) as tmp:
            Path(tmp).write_text(json.dumps(manifest["source"], indent=2, sort_keys=True))
    out = []
    for run in manifest["runs"]:
        with np.load(src / run["file"], allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        if _sha(arrays["q"], arrays["force"]) != run["sha256_float32"]:
            raise ValueError(f"{src / run['file']}: contents do not match the manifest's hash (damaged pack)")
        meta = json.loads(str(arrays["meta"]))
        params = HolsteinParams.from_dict(meta.pop("params"))
        q = arrays["q"].astype(np.float64)
        force = arrays["force"].astype(np.float64)
        density = 0.5 + (force - elastic_force(q, params)) / params.g
        extra = {**meta.pop("extra"), "packed": "float32 Q and F (neqforce dataset pack); density from F"}
        traj = Trajectory(params=params, extra=extra, complete=True, **meta,
                          series_step=[int(s) for s in arrays["series_step"]],
                          series_xi=[float(x) for x in exact_xi(arrays["series_xi"], params.lx)],
                          series_force_std_max=[float(x) for x in arrays["series_force_std_max"]],
                          frame_step=[int(s) for s in arrays["step"]], frame_q=list(q),
                          frame_force=list(force), frame_density=list(density),
                          checkpoint_step=int(arrays["series_step"][-1]), checkpoint_q=q[-1])
        path = dst / (_safe_relative(run["path"]) if sweep else f"{run['name']}.h5")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_trajectory(path, traj)
        out.append(path)
    return out
