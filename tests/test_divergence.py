"""sdegen.divergence.divergence(f, x): the exact trace against the trace of the brute-force
autograd Jacobian on real networks (the package U-Net, a diffusers UNet2DModel with attention
and group norm, an MLP) and on the analytic mixture's PF-ODE drift; Hutchinson's estimate
against the Jacobian's quadratic forms; the loop fallback for fields torch.func cannot run or
vmap; gradients through the divergence (create_graph) equal to those of the autograd path."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sdegen.divergence import VmapMemo, divergence, exact_divergence, probes_like
from sdegen.models import UNet
from sdegen.sde import VPSDE
from sdegen.solvers.pf_ode import ode_drift

from .conftest import mixture


def perturbed(module: nn.Module, std: float, seed: int) -> nn.Module:
    """`module` with every parameter shifted by N(0, std^2), so no zero-initialised layer makes
    the Jacobian trivially zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(std * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def jacobian_blocks(f, x: torch.Tensor) -> torch.Tensor:
    """Per-example Jacobians (B, D, D) of f at x from torch.autograd.functional.jacobian."""
    B, D = x.shape[0], x[0].numel()
    jac = torch.autograd.functional.jacobian(f, x).reshape(B, D, B, D)
    return torch.stack([jac[b, :, b, :] for b in range(B)])


def mlp_field(dim: int = 5):
    torch.manual_seed(0)
    net = perturbed(
        nn.Sequential(
            nn.Linear(dim, 32), nn.Tanh(), nn.Linear(32, 32), nn.SiLU(), nn.Linear(32, dim)
        ),
        0.3,
        0,
    ).double()
    x = torch.randn(3, dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return net, x


def unet_field():
    torch.manual_seed(0)
    net = UNet(1, channels=16, channel_mult=(1, 2), attention_levels=(1,), groups=8)
    net = perturbed(net, 0.05, 0).double()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    c = torch.tensor([0.3, -0.5], dtype=torch.float64)
    return (lambda u: net(u, c)), x


def mixture_field():
    sde = VPSDE()
    model = mixture(sde, dim=3)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.full((4,), 0.3, dtype=torch.float64)
    return (lambda u: ode_drift(model, sde, u, t)), x


def diffusers_field():
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    ).double()
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    return (lambda u: unet(u, 10).sample), x


FIELDS = {
    "mlp": mlp_field,
    "package_unet": unet_field,
    "mixture_drift": mixture_field,
    "diffusers_unet": diffusers_field,
}


@pytest.mark.parametrize("name", list(FIELDS))
def test_exact_divergence_is_the_jacobian_trace_on_real_networks(name):
    f, x = FIELDS[name]()
    expected = jacobian_blocks(f, x).diagonal(dim1=1, dim2=2).sum(1)
    assert float(expected.abs().max()) > 1e-3  # not trivially zero
    for chunk in (1, 7, None):
        memo = VmapMemo()
        v, div = divergence(f, x, chunk=chunk, memo=memo)
        torch.testing.assert_close(div, expected, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(v, f(x), rtol=0, atol=0)
        assert memo.func and memo.vmap, memo.reason  # batched by torch.func, no fallback


@pytest.mark.parametrize("name", ["mlp", "package_unet"])
@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_mean_converges_to_the_exact_trace(name, noise):
    f, x = FIELDS[name]()
    J = jacobian_blocks(f, x)
    K = 4000 if name == "mlp" else 1000
    probes = probes_like(x, K, noise, torch.Generator().manual_seed(2))
    _, est = divergence(f, x, trace="hutchinson", probes=probes)
    e = probes.reshape(K, x.shape[0], -1)
    per = torch.einsum("kbi,bij,kbj->kb", e, J, e)  # each probe's e^T J e from the Jacobian
    torch.testing.assert_close(est, per.mean(0), rtol=1e-9, atol=1e-10)
    exact = J.diagonal(dim1=1, dim2=2).sum(1)
    se = per.std(0) / math.sqrt(K)
    assert bool((se > 0).all()) and bool(((est - exact).abs() < 5 * se).all())


class OldStyleSquare(torch.autograd.Function):
    """An autograd.Function without setup_context: torch.func cannot run its forward."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 2 * x * g


class ItemInBackwardSquare(torch.autograd.Function):
    """torch.func runs the forward, but the backward calls .item(), which vmap refuses."""

    @staticmethod
    def forward(x):
        return x * x

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        scale = 2.0 if float(g.abs().sum()) >= 0 else 0.0  # data-dependent branch via .item()
        return scale * x * g


@pytest.mark.parametrize("square, path", [(OldStyleSquare, "func"), (ItemInBackwardSquare, "vmap")])
def test_fields_torch_func_cannot_batch_fall_back_to_a_loop_with_the_same_result(square, path):
    net, x = mlp_field()
    calls = [0]

    def f(u):
        calls[0] += 1
        return square.apply(net(u))

    with pytest.raises(RuntimeError):  # really not vmappable
        torch.func.vmap(torch.func.vjp(f, x)[1])(torch.ones(2, *x.shape, dtype=x.dtype))
    J = jacobian_blocks(f, x)
    expected = J.diagonal(dim1=1, dim2=2).sum(1)
    probes = probes_like(x, 5, generator=torch.Generator().manual_seed(3))
    e = probes.reshape(5, x.shape[0], -1)
    hutch = torch.einsum("kbi,bij,kbj->kb", e, J, e).mean(0)
    memo = VmapMemo()
    calls[0] = 0
    v, div = divergence(f, x, chunk=2, memo=memo)
    torch.testing.assert_close(div, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(v, f(x))
    assert not getattr(memo, path) and memo.reason
    # a failed torch.func forward costs one extra call, once; a failed vmap none
    assert calls[0] == (3 if path == "func" else 2)
    calls[0] = 0
    _, est = divergence(f, x, trace="hutchinson", probes=probes, memo=memo)
    torch.testing.assert_close(est, hutch, rtol=1e-10, atol=1e-12)
    assert calls[0] == 1  # the memo skips the failed attempt
    # without a memo the fallback is found again, with the same numbers
    _, div2 = divergence(f, x, chunk=3)
    torch.testing.assert_close(div2, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fallback", [False, True])
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_create_graph_gradients_equal_the_autograd_path(trace, fallback):
    # d div / d params and d div / d x through torch.func (or the loop) equal those through
    # one batched torch.autograd.grad with create_graph, the path FFJORD training used before.
    net, x = mlp_field()
    x = x.clone().requires_grad_(True)
    probes = probes_like(x, 4, generator=torch.Generator().manual_seed(4))
    memo = VmapMemo(func=not fallback)

    _, div = divergence(net, x, trace=trace, probes=probes, create_graph=True, memo=memo)
    new = torch.autograd.grad(div.sum(), [x, *net.parameters()], materialize_grads=True)
    out = net(x)
    if trace == "exact":
        ref = exact_divergence(out, x, create_graph=True)
    else:
        rows = torch.autograd.grad(out, x, probes, is_grads_batched=True, create_graph=True)[0]
        ref = (rows * probes).reshape(4, x.shape[0], -1).sum(-1).mean(0)
    torch.testing.assert_close(div, ref, rtol=1e-12, atol=1e-12)
    old = torch.autograd.grad(ref.sum(), [x, *net.parameters()], materialize_grads=True)
    for a, b in zip(new, old):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_without_create_graph_nothing_is_kept():
    net, x = mlp_field()
    with torch.no_grad():
        v, div = divergence(net, x)
    assert not v.requires_grad and not div.requires_grad


def test_the_out_x_api_loops_where_batched_autograd_cannot():
    # is_grads_batched raises "NYI: querying is_contiguous inside of vmap" on a diffusers UNet;
    # exact_divergence(out, x) now loops over the basis vectors instead.
    f, x = diffusers_field()
    x = x[:1].clone().requires_grad_(True)
    expected = divergence(f, x.detach())[1]
    torch.testing.assert_close(exact_divergence(f(x), x), expected, rtol=1e-9, atol=1e-10)


def test_bad_arguments_are_named():
    net, x = mlp_field()
    with pytest.raises(ValueError, match="unknown trace 'hutch'"):
        divergence(net, x, trace="hutch")
    with pytest.raises(ValueError, match=r"trace='hutchinson' needs probes.*got None"):
        divergence(net, x, trace="hutchinson")
    with pytest.raises(ValueError, match=r"needs probes.*got \(2, 5\)"):
        divergence(net, x, trace="hutchinson", probes=torch.ones(2, 5))
    with pytest.raises(ValueError, match="chunk must be None"):
        divergence(net, x, chunk=0)
    with pytest.raises(ValueError, match="chunk must be None"):
        divergence(net, x, trace="hutchinson", probes=probes_like(x, 1), chunk=-1)
