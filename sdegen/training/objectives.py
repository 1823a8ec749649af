"""Training objectives for the Trainer: (model, batch, StepRandom) -> scalar loss.

All randomness is drawn through StepRandom, per example, so that resumed and multi-process runs
repeat single-process ones exactly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._utils import check_choice
from ..data.quantize import dequantize
from .losses import WEIGHTINGS, dsm_loss, times_from_uniform


def _dequantize(x: Tensor, rnd, bin_width: float | None) -> Tensor:
    if bin_width is None:
        return x
    return dequantize(x, bin_width, uniform=rnd.rand(*x.shape[1:], dtype=x.dtype))


def score_matching(
    weighting: str = "simple",
    importance_sampling: bool | None = None,
    bin_width: float | None = None,
):
    """Denoising score matching (see `dsm_loss`) with per-example times and noise.

    bin_width: dequantize discrete data by this bin width first (None: continuous data).
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    if importance_sampling is None:
        importance_sampling = weighting == "likelihood"

    def objective(model: nn.Module, x: Tensor, rnd) -> Tensor:
        x = _dequantize(x, rnd, bin_width)
        t = times_from_uniform(
            model.sde, rnd.rand(dtype=torch.float64), importance_sampling=importance_sampling
        ).to(x.dtype)
        noise = rnd.randn(*x.shape[1:], dtype=x.dtype)
        return dsm_loss(
            model, x, weighting=weighting, importance_sampling=importance_sampling, t=t, noise=noise
        )

    return objective


def density_loss(bin_width: float | None = None):
    """The density model's own objective `model.loss(x, generator)` (NLL, negative ELBO...)."""

    def objective(model: nn.Module, x: Tensor, rnd) -> Tensor:
        return model.loss(_dequantize(x, rnd, bin_width), generator=rnd.generator)

    return objective
