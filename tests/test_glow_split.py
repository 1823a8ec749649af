"""The multi-scale split of the image flow (Dinh et al. 2017, Sec. 3.6; Kingma & Dhariwal 2018):
exact inverses in float64, log-determinants against brute-force autograd Jacobians, log p against
the change of variables computed independently (with Glow's learned split prior, against
torch.distributions.Normal with the prior's mean and scale), dimensions per level, what each
scale sees, and sampling.

Every model is taken away from its identity init (ActNorm initialised on shifted data, all
parameters perturbed: `randomise` of test_realnvp), so nothing passes trivially.
"""

from __future__ import annotations

import math

import pytest
import torch

from sdegen.models.flows import (
    AffineCoupling,
    Chain,
    FactorOut,
    RealNVPImage,
    Squeeze,
    channel_mask,
    coupling_convnet,
)
from tests.test_realnvp import check_invertible, jacobian_logdets, randomise


def flow(shape=(1, 4, 4), scales=2, prior=False, **kwargs) -> RealNVPImage:
    torch.manual_seed(0)
    model = RealNVPImage(shape, scales, 1, 8, split=True, split_prior=prior, **kwargs)
    randomise(model, shape, std=0.05)
    return model.eval()


def normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed per example, from torch.distributions."""
    return torch.distributions.Normal(0.0, 1.0).log_prob(z).reshape(len(z), -1).sum(1)


@pytest.mark.parametrize("prior", [False, True])
@pytest.mark.parametrize(("actnorm", "inv_conv"), [(True, True), (False, False)])
def test_split_flow_inverts_exactly_with_autograd_logdet(prior, actnorm, inv_conv):
    model = flow(prior=prior, actnorm=actnorm, inv_conv=inv_conv)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    z, logdet = model(x)
    assert z.shape == x.shape
    # exact both ways to 1e-10, logdets against the 16 x 16 autograd Jacobian of each example
    check_invertible(model, model.inverse_and_logdet, x)
    torch.testing.assert_close(model.inverse(z), x, rtol=1e-10, atol=1e-10)
    # log p by the change of variables, computed independently of the model's bookkeeping
    want = normal_log_prob(z) + jacobian_logdets(model, x)
    torch.testing.assert_close(model.log_prob(x), want, rtol=1e-10, atol=1e-10)


def test_log_prob_sums_every_levels_base_term():
    model = flow((2, 8, 8), scales=3)
    x = torch.randn(4, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    z, logdet = model(x)
    levels = model.latent_levels(z)
    assert sum(level[0].numel() for level in levels) == 2 * 8 * 8  # a partition of z
    terms = sum(normal_log_prob(level) for level in levels)
    torch.testing.assert_close(model.log_prob(x), terms + logdet, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    ("shape", "scales", "want"),
    [
        ((1, 4, 4), 2, [(2, 2, 2), (8, 1, 1)]),
        ((1, 8, 8), 2, [(2, 4, 4), (8, 2, 2)]),
        ((3, 8, 8), 3, [(6, 4, 4), (12, 2, 2), (48, 1, 1)]),
    ],
)
def test_dimensions_per_level_and_what_each_scale_sees(shape, scales, want):
    model = RealNVPImage(shape, scales, 1, 8, split=True)
    assert model.level_shapes == want
    # half of the dimensions leave at each split: D/2, D/4, ..., and the rest at the last scale
    d = math.prod(shape)
    dims = [math.prod(s) for s in want]
    assert dims == [d // 2**i for i in range(1, scales)] + [d // 2 ** (scales - 1)]
    # the first coupling of scale i (a checkerboard one) works on the channels kept so far
    kept, chain, c = [], model.layers, shape[0]
    for i in range(scales):
        first = next(m for m in chain if isinstance(m, AffineCoupling))
        kept.append(first.net[0].in_channels)
        split = [m for m in chain if isinstance(m, FactorOut)]
        if i < scales - 1:
            assert len(split) == 1 and split[0].keep == 2 * c
            chain, c = split[0].inner, 2 * c
    assert kept == [shape[0] * 2**i for i in range(scales)]
    z = torch.randn(2, *shape)
    assert [tuple(v.shape[1:]) for v in model.latent_levels(z)] == want


def test_factored_out_level_is_untouched_by_later_scales():
    model = flow((1, 8, 8))
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    first, last = (v.clone() for v in model.latent_levels(model(x)[0]))
    # perturb every parameter of the second scale (inside the split): level 0 stays bit-exact
    inner = next(m for m in model.layers if isinstance(m, FactorOut)).inner
    with torch.no_grad():
        for p in inner.parameters():
            p.add_(0.1)
    first2, last2 = model.latent_levels(model(x)[0])
    assert torch.equal(first2, first)
    assert not torch.allclose(last2, last)
    # and the level-0 latent is scale 0's output (before the split), channels 2..3
    h = x
    for layer in model.layers:
        if isinstance(layer, FactorOut):
            break
        h = layer(h)[0]
    assert torch.equal(first, h[:, 2:])


def test_split_prior_is_glows_conditional_gaussian():
    """log p(x) = log N(z_0; mu(h), sigma(h)^2) + log N(z_1; 0, I) + log|det| of the scale
    layers, with mu, sigma read off the split prior's conditioner and the Gaussian term from
    torch.distributions.Normal."""
    model = flow((1, 4, 4), prior=True)
    x = torch.randn(5, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    layers = list(model.layers)
    split_at = next(i for i, m in enumerate(layers) if isinstance(m, FactorOut))
    prior, split = layers[split_at - 1], layers[split_at]
    assert isinstance(prior, AffineCoupling)
    h, ld_scale0 = Chain(layers[: split_at - 1])(x)  # scale 0, squeezed: (B, 4, 2, 2)
    kept, out = h[:, :2], h[:, 2:]
    # eps = out * exp(s) + t, i.e. out ~ N(mu, sigma^2) with sigma = exp(-s), mu = -t exp(-s)
    s, t = prior._scale_shift(h * prior.mask)
    s, t = s[:, 2:], t[:, 2:]
    sigma, mu = torch.exp(-s), -t * torch.exp(-s)
    level0 = torch.distributions.Normal(mu, sigma).log_prob(out).reshape(5, -1).sum(1)
    z_rest, ld_rest = split.inner(kept)
    want = level0 + normal_log_prob(z_rest) + ld_scale0 + ld_rest
    torch.testing.assert_close(model.log_prob(x), want, rtol=1e-10, atol=1e-10)
    assert float((sigma - 1).abs().max().detach()) > 1e-3  # the prior is not N(0, I) here


def test_split_prior_starts_at_the_standard_normal():
    torch.manual_seed(0)
    plain = RealNVPImage((1, 4, 4), 2, 1, 8, split=True)
    torch.manual_seed(0)
    with_prior = RealNVPImage((1, 4, 4), 2, 1, 8, split=True, split_prior=True)
    # zero-initialised conditioner: the prior coupling is the identity, so log p agrees
    x = torch.randn(3, 1, 4, 4)
    for m in (plain, with_prior):
        m.eval()
    prior = [m for m in with_prior.layers if isinstance(m, AffineCoupling)][-1]
    assert prior.net[-1].weight.abs().max() == 0
    torch.testing.assert_close(with_prior(x)[1] - plain(x)[1], torch.zeros(3), atol=1e-8, rtol=0)


@pytest.mark.parametrize("prior", [False, True])
def test_sampling_draws_every_level_and_inverts(prior):
    model = flow((1, 8, 8), prior=prior)
    x = model.sample(6, generator=torch.Generator().manual_seed(5))
    assert x.shape == (6, 1, 8, 8) and bool(torch.isfinite(x).all())
    # the same seed's base draw, taken apart per level, is what forward recovers
    z = torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(model(x)[0], z, rtol=1e-9, atol=1e-9)
    xs, lp = model.sample_and_log_prob(6, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(xs, x, rtol=0, atol=0)
    torch.testing.assert_close(lp, model.log_prob(x), rtol=1e-9, atol=1e-9)


def test_factor_out_layer_alone():
    torch.manual_seed(1)
    inner = AffineCoupling(channel_mask((2, 2, 2)), coupling_convnet(2, 4, zero_init=False))
    layer = FactorOut(2, inner)
    x = torch.randn(3, 5, 2, 2)
    y, logdet = layer(x)
    assert torch.equal(y[:, 2:], x[:, 2:])  # factored out: untouched
    y_in, ld_in = inner(x[:, :2])
    assert torch.equal(y[:, :2], y_in) and torch.equal(logdet, ld_in)
    check_invertible(layer, layer.inverse, x)
    with pytest.raises(ValueError, match="FactorOut keeps 2 channels"):
        layer(torch.randn(3, 2, 2, 2))


def test_default_image_flow_is_unchanged_by_the_option():
    # split=False builds the same layers from the same random numbers as before the option
    torch.manual_seed(0)
    a = RealNVPImage((1, 8, 8), 2, 1, 8)
    torch.manual_seed(0)
    b = RealNVPImage((1, 8, 8), 2, 1, 8, split=False, split_prior=False)
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not any(isinstance(m, FactorOut) for m in a.modules())
    assert a.level_shapes == [(1, 8, 8)] and len(a.latent_levels(torch.randn(2, 1, 8, 8))) == 1
    assert sum(isinstance(m, Squeeze) for m in a.layers) == 2


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_scales": 1, "split": True}, ValueError, "num_scales >= 2"),
        ({"split_prior": True}, ValueError, "split_prior=True needs split=True"),
        ({"split": 1}, TypeError, "split must be a bool"),
        ({"split": True, "split_prior": "yes"}, TypeError, "split_prior must be a bool"),
    ],
)
def test_bad_split_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        RealNVPImage((1, 8, 8), **kwargs)
