"""Discrete-time DDPM: schedules, posterior, KL, decoder, mu parametrization, integer-time
training and the variational bound, each against a closed form or an independent computation."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import Normal, kl_divergence

from sdegen.sde import (
    VESDE,
    VPSDE,
    SubVPSDE,
    beta_schedule,
    ddpm_betas,
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    grid_index,
    grid_times,
    posterior,
    posterior_coefficients,
    previous_grid_time,
    rectified_flow,
)

# ---- schedules -------------------------------------------------------------------------------


def test_linear_schedule_is_ddpm_betas_scaled_as_improved_ddpm():
    torch.testing.assert_close(beta_schedule("linear", 1000), ddpm_betas(1000), rtol=0, atol=0)
    b = beta_schedule("linear", 200)
    torch.testing.assert_close(b, torch.linspace(5e-4, 0.1, 200, dtype=torch.float64))
    b = beta_schedule("linear", 50, beta_start=0.01, beta_end=0.3)  # given values are kept
    assert float(b[0]) == pytest.approx(0.01) and float(b[-1]) == pytest.approx(0.3)


def test_cosine_schedule_matches_its_alpha_bar():
    # alpha_bar_k = f(k/n) / f(0), f(t) = cos^2((t + s)/(1 + s) pi/2), from the betas' product
    n, s = 100, 0.008
    b = beta_schedule("cosine", n)
    f = [math.cos((k / n + s) / (1 + s) * math.pi / 2) ** 2 for k in range(n + 1)]
    ab = torch.cumprod(1 - b, 0)
    want = torch.tensor([f[k] / f[0] for k in range(1, n + 1)])
    torch.testing.assert_close(ab[:-1], want[:-1], rtol=1e-10, atol=1e-14)
    assert float(b[-1]) == 0.999  # clipped: f(1) = 0 would give beta_n = 1
    assert bool((b[:-1] < 0.999).all()) and bool((b > 0).all())


def test_quadratic_and_sigmoid_schedules():
    n = 300
    q = beta_schedule("quadratic", n, beta_start=1e-4, beta_end=0.02)
    d = q.sqrt().diff()
    torch.testing.assert_close(d, torch.full_like(d, d[0].item()))  # sqrt(beta) linear
    assert float(q[0]) == pytest.approx(1e-4) and float(q[-1]) == pytest.approx(0.02)
    sg = beta_schedule("sigmoid", n, beta_start=1e-4, beta_end=0.02)
    u = torch.linspace(-6, 6, n, dtype=torch.float64)
    torch.testing.assert_close(sg, 1e-4 + (0.02 - 1e-4) / (1 + torch.exp(-u)))
    assert bool((sg.diff() > 0).all())
    for name in ("linear", "cosine", "quadratic", "sigmoid"):
        b = beta_schedule(name, n)
        assert b.dtype == torch.float64 and b.shape == (n,)
        VPSDE.from_betas(b)  # every schedule gives a valid SDE


def test_beta_schedule_refuses_bad_arguments():
    with pytest.raises(ValueError, match="unknown name 'cos'; expected one of: linear, cosine"):
        beta_schedule("cos", 10)
    with pytest.raises(ValueError, match="n must be an integer >= 2, got 1"):
        beta_schedule("linear", 1)
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) s for the 'linear'"):
        beta_schedule("linear", 100, s=0.1)
    with pytest.raises(ValueError, match=r"beta_end must lie in \(0, 1\), got 2.0 \(DDPM's"):
        beta_schedule("linear", 10)
    with pytest.raises(ValueError, match="beta_start must be <= beta_end"):
        beta_schedule("sigmoid", 100, beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match=r"max_beta must lie in \(0, 1\), got 1.5"):
        beta_schedule("cosine", 100, max_beta=1.5)
    with pytest.raises(ValueError, match="s must be >= 0"):
        beta_schedule("cosine", 100, s=-1)


# ---- grid ------------------------------------------------------------------------------------


def test_grid_helpers():
    sde = VPSDE.from_betas(beta_schedule("linear", 50))
    t = grid_times(sde)
    assert t.shape == (50,) and float(t[0]) == 1 / 50 and float(t[-1]) == 1.0
    torch.testing.assert_close(grid_index(sde, t), torch.arange(1, 51))
    torch.testing.assert_close(grid_index(sde, t.float()), torch.arange(1, 51))
    torch.testing.assert_close(previous_grid_time(sde, t)[1:], t[:-1])
    assert float(previous_grid_time(sde, t)[0]) == 0.0
    with pytest.raises(ValueError, match="t must hold grid times k/N, k = 1..50"):
        grid_index(sde, torch.tensor([0.011]))
    with pytest.raises(ValueError, match="needs an SDE on DDPM's discrete grid"):
        grid_times(VPSDE())


# ---- posterior -------------------------------------------------------------------------------


def test_posterior_is_ddpm_mu_tilde_and_beta_tilde():
    # Ho et al. 2020, eq. 7, written in betas for every adjacent pair of steps t-1 < t.
    betas = beta_schedule("cosine", 40)
    sde = VPSDE.from_betas(betas)
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1), ab[:-1]])
    t = grid_times(sde)
    g = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(40, 3, generator=g), torch.randn(40, 3, generator=g)
    mean, var = posterior(sde, x0, xt, previous_grid_time(sde, t), t)
    c0 = ab_prev.sqrt() * betas / (1 - ab)
    ct = (1 - betas).sqrt() * (1 - ab_prev) / (1 - ab)
    torch.testing.assert_close(mean, c0[:, None] * x0 + ct[:, None] * xt, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var[:, 0], (1 - ab_prev) / (1 - ab) * betas, rtol=1e-9, atol=0)
    assert float(var[0, 0]) == 0 and torch.equal(mean[0], x0[0])  # t = 1: s = 0 is x0 itself


def _brute_force_posterior(sde, s, t):
    """Condition the joint Gaussian of (x_s, x_t) given x0 = 1 (one dimension) on x_t."""
    a_s, a_t = sde.alpha(s), sde.alpha(t)
    a, std = sde.transition(s, t)
    var_s = sde.sigma(s) ** 2
    cov = a * var_s  # Cov(x_s, x_t) = a Var(x_s)
    var_t = a**2 * var_s + std**2
    # E[x_s | x_t] = a_s x0 + cov / var_t (x_t - a_t x0): coefficients of x0 and x_t
    ct = cov / var_t
    c0 = a_s - ct * a_t
    return c0, ct, var_s - cov**2 / var_t


@pytest.mark.parametrize(
    "make",
    [
        lambda: VPSDE(),
        lambda: VESDE(),
        lambda: SubVPSDE("cosine"),
        lambda: rectified_flow(),
        lambda: VPSDE.from_betas(beta_schedule("sigmoid", 100)),
    ],
    ids=["vp", "ve", "subvp_cosine", "rectified_flow", "vp_sigmoid_betas"],
)
def test_posterior_coefficients_match_gaussian_conditioning(make):
    sde = make()
    g = torch.Generator().manual_seed(1)
    u = torch.rand(2, 64, generator=g)
    s = sde.t_min + (sde.T - sde.t_min) * u.min(0).values
    t = sde.t_min + (sde.T - sde.t_min) * u.max(0).values
    keep = t > s + 1e-6
    s, t = s[keep], t[keep]
    c0, ct, var = posterior_coefficients(sde, s, t)
    w0, wt, wvar = _brute_force_posterior(sde, s, t)
    torch.testing.assert_close(c0, w0, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(ct, wt, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(var, wvar, rtol=1e-6, atol=1e-12)


def test_posterior_by_simulation():
    # Draw (x_s, x_t) forward from x0 and regress x_s on x_t: slope ct, residual variance var.
    sde = VPSDE.from_betas(beta_schedule("linear", 100))
    n = 200_000
    g = torch.Generator().manual_seed(2)
    s, t = torch.full((n,), 0.3), torch.full((n,), 0.5)
    x0 = torch.full((n, 1), 0.7)
    x_s = sde.perturb(x0, s, torch.randn(n, 1, generator=g))
    a, std = sde.transition(s, t)
    x_t = a[:, None] * x_s + std[:, None] * torch.randn(n, 1, generator=g)
    mean, var = posterior(sde, x0, x_t, s, t)
    resid = x_s - mean
    assert abs(float(resid.mean())) < 4 * math.sqrt(float(var[0]) / n)
    assert float(resid.var()) == pytest.approx(float(var[0]), rel=0.02)


def test_posterior_refuses_bad_arguments():
    sde = VPSDE()
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="s must be < t, got s=0.5, t=0.5"):
        posterior(sde, x, x, torch.tensor([0.2, 0.5]), torch.tensor([0.4, 0.5]))
    with pytest.raises(ValueError, match=r"x0 and x_t must have the same shape"):
        posterior(sde, x, torch.zeros(2, 4), torch.tensor([0.2, 0.2]), torch.tensor([0.4, 0.5]))
    with pytest.raises(ValueError, match=r"s must be a tensor of shape \(B,\)"):
        posterior_coefficients(sde, 0.2, torch.tensor([0.4]))
    with pytest.raises(ValueError, match=r"t must lie in \[t_min, T\]"):
        posterior(sde, x, x, torch.tensor([0.2, 0.2]), torch.tensor([0.4, 1.5]))


# ---- KL and decoder --------------------------------------------------------------------------


@given(
    st.floats(-3, 3),
    st.floats(0.01, 4),
    st.floats(-3, 3),
    st.floats(0.01, 4),
)
def test_gaussian_kl_matches_torch_distributions(m1, v1, m2, v2):
    args = [torch.tensor(v) for v in (m1, v1, m2, v2)]
    want = kl_divergence(Normal(args[0], args[1].sqrt()), Normal(args[2], args[3].sqrt()))
    torch.testing.assert_close(gaussian_kl(*args), want, rtol=1e-10, atol=1e-12)


def test_gaussian_kl_broadcasts_and_checks():
    m = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    out = gaussian_kl(m, torch.tensor(0.5), torch.zeros(1, 3), torch.ones(4, 1))
    assert out.shape == (4, 3)
    assert float(gaussian_kl(m, torch.ones(()), m, torch.ones(())).abs().max()) == 0
    with pytest.raises(ValueError, match="var2 must be > 0, got min 0.0"):
        gaussian_kl(m, torch.ones(()), m, torch.zeros(()))
    with pytest.raises(TypeError, match="mean1 must be a torch.Tensor, got float"):
        gaussian_kl(0.0, torch.ones(()), m, torch.ones(()))


@pytest.mark.parametrize(
    ("mean", "var"), [(0.3, 0.04), (0.999, 1e-6), (-3.0, 0.5), (5.0, 0.01), (0.0, 100.0)]
)
def test_discretized_decoder_sums_to_one_and_is_the_cdf_difference(mean, var):
    w = 2 / 255
    x = torch.linspace(-1, 1, 256)
    logp = discretized_gaussian_log_likelihood(x, torch.tensor(mean), torch.tensor(var), w)
    assert float(torch.logsumexp(logp, 0)) == pytest.approx(0.0, abs=1e-9)
    d = Normal(torch.tensor(mean), torch.tensor(var).sqrt())
    edges_hi = torch.where(x > 1 - w / 2, torch.tensor(math.inf), x + w / 2)
    edges_lo = torch.where(x < -1 + w / 2, torch.tensor(-math.inf), x - w / 2)
    mass = d.cdf(edges_hi) - d.cdf(edges_lo)
    big = mass > 1e-6  # where the plain CDF difference is itself accurate
    torch.testing.assert_close(logp[big].exp(), mass[big], rtol=1e-7, atol=1e-12)


def test_discretized_decoder_far_tail_and_gradient():
    # A bin 20 std from the mean: the plain CDF difference underflows to 0, the log-space one
    # does not. Reference: the density integrated over the bin by the trapezoid rule, scaled by
    # its value at the bin's near edge so nothing underflows.
    w, mean, var = 2 / 255, 1.0, 0.0025
    x = torch.tensor([0.0])
    m = torch.tensor([mean], requires_grad=True)
    logp = discretized_gaussian_log_likelihood(x, m, torch.tensor(var), w)
    z = torch.linspace(-w / 2, w / 2, 200_001)
    log_pdf = Normal(mean, math.sqrt(var)).log_prob(z)
    ref = log_pdf.max() + torch.log(torch.trapezoid(torch.exp(log_pdf - log_pdf.max()), z))
    assert float(logp.detach()) == pytest.approx(float(ref), rel=1e-9)
    assert float(Normal(mean, math.sqrt(var)).cdf(torch.tensor(w / 2))) == 0.0  # underflow
    logp.sum().backward()
    assert torch.isfinite(m.grad).all()
    x = torch.linspace(-1, 1, 5)
    m = torch.zeros(5, requires_grad=True)
    discretized_gaussian_log_likelihood(x, m, torch.tensor(0.1), w).sum().backward()
    assert torch.isfinite(m.grad).all()


def test_discretized_decoder_checks():
    one = torch.ones(())
    with pytest.raises(ValueError, match="bin_width must be > 0"):
        discretized_gaussian_log_likelihood(one, one, one, 0.0)
    with pytest.raises(ValueError, match=r"x must lie in \[-1, 1\]"):
        discretized_gaussian_log_likelihood(torch.tensor([1.5]), one, one, 0.1)
    with pytest.raises(ValueError, match="var must be > 0"):
        discretized_gaussian_log_likelihood(one, one, -one, 0.1)
