"""Tests for the noise-level embeddings, the MLP and the U-Net score networks."""

from __future__ import annotations

import math

import pytest
import torch

from sdegen.models.networks import MLP, GaussianFourierEmbedding, SinusoidalEmbedding
from sdegen.models.unet import UNet

# conftest.py may change the default dtype, so every tensor and module states its dtype: float32
# where only shapes and gradients matter (faster convolutions), float64 where values are compared.
F32, F64 = torch.float32, torch.float64


def small_unet(**kw) -> UNet:
    """A narrow U-Net that keeps every test fast; keyword arguments override the defaults."""
    args = dict(channels=16, groups=4, channel_mult=(1, 2), attention_levels=(1,))
    args.update(kw)
    return UNet(**args).float()


def random_loss(out: torch.Tensor) -> torch.Tensor:
    # A random target makes every output element matter, so no gradient is zero by symmetry.
    target = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    return ((out - target) ** 2).sum()


def assert_all_grads(net: torch.nn.Module) -> None:
    for name, p in net.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} got an all-zero gradient"


# ---------------------------------------------------------------- embeddings


def test_sinusoidal_hand_computed() -> None:
    emb = SinusoidalEmbedding(8, max_period=10000.0)
    out = emb(torch.tensor([0.0, 3.0], dtype=F64))
    assert out.shape == (2, 8) and out.dtype == F64
    # t = 0: every cosine 1, every sine 0.
    torch.testing.assert_close(out[0], torch.tensor([1.0] * 4 + [0.0] * 4, dtype=F64))
    for k in range(4):
        freq = 10000.0 ** (-k / 4)
        assert out[1, k].item() == pytest.approx(math.cos(3.0 * freq), abs=1e-12)
        assert out[1, 4 + k].item() == pytest.approx(math.sin(3.0 * freq), abs=1e-12)


def test_sinusoidal_dtypes() -> None:
    emb = SinusoidalEmbedding(6)
    t = torch.tensor([10.0, 500.0], dtype=F32)
    assert emb(t).dtype == F32
    half = emb(t.half())
    assert half.dtype == torch.float16
    # Phases are computed in float32, so half output is only rounded, not garbled.
    torch.testing.assert_close(half.float(), emb(t), atol=2e-3, rtol=0)
    # Integer timestep indices are accepted too.
    torch.testing.assert_close(emb(torch.tensor([10, 500])).to(F32), emb(t), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dim", [0, 1, 7, -2, 3.0])
def test_sinusoidal_bad_dim(dim) -> None:
    with pytest.raises(ValueError, match=rf"dim.*{dim}"):
        SinusoidalEmbedding(dim)


def test_embedding_bad_input_shape() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        SinusoidalEmbedding(4)(torch.zeros(2, 3))


def test_fourier_embedding() -> None:
    torch.manual_seed(0)
    emb = GaussianFourierEmbedding(8, scale=2.0).double()
    assert "W" in dict(emb.named_buffers()) and list(emb.parameters()) == []
    t = torch.tensor([0.0, 0.3], dtype=F64)
    out = emb(t)
    assert out.shape == (2, 8)
    torch.testing.assert_close(out[0], torch.tensor([0.0] * 4 + [1.0] * 4, dtype=F64))
    args = 2 * math.pi * 0.3 * emb.W
    torch.testing.assert_close(out[1], torch.cat([torch.sin(args), torch.cos(args)]))

    state = emb.state_dict()
    assert list(state) == ["W"]
    torch.manual_seed(123)  # a fresh module draws different frequencies ...
    other = GaussianFourierEmbedding(8, scale=2.0).double()
    assert not torch.equal(other.W, emb.W)
    other.load_state_dict(state)  # ... until the saved ones are loaded
    torch.testing.assert_close(other(t), out, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        ({"dim": 5}, "dim.*5"),
        ({"dim": 4, "scale": 0.0}, "scale.*0"),
        ({"dim": 4, "scale": float("inf")}, "scale.*inf"),
        ({"dim": 4, "scale": -1.0}, "scale.*-1"),
    ],
)
def test_fourier_bad_args(kw, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        GaussianFourierEmbedding(**kw)


# ---------------------------------------------------------------- MLP


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
@pytest.mark.parametrize(("dim", "batch", "depth"), [(1, 3, 1), (2, 1, 3), (7, 5, 2)])
def test_mlp_shape_and_grads(embedding, dim, batch, depth) -> None:
    torch.manual_seed(0)
    net = MLP(dim, hidden=32, depth=depth, embed_dim=16, embedding=embedding).float()
    x, t = torch.randn(batch, dim, dtype=F32), torch.randn(batch, dtype=F32)
    out = net(x, t)
    assert out.shape == (batch, dim)
    random_loss(out).backward()
    assert_all_grads(net)


@pytest.mark.parametrize("embedding", ["sinusoidal", "fourier"])
def test_mlp_depends_on_noise_level_and_input(embedding) -> None:
    torch.manual_seed(0)
    net = MLP(3, hidden=32, embed_dim=16, embedding=embedding).double()
    x = torch.randn(4, 3, dtype=F64)
    t = torch.full((4,), 0.5, dtype=F64)
    out = net(x, t)
    assert out.dtype == F64
    assert (net(x, t + 1.0) - out).abs().amax(dim=1).min() > 1e-6
    assert (net(x + 1.0, t) - out).abs().amax(dim=1).min() > 1e-6


def test_mlp_batch_independent() -> None:
    torch.manual_seed(0)
    net = MLP(4, hidden=32, embed_dim=16).double()
    x, t = torch.randn(6, 4, dtype=F64), torch.randn(6, dtype=F64)
    single = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(net(x, t), single, rtol=1e-12, atol=1e-12)


def test_mlp_batched_jacobian() -> None:
    torch.manual_seed(0)
    dim, batch = 3, 4
    net = MLP(dim, hidden=32, embed_dim=16).double()
    x = torch.randn(batch, dim, dtype=F64, requires_grad=True)
    t = torch.randn(batch, dtype=F64)
    out = net(x, t)
    basis = torch.eye(dim, dtype=F64)[:, None, :].expand(dim, batch, dim)
    (rows,) = torch.autograd.grad(out, x, grad_outputs=basis, is_grads_batched=True)
    jac = rows.permute(1, 0, 2)  # (batch, out_i, in_j)
    for b in (0, batch - 1):
        ref = torch.autograd.functional.jacobian(
            lambda xb, b=b: net(xb[None], t[b : b + 1])[0], x[b].detach()
        )
        torch.testing.assert_close(jac[b], ref, rtol=1e-10, atol=1e-12)
    fjac = torch.func.jacrev(lambda xs: net(xs, t))(x.detach())  # (batch, dim, batch, dim)
    torch.testing.assert_close(fjac[torch.arange(batch), :, torch.arange(batch)], jac)


@pytest.mark.parametrize(
    ("x_shape", "t_shape", "pattern"),
    [
        ((4, 2), (4,), r"\(batch, 3\), got \(4, 2\)"),
        ((4,), (4,), r"\(batch, 3\), got \(4,\)"),
        ((4, 3, 1), (4,), r"got \(4, 3, 1\)"),
        ((4, 3), (3,), r"c_noise.*\(4,\).*\(3,\)"),
        ((4, 3), (4, 1), r"c_noise.*\(4, 1\)"),
        ((4, 3), (), r"c_noise.*\(\)"),
    ],
)
def test_mlp_bad_shapes(x_shape, t_shape, pattern) -> None:
    net = MLP(3, hidden=8, embed_dim=4)
    with pytest.raises(ValueError, match=pattern):
        net(torch.zeros(x_shape), torch.zeros(t_shape))


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        ({"embedding": "fourir"}, r"fourir.*sinusoidal, fourier"),
        ({"embed_dim": 5}, "embed_dim.*5"),
        ({"depth": 0}, "depth.*0"),
        ({"hidden": 0}, "hidden.*0"),
        ({"dim": 0}, "dim.*0"),
    ],
)
def test_mlp_bad_args(kw, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        MLP(**{"dim": 3, **kw})


# ---------------------------------------------------------------- U-Net


@pytest.mark.parametrize(("channels", "size"), [(1, 8), (3, 16), (1, 32), (3, 8)])
def test_unet_shapes(channels, size) -> None:
    torch.manual_seed(0)
    net = small_unet(in_channels=channels)
    out = net(torch.randn(2, channels, size, size, dtype=F32), torch.randn(2, dtype=F32))
    assert out.dtype == F32 and out.shape == (2, channels, size, size)


def test_unet_non_square_and_out_channels() -> None:
    net = small_unet(in_channels=3, out_channels=2, channel_mult=(1, 2, 2), num_res_blocks=2)
    assert net(torch.randn(2, 3, 8, 16, dtype=F32), torch.randn(2, dtype=F32)).shape == (
        2,
        2,
        8,
        16,
    )


def test_unet_default_config() -> None:
    torch.manual_seed(0)
    net = UNet().float()
    x = torch.randn(16, 1, 8, 8, dtype=F32)
    out = net(x, torch.randn(16, dtype=F32))
    assert out.shape == x.shape
    random_loss(out).backward()
    assert_all_grads(net)


@pytest.mark.parametrize("attention_levels", [(0, 1), ()])
def test_unet_grads_reach_every_parameter(attention_levels) -> None:
    torch.manual_seed(0)
    net = small_unet(in_channels=3, attention_levels=attention_levels, dropout=0.1)
    random_loss(net(torch.randn(3, 3, 8, 8, dtype=F32), torch.randn(3, dtype=F32))).backward()
    assert_all_grads(net)


def test_unet_float64_depends_on_noise_level_and_input() -> None:
    torch.manual_seed(0)
    net = small_unet().double()
    x = torch.randn(3, 1, 8, 8, dtype=F64)
    t = torch.full((3,), 2.0, dtype=F64)
    out = net(x, t)
    assert out.dtype == F64
    assert (net(x, t + 1.0) - out).flatten(1).abs().amax(dim=1).min() > 1e-6
    x2 = x.clone()
    x2[:, :, 0, 0] += 1.0
    assert (net(x2, t) - out).flatten(1).abs().amax(dim=1).min() > 1e-6


@pytest.mark.parametrize("attention_levels", [(1,), (0, 1)])
def test_unet_batch_independent(attention_levels) -> None:
    torch.manual_seed(0)
    # Training mode (dropout is 0): a batch-statistics norm would mix examples only there.
    net = small_unet(in_channels=2, attention_levels=attention_levels).double().train()
    x, t = torch.randn(4, 2, 8, 8, dtype=F64), torch.randn(4, dtype=F64)
    single = torch.cat([net(x[i : i + 1], t[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(net(x, t), single, rtol=1e-10, atol=1e-12)
    # Changing one example must leave the others' outputs exactly as they were.
    x2 = x.clone()
    x2[0] = torch.randn(2, 8, 8, dtype=F64)
    torch.testing.assert_close(net(x2, t)[1:], net(x, t)[1:], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    ("x_shape", "t_shape", "pattern"),
    [
        ((2, 3, 8, 8), (2,), r"\(batch, 1, height, width\), got \(2, 3, 8, 8\)"),
        ((2, 8, 8), (2,), r"got \(2, 8, 8\)"),
        ((2, 1, 10, 8), (2,), r"divisible by 4.*\(2, 1, 10, 8\)"),
        ((2, 1, 8, 6), (2,), r"divisible by 4.*\(2, 1, 8, 6\)"),
        ((2, 1, 8, 8), (3,), r"c_noise.*\(3,\)"),
    ],
)
def test_unet_bad_shapes(x_shape, t_shape, pattern) -> None:
    net = small_unet(channel_mult=(1, 1, 1), attention_levels=())
    with pytest.raises(ValueError, match=pattern):
        net(torch.zeros(x_shape), torch.zeros(t_shape))


@pytest.mark.parametrize(
    ("kw", "pattern"),
    [
        ({"channels": 30, "groups": 8}, r"channels \(30\).*groups \(8\)"),
        ({"attention_levels": (2,)}, r"attention_levels.*out of range: \[2\]"),
        ({"channel_mult": ()}, "channel_mult"),
        ({"channel_mult": (1, 0)}, r"channel_mult.*\(1, 0\)"),
        ({"num_res_blocks": 0}, "num_res_blocks.*0"),
        ({"dropout": 1.0}, "dropout.*1.0"),
        ({"in_channels": 0}, "in_channels.*0"),
        ({"embed_dim": 0}, "embed_dim.*0"),
    ],
)
def test_unet_bad_args(kw, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        UNet(**kw)
