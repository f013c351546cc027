"""Validity domain of a model (metadata ``neqforce.domain``, or the provenance JSON of the shipped model):
AUTO routing, the reason of a request outside, explicit ONNX outside (answered, flagged), GetServerInfo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import grpc
import numpy as np
import pytest

from neqforce.models import compact_model_path
from neqforce.physics import HolsteinParams
from neqforce.server.backends.onnx import OnnxModel
from neqforce.server.errors import RequestError
from neqforce.server.routing import OUTSIDE_DOMAIN, flag_configuration, metallic_column_count, route
from neqforce.v1 import force_service_pb2 as pb

from .conftest import PARAMS, build_contract_model, onnx

BUNDLED = compact_model_path()  # the q-only 30x28, V = 3.0 model: routing on a lattice domain
needs_bundled = pytest.mark.skipif(not BUNDLED.is_file(), reason="no bundled model in this tree")


def _with_domain(src: Path, dst: Path, domain: str) -> Path:
    model = onnx.load(str(src))
    model.metadata_props.add(key="neqforce.domain", value=domain)
    onnx.save(model, str(dst))
    return dst


@pytest.fixture(scope="module")
def ranged(model_dir: Path) -> Path:
    """Contract model whose domain ranges over V in [2, 4] and lx in [6, 40] (ly unconstrained)."""
    base = build_contract_model(model_dir / "ranged_base.onnx", PARAMS.physical())
    return _with_domain(base, model_dir / "ranged.onnx",
                        json.dumps({"ranges": {"voltage": [2.0, 4.0], "lx": [6, 40]}}))


def _go(p: HolsteinParams, models: dict, backend: int = pb.BACKEND_AUTO, cap: int = 10_000):
    return route(p, backend, "", models, 1e-6, cap)


@needs_bundled
def test_bundled_model_domain_comes_from_its_provenance(tmp_path) -> None:
    """compact.onnx has no domain in its bytes; compact.json beside it (same sha256) supplies it."""
    model = OnnxModel.load(BUNDLED, "compact", threads=1)
    assert model.domain == {"lx": (30.0, 30.0), "ly": (28.0, 28.0)}
    copy = Path(shutil.copy(BUNDLED, tmp_path / "compact.onnx"))
    assert OnnxModel.load(copy, "c", threads=1).domain == {}  # no provenance beside it
    record = json.loads(BUNDLED.with_suffix(".json").read_text())
    (tmp_path / "compact.json").write_text(json.dumps({**record, "sha256": "0" * 64}))
    with pytest.raises(ValueError, match="sha256"):  # provenance of other bytes: never applied
        OnnxModel.load(copy, "c", threads=1)
    (tmp_path / "compact.json").write_text(json.dumps(record))
    assert OnnxModel.load(copy, "c", threads=1).domain == model.domain


@needs_bundled
def test_bundled_model_routing_outside_its_lattice() -> None:
    """AUTO: 30x28 at V = 3 is covered; other lattices go to NEGF and the reason names lx/ly."""
    models = {"compact": OnnxModel.load(BUNDLED, "compact", threads=1)}
    default = HolsteinParams()
    assert _go(default, models).model_name == "compact"
    small = _go(default.replace(lx=12, ly=10), models)
    assert small.backend == pb.BACKEND_NEGF
    assert "lx=12 outside [30, 30]" in small.reason and "ly=10 outside [28, 28]" in small.reason
    with pytest.raises(RequestError) as info:  # 80x28 over the NEGF cap: refused, and says why
        _go(default.replace(lx=80), models, cap=1000)
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "lx=80 outside [30, 30]" in info.value.message
    # explicit ONNX, physics matches, lattice outside: answered and flagged
    flagged = _go(default.replace(lx=80), models, backend=pb.BACKEND_ONNX)
    assert flagged.model_name == "compact" and flagged.reason.startswith(OUTSIDE_DOMAIN)
    assert "lx=80 outside [30, 30]" in flagged.reason
    assert not _go(default, models, backend=pb.BACKEND_ONNX).reason.startswith(OUTSIDE_DOMAIN)
    # explicit ONNX at another voltage: other physics, refused
    with pytest.raises(RequestError) as info:
        _go(default.replace(voltage=2.5), models, backend=pb.BACKEND_ONNX)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION and "voltage=2.5" in info.value.message


def _metal(w: int, seed: int = 0) -> np.ndarray:
    """Relaxed 30x28 CDW with its w left columns metallic (Q = -0.35 + noise): a wall at column w."""
    from neqforce.physics import cdw_ground_state

    params = HolsteinParams()
    q = cdw_ground_state(params).copy()
    q[:w] = -0.35 + 0.05 * np.random.default_rng(seed).standard_normal((w, params.ly))
    return q


def test_metallic_column_count_is_the_spec_xi() -> None:
    from neqforce.physics import bulk_cdw_amplitude, domain_wall_position

    params = HolsteinParams()
    q0 = bulk_cdw_amplitude(params)
    batch = np.stack([_metal(w, seed=w) for w in (0, 7, 27, 30)])
    expected = [round(domain_wall_position(q, params) * params.lx) for q in batch]
    assert list(metallic_column_count(batch, q0)) == expected == [0, 7, 27, 30]


@needs_bundled
def test_bundled_model_flags_touchdown() -> None:
    """Inside the 30x28 domain, more metallic columns than validated (27) is flagged OUTSIDE_DOMAIN;
    a batch is flagged by its worst lattice; a flagged lattice-size answer is not flagged twice."""
    models = {"compact": OnnxModel.load(BUNDLED, "compact", threads=1)}
    assert models["compact"].metallic_columns_max == 27
    p = HolsteinParams()
    chosen = _go(p, models)
    for w in (0, 10, 27):
        assert flag_configuration(chosen, _metal(w)[None], p) is chosen
    flagged = flag_configuration(chosen, np.stack([_metal(10), _metal(28)]), p)
    assert flagged.model_name == "compact" and f"{OUTSIDE_DOMAIN}: 28 metallic columns" in flagged.reason
    assert flagged.reason.startswith(chosen.reason)
    rng = np.random.default_rng(3)  # wherever the ordered columns are (the check looks at the tail first)
    bulk = _metal(0)
    for n_metal in (27, 28, 27, 29, 28):
        q = bulk.copy()
        cols = rng.choice(30, size=n_metal, replace=False)
        q[cols] = -0.35
        count = int(metallic_column_count(q[None], 2.3855)[0])
        assert (flag_configuration(chosen, q[None], p) is not chosen) == (count > 27), (n_metal, count)
    outside = _go(p.replace(lx=40), models, backend=pb.BACKEND_ONNX)
    assert flag_configuration(outside, np.zeros((1, 40, 28)), p.replace(lx=40)) is outside
    assert flag_configuration(_go(p.replace(lx=12, ly=10), models), np.zeros((1, 12, 10)), p).model is None


def test_ranged_parameter_replaces_the_fixed_value(ranged) -> None:
    """A ranged voltage covers [2, 4] (not only the V = 3 of neqforce.params); outside it, NEGF."""
    models = {"ranged": OnnxModel.load(ranged, "ranged", threads=1)}
    assert models["ranged"].domain == {"voltage": (2.0, 4.0), "lx": (6.0, 40.0)}
    for v in (2.0, 2.5, 4.0):
        assert _go(PARAMS.replace(voltage=v), models).model_name == "ranged"
    assert _go(PARAMS.replace(ly=100), models).model_name == "ranged"  # ly not ranged: free
    out = _go(PARAMS.replace(voltage=4.5), models)
    assert out.backend == pb.BACKEND_NEGF and "voltage=4.5 outside [2, 4]" in out.reason
    assert _go(PARAMS.replace(lx=41), models).backend == pb.BACKEND_NEGF
    assert _go(PARAMS.replace(temperature=0.2), models).backend == pb.BACKEND_NEGF  # fixed: must match
    flagged = _go(PARAMS.replace(voltage=6.0), models, backend=pb.BACKEND_ONNX)
    assert flagged.reason.startswith(OUTSIDE_DOMAIN) and "voltage=6 outside [2, 4]" in flagged.reason


@pytest.mark.parametrize("domain", ['{"ranges": {"lx": [40, 30]}}', '{"ranges": {"Voltage": [1, 2]}}',
                                    '{"lx": [1, 2]}', "not json", '{"ranges": [1, 2]}',
                                    '{"ranges": {}, "metallic_columns_max": -1}',
                                    '{"ranges": {}, "metallic_columns_max": 2.5}',
                                    '{"ranges": {}, "cdw_remnant": {"metallic_columns_over": 30}}',
                                    '{"ranges": {}, "cdw_remnant": {"metallic_columns_over": 30, '
                                    '"non_metallic_columns_min": -2}}',
                                    '{"ranges": {}, "cdw_remnant": {"metallic_columns_over": 3.5, '
                                    '"non_metallic_columns_min": 2}}',
                                    '{"ranges": {}, "cdw_remnant": {"metallic_columns_over": 3, '
                                    '"non_metallic_columns_min": 2, "remnant": 4}}',
                                    '{"ranges": {}, "cdw_remnant": [30, 22]}'])
def test_malformed_domain_is_refused_at_load(model_dir, tmp_path, domain) -> None:
    base = build_contract_model(tmp_path / "base.onnx", PARAMS.physical())
    path = _with_domain(base, tmp_path / "bad.onnx", domain)
    with pytest.raises(ValueError, match="neqforce.domain") as info:
        OnnxModel.load(path, "bad", threads=1)
    assert "\n" not in str(info.value)


def test_export_writes_the_training_lattice_as_domain(tmp_path) -> None:
    """training/export.py records the lattice of the training data as the domain of a new export."""
    pytest.importorskip("torch")
    from neqforce.server.backends.onnx import parse_domain
    from neqforce.training.export import model_domain, model_metadata
    from neqforce.training.model import ModelConfig

    ck = {"config": ModelConfig().to_dict(), "params": PARAMS.physical(), "lattice": [12, 10]}
    meta = model_metadata(ck)
    assert parse_domain(meta["neqforce.domain"], tmp_path) == {"lx": (12.0, 12.0), "ly": (10.0, 10.0)}
    assert json.loads(meta["neqforce.domain"]) == model_domain(ck)


@needs_bundled
def test_real_server_reports_domain_and_routes_by_it() -> None:
    """GetServerInfo lists the bundled model's domain; a 12x10 request goes to NEGF, explicit ONNX on
    a 40x28 lattice is answered with the OUTSIDE_DOMAIN flag."""
    from neqforce.client import ForceClient
    from neqforce.server.app import ServerConfig, start_server

    srv = start_server(ServerConfig(host="127.0.0.1", port=0, models=[BUNDLED], negf_max_sites=200,
                                    max_concurrency=2, grace_s=2.0))
    try:
        with ForceClient(srv.address, timeout=120.0, retries=0) as client:
            info = client.server_info()
            assert info["models"][0]["domain"] == {"lx": [30.0, 30.0], "ly": [28.0, 28.0]}
            from neqforce.client.jobs import format_server_info

            assert "domain      lx in [30, 30], ly in [28, 28]" in format_server_info(info)  # neqforce info
            q = np.random.default_rng(0).normal(0.0, 1.5, size=(12, 10))
            r = client.compute_forces(q, HolsteinParams(lx=12, ly=10))
            assert r.backend == "negf" and "lx=12 outside [30, 30]" in r.reason
            q = np.random.default_rng(1).normal(0.0, 1.5, size=(40, 28))
            r = client.compute_forces(q, HolsteinParams(lx=40), backend="onnx")
            assert r.backend == "onnx" and r.reason.startswith(OUTSIDE_DOMAIN)
            assert np.all(np.isfinite(r.force))
            r = client.compute_forces(_metal(10), HolsteinParams())
            assert r.backend == "onnx" and OUTSIDE_DOMAIN not in r.reason
            r = client.compute_forces(_metal(30), HolsteinParams())  # the whole device metallic
            assert r.backend == "onnx" and f"{OUTSIDE_DOMAIN}: 30 metallic columns" in r.reason
    finally:
        srv.stop(grace=1.0)


def test_simulate_says_when_answers_leave_the_domain(tmp_path) -> None:
    """`neqforce simulate` prints the first reason, and warns once when a later answer carries the
    OUTSIDE_DOMAIN flag (here: a model validated without metallic columns; its CDW melts in the run)."""
    from typer.testing import CliRunner

    from neqforce.cli import app
    from neqforce.physics import bulk_cdw_amplitude, staggered_sign

    base = build_contract_model(tmp_path / "base.onnx", PARAMS.physical())
    model = _with_domain(base, tmp_path / "cdw_only.onnx",
                         json.dumps({"ranges": {"lx": [8, 8], "ly": [6, 6]}, "metallic_columns_max": 0}))
    init = tmp_path / "cdw.npy"
    np.save(init, bulk_cdw_amplitude(PARAMS) * staggered_sign(PARAMS.lx, PARAMS.ly))
    result = CliRunner().invoke(app, [str(a) for a in (
        "simulate", "--model", model, "--init", init, "--lx", 8, "--ly", 6, "--steps", 60, "--out",
        tmp_path / "run", "--no-progress", "--no-plots")])
    assert result.exit_code == 0, result.output
    first = next(line for line in result.output.splitlines() if line.startswith("backend:"))
    assert "onnx" in first and OUTSIDE_DOMAIN not in first
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: from step")]
    assert len(warnings) == 1 and f"{OUTSIDE_DOMAIN}: " in warnings[0] and "metallic columns" in warnings[0]


# --- a narrowing of the declared domain recorded in the provenance card (domain_restriction) -------------

def _restricted_copy(tmp_path: Path, restriction: dict, sha: str | None = None) -> Path:
    """compact.onnx copied with its card, the card carrying ``restriction`` (for bytes of sha ``sha``)."""
    copy = Path(shutil.copy(BUNDLED, tmp_path / "compact.onnx"))
    record = json.loads(BUNDLED.with_suffix(".json").read_text())
    record["domain_restriction"] = restriction
    if sha is not None:
        record["sha256"] = sha
    (tmp_path / "compact.json").write_text(json.dumps(record))
    return copy


@needs_bundled
def test_card_restriction_narrows_the_metallic_bound(tmp_path) -> None:
    """A card's domain_restriction lowers metallic_columns_max (27 -> 20) and the flag follows it; a
    restriction above the declared bound keeps the declared one (a restriction never widens)."""
    model = OnnxModel.load(_restricted_copy(tmp_path, {"metallic_columns_max": 20}), "c", threads=1)
    assert model.metallic_columns_max == 20 and model.domain == {"lx": (30.0, 30.0), "ly": (28.0, 28.0)}
    p = HolsteinParams()
    chosen = _go(p, {"c": model})
    assert flag_configuration(chosen, _metal(20)[None], p) is chosen
    flagged = flag_configuration(chosen, _metal(21)[None], p)
    assert flagged.flagged and f"{OUTSIDE_DOMAIN}: 21 metallic columns, validated up to 20" in flagged.reason
    wider = OnnxModel.load(_restricted_copy(tmp_path, {"metallic_columns_max": 40}), "c", threads=1)
    assert wider.metallic_columns_max == 27


def test_card_restriction_narrows_ranges_and_refuses_to_widen(ranged) -> None:
    from neqforce.server.backends.onnx import restrict_domain

    text = json.dumps({"ranges": {"voltage": [2.0, 4.0], "lx": [6, 40]}, "metallic_columns_max": 30})
    out = json.loads(restrict_domain(text, {"ranges": {"voltage": [2.5, 5.0]}, "metallic_columns_max": 12},
                                     ranged))
    assert out["ranges"] == {"voltage": [2.5, 4.0], "lx": [6, 40]} and out["metallic_columns_max"] == 12
    assert restrict_domain(text, None, ranged) == text
    for bad, match in [({"ranges": {"g": [1.0, 2.0]}}, "not a ranged parameter"),  # g is fixed: no widening
                       ({"ranges": {"voltage": [4.5, 5.0]}}, "leaves no values"),
                       ({"ranges": {"voltage": 3.0}}, "must be"),
                       ({"metallic_columns_max": -1}, "integer >= 0"),
                       ({"metallic_columns_max": 2.5}, "integer >= 0"),
                       ({"cdw_remnant": {"metallic_columns_over": 1}}, "non_metallic_columns_min"),
                       ({"cdw_remnant": {"metallic_columns_over": 1, "non_metallic_columns_min": True}},
                        "integer >= 0")]:
        with pytest.raises(ValueError, match=match):
            restrict_domain(text, bad, ranged)


@needs_bundled
def test_card_remnant_rule_flags_a_long_domain_next_to_a_short_cdw(tmp_path) -> None:
    """A card's cdw_remnant rule (more than 10 metallic columns only while >= 12 stay non-metallic) flags a
    30x28 lattice from 19 metallic columns on (30 - 19 = 11 < 12), not at 18, and says which rule; a
    lattice too short to break it (lx = 30 with over = 29) is never flagged."""
    rule = {"metallic_columns_over": 10, "non_metallic_columns_min": 12}
    model = OnnxModel.load(_restricted_copy(tmp_path, {"cdw_remnant": rule}), "c", threads=1)
    assert model.cdw_remnant == (10, 12) and model.metallic_columns_max == 27
    p = HolsteinParams()
    chosen = _go(p, {"c": model})
    for w in (0, 10, 11, 18):
        assert flag_configuration(chosen, _metal(w)[None], p) is chosen, w
    for w in (19, 25):
        flagged = flag_configuration(chosen, np.stack([_metal(5), _metal(w)]), p)
        assert flagged.flagged and f"{OUTSIDE_DOMAIN}: {w} metallic columns, only {30 - w} non-metallic" \
            in flagged.reason and "at least 12 columns of CDW remain" in flagged.reason
        assert "validated up to 27" not in flagged.reason
    both = flag_configuration(chosen, _metal(28)[None], p)  # beyond both rules: both named
    assert "validated up to 27" in both.reason and "only 2 non-metallic" in both.reason
    rng = np.random.default_rng(5)  # metallic columns anywhere (the check looks at the tail first)
    for n_metal in (17, 18, 19, 20, 18):
        q = _metal(0)
        q[rng.choice(30, size=n_metal, replace=False)] = -0.35
        count = int(metallic_column_count(q[None], 2.3855)[0])
        assert (flag_configuration(chosen, q[None], p) is not chosen) == (count >= 19), (n_metal, count)
    short = OnnxModel.load(_restricted_copy(tmp_path, {"metallic_columns_max": 30, "cdw_remnant": {
        "metallic_columns_over": 29, "non_metallic_columns_min": 2}}), "c", threads=1)
    chosen = _go(p, {"c": short})
    assert flag_configuration(chosen, _metal(27)[None], p) is chosen  # 27 <= 29 and <= declared 27


def test_card_remnant_rule_only_narrows(ranged) -> None:
    """Of a declared and a restricting remnant rule the stricter parts win: the smaller metallic length
    and the longer remnant; a restriction adds a rule where none was declared."""
    from neqforce.server.backends.onnx import parse_remnant, restrict_domain

    declared = json.dumps({"ranges": {"lx": [6, 40]},
                           "cdw_remnant": {"metallic_columns_over": 20, "non_metallic_columns_min": 10}})
    rule = {"metallic_columns_over": 25, "non_metallic_columns_min": 15, "basis": "why"}
    out = restrict_domain(declared, {"cdw_remnant": rule}, ranged)
    assert parse_remnant(out, ranged) == (20, 15)
    added = restrict_domain(json.dumps({"ranges": {}}), {"cdw_remnant": {
        "metallic_columns_over": 3, "non_metallic_columns_min": 4}}, ranged)
    assert parse_remnant(added, ranged) == (3, 4) and parse_remnant(declared, ranged) == (20, 10)
    assert parse_remnant(json.dumps({"ranges": {}}), ranged) is None


@needs_bundled
def test_card_restriction_of_other_bytes_is_not_applied(tmp_path) -> None:
    """A restriction in a card naming other bytes is never applied (the load refuses the card's hash)."""
    copy = _restricted_copy(tmp_path, {"metallic_columns_max": 5}, sha="0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        OnnxModel.load(copy, "c", threads=1)


def test_shipped_voltage_model_is_restricted_to_its_measured_domain() -> None:
    """voltage.onnx declares 79 metallic columns (its training frames); its card narrows that to 55, the
    longest metallic domain of the 80x28 sets measured within target for it; GetServerInfo and `neqforce
    info` show the bound, and an 80x28 request with 65 metallic columns comes back flagged. Its card's
    CDW-remnant rule (measured at 60x28) flags a 60x28 lattice with more than 38 metallic columns."""
    from neqforce.client import ForceClient
    from neqforce.client.jobs import format_server_info
    from neqforce.models import bundled_model_path
    from neqforce.physics import cdw_ground_state
    from neqforce.server.app import ServerConfig, start_server

    path = bundled_model_path()
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["domain"]["metallic_columns_max"] == 79
    assert card["domain_restriction"]["metallic_columns_max"] == 55
    srv = start_server(ServerConfig(host="127.0.0.1", port=0, models=[path], max_concurrency=2, grace_s=2.0))
    try:
        with ForceClient(srv.address, timeout=120.0, retries=0) as client:
            info = client.server_info()
            assert info["models"][0]["metallic_columns_max"] == 55
            assert "validated up to 55 metallic columns" in format_server_info(info)
            params = HolsteinParams(lx=80, voltage=3.0)
            for w, flagged in ((50, False), (55, False), (56, True), (65, True)):
                q = cdw_ground_state(params).copy()
                q[:w] = -0.35 + 0.05 * np.random.default_rng(w).standard_normal((w, params.ly))
                r = client.compute_forces(q, params, backend="onnx")
                assert r.backend == "onnx" and np.all(np.isfinite(r.force))
                expected = f"{OUTSIDE_DOMAIN}: {w} metallic columns, validated up to 55"
                assert (expected in r.reason) == flagged, (w, r.reason)
            # the CDW-remnant rule: on 60x28 a domain of more than 38 columns leaves fewer than 22 of CDW
            assert info["models"][0]["cdw_remnant"] == {"metallic_columns_over": 30,
                                                        "non_metallic_columns_min": 22}
            assert "validated only while >= 22 columns of CDW remain" in format_server_info(info)
            params = HolsteinParams(lx=60, voltage=3.0)
            for w, flagged in ((30, False), (38, False), (39, True), (48, True)):
                q = cdw_ground_state(params).copy()
                q[:w] = -0.35 + 0.05 * np.random.default_rng(w).standard_normal((w, params.ly))
                r = client.compute_forces(q, params)  # AUTO: the flag, not a fallback
                assert r.backend == "onnx" and r.flagged == flagged, (w, r.reason)
                expected = f"{OUTSIDE_DOMAIN}: {w} metallic columns, only {60 - w} non-metallic"
                assert (expected in r.reason) == flagged, (w, r.reason)
    finally:
        srv.stop(grace=1.0)
