"""Denoising score matching: the weightings' relations, importance sampling, and training."""

from __future__ import annotations

import math

import pytest
import torch

from sdegen import ScoreModel
from sdegen.models.networks import MLP
from sdegen.sde import VESDE, VPSDE
from sdegen.training import dsm_loss, sample_times

from .conftest import SDE_FACTORIES, mixture


def test_sigma2_weighting_is_simple_summed_over_dims():
    sde = VPSDE()
    model = mixture(sde, dim=3)
    x0 = model.sample(16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.linspace(0.05, 0.95, 16)
    noise = torch.randn(16, 3, generator=torch.Generator().manual_seed(1))
    simple = dsm_loss(model, x0, weighting="simple", t=t, noise=noise, reduce=False)
    sigma2 = dsm_loss(model, x0, weighting="sigma2", t=t, noise=noise, reduce=False)
    torch.testing.assert_close(sigma2, 3 * simple)
    # and sigma2 is Song et al.'s sigma^2 ||s_theta - grad log p_0t||^2 written with the score
    x_t = sde.perturb(x0, t, noise)
    s = sde.sigma(t)[:, None]
    ref = (s**2 * (model.score(x_t, t) + noise / s) ** 2).sum(1)
    torch.testing.assert_close(sigma2, ref)


@pytest.mark.parametrize("name", ["vp_linear", "ve", "edm", "rectified_flow"])
def test_likelihood_weighting_importance_sampling_is_unbiased(name):
    # The importance-sampled (uniform log-SNR) and plain (uniform t) estimators of
    # 1/2 int g^2 E||s - grad log p_0t||^2 dt agree in expectation, for a fixed model.
    sde = SDE_FACTORIES[name]()
    model = mixture(sde, dim=2)
    g = torch.Generator().manual_seed(0)
    x0 = model.sample(200_000, generator=g, dtype=torch.float64)
    a = dsm_loss(
        model, x0, weighting="likelihood", importance_sampling=True, generator=g, reduce=False
    )
    b = dsm_loss(
        model, x0, weighting="likelihood", importance_sampling=False, generator=g, reduce=False
    )
    se = math.sqrt(a.var() / a.numel() + b.var() / b.numel())
    assert abs(float(a.mean() - b.mean())) < 5 * se


def test_importance_sampled_times_are_uniform_in_log_snr():
    sde = VPSDE()
    t = sample_times(
        sde,
        50_000,
        importance_sampling=True,
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    lo, hi = sde.half_log_snr_range()
    u = (sde.half_log_snr(t) - lo) / (hi - lo)
    assert abs(float(u.mean()) - 0.5) < 0.01 and abs(float(u.var()) - 1 / 12) < 0.005


def test_training_an_mlp_learns_the_mixture_score():
    torch.manual_seed(0)
    sde = VPSDE()
    truth = mixture(sde, dim=2)
    model = ScoreModel(MLP(2, hidden=128, depth=3), sde, "eps").float()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)

    # held-out score error sigma^2 ||s_theta - s_true||^2 = ||eps_theta - eps_true||^2
    xe = truth.sample(2000, generator=torch.Generator().manual_seed(9))
    te = sample_times(sde, 2000, generator=torch.Generator().manual_seed(10))
    z = torch.randn(xe.shape, generator=torch.Generator().manual_seed(11), dtype=torch.float32)
    xe_t = sde.perturb(xe, te, z)

    def score_error():
        with torch.no_grad():
            return float(((model.eps(xe_t, te) - truth.eps(xe_t, te).float()) ** 2).sum(1).mean())

    before = score_error()
    losses = []
    for _ in range(400):
        x0 = truth.sample(256, generator=g)
        loss = dsm_loss(model, x0, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = score_error()
    assert sum(losses[-50:]) / 50 < 0.7 * sum(losses[:50]) / 50
    assert after < 0.15 * before and after < 0.1


def test_dsm_loss_rejects_bad_arguments():
    sde = VESDE()
    model = mixture(sde)
    x0 = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="unknown weighting 'snr'"):
        dsm_loss(model, x0, weighting="snr")
    with pytest.raises(ValueError, match="importance_sampling applies to weighting='likelihood'"):
        dsm_loss(model, x0, weighting="simple", importance_sampling=True)
    with pytest.raises(ValueError, match=r"t must have shape \(4,\)"):
        dsm_loss(model, x0, t=torch.ones(3))
    with pytest.raises(ValueError, match="x0 holds 1 non-finite"):
        dsm_loss(model, torch.tensor([[0.0, math.inf]]))
