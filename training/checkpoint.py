"""Checkpoints of force models: atomic save, load into a :class:`ForceModel`."""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from .model import ForceModel, build_model, config_from_dict

FORMAT = "neqforce.checkpoint/1"


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> Path:
    """Write ``payload`` (torch.save) to a temporary file in the same folder, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw checkpoint dictionary; ValueError when it is not a neqforce checkpoint."""
    try:
        ck = torch.load(Path(path), map_location="cpu", weights_only=False)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as exc:  # missing, truncated, foreign
        raise ValueError(f"cannot read checkpoint {path}: {exc}") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise ValueError(f"{path} is not a neqforce checkpoint ({FORMAT})")
    return ck


def load_model(path: str | os.PathLike[str]) -> tuple[ForceModel, dict[str, Any]]:
    """(model in eval mode, checkpoint dict) from a checkpoint written by training."""
    ck = read_checkpoint(path)
    model = build_model(config_from_dict(ck["config"]), ck["params"])
    model.load_state_dict(ck["state_dict"])
    return model.eval(), ck
