"""Divergence of a vector field by autograd: exact (all D VJPs, batched) or Hutchinson's estimate.

Used by the probability-flow likelihood and by continuous normalizing flows (FFJORD).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._utils import check_choice, check_int

PROBE_NOISES = ("rademacher", "gaussian")


def _vjps(out: Tensor, x: Tensor, vs: Tensor, create_graph: bool) -> Tensor:
    """v^T J for a stack of vectors vs of shape (K, B, *D), one batched backward pass."""
    (g,) = torch.autograd.grad(
        out, x, grad_outputs=vs, is_grads_batched=True, create_graph=create_graph, retain_graph=True
    )
    return g


def exact_divergence(
    out: Tensor, x: Tensor, *, chunk: int | None = None, create_graph: bool = False
) -> Tensor:
    """Exact trace of d out / d x per example; out = v(x) of shape (B, *D) -> (B,).

    Row i of each Jacobian comes from one VJP with the basis vector e_i; D VJPs are batched
    `chunk` at a time: an integer >= 1, or None for as many as fit in ~2^24 elements.
    """
    B, D = x.shape[0], x[0].numel()
    if chunk is None:
        chunk = max(1, min(D, (1 << 24) // max(1, B * D)))
    else:
        check_chunk(chunk)
    div = torch.zeros(B, dtype=out.dtype, device=out.device)
    for start in range(0, D, chunk):
        idx = torch.arange(start, min(D, start + chunk), device=x.device)
        basis = torch.zeros(len(idx), B, D, dtype=out.dtype, device=out.device)
        basis[torch.arange(len(idx)), :, idx] = 1
        rows = _vjps(out, x, basis.reshape(len(idx), *x.shape), create_graph)
        # diagonal entries: element idx[k] of row idx[k]
        div = div + rows.reshape(len(idx), B, D)[torch.arange(len(idx)), :, idx].sum(0)
    return div


def check_chunk(chunk: int | None) -> int | None:
    """`chunk` when it is None or an integer >= 1, else ValueError naming it."""
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(
            f"chunk must be None (automatic) or an integer >= 1 (basis vectors per batched VJP), "
            f"got {chunk!r}"
        )
    return chunk


def hutchinson_divergence(
    out: Tensor, x: Tensor, probes: Tensor, *, create_graph: bool = False
) -> Tensor:
    """Hutchinson estimate mean_k e_k^T (d out/d x) e_k for probes of shape (K, B, *D) -> (B,)."""
    rows = _vjps(out, x, probes, create_graph)
    return (rows * probes).reshape(probes.shape[0], x.shape[0], -1).sum(-1).mean(0)


def probes_like(
    x: Tensor, probes: int, noise: str = "rademacher", generator: torch.Generator | None = None
) -> Tensor:
    """Hutchinson probes of shape (probes, *x.shape): Rademacher signs or standard normals."""
    check_choice("noise", noise, PROBE_NOISES)
    check_int("probes", probes)
    shape = (probes, *x.shape)
    if noise == "rademacher":
        signs = torch.randint(0, 2, shape, generator=generator, device=x.device)
        return (2 * signs - 1).to(x.dtype)
    return torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
