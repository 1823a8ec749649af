"""method="auto", log_likelihood's default: Bogacki-Shampine 3(2) where the tolerance is loose,
Dormand-Prince 5(4) below; the bs3 pair itself against the closed form of Gaussian data."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdegen
from sdegen.score_density import ScoreSDEDensity
from sdegen.sde import EDMSDE, VESDE, VPSDE, SubVPSDE
from sdegen.solvers.likelihood import AUTO_LOOSE_TOL, auto_pair

from .conftest import mixture
from .test_likelihood import pushed_forward_prior_log_prob
from .test_score_density_solve import Counted, _gaussian

KINDS = {
    "vp": lambda: VPSDE(),
    "subvp": lambda: SubVPSDE(),
    "ve": lambda: VESDE(sigma_max=30.0),
    "edm": lambda: EDMSDE(),
}


def test_auto_picks_by_the_looser_of_the_two_tolerances():
    assert auto_pair(AUTO_LOOSE_TOL, AUTO_LOOSE_TOL) == "bs3"
    assert auto_pair(0.99 * AUTO_LOOSE_TOL, 0.99 * AUTO_LOOSE_TOL) == "dopri5"
    assert auto_pair(1e-1, 1e-6) == auto_pair(1e-6, 1e-1) == "bs3"
    assert auto_pair(1e-5, 1e-5) == "dopri5"


@pytest.mark.parametrize("tol, pair, per_step", [(3e-2, "bs3", 3), (1e-4, "dopri5", 6)])
def test_auto_is_that_pair_exactly(tol, pair, per_step):
    # the same numbers and the same count as naming the pair; one evaluation at the start and
    # the pair's stages less one per step (first same as last; the first step given in the angle)
    sde = VPSDE()
    rec = Counted(mixture(sde, dim=2))
    x = rec.model.sample(6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    auto = sdegen.log_likelihood(rec, sde, x, rtol=tol, atol=tol)
    assert (rec.calls - 1) % per_step == 0 and rec.calls == auto.nfe
    named = sdegen.log_likelihood(rec, sde, x, rtol=tol, atol=tol, method=pair)
    assert torch.equal(auto.log_prob, named.log_prob) and auto.nfe == named.nfe


def test_the_density_samples_and_scores_with_auto_by_default():
    sde = VPSDE()
    rec = Counted(_gaussian(sde, 2, 4))
    dens = ScoreSDEDensity(rec, sde, (2,), rtol=2e-2, atol=2e-2)
    x, logp = dens.sample_and_log_prob(5, generator=torch.Generator().manual_seed(0))
    assert (rec.calls - 1) % 3 == 0  # bs3
    truth = pushed_forward_prior_log_prob(rec.model, sde, x)
    assert float((logp - truth).abs().max()) < 10 * 2e-2


@settings(max_examples=4, deadline=None)
@given(kind=st.sampled_from(sorted(KINDS)), dim=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_bs3_matches_the_closed_form(kind, dim, seed):
    # Gaussian data: the flow is affine and log p closed-form; bs3 meets it at a tight
    # tolerance, and its error falls as the tolerance does
    sde = KINDS[kind]()
    model = _gaussian(sde, dim, seed)
    x = model.sample(3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    truth = pushed_forward_prior_log_prob(model, sde, x)
    errs = []
    for tol in (1e-3, 1e-6):
        res = sdegen.log_likelihood(model, sde, x, rtol=tol, atol=tol, method="bs3")
        errs.append(float((res.log_prob - truth).abs().max()))
    assert errs[1] < 1e-5 * dim
    assert errs[1] < errs[0]
