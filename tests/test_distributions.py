"""Every density model as a torch Distribution: one contract over the density families of
tests/test_contracts.py (its DENSITY_CASES, so a family added there is tested here too), and
the compositions with torch that the view exists for (Independent, TransformedDistribution,
Monte Carlo entropy and KL from log_prob(rsample))."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import (
    AffineTransform,
    Distribution,
    Independent,
    Normal,
    TransformedDistribution,
)

from sdegen.models import VAE, RealNVP
from sdegen.models.density import DensityModel
from sdegen.models.distribution import ModelDistribution
from sdegen.score_density import ScoreSDEDensity

from .test_contracts import DENSITY_CASES, DensityCase, _subclasses
from .test_doctests import test_docstring_examples as run_doctests

F64 = torch.float64

# Families whose draws are discrete, so not reparametrizable, and why; every other family
# must have rsample (a new one too, until it is listed here with its reason).
NOT_REPARAMETRIZABLE = {
    "VAE-discretized-conv": "discretized decoder: draws are bin centres",
    "LatentDiffusion": "its latents come from the prior's sampler, not a reparametrization",
}
# Parameters a draw does not depend on: the VAE's encoder, the GAN's discriminator.
NOT_IN_SAMPLES = ("encoder.", "discriminator_net.")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_density_model_has_a_distribution_case():
    public = {c for c in _subclasses(DensityModel) if c.__module__.startswith("sdegen.")}
    public = {c for c in public if not c.__name__.startswith("_")}
    covered = {type(case.build()) for case in DENSITY_CASES.values()}
    missing = sorted(c.__name__ for c in public - covered)
    assert not missing, f"density models without a case in test_contracts.DENSITY_CASES: {missing}"
    assert set(NOT_REPARAMETRIZABLE) <= set(DENSITY_CASES)


@pytest.fixture(params=list(DENSITY_CASES))
def case(request) -> tuple[str, DensityModel, DensityCase]:
    torch.manual_seed(0)  # parameter initialisation
    c = DENSITY_CASES[request.param]
    return request.param, c.build(), c


def test_distribution_shapes_sample_and_log_prob(case):
    name, model, c = case
    dist = model.distribution(**c.log_prob_options)
    event = tuple(model.event_shape)
    assert isinstance(dist, Distribution) and isinstance(dist, ModelDistribution)
    assert dist.batch_shape == () and dist.event_shape == event
    assert dist.log_prob_kind == model.log_prob_kind
    assert dist.has_rsample == model.has_rsample == (name not in NOT_REPARAMETRIZABLE)
    assert dist.expand(()) is dist and isinstance(Independent(dist, 0), Distribution)
    x = dist.sample((3, 2), generator=_gen(0))
    assert x.shape == (3, 2, *event) and not x.requires_grad
    # the model's draws, reshaped
    torch.testing.assert_close(x.reshape(6, *event), model.sample(6, generator=_gen(0)))
    assert dist.sample(generator=_gen(0)).shape == event
    assert dist.sample((0,)).shape == (0, *event)
    assert bool(dist.support.check(x).all())
    if model.log_prob_kind == "none":  # a GAN: no density, and the view says so too
        with pytest.raises(TypeError, match="defines no density"):
            dist.log_prob(x)
        return
    torch.manual_seed(3)  # an estimate draws from the global generator when given none
    lp = dist.log_prob(x)
    torch.manual_seed(3)
    flat = model.log_prob(x.reshape(6, *event), **c.log_prob_options)
    assert lp.shape == (3, 2)
    torch.testing.assert_close(lp, flat.reshape(3, 2))
    torch.manual_seed(3)
    assert dist.log_prob(x[0, 0]).shape == ()
    assert dist.log_prob(x[:0]).shape == (0, 2)


def test_distribution_rsample_is_reparametrized(case):
    name, model, c = case
    dist = model.distribution()
    if not dist.has_rsample:
        with pytest.raises(NotImplementedError, match="not reparametrizable"):
            dist.rsample((2,))
        return
    x = dist.rsample((2, 3), generator=_gen(1))
    assert x.shape == (2, 3, *model.event_shape)
    assert torch.equal(x, dist.rsample((2, 3), generator=_gen(1)))
    flat = x.detach().reshape(6, *model.event_shape)
    if isinstance(model, ScoreSDEDensity):
        # rsample solves the PF-ODE whose density log_prob reports: sample_and_log_prob's x
        torch.testing.assert_close(
            flat, model.sample_and_log_prob(6, _gen(1))[0], rtol=0, atol=1e-3
        )
    else:  # sample's values, with gradients
        torch.testing.assert_close(flat, dist.sample((6,), generator=_gen(1)))
    params = {n: p for n, p in model.named_parameters() if not n.startswith(NOT_IN_SAMPLES)}
    if not params:  # an analytic score: nothing to train
        return
    x.square().sum().backward()
    for n, p in params.items():
        assert p.grad is not None, f"rsample's gradient does not reach {n}"
        assert bool(torch.isfinite(p.grad).all()), f"non-finite gradient in {n}"
    assert any(bool(p.grad.abs().sum() > 0) for p in params.values() if p.grad is not None)


def test_distribution_generator_makes_draws_reproducible(case):
    _, model, _ = case
    dist = model.distribution()
    a = dist.sample((4,), generator=_gen(5))
    assert torch.equal(a, dist.sample((4,), generator=_gen(5)))
    assert not torch.equal(a, dist.sample((4,), generator=_gen(6)))
    torch.manual_seed(7)
    b = dist.sample((4,))
    torch.manual_seed(7)
    assert torch.equal(b, dist.sample((4,)))  # without one: torch's global generator


def test_distribution_refuses_a_wrong_event_shape(case):
    _, model, _ = case
    event = tuple(model.event_shape)
    wrong = (*event[:-1], event[-1] + 1)
    for validate_args in (True, False):
        dist = model.distribution(validate_args=validate_args)
        with pytest.raises(
            ValueError, match=r"event_shape .* got \(3, " + ", ".join(map(str, wrong))
        ):
            dist.log_prob(torch.zeros(3, *wrong, dtype=F64))
    with pytest.raises(TypeError, match="value must be a tensor"):
        model.distribution().log_prob([[0.0, 0.0]])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sample_shape"):
        model.distribution().sample(3)  # type: ignore[arg-type]
    with pytest.raises(NotImplementedError, match="batch_shape"):
        model.distribution().expand((2,))
    if model.log_prob_kind != "none":
        nan = torch.full((1, *event), math.nan, dtype=F64)
        with pytest.raises(ValueError):
            model.distribution(validate_args=True).log_prob(nan)


def test_distribution_docstrings_say_what_log_prob_is():
    doc = ModelDistribution.log_prob.__doc__ or ""
    assert "estimate" in doc and "GAN" in doc and "TypeError" in doc
    assert "generator" in (ModelDistribution.sample.__doc__ or "") + (
        ModelDistribution.__doc__ or ""
    )


# ---- composition with torch.distributions --------------------------------------------------


def _identity_flow() -> RealNVP:
    """A RealNVP whose coupling nets output zero: the identity map, so its density is N(0, I)."""
    torch.manual_seed(0)
    return RealNVP(2, num_layers=4, hidden=16, zero_init=True)


def test_transformed_distribution_is_the_change_of_variables():
    torch.manual_seed(0)
    flow = RealNVP(2, num_layers=4, hidden=16, zero_init=False)
    loc = torch.tensor([1.0, -2.0], dtype=F64)
    scale = torch.tensor([0.5, 3.0], dtype=F64, requires_grad=True)
    moved = TransformedDistribution(flow.distribution(), [AffineTransform(loc, scale, event_dim=1)])
    assert moved.batch_shape == () and moved.event_shape == (2,)
    assert moved.rsample((5, 2)).shape == (5, 2, 2)
    y = loc + scale.detach() * flow.distribution().sample((5, 2), generator=_gen(0))
    want = flow.log_prob(((y - loc) / scale).reshape(10, 2)).reshape(5, 2) - scale.log().sum()
    torch.testing.assert_close(moved.log_prob(y), want)
    # Independent over the empty batch is the distribution itself
    torch.testing.assert_close(
        Independent(flow.distribution(), 0).log_prob(y),
        flow.log_prob(y.reshape(10, 2)).reshape(5, 2),
    )
    # reparametrized through both: the gradient reaches the affine scale and the flow
    moved.rsample((4,)).sum().backward()
    assert scale.grad is not None and all(p.grad is not None for p in flow.parameters())


@torch.no_grad()  # values only; test_monte_carlo_kl_is_differentiable takes the gradients
def test_monte_carlo_entropy_and_kl_from_log_prob_of_rsample():
    """-E log q(x) over x ~ q is the entropy: 1 + log(2 pi) for N(0, I_2), + 2 log 2 when the
    draws are doubled; KL(q || N(0, I)) of the identity flow is 0 draw by draw."""
    n = 4000
    q = _identity_flow().distribution()
    x = q.rsample((n,), generator=_gen(0))
    lq = q.log_prob(x)
    entropy = 1 + math.log(2 * math.pi)
    se = float(lq.detach().std()) / math.sqrt(n)
    assert abs(float(-lq.mean()) - entropy) < 5 * se
    doubled = TransformedDistribution(q, [AffineTransform(0.0, 2.0, event_dim=1)])
    y = doubled.rsample((n,))
    assert abs(float(-doubled.log_prob(y).mean()) - (entropy + 2 * math.log(2))) < 5 * se
    p = Independent(Normal(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)), 1)
    torch.testing.assert_close(lq - p.log_prob(x), torch.zeros(n, dtype=F64), atol=1e-12, rtol=0)


def _trainable_densities() -> list[str]:
    """The cases with an exact or ODE density, rsample and parameters: reverse-KL trainable."""
    torch.manual_seed(0)
    models = {n: c.build() for n, c in DENSITY_CASES.items()}
    return [
        n
        for n, m in models.items()
        if m.log_prob_kind in ("exact", "ode")
        and m.has_rsample
        and next(m.parameters(), None) is not None
    ]


@pytest.mark.parametrize("name", _trainable_densities())
def test_monte_carlo_kl_is_differentiable(name):
    """A reverse-KL training step, KL(q || N(0, I)) estimated from log_prob(rsample): finite,
    and its gradient reaches every parameter of every exact or ODE family with parameters."""
    torch.manual_seed(0)
    c = DENSITY_CASES[name]
    q = c.build().distribution(**c.log_prob_options)
    event = q.event_shape
    p = Independent(Normal(torch.zeros(event, dtype=F64), 1.0), len(event))
    x = q.rsample((8,), generator=_gen(2))
    kl = (q.log_prob(x) - p.log_prob(x)).mean()
    assert bool(torch.isfinite(kl))
    kl.backward()
    for n, param in q.model.named_parameters():
        assert param.grad is not None and bool(torch.isfinite(param.grad).all()), n


def test_vae_rsample_is_the_gaussian_model_not_its_mean():
    """The VAE's rsample draws decoder(z) + scale * eps: for probabilistic PCA x = W z + b + 0.5
    eps, its covariance is W W^T + 0.25 I (the decoder's mean alone would give W W^T)."""
    W = torch.tensor([[1.0, 0.0], [0.5, 0.8], [0.0, 0.3]], dtype=F64)
    b = torch.tensor([0.1, -0.2, 0.3], dtype=F64)
    torch.manual_seed(0)
    dist = VAE.linear_gaussian(W, b, noise_std=0.5).distribution()
    x = dist.rsample((20000,), generator=_gen(0)).detach()
    torch.testing.assert_close(x.mean(0), b, rtol=0, atol=0.05)
    torch.testing.assert_close(
        torch.cov(x.T), W @ W.T + 0.25 * torch.eye(3, dtype=F64), rtol=0, atol=0.06
    )


def test_distribution_docstring_example():
    """The module's example runs as a user runs it (tests/test_doctests.py's runner)."""
    run_doctests("sdegen.models.distribution")
