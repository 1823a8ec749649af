"""Explicit uniform dequantization of discrete data with any number of levels.

Convention: data with `levels` discrete values k in {0, ..., levels - 1} live at the bin centres

    c_k = -1 + (k + 0.5) * bin_width,    bin_width = 2 / levels,

so the bins [c_k - bin_width / 2, c_k + bin_width / 2) tile [-1, 1] exactly. Dequantizing adds
u ~ U(-bin_width / 2, bin_width / 2) to a centre, which gives a continuous density on [-1, 1]^D.
A continuous model's log-density of dequantized data turns into bits per dimension of the
discrete data with `sdegen.models.density.bits_per_dim(log_prob, num_dims, bin_width)`, passing
the `bin_width(levels)` defined here (2/256 for 8-bit images, 2/17 for the 17-level digits).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import check_finite_number, check_int, check_tensor_finite

__all__ = ["bin_width", "to_centres", "to_levels", "dequantize"]


def bin_width(levels: int) -> float:
    """Width 2 / levels of one quantization bin of [-1, 1].

    This is the `bin_width` to pass to `sdegen.models.density.bits_per_dim`, which computes
    bpd = -(log_prob + D log bin_width) / (D log 2); e.g. 2/256 for 8-bit data.
    """
    return 2.0 / check_int("levels", levels, 2)


def to_centres(k: Tensor, levels: int, *, dtype: torch.dtype = torch.float32) -> Tensor:
    """Bin centres of integer levels: k (any shape, integer dtype, values in 0..levels-1) ->
    c_k = -1 + (k + 0.5) * 2 / levels, a float tensor of the same shape and dtype `dtype`.

    The centres are computed in float64 and rounded once to `dtype`, by a table look-up, so the
    result uses 4 bytes of scratch per element (not 8) on large image sets.
    """
    levels = check_int("levels", levels, 2)
    if not torch.is_tensor(k):
        raise TypeError(f"k must be a torch.Tensor of integer levels, got {type(k).__name__}")
    if k.is_floating_point() or k.is_complex() or k.dtype == torch.bool:
        raise TypeError(
            f"k must be an integer tensor of levels 0..{levels - 1}, got dtype {k.dtype}; "
            "use to_levels to map floats in [-1, 1] to levels"
        )
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")
    if k.numel() > 0:
        lo, hi = int(k.min()), int(k.max())
        if lo < 0 or hi >= levels:
            raise ValueError(
                f"k must hold levels in 0..{levels - 1} (levels={levels}), got values in {lo}..{hi}"
            )
    ks = torch.arange(levels, dtype=torch.float64, device=k.device)
    table = (-1.0 + (ks + 0.5) * (2.0 / levels)).to(dtype)
    index = k.reshape(-1).to(torch.int32 if levels <= 2**31 - 1 else torch.int64)
    return table.index_select(0, index).reshape(k.shape)


def to_levels(x: Tensor, levels: int) -> Tensor:
    """Integer levels of values in [-1, 1] (inverse of `to_centres`): x (any shape, float) ->
    int64 tensor of the same shape, the index of the nearest bin centre (the bin holding x),
    clamped to 0..levels-1 so values outside [-1, 1] go to the end bins."""
    levels = check_int("levels", levels, 2)
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    check_tensor_finite("x", x)
    x64 = x.to(torch.float64)
    k = torch.floor((x64 + 1.0) * (levels / 2.0))
    return k.clamp_(0, levels - 1).to(torch.int64)


def dequantize(
    x: Tensor,
    bin_width: float,
    *,
    generator: torch.Generator | None = None,
    uniform: Tensor | None = None,
) -> Tensor:
    """Uniform dequantization: x + (u - 1/2) bin_width with u ~ U(0, 1) per element.

    u is drawn from `generator` (torch's global RNG when None) unless given as `uniform`
    (shape of x), as the trainer does to keep each example's noise fixed across processes.
    x: float tensor of bin centres, any shape -> same shape and dtype. Pass the same `bin_width`
    to `bits_per_dim`."""
    width = check_finite_number("bin_width", bin_width, positive=True)
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(
            f"x must be a floating tensor of bin centres, got dtype {x.dtype}; "
            "map integer levels with to_centres first"
        )
    check_tensor_finite("x", x)
    if uniform is None:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    elif uniform.shape != x.shape:
        raise ValueError(
            f"uniform must have the shape of x {tuple(x.shape)}, got {tuple(uniform.shape)}"
        )
    else:
        u = uniform.to(x.dtype)
        if not bool(((u >= 0) & (u < 1)).all()):
            raise ValueError("uniform must hold draws in [0, 1), got values outside it")
    return x + (u - 0.5) * width
