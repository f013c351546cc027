"""Model integrity at load (issue 8): sha256 against the provenance, warm-up against the reference answer
stored at export time; a corrupted model (64 bytes overwritten mid-file, still valid protobuf) is refused
with a one-line reason instead of serving NaN forces."""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from neqforce.models import compact_model_path
from neqforce.server.backends.integrity import REFERENCE_KEY, reference_lattice
from neqforce.server.backends.onnx import OnnxModel

onnx = pytest.importorskip("onnx")
pytestmark = pytest.mark.timeout(600)


def _forces(reference: dict) -> np.ndarray:
    return np.frombuffer(base64.b64decode(reference["force_f32_base64"]), dtype="<f4")


def _corrupt(path: Path, fill: bytes = b"\xff" * 64) -> None:
    """Overwrite 64 bytes in the middle of the largest weight tensor of the file; the file stays valid
    protobuf (only the tensor's raw bytes change)."""
    data = bytearray(path.read_bytes())
    largest = max(onnx.load(str(path)).graph.initializer, key=lambda t: len(t.raw_data))
    start = data.find(largest.raw_data)
    assert start >= 0 and len(largest.raw_data) >= 2 * len(fill)
    middle = start + len(largest.raw_data) // 2
    data[middle:middle + len(fill)] = fill
    path.write_bytes(bytes(data))
    onnx.load(str(path))  # still parses


@pytest.fixture()
def shipped_copy(tmp_path: Path) -> Path:
    """compact.onnx and its provenance compact.json, copied."""
    src = compact_model_path()
    if not src.is_file():
        pytest.skip("no bundled model in this tree")
    shutil.copy(src, tmp_path / src.name)
    shutil.copy(src.with_suffix(".json"), tmp_path / "compact.json")
    return tmp_path / src.name


def test_shipped_model_passes_its_checks(shipped_copy: Path) -> None:
    model = OnnxModel.load(shipped_copy, "compact")
    record = json.loads(shipped_copy.with_suffix(".json").read_text())
    assert model.sha256 == record["sha256"]
    force, density = model.run(reference_lattice(), want_density=True)
    assert record["reference"]["lattice"] == "neqforce.reference/1" and force.shape == (1, 24, 22)
    np.testing.assert_allclose(force.ravel(), _forces(record["reference"]), atol=1e-5)


def test_corrupted_shipped_model_is_refused_by_its_hash(shipped_copy: Path) -> None:
    _corrupt(shipped_copy)
    with pytest.raises(ValueError) as info:
        OnnxModel.load(shipped_copy, "compact")
    message = str(info.value)
    assert "sha256" in message and "compact.json" in message and "corrupted" in message
    assert "\n" not in message


def test_corrupted_model_without_hash_is_refused_by_its_reference(shipped_copy: Path) -> None:
    """Without a recorded hash, the warm-up on the reference lattice catches the corruption."""
    record_path = shipped_copy.with_suffix(".json")
    record = json.loads(record_path.read_text())
    del record["sha256"]
    record_path.write_text(json.dumps(record))
    OnnxModel.load(shipped_copy, "compact")  # intact: fine
    for fill in (b"\xff" * 64, bytes(range(64))):  # NaN weights; finite but wrong weights
        corrupted = shipped_copy.with_name(f"c{fill[1]}.onnx")
        shutil.copy(shipped_copy, corrupted)
        shutil.copy(record_path, corrupted.with_suffix(".json"))
        json_path = corrupted.with_suffix(".json")
        json_path.write_text(json.dumps({**record, "file": corrupted.name}))
        _corrupt(corrupted, fill)
        with pytest.raises(ValueError) as info:
            OnnxModel.load(corrupted, "compact")
        assert "corrupted" in str(info.value) and ("non-finite" in str(info.value)
                                                   or "reference answer" in str(info.value))


def test_serve_refuses_a_corrupted_model_in_one_line(shipped_copy: Path) -> None:
    from typer.testing import CliRunner

    from neqforce.cli import app

    _corrupt(shipped_copy)
    result = CliRunner().invoke(app, ["serve", "--port", "0", "--model", str(shipped_copy)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "sha256" in result.stderr


def test_export_embeds_a_reference_answer_that_catches_corruption(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from neqforce.physics import HolsteinParams
    from neqforce.training.export import export_onnx
    from neqforce.training.model import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(descriptor="paper+elec", hidden=(64, 32), r_cut=4),
                        HolsteinParams().physical())
    meta = {"neqforce.params": json.dumps(HolsteinParams().physical())}
    path, _ = export_onnx(model, tmp_path / "fresh.onnx", meta)
    stored = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    reference = json.loads(stored[REFERENCE_KEY])
    with torch.no_grad():
        expected, _ = model(torch.from_numpy(reference_lattice()))
    np.testing.assert_allclose(_forces(reference), expected.numpy().ravel(), atol=1e-5)
    OnnxModel.load(path, "fresh")  # no provenance file: the reference check alone
    _corrupt(path, bytes(range(64)))
    with pytest.raises(ValueError, match="reference answer|non-finite"):
        OnnxModel.load(path, "fresh")
