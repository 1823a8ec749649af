"""Discrete-time DDPM: schedules, posterior, KL, decoder, mu parametrization, integer-time
training and the variational bound, each against a closed form or an independent computation."""

from __future__ import annotations

import math

import numpy
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.distributions import Normal, kl_divergence

from sdegen import ScoreModel, sample
from sdegen.models import MLP, GaussianScore
from sdegen.models.base import from_x0_eps, to_x0_eps
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
from sdegen.training import StepRandom, dsm_loss, sample_times, score_matching, times_from_uniform
from sdegen.training.vlb import vlb_loss, vlb_objective, vlb_terms

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


@settings(max_examples=40)
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


_GRIDS = {
    "ddpm": (torch.linspace(-1, 1, 256), 2 / 255),  # values -1, ..., 1
    "centres": (-1 + (torch.arange(256) + 0.5) * 2 / 256, 2 / 256),  # sdegen.data.quantize
    "digits": (-1 + (torch.arange(17) + 0.5) * 2 / 17, 2 / 17),
}


@pytest.mark.parametrize("grid", list(_GRIDS))
@pytest.mark.parametrize(
    ("mean", "var"), [(0.3, 0.04), (0.999, 1e-6), (-3.0, 0.5), (5.0, 0.01), (0.0, 100.0)]
)
def test_discretized_decoder_sums_to_one_and_is_the_cdf_difference(grid, mean, var):
    x, w = _GRIDS[grid]
    logp = discretized_gaussian_log_likelihood(x, torch.tensor(mean), torch.tensor(var), w)
    assert float(torch.logsumexp(logp, 0)) == pytest.approx(0.0, abs=1e-9)
    d = Normal(torch.tensor(mean), torch.tensor(var).sqrt())
    edges = torch.cat([torch.tensor([-math.inf]), (x[1:] + x[:-1]) / 2, torch.tensor([math.inf])])
    mass = d.cdf(edges[1:]) - d.cdf(edges[:-1])
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


# ---- mu parametrization ----------------------------------------------------------------------


def _ddpm(name: str = "linear", n: int = 100):
    return VPSDE.from_betas(beta_schedule(name, n))


@pytest.mark.parametrize("make", [_ddpm, lambda: SubVPSDE.from_betas(beta_schedule("cosine", 50))])
def test_mu_parametrization_round_trips(make):
    sde = make()
    g = torch.Generator().manual_seed(3)
    x0, eps = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    # grid times (t = 1/N included, where mu = x0) and times between grid points
    grid = grid_times(sde)
    t = torch.cat([grid[[0, 1, 5, -1]], grid[0] + torch.tensor([0.3, 1.7, 40.4, 48.9]) * grid[0]])
    a, s = sde.alpha(t), sde.sigma(t)
    x = a[:, None] * x0 + s[:, None] * eps
    mu = from_x0_eps("mu", x0, eps, a, s, sde=sde, t=t)
    # the target is the posterior mean (checked where the previous time is 0 or >= t_min)
    prev = previous_grid_time(sde, t)
    ok = (prev == 0) | (prev >= sde.t_min)
    assert int(ok.sum()) == 7  # t = 1.3/N: the previous time is below t_min
    mean, _ = posterior(sde, x0[ok], x[ok], prev[ok], t[ok])
    torch.testing.assert_close(mu[ok], mean, rtol=1e-12, atol=1e-12)
    x0_r, eps_r = to_x0_eps("mu", mu, x, a, s, sde=sde, t=t)
    torch.testing.assert_close(x0_r, x0, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(eps_r, eps, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(mu[0], x0[0])  # t = 1/N: the previous step is the data


class _MuOracle(torch.nn.Module):
    """A network returning the exact mu of an analytic model (time_input="t")."""

    def __init__(self, truth, sde):
        super().__init__()
        self.truth, self.sde = truth, sde

    def forward(self, x_in, t):
        x0, eps = self.truth.x0_eps(x_in, t)
        return from_x0_eps("mu", x0, eps, self.sde.alpha(t), self.sde.sigma(t), sde=self.sde, t=t)


def test_score_model_in_mu_parametrization_samples_like_the_truth():
    sde = _ddpm("cosine", 200)
    truth = GaussianScore(torch.tensor([0.5, -1.0]), torch.diag(torch.tensor([0.3, 2.0])), sde)
    model = ScoreModel(_MuOracle(truth, sde), sde, "mu", time_input="t", sigma_data=None)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    t = grid_times(sde)[[3, 50, 100, 150, 190]]
    torch.testing.assert_close(model.score(x, t), truth.score(x, t), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(model.denoise(x, t), truth.denoise(x, t), rtol=1e-8, atol=1e-8)
    a = sample(
        model,
        sde,
        (2000, 2),
        method="ddim",
        nfe=20,
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(1),
    )
    b = sample(
        truth,
        sde,
        (2000, 2),
        method="ddim",
        schedule=a.ts,  # the default grid is placed by each model's data std: share a's
        dtype=torch.float64,
        generator=torch.Generator().manual_seed(1),
    )
    torch.testing.assert_close(a.x, b.x, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="parametrization 'mu' .* needs an SDE on a discrete grid"):
        ScoreModel(torch.nn.Identity(), VPSDE(), "mu")
    with pytest.raises(ValueError, match="parametrization 'mu' needs sde= and t="):
        to_x0_eps("mu", x, x, t, t)
    with pytest.raises(ValueError, match="unknown parametrization 'mean'; expected one of"):
        to_x0_eps("mean", x, x, t, t)


# ---- integer timesteps -----------------------------------------------------------------------


def test_discrete_times_are_the_grid_and_uniform():
    sde = _ddpm("linear", 50)
    t = sample_times(
        sde, 20_000, time_sampling="discrete", generator=torch.Generator().manual_seed(0)
    )
    k = grid_index(sde, t)
    torch.testing.assert_close(t, grid_times(sde, dtype=torch.float32)[k - 1], rtol=0, atol=0)
    counts = torch.bincount(k, minlength=51)[1:].double()
    assert int(counts.min()) > 0 and counts.sum() == 20_000
    chi2 = float(((counts - 400) ** 2 / 400).sum())  # 49 degrees of freedom
    assert chi2 < 90  # P(chi2_49 > 90) < 3e-4
    # u in [0, 1) maps onto k = floor(N u) + 1, ends included
    u = torch.tensor([0.0, 0.0199, 0.02, 0.5, 0.9999999])
    torch.testing.assert_close(
        times_from_uniform(sde, u, time_sampling="discrete"),
        torch.tensor([1, 1, 2, 26, 50], dtype=torch.float64) / 50,
    )


def test_discrete_dsm_loss_is_the_hand_computed_one():
    sde = _ddpm("cosine", 100)
    truth = GaussianScore(torch.zeros(2), 0.5 * torch.eye(2), sde)
    model = ScoreModel(_MuOracle(truth, sde), sde, "mu", time_input="t", sigma_data=None)
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(16, 2, generator=g)
    loss = dsm_loss(
        model,
        x0,
        reduce=False,
        time_sampling="discrete",
        generator=torch.Generator().manual_seed(5),
    )
    # the same draws by hand: times first, then the noise
    g = torch.Generator().manual_seed(5)
    k = torch.floor(torch.rand(16, generator=g, dtype=torch.float64) * 100) + 1
    noise = torch.randn(16, 2, generator=g)
    ab = torch.cumprod(1 - beta_schedule("cosine", 100), 0)[k.long() - 1]
    x_t = ab.sqrt()[:, None] * x0 + (1 - ab).sqrt()[:, None] * noise
    # exact eps prediction of N(0, 0.5 I) data: E[eps | x_t] = sqrt(1 - ab) x_t / (0.5 ab + 1 - ab)
    eps_hat = (1 - ab).sqrt()[:, None] * x_t / (0.5 * ab + 1 - ab)[:, None]
    want = ((eps_hat - noise) ** 2).mean(dim=1)
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-9)


def test_discrete_time_sampling_refusals():
    with pytest.raises(ValueError, match="time_sampling='discrete' needs an SDE on DDPM's grid"):
        sample_times(VPSDE(), 4, time_sampling="discrete")
    with pytest.raises(ValueError, match="unknown time_sampling 'grid'; expected one of"):
        sample_times(_ddpm(), 4, time_sampling="grid")
    with pytest.raises(ValueError, match="cannot be combined with importance_sampling"):
        sample_times(_ddpm(), 4, time_sampling="discrete", importance_sampling=True)
    with pytest.raises(ValueError, match="weighting='likelihood' weights the continuous-time"):
        score_matching("likelihood", time_sampling="discrete")
    model = ScoreModel(torch.nn.Identity(), VPSDE())
    with pytest.raises(ValueError, match="weighting='likelihood' weights the continuous-time"):
        dsm_loss(model, torch.zeros(2, 2), weighting="likelihood", time_sampling="discrete")


def test_score_matching_objective_draws_grid_times():
    sde = _ddpm("linear", 40)
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t):
            seen.append(t.clone())
            return torch.zeros_like(x)

    model = ScoreModel(Spy(), sde, "eps", time_input="t", sigma_data=None)
    objective = score_matching(time_sampling="discrete")
    rnd = StepRandom(seed=0, step=0, rank=0, world=1, global_batch=64)
    loss = objective(model, torch.zeros(64, 2), rnd)
    t = torch.cat(seen)
    grid_index(sde, t)  # raises unless every time is k/40
    assert len(torch.unique(t)) > 20
    assert float(loss) == pytest.approx(1.0, rel=0.3)  # zero prediction: mean of eps^2


# ---- the variational bound -------------------------------------------------------------------

_M, _S = 0.1, 0.3  # Gaussian data N(0.1, 0.3^2), one dimension


def _gaussian_ddpm(n: int, schedule: str = "linear"):
    betas = beta_schedule(schedule, n)
    sde = VPSDE.from_betas(betas)
    model = GaussianScore(torch.tensor([_M]), torch.tensor([[_S**2]]), sde)
    return betas, sde, model


def _hand_terms(betas, x0, noise, variance, w):
    """Every term of the bound written out in betas (Ho et al. 2020, eqs. 5-7 and 3.3) for the
    exact model of N(_M, _S^2) data: x0 (B,), noise (N, B) -> terms (B, N) and L_T (B,)."""
    n = betas.numel()
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1), ab[:-1]])
    beta_tilde = (1 - ab_prev) / (1 - ab) * betas
    terms = []
    for i in range(n):  # step k = i + 1
        x_k = ab[i].sqrt() * x0 + (1 - ab[i]).sqrt() * noise[i]
        x0_hat = _M + _S**2 * ab[i].sqrt() / (ab[i] * _S**2 + 1 - ab[i]) * (x_k - ab[i].sqrt() * _M)
        c0 = ab_prev[i].sqrt() * betas[i] / (1 - ab[i])
        ct = (1 - betas[i]).sqrt() * (1 - ab_prev[i]) / (1 - ab[i])
        mu_model = c0 * x0_hat + ct * x_k
        if variance == "forward":
            var = betas[i]
        else:
            var = beta_tilde[i] if i > 0 else beta_tilde[1]
        if i == 0:
            d = Normal(mu_model, var.sqrt())
            hi = torch.where(x0 > 1 - w, torch.tensor(1.0), d.cdf(x0 + w / 2))
            lo = torch.where(x0 < -1 + w, torch.tensor(0.0), d.cdf(x0 - w / 2))
            terms.append(-torch.log(hi - lo))
        else:
            mu_q = c0 * x0 + ct * x_k
            bt = beta_tilde[i]
            terms.append(0.5 * (torch.log(var / bt) + bt / var + (mu_q - mu_model) ** 2 / var - 1))
    prior = 0.5 * ((1 - ab[-1]) + ab[-1] * x0**2 - 1 - torch.log(1 - ab[-1]))
    return torch.stack(terms, 1), prior


@pytest.mark.parametrize("variance", ["posterior", "forward"])
def test_vlb_terms_equal_the_closed_forms_in_betas(variance):
    betas, sde, model = _gaussian_ddpm(60, "cosine")
    w = 2 / 256
    x0 = torch.tensor([-1 + w / 2, -0.4 + w / 2, _M + w / 2, 0.7 - w / 2, 1 - w / 2])
    noise = torch.randn(60, 5, 1, generator=torch.Generator().manual_seed(6))
    r = vlb_terms(model, x0[:, None], variance=variance, bin_width=w, noise=noise, max_batch=64)
    terms, prior = _hand_terms(betas, x0, noise[..., 0], variance, w)
    torch.testing.assert_close(r.terms, terms, rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(r.prior, prior, rtol=1e-7, atol=1e-12)
    torch.testing.assert_close(r.total, terms.sum(1) + prior)
    torch.testing.assert_close(r.bits_per_dim, r.total / math.log(2))


def _model_nll_bits(betas, variance, x, w):
    """Exact -log2 p_theta(x) of the discrete data x (the bin centres) under the DDPM built on
    the exact Gaussian model: every reverse step is affine-Gaussian, so x_1 ~ N(m1, v1) exactly,
    and the decoder's bin mass under N(A m1 + b, sigma_1^2 + A^2 v1) follows in closed form."""
    n = betas.numel()
    ab = torch.cumprod(1 - betas, 0)
    ab_prev = torch.cat([torch.ones(1), ab[:-1]])
    beta_tilde = (1 - ab_prev) / (1 - ab) * betas
    mean, var = torch.tensor(0.0), torch.tensor(1.0)  # the prior of x_N
    for i in range(n - 1, -1, -1):
        g = _S**2 * ab[i].sqrt() / (ab[i] * _S**2 + 1 - ab[i])  # x0_hat = _M + g (x - a _M)
        c0 = ab_prev[i].sqrt() * betas[i] / (1 - ab[i])
        ct = (1 - betas[i]).sqrt() * (1 - ab_prev[i]) / (1 - ab[i])
        A, b = c0 * g + ct, c0 * (_M - g * ab[i].sqrt() * _M)
        step_var = betas[i] if variance == "forward" else (beta_tilde[i] if i else beta_tilde[1])
        mean, var = A * mean + b, A**2 * var + step_var
    d = Normal(mean, var.sqrt())
    edges = torch.cat([torch.tensor([-math.inf]), x[1:] - w / 2, torch.tensor([math.inf])])
    return -torch.log(d.cdf(edges[1:]) - d.cdf(edges[:-1])) / math.log(2)


# Measured (N = 100): entropy 7.3023 bits; forward: model NLL 7.3042, bound 7.3577; posterior
# (beta_tilde, too small a variance for few steps, Nichol & Dhariwal 2021 section 3.1): model NLL
# 7.3153, bound 8.959.
@pytest.mark.parametrize(("variance", "gap"), [("forward", 0.1), ("posterior", 2.0)])
def test_vlb_bounds_the_exact_nll_of_discretized_gaussian_data(variance, gap):
    # E over data (all 256 bins, weighted by their probability) and over the noise (Gauss-Hermite
    # nodes as the noise of every step) of the bound, against the model's exact NLL and the
    # data's entropy: E bound >= cross-entropy >= entropy.
    n, w = 100, 2 / 256
    betas, sde, model = _gaussian_ddpm(n)
    x = -1 + (torch.arange(256) + 0.5) * w
    d = Normal(_M, _S)
    edges = torch.cat([torch.tensor([-math.inf]), x[1:] - w / 2, torch.tensor([math.inf])])
    p = d.cdf(edges[1:]) - d.cdf(edges[:-1])
    keep = p > 1e-12
    x, p = x[keep], p[keep] / p[keep].sum()
    nodes, weights = numpy.polynomial.hermite_e.hermegauss(12)
    nodes, weights = torch.tensor(nodes), torch.tensor(weights) / math.sqrt(2 * math.pi)
    B, J = x.numel(), nodes.numel()
    x0 = x.repeat_interleave(J)[:, None]
    noise = nodes.repeat(B)[None, :, None].expand(n, B * J, 1)
    r = vlb_terms(model, x0, variance=variance, bin_width=w, noise=noise)
    bound = (r.bits_per_dim.reshape(B, J) * weights).sum(1)  # E over the noise, per bin
    expected_bound = float((p * bound).sum())
    cross_entropy = float((p * _model_nll_bits(betas, variance, x, w)).sum())
    entropy = float(-(p * p.log()).sum() / math.log(2))
    assert entropy <= cross_entropy + 1e-9
    assert cross_entropy <= expected_bound  # the bound, in expectation, is a bound
    assert expected_bound - entropy < gap  # and near it (tight with the forward variance)
    # per bin too: the bound exceeds the model's own NLL of that bin
    assert bool((bound >= _model_nll_bits(betas, variance, x, w) - 1e-6).all())


def test_vlb_loss_is_an_unbiased_estimate_of_the_full_bound():
    n = 50
    betas, sde, model = _gaussian_ddpm(n, "cosine")
    x0 = torch.tensor([[0.3 + 1 / 256], [-0.5 + 1 / 256]])
    noise = torch.randn(n, 2, 1, generator=torch.Generator().manual_seed(7))
    full = vlb_terms(model, x0, noise=noise)
    # every step with the same noise: the mean over k of the one-term estimate is the sum
    k = torch.arange(1, n + 1).repeat_interleave(2)
    one = vlb_loss(model, x0.repeat(n, 1), k=k, noise=noise.reshape(-1, 1), reduce=False)
    torch.testing.assert_close(one.reshape(n, 2).mean(0), full.bits_per_dim, rtol=1e-10, atol=0)
    # drawn steps and noise: the Monte-Carlo mean matches the full bound averaged over noise
    draws = 20_000
    est = vlb_loss(
        model, x0.repeat(draws, 1), reduce=False, generator=torch.Generator().manual_seed(8)
    ).reshape(draws, 2)
    ref = torch.stack(
        [
            vlb_terms(model, x0, generator=torch.Generator().manual_seed(s)).bits_per_dim
            for s in range(40)
        ]
    ).mean(0)
    se = est.std(0) / math.sqrt(draws)
    assert bool(((est.mean(0) - ref).abs() < 4 * se + 0.02 * ref.abs()).all()), (est.mean(0), ref)


def test_vlb_with_a_callable_variance_and_continuous_data():
    betas, sde, model = _gaussian_ddpm(40)
    x0 = torch.tensor([[0.25], [-0.1]])
    noise = torch.randn(40, 2, 1, generator=torch.Generator().manual_seed(9))
    calls = []

    def forward_variance(x_t, k):
        calls.append(k)
        return betas[k - 1]  # (B,): one variance per example

    a = vlb_terms(model, x0, variance=forward_variance, noise=noise)
    b = vlb_terms(model, x0, variance="forward", noise=noise)
    torch.testing.assert_close(a.terms, b.terms)
    assert torch.equal(torch.cat(calls).unique(), torch.arange(1, 41))
    # continuous data: the decoder is the Gaussian density at x0
    c = vlb_terms(model, 3 * x0, variance="forward", noise=noise, bin_width=None)
    x1 = sde.perturb(3 * x0, torch.full((2,), 1 / 40), noise[0])
    mean = model.denoise(x1, torch.full((2,), 1 / 40))  # mu_theta(x_1, 1) = x0_hat
    want = -Normal(mean, betas[0].sqrt()).log_prob(3 * x0)[:, 0]
    torch.testing.assert_close(c.terms[:, 0], want)


def test_vlb_trains_a_mean_and_a_variance():
    # The loss is differentiable in the model and, with detach_mean, only in the variance.
    sde = _ddpm("linear", 100)
    net = MLP(2, hidden=16, depth=2)
    model = ScoreModel(net, sde, "eps")
    log_var = torch.zeros((), requires_grad=True)
    x0 = torch.rand(8, 2, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss = vlb_loss(model, x0, bin_width=None, generator=torch.Generator().manual_seed(1))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    net.zero_grad()
    loss = vlb_loss(
        model,
        x0,
        variance=lambda x_t, k: torch.exp(log_var) * 1e-2 * torch.ones_like(x_t),
        bin_width=None,
        detach_mean=True,
        generator=torch.Generator().manual_seed(1),
    )
    loss.backward()
    assert log_var.grad is not None and float(log_var.grad) != 0
    assert all(p.grad is None or float(p.grad.abs().max()) == 0 for p in net.parameters())


def test_vlb_objective_in_the_trainer_and_refusals():
    sde = _ddpm("linear", 100)
    model = ScoreModel(MLP(2, hidden=16, depth=2), sde, "eps")
    objective = vlb_objective(bin_width=2 / 17)
    rnd = StepRandom(seed=0, step=0, rank=0, world=1, global_batch=4)
    x0 = (
        -1
        + (torch.randint(0, 17, (4, 2), generator=torch.Generator().manual_seed(0)) + 0.5) * 2 / 17
    )
    loss = objective(model, x0, rnd)
    assert loss.ndim == 0 and torch.isfinite(loss)
    with pytest.raises(ValueError, match="unknown variance 'learned'; expected one of"):
        vlb_objective(variance="learned")
    with pytest.raises(ValueError, match="x0 must lie in \\[-1, 1\\] for the discretized decoder"):
        vlb_loss(model, 2 * torch.ones(2, 2))
    with pytest.raises(ValueError, match="needs an SDE on DDPM's discrete grid"):
        vlb_loss(ScoreModel(MLP(2), VPSDE(), "eps"), x0)
    with pytest.raises(ValueError, match=r"k must be int64 steps of shape \(4,\) in 1..100"):
        vlb_loss(model, x0, k=torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"noise must have shape \(N, B, \*D\)"):
        vlb_terms(model, x0, noise=torch.zeros(4, 2))
    with pytest.raises(ValueError, match="variance\\(x_t, k\\) must return a tensor broadcastable"):
        vlb_loss(model, x0, variance=lambda x, k: torch.ones(3))


# ---- the config ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys",
    [
        ["objective=vlb"],
        ["time_sampling=discrete", "parametrization=mu"],
    ],
    ids=["vlb", "discrete_dsm_mu"],
)
def test_a_run_trains_on_ddpms_grid(tmp_path, keys):
    from sdegen.assembly.config import load_config
    from sdegen.assembly.runs import build_model, make_trainer
    from sdegen.assembly.tables import load_data

    tiny = ["data=toy:moons", "n_train=128", "batch_size=32", "steps=2", "ckpt_every=0"]
    sde_keys = ["sde=ddpm", "sde_params={schedule: cosine, n: 100}", "network_params={hidden: 16}"]
    cfg = load_config(None, [*tiny, *sde_keys, *keys])
    data = load_data(cfg.data, n_train=cfg.n_train, seed=cfg.seed)
    model = build_model(cfg, data.event_shape)
    seen = []
    real = model.x0_eps

    def spy(x, t, y=None):
        seen.append(t.detach().clone())
        return real(x, t) if y is None else real(x, t, y)

    model.x0_eps = spy
    trainer = make_trainer(cfg, data, model, tmp_path / "run", progress=False)
    logs = trainer.fit(cfg.steps)
    assert all(math.isfinite(rec["loss"]) for rec in logs if "loss" in rec)
    t = torch.cat(seen)
    grid_index(model.sde, t)  # every training time is on the grid k / 100
    assert model.sde.schedule.N == 100
    with pytest.raises(ValueError, match="config key objective must be one of dsm, vlb"):
        load_config(None, ["objective=elbo"])
    bad = load_config(None, [*tiny, "network_params={hidden: 16}", keys[0]])  # sde: vp
    with pytest.raises(ValueError, match="needs an SDE on DDPM's grid \\(sde: ddpm\\)"):
        make_trainer(bad, data, build_model(bad, data.event_shape), tmp_path / "bad")
