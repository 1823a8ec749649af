"""Langevin dynamics and sliced score matching against closed forms on Gaussians.

Tolerances are Monte-Carlo standard errors (SE) of the sample size used, times 5: for n
independent chains a sample mean has SE sqrt(var/n) and a sample covariance entry (i, j)
SE sqrt((S_ii S_jj + S_ij^2)/n) (Gaussian fourth moments), so a 5-SE miss has probability below
1e-6 when the code is right, while the effects tested (ULA's bias, a wrong step size or scaling)
are tens of SEs.
"""

from __future__ import annotations

import math

import pytest
import torch

import sdegen
from sdegen.sde import EDMSDE, VESDE, VPSDE, SubVPSDE
from sdegen.solvers import METHODS, langevin
from sdegen.training import StepRandom, Trainer, dsm_loss, held_out_loss
from sdegen.training.sliced import (
    sliced_score_matching,
    sliced_score_matching_loss,
    ssm_loss,
)

F64 = torch.float64
MU = torch.tensor([0.5, -1.0])
COV = torch.tensor([[1.0, 0.6], [0.6, 0.8]])


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussian_score(mu: torch.Tensor, cov: torch.Tensor):
    P = torch.linalg.inv(cov)
    return lambda x: -(x - mu) @ P  # P is symmetric


def _check_moments(x: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, k: float = 5.0):
    n = x.shape[0]
    se_mean = (cov.diagonal() / n).sqrt()
    assert bool(((x.mean(0) - mean).abs() < k * se_mean).all()), (x.mean(0), mean)
    d = cov.diagonal()
    se_cov = ((d[:, None] * d[None, :] + cov**2) / n).sqrt()
    emp = torch.cov(x.T)
    assert bool(((emp - cov).abs() < k * se_cov).all()), (emp, cov)


# ---- standalone Langevin: ULA's bias and MALA's exactness ------------------------------------


def test_ula_stationary_covariance_is_the_closed_form_bias():
    # Along each eigenvector of the covariance (eigenvalue l) ULA's stationary variance is
    # l / (1 - h / (4 l)) (module docstring of sdegen.solvers.langevin); the mean is unbiased.
    h = 0.5
    evals, U = torch.linalg.eigh(COV)
    expected = U @ torch.diag(evals / (1 - h / (4 * evals))) @ U.T
    n = 20000
    res = langevin(_gaussian_score(MU, COV), torch.zeros(n, 2), h, 80, generator=_gen(0))
    assert res.nfe == 80 and res.acceptance_rate is None
    _check_moments(res.x, MU, expected)
    # and the bias is resolved: the true covariance is many SEs away
    se = ((COV.diagonal() ** 2 * 2) / n).sqrt()
    assert bool(((torch.cov(res.x.T).diagonal() - COV.diagonal()) > 10 * se).all())


def test_ula_diverges_beyond_the_stability_bound():
    # |1 - h / (2 s^2)| > 1 for h > 4 s^2: the variance grows geometrically
    res = langevin(lambda x: -x, torch.zeros(1000, 1), 4.5, 60, generator=_gen(1))
    assert float(res.x.var()) > 1e3


def test_mala_is_exact_where_ula_is_biased():
    # The score model at a fixed time t: MALA's law is p_t = N(alpha mu, alpha^2 C + sigma^2 I)
    # exactly, from a start far away; ULA's at the same step is visibly off.
    sde = VPSDE()
    model = sdegen.GaussianScore(MU, COV, sde)
    t = 0.3
    a, s = float(sde.alpha(torch.tensor(t))), float(sde.sigma(torch.tensor(t)))
    cov_t = a**2 * COV + s**2 * torch.eye(2)
    x0 = torch.full((8000, 2), 3.0)
    h = 0.9

    def score_fn(x):
        return model.score(x, t)

    def log_prob(x):
        return model.log_prob(x, t)

    res = langevin(score_fn, x0, h, 60, metropolis=True, log_prob=log_prob, generator=_gen(2))
    assert res.nfe == 61
    assert 0.3 < res.acceptance_rate < 0.95
    assert res.acceptance.shape == (8000,)
    assert abs(float(res.acceptance.mean()) - res.acceptance_rate) < 1e-12
    _check_moments(res.x, a * MU, cov_t)
    ula = langevin(score_fn, x0, h, 60, generator=_gen(2))
    with pytest.raises(AssertionError):
        _check_moments(ula.x, a * MU, cov_t)


def test_mala_acceptance_rate_matches_quadrature():
    # Stationary acceptance of MALA on N(0, 1) with step h: E_{x ~ p, z ~ N(0,1)} min(1, r),
    # r = p(y) q(x|y) / (p(x) q(y|x)), y = (1 - h/2) x + sqrt(h) z, by a 2-D grid quadrature.
    h = 1.6
    g = torch.linspace(-8, 8, 1601, dtype=F64)
    x, z = torch.meshgrid(g, g, indexing="ij")
    y = (1 - h / 2) * x + math.sqrt(h) * z
    log_q = lambda a, b: -((a - (1 - h / 2) * b) ** 2) / (2 * h)  # noqa: E731  q(a | b)
    log_r = -0.5 * y**2 + 0.5 * x**2 + log_q(x, y) - log_q(y, x)
    w = torch.exp(-0.5 * (x**2 + z**2)) / (2 * math.pi) * (g[1] - g[0]) ** 2
    expected = float((w * torch.clamp(log_r.exp(), max=1.0)).sum())
    n = 20000
    x0 = torch.randn(n, 1, generator=_gen(3))  # stationary from the start
    res = langevin(
        lambda x: -x,
        x0,
        h,
        20,
        metropolis=True,
        log_prob=lambda x: -0.5 * (x**2).sum(1),
        generator=_gen(4),
    )
    # each step's acceptance is a mean of n independent Bernoullis; a mean over steps has at
    # most the SE of one step, sqrt(p (1 - p) / n)
    assert abs(res.acceptance_rate - expected) < 5 * math.sqrt(0.25 / n), (
        res.acceptance_rate,
        expected,
    )


def test_langevin_rejects_bad_arguments():
    x0 = torch.zeros(4, 2)
    score = lambda x: -x  # noqa: E731
    with pytest.raises(ValueError, match="step_size"):
        langevin(score, x0, 0.0, 3)
    with pytest.raises(ValueError, match="step_size"):
        langevin(score, x0, float("nan"), 3)
    with pytest.raises(ValueError, match="n_steps"):
        langevin(score, x0, 0.1, 0)
    with pytest.raises(ValueError, match="log_prob"):
        langevin(score, x0, 0.1, 3, metropolis=True)
    with pytest.raises(ValueError, match="metropolis"):
        langevin(score, x0, 0.1, 3, log_prob=lambda x: x.sum(1))
    with pytest.raises(ValueError, match=r"score_fn\(x\) must return a tensor of shape \(4, 2\)"):
        langevin(lambda x: x[:, :1], x0, 0.1, 3)
    with pytest.raises(ValueError, match=r"log_prob\(x\) must return .* \(4,\)"):
        langevin(score, x0, 0.1, 3, metropolis=True, log_prob=lambda x: x)
    with pytest.raises(ValueError, match="x0 holds 1 non-finite"):
        langevin(score, torch.tensor([[0.0, float("nan")]]), 0.1, 3)
    with pytest.raises(ValueError, match="x0 must be"):
        langevin(score, torch.zeros(4), 0.1, 3)
    with pytest.raises(TypeError, match="score_fn must be callable"):
        langevin("score", x0, 0.1, 3)


# ---- annealed Langevin: the exact law of the chain on Gaussian data --------------------------


def _annealed_moments(sde, ts, mu, cov, K, eps, denoise=True):
    """Mean and covariance of annealed Langevin's output for data N(mu, cov) with the exact
    score: every step is affine in x, so the law stays Gaussian; propagated in float64."""
    alpha, sigma = sde.alpha(ts), sde.sigma(ts)
    level_L = float(sigma[-1] / alpha[-1])
    D = len(mu)
    eye = torch.eye(D, dtype=F64)
    m, W = torch.zeros(D, dtype=F64), sde.prior_std**2 * eye
    for i in range(1, len(ts)):
        r = float(alpha[i] / alpha[i - 1])
        m, W = r * m, r**2 * W
        a, s = float(alpha[i]), float(sigma[i])
        P = torch.linalg.inv(a**2 * cov + s**2 * eye)
        h = eps * s**2 / level_L**2
        M = eye - h / 2 * P
        for _ in range(K):
            m, W = M @ m + h / 2 * a * P @ mu, M @ W @ M + h * eye
    if denoise:  # Tweedie at t_min: x0 = ((I - s^2 P) x + s^2 a P mu) / a
        E = eye - s**2 * P
        m, W = (E @ m + s**2 * a * P @ mu) / a, E @ W @ E / a**2
    return m, W


@pytest.mark.parametrize("make", [VPSDE, VESDE, SubVPSDE, EDMSDE])
def test_annealed_langevin_has_the_exact_law_of_its_recursion(make):
    sde = make()
    model = sdegen.GaussianScore(MU, COV, sde)
    ts = sdegen.solvers.get_schedule(sde, "log_snr", 6)
    level_L = float(sde.sigma(ts[-1:]) / sde.alpha(ts[-1:]))
    eps = 0.7 * level_L**2
    res = sdegen.sample(
        model, sde, (20000, 2), method="annealed_langevin", steps=6, K=2, eps=eps,
        generator=_gen(5), dtype=F64,
    )  # fmt: skip
    assert res.nfe == 6 * 2 + 1
    torch.testing.assert_close(res.ts, ts)
    _check_moments(res.x, *_annealed_moments(sde, ts, MU, COV, 2, eps))


def test_annealed_langevin_ends_at_the_data_moments():
    # With the exact score, annealed Langevin's law tends to the data law as the evaluations
    # grow: its covariance error (the chain lags behind the shrinking levels) falls like 1/NFE,
    # to 2% at 900 evaluations; and the samples follow the recursion's moments.
    sde = VPSDE()
    model = sdegen.GaussianScore(MU, COV, sde)
    errors = []
    for L, K in ((30, 3), (100, 3), (300, 3)):
        ts = sdegen.solvers.get_schedule(sde, "log_snr", L)
        eps = 2.0 * float(sde.sigma(ts[-1:]) / sde.alpha(ts[-1:])) ** 2  # the default
        m, W = _annealed_moments(sde, ts, MU, COV, K, eps)
        torch.testing.assert_close(m, MU, atol=1e-3, rtol=0)
        errors.append(float((W - COV).abs().max()))
    assert errors[0] > 2.5 * errors[1] > 2.5**2 * errors[2] and errors[2] < 0.02, errors
    ts = sdegen.solvers.get_schedule(sde, "log_snr", 100)
    level_L = float(sde.sigma(ts[-1:]) / sde.alpha(ts[-1:]))
    m, W = _annealed_moments(sde, ts, MU, COV, 1, 2.0 * level_L**2)
    res = sdegen.sample(
        model, sde, (20000, 2), method="annealed_langevin", steps=100, generator=_gen(6),
        dtype=F64,
    )  # fmt: skip
    assert res.nfe == 101
    _check_moments(res.x, m, W)


def test_annealed_langevin_counts_every_evaluation_and_takes_an_nfe_budget():
    sde = VESDE()
    calls = []

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def score(self, x, t):
            calls.append("score")
            return self.inner.score(x, t)

        def denoise(self, x, t):
            calls.append("denoise")
            return self.inner.denoise(x, t)

        def eps(self, x, t):
            calls.append("eps")
            return self.inner.eps(x, t)

    model = Spy(sdegen.GaussianScore(MU, COV, sde))
    res = sdegen.sample(model, sde, (8, 2), method="annealed_langevin", steps=4, K=3)
    assert res.nfe == len(calls) == 13 and calls[-1] == "denoise"
    assert METHODS["annealed_langevin"].nfe(4, {"K": 3}) == 12
    res = sdegen.sample(model.inner, sde, (8, 2), method="annealed_langevin", nfe=30, K=4)
    assert (res.nfe, len(res.ts)) == (29, 8)  # 7 levels of 4 steps and the denoise
    for bad, match in (({"K": 0}, "K must be"), ({"eps": -1.0}, "eps must be > 0")):
        with pytest.raises(ValueError, match=match):
            sdegen.sample(model.inner, sde, (8, 2), method="annealed_langevin", steps=3, **bad)


# ---- sliced score matching --------------------------------------------------------------------


def _hyvarinen(A, b, mu, cov):
    """E_p[tr(ds/dx) + 1/2 ||s||^2] for s(x) = -A x + b, p = N(mu, cov)."""
    r = b - A @ mu
    return -torch.trace(A) + 0.5 * (torch.trace(A @ cov @ A.T) + r @ r)


@pytest.mark.parametrize(
    "projection, vr", [("rademacher", False), ("rademacher", True), ("gaussian", False)]
)
def test_ssm_at_one_level_is_explicit_score_matching_up_to_a_constant(projection, vr):
    # For a linear score s(x) = -A x + b on N(mu, C): SSM's expectation is Hyvarinen's
    # objective, which is 1/2 E||s - grad log p||^2 (closed form) minus 1/2 tr(C^-1).
    A = torch.tensor([[1.3, -0.4], [0.2, 0.7]])
    b = torch.tensor([0.3, -0.2])
    P = torch.linalg.inv(COV)
    r = b - A @ MU
    esm = 0.5 * (torch.trace((A - P) @ COV @ (A - P).T) + r @ r)
    target = esm - 0.5 * torch.trace(P)
    torch.testing.assert_close(_hyvarinen(A, b, MU, COV), target)
    n = 20000
    x = MU + torch.randn(n, 2, generator=_gen(7)) @ torch.linalg.cholesky(COV).T
    score_fn = lambda x: -x @ A.T + b  # noqa: E731
    with torch.no_grad():
        per = sliced_score_matching_loss(
            score_fn, x, projection=projection, variance_reduction=vr, generator=_gen(8),
            reduce=False,
        )  # fmt: skip
        exact = sliced_score_matching_loss(score_fn, x, projection="exact", reduce=False)
    # the exact trace is tr(-A) for every x
    torch.testing.assert_close(exact, -torch.trace(A) + 0.5 * (score_fn(x) ** 2).sum(1))
    assert abs(float(per.mean()) - float(target)) < 5 * float(per.std()) / math.sqrt(n)
    if vr:  # SSM-VR only randomises the trace term, so it is closer to the exact objective
        plain = sliced_score_matching_loss(score_fn, x, generator=_gen(8), reduce=False)
        assert float((per - exact).var()) < float((plain - exact).var())


def test_gradient_descent_on_ssm_recovers_the_precision():
    # The minimiser of Hyvarinen's objective over linear scores on samples x is A = S^-1,
    # b = S^-1 m (S, m: the samples' covariance and mean): SSM's gradient steps reach it.
    n = 4000
    x = MU + torch.randn(n, 2, generator=_gen(9)) @ torch.linalg.cholesky(COV).T
    S = torch.cov(x.T, correction=0)
    P_hat = torch.linalg.inv(S)
    A = torch.eye(2, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    opt = torch.optim.Adam([A, b], lr=0.05)
    g = _gen(10)
    for step in range(300):
        if step == 200:
            opt.param_groups[0]["lr"] = 0.005
        loss = sliced_score_matching_loss(lambda x: -x @ A.T + b, x, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.testing.assert_close(A.detach(), P_hat, atol=0.03, rtol=0)
    torch.testing.assert_close(b.detach(), P_hat @ x.mean(0), atol=0.03, rtol=0)
    # and the sample precision is the true one to the sampling error of n = 4000
    torch.testing.assert_close(P_hat, torch.linalg.inv(COV), atol=0.15, rtol=0)


@pytest.mark.parametrize("weighting, constant", [("sigma2", 2.0), ("simple", 1.0)])
def test_noise_conditional_ssm_is_dsm_minus_a_constant(weighting, constant):
    # E[DSM] - E[SSM] = E_t lambda(t) D / sigma(t)^2 for every model: D for sigma2, 1 for
    # simple (sdegen.training.sliced); checked on the true score and on a wrong one.
    sde = VPSDE()
    n = 20000
    x0 = MU + torch.randn(n, 2, generator=_gen(11)) @ torch.linalg.cholesky(COV).T
    t = sdegen.training.sample_times(sde, n, generator=_gen(12), dtype=F64)
    noise = torch.randn(n, 2, generator=_gen(13))
    for model in (
        sdegen.GaussianScore(MU, COV, sde),
        sdegen.GaussianScore(-MU, 0.5 * torch.eye(2), sde),
    ):
        kw = dict(weighting=weighting, t=t, noise=noise, reduce=False)
        with torch.no_grad():
            dsm = dsm_loss(model, x0, **kw)
            ssm = ssm_loss(model, x0, projection="exact", **kw)
        diff = dsm - ssm
        assert abs(float(diff.mean()) - constant) < 5 * float(diff.std()) / math.sqrt(n)


class _LearnedGaussian(torch.nn.Module):
    """The exact score family of N(m, diag(v)) data under an SDE: s(x, t) = -(x - alpha m) /
    (alpha^2 v + sigma^2), with m and log v learned."""

    def __init__(self, sde) -> None:
        super().__init__()
        self.sde = sde
        self.m = torch.nn.Parameter(torch.zeros(2))
        self.log_v = torch.nn.Parameter(torch.zeros(2))

    def score(self, x, t):
        a, s = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        return -(x - a * self.m) / (a**2 * self.log_v.exp() + s**2)


def test_trainer_with_noise_conditional_ssm_learns_the_gaussian(tmp_path):
    sde = VPSDE()
    v = torch.tensor([0.5, 2.0])
    data = MU + torch.randn(4000, 2, generator=_gen(14)) * v.sqrt()
    model = _LearnedGaussian(sde)
    objective = sliced_score_matching("sigma2", variance_reduction=True)
    trainer = Trainer(
        model, objective, data, batch_size=1000, lr=0.02, warmup=0, grad_clip=None,
        ema_decay=None, seed=0, run_dir=tmp_path, ckpt_every=0, log_every=1000,
        progress=False,
    )  # fmt: skip
    trainer.fit(250)
    torch.testing.assert_close(model.m.detach(), data.mean(0), atol=0.08, rtol=0)
    torch.testing.assert_close(model.log_v.exp().detach(), data.var(0), atol=0.05, rtol=0.08)
    # the held-out evaluation runs without gradients, and is the true score's value there too
    evaluate = held_out_loss(objective, data[:1000])
    assert math.isfinite(evaluate(model, 0)["test_loss"])


def test_ssm_objective_draws_split_invariant_probes():
    # The Trainer objective draws everything from StepRandom: the loss of a batch is the same
    # in one piece and in two (as on two DDP processes, rank 0 and 1 interleaved).
    sde = VESDE()
    model = sdegen.GaussianScore(MU, COV, sde)
    x = torch.randn(8, 2, generator=_gen(15))
    objective = sliced_score_matching("sigma2", n_projections=3)
    whole = objective(model, x, StepRandom(0, 5, 0, 1, 8))
    halves = [objective(model, x[r::2], StepRandom(0, 5, r, 2, 8)) for r in (0, 1)]
    torch.testing.assert_close(whole, sum(halves) / 2)


def test_ssm_rejects_bad_arguments():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="unknown projection 'sphere'"):
        sliced_score_matching_loss(lambda x: x, x, projection="sphere")
    with pytest.raises(ValueError, match="n_projections must be"):
        sliced_score_matching_loss(lambda x: x, x, n_projections=0)
    with pytest.raises(ValueError, match=r"probes must have shape \(K, 4, 2\)"):
        sliced_score_matching_loss(lambda x: x, x, probes=torch.ones(2, 4, 3))
    with pytest.raises(ValueError, match="unknown weighting"):
        sliced_score_matching("sum")
    with pytest.raises(ValueError, match="importance_sampling"):
        ssm_loss(sdegen.GaussianScore(MU, COV, VPSDE()), x, importance_sampling=True)


def test_a_run_config_trains_with_sliced_score_matching(tmp_path):
    from sdegen.assembly import build_model, load_config, load_data, make_trainer

    cfg = load_config(
        overrides=["objective=ssm_vr", "weighting=sigma2", "n_train=200", "batch_size=50"]
    )
    data = load_data(cfg.data, n_train=cfg.n_train, seed=cfg.seed)
    model = build_model(cfg, data.event_shape)
    trainer = make_trainer(cfg, data, model, tmp_path / "run", progress=False)
    # its held-out loss is SSM-VR's with the run's weighting, not DSM's
    test = data.test[:2000]
    ssm = held_out_loss(sliced_score_matching("sigma2", variance_reduction=True), test)
    dsm = held_out_loss(sdegen.training.score_matching("sigma2"), test)
    assert trainer.eval_fn(model, 0) == ssm(model, 0) != dsm(model, 0)
    trainer.fit(2)
    for bad, match in (
        (["objective=ssm", "time_sampling=discrete"], "time_sampling must be 'continuous'"),
        (["objective=sm"], "objective must be one of dsm, vlb, ssm, ssm_vr"),
    ):
        with pytest.raises(ValueError, match=match):
            cfg = load_config(overrides=bad + ["n_train=200", "batch_size=50"])
            make_trainer(cfg, data, model, tmp_path / "bad", progress=False)


def test_langevin_step_takes_a_step_size_per_example():
    x, s, z = torch.randn(3, 2, generator=_gen(16)), torch.randn(3, 2), torch.randn(3, 2)
    h = torch.tensor([0.1, 0.5, 2.0])
    rows = [
        sdegen.solvers.langevin_step(x[i : i + 1], s[i : i + 1], float(h[i]), z[i : i + 1])
        for i in range(3)
    ]
    torch.testing.assert_close(sdegen.solvers.langevin_step(x, s, h, z), torch.cat(rows))
    torch.testing.assert_close(rows[2], x[2:] + 1.0 * s[2:] + math.sqrt(2.0) * z[2:])


def test_conditional_ssm_is_the_ssm_of_the_labelled_component():
    # labels reach the score: the mixture's score given y = k is component k's score
    sde = VPSDE()
    covs = torch.stack([COV, 0.5 * torch.eye(2)])
    mix = sdegen.GaussianMixtureScore([0.4, 0.6], torch.stack([MU, -MU]), covs, sde)
    x0 = torch.randn(64, 2, generator=_gen(17))
    t = torch.full((64,), 0.2)
    noise = torch.randn(64, 2, generator=_gen(18))
    probes = torch.randn(2, 64, 2, generator=_gen(19))
    kw = dict(t=t, noise=noise, probes=probes, weighting="sigma2", reduce=False)
    with torch.no_grad():
        cond = ssm_loss(mix, x0, y=torch.ones(64, dtype=torch.long), **kw)
        comp = ssm_loss(sdegen.GaussianScore(-MU, covs[1], sde), x0, **kw)
        whole = ssm_loss(mix, x0, **kw)
    torch.testing.assert_close(cond, comp)
    assert not torch.allclose(cond, whole)
