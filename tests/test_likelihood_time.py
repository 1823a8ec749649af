"""The PF-ODE likelihood in the angle phi = arctan(sigma / alpha) (log_likelihood's default) against
the solve in t, against closed forms, and its counted NFE and option checks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdegen
from sdegen import GaussianScore
from sdegen.score_density import ScoreSDEDensity
from sdegen.sde import EDMSDE, VESDE, VPSDE, SubVPSDE
from sdegen.solvers.likelihood import SDE_NEEDS, _angles

from .conftest import SDE_FACTORIES, mixture
from .test_likelihood import pushed_forward_prior_log_prob

KINDS = {
    "vp": lambda: VPSDE(),
    "subvp": lambda: SubVPSDE(),
    "ve": lambda: VESDE(sigma_max=30.0),
    "edm": lambda: EDMSDE(),
}


class Counted:
    """An exact model that counts its own calls (independently of sdegen's CountingModel)."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, 0

    def score(self, x, t):
        self.calls += 1
        return self.model.score(x, t)

    def denoise(self, x, t):
        self.calls += 1
        return self.model.denoise(x, t)

    def eps(self, x, t):
        self.calls += 1
        return self.model.eps(x, t)


@settings(max_examples=4, deadline=None)
@given(kind=st.sampled_from(sorted(KINDS)), dim=st.integers(1, 2), seed=st.integers(0, 10_000))
def test_angle_solve_matches_the_closed_form_and_the_t_solve(kind, dim, seed):
    # Gaussian data: the exact flow is affine, its density closed-form (test_likelihood).
    sde = KINDS[kind]()
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g)
    model = GaussianScore(torch.randn(dim, generator=g), A @ A.T / dim + 0.2 * torch.eye(dim), sde)
    x = model.sample(4, generator=g, dtype=torch.float64)
    truth = pushed_forward_prior_log_prob(model, sde, x)
    angle = sdegen.log_likelihood(model, sde, x, rtol=1e-7, atol=1e-7)
    in_t = sdegen.log_likelihood(model, sde, x, rtol=1e-7, atol=1e-7, time="t")
    assert float((angle.log_prob - truth).abs().max()) < 1e-5 * dim
    assert float((angle.log_prob - in_t.log_prob).abs().max()) < 1e-5 * dim
    # the endpoint is x(T) in the SDE's own variables, whatever the integration variable
    assert float((angle.z - in_t.z).abs().max()) < 1e-5
    torch.testing.assert_close(angle.log_prob, angle.prior_log_prob + angle.delta_log_prob)


# The discrete-beta SDEs have a kinked schedule: in t dopri5 needs ~5000 evaluations to cross
# it (the angle ODE does not see the schedule, only the marginals), so they are checked against
# the truth alone, and the slow t solve is left out of the fast suite.
SMOOTH = ["vp_linear", "subvp", "ve", "edm", "rectified_flow", "linear_user"]


@pytest.mark.parametrize("name", sorted(SDE_FACTORIES))
def test_angle_solve_of_a_mixture_is_the_true_density_for_every_sde(name):
    # every SDE of the library and the tests' own (discrete betas, rectified flow, a user's SDE):
    # the exact-score flow carries p_t_min onto p_T, so log p_T(z) + delta is the truth
    sde = SDE_FACTORIES[name]()
    model = mixture(sde, dim=2)
    x = model.sample(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    angle = sdegen.log_likelihood(model, sde, x, rtol=1e-6, atol=1e-6)
    truth = model.log_prob(x, torch.full((4,), sde.t_min))
    via_p_T = model.log_prob(angle.z, torch.full((4,), sde.T)) + angle.delta_log_prob
    assert float((via_p_T - truth).abs().max()) < 2e-3, name
    if name in SMOOTH:
        in_t = sdegen.log_likelihood(model, sde, x, rtol=1e-6, atol=1e-6, time="t")
        assert float((angle.log_prob - in_t.log_prob).abs().max()) < 1e-3, name


def test_hutchinson_with_rademacher_probes_is_the_same_integral_in_either_variable():
    # e^T e = D for a Rademacher probe, so the estimate of the linear part is exact in both
    # variables and the two solves integrate the same quantity (module docstring).
    sde = VPSDE()
    model = mixture(sde, dim=3)
    x = model.sample(3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    kw = dict(trace="hutchinson", probes=2, rtol=1e-8, atol=1e-8)
    angle = sdegen.log_likelihood(model, sde, x, generator=torch.Generator().manual_seed(5), **kw)
    in_t = sdegen.log_likelihood(
        model, sde, x, generator=torch.Generator().manual_seed(5), time="t", **kw
    )
    assert float((angle.log_prob - in_t.log_prob).abs().max()) < 1e-5
    assert angle.nfe_backward == 2 * angle.nfe


def test_nfe_is_counted_and_the_angle_needs_fewer_on_edm():
    sde = EDMSDE()
    counted = Counted(mixture(sde, dim=2))
    x = counted.model.sample(16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    angle = sdegen.log_likelihood(counted, sde, x, rtol=1e-5, atol=1e-5)
    assert angle.nfe == counted.calls > 0 and angle.nfe_backward == 2 * angle.nfe
    counted.calls = 0
    in_t = sdegen.log_likelihood(counted, sde, x, rtol=1e-5, atol=1e-5, time="t")
    assert in_t.nfe == counted.calls
    # the point of the angle (benchmarks/likelihood_speed.py measures it at equal error)
    assert angle.nfe < in_t.nfe
    assert float((angle.log_prob - in_t.log_prob).abs().max()) < 1e-3


def test_angles_are_the_sdes_noise_to_signal_angles():
    for make in KINDS.values():
        sde = make()
        (phi0, phiT), (r0, rT) = _angles(sde)
        ends = torch.tensor([sde.t_min, sde.T])
        a, s = sde.alpha(ends), sde.sigma(ends)
        assert math.tan(phi0) == pytest.approx(float(s[0] / a[0]), rel=1e-12)
        assert math.tan(phiT) == pytest.approx(float(s[1] / a[1]), rel=1e-12)
        assert (r0, rT) == pytest.approx((float(a[0].hypot(s[0])), float(a[1].hypot(s[1]))))
        assert 0 < phi0 < phiT < math.pi / 2
        # t(phi) through the half log-SNR lands back on the ends
        lam = -torch.log(torch.tan(torch.tensor([phi0, phiT])))
        torch.testing.assert_close(sde.t_of_half_log_snr(lam), ends, rtol=1e-6, atol=1e-9)


def test_score_sde_density_uses_the_angle_by_default_and_passes_time_on():
    sde = VPSDE()
    model = mixture(sde, dim=2)
    density = ScoreSDEDensity(model, sde, (2,))
    x = model.sample(3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    default = density.log_prob_with_stats(x)
    direct = sdegen.log_likelihood(model, sde, x)
    assert default.nfe == direct.nfe and torch.equal(default.log_prob, direct.log_prob)
    old = density.log_prob_with_stats(x, time="t")
    assert torch.equal(old.log_prob, sdegen.log_likelihood(model, sde, x, time="t").log_prob)


@pytest.mark.parametrize("time", ["lambda", "T", "", None, 1])
def test_an_unknown_time_is_refused(time):
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"unknown time .*expected one of: angle, t"):
        sdegen.log_likelihood(mixture(sde), sde, torch.zeros(2, 2), time=time)


def test_an_sde_without_the_half_log_snr_inverse_needs_time_t():
    # an SDE object with only what the solve in t uses: refused in the angle, solved in t
    base = VPSDE()

    class Minimal:
        pass

    sde = Minimal()
    for name in SDE_NEEDS:
        setattr(sde, name, getattr(base, name))
    model = mixture(base)
    x = torch.zeros(2, 2)
    with pytest.raises(TypeError, match="t_of_half_log_snr"):
        sdegen.log_likelihood(model, sde, x)
    res = sdegen.log_likelihood(model, sde, x, time="t", rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(
        res.log_prob,
        sdegen.log_likelihood(model, base, x, rtol=1e-6, atol=1e-6).log_prob,
        rtol=0,
        atol=1e-4,
    )
