"""Improved DDPM's hybrid objective L_hybrid = L_simple + lambda L_vlb for a learned variance.

Nichol & Dhariwal 2021, section 3.1: L_simple (Ho et al.'s noise MSE) trains the mean and
cannot see the variance; L_vlb, DDPM's bound, trains the variance with a stop-gradient on the
mean, so the mean is trained by L_simple alone; lambda = 0.001 keeps L_vlb from dominating.
Both terms come from one network evaluation of a `LearnedVarianceModel` at x_k, k uniform on
DDPM's steps {1..N} of a from_betas SDE:

    L_simple = mean over dimensions of (eps_theta(x_k, k) - eps)^2,
    L_vlb    = (N L_{k-1} + L_T) / (D log 2), the unbiased one-term estimate of the bound in
               bits per dimension (`sdegen.training.vlb.vlb_loss`), with the model's
               Sigma_theta(x_k, k) as the variance of p_theta(x_{k-1} | x_k).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import check_finite_number, check_tensor_finite
from ..models.learned_variance import LearnedVarianceModel
from ..sde.discrete import grid_size, previous_grid_time
from ..sde.reverse_variance import interpolated_variance
from .vlb import vlb_loss

LAMBDA = 0.001  # Nichol & Dhariwal's lambda


class _OneEvaluation:
    """The model's x0 estimate at one (x_k, t), served to `vlb_loss` without a second network
    evaluation; any other input is refused."""

    def __init__(self, sde, x_t: Tensor, t: Tensor, x0: Tensor) -> None:
        self.sde, self.x_t, self.t, self.x0 = sde, x_t, t, x0

    def denoise(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        if y is not None or not (torch.equal(x, self.x_t) and torch.equal(t, self.t)):
            raise RuntimeError("hybrid_loss: vlb_loss evaluated the model at another x_k")
        return self.x0


def _check_model(model) -> LearnedVarianceModel:
    if not isinstance(model, LearnedVarianceModel):
        raise TypeError(
            "the hybrid objective trains a LearnedVarianceModel (a network with twice the "
            f"output channels), got {type(model).__name__}"
        )
    return model


def hybrid_loss(
    model: LearnedVarianceModel,
    x0: Tensor,
    *,
    lam: float = LAMBDA,
    bin_width: float | None = 2 / 256,
    y: Tensor | None = None,
    k: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    reduce: bool = True,
) -> Tensor:
    """L_hybrid = L_simple + lam L_vlb of a learned-variance model on data x0 (module docstring).

    Args:
        model: a LearnedVarianceModel on a from_betas SDE (N steps).
        x0: data (B, *D); in [-1, 1] on the grid of bin_width for the discretized decoder
            L_0, or any reals with bin_width=None (Gaussian decoder density).
        lam: the weight of L_vlb (0.001 in Improved DDPM), >= 0.
        bin_width: the decoder's bin width (2/256 for sdegen's 8-bit bin centres).
        y: class labels (B,) of a conditional model.
        k: fix the 1-based steps (B,) (int64); noise: fix the noise (B, *D); otherwise both are
            drawn from `generator` (k first).
        reduce: mean over the batch; otherwise per-example values (B,).
    Returns:
        the loss (scalar, or (B,)): L_simple in squared noise units per dimension plus lam times
        L_vlb in bits per dimension. The gradient of the L_vlb part reaches only the variance
        outputs v (the mean is detached in it).
    """
    model = _check_model(model)
    lam = check_finite_number("lam", lam, nonnegative=True)
    check_tensor_finite("x0", x0)
    sde = model.sde
    n = grid_size(sde)
    B = x0.shape[0]
    if k is None:
        u = torch.rand(B, generator=generator, dtype=torch.float64, device=x0.device)
        k = torch.floor(u * n).clamp(0, n - 1).long() + 1
    elif not torch.is_tensor(k) or k.shape != (B,) or k.is_floating_point():
        raise ValueError(f"k must be int64 steps of shape ({B},), got {k!r}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    t = (k.to(torch.float64) / n).to(x0.dtype)  # as vlb_loss computes it, for the same x_k
    x_t = sde.perturb(x0, t, noise)
    x0_hat, eps_hat, v = model.predict(x_t, t, y)
    simple = ((eps_hat - noise) ** 2).reshape(B, -1).mean(dim=1)
    var = interpolated_variance(sde, v, previous_grid_time(sde, t), t)
    vlb = vlb_loss(
        _OneEvaluation(sde, x_t, t, x0_hat),
        x0,
        variance=lambda x, steps: var,
        bin_width=bin_width,
        k=k,
        noise=noise,
        detach_mean=True,
        reduce=False,
    )
    loss = simple + lam * vlb
    return loss.mean() if reduce else loss


def hybrid_objective(lam: float = LAMBDA, bin_width: float | None = 2 / 256):
    """`hybrid_loss` as a Trainer objective (model, batch, StepRandom[, labels]) -> loss, with
    per-example steps k and noise drawn through StepRandom (resumed and multi-process runs
    repeat single-process ones). Discrete data are used as they are (no dequantization): the
    decoder term of the bound is the discretized Gaussian on the grid of bin_width."""
    lam = check_finite_number("lam", lam, nonnegative=True)
    if bin_width is not None:
        bin_width = check_finite_number("bin_width", bin_width, positive=True)

    def objective(model, x: Tensor, rnd, y: Tensor | None = None) -> Tensor:
        n = grid_size(_check_model(model).sde)
        k = torch.floor(rnd.rand(dtype=torch.float64) * n).clamp(0, n - 1).long() + 1
        noise = rnd.randn(*x.shape[1:], dtype=x.dtype)
        return hybrid_loss(model, x, lam=lam, bin_width=bin_width, y=y, k=k, noise=noise)

    return objective
