"""Divergence of a vector field: exact (all D VJPs, batched) or Hutchinson's estimate.

Used by the probability-flow likelihood and by continuous normalizing flows (FFJORD).

`divergence(f, x, ...)` is the entry point: it takes the field f (x -> v(x)) itself, runs its
forward pass once through `torch.func.vjp` and gets the VJPs by `torch.func.vmap` over basis
vectors (exact trace) or probes (Hutchinson), so it works on networks whose backward pass the
batched `torch.autograd.grad(..., is_grads_batched=True)` cannot run (a diffusers UNet2DModel:
"NYI: querying is_contiguous inside of vmap"). Where torch.func cannot run f or vmap its VJP
(an old-style autograd.Function, .item() in a backward), it falls back to one
torch.autograd.grad per vector, with the same result, and a `VmapMemo` passed by the caller
remembers that so later calls skip the failed attempt.

Cost of the exact trace: D = x[0].numel() VJPs per evaluation (one per basis vector e_i, row i
of the Jacobian, of which only the diagonal entry is kept), batched `chunk` at a time, plus the
one shared forward pass. Hutchinson: one VJP per probe.

`exact_divergence(out, x)` and `hutchinson_divergence(out, x, probes)` serve callers that already
hold out = v(x) with its autograd graph; they batch with is_grads_batched and fall back to the
same loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ._utils import check_choice, check_int
from .random import RandomSource, randint, randn

PROBE_NOISES = ("rademacher", "gaussian")
TRACES = ("exact", "hutchinson")
# What torch.func and batched autograd raise for an operation they cannot transform (vmap of
# .item(), data-dependent control flow, an NYI batching rule, an autograd.Function without
# setup_context). Out-of-memory is a RuntimeError too but is re-raised, never a reason to loop.
UNSUPPORTED = (RuntimeError, NotImplementedError)


@dataclass
class VmapMemo:
    """What one call site learned about its field: whether torch.func can run the forward pass
    (`func`) and vmap its VJP (`vmap`); `reason` is the error that turned one off. Pass the
    same memo to every divergence() call of one solve so a failure is paid for once."""

    func: bool = True
    vmap: bool = True
    reason: str | None = None


def _unsupported(err: BaseException) -> bool:
    return isinstance(err, UNSUPPORTED) and not isinstance(err, torch.OutOfMemoryError)


def check_chunk(chunk: int | None) -> int | None:
    """`chunk` when it is None or an integer >= 1, else ValueError naming it."""
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(
            f"chunk must be None (automatic) or an integer >= 1 (basis vectors per batched VJP), "
            f"got {chunk!r}"
        )
    return chunk


def _auto_chunk(x: Tensor, chunk: int | None) -> int:
    B, D = x.shape[0], x[0].numel()
    if chunk is None:
        return max(1, min(D, (1 << 24) // max(1, B * D)))
    check_chunk(chunk)
    return chunk


def _exact_trace(rows_of: Callable[[Tensor], Tensor], x: Tensor, dtype, chunk: int) -> Tensor:
    """Sum of the Jacobian diagonals from rows_of(basis (K, B, *D)) -> rows (K, B, *D)."""
    B, D = x.shape[0], x[0].numel()
    div = torch.zeros(B, dtype=dtype, device=x.device)
    for start in range(0, D, chunk):
        idx = torch.arange(start, min(D, start + chunk), device=x.device)
        basis = torch.zeros(len(idx), B, D, dtype=dtype, device=x.device)
        basis[torch.arange(len(idx)), :, idx] = 1
        rows = rows_of(basis.reshape(len(idx), *x.shape))
        # diagonal entries: element idx[k] of row idx[k]
        div = div + rows.reshape(len(idx), B, D)[torch.arange(len(idx)), :, idx].sum(0)
    return div


def _probe_trace(rows: Tensor, probes: Tensor, batch: int) -> Tensor:
    return (rows * probes).reshape(probes.shape[0], batch, -1).sum(-1).mean(0)


def _looped(vjp_one: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """rows_of(vs) by one VJP per vector: the path for what cannot be vmapped."""
    return lambda vs: torch.stack([vjp_one(u) for u in vs])


def divergence(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    trace: str = "exact",
    probes: Tensor | None = None,
    chunk: int | None = None,
    create_graph: bool = False,
    memo: VmapMemo | None = None,
) -> tuple[Tensor, Tensor]:
    """(v, div): the field v = f(x) of shape (B, *D) and its divergence per example (B,).

    One forward pass of f is shared by both. trace="exact" sums the Jacobian diagonal from D
    VJPs with the basis vectors, batched `chunk` at a time (an integer >= 1, or None for as many
    as fit in ~2^24 elements); trace="hutchinson" is mean_k e_k^T (dv/dx) e_k over `probes` of
    shape (K, B, *D), one VJP per probe. create_graph keeps div (and v) differentiable, through
    x and whatever f closes over (training by backprop or the adjoint). VJPs run as vmap over
    torch.func.vjp; where torch.func raises for f (see UNSUPPORTED), one torch.autograd.grad per
    vector gives the same numbers, and `memo` (optional, one per call site) keeps later calls off
    the failed path. Out-of-memory is raised, not looped around.
    """
    check_choice("trace", trace, TRACES)
    if trace == "hutchinson":
        if probes is None or probes.shape[1:] != x.shape:
            got = None if probes is None else tuple(probes.shape)
            raise ValueError(
                f"trace='hutchinson' needs probes of shape (K, *x.shape) = (K, "
                f"{', '.join(map(str, x.shape))}), got {got}"
            )
    check_chunk(chunk)  # refused under either trace, though only the exact one uses it
    size = _auto_chunk(x, chunk) if trace == "exact" else 0
    memo = VmapMemo() if memo is None else memo
    if memo.func:
        try:
            return _by_func(f, x, trace, probes, size, create_graph, memo)
        except Exception as err:
            if not _unsupported(err):
                raise
            memo.func, memo.reason = False, f"{type(err).__name__}: {err}"
    return _by_autograd(f, x, trace, probes, size, create_graph)


def _by_func(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    trace: str,
    probes: Tensor | None,
    size: int,
    create_graph: bool,
    memo: VmapMemo,
) -> tuple[Tensor, Tensor]:
    """torch.func.vjp for the forward pass, vmap of its VJP (a loop if vmap fails)."""
    # The forward pass keeps the caller's grad mode (FFJORD's Frobenius term differentiates v
    # again), or records when create_graph asks. The VJPs always build their graph inside
    # torch.func's level (create_graph=True): without it some backward formulas query memory
    # formats that vmap does not support (diffusers' UNet2DModel: "NYI: querying is_contiguous
    # inside of vmap"); outside create_graph they run under no_grad, so nothing is kept.
    with torch.enable_grad() if create_graph else contextlib.nullcontext():
        out = torch.func.vjp(f, x)
    v, vjp_fn = out[0], out[1]

    def vjp_one(u: Tensor) -> Tensor:
        return vjp_fn(u, create_graph=True)[0]

    batched = torch.func.vmap(vjp_one)

    def rows_of(vs: Tensor) -> Tensor:
        if memo.vmap:
            try:
                return batched(vs)
            except Exception as err:
                if not _unsupported(err):
                    raise
                memo.vmap, memo.reason = False, f"{type(err).__name__}: {err}"
        return _looped(vjp_one)(vs)

    with torch.enable_grad() if create_graph else torch.no_grad():
        if trace == "exact":
            div = _exact_trace(rows_of, x, v.dtype, size)
        else:
            assert probes is not None  # checked by divergence()
            div = _probe_trace(rows_of(probes), probes, x.shape[0])
    return v, div


def _by_autograd(
    f: Callable[[Tensor], Tensor],
    x: Tensor,
    trace: str,
    probes: Tensor | None,
    size: int,
    create_graph: bool,
) -> tuple[Tensor, Tensor]:
    """Plain autograd: one forward pass with a graph, one torch.autograd.grad per vector."""
    with torch.enable_grad():
        xg = x if x.requires_grad else x.detach().requires_grad_(True)
        v = f(xg)

        def vjp_one(u: Tensor) -> Tensor:
            (g,) = torch.autograd.grad(v, xg, u, retain_graph=True, create_graph=create_graph)
            return g

        if trace == "exact":
            div = _exact_trace(_looped(vjp_one), xg, v.dtype, size)
        else:
            assert probes is not None  # checked by divergence()
            div = _probe_trace(_looped(vjp_one)(probes), probes, x.shape[0])
    return v, div


def _vjps(out: Tensor, x: Tensor, vs: Tensor, create_graph: bool) -> Tensor:
    """v^T J for a stack of vectors vs of shape (K, B, *D): one batched backward pass, or one
    per vector where the graph's backward cannot be vmapped."""
    try:
        (g,) = torch.autograd.grad(
            out,
            x,
            grad_outputs=vs,
            is_grads_batched=True,
            create_graph=create_graph,
            retain_graph=True,
        )
        return g
    except Exception as err:
        if not _unsupported(err):
            raise
    return torch.stack(
        [
            torch.autograd.grad(out, x, u, retain_graph=True, create_graph=create_graph)[0]
            for u in vs
        ]
    )


def exact_divergence(
    out: Tensor, x: Tensor, *, chunk: int | None = None, create_graph: bool = False
) -> Tensor:
    """Exact trace of d out / d x per example for an out = v(x) already computed with its graph;
    (B, *D) -> (B,). Row i of each Jacobian comes from one VJP with the basis vector e_i; D VJPs
    are batched `chunk` at a time: an integer >= 1, or None for as many as fit in ~2^24
    elements. Given the field itself, use divergence(f, x), which also handles networks that
    batched autograd cannot."""
    size = _auto_chunk(x, chunk)
    return _exact_trace(lambda vs: _vjps(out, x, vs, create_graph), x, out.dtype, size)


def hutchinson_divergence(
    out: Tensor, x: Tensor, probes: Tensor, *, create_graph: bool = False
) -> Tensor:
    """Hutchinson estimate mean_k e_k^T (d out/d x) e_k for probes of shape (K, B, *D) -> (B,),
    for an out = v(x) already computed with its graph."""
    return _probe_trace(_vjps(out, x, probes, create_graph), probes, x.shape[0])


def probes_like(
    x: Tensor, probes: int, noise: str = "rademacher", generator: RandomSource = None
) -> Tensor:
    """Hutchinson probes of shape (probes, *x.shape): Rademacher signs or standard normals (from
    a PerExampleGenerator of B seeds, example i's probes from seed i)."""
    check_choice("noise", noise, PROBE_NOISES)
    check_int("probes", probes)
    shape = (probes, *x.shape)
    if noise == "rademacher":
        signs = randint(0, 2, shape, generator, device=x.device, batch_dim=1)
        return (2 * signs - 1).to(x.dtype)
    return randn(shape, generator, dtype=x.dtype, device=x.device, batch_dim=1)
