"""Shared fixtures of the ML force-field tests: random models, the tiny NEGF dataset and short NEGF-BD runs
over voltage and length."""

from __future__ import annotations

import os

import numpy as np
import pytest

from neqforce.physics import HolsteinParams


def _random_model(descriptor: str = "device", hidden=(16, 8), activation: str = "silu", seed: int = 0,
                  anti_rank: int = 0):
    """An untrained model with random weights and non-trivial feature/target normalization."""
    torch = pytest.importorskip("torch")
    from neqforce.training.model import ModelConfig, build_model

    torch.manual_seed(seed)
    model = build_model(ModelConfig(descriptor=descriptor, hidden=tuple(hidden), activation=activation,
                                    anti_rank=anti_rank),
                        HolsteinParams().physical())
    with torch.no_grad():
        model.s_mean.uniform_(-0.5, 0.5)
        model.s_std.uniform_(0.5, 2.0)
        model.a_std.uniform_(0.5, 2.0)
        model.y_mean.fill_(0.05)
        model.y_std.fill_(0.6)
        for p in model.net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


def _cdw_like(shape, seed: int = 0) -> np.ndarray:
    """A noisy checkerboard with a random local amplitude, float64 (B, lx, ly)."""
    from neqforce.training.export import random_lattices

    return random_lattices(shape, np.random.default_rng(seed)).astype(np.float64)


@pytest.fixture
def random_model():
    """Factory: random_model(descriptor='device', hidden=(16, 8), activation='silu', seed=0)."""
    return _random_model


@pytest.fixture
def cdw_like():
    """Factory: cdw_like((B, lx, ly), seed) -> configurations like those the dynamics visits."""
    return _cdw_like


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> str:
    """The 'tiny' NEGF-BD dataset (8x6, two seeds, 20 steps), generated once per session."""
    from neqforce.training.dataset import generate_dataset, preset_spec

    out = tmp_path_factory.mktemp("tiny_data")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    generate_dataset(out, preset_spec("tiny"), workers=1, show_progress=False)
    return str(out)


#: (lattice, voltage, seed) of the runs of ``voltage_data``; 8x6 V3 seed 1 is the tests' test trajectory.
VOLTAGE_RUNS = [((8, 6), 2.5, 0), ((8, 6), 3.5, 0), ((8, 6), 3.0, 1), ((10, 6), 3.0, 0)]


@pytest.fixture(scope="session")
def negf_bd_folders(tmp_path_factory):
    """Factory ``make(name, runs, steps=15)``: short NEGF-BD runs ``((lx, ly), V, seed)`` written to one
    dataset folder per lattice (``d{lx}x{ly}``, in the order first met) under a new temporary folder;
    returns the folders."""
    from threadpoolctl import threadpool_limits

    from neqforce.training.dataset import RunSpec, run_negf_bd

    def make(name: str, runs, steps: int = 15) -> list[str]:
        root = tmp_path_factory.mktemp(name)
        folders: list[str] = []
        for (lx, ly), v, seed in runs:
            folder = root / f"d{lx}x{ly}"
            folder.mkdir(exist_ok=True)
            run = RunSpec(v, seed, steps)
            with threadpool_limits(1):
                run_negf_bd(folder / f"{run.name}.h5", HolsteinParams(lx=lx, ly=ly), run, dt=0.1,
                            save_every=1, checkpoint_every=10)
            if str(folder) not in folders:
                folders.append(str(folder))
        return folders

    return make


@pytest.fixture(scope="session")
def voltage_data(negf_bd_folders) -> list[str]:
    """Two dataset folders (8x6 and 10x6) of 15-step NEGF-BD runs at V = 2.5, 3.0, 3.5 (read only)."""
    return negf_bd_folders("vdata", VOLTAGE_RUNS)
