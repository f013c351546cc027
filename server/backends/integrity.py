"""Model integrity at load: the file's sha256 against its provenance, and a reference answer.

* Provenance: a JSON file next to the model with the same stem (``compact.json`` for ``compact.onnx``)
  whose ``file`` names the model; when it has ``sha256``, the model file must hash to it.
* Reference answer: forces and densities of :func:`reference_lattice` (a fixed 24 x 22 configuration:
  large enough that every descriptor offset up to a cutoff of 10 sites reaches inside it from the middle,
  so every weight of such a model matters) computed at export time, stored as JSON (float32 arrays,
  little-endian, base64) under the ONNX metadata key ``neqforce.reference``
  (``training/export.py`` writes it) or, for a model exported before that key existed, under
  ``reference`` in the provenance. The warm-up run at load is that lattice; its output must be finite
  and, where a reference exists, within the tolerance of the execution provider
  (:func:`reference_tolerance`) times max(1, max |F_ref|) of it.

Any mismatch is a ValueError with a one-line reason: the server refuses to start.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

#: ONNX metadata key of the reference answer.
REFERENCE_KEY = "neqforce.reference"
#: Name (and version) of the reference configuration; a reference names the lattice it was made on.
REFERENCE_LATTICE = "neqforce.reference/1"
REFERENCE_SHAPE = (1, 24, 22)
#: Allowed deviation from the stored reference, relative to max(1, max |F_ref|): float32 rounding on
#: another CPU is ~1e-6; a GPU may use TF32 matmuls (~1e-3). Corrupted weights give NaN or more.
CPU_TOL, OTHER_TOL = 1e-4, 3e-3


def reference_tolerance(provider: str) -> float:
    """Relative tolerance of the reference check for an execution provider."""
    return CPU_TOL if provider == "CPUExecutionProvider" else OTHER_TOL


def reference_lattice() -> np.ndarray:
    """The fixed configuration of the reference answer: float32 (1, 24, 22), a CDW checkerboard of
    amplitude 2.4 modulated in space (metallic and ordered patches) plus a smooth irregular part."""
    x = np.arange(REFERENCE_SHAPE[1], dtype=np.float64)[:, None]
    y = np.arange(REFERENCE_SHAPE[2], dtype=np.float64)[None, :]
    stag = (-1.0) ** (x + y)
    q = 2.4 * stag * (0.6 + 0.5 * np.cos(0.9 * x + 0.5 * y)) + 0.3 * np.sin(1.3 * x - 0.7 * y + 0.2)
    return q[None].astype(np.float32)


def provenance(path: Path) -> dict[str, Any] | None:
    """The provenance record of the model at ``path`` (``<stem>.json`` naming it), or None."""
    record = path.with_suffix(".json")
    if not record.is_file():
        return None
    try:
        data = json.loads(record.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: provenance {record.name} is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("file") != path.name:
        return None
    return data


def verify_hash(path: Path, sha: str, record: dict[str, Any] | None) -> None:
    """ValueError when the provenance records another sha256 than ``sha`` (the file's)."""
    expected = (record or {}).get("sha256")
    if expected and expected != sha:
        raise ValueError(f"{path}: sha256 {sha[:16]}... differs from {expected[:16]}... recorded in "
                         f"{path.with_suffix('.json').name}: the model file is corrupted or was replaced")


def _encode(array: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype="<f4").tobytes()).decode()


def _decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text, validate=True), dtype="<f4").astype(np.float64)


def reference_record(run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> dict[str, str]:
    """The reference answer of a model whose ``run(q) -> (force, density)`` is given: the lattice name
    and the float32 outputs (little-endian, base64; stored exactly)."""
    force, density = run(reference_lattice())
    return {"lattice": REFERENCE_LATTICE, "force_f32_base64": _encode(force),
            "density_f32_base64": _encode(density)}


def reference_answer(run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]) -> str:
    """:func:`reference_record` as the JSON text of metadata ``neqforce.reference`` (used by the exporter)."""
    return json.dumps(reference_record(run))


def _reference(path: Path, metadata: dict[str, str], record: dict[str, Any] | None) -> dict | None:
    text = metadata.get(REFERENCE_KEY)
    if text is None:
        return (record or {}).get("reference")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: metadata '{REFERENCE_KEY}' is not JSON: {exc}") from None


def check_warm_up(path: Path, metadata: dict[str, str], record: dict[str, Any] | None,
                  run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                  provider: str = "CPUExecutionProvider") -> float | None:
    """Run the model on :func:`reference_lattice` (the warm-up) and check the output; returns the
    deviation from the stored reference (None when the model has none). ValueError on failure."""
    force, density = (np.asarray(a, np.float64) for a in run(reference_lattice()))
    bad = int(np.count_nonzero(~np.isfinite(force)) + np.count_nonzero(~np.isfinite(density)))
    if bad:
        raise ValueError(f"{path}: the warm-up run gave {bad} non-finite output value(s): the model "
                         "file is corrupted")
    ref = _reference(path, metadata, record)
    if ref is None:
        return None
    try:
        if ref["lattice"] != REFERENCE_LATTICE:
            raise ValueError(f"{path}: reference answer made on '{ref['lattice']}', this server checks "
                             f"'{REFERENCE_LATTICE}'")
        f_ref = _decode(ref["force_f32_base64"]).reshape(force.shape)
        n_ref = _decode(ref["density_f32_base64"]).reshape(density.shape)
    except (KeyError, TypeError, ValueError) as exc:  # binascii.Error is a ValueError
        if isinstance(exc, ValueError) and str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: malformed reference answer ({type(exc).__name__}: {exc})") from None
    scale = max(1.0, float(np.abs(f_ref).max()))
    error = max(float(np.abs(force - f_ref).max()), float(np.abs(density - n_ref).max())) / scale
    tol = reference_tolerance(provider)
    if not error <= tol:
        raise ValueError(f"{path}: the warm-up output differs from the model's reference answer by "
                         f"{error:.3g} (allowed {tol:g} on {provider}): the model file is corrupted")
    return error


def check_integrity(path: str | Path, sha: str, metadata: dict[str, str],
                    run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                    provider: str = "CPUExecutionProvider") -> float | None:
    """Everything this module checks, for a loaded model whose file hashes to ``sha``: the hash against
    the provenance, then the warm-up (on ``provider``) against the reference answer. ValueError (one
    line) on failure."""
    path = Path(path)
    record = provenance(path)
    verify_hash(path, sha, record)
    return check_warm_up(path, metadata, record, run, provider)
