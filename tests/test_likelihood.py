"""PF-ODE likelihood against closed forms; exact and Hutchinson traces; bits per dim."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdegen
from sdegen import GaussianScore
from sdegen.sde import EDMSDE, VESDE, VPSDE, SubVPSDE
from sdegen.solvers import bits_per_dim, exact_divergence, hutchinson_divergence

from .conftest import SDE_FACTORIES, mixture


def pushed_forward_prior_log_prob(model: GaussianScore, sde, x: torch.Tensor) -> torch.Tensor:
    """Closed-form density at t_min of the prior pushed through the exact PF-ODE flow.

    For Gaussian data N(mu, U diag(l) U^T) the flow is affine: in the eigenbasis the residual
    x - alpha(t) mu scales as sqrt(v(t)), v = alpha^2 l + sigma^2. So from t_min to T,
    z = alpha_T mu + U diag(sqrt(v_T / v_0)) U^T (x - alpha_0 mu), and
    log p(x) = log N(z; 0, prior_std^2 I) + 1/2 sum log(v_T / v_0).
    """
    t0, t1 = torch.tensor([sde.t_min]), torch.tensor([sde.T])
    a0, s0, a1, s1 = sde.alpha(t0), sde.sigma(t0), sde.alpha(t1), sde.sigma(t1)
    lam, U, mu = model.evals[0], model.evecs[0], model.means[0]
    v0, v1 = a0**2 * lam + s0**2, a1**2 * lam + s1**2
    y = (x - a0 * mu) @ U
    z = a1 * mu + (y * torch.sqrt(v1 / v0)) @ U.T
    return sde.prior_log_prob(z) + 0.5 * torch.log(v1 / v0).sum()


@settings(max_examples=10, deadline=None)
@given(
    kind=st.sampled_from(["vp", "subvp", "ve", "edm"]),
    dim=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    b_hi=st.floats(5.0, 25.0),
    s_max=st.floats(5.0, 60.0),
)
def test_exact_likelihood_matches_the_closed_form(kind, dim, seed, b_hi, s_max):
    sde = {
        "vp": lambda: VPSDE(beta_max=b_hi),
        "subvp": lambda: SubVPSDE(beta_max=b_hi),
        "ve": lambda: VESDE(sigma_max=s_max),
        "edm": lambda: EDMSDE(sigma_max=s_max),
    }[kind]()
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(dim, dim, generator=g)
    model = GaussianScore(torch.randn(dim, generator=g), A @ A.T / dim + 0.2 * torch.eye(dim), sde)
    x = model.sample(6, generator=g, dtype=torch.float64)
    res = sdegen.log_likelihood(model, sde, x, rtol=1e-8, atol=1e-8)
    truth = pushed_forward_prior_log_prob(model, sde, x)
    assert float((res.log_prob - truth).abs().max()) < 1e-3 * dim
    assert res.nfe > 0 and res.nfe_backward == res.nfe * dim


def test_likelihood_of_a_mixture_is_the_true_density(sde):
    # The exact-score PF-ODE carries p_{t_min} onto p_T, so log p_T(z) + delta is the true
    # log-density of p_{t_min}, for every SDE; the prior differs from p_T only slightly.
    model = mixture(sde, dim=2)
    x = model.sample(8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    res = sdegen.log_likelihood(model, sde, x, rtol=1e-7, atol=1e-7)
    truth = model.log_prob(x, torch.full((8,), sde.t_min))
    via_p_T = model.log_prob(res.z, torch.full((8,), sde.T)) + res.delta_log_prob
    assert float((via_p_T - truth).abs().max()) < 2e-3
    assert float((res.log_prob - truth).abs().max()) < 0.05  # prior mismatch at T
    torch.testing.assert_close(res.log_prob, res.prior_log_prob + res.delta_log_prob)


def test_exact_divergence_equals_the_brute_force_jacobian_trace():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(5, 5, generator=g)
    x = torch.randn(7, 5, generator=g).requires_grad_(True)
    out = torch.tanh(x @ W) * x
    jac = torch.stack(
        [
            torch.autograd.functional.jacobian(lambda v: torch.tanh(v @ W) * v, x[i])
            for i in range(7)
        ]
    )
    expected = jac.diagonal(dim1=1, dim2=2).sum(1)
    for chunk in (1, 2, 5):
        torch.testing.assert_close(exact_divergence(out, x, chunk=chunk), expected)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased(noise):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(6, 6, generator=g)
    x = torch.randn(3, 6, generator=g).requires_grad_(True)
    out = torch.sin(x @ W)
    exact = exact_divergence(out, x)
    K = 20000
    probes = (
        torch.randint(0, 2, (K, 3, 6), generator=g) * 2 - 1.0
        if noise == "rademacher"
        else torch.randn(K, 3, 6, generator=g)
    )
    est = hutchinson_divergence(out, x, probes)
    # per-probe estimates, to size the Monte-Carlo error
    rows = torch.autograd.grad(out, x, probes, is_grads_batched=True, retain_graph=True)[0]
    per = (rows * probes).sum(-1)
    se = per.std(0) / math.sqrt(K)
    assert bool(((est - exact).abs() < 5 * se + 1e-9).all())


def test_hutchinson_likelihood_is_close_and_seeded():
    sde = VPSDE()
    model = mixture(sde, dim=4)
    x = model.sample(4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = sdegen.log_likelihood(model, sde, x)
    runs = [
        sdegen.log_likelihood(
            model, sde, x, trace="hutchinson", probes=8, generator=torch.Generator().manual_seed(s)
        )
        for s in range(6)
    ]
    mean = torch.stack([r.log_prob for r in runs]).mean(0)
    assert float((mean - exact.log_prob).abs().max()) < 0.5
    again = sdegen.log_likelihood(
        model, sde, x, trace="hutchinson", probes=8, generator=torch.Generator().manual_seed(0)
    )
    assert torch.equal(again.log_prob, runs[0].log_prob)
    assert runs[0].nfe_backward == 8 * runs[0].nfe and runs[0].trace == "hutchinson"


class Shifted:
    """N(mean, I) data under the VP SDE `sde`: the score is -(x - alpha mean), differentiable
    in `mean`."""

    def __init__(self, sde, mean: torch.Tensor) -> None:
        self.sde, self.mean = sde, mean

    def score(self, x, t):
        return -(x - self.sde.alpha(t)[:, None] * self.mean)

    def eps(self, x, t):
        return -self.sde.sigma(t)[:, None] * self.score(x, t)

    def denoise(self, x, t):
        sde = self.sde
        return (x + sde.sigma(t)[:, None] ** 2 * self.score(x, t)) / sde.alpha(t)[:, None]


def test_differentiable_likelihood_reaches_parameters():
    sde = VPSDE()
    mean = torch.zeros(2, requires_grad=True)
    x = torch.tensor([[1.0, -1.0]])
    res = sdegen.log_likelihood(
        Shifted(sde, mean), sde, x, differentiable=True, method="rk4", options={"step_size": 0.01}
    )
    res.log_prob.sum().backward()
    # d/dmean log N(x; mean, I) = x - mean = x at mean = 0 (up to the prior mismatch at T)
    torch.testing.assert_close(mean.grad, x[0], rtol=1e-2, atol=1e-2)


def test_bits_per_dim():
    # A uniform density on [-1, 1]^D at 8 bits: each of 256 bins has probability 1/256 -> 8 bpd.
    D = 3
    logp = torch.full((2,), -D * math.log(2.0))
    torch.testing.assert_close(bits_per_dim(logp, D, 2 / 256), torch.full((2,), 8.0))
    torch.testing.assert_close(bits_per_dim(logp, D, 2 / 32), torch.full((2,), 5.0))  # 5 bits
    with pytest.raises(ValueError, match="bin_width must be > 0"):
        bits_per_dim(logp, D, 0.0)
    with pytest.raises(ValueError, match="num_dims must be an integer >= 1"):
        bits_per_dim(logp, 0, 0.1)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(trace="approx"), "unknown trace 'approx'; expected one of: exact, hutchinson"),
        (dict(noise="uniform"), "unknown noise 'uniform'"),
        (dict(probes=0), "probes must be an integer >= 1, got 0"),
        (dict(rtol=-1.0), "rtol must be > 0"),
        (dict(method="nope"), "unknown method 'nope'; expected one of: .*dopri5"),
    ],
)
def test_log_likelihood_rejects_bad_arguments(kwargs, match):
    sde = SDE_FACTORIES["vp_linear"]()
    with pytest.raises(ValueError, match=match):
        sdegen.log_likelihood(mixture(sde), sde, torch.zeros(2, 2), **kwargs)
    with pytest.raises(ValueError, match="x holds 1 non-finite"):
        sdegen.log_likelihood(mixture(sde), sde, torch.tensor([[0.0, math.nan]]))


def _bad_settings_cases():
    return [
        (dict(chunk=-1), ValueError, r"chunk must be None \(automatic\) or an integer >= 1.*-1"),
        (dict(chunk=0), ValueError, "chunk must be None .*got 0"),
        (dict(chunk=1.5), ValueError, "chunk must be None .*got 1.5"),
        (dict(rtol=math.nan), ValueError, "rtol must be finite, got nan"),
        (dict(rtol=-1), ValueError, "rtol must be > 0, got -1"),
        (dict(atol=math.inf), ValueError, "atol must be finite, got inf"),
        (dict(atol="small"), TypeError, "atol must be a real number, got 'small'"),
        (dict(probes=True), ValueError, "probes must be an integer >= 1, got True"),
        (dict(probes=2.0), ValueError, "probes must be an integer >= 1, got 2.0"),
        (dict(trace=None), ValueError, "unknown trace None; expected one of: exact, hutchinson"),
        (dict(method="rk45"), ValueError, "unknown method 'rk45'; expected one of: dopri8, dopri5"),
        (dict(options=3), TypeError, "options must be a dict of torchdiffeq options or None"),
    ]


@pytest.mark.parametrize("kwargs, error, match", _bad_settings_cases())
def test_log_likelihood_checks_every_ode_setting(kwargs, error, match):
    sde = SDE_FACTORIES["vp_linear"]()
    with pytest.raises(error, match=match):
        sdegen.log_likelihood(mixture(sde), sde, torch.zeros(2, 2), **kwargs)


def test_chunk_sizes_give_the_same_divergence_and_bad_ones_are_refused():
    # chunk=-1 used to skip every basis vector, returning a divergence of 0 (0.57 nats off).
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, generator=g, requires_grad=True)
    out = torch.sin(x) * x.flip(1)
    auto = exact_divergence(out, x)
    torch.testing.assert_close(exact_divergence(out, x, chunk=2), auto)
    for bad in (-1, 0, 2.5, True):
        with pytest.raises(ValueError, match="chunk must be None"):
            exact_divergence(out, x, chunk=bad)


@pytest.mark.parametrize(
    "x, error, match",
    [
        (torch.zeros(2, 2, dtype=torch.int64), TypeError, "floating-point tensor.*torch.int64"),
        (torch.zeros(2, 2, dtype=torch.float16), TypeError, "float32 or float64.*torch.float16"),
        (torch.zeros(0, 2), ValueError, r"batch >= 1.*got \(0, 2\)"),
        (torch.zeros(2), ValueError, r"x must have shape \(batch, \*event_shape\).*\(2,\)"),
        (torch.tensor([[0.0, math.inf]]), ValueError, "x holds 1 non-finite"),
        ([[0.0, 1.0]], TypeError, "x must be a torch.Tensor, got list"),
    ],
)
def test_log_likelihood_refuses_bad_data(x, error, match):
    sde = SDE_FACTORIES["vp_linear"]()
    with pytest.raises(error, match=match):
        sdegen.log_likelihood(mixture(sde), sde, x)


def test_log_likelihood_refuses_a_non_sde():
    sde = SDE_FACTORIES["vp_linear"]()
    with pytest.raises(TypeError, match=r"sde must be an SDE object.*got str 'vp'.*VPSDE\(\)"):
        sdegen.log_likelihood(mixture(sde), "vp", torch.zeros(2, 2))


@pytest.mark.parametrize("kwargs, error, match", _bad_settings_cases())
def test_ffjord_and_score_density_share_the_ode_setting_checks(kwargs, error, match):
    # One function checks the ODE settings of all three likelihoods, so they fail alike.
    from sdegen.models import FFJORD
    from sdegen.score_density import ScoreSDEDensity

    kwargs = {k: v for k, v in kwargs.items() if k not in ("chunk", "options")}
    if not kwargs:
        return
    sde = SDE_FACTORIES["vp_linear"]()
    with pytest.raises(error, match=match):
        ScoreSDEDensity(mixture(sde), sde, (2,), **kwargs)
    with pytest.raises(error, match=match):
        ScoreSDEDensity(mixture(sde), sde, (2,)).log_prob(torch.zeros(2, 2), **kwargs)
    if None in kwargs.values():
        return  # FFJORD's None means "the model's default"
    flow = FFJORD(2, (8,))
    with pytest.raises(error, match=match):
        flow.log_prob(torch.zeros(2, 2), **kwargs)
