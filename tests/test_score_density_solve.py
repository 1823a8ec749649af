"""ScoreSDEDensity makes one PF-ODE solve for log_prob, rsample and sample_and_log_prob
(sdegen.solvers.likelihood: `log_likelihood` forwards, `pf_ode_sample` backwards): on Gaussian
data, where the flow is affine and the model's density closed-form, all three agree with the
closed form and with each other; the method names are log_likelihood's, checked by one function."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdegen
from sdegen import GaussianScore
from sdegen.score_density import ScoreSDEDensity
from sdegen.sde import VPSDE
from sdegen.solvers.likelihood import pf_ode_sample

from .test_likelihood import Shifted, pushed_forward_prior_log_prob
from .test_likelihood_time import KINDS, Counted


def _gaussian(sde, dim: int, seed: int) -> GaussianScore:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g)
    return GaussianScore(torch.randn(dim, generator=g), A @ A.T / dim + 0.2 * torch.eye(dim), sde)


def _flow_from_prior(model: GaussianScore, sde, z: torch.Tensor) -> torch.Tensor:
    """The exact PF-ODE flow from T back to t_min of Gaussian data (the inverse of the affine
    map in test_likelihood.pushed_forward_prior_log_prob)."""
    t0, t1 = torch.tensor([sde.t_min]), torch.tensor([sde.T])
    a0, s0, a1, s1 = sde.alpha(t0), sde.sigma(t0), sde.alpha(t1), sde.sigma(t1)
    lam, U, mu = model.evals[0], model.evecs[0], model.means[0]
    v0, v1 = a0**2 * lam + s0**2, a1**2 * lam + s1**2
    return a0 * mu + (((z - a1 * mu) @ U) * torch.sqrt(v0 / v1)) @ U.T


@settings(max_examples=4, deadline=None)
@given(
    kind=st.sampled_from(sorted(KINDS)),
    dim=st.integers(1, 3),
    seed=st.integers(0, 10_000),
    method=st.sampled_from(["dopri5", "tsit5"]),
)
def test_sample_and_log_prob_log_prob_and_rsample_are_one_solve(kind, dim, seed, method):
    sde = KINDS[kind]()
    model = _gaussian(sde, dim, seed)
    dens = ScoreSDEDensity(model, sde, (dim,), rtol=1e-8, atol=1e-8, method=method)
    x, logp = dens.sample_and_log_prob(5, generator=torch.Generator().manual_seed(seed))
    z = sde.prior_sample(
        (5, dim), generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    # the samples are the exact flow of the prior draw, their log-density the closed form
    torch.testing.assert_close(x, _flow_from_prior(model, sde, z), rtol=0, atol=1e-6)
    truth = pushed_forward_prior_log_prob(model, sde, x)
    torch.testing.assert_close(logp, truth, rtol=0, atol=1e-6 * dim)
    # log_prob of the same points, forwards through the same pair: the same number, tightly
    torch.testing.assert_close(logp, dens.log_prob(x), rtol=0, atol=1e-6 * dim)
    # rsample: the same draw carried by the same solve, without the divergence
    xr = dens.rsample(5, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(xr, x, rtol=0, atol=1e-6)


@pytest.mark.parametrize("time", ["angle", "t"])
def test_every_call_uses_the_own_pair_by_default(time):
    # sdegen's dopri5 is first-same-as-last with a first step given in the angle: 1 + 6 k calls
    # (accepted and rejected steps); in t, Hairer's starting-step probe adds one. torchdiffeq's
    # dopri5, which rsample and sample_and_log_prob used before, also probes in the angle.
    sde = VPSDE()
    rec = Counted(_gaussian(sde, 2, 0))
    dens = ScoreSDEDensity(rec, sde, (2,), rtol=1e-5, atol=1e-5, time=time)
    extra = 1 if time == "t" else 0
    for call in (
        lambda: dens.rsample(3, generator=torch.Generator().manual_seed(0)),
        lambda: dens.sample_and_log_prob(3, generator=torch.Generator().manual_seed(0)),
        lambda: dens.log_prob(torch.zeros(3, 2)),
    ):
        rec.calls = 0
        call()
        assert rec.calls > 6 and (rec.calls - 1 - extra) % 6 == 0, rec.calls


def test_a_torchdiffeq_method_reaches_torchdiffeq_in_every_call():
    # torchdiffeq's Euler over the one interval [phi_T, phi_0] is one step: one evaluation, and
    # the sample is u_T + (phi_0 - phi_T) F(u_T, phi_T) scaled back, F = -tan(phi)(u + r score)
    sde = VPSDE()
    rec = Counted(_gaussian(sde, 2, 1))
    dens = ScoreSDEDensity(rec, sde, (2,), method="torchdiffeq:euler")
    x = dens.rsample(4, generator=torch.Generator().manual_seed(2))
    assert rec.calls == 1
    z = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ends = torch.tensor([sde.t_min, sde.T])
    a, s = sde.alpha(ends), sde.sigma(ends)
    (phi0, phiT), (r0, rT) = torch.atan2(s, a), torch.hypot(a, s)
    tT = torch.full((4,), sde.T)
    score = rec.model.score(z, tT)
    expected = r0 * (z / rT + (phi0 - phiT) * (-torch.tan(phiT)) * (z / rT + rT * score))
    torch.testing.assert_close(x, expected, rtol=1e-10, atol=1e-10)
    for call in (
        lambda: dens.sample_and_log_prob(4, generator=torch.Generator().manual_seed(2)),
        lambda: dens.log_prob(x),
    ):
        rec.calls = 0
        call()
        assert rec.calls == 1
    xs, _ = dens.sample_and_log_prob(4, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(xs, x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["rk45", "nope", "torchdiffeq:tsit5", "torchdiffeq:", 3])
def test_bad_method_names_give_log_likelihoods_error(method):
    sde = VPSDE()
    model = _gaussian(sde, 2, 0)
    with pytest.raises(ValueError) as ours:
        ScoreSDEDensity(model, sde, (2,), method=method)
    with pytest.raises(ValueError) as theirs:
        sdegen.log_likelihood(model, sde, torch.zeros(1, 2), method=method)
    assert str(ours.value) == str(theirs.value)
    assert "unknown method" in str(ours.value) and "dopri5" in str(ours.value)


def test_bad_time_and_sde_are_refused_by_the_density():
    sde = VPSDE()
    model = _gaussian(sde, 2, 0)
    with pytest.raises(ValueError, match="unknown time 'lambda'; expected one of: angle, t"):
        ScoreSDEDensity(model, sde, (2,), time="lambda")


def test_rsample_is_differentiable_through_the_own_pair():
    # N(mean, I) data under VP: the flow from T is x = a0 mean + sqrt(v0 / v1) (z - a1 mean),
    # so dx/dmean = a0 - a1 sqrt(v0 / v1) per coordinate (v = alpha^2 + sigma^2 = 1 here)
    sde = VPSDE()
    mean = torch.tensor([0.3, -0.2], requires_grad=True)
    dens = ScoreSDEDensity(Shifted(sde, mean), sde, (2,), rtol=1e-8, atol=1e-8)
    x = dens.rsample(3, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad(x.sum(), mean)
    ends = torch.tensor([sde.t_min, sde.T])
    a0, a1 = sde.alpha(ends).tolist()
    v0, v1 = (sde.alpha(ends) ** 2 + sde.sigma(ends) ** 2).tolist()
    expected = torch.full((2,), 3 * (a0 - a1 * math.sqrt(v0 / v1)))
    torch.testing.assert_close(grad, expected, rtol=1e-6, atol=1e-8)


def test_pf_ode_sample_checks_z_and_carries_the_state_alone_without_log_prob():
    sde = VPSDE()
    model = _gaussian(sde, 2, 3)
    z = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    x, res = pf_ode_sample(model, sde, z, log_prob=False, rtol=1e-8, atol=1e-8)
    assert res is None
    torch.testing.assert_close(x, _flow_from_prior(model, sde, z), rtol=0, atol=1e-6)
    x2, res2 = pf_ode_sample(model, sde, z, trace="exact", rtol=1e-8, atol=1e-8)
    assert res2 is not None and torch.equal(res2.z, z) and res2.nfe_backward == 2 * res2.nfe
    torch.testing.assert_close(x2, x, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="z holds 1 non-finite"):
        pf_ode_sample(model, sde, torch.tensor([[0.0, math.nan]]))
    with pytest.raises(ValueError, match=r"z must have shape \(batch, \*event_shape\)"):
        pf_ode_sample(model, sde, torch.zeros(3))
    with pytest.raises(TypeError, match=r"z must be a floating-point tensor .*z.double\(\)"):
        pf_ode_sample(model, sde, torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match="unknown trace 'approx'"):
        pf_ode_sample(model, sde, z, log_prob=False, trace="approx")
