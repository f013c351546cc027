"""Fixtures for interop tests: a real server on 127.0.0.1 with the bundled model, and the C++ example
client (examples/cpp_client) built once per test session under the session's tmp folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from neqforce.models import bundled_model_path

REPO = Path(__file__).resolve().parents[2]
CPP_SOURCE = REPO / "examples" / "cpp_client"
#: Debian/Ubuntu packages the C++ client builds against (the list .ci/run installs).
CPP_PACKAGES = " ".join(line.strip() for line in (CPP_SOURCE / "apt-packages.txt").read_text().splitlines()
                        if line.strip() and not line.lstrip().startswith("#"))


@pytest.fixture(scope="module")
def server() -> Iterator:
    """A real server on a free port of 127.0.0.1, loading the bundled model by its absolute path."""
    from neqforce.server.app import ServerConfig, start_server

    model = bundled_model_path().resolve()
    if not model.exists():
        pytest.skip(f"bundled model {model} is missing")
    srv = start_server(ServerConfig(host="127.0.0.1", port=0, models=[model], negf_max_sites=600,
                                    max_concurrency=2, grace_s=2.0))
    yield srv
    srv.stop(grace=1.0)


def _missing_toolchain() -> str | None:
    """Why the C++ client cannot be built here, or None."""
    missing = [tool for tool in ("cmake", "c++", "protoc", "grpc_cpp_plugin", "pkg-config")
               if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)}"
    probe = subprocess.run(["pkg-config", "--exists", "grpc++", "protobuf"], capture_output=True)
    if probe.returncode != 0:
        return "pkg-config finds no grpc++/protobuf development files"
    return None


@pytest.fixture(scope="session")
def cpp_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Path of the built ``neqforce_client`` (cmake configure + build of examples/cpp_client)."""
    why = _missing_toolchain()
    if why:
        pytest.skip(f"C++ toolchain for examples/cpp_client not installed ({why}); "
                    f"apt-get install {CPP_PACKAGES}")
    build = tmp_path_factory.mktemp("cpp_client_build")
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 1)}
    for cmd in (["cmake", "-S", str(CPP_SOURCE), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"],
                ["cmake", "--build", str(build)]):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    exe = build / "neqforce_client"
    assert exe.is_file()
    return exe
