"""One vocabulary across the CLI: --version, health --server, one-line parse errors, plain help texts."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from neqforce import __version__
from neqforce.cli import app

runner = CliRunner()


def run(*args: str) -> subprocess.CompletedProcess:
    """The real program (parse errors are formatted by the top-level group, as a user sees them)."""
    return subprocess.run([sys.executable, "-c", "from neqforce.cli import app; app(prog_name='neqforce')",
                           *args], capture_output=True, text=True, timeout=120)


def test_version_flag_and_command():
    assert runner.invoke(app, ["--version"]).stdout.strip() == __version__
    assert runner.invoke(app, ["version"]).stdout.strip() == __version__


@pytest.mark.parametrize("args, words", [
    (["simulate", "--lx", "x"], ["--lx", "integer", "neqforce simulate --help"]),
    (["simulate", "--nope"], ["No such option: --nope"]),
    (["forces"], ["Missing argument 'INPUT'", "neqforce forces --help"]),
    (["nosuchcommand"], ["No such command"]),
])
def test_parse_errors_are_one_line(args, words):
    result = run(*args)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_health_takes_server_and_the_old_address():
    for flag in ("--server", "--address"):
        result = runner.invoke(app, ["health", flag, "127.0.0.1:1", "--timeout", "0.5"])
        assert result.exit_code == 1
        assert "127.0.0.1:1" in result.stderr and result.stderr.startswith("error: ")


def test_help_texts():
    texts = {name: runner.invoke(app, [name, "--help"], prog_name="neqforce").stdout
             for name in ("simulate", "forces", "health")}
    for name, text in texts.items():
        assert "SPEC" not in text, name
        assert not re.search(r"<list\[|\{[A-Z_]+\}|<\w+>", text.split("Options:")[1]), (name, text)
    assert "Usage: neqforce forces [OPTIONS] INPUT" in texts["forces"]
    assert "docs/physics.md" in texts["simulate"]
    options = texts["forces"].split("Options:")[1]
    for flag in ("--temperature", "--t ", "--g ", "--k ", "--kappa", "--gamma-lead", "--gamma-bath"):
        line = next(line for line in options.splitlines() if flag in line)
        assert len(line.split(maxsplit=2)) == 3, f"{flag} has no help: {line!r}"
