"""Score models: parametrization conversions and the analytic Gaussian / mixture scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sdegen import GaussianMixtureScore, GaussianScore, ScoreModel
from sdegen.models import MLP, PARAMETRIZATIONS, from_x0_eps, to_x0_eps
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
        t = self.sde.t_of_half_log_snr(c_noise)  # time_input = "log_snr"
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


def test_mixture_takes_lists_of_tensors_nested_lists_and_arrays():
    # The README's example: torch.as_tensor cannot convert a list of (D, D) tensors.
    sde = VPSDE()
    covs = [torch.eye(2) * 0.3, torch.eye(2) * 0.5]
    m = GaussianMixtureScore([0.3, 0.7], means=[[-2.0, 0.0], [2.0, 1.0]], covs=covs, sde=sde)
    ref = GaussianMixtureScore(
        torch.tensor([0.3, 0.7]),
        torch.tensor([[-2.0, 0.0], [2.0, 1.0]]),
        torch.stack(covs),
        sde,
    )
    x, t = torch.randn(3, 2, generator=torch.Generator().manual_seed(0)), torch.full((3,), 0.4)
    torch.testing.assert_close(m.score(x, t), ref.score(x, t), rtol=0, atol=0)
    for weights, means, cv in [
        ((0.3, 0.7), [torch.tensor([-2.0, 0.0]), np.array([2.0, 1.0])], np.stack(covs)),
        (np.array([0.3, 0.7]), ([-2.0, 0.0], (2.0, 1.0)), [c.tolist() for c in covs]),
        ([torch.tensor(0.3), 0.7], torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), tuple(covs)),
    ]:
        other = GaussianMixtureScore(weights, means, cv, sde)
        torch.testing.assert_close(other.score(x, t), ref.score(x, t), rtol=0, atol=0)
    g = GaussianScore([torch.tensor(1.0), 2.0], [torch.eye(2)[0], torch.tensor([0.0, 1.0])], sde)
    torch.testing.assert_close(g.means[0], torch.tensor([1.0, 2.0]))
    # one-dimensional data: a list of (1, 1) tensors keeps its three dimensions
    one = GaussianMixtureScore([1.0], [[0.0]], [torch.ones(1, 1)], sde)
    assert one.evals.shape == (1, 1)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(weights=[1.0, 1.0], means=[[0.0], [0.0, 1.0]], covs=[[[1.0]]] * 2),
            ValueError,
            r"means must be a rectangular array; its entries have shapes \(1,\), \(2,\)",
        ),
        (
            dict(weights=[1.0], means=[[0.0]], covs=[torch.eye(1), torch.eye(2)]),
            ValueError,
            "covs must be a rectangular array",
        ),
        (dict(weights="ab", means=[[0.0]], covs=[[[1.0]]]), TypeError, "weights must be a tensor"),
        (dict(weights=[1.0], means=None, covs=[[[1.0]]]), TypeError, "means must be a tensor"),
        (
            dict(weights=[1.0], means=[[0.0]], covs=[[[1.0]]], event_shape=(0,)),
            ValueError,
            r"event_shape must be a tuple of integers >= 1, got \(0,\)",
        ),
    ],
)
def test_mixture_names_the_parameter_it_cannot_read(kwargs, error, match):
    with pytest.raises(error, match=match):
        GaussianMixtureScore(sde=VPSDE(), **kwargs)


def test_gaussian_score_names_mean_and_cov():
    with pytest.raises(ValueError, match=r"mean must have shape \(D,\), got \(1, 2\)"):
        GaussianScore([[0.0, 0.0]], torch.eye(2), VPSDE())
    with pytest.raises(ValueError, match=r"cov must have shape \(2, 2\), got \(3, 3\)"):
        GaussianScore([0.0, 0.0], torch.eye(3), VPSDE())


def test_score_model_refuses_a_missing_network_and_a_named_sde():
    sde = VPSDE()
    with pytest.raises(TypeError, match=r"net must be a torch.nn.Module .*got NoneType"):
        ScoreModel(None, sde, "eps")
    with pytest.raises(TypeError, match="net must be a torch.nn.Module .*got function; wrap"):
        ScoreModel(lambda x, c: x, sde)
    with pytest.raises(
        TypeError,
        match=r"sde must be an SDE object with alpha\(t\), sigma\(t\), got str 'vp'; "
        r"build one with sdegen.sde.VPSDE\(\)",
    ):
        ScoreModel(MLP(2), "vp")
    with pytest.raises(TypeError, match="sde must be an SDE object .*got NoneType"):
        GaussianScore(torch.zeros(2), torch.eye(2), None)
    with pytest.raises(
        ValueError, match="unknown parametrization 'noise'; expected one of: eps, x0, v, score"
    ):
        ScoreModel(MLP(2), sde, "noise")


def _models(sde):
    return {
        "score_model": ScoreModel(MLP(2, hidden=16, depth=1, embed_dim=8), sde),
        "analytic": mixture(sde),
    }


@pytest.mark.parametrize("which", ["score_model", "analytic"])
@pytest.mark.parametrize("call", ["score", "denoise", "eps"])
def test_score_calls_refuse_non_floating_x_and_t(which, call):
    sde = VPSDE()
    fn = getattr(_models(sde)[which], call)
    t = torch.full((3,), 0.5)
    for dtype in (torch.int64, torch.bool, torch.complex128):
        x = torch.ones(3, 2, dtype=dtype)
        # integer x used to be cast into t, giving "t must lie in [t_min, T] ... got 0"
        with pytest.raises(TypeError, match=f"x must be a floating-point tensor, got {dtype}"):
            fn(x, t)
        with pytest.raises(TypeError, match="x must be a floating-point tensor"):
            fn(x, 0.5)
    with pytest.raises(
        TypeError, match=r"t must be a real number or a tensor of shape \(\) or \(3,\), got str"
    ):
        fn(torch.ones(3, 2), "0.5")
    with pytest.raises(TypeError, match="t must be a real tensor"):
        fn(torch.ones(3, 2), torch.full((3,), 0.5 + 0j))
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 2\), got \(3, 3\)"):
        fn(torch.ones(3, 3), t)


def test_float64_input_runs_a_float32_network_and_returns_float64():
    sde = VPSDE()
    torch.manual_seed(0)
    model = ScoreModel(MLP(2, hidden=16, depth=1, embed_dim=8), sde, "v").float()
    x32 = torch.randn(5, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    t32 = torch.linspace(0.1, 0.9, 5, dtype=torch.float32)
    for call in ("score", "denoise", "eps"):
        fn = getattr(model, call)
        ref = fn(x32, t32)
        out = fn(x32.double(), t32.double())
        assert ref.dtype == torch.float32 and out.dtype == torch.float64
        torch.testing.assert_close(out, ref.double(), rtol=1e-4, atol=1e-5)
        half = fn(x32.half(), t32)  # half-precision x: computed in float32, returned in half
        assert half.dtype == torch.float16
        torch.testing.assert_close(half.float(), fn(x32.half().float(), t32), rtol=1e-3, atol=1e-3)
    assert model(x32.double(), t32.double()).dtype == torch.float64
    with torch.enable_grad():  # gradients flow back through the casts
        x = x32.double().requires_grad_(True)
        model.score(x, t32.double()).sum().backward()
    assert x.grad.dtype == torch.float64 and bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("which", ["score_model", "analytic"])
def test_empty_batch_gives_an_empty_result(which):
    model = _models(VPSDE())[which]
    for t in (0.5, torch.zeros(0) + 0.5):
        for call in ("score", "denoise", "eps"):
            out = getattr(model, call)(torch.zeros(0, 2), t)
            assert out.shape == (0, 2)
    if which == "analytic":
        assert model.log_prob(torch.zeros(0, 2), 0.5).shape == (0,)


def test_noise_conditional_classifier_checks_like_a_score_model():
    from sdegen.models import NoiseConditionalClassifier

    sde = VPSDE()
    with pytest.raises(TypeError, match="net must be a torch.nn.Module"):
        NoiseConditionalClassifier(None, sde, num_classes=3)
    with pytest.raises(TypeError, match="sde must be an SDE object .*got str 'vp'"):
        NoiseConditionalClassifier(MLP(2, out_dim=3), "vp")
    clf = NoiseConditionalClassifier(MLP(2, hidden=8, depth=1, embed_dim=8, out_dim=3), sde)
    clf = clf.float()
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got torch.int64"):
        clf(torch.zeros(2, 2, dtype=torch.int64), 0.5)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float32)
    out = clf.log_prob(x.double(), 0.5)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, clf.log_prob(x, 0.5).double(), rtol=1e-4, atol=1e-5)
