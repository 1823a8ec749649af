"""Score models: parametrization conversions and the analytic Gaussian / mixture scores."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sdegen import GaussianMixtureScore, GaussianScore, ScoreModel
from sdegen.models import PARAMETRIZATIONS, from_x0_eps, to_x0_eps
from sdegen.sde import VESDE, VPSDE, rectified_flow

from .conftest import SDE_FACTORIES, mixture


@pytest.mark.parametrize("kind", PARAMETRIZATIONS)
@pytest.mark.parametrize("name", ["vp_linear", "ve", "rectified_flow"])
def test_parametrizations_round_trip(kind, name):
    # target(x0, eps) fed back through to_x0_eps recovers (x0, eps) for every SDE.
    sde = SDE_FACTORIES[name]()
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    t = torch.linspace(sde.t_min, sde.T, 6)
    a, s = sde.alpha(t), sde.sigma(t)
    x = a[:, None] * x0 + s[:, None] * eps
    x0_r, eps_r = to_x0_eps(kind, from_x0_eps(kind, x0, eps, a, s), x, a, s)
    torch.testing.assert_close(x0_r, x0, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(eps_r, eps, rtol=1e-8, atol=1e-8)


class _Oracle(nn.Module):
    """A 'network' returning the exact target of a parametrization, from an analytic model."""

    def __init__(self, truth, sde, kind):
        super().__init__()
        self.truth, self.sde, self.kind = truth, sde, kind
        self.t = None

    def forward(self, x_in, c_noise):
        t = self.sde.t_of_log_snr(c_noise)  # time_input = "log_snr"
        x = x_in / torch.rsqrt(self.sde.alpha(t) ** 2 + self.sde.sigma(t) ** 2)[:, None]
        x0, eps = self.truth.x0_eps(x, t)
        return from_x0_eps(self.kind, x0, eps, self.sde.alpha(t), self.sde.sigma(t))


@pytest.mark.parametrize("kind", PARAMETRIZATIONS)
def test_score_model_converts_every_parametrization(kind):
    sde = VESDE()
    truth = mixture(sde)
    model = ScoreModel(_Oracle(truth, sde, kind), sde, kind)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    t = torch.linspace(0.1, 0.9, 5)
    torch.testing.assert_close(model.score(x, t), truth.score(x, t), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(model.denoise(x, t), truth.denoise(x, t), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(model.eps(x, t), truth.eps(x, t), rtol=1e-7, atol=1e-9)


def test_score_model_checks_its_arguments():
    sde = VPSDE()
    with pytest.raises(ValueError, match="unknown parametrization 'noise'; expected one of"):
        ScoreModel(nn.Identity(), sde, "noise")
    with pytest.raises(ValueError, match="unknown time_input 'sigma'"):
        ScoreModel(nn.Identity(), sde, time_input="sigma")
    bad = ScoreModel(lambda_net(lambda x, c: x[:, :1]), sde)
    with pytest.raises(ValueError, match=r"net must return the shape of x \(4, 2\), got \(4, 1\)"):
        bad.score(torch.zeros(4, 2), torch.full((4,), 0.5))
    with pytest.raises(ValueError, match=r"t must have shape \(\) or \(4,\)"):
        bad.score(torch.zeros(4, 2), torch.full((3,), 0.5))


def lambda_net(fn):
    class Net(nn.Module):
        def forward(self, x, c):
            return fn(x, c)

    return Net()


def test_input_scaling_is_identity_for_vp_and_unit_variance_for_ve():
    seen = {}

    def record(x, c):
        seen["x"] = x
        return x

    x = torch.full((2, 3), 4.0)
    ScoreModel(lambda_net(record), VPSDE()).eps(x, torch.full((2,), 0.5))
    torch.testing.assert_close(seen["x"], x)
    ve = VESDE()
    t = torch.full((2,), 0.8)
    ScoreModel(lambda_net(record), ve).eps(x, t)
    torch.testing.assert_close(seen["x"], x / torch.sqrt(1 + ve.sigma(t)[:, None] ** 2))


@st.composite
def _gaussian_mixtures(draw):
    dim = draw(st.integers(1, 4))
    k = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    means = 2 * torch.randn(k, dim, generator=g)
    A = torch.randn(k, dim, dim, generator=g)
    scale = draw(st.floats(1e-3, 2.0))
    covs = scale * A @ A.transpose(1, 2) + 1e-4 * torch.eye(dim)
    weights = torch.rand(k, generator=g) + 0.1
    return weights, means, covs, g


@settings(max_examples=40, deadline=None)
@given(mix=_gaussian_mixtures(), name=st.sampled_from(list(SDE_FACTORIES)), u=st.floats(0.0, 1.0))
def test_analytic_score_is_the_gradient_of_the_log_density(mix, name, u):
    weights, means, covs, g = mix
    sde = SDE_FACTORIES[name]()
    model = GaussianMixtureScore(weights, means, covs, sde)
    t = torch.full((4,), sde.t_min + u * (sde.T - sde.t_min))
    x = sde.perturb(
        model.sample(4, generator=g, dtype=torch.float64),
        t,
        torch.randn(4, means.shape[1], generator=g),
    )
    xx = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.log_prob(xx, t).sum(), xx)
    score = model.score(x, t)
    torch.testing.assert_close(score, grad, rtol=1e-6, atol=1e-6 * (1 + grad.abs().max()))
    # Tweedie: denoise = (x + sigma^2 score)/alpha, and eps = -sigma score
    s = sde.sigma(t)[:, None]
    torch.testing.assert_close(model.eps(x, t), -s * score)


def test_gaussian_log_prob_matches_torch_distributions():
    sde = VPSDE()
    mean, cov = torch.tensor([1.0, -0.5]), torch.tensor([[0.5, 0.2], [0.2, 0.3]])
    model = GaussianScore(mean, cov, sde)
    t = torch.full((3,), 0.37)
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    a, s = float(sde.alpha(t[:1])), float(sde.sigma(t[:1]))
    ref = torch.distributions.MultivariateNormal(a * mean, a**2 * cov + s**2 * torch.eye(2))
    torch.testing.assert_close(model.log_prob(x, t), ref.log_prob(x))
    torch.testing.assert_close(
        model.data_log_prob(x), torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    )


def test_singular_covariance_stays_finite_at_t_min():
    # A degenerate (rank-1) Gaussian: the diffused density exists for sigma(t) > 0.
    sde = VPSDE()
    model = GaussianScore(torch.zeros(2), torch.tensor([[1.0, 1.0], [1.0, 1.0]]), sde)
    x = torch.tensor([[0.3, -0.3]])
    t = torch.tensor([sde.t_min])
    assert bool(torch.isfinite(model.score(x, t)).all())
    assert bool(torch.isfinite(model.log_prob(x, t)).all())


def test_mixture_sampling_matches_its_moments():
    model = mixture(VPSDE(), dim=3)
    x = model.sample(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(x.mean(0), model.mean(), atol=0.01, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), model.cov(), atol=0.02, rtol=0)


def test_event_shape_lets_the_model_stand_in_for_images():
    sde = VPSDE()
    model = GaussianScore(torch.zeros(4), torch.eye(4), sde, event_shape=(1, 2, 2))
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    t = torch.full((3,), 0.5)
    # N(0, I) data stays N(0, I) under VP: score = -x
    torch.testing.assert_close(model.score(x, t), -x)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 1, 2, 2\), got \(3, 4\)"):
        model.score(x.reshape(3, 4), t)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weights=[1.0], means=[[0.0]], covs=[[[-1.0]]]), "positive semi-definite"),
        (
            dict(weights=[1.0, 1.0], means=[[0.0]], covs=[[[1.0]]]),
            r"means must have shape \(2, D\)",
        ),
        (dict(weights=[0.0], means=[[0.0]], covs=[[[1.0]]]), "weights must be > 0"),
        (dict(weights=[1.0], means=[[math.nan]], covs=[[[1.0]]]), "means must be finite"),
        (
            dict(weights=[1.0], means=[[0.0, 0.0]], covs=[[[1.0, 0.5], [0.0, 1.0]]]),
            "covs must be symmetric",
        ),
    ],
)
def test_mixture_rejects_bad_parameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixtureScore(sde=rectified_flow(), **kwargs)


def test_v_is_salimans_ho_for_vp_and_edm_preconditioning_for_any_sde():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    vp = VPSDE()
    t = torch.linspace(0.01, 0.99, 5)
    a, s = vp.alpha(t)[:, None], vp.sigma(t)[:, None]
    torch.testing.assert_close(from_x0_eps("v", x0, eps, a[:, 0], s[:, 0]), a * eps - s * x0)
    # EDM (Karras et al. 2022, Table 1, sigma_data = 1): D = c_skip x + c_out F with
    # c_skip = 1/(sigma^2 + 1), c_out = sigma/sqrt(sigma^2 + 1); ideal F = (x0 - c_skip x)/c_out
    ve = VESDE()
    t = torch.linspace(0.1, 0.9, 5)
    sig = ve.sigma(t)[:, None]
    x = x0 + sig * eps
    F = (x0 - x / (sig**2 + 1)) / (sig / torch.sqrt(sig**2 + 1))
    torch.testing.assert_close(from_x0_eps("v", x0, eps, ve.alpha(t), ve.sigma(t)), -F)
