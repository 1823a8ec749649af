"""Tests for the DiT backbone: patches, positions, adaLN-Zero, labels, use as a score network."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import sdegen
from sdegen.assembly import NETWORKS, TrainConfig, build_network
from sdegen.divergence import VmapMemo, divergence
from sdegen.models import NULL_LABEL, DiT, ScoreModel, patchify, unpatchify
from sdegen.models.dit import DiTBlock, sincos_pos_embed
from sdegen.solvers.pf_ode import ode_drift

F32, F64 = torch.float32, torch.float64


def tiny(**kw) -> DiT:
    args = dict(in_channels=1, patch_size=2, hidden=16, depth=2, heads=2)
    args.update(kw)
    return DiT(**args)


def wake(net: torch.nn.Module, seed: int = 0, std: float = 0.3) -> torch.nn.Module:
    """Give every zero-initialised (adaLN-Zero) parameter random values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            if not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * std)
    return net


def randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- patches


@pytest.mark.parametrize(
    "shape, p", [((2, 1, 8, 8), 2), ((1, 3, 8, 12), 4), ((3, 2, 6, 6), 3), ((2, 1, 8, 8), 1)]
)
def test_patchify_layout_by_hand(shape, p):
    x = randn(*shape)
    tokens = patchify(x, p)
    b, c, h, w = shape
    gw = w // p
    assert tokens.shape == (b, (h // p) * gw, p * p * c)
    for i in range(h // p):
        for j in range(gw):
            patch = x[:, :, i * p : (i + 1) * p, j * p : (j + 1) * p]  # (B, C, p, p)
            assert torch.equal(tokens[:, i * gw + j], patch.permute(0, 2, 3, 1).reshape(b, -1))


@given(
    b=st.integers(1, 3),
    c=st.integers(1, 3),
    gh=st.integers(1, 4),
    gw=st.integers(1, 4),
    p=st.integers(1, 4),
)
def test_patchify_unpatchify_round_trip_exactly(b, c, gh, gw, p):
    x = randn(b, c, gh * p, gw * p)
    assert torch.equal(unpatchify(patchify(x, p), p, gh * p, gw * p), x)
    t = randn(b, gh * gw, p * p * c, seed=1)
    assert torch.equal(patchify(unpatchify(t, p, gh * p, gw * p), p), t)


def test_patch_functions_refuse_bad_shapes():
    with pytest.raises(ValueError, match=r"divisible by patch_size 3.*height 8, width 9"):
        patchify(torch.zeros(1, 1, 8, 9), 3)
    with pytest.raises(ValueError, match=r"\(batch, channels, height, width\), got \(8, 8\)"):
        patchify(torch.zeros(8, 8), 2)
    with pytest.raises(ValueError, match="patch_size must be an integer >= 1, got 0"):
        patchify(torch.zeros(1, 1, 8, 8), 0)
    with pytest.raises(ValueError, match=r"tokens must have shape \(batch, 16, p \* p \* chan"):
        unpatchify(torch.zeros(1, 15, 4), 2, 8, 8)
    with pytest.raises(ValueError, match="height 7 and width 8 must be divisible by patch"):
        unpatchify(torch.zeros(1, 12, 4), 2, 7, 8)


# ---------------------------------------------------------------- positions


def test_sincos_pos_embed_by_hand():
    dim, gh, gw = 8, 3, 5
    pos = sincos_pos_embed(dim, gh, gw)
    assert pos.shape == (gh * gw, dim)
    for i in range(gh):
        for j in range(gw):
            row = pos[i * gw + j]
            for k in range(2):  # dim / 4 frequencies per axis: 10000^(-k / 2)
                f = 10000.0 ** (-k / 2)
                expect = [math.cos(i * f), math.sin(i * f), math.cos(j * f), math.sin(j * f)]
                got = [row[k], row[2 + k], row[4 + k], row[6 + k]]
                assert [float(v) for v in got] == pytest.approx(expect, abs=1e-12)
    with pytest.raises(ValueError, match="multiple of 4.*got 6"):
        sincos_pos_embed(6, 2, 2)


def _permute_patches(x: torch.Tensor, perm: torch.Tensor, p: int) -> torch.Tensor:
    return unpatchify(patchify(x, p)[:, perm], p, x.shape[2], x.shape[3])


@pytest.mark.parametrize("pos_embed", ["sincos", "learned"])
def test_positions_break_patch_permutation_equivariance(pos_embed, monkeypatch):
    """Without positions a transformer over patches is permutation-equivariant: permuting the
    input patches permutes the output patches. The positional embedding breaks that."""
    torch.manual_seed(0)
    net = wake(tiny(pos_embed=pos_embed, input_size=8).double())
    x, c = randn(2, 1, 8, 8), torch.tensor([0.3, -1.0], dtype=F64)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    permuted_out = _permute_patches(net(x, c), perm, 2)
    out_of_permuted = net(_permute_patches(x, perm, 2), c)
    assert (out_of_permuted - permuted_out).abs().max() > 1e-3
    # control: the same network with its positions removed is exactly equivariant
    monkeypatch.setattr(net, "positions", lambda gh, gw, like: torch.zeros(gh * gw, 16, dtype=F64))
    torch.testing.assert_close(
        net(_permute_patches(x, perm, 2), c), _permute_patches(net(x, c), perm, 2)
    )


# ---------------------------------------------------------------- shapes and errors


@pytest.mark.parametrize(
    "kw, shape",
    [
        ({}, (3, 1, 8, 8)),
        ({"patch_size": 4, "in_channels": 3}, (2, 3, 8, 12)),
        ({"patch_size": 1, "out_channels": 2}, (2, 1, 4, 4)),
        ({"patch_size": 3, "in_channels": 2, "hidden": 24, "heads": 3}, (1, 2, 6, 9)),
        ({"pos_embed": "learned", "input_size": (4, 6)}, (2, 1, 4, 6)),
    ],
)
def test_output_shape_and_every_parameter_learns(kw, shape):
    torch.manual_seed(0)
    net = wake(tiny(**kw).float())
    x = randn(*shape, dtype=F32)
    out = net(x, torch.linspace(-2, 2, shape[0], dtype=F32))
    assert out.shape == (shape[0], net.out_channels, *shape[2:]) and out.dtype == F32
    target = randn(*out.shape, seed=1, dtype=F32)
    ((out - target) ** 2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name} got no gradient"


def test_examples_do_not_interact_across_the_batch():
    torch.manual_seed(0)
    net = wake(tiny().double())
    x, c = randn(4, 1, 8, 8), torch.tensor([0.1, 2.0, -3.0, 0.5], dtype=F64)
    together = net(x, c)
    for i in range(4):
        torch.testing.assert_close(net(x[i : i + 1], c[i : i + 1]), together[i : i + 1])


@pytest.mark.parametrize(
    "x_shape, c_shape, pattern",
    [
        ((2, 1, 7, 8), (2,), r"divisible by patch_size 2.*height 7, width 8"),
        ((2, 1, 8, 10), (2,), None),  # sincos takes any size divisible by p
        ((2, 3, 8, 8), (2,), r"\(batch, 1, height, width\), got \(2, 3, 8, 8\)"),
        ((2, 64), (2,), r"\(batch, 1, height, width\), got \(2, 64\)"),
        ((2, 1, 8, 8), (3,), r"c_noise must have shape \(2,\), got \(3,\)"),
    ],
)
def test_forward_bad_shapes(x_shape, c_shape, pattern):
    net = tiny()
    x, c = torch.zeros(x_shape), torch.zeros(c_shape)
    if pattern is None:
        assert net(x, c).shape == x_shape
        return
    with pytest.raises(ValueError, match=pattern):
        net(x, c)


def test_learned_positions_refuse_another_size():
    net = tiny(pos_embed="learned", input_size=8)
    with pytest.raises(ValueError, match=r"for 8x8 images, got shape \(1, 1, 8, 4\).*sincos"):
        net(torch.zeros(1, 1, 8, 4), torch.zeros(1))


@pytest.mark.parametrize(
    "kw, pattern",
    [
        ({"hidden": 18, "heads": 4}, r"hidden \(18\) must be divisible by heads \(4\)"),
        ({"hidden": 18, "heads": 3}, r"hidden \(18\) must be a multiple of 4 for pos_embed"),
        ({"patch_size": 0}, "patch_size must be an integer >= 1, got 0"),
        ({"depth": 0}, "depth must be an integer >= 1, got 0"),
        ({"mlp_ratio": float("nan")}, "mlp_ratio must be finite"),
        ({"pos_embed": "rope"}, "unknown pos_embed 'rope'; expected one of: sincos, learned"),
        ({"pos_embed": "learned"}, "needs input_size"),
        ({"pos_embed": "learned", "input_size": 7}, r"input_size \(7, 7\) must be divisible"),
        ({"pos_embed": "learned", "input_size": (8, 8, 1)}, "input_size must be an int or"),
    ],
)
def test_bad_arguments(kw, pattern):
    with pytest.raises(ValueError, match=pattern):
        tiny(**kw)


# ---------------------------------------------------------------- adaLN-Zero


def test_adaln_zero_output_is_exactly_zero_and_blocks_are_identities():
    torch.manual_seed(0)
    net = tiny(num_classes=3).double()
    x, c = randn(4, 1, 8, 8), randn(4, seed=2) * 5
    y = torch.tensor([0, 2, NULL_LABEL, 1])
    assert torch.equal(net(x, c, y), torch.zeros_like(x))
    cond = net.time_mlp(net.embed(c))
    h = randn(4, 16, 16, seed=3)
    for block in net.blocks:
        assert torch.equal(block(h, cond), h)


def test_block_matches_an_independent_computation():
    """A DiT block with non-zero modulation, against attention and adaLN written out."""
    torch.manual_seed(0)
    hidden, heads, n, b = 8, 2, 5, 3
    block = wake(DiTBlock(hidden, heads, 2.0, cond_dim=6).double())
    h, cond = randn(b, n, hidden), randn(b, 6, seed=1)
    mods = (cond @ block.ada.weight.T + block.ada.bias).reshape(b, 6, hidden)
    shift1, scale1, gate1, shift2, scale2, gate2 = mods.unbind(1)

    def layer_norm(u):
        mean = u.mean(-1, keepdim=True)
        var = ((u - mean) ** 2).mean(-1, keepdim=True)
        return (u - mean) / torch.sqrt(var + 1e-6)

    u = layer_norm(h) * (1 + scale1[:, None]) + shift1[:, None]
    qkv = u @ block.qkv.weight.T + block.qkv.bias
    q, k, v = qkv.split(hidden, dim=-1)
    dh = hidden // heads
    heads_out = []
    for j in range(heads):
        sl = slice(j * dh, (j + 1) * dh)
        att = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(dh), dim=-1)
        heads_out.append(att @ v[..., sl])
    attn = torch.cat(heads_out, -1) @ block.proj.weight.T + block.proj.bias
    h1 = h + gate1[:, None] * attn
    u = layer_norm(h1) * (1 + scale2[:, None]) + shift2[:, None]
    mlp = block.mlp[2](F.gelu(block.mlp[0](u), approximate="tanh"))
    torch.testing.assert_close(block(h, cond), h1 + gate2[:, None] * mlp)


def _train(net, steps, y, seed=0):
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    x, c = randn(8, 1, 4, 4, seed=seed), torch.linspace(-3, 3, 8, dtype=F64)
    target = randn(8, 1, 4, 4, seed=seed + 1)
    for _ in range(steps):
        loss = ((net(x, c, y) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_labels_reach_the_output_through_the_gates_after_training():
    """adaLN-Zero: the first step moves only the zero-initialised output layer (every other
    gradient passes through it), so the labels cannot matter yet; after three steps the
    modulations are non-zero and they do."""
    torch.manual_seed(0)
    net = tiny(num_classes=4).double()
    y = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    x, c = randn(2, 1, 4, 4, seed=9), torch.tensor([0.5, -0.5], dtype=F64)
    _train(net, 1, y)
    assert bool(net(x, c).any())  # the output layer has learned
    torch.testing.assert_close(net(x, c, torch.tensor([0, 0])), net(x, c, torch.tensor([3, 3])))
    _train(net, 2, y)
    diff = (net(x, c, torch.tensor([0, 0])) - net(x, c, torch.tensor([3, 3]))).abs().max()
    assert diff > 1e-6
    # y = None is the null label everywhere
    torch.testing.assert_close(net(x, c), net(x, c, torch.full((2,), NULL_LABEL)))


def test_label_errors():
    with pytest.raises(ValueError, match="unconditional model"):
        tiny()(torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="label 5 is out of range; expected 0..2"):
        tiny(num_classes=3)(torch.zeros(2, 1, 8, 8), torch.zeros(2), torch.tensor([0, 5]))


# ---------------------------------------------------------------- as a score network


def test_zero_init_score_model_samples_and_likelihood_in_closed_form():
    """An untrained DiT predicts eps = 0, so the score is 0 and the PF-ODE is dx/dt = f(t) x:
    x(t) = x(T) alpha(t) / alpha(T). DDIM and DPM-Solver++ integrate it exactly, and the
    likelihood is that of N(0, (alpha(t_min) / alpha(T))^2 I)."""
    sde = sdegen.VPSDE()
    model = ScoreModel(tiny().double(), sde, "eps")
    z = randn(3, 1, 4, 4)
    for method in ("ddim", "dpmpp_2m"):
        res = sdegen.sample(model, sde, z.shape, method=method, nfe=5, noise=z)
        assert res.nfe == 5
        # the final denoising step returns x0 = x(t_min) / alpha(t_min) = z / alpha(T)
        torch.testing.assert_close(res.x, z / sde.alpha(torch.tensor(sde.T, dtype=F64)))
    x = randn(2, 1, 4, 4, seed=5)
    ll = sdegen.log_likelihood(model, sde, x, rtol=1e-8, atol=1e-8)
    T, t0 = torch.tensor([sde.T, sde.t_min], dtype=F64)
    ratio = sde.alpha(T) / sde.alpha(t0)
    expected = sde.prior_log_prob(x * ratio) + 16 * torch.log(ratio)
    torch.testing.assert_close(ll.log_prob, expected, rtol=0, atol=1e-6)


def test_divergence_of_a_dit_drift_by_torch_func_equals_the_jacobian_trace():
    torch.manual_seed(0)
    sde = sdegen.VPSDE()
    model = ScoreModel(wake(tiny(num_classes=2).double()), sde, "v")
    x, t = randn(2, 1, 4, 4), torch.full((2,), 0.4, dtype=F64)
    memo = VmapMemo()
    v, div = divergence(lambda u: ode_drift(model, sde, u, t), x, memo=memo)
    assert memo.func and memo.vmap, memo.reason  # no fallback to the autograd loop
    for i in range(2):
        jac = torch.autograd.functional.jacobian(
            lambda u, i=i: ode_drift(model, sde, u[None], t[i : i + 1])[0], x[i]
        )
        torch.testing.assert_close(div[i], jac.reshape(16, 16).trace())


def test_registered_as_a_config_network():
    assert "dit" in NETWORKS
    cfg = TrainConfig(data="digits", network="dit", network_params={"hidden": 32, "depth": 1})
    net = build_network(cfg, (1, 8, 8), num_classes=10)
    assert isinstance(net, DiT) and net.num_classes == 10 and len(net.blocks) == 1
    with pytest.raises(ValueError, match="network 'dit' needs images"):
        build_network(cfg, (2,))
    bad = TrainConfig(data="digits", network="dit", network_params={"channels": 8})
    with pytest.raises(ValueError, match="unknown parameter.*channels.*accepted:.*patch_size"):
        build_network(bad, (1, 8, 8))
