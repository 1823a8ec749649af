"""Learned and optimal reverse variances (Improved DDPM, Analytic-DPM) and ancestral sampling
with them: bounds against DDPM's formulas, the optimum against brute-force minimisation of the
exact KL term on Gaussian data, the learned variance trained by L_hybrid against that optimum,
and the sampler's NFE, noise and grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import minimize_scalar
from torch import nn

import sdegen
from sdegen.models import MLP, GaussianScore, LearnedVarianceModel, ScoreModel
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


@settings(max_examples=30)
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
    # Theorem 2's bound for data in [a, b]: lambda^2 + c0^2 ((b - a)/2)^2, binding at t = T
    c0 = posterior(sde, torch.ones(6, 1), torch.zeros(6, 1), s, t)[0][:, 0]
    bounded = analytic_dpm_variance(sde, s, t, 0.0, data_range=(-0.5, 0.5))
    torch.testing.assert_close(
        bounded, torch.minimum(lam2 + c0**2 * 0.25, analytic_dpm_variance(sde, s, t, 0.0))
    )
    assert float(bounded[0]) < float(analytic_dpm_variance(sde, s, t, 0.0)[0])
    with pytest.raises(ValueError, match="data_range must be"):
        analytic_dpm_variance(sde, s, t, 0.5, data_range=(1.0, -1.0))
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

    class FirstHalf(nn.Module):  # the prediction half alone, for a plain ScoreModel
        def forward(self, x, c):
            return net(x, c)[:, :2]

    for kind in ("mu", "v", "x0"):  # every parametrization, DDPM's mean included
        got = LearnedVarianceModel(net, sde, kind).denoise(x, t)
        torch.testing.assert_close(got, ScoreModel(FirstHalf(), sde, kind).denoise(x, t))


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


# ---- L_hybrid ----------------------------------------------------------------------------------


class _ExactMeanTableV(nn.Module):
    """The exact eps of Gaussian data beside a learnable table v[k] (N, D) of variance weights:
    L_hybrid then trains only the table, whose optimum is known in closed form."""

    def __init__(self, truth, sde, n: int, dim: int) -> None:
        super().__init__()
        self.truth, self.sde, self.n = truth, sde, n
        self.v = nn.Parameter(torch.zeros(n, dim))

    def forward(self, x, c):
        t = self.sde.t_of_half_log_snr(c)
        k = torch.round(t * self.n).long()
        return torch.cat([self.truth.eps(x, t), self.v[k - 1]], dim=1)


MEAN2 = torch.tensor([0.3, -0.5])
COV2 = torch.tensor([[0.2, 0.05], [0.05, 0.6]])


def test_hybrid_loss_is_l_simple_plus_lambda_times_the_one_term_bound():
    from sdegen.training import dsm_loss
    from sdegen.training.hybrid import hybrid_loss
    from sdegen.training.vlb import vlb_loss

    torch.manual_seed(0)
    sde = _ddpm(50)
    model = LearnedVarianceModel(MLP(2, hidden=16, depth=2, out_dim=4), sde)
    x0 = torch.randn(64, 2, generator=_gen(0)).clamp(-1, 1)
    k = torch.randint(1, 51, (64,), generator=_gen(1))
    noise = torch.randn(64, 2, generator=_gen(2))
    kw = dict(k=k, noise=noise, bin_width=2 / 256, reduce=False)
    simple = hybrid_loss(model, x0, lam=0.0, **kw)
    t = k.double() / 50
    torch.testing.assert_close(
        simple, dsm_loss(model, x0, t=t, noise=noise, weighting="simple", reduce=False)
    )
    # the bound with the model's own variance, the model evaluated again by vlb_loss
    bound = vlb_loss(model, x0, variance=lambda x, kk: model.variance(x, kk / 50), **kw)
    torch.testing.assert_close(hybrid_loss(model, x0, lam=0.25, **kw), simple + 0.25 * bound)


def test_hybrid_gradient_of_the_bound_reaches_only_the_variance():
    from sdegen.training.hybrid import hybrid_loss

    torch.manual_seed(0)
    sde = _ddpm(50)
    model = LearnedVarianceModel(MLP(2, hidden=16, depth=2, out_dim=4), sde)
    x0 = torch.randn(64, 2, generator=_gen(0)).clamp(-1, 1)
    kw = dict(k=torch.randint(1, 51, (64,), generator=_gen(1)), bin_width=2 / 256)
    kw["noise"] = torch.randn(64, 2, generator=_gen(2))
    w = model.net.net.out.weight  # rows 0-1: the prediction, rows 2-3: v

    def grad(lam):
        w.grad = None
        hybrid_loss(model, x0, lam=lam, **kw).backward()
        return w.grad.clone()

    g0, g1 = grad(0.0), grad(1.0)
    assert torch.equal(g1[:2], g0[:2])  # the mean's gradient is L_simple's alone
    assert bool(g0[2:].abs().sum() == 0) and bool(g1[2:].abs().sum() > 0)


def test_hybrid_training_approaches_the_optimal_variance_on_gaussian_data():
    """L_hybrid with the exact mean drives the learned per-element variance of every step to
    the closed-form optimum lambda^2 + c0^2 Cov(x_0 | x_t)_ii (the decoder step k = 1: the
    Gaussian density, bin_width=None). Measured: max relative error 0.029 after 100 steps,
    0.71 at the start (beta_tilde)."""
    from sdegen.training.hybrid import hybrid_loss

    n = 10
    sde = VPSDE.from_betas(beta_schedule("cosine", n))
    net = _ExactMeanTableV(GaussianScore(MEAN2, COV2, sde), sde, n, 2)
    model = LearnedVarianceModel(net, sde, sigma_data=None)
    t = grid_times(sde)
    s = t - 1 / n
    best = optimal_variance(sde, s, t, COV2, diagonal=True)

    def error():
        with torch.no_grad():
            return float((model.variance(torch.zeros(n, 2), t) / best - 1).abs().max())

    start = error()
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    g, chol = _gen(0), torch.linalg.cholesky(COV2)
    for i in range(100):
        if i == 70:
            opt.param_groups[0]["lr"] = 0.02
        x0 = MEAN2 + torch.randn(1024, 2, generator=g) @ chol.T
        loss = hybrid_loss(model, x0, bin_width=None, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert start > 0.5 and error() < 0.06


def test_hybrid_refuses_other_models_and_bad_steps():
    from sdegen.training.hybrid import hybrid_loss

    sde = _ddpm(50)
    x0 = torch.zeros(4, 3)
    with pytest.raises(TypeError, match="trains a LearnedVarianceModel"):
        hybrid_loss(GaussianScore(MEAN, COV, sde), x0)
    model = LearnedVarianceModel(MLP(3, hidden=8, depth=1, out_dim=6), sde)
    with pytest.raises(ValueError, match="k must be int64 steps of shape"):
        hybrid_loss(model, x0, k=torch.full((4,), 2.0))
    with pytest.raises(ValueError, match="lam must be >= 0"):
        hybrid_loss(model, x0, lam=-1.0)


def test_the_trainer_runs_the_hybrid_objective_and_the_run_saves_and_loads(tmp_path):
    """hybrid_objective through the Trainer on digits-like discrete data: the loss falls, the
    checkpoint of a LearnedVarianceModel loads back into one and samples with its variance."""
    from sdegen.training import Trainer, hybrid_objective, load_checkpoint

    torch.manual_seed(0)
    sde = _ddpm(50)
    w = 2 / 17  # the digits' bin width
    data = (-1 + (torch.randint(0, 17, (256, 3), generator=_gen(0)) + 0.5) * w).float()
    model = LearnedVarianceModel(MLP(3, hidden=32, depth=2, out_dim=6), sde).float()
    trainer = Trainer(model, hybrid_objective(bin_width=w), data, batch_size=64, lr=3e-3,
                      ema_decay=None, run_dir=tmp_path, ckpt_every=60, progress=False)  # fmt: skip
    history = trainer.fit(60)
    first = sum(h["loss"] for h in history[:2]) / 2
    assert history[-1]["loss"] < first
    again = LearnedVarianceModel(MLP(3, hidden=32, depth=2, out_dim=6), sde).float()
    load_checkpoint(sdegen.training.latest_checkpoint(tmp_path), again)
    x, t = data[:4], torch.full((4,), 0.5)
    torch.testing.assert_close(again.variance(x, t), model.variance(x, t))
    r = sdegen.sample(again, sde, (8, 3), method="ancestral", variance="learned",
                      schedule=respaced_grid(sde, 10), generator=_gen(1))  # fmt: skip
    assert r.nfe == 11 and bool(torch.isfinite(r.x).all())


def test_config_learned_variance_builds_the_model_and_trains_it_by_l_hybrid(tmp_path):
    from dataclasses import replace

    from sdegen.assembly import TrainConfig, build_model, load_data, make_trainer

    cfg = TrainConfig(data="toy:moons", n_train=256, sde="ddpm", sde_params={"n": 50},
                      learned_variance=True, batch_size=64, steps=2, ckpt_every=0,
                      network_params={"hidden": 16, "depth": 1})  # fmt: skip
    data = load_data(cfg.data, n_train=256)
    model = build_model(cfg, (2,))
    assert isinstance(model, LearnedVarianceModel) and model.net.net.out_dim == 4
    trainer = make_trainer(cfg, data, model, tmp_path, progress=False)
    assert "hybrid" in trainer.objective.__qualname__
    assert len(trainer.fit(2)) >= 1
    unet = build_model(TrainConfig(data="digits", learned_variance=True), (1, 8, 8))
    assert unet.net.net.out_channels == 2
    for change, match in (
        ({"sde": "vp", "sde_params": {}}, "needs an SDE on DDPM's grid"),
        ({"weighting": "sigma2"}, "weighting must be 'simple'"),
        ({"objective": "vlb"}, "objective must be 'dsm'"),
    ):
        bad = replace(cfg, **change)
        with pytest.raises(ValueError, match=match):
            make_trainer(bad, data, build_model(bad, (2,)), None, progress=False)


def test_cli_samples_a_learned_variance_run_with_its_own_variance(tmp_path):
    import numpy as np

    import sdegen
    from sdegen.assembly import load_run
    from sdegen.cli import main

    run = str(tmp_path / "lv")
    sets = ["sde=ddpm", "learned_variance=true", "steps=3", "batch_size=64", "n_train=256",
            "network_params={hidden: 16, depth: 1}"]  # fmt: skip
    assert main(["train", "--run", run, *[a for s in sets for a in ("--set", s)], "--quiet"]) == 0
    out = tmp_path / "s"
    args = ["sample", "--run", run, "--method", "ancestral", "--steps", "5", "--n", "4"]
    assert main([*args, "--quiet", "--out", str(out)]) == 0
    model = load_run(run).model
    kw = dict(method="ancestral", steps=5, generator=torch.Generator().manual_seed(0))
    learned = sdegen.sample(model, model.sde, (4, 2), variance="learned", **kw).x
    assert np.array_equal(np.load(out.with_suffix(".npz"))["x"], learned.numpy())
    kw["generator"] = torch.Generator().manual_seed(0)
    assert not torch.equal(sdegen.sample(model, model.sde, (4, 2), **kw).x, learned)
