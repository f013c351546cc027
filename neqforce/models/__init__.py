"""Bundled surrogate models (ONNX, SPEC §9 contract)."""

from __future__ import annotations

from pathlib import Path

#: File name of the bundled compact model inside this folder.
BUNDLED_MODEL = "compact.onnx"


def bundled_model_path() -> Path:
    """Path of the bundled ONNX model (may not exist in a development tree before training)."""
    return Path(__file__).with_name(BUNDLED_MODEL)
