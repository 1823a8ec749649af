"""log_likelihood through sdegen's own Runge-Kutta pairs (the default method="dopri5", and
"tsit5") against closed forms and against torchdiffeq; the method names and options; the model
is never called outside [t_min, T]; the NFE and VJP counts."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdegen
from sdegen import GaussianScore
from sdegen.sde import EDMSDE, VESDE, VPSDE, SubVPSDE
from sdegen.solvers.likelihood import OWN_METHODS, TOL_SCALE, resolve_method

from .conftest import mixture
from .test_likelihood import Shifted, pushed_forward_prior_log_prob

KINDS = {
    "vp": lambda: VPSDE(),
    "subvp": lambda: SubVPSDE(),
    "ve": lambda: VESDE(sigma_max=30.0),
    "edm": lambda: EDMSDE(),
}


class Recording:
    """An exact model that counts its calls and records every time it is called at."""

    def __init__(self, model) -> None:
        self.model, self.calls, self.times = model, 0, []

    def score(self, x, t):
        self.calls += 1
        self.times.append(t.detach().clone())
        return self.model.score(x, t)

    def denoise(self, x, t):
        return self.model.denoise(x, t)

    def eps(self, x, t):
        return self.model.eps(x, t)


@settings(max_examples=3, deadline=None)
@given(
    kind=st.sampled_from(sorted(KINDS)),
    dim=st.integers(1, 2),
    seed=st.integers(0, 10_000),
    method=st.sampled_from(OWN_METHODS),
)
def test_own_pairs_match_the_closed_form_and_torchdiffeq(kind, dim, seed, method):
    # Gaussian data: the flow is affine and log p closed-form (test_likelihood); the same ODE
    # through torchdiffeq's dopri5 at a tight tolerance is an independent solve of it
    sde = KINDS[kind]()
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g)
    model = GaussianScore(torch.randn(dim, generator=g), A @ A.T / dim + 0.2 * torch.eye(dim), sde)
    x = model.sample(3, generator=g, dtype=torch.float64)
    truth = pushed_forward_prior_log_prob(model, sde, x)
    own = sdegen.log_likelihood(model, sde, x, rtol=1e-6, atol=1e-6, method=method)
    ref = sdegen.log_likelihood(model, sde, x, rtol=1e-8, atol=1e-8, method="torchdiffeq:dopri5")
    assert float((own.log_prob - truth).abs().max()) < 1e-5 * dim
    assert float((own.log_prob - ref.log_prob).abs().max()) < 1e-5 * dim
    assert float((own.z - ref.z).abs().max()) < 1e-5
    assert own.nfe_backward == own.nfe * dim


@pytest.mark.parametrize(
    "trace, time", [("exact", "angle"), ("hutchinson", "angle"), ("exact", "t")]
)
def test_the_default_agrees_with_torchdiffeq_on_a_mixture_with_either_trace(trace, time):
    # Hutchinson keeps its meaning: the same probes (same generator) give the same integral;
    # in t too (there the own pair starts with Hairer's step estimate)
    sde = VPSDE()
    model = mixture(sde, dim=2)
    x = model.sample(4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    kw = dict(trace=trace, probes=3, rtol=1e-6, atol=1e-6, time=time)
    own = sdegen.log_likelihood(model, sde, x, generator=torch.Generator().manual_seed(1), **kw)
    ref = sdegen.log_likelihood(
        model, sde, x, generator=torch.Generator().manual_seed(1), method="torchdiffeq:dopri5", **kw
    )
    assert float((own.log_prob - ref.log_prob).abs().max()) < 1e-4
    assert own.nfe_backward == (2 if trace == "exact" else 3) * own.nfe


@pytest.mark.parametrize("time", ["angle", "t"])
def test_the_model_is_called_inside_t_min_to_T_and_every_call_is_counted(time):
    sde = VPSDE()
    rec = Recording(mixture(sde, dim=2))
    x = rec.model.sample(8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    res = sdegen.log_likelihood(rec, sde, x, rtol=1e-5, atol=1e-5, time=time)
    ts = torch.cat(rec.times)
    assert res.nfe == rec.calls > 0
    # the ends themselves are reached (t(phi) from the half log-SNR: to rounding)
    assert float(ts.min()) >= sde.t_min * (1 - 1e-9) and float(ts.max()) <= sde.T * (1 + 1e-9)
    assert float(ts.min()) == pytest.approx(sde.t_min, rel=1e-6)
    assert float(ts.max()) == pytest.approx(sde.T, rel=1e-6)
    # one evaluation at the start, six per step (dopri5, first same as last), and for time="t"
    # Hairer's one probe for the first step
    assert (res.nfe - 1 - (time == "t")) % 6 == 0


@pytest.mark.parametrize("method", ["dopri5", "bs3"])
def test_tighter_tolerances_give_smaller_errors_and_tol_scale_holds_the_error_near_tol(method):
    # the tolerance keeps its meaning for every own pair: the log-density error at tol is below
    # tol-sized (TOL_SCALE), and falls as tol falls, at a rising cost
    sde = VPSDE()
    model = mixture(sde, dim=2)
    x = model.sample(8, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ref = sdegen.log_likelihood(model, sde, x, rtol=1e-8, atol=1e-8, method="torchdiffeq:dopri5")
    errs, nfes = [], []
    for tol in (1e-2, 1e-3, 1e-4):
        res = sdegen.log_likelihood(model, sde, x, rtol=tol, atol=tol, method=method)
        errs.append(float((res.log_prob - ref.log_prob).abs().mean()))
        nfes.append(res.nfe)
        assert errs[-1] < 10 * tol
    assert errs[0] > errs[1] > errs[2] and nfes[0] < nfes[1] < nfes[2]
    assert 0 < TOL_SCALE <= 1


def test_a_first_step_option_reaches_the_integrator():
    sde = VPSDE()
    model = mixture(sde, dim=2)
    x = model.sample(2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    default = sdegen.log_likelihood(model, sde, x, rtol=1e-5, atol=1e-5)
    tiny = sdegen.log_likelihood(model, sde, x, rtol=1e-5, atol=1e-5, options={"h0": 1e-3})
    assert tiny.nfe > default.nfe  # a tiny first step costs steps to grow out of
    assert float((tiny.log_prob - default.log_prob).abs().max()) < 1e-4


def _ill_conditioned_gaussian(sde, dim: int = 8, cond: float = 1e4):
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    lam = cond ** -torch.linspace(0, 1, dim, dtype=torch.float64)
    cov = q @ torch.diag(lam) @ q.T
    return GaussianScore(torch.zeros(dim, dtype=torch.float64), 0.5 * (cov + cov.T), sde), lam


@pytest.mark.parametrize("kind", ["vp", "edm"])
def test_the_data_end_step_reads_the_finest_scale_off_the_divergence(kind):
    # for Gaussian data div_u F(u, phi0) / tan(phi0) = sum_i (1 / var_i - 1), var_i the
    # eigenvalues of u's covariance (cos^2 lam_i + sin^2 at phi0): the closed form against the
    # exact divergence of the angle field, and the step is 1 / sqrt(1 + q) <= min_i sqrt(var_i)
    from sdegen.divergence import divergence
    from sdegen.solvers.likelihood import _angles, data_end_step

    sde = KINDS[kind]()
    model, lam = _ill_conditioned_gaussian(sde)
    (phi0, _), (r0, _) = _angles(sde)
    t0 = torch.full((4,), sde.t_min, dtype=torch.float64)
    u = model.sample(4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def field(v):  # (2) of solvers/likelihood.py at phi0, written out here
        return -math.tan(phi0) * (v + r0 * model.score(r0 * v, t0))

    _, div = divergence(field, u, trace="exact")
    var = math.cos(phi0) ** 2 * lam + math.sin(phi0) ** 2
    q = float((1 / var - 1).sum())
    torch.testing.assert_close(div / math.tan(phi0), torch.full((4,), q), rtol=1e-9, atol=0)
    step = data_end_step(div, phi0)
    assert step == pytest.approx(max(phi0, (1 + q) ** -0.5), rel=1e-9)
    assert phi0 <= step <= float(var.min().sqrt())


@pytest.mark.parametrize("kind", ["vp", "edm"])
def test_the_tolerance_holds_on_ill_conditioned_data(kind):
    # condition number 1e4 (standard deviations 1 down to 0.01): the mean log-density error at
    # tol 1e-3 stays below tol. A first step from the tolerance alone (0.16) straddled the 0.01
    # scale and was accepted on a wrong error estimate: 40-70x tol.
    sde = KINDS[kind]()
    model, _ = _ill_conditioned_gaussian(sde)
    x = model.sample(32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ref = sdegen.log_likelihood(model, sde, x, rtol=1e-9, atol=1e-9)
    res = sdegen.log_likelihood(model, sde, x, rtol=1e-3, atol=1e-3)
    assert float((res.log_prob - ref.log_prob).abs().mean()) < 1e-3
    big = sdegen.log_likelihood(model, sde, x, rtol=1e-3, atol=1e-3, options={"h0": 0.16})
    assert float((big.log_prob - ref.log_prob).abs().mean()) > 1e-2


def test_differentiable_likelihood_through_the_own_pair_matches_autograd_of_the_closed_form():
    # N(mean, I) data under VP; d log p(x) / d mean through the solve against the closed form
    # differentiated by autograd
    sde = VPSDE()
    mean = torch.tensor([0.3, -0.2], requires_grad=True)

    x = torch.tensor([[1.0, -1.0], [0.5, 0.2]])
    model = Shifted(sde, mean)
    res = sdegen.log_likelihood(model, sde, x, differentiable=True, rtol=1e-8, atol=1e-8)
    (grad,) = torch.autograd.grad(res.log_prob.sum(), mean)
    mean2 = mean.detach().clone().requires_grad_(True)
    gs = GaussianScore(mean2, torch.eye(2), sde)
    (truth_grad,) = torch.autograd.grad(pushed_forward_prior_log_prob(gs, sde, x).sum(), mean2)
    torch.testing.assert_close(grad, truth_grad, rtol=1e-5, atol=1e-6)


def test_method_names_resolve_to_the_own_pairs_or_torchdiffeq():
    assert resolve_method("auto") == ("sdegen", "auto")
    assert resolve_method("bs3") == ("sdegen", "bs3")
    assert resolve_method("dopri5") == ("sdegen", "dopri5")
    assert resolve_method("tsit5") == ("sdegen", "tsit5")
    assert resolve_method("torchdiffeq:dopri5") == ("torchdiffeq", "dopri5")
    assert resolve_method("rk4") == ("torchdiffeq", "rk4")  # a bare torchdiffeq name as before
    with pytest.raises(ValueError, match="unknown method 'nope'; expected one of: dopri8, .*tsit5"):
        resolve_method("nope")
    with pytest.raises(ValueError, match="unknown method 'tsit5'; expected one of: dopri8"):
        resolve_method("torchdiffeq:tsit5")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(options={"step_size": 0.1}), ValueError, r"options \['step_size'\] are not options"),
        (dict(options={"h0": -1.0}), ValueError, "h0"),
        (dict(method="torchdiffeq:nope"), ValueError, "unknown method 'nope'"),
        (dict(method="tsit5", options={"first_step": 0.1}), ValueError, "torchdiffeq:NAME"),
    ],
)
def test_bad_own_pair_settings_are_refused(kwargs, error, match):
    sde = VPSDE()
    with pytest.raises(error, match=match):
        sdegen.log_likelihood(mixture(sde), sde, torch.zeros(2, 2), **kwargs)
