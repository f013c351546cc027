"""The committed Python stubs in neqforce/v1/ are exactly what grpcio-tools generates from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "protos"
STUB_DIR = ROOT / "neqforce" / "v1"


def _protos() -> list[Path]:
    return sorted((PROTO_DIR / "neqforce" / "v1").glob("*.proto"))


def test_protos_exist() -> None:
    assert [p.name for p in _protos()] == ["force_service.proto"]


def test_committed_stubs_are_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_DIR}", f"--python_out={tmp_path}",
           f"--grpc_python_out={tmp_path}", f"--pyi_out={tmp_path}", *map(str, _protos())]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    generated = sorted((tmp_path / "neqforce" / "v1").glob("*_pb2*.py*"))
    assert generated, "protoc produced nothing"
    for path in generated:
        committed = STUB_DIR / path.name
        assert committed.exists(), f"{committed} missing: regenerate the stubs (see neqforce/v1/__init__.py)"
        assert committed.read_text() == path.read_text(), (
            f"{committed.name} is stale: regenerate the stubs (see neqforce/v1/__init__.py)")
    committed_names = {p.name for p in STUB_DIR.glob("*_pb2*.py*")}
    assert committed_names == {p.name for p in generated}, "stray generated files in neqforce/v1/"


def test_stubs_import_with_installed_runtime() -> None:
    from neqforce.v1 import SERVICE_NAME, force_service_pb2, force_service_pb2_grpc

    assert force_service_pb2.DESCRIPTOR.services_by_name["ForceService"].full_name == SERVICE_NAME
    assert hasattr(force_service_pb2_grpc, "ForceServiceStub")
    msg = force_service_pb2.ComputeForcesRequest(parameters={"voltage": 3.0})
    assert force_service_pb2.ComputeForcesRequest.FromString(msg.SerializeToString()) == msg
