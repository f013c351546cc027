"""The exact NEGF solver near an exceptional point of H_eff, against brute-force quadrature.

A 3×1 chain with uniform Q has H_eff = -gQ - t·(chain) - i diag(Γ_lead, Γ_bath, Γ_lead). Its mirror-even
block [[-iΓ_lead, -√2 t], [-√2 t, -iΓ_bath]] has an exceptional point (two eigenvalues and eigenvectors
merge) at t_EP = (Γ_lead - Γ_bath)/(2√2). Approaching it, the eigenvalue condition number grows as
~1/sqrt(t/t_EP - 1) and the eigenvector route loses accuracy as u·cond², while the Schur route stays exact.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from neqforce.physics import HolsteinParams, electron_density
from neqforce.physics.negf import EIG_COND_MAX

TOL = 1e-8


def _near_ep_chain(rel: float, ly: int = 1) -> tuple[np.ndarray, HolsteinParams]:
    """3×ly lattice at t = t_EP (1 + rel), V = 0.7, Q = 0.3 on every site (default g, Γ, T).

    With uniform Q every k_y block is the 3-chain shifted by -2t cos k_y: all reach the exceptional point
    at the same t, so ly > 1 checks that the error bound holds for many coalescing pairs at once.
    """
    base = HolsteinParams(lx=3, ly=ly)
    t_ep = (base.gamma_lead - base.gamma_bath) / (2.0 * math.sqrt(2.0))
    p = base.replace(t=t_ep * (1.0 + rel), voltage=0.7)
    return np.full(p.shape, 0.3), p


@pytest.mark.parametrize(("rel", "ly"), [(1e-12, 1), (1e-10, 1), (1e-8, 1), (1e-6, 1), (1e-3, 1),
                                         (1e-10, 10), (1e-6, 10)])
def test_auto_is_exact_approaching_the_exceptional_point(ref, rel, ly):
    q, p = _near_ep_chain(rel, ly)
    expected = ref.quad_density(q, p)
    n, info = electron_density(q, p, method="auto", return_info=True)
    assert np.max(np.abs(n - expected)) <= TOL, info
    assert np.max(np.abs(electron_density(q, p, method="schur") - expected)) <= TOL


@pytest.mark.parametrize("rel", [1e-12, 1e-10, 1e-8, 1e-6, 1e-3])
def test_eigen_route_answers_only_where_it_is_exact(ref, rel):
    """Wherever the eigenvector route accepts a configuration its error is within TOL; else it refuses."""
    q, p = _near_ep_chain(rel)
    _, info = electron_density(q, p, method="auto", return_info=True)
    assert np.isfinite(info.eig_cond)
    if info.eig_cond > EIG_COND_MAX:
        assert info.method == "schur"
        with pytest.raises(np.linalg.LinAlgError, match="ill-conditioned"):
            electron_density(q, p, method="eigen")
    else:
        assert info.method == "eigen"
        expected = ref.quad_density(q, p)
        assert np.max(np.abs(electron_density(q, p, method="eigen") - expected)) <= TOL


def test_the_chain_really_approaches_an_exceptional_point():
    """The construction is right: cond grows ~ (t/t_EP - 1)^(-1/2), past EIG_COND_MAX at rel = 1e-10."""
    conds = []
    for rel in (1e-6, 1e-8, 1e-10):
        q, p = _near_ep_chain(rel)
        conds.append(electron_density(q, p, method="auto", return_info=True)[1].eig_cond)
    assert conds[1] / conds[0] == pytest.approx(10.0, rel=0.05)
    assert conds[2] / conds[1] == pytest.approx(10.0, rel=0.05)
    assert conds[2] > EIG_COND_MAX
