"""Authentication and exposure (issue 8): blank tokens refused, warnings for TLS without a token and for
remote listening without TLS or token, the peer logged on UNAUTHENTICATED, a TLS key that does not match
its certificate named as such, and a /metrics endpoint bound to loopback unless told otherwise."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from neqforce.client import ForceClient, ForceServerError
from neqforce.server.app import ServerConfig

pytestmark = pytest.mark.timeout(600)


@pytest.fixture()
def events():
    """Structured log records (dicts) of the neqforce.server loggers during the test."""
    from neqforce.server.logs import JsonFormatter

    records: list[dict] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(json.loads(self.format(record)))

    handler = Collect()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("neqforce.server")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture(scope="module")
def two_keys(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(cert, its key, another key)."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl not available to make a test certificate")
    d = tmp_path_factory.mktemp("tls2")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "key.pem"),
                    "-out", str(d / "cert.pem"), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"], check=True, capture_output=True)
    subprocess.run(["openssl", "genrsa", "-out", str(d / "other.pem"), "2048"], check=True,
                   capture_output=True)
    return d / "cert.pem", d / "key.pem", d / "other.pem"


class _Result:
    def __init__(self, done: subprocess.CompletedProcess) -> None:
        self.exit_code, self.stderr, self.output = done.returncode, done.stderr, done.stdout + done.stderr


def _serve(*args: str, env: dict | None = None) -> _Result:
    """``neqforce serve`` that must refuse to start: a subprocess, so a server that starts anyway fails the
    test (timeout) instead of hanging it."""
    import os
    import sys

    full_env = {k: v for k, v in os.environ.items() if k != "NEQFORCE_TOKEN"}
    full_env.update(env or {})
    command = [sys.executable, "-c", "from neqforce.cli import app; app()", "serve", "--port", "0",
               "--no-default-model", *args]
    try:
        return _Result(subprocess.run(command, capture_output=True, text=True, env=full_env, timeout=60))
    except subprocess.TimeoutExpired:
        pytest.fail(f"serve {args} started instead of refusing")


@pytest.mark.parametrize("token", ["", "   ", "\t\n"])
def test_blank_token_is_a_configuration_error(token: str) -> None:
    with pytest.raises(ValueError, match="blank"):
        ServerConfig(token=token)


@pytest.mark.parametrize("args, env", [
    (["--token", "   "], None),
    ([], {"NEQFORCE_TOKEN": ""}),       # was: authentication silently off
    ([], {"NEQFORCE_TOKEN": "  "}),
], ids=["flag-whitespace", "env-empty", "env-whitespace"])
def test_serve_refuses_a_blank_token_in_one_line(args: list[str], env: dict | None) -> None:
    result = _serve(*args, env=env)
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "blank" in result.stderr


def test_tls_key_that_does_not_match_the_certificate(two_keys) -> None:
    cert, _key, other = two_keys
    result = _serve("--tls-cert", str(cert), "--tls-key", str(other))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "does not match the certificate" in result.stderr and "Failed to bind" not in result.stderr
    result = _serve("--tls-cert", str(cert), "--tls-key", str(cert))  # a certificate is not a key
    assert result.exit_code == 1 and result.stderr.startswith("error: cannot use TLS")


def test_tls_without_token_warns(make_server, two_keys, events) -> None:
    cert, key, _ = two_keys
    with make_server(tls_cert=cert, tls_key=key):
        pass
    warned = [e for e in events if e["event"] == "tls_without_token"]
    assert len(warned) == 1 and warned[0]["level"] == "warning" and "NEQFORCE_TOKEN" in warned[0]["advice"]
    events.clear()
    with make_server(tls_cert=cert, tls_key=key, token="s3cret"):
        pass
    assert not [e for e in events if e["level"] == "warning"]


@pytest.mark.parametrize("overrides, missing", [
    ({}, "TLS and a token"),
    ({"token": "s3cret"}, "TLS"),
], ids=["neither", "token-only"])
def test_remote_listen_without_tls_or_token_warns(make_server, events, overrides, missing) -> None:
    with make_server(host="0.0.0.0", **overrides):
        pass
    warned = [e for e in events if e["event"] == "insecure_remote_listen"]
    assert len(warned) == 1 and f"without {missing}:" in warned[0]["advice"]


def test_unauthenticated_call_logs_the_peer(make_server, params, make_q, events) -> None:
    with make_server(token="s3cret") as srv, ForceClient(srv.address, token="wrong", retries=0) as c:
        with pytest.raises(ForceServerError) as info:
            c.compute_forces(make_q(params.shape), params)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    denied = [e for e in events if e["event"] == "unauthenticated"]
    assert len(denied) == 1 and denied[0]["peer"].startswith("ipv4:127.0.0.1:")
    assert denied[0]["reason"] == "invalid bearer token" and "s3cret" not in json.dumps(denied)


def test_metrics_endpoint_binds_to_loopback_by_default(make_server, events) -> None:
    srv = make_server(host="0.0.0.0", metrics_port=0)  # gRPC on every interface, /metrics not
    assert srv._metrics._http.server_address[0] == "127.0.0.1"
    assert not [e for e in events if e["event"] == "metrics_public"]
    srv = make_server(metrics_port=0, metrics_host="0.0.0.0")
    assert srv._metrics._http.server_address[0] == "0.0.0.0"
    assert [e for e in events if e["event"] == "metrics_public"]
