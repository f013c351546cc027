"""Bundled surrogate models (ONNX, docs/physics.md contract), each with its model card (same stem, .json).

* ``voltage.onnx`` — the default (0.10.1): a committee of three device-wide convolutional networks over
  V ∈ [2, 4] and devices of 30–120 columns (inputs ``q`` and ``voltage``; outputs ``force``, ``density``
  and the committee spread ``force_std``), docs/ml_model.md "The bundled voltage-range model".
* ``voltage_fast.onnx`` — the default until 0.8 (0.7, descriptor + MLP committee, same domain): ~10×
  cheaper per site, less accurate at V ≥ 3 (docs/ml_model.md); for throughput (``--model`` its path).
* ``compact.onnx`` — the first release's model: the 30×28 device at V = 3.0 only (input ``q`` only);
  kept for comparison and for programs that pinned it (``--model`` its path).
"""

from __future__ import annotations

from pathlib import Path

#: File name of the default bundled model inside this folder.
BUNDLED_MODEL = "voltage.onnx"
#: File name of 0.7, the fast descriptor committee (the default before 0.8).
FAST_MODEL = "voltage_fast.onnx"
#: File name of the first release's q-only model (30×28, V = 3.0).
COMPACT_MODEL = "compact.onnx"


def bundled_model_path() -> Path:
    """Path of the default bundled ONNX model (may not exist in a development tree before training)."""
    return Path(__file__).with_name(BUNDLED_MODEL)


def fast_model_path() -> Path:
    """Path of the fast voltage-range committee (0.7: descriptor + MLP, ~10x cheaper than the default)."""
    return Path(__file__).with_name(FAST_MODEL)


def compact_model_path() -> Path:
    """Path of the first release's q-only model (30×28 at V = 3.0)."""
    return Path(__file__).with_name(COMPACT_MODEL)
