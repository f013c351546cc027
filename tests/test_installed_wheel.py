"""The wheel a user installs: every module imports from it with only the declared dependencies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        reqs += extra
    import re

    return {re.split(r"[\s<>=!~;\[@(]", r.strip(), maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


@pytest.mark.timeout(300)
def test_every_module_imports_from_the_installed_wheel(tmp_path: Path) -> None:
    """Build the wheel, unpack it alone on sys.path and import every module it holds.

    Modules that need the optional ``train`` extra may fail only on torch itself.
    """
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(ROOT)], check=True, capture_output=True, text=True)
    (wheel,) = wheels.glob("neqforce-*.whl")
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(site)
        modules = sorted(n[:-3].replace("/", ".").removesuffix(".__init__") for n in zf.namelist()
                         if n.endswith(".py") and n.startswith("neqforce/"))
    assert "neqforce.physics.negf" in modules and "neqforce.client.cli" in modules
    script = textwrap.dedent(f"""
        import importlib, json, sys
        sys.path.insert(0, {str(site)!r})
        failed = {{}}
        for name in {modules!r}:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                failed[name] = repr(exc)
        import neqforce
        assert neqforce.__file__.startswith({str(site)!r}), neqforce.__file__
        print(json.dumps({{"failed": failed}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                         timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    import json

    result = json.loads(out.stdout.strip().splitlines()[-1])
    # torch is an optional extra: modules that need it may fail only on torch itself
    bad = {m: e for m, e in result["failed"].items() if "torch" not in e and "onnxscript" not in e}
    assert not bad, bad


def test_no_undeclared_direct_imports() -> None:
    """Every third-party module a project file imports is provided by a declared distribution."""
    import ast
    import importlib.metadata as md

    declared = _declared_distributions()
    mod2dist = md.packages_distributions()
    local = {"neqforce", "physics", "server", "client", "training", "tests", "conftest", "bench"}
    missing: dict[str, set[str]] = {}
    for f in ROOT.rglob("*.py"):
        if any(p.startswith(".") or p in ("build", "dist", "venv") for p in f.relative_to(ROOT).parts):
            continue
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in local or top.startswith("_"):
                    continue
                dists = {d.lower().replace("_", "-") for d in mod2dist.get(top, [top])}
                if not dists & declared:
                    missing.setdefault(top, set()).add(str(f.relative_to(ROOT)))
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"
