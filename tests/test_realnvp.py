"""RealNVP / Glow flows: exact inverses, log-determinants against autograd Jacobians, the density
contract for every flow model, normalisation by quadrature and a short training run.

Every layer and model is taken away from its identity init (random conditioner last layers,
ActNorm initialised on shifted data, all parameters perturbed), so nothing passes trivially.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdegen.models.flows import (
    ActNorm,
    AffineCoupling,
    InvConv1x1,
    Invert,
    RealNVP,
    RealNVPImage,
    Squeeze,
    channel_mask,
    checkerboard_mask,
    coupling_convnet,
    coupling_mlp,
)

SETTINGS = settings(max_examples=30, deadline=None, database=None, derandomize=True)


def randomise(
    module: torch.nn.Module, event_shape: tuple[int, ...], seed: int = 0, std: float = 0.2
) -> None:
    """Initialise every ActNorm on shifted, scaled data, then perturb every parameter by
    N(0, std^2). Image flows keep their zero-initialised conditioners and get std = 0.05: with
    PyTorch's default last-layer init and larger kicks, a dozen couplings on 32 dimensions compose
    to maps so expansive (samples of size 1e6) that float64 round trips lose digits."""
    g = torch.Generator().manual_seed(seed)
    x = 1.5 + 2.0 * torch.randn(16, *event_shape, generator=g)
    with torch.no_grad():
        module.train()
        module(x)
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))


def jacobian_logdets(fn, x: torch.Tensor) -> torch.Tensor:
    """log|det| of the Jacobian of fn at each example of x (B, *D), one example at a time."""
    shape = x.shape[1:]
    out = []
    for xi in x:

        def flat(v: torch.Tensor) -> torch.Tensor:
            return fn(v.reshape(1, *shape))[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(flat, xi.reshape(-1))
        sign, logabs = torch.linalg.slogdet(jac)
        assert sign != 0
        out.append(logabs)
    return torch.stack(out)


def check_invertible(forward, inverse, x: torch.Tensor) -> None:
    """Exact inverses both ways, opposite log-determinants, both equal to autograd's."""
    y, logdet = forward(x)
    assert logdet.shape == (x.shape[0],)
    x_back, logdet_inv = inverse(y)
    torch.testing.assert_close(x_back, x, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(logdet_inv, -logdet, rtol=1e-10, atol=1e-10)
    z = torch.randn_like(y)
    x_z, logdet_z = inverse(z)
    torch.testing.assert_close(forward(x_z)[0], z, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(jacobian_logdets(forward, x), logdet, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(jacobian_logdets(inverse, z), logdet_z, rtol=1e-8, atol=1e-8)


@st.composite
def layers(draw):
    """A randomised invertible layer and an input batch for it."""
    kind = draw(
        st.sampled_from(["coupling", "checker", "channel", "squeeze", "unsqueeze", "act", "conv"])
    )
    image = draw(st.booleans())
    c = draw(st.integers(1, 3))
    h, w = draw(st.sampled_from([2, 4])), draw(st.sampled_from([2, 4]))
    d = draw(st.integers(2, 6))
    parity = draw(st.integers(0, 1))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    if kind == "coupling":
        mask = torch.tensor(draw(st.lists(st.booleans(), min_size=d, max_size=d)))
        layer, shape = AffineCoupling(mask.double(), coupling_mlp(d, 16, zero_init=False)), (d,)
    elif kind == "checker":
        net = coupling_convnet(c, 8, zero_init=False)
        layer, shape = AffineCoupling(checkerboard_mask((c, h, w), parity), net), (c, h, w)
    elif kind == "channel":
        c += 1
        net = coupling_convnet(c, 8, zero_init=False)
        layer, shape = AffineCoupling(channel_mask((c, h, w), parity), net), (c, h, w)
    elif kind == "squeeze":
        layer, shape = Squeeze(), (c, h, w)
    elif kind == "unsqueeze":
        layer, shape = Invert(Squeeze()), (4 * c, h, w)
    else:
        cls = ActNorm if kind == "act" else InvConv1x1
        layer, shape = (cls(c), (c, h, w)) if image else (cls(d), (d,))
    randomise(layer, shape, seed=parity)
    return layer, torch.randn(3, *shape)


@SETTINGS
@given(layers())
def test_layers_invert_exactly_with_autograd_logdet(case):
    layer, x = case
    check_invertible(layer, layer.inverse, x)


@st.composite
def models(draw):
    """A randomised RealNVP (dims 2..6) or RealNVPImage on a tiny image, and an input batch."""
    actnorm, inv_conv = draw(st.booleans()), draw(st.booleans())
    torch.manual_seed(draw(st.integers(0, 2**16)))
    if draw(st.booleans()):
        dim = draw(st.integers(2, 6))
        model = RealNVP(dim, draw(st.integers(1, 3)), 16, actnorm, inv_conv, zero_init=False)
    else:
        shape = draw(st.sampled_from([(1, 4, 4), (2, 4, 4), (1, 2, 2)]))
        scales = 1 if shape[1] == 2 else draw(st.integers(1, 2))
        blocks = draw(st.integers(1, 2))
        model = RealNVPImage(shape, scales, blocks, 8, actnorm, inv_conv)
    randomise(model, model.event_shape, std=0.2 if len(model.event_shape) == 1 else 0.05)
    return model, torch.randn(2, *model.event_shape)


@SETTINGS
@given(models())
def test_models_invert_exactly_with_autograd_logdet(case):
    model, x = case
    z, logdet = model(x)
    assert z.shape == x.shape
    check_invertible(model, model.inverse_and_logdet, x)
    torch.testing.assert_close(model.inverse(z), x, rtol=1e-10, atol=1e-10)


MODELS = {
    "realnvp": lambda: RealNVP(3, num_layers=4, hidden=16, zero_init=False),
    "realnvp_glow": lambda: RealNVP(4, 3, 16, actnorm=True, inv_conv=True, zero_init=False),
    "image_glow": lambda: RealNVPImage((1, 4, 4), hidden=8),
    "image_plain": lambda: RealNVPImage((2, 4, 4), 1, 2, 8, actnorm=False, inv_conv=False),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_flow_contract(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    shape = model.event_shape
    randomise(model, shape, std=0.2 if len(shape) == 1 else 0.05)
    assert model.log_prob_kind == "exact"
    x = torch.randn(5, *shape)

    # log_prob: (B,), finite, and every parameter gets a gradient.
    lp = model.log_prob(x)
    assert lp.shape == (5,) and bool(torch.isfinite(lp).all())
    (lp * torch.randn(5)).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert p.numel() == 0 or bool((p.grad != 0).any()), pname
    assert model.bits_per_dim(x, 2 / 256).shape == (5,)

    # Sampling: shapes, one-pass log-density equals log_prob, seeded reproducibility.
    s = model.sample(4, generator=torch.Generator().manual_seed(1))
    assert s.shape == (4, *shape)
    s2, lp2 = model.sample_and_log_prob(4, generator=torch.Generator().manual_seed(1))
    assert s2.shape == (4, *shape) and lp2.shape == (4,)
    torch.testing.assert_close(s2, s, rtol=0, atol=0)
    torch.testing.assert_close(lp2, model.log_prob(s2), rtol=1e-10, atol=1e-10)

    # state_dict round trip into a freshly built model.
    fresh = MODELS[name]()
    fresh.load_state_dict(model.state_dict())
    assert torch.equal(fresh.log_prob(x), model.log_prob(x))

    # Bad inputs name the expected and the received shape.
    with pytest.raises(ValueError, match=r"shape \(batch, .*got \(5, 7\)"):
        model.log_prob(torch.randn(5, 7))
    bad = x.clone()
    bad[0].view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        model.log_prob(bad)
    with pytest.raises(ValueError, match="n must be"):
        model.sample(0)


def test_zero_init_is_identity():
    model = RealNVP(3, num_layers=2, hidden=8)
    x = torch.randn(4, 3)
    expected = -0.5 * (x**2).sum(1) - 1.5 * math.log(2 * math.pi)
    torch.testing.assert_close(model.log_prob(x), expected)


def test_density_integrates_to_one():
    torch.manual_seed(3)
    model = RealNVP(2, num_layers=4, hidden=32, zero_init=False)
    randomise(model, (2,), seed=3)
    side, n = 12.0, 481
    grid = torch.linspace(-side, side, n)
    pts = torch.cartesian_prod(grid, grid)
    with torch.no_grad():
        dens = torch.cat([model.log_prob(chunk).exp() for chunk in pts.split(40_000)])
    dens = dens.reshape(n, n)
    mass = torch.trapezoid(torch.trapezoid(dens, grid, dim=1), grid)
    assert abs(float(mass) - 1.0) < 0.01, float(mass)


@pytest.mark.parametrize("shape", [(64, 3), (8, 3, 4, 4)])
def test_actnorm_data_dependent_init(shape):
    x = torch.randn(*shape) * torch.tensor([0.5, 2.0, 7.0]).reshape(1, 3, *[1] * (len(shape) - 2))
    layer = ActNorm(3)
    y, logdet = layer(x + 3.0)
    dims = [0, *range(2, len(shape))]
    torch.testing.assert_close(y.mean(dims), torch.zeros(3), rtol=0, atol=1e-12)
    torch.testing.assert_close(y.var(dims, unbiased=False), torch.ones(3), rtol=1e-10, atol=0)
    assert bool(layer.initialized) and logdet.shape == (shape[0],)
    before = layer.log_scale.detach().clone()
    layer(torch.randn(*shape))  # no re-initialisation afterwards
    assert torch.equal(layer.log_scale, before)
    with pytest.raises(ValueError, match=r"at least 2 values per channel.*\(1, 3\)"):
        ActNorm(3)(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"\(batch, 3, \.\.\.\), got \(4, 2\)"):
        ActNorm(3)(torch.randn(4, 2))


def test_squeeze_shapes_and_errors():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    y, logdet = Squeeze()(x)
    assert y.shape == (1, 4, 2, 2) and torch.equal(logdet, torch.zeros(1))
    assert torch.equal(y[0, :, 0, 0], torch.tensor([0.0, 1.0, 4.0, 5.0]))
    with pytest.raises(ValueError, match=r"got \(1, 1, 3, 4\)"):
        Squeeze()(torch.randn(1, 1, 3, 4))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: RealNVP(1), "dim must be an integer >= 2, got 1"),
        (lambda: RealNVP(2, num_layers=0), "num_layers must be an integer >= 1, got 0"),
        (lambda: RealNVP(2, hidden=0), "hidden must be an integer >= 1, got 0"),
        (lambda: RealNVPImage((1, 6, 6)), r"\(1, 6, 6\) must be divisible by 2 \*\* num_scales"),
        (lambda: RealNVPImage((1, 4)), r"shape must be \(C, H, W\).*\(1, 4\)"),
        (lambda: RealNVPImage((1, 4, 4), num_scales=0), "num_scales must be .* got 0"),
        (lambda: RealNVPImage((1, 4, 4), blocks_per_scale=0), "blocks_per_scale .* got 0"),
        (lambda: AffineCoupling(torch.tensor([0.5, 1.0]), torch.nn.Identity()), "mask must be"),
        (lambda: channel_mask((1, 4, 4)), r"at least 2 channels, got shape \(1, 4, 4\)"),
    ],
)
def test_constructor_arguments_are_validated(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_training_lowers_heldout_nll():
    g = torch.Generator().manual_seed(0)

    def mixture(n: int) -> torch.Tensor:
        # Two correlated Gaussian blobs at (-2, -1) and (2, 1).
        side = torch.randint(0, 2, (n, 1), generator=g) * 2.0 - 1.0
        eps = torch.randn(n, 2, generator=g) @ torch.tensor([[0.4, 0.2], [0.0, 0.3]])
        return side * torch.tensor([2.0, 1.0]) + eps

    torch.manual_seed(0)
    model = RealNVP(2)
    held_out = mixture(2000)
    with torch.no_grad():
        before = -model.log_prob(held_out).mean().item()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model.loss(mixture(256))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = -model.log_prob(held_out).mean().item()
    assert after < before - 0.3, (before, after)
