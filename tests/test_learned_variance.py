"""Learned and optimal reverse variances (Improved DDPM, Analytic-DPM) and ancestral sampling
with them: bounds against DDPM's formulas, the optimum against brute-force minimisation of the
exact KL term on Gaussian data, the learned variance trained by L_hybrid against that optimum,
and the sampler's NFE, noise and grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from torch import nn

import sdegen
from sdegen.models import MLP, GaussianScore, LearnedVarianceModel
from sdegen.sde import VPSDE, beta_schedule, gaussian_kl, grid_times, posterior
from sdegen.sde.reverse_variance import (
    analytic_dpm_variance,
    gaussian_posterior_covariance,
    interpolated_variance,
    optimal_variance,
    variance_bounds,
)
from sdegen.solvers.ancestral_learned import AnalyticDPMVariance, respaced_grid


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _ddpm(n: int = 100, name: str = "linear") -> VPSDE:
    return VPSDE.from_betas(beta_schedule(name, n))


# ---- the bounds and the interpolation ----------------------------------------------------------


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_bounds_are_ddpms_beta_and_beta_tilde_on_adjacent_and_respaced_steps(name):
    n = 50
    betas = beta_schedule(name, n)
    sde = VPSDE.from_betas(betas)
    ab = torch.cumprod(1 - betas, 0)  # alpha_bar_k at index k - 1
    k = torch.arange(2, n + 1)
    lo, hi = variance_bounds(sde, (k - 1) / n, k / n)
    torch.testing.assert_close(hi, betas[k - 1], rtol=1e-10, atol=0)
    torch.testing.assert_close(
        lo, (1 - ab[k - 2]) / (1 - ab[k - 1]) * betas[k - 1], rtol=1e-10, atol=0
    )
    # the first step clips beta_tilde_1 = 0 to beta_tilde_2 (Improved DDPM)
    lo1, hi1 = variance_bounds(sde, torch.zeros(1), torch.full((1,), 1 / n))
    torch.testing.assert_close(hi1, betas[:1], rtol=1e-10, atol=0)
    torch.testing.assert_close(lo1, lo[:1], rtol=1e-10, atol=0)
    # a strided step k -> j: respaced beta = 1 - alpha_bar_k / alpha_bar_j (Improved DDPM sec. 4)
    kk, jj = torch.tensor([40, 20, 7]), torch.tensor([30, 3, 1])
    lo, hi = variance_bounds(sde, jj / n, kk / n)
    beta = 1 - ab[kk - 1] / ab[jj - 1]
    torch.testing.assert_close(hi, beta, rtol=1e-10, atol=0)
    torch.testing.assert_close(lo, (1 - ab[jj - 1]) / (1 - ab[kk - 1]) * beta, rtol=1e-10, atol=0)


@given(v=st.floats(-0.5, 1.5), k=st.integers(2, 100))
def test_interpolation_is_geometric_between_the_bounds(v, k):
    sde = _ddpm()
    t, s = torch.full((1,), k / 100), torch.full((1,), (k - 1) / 100)
    lo, hi = variance_bounds(sde, s, t)
    var = interpolated_variance(sde, torch.full((1, 3), v), s, t)
    expected = lo ** (1 - v) * hi**v
    torch.testing.assert_close(var, expected[:, None].expand(1, 3), rtol=1e-12, atol=0)


def test_bad_inputs_are_refused():
    sde = _ddpm()
    t = torch.full((2,), 0.5)
    with pytest.raises(ValueError, match="s must be a tensor of shape"):
        variance_bounds(sde, 0.4, t)
    with pytest.raises(ValueError, match="s must be < t"):
        variance_bounds(sde, t, t)
    with pytest.raises(ValueError, match="v must have shape"):
        interpolated_variance(sde, torch.zeros(3, 2), t - 0.01, t)
    with pytest.raises(ValueError, match="cov must be symmetric"):
        optimal_variance(sde, t - 0.01, t, torch.tensor([[1.0, 0.5], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="cov must be a square"):
        optimal_variance(sde, t - 0.01, t, torch.ones(2, 3))
    with pytest.raises(ValueError, match="steps must be an integer in 1..99"):
        respaced_grid(sde, 100)
    with pytest.raises(ValueError, match="discrete grid"):
        respaced_grid(VPSDE(), 10)


# ---- the optimum on Gaussian data --------------------------------------------------------------

COV = torch.tensor([[0.30, 0.10, 0.00], [0.10, 0.50, -0.20], [0.00, -0.20, 0.80]])
MEAN = torch.tensor([0.3, -0.5, 0.1])


def _brute_force_optimum(sde, k: int, j: int, n_mc: int = 50_000):
    """The variance minimising E KL(q(x_s | x_t, x_0) || N(mu(x_t), sigma^2)) for the step
    k -> j, by simulating (x_0, x_t), the exact posterior mean from GaussianScore (its own
    eigen-decomposition code) and minimising the Monte Carlo KL over sigma^2 numerically:
    isotropic and per element."""
    n = sdegen.sde.grid_size(sde)
    g = _gen(7)
    x0 = MEAN + torch.randn(n_mc, 3, generator=g) @ torch.linalg.cholesky(COV).T
    t = torch.full((n_mc,), k / n)
    s = torch.full((n_mc,), j / n)
    x_t = sde.perturb(x0, t, torch.randn(n_mc, 3, generator=g))
    truth = GaussianScore(MEAN, COV, sde)
    q_mean, q_var = posterior(sde, x0, x_t, s, t)
    p_mean = posterior(sde, truth.denoise(x_t, t), x_t, s, t)[0]

    def kl(log_var: float, dims) -> float:
        var = torch.full((1, 1), math.exp(log_var))
        if j == 0:  # q is the point mass at x_0: the term is the decoder's -log N(x_0; mu, var)
            nll = -torch.distributions.Normal(p_mean[:, dims], var.sqrt()).log_prob(x0[:, dims])
            return float(nll.sum(1).mean())
        return float(gaussian_kl(q_mean[:, dims], q_var, p_mean[:, dims], var).sum(1).mean())

    def argmin(dims) -> float:
        lo = math.log(float(variance_bounds(sde, s[:1], t[:1])[0]))
        res = minimize_scalar(kl, bounds=(lo - 2, lo + 8), args=(dims,), method="bounded",
                              options={"xatol": 1e-10})  # fmt: skip
        return math.exp(res.x)

    return argmin([0, 1, 2]), [argmin([i]) for i in range(3)]


@pytest.mark.parametrize("k, j", [(2, 1), (10, 9), (100, 99), (40, 25), (1, 0)])
def test_closed_form_optimum_equals_brute_force_minimisation_of_the_kl(k, j):
    sde = _ddpm(100)
    iso, per_dim = _brute_force_optimum(sde, k, j)
    t, s = torch.full((1,), k / 100), torch.full((1,), j / 100)
    assert float(optimal_variance(sde, s, t, COV)[0]) == pytest.approx(iso, rel=2e-2)
    closed = optimal_variance(sde, s, t, COV, diagonal=True)[0]
    np.testing.assert_allclose(closed.numpy(), per_dim, rtol=2e-2)


def test_posterior_covariance_matches_conditioning_the_joint_gaussian():
    sde = _ddpm(100)
    t = torch.tensor([0.05, 0.5])
    a, sg = sde.alpha(t), sde.sigma(t)
    got = gaussian_posterior_covariance(sde, t, COV)
    for i in range(2):  # Schur complement of Cov(x_t) = a^2 C + s^2 I in the joint (x0, x_t)
        cross = a[i] * COV
        want = COV - cross @ torch.linalg.solve(
            a[i] ** 2 * COV + sg[i] ** 2 * torch.eye(3), cross.T
        )
        torch.testing.assert_close(got[i], want, rtol=1e-10, atol=1e-12)


def test_analytic_dpm_from_the_exact_noise_moment_is_the_optimum():
    """Bao et al.'s formula with Gamma = E||E[eps | x_t]||^2 / d, Gamma estimated from the exact
    noise predictor on simulated data (AnalyticDPMVariance.fit), is the closed-form optimum."""
    sde = _ddpm(100)
    truth = GaussianScore(MEAN, COV, sde)
    x0 = MEAN + torch.randn(40_000, 3, generator=_gen(3)) @ torch.linalg.cholesky(COV).T
    ts = respaced_grid(sde, 6)
    fitted = AnalyticDPMVariance.fit(truth, sde, x0, ts, batch_size=20_000, generator=_gen(4))
    assert fitted.nfe == 6 * 2  # two batches at each of the 6 step-start times
    t, s = ts[:-1], ts[1:]
    exact = _exact_gamma(sde, t)
    # Monte Carlo error of a mean of 120000 squares of unit scale: ~0.004
    torch.testing.assert_close(fitted.gamma, exact, rtol=0, atol=0.015)
    torch.testing.assert_close(
        analytic_dpm_variance(sde, s, t, exact),
        optimal_variance(sde, s, t, COV),
        rtol=1e-10,
        atol=0,
    )
    torch.testing.assert_close(
        fitted(torch.zeros(6, 3), t, s), analytic_dpm_variance(sde, s, t, fitted.gamma)
    )
    # bounds: Gamma = 1 gives lambda^2 (beta_tilde), Gamma = 0 the upper bound
    lam2 = variance_bounds(sde, s, t)[0]
    torch.testing.assert_close(analytic_dpm_variance(sde, s, t, 1.0), lam2, rtol=1e-10, atol=0)
    assert bool((analytic_dpm_variance(sde, s, t, 0.0) > optimal_variance(sde, s, t, COV)).all())
    with pytest.raises(ValueError, match="not a time Gamma was estimated at"):
        fitted(torch.zeros(1, 3), torch.tensor([0.55]), torch.tensor([0.54]))


# ---- the model ---------------------------------------------------------------------------------


class _Counted(nn.Module):
    """A network that counts its forward calls."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x, c):
        self.calls += 1
        return self.net(x, c)


def test_model_splits_prediction_and_variance_weights():
    torch.manual_seed(0)
    sde = _ddpm()
    net = MLP(2, hidden=16, depth=2, out_dim=4)
    model = LearnedVarianceModel(net, sde, "eps")
    x, t = torch.randn(6, 2), grid_times(sde)[torch.arange(10, 70, 10)]
    out = net(x, sde.half_log_snr(t))
    torch.testing.assert_close(model.eps(x, t), out[:, :2])
    s = t - 0.01
    torch.testing.assert_close(model.variance(x, t), interpolated_variance(sde, out[:, 2:], s, t))
    # the variance is differentiable in the network's weights when gradients are on
    model.variance(x, t).sum().backward()
    assert net.out.weight.grad is not None and bool(net.out.weight.grad.abs().sum() > 0)
    with pytest.raises(ValueError, match="must return twice the channels of x"):
        LearnedVarianceModel(MLP(2, hidden=8, depth=1), sde).eps(x, t)


def test_model_works_on_images_through_the_unet():
    torch.manual_seed(0)
    sde = _ddpm()
    unet = sdegen.models.UNet(1, channels=8, channel_mult=(1,), attention_levels=(), out_channels=2)
    model = LearnedVarianceModel(unet, sde)
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.3)
    assert model.score(x, t).shape == model.variance(x, t).shape == (2, 1, 8, 8)


def test_ancestral_with_learned_variance_costs_one_evaluation_per_step():
    torch.manual_seed(0)
    sde = _ddpm()
    mlp = MLP(2, hidden=16, depth=2, out_dim=4)
    nn.init.zeros_(mlp.out.weight)  # eps = 0: an untrained chain stays finite
    net = _Counted(mlp)
    model = LearnedVarianceModel(net, sde)
    ts = respaced_grid(sde, 12)
    r = sdegen.sample(model, sde, (5, 2), method="ancestral", variance="learned", schedule=ts,
                      generator=_gen(0))  # fmt: skip
    assert r.nfe == net.calls == 13


@pytest.mark.parametrize("v, fixed", [(0.0, "posterior"), (1.0, "forward")])
def test_learned_variance_at_v_0_and_1_samples_as_the_fixed_variances(v, fixed):
    """v = 0 is beta_tilde and v = 1 is beta: with the same noise the chains agree."""
    sde = _ddpm()
    truth = GaussianScore(MEAN, COV, sde)

    class ExactWithV(nn.Module):  # the exact eps beside a constant v
        def forward(self, x, c):
            t = sde.t_of_half_log_snr(c)
            return torch.cat([truth.eps(x, t), torch.full_like(x, v)], dim=1)

    model = LearnedVarianceModel(ExactWithV(), sde, sigma_data=None)
    ts = respaced_grid(sde, 15)
    kw = dict(schedule=ts, noise=torch.randn(64, 3, generator=_gen(1)))
    a = sdegen.sample(model, sde, (64, 3), method="ancestral", variance="learned",
                      generator=_gen(2), **kw)  # fmt: skip
    b = sdegen.sample(truth, sde, (64, 3), method="ancestral", variance=fixed, generator=_gen(2),
                      **kw)  # fmt: skip
    torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-9)


def test_learned_variance_needs_a_model_with_a_variance():
    sde = _ddpm()
    with pytest.raises(TypeError, match="variance='learned' needs a model with its own variance"):
        sdegen.sample(GaussianScore(MEAN, COV, sde), sde, (4, 3), method="ancestral",
                      variance="learned", steps=3)  # fmt: skip
    with pytest.raises(ValueError, match="unknown variance 'optimal'"):
        sdegen.sample(GaussianScore(MEAN, COV, sde), sde, (4, 3), method="ancestral",
                      variance="optimal", steps=3)  # fmt: skip


def test_analytic_dpm_sampler_beats_both_fixed_variances_at_few_steps():
    """At 5 ancestral steps of the exact model, the optimal variance gives samples whose
    covariance is closer to the data's than DDPM's beta and beta_tilde (Bao et al.'s finding,
    on Gaussian data where the optimum is exact). Measured: max |cov error| 0.14, 0.21, 0.52."""
    sde = _ddpm(1000)
    truth = GaussianScore(MEAN, COV, sde)
    ts = respaced_grid(sde, 5)
    opt = AnalyticDPMVariance(sde, ts[:-1], _exact_gamma(sde, ts[:-1]))
    errs = {}
    for name, var in (("analytic", opt), ("forward", "forward"), ("posterior", "posterior")):
        r = sdegen.sample(truth, sde, (20_000, 3), method="ancestral", variance=var, schedule=ts,
                          generator=_gen(5))  # fmt: skip
        errs[name] = float((torch.cov(r.x.T) - COV).abs().max())
    assert errs["analytic"] + 0.04 < errs["forward"] and errs["forward"] + 0.2 < errs["posterior"]


def _exact_gamma(sde, ts: torch.Tensor) -> torch.Tensor:
    """E||E[eps | x_t]||^2 / d for the Gaussian data, from Cov(eps | x_t) = alpha^2/sigma^2 *
    Cov(x0 | x_t) and E||eps||^2 = d."""
    a2s2 = (sde.alpha(ts) / sde.sigma(ts)) ** 2
    post = torch.diagonal(gaussian_posterior_covariance(sde, ts, COV), dim1=-2, dim2=-1).mean(1)
    return 1 - a2s2 * post
