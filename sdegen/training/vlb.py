"""DDPM's discrete variational bound, in full and as an unbiased one-term training loss.

For a from_betas SDE with N steps (grid times t_k = k/N) and a model p_theta whose reverse step
is p_theta(x_{k-1} | x_k) = N(mu_theta(x_k, k), Sigma_k), Ho et al. 2020 (eq. 5) bound

    -log p_theta(x_0) <= L_T + sum_{k=2..N} L_{k-1} + L_0,
    L_T     = KL(q(x_N | x_0) || N(0, prior_std^2 I)),
    L_{k-1} = E_q KL(q(x_{k-1} | x_k, x_0) || p_theta(x_{k-1} | x_k)),
    L_0     = -E_q log p_theta(x_0 | x_1),

with the forward posterior q(x_{k-1} | x_k, x_0) of `sdegen.sde.posterior` and
mu_theta(x_k, k) = c0 x0_theta(x_k) + ct x_k its mean at the model's estimate of x_0, so any
parametrization of the model serves. The decoder L_0 is the discretized Gaussian of section 3.3
(`discretized_gaussian_log_likelihood`) for data on a grid of bin_width, giving bits per
dimension of the discrete data; bin_width=None uses the Gaussian density for continuous data.

Sigma_k is "posterior" (beta_tilde_k, Ho et al.'s sigma^2 = beta_tilde; at k = 1, where
beta_tilde_1 = 0, Improved DDPM's clip to beta_tilde_2), "forward" (beta_k), or a callable
(x_k, k) -> variance broadcastable to x, k the 1-based int64 steps (B,): a learned variance
(Nichol & Dhariwal 2021).

`vlb_terms` evaluates every term (N model evaluations per example, in chunks) with one draw of
x_k per step; `vlb_loss` is the unbiased one-term estimate N L_{k-1} + L_T at a uniform k, whose
mean over k is the full sum; `vlb_objective` makes it a Trainer objective.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._utils import append_dims, check_choice, check_finite_number, check_int, sum_except_batch
from ..sde.discrete import (
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    grid_size,
    previous_step_coefficients,
)

VLB_VARIANCES = ("posterior", "forward")
Variance = str | Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class VLBTerms:
    """The terms of DDPM's bound for a batch of B examples, in nats.

    terms: (B, N); column 0 is the decoder L_0 and column k - 1 (k >= 2) the KL term L_{k-1} of
        step k. prior: (B,), L_T. num_dims: D, the dimensions of one example.
    """

    terms: Tensor
    prior: Tensor
    num_dims: int

    @property
    def total(self) -> Tensor:
        """The bound L_T + sum_k L_{k-1} on -log p_theta(x_0) per example, nats, shape (B,)."""
        return self.terms.sum(dim=1) + self.prior

    @property
    def bits_per_dim(self) -> Tensor:
        """The bound in bits per dimension, total / (D log 2), shape (B,)."""
        return self.total / (self.num_dims * math.log(2))


def _check_variance(variance: Variance) -> Variance:
    if isinstance(variance, str):
        return check_choice("variance", variance, VLB_VARIANCES)
    if not callable(variance):
        raise TypeError(
            f"variance must be one of {', '.join(VLB_VARIANCES)} or a callable (x_t, k) -> "
            f"variance, got {type(variance).__name__}"
        )
    return variance


def _check_data(x0: Tensor, bin_width: float | None) -> float | None:
    if not torch.is_tensor(x0) or x0.ndim < 2 or not x0.is_floating_point():
        got = tuple(x0.shape) if torch.is_tensor(x0) else type(x0).__name__
        raise ValueError(f"x0 must be a floating-point tensor of shape (B, *D), got {got}")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError("x0 holds NaN or infinite values")
    if bin_width is None:
        return None
    w = check_finite_number("bin_width", bin_width, positive=True)
    if bool((x0.abs() > 1 + 1e-6).any()):
        raise ValueError(
            f"x0 must lie in [-1, 1] for the discretized decoder (bin_width={w:g}), got values "
            f"up to {float(x0.abs().max())!r}; pass bin_width=None for continuous data"
        )
    return w


def _model_variance(sde, variance: Variance, x_t: Tensor, t: Tensor, k: Tensor) -> Tensor:
    """Sigma_k of p_theta(x_{k-1} | x_k), broadcastable to x_t, in x_t's dtype."""
    if callable(variance):
        var = variance(x_t, k)
        if not torch.is_tensor(var):
            raise TypeError(f"variance(x_t, k) must return a tensor, got {type(var).__name__}")
        if var.ndim == 1 and var.shape[0] == x_t.shape[0]:
            var = append_dims(var, x_t.ndim)  # one variance per example
        try:
            torch.broadcast_shapes(var.shape, x_t.shape)
        except RuntimeError:
            raise ValueError(
                f"variance(x_t, k) must return a tensor broadcastable to {tuple(x_t.shape)}, "
                f"got {tuple(var.shape)}"
            ) from None
        return var
    c0, ct, beta_tilde = previous_step_coefficients(sde, t)
    if variance == "posterior":
        # beta_tilde_1 = 0: Improved DDPM clips the first step's to beta_tilde_2
        t2 = torch.full_like(t, 2.0 / grid_size(sde))
        var = torch.where(k == 1, previous_step_coefficients(sde, t2)[2], beta_tilde)
    else:
        # the forward transition variance beta of x_{k-1} -> x_k: c0 = alpha_{k-1} beta / sigma^2
        # and, taking E[. | x_0] of the posterior mean, alpha_{k-1} = c0 + ct alpha_k
        alpha_t = sde.alpha(t.detach().to(torch.float64))
        var = c0 * sde.sigma(t.detach().to(torch.float64)) ** 2 / (c0 + ct * alpha_t)
    return append_dims(var.to(x_t.dtype), x_t.ndim)


def _step_terms(
    model,
    x0: Tensor,
    k: Tensor,
    noise: Tensor,
    variance: Variance,
    bin_width: float | None,
    y: Tensor | None,
    detach_mean: bool,
) -> Tensor:
    """L_{k-1} (k >= 2) or L_0 (k = 1) per example, nats, shape (B,), for steps k (B,)."""
    sde = model.sde
    n = grid_size(sde)
    t = (k.to(torch.float64) / n).to(x0.dtype)
    x_t = sde.perturb(x0, t, noise)
    x0_hat = model.denoise(x_t, t) if y is None else model.denoise(x_t, t, y)
    c0, ct, beta_tilde = (
        append_dims(c.to(x0.dtype), x0.ndim) for c in previous_step_coefficients(sde, t)
    )
    mean_model = c0 * x0_hat + ct * x_t
    if detach_mean:
        mean_model = mean_model.detach()
    var_model = _model_variance(sde, variance, x_t, t, k)
    first = k == 1
    out = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
    if bool((~first).any()):
        rest = ~first
        mean_q = c0[rest] * x0[rest] + ct[rest] * x_t[rest]
        var_m = var_model.expand_as(x0)[rest]
        kl = gaussian_kl(mean_q, beta_tilde[rest].expand_as(mean_q), mean_model[rest], var_m)
        out = out.masked_scatter(rest, sum_except_batch(kl))
    if bool(first.any()):
        x, m, v = x0[first], mean_model[first], var_model.expand_as(x0)[first]
        if bin_width is None:
            logp = -0.5 * ((x - m) ** 2 / v + torch.log(2 * math.pi * v))
        else:
            logp = discretized_gaussian_log_likelihood(x, m, v, bin_width)
        out = out.masked_scatter(first, -sum_except_batch(logp))
    return out


def prior_term(sde, x0: Tensor) -> Tensor:
    """L_T = KL(q(x_N | x_0) || N(0, prior_std^2 I)) per example, nats, shape (B,)."""
    T = torch.full((x0.shape[0],), sde.T, dtype=torch.float64, device=x0.device)
    mean, std = sde.marginal(x0.to(torch.float64), T)
    var = append_dims(std**2, x0.ndim)
    prior_var = torch.tensor(sde.prior_std**2, dtype=torch.float64, device=x0.device)
    kl = gaussian_kl(mean, var.expand_as(mean), torch.zeros_like(mean), prior_var)
    return sum_except_batch(kl).to(x0.dtype)


def vlb_terms(
    model,
    x0: Tensor,
    *,
    variance: Variance = "posterior",
    bin_width: float | None = 2 / 256,
    y: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    max_batch: int = 4096,
) -> VLBTerms:
    """Every term of DDPM's bound for each example of x0, under torch.no_grad.

    Args:
        model: a score model with `.sde` a from_betas SDE and `denoise(x, t[, y])`.
        x0: data of shape (B, *D), in [-1, 1] on the grid of bin_width (8-bit data: 2/256 for
            sdegen's bin centres, 2/255 for DDPM's -1..1 values), or any reals with
            bin_width=None.
        variance: "posterior", "forward" or a callable (x_k, k) -> variance (module docstring).
        bin_width: the decoder's bin width; None for the Gaussian density of continuous data.
        y: class labels (B,) for a conditional model.
        generator: random source for x_k (one draw per example and step).
        noise: fix the draws instead, shape (N, B, *D); x_k = alpha x0 + sigma noise[k - 1].
        max_batch: rows per model evaluation (steps are stacked up to this many rows).
    Returns:
        VLBTerms: terms (B, N), prior (B,), with .total and .bits_per_dim.

    Example:
        The exact model of N(0, 0.3^2) data on 8-bit levels, at the 40 levels around 0: the
        bound is a little above -log2 of their probabilities under the data (6.65 bits on
        average; the bound's mean is about 6.7).

        >>> import torch
        >>> from sdegen.models import GaussianScore
        >>> from sdegen.sde import ddpm_sde
        >>> from sdegen.training import vlb_terms
        >>> sde = ddpm_sde("linear", 100)
        >>> model = GaussianScore(torch.zeros(1), 0.09 * torch.eye(1), sde)
        >>> x = -1 + (torch.arange(108, 148) + 0.5) * 2 / 256  # 40 levels around 0, (40, 1)
        >>> r = vlb_terms(model, x[:, None], variance="forward", generator=torch.Generator())
        >>> r.terms.shape, r.prior.shape  # L_0 and the KL terms of the 100 steps; L_T
        (torch.Size([40, 100]), torch.Size([40]))
        >>> 6.6 < float(r.bits_per_dim.mean()) < 6.9
        True
    """
    sde = model.sde
    n = grid_size(sde)
    variance = _check_variance(variance)
    bin_width = _check_data(x0, bin_width)
    max_batch = check_int("max_batch", max_batch, low=1)
    B = x0.shape[0]
    if noise is not None and noise.shape != (n, *x0.shape):
        raise ValueError(
            f"noise must have shape (N, B, *D) = {(n, *x0.shape)}, got {tuple(noise.shape)}"
        )
    per_chunk = max(1, max_batch // max(B, 1))
    terms = torch.empty(B, n, dtype=x0.dtype, device=x0.device)
    with torch.no_grad():
        for start in range(0, n, per_chunk):
            ks = torch.arange(start + 1, min(start + per_chunk, n) + 1, device=x0.device)
            c = ks.numel()
            k = ks.repeat_interleave(B)
            xs = x0.repeat(c, *([1] * (x0.ndim - 1)))
            if noise is None:
                eps = torch.randn(xs.shape, generator=generator, dtype=x0.dtype, device=x0.device)
            else:
                eps = noise[start : start + c].reshape(xs.shape).to(x0)
            ys = None if y is None else y.repeat(c)
            out = _step_terms(model, xs, k, eps, variance, bin_width, ys, False)
            terms[:, start : start + c] = out.reshape(c, B).T
        prior = prior_term(sde, x0)
    return VLBTerms(terms, prior, math.prod(x0.shape[1:]))


def vlb_loss(
    model,
    x0: Tensor,
    *,
    variance: Variance = "posterior",
    bin_width: float | None = 2 / 256,
    y: Tensor | None = None,
    generator: torch.Generator | None = None,
    k: Tensor | None = None,
    noise: Tensor | None = None,
    detach_mean: bool = False,
    reduce: bool = True,
) -> Tensor:
    """Unbiased one-term estimate of DDPM's bound, in bits per dimension.

    With k uniform on {1..N} and x_k ~ q(x_k | x_0), (N L_{k-1} + L_T) / (D log 2) has
    expectation `vlb_terms(...).bits_per_dim` (Ho et al. 2020, section 3; Nichol & Dhariwal
    2021 train on it as L_vlb).

    Args:
        model, x0, variance, bin_width, y: as for `vlb_terms`.
        generator: random source for k and the noise (drawn in that order).
        k: fix the 1-based steps (B,) (int64); noise: fix the noise (B, *D).
        detach_mean: stop the gradient through the model's mean, so the loss trains only a
            learned variance (Nichol & Dhariwal 2021, section 3.1, L_hybrid).
        reduce: mean over the batch; otherwise per-example values (B,).
    Returns:
        the estimate, a scalar (or shape (B,)), bits per dimension.
    """
    sde = model.sde
    n = grid_size(sde)
    variance = _check_variance(variance)
    bin_width = _check_data(x0, bin_width)
    B = x0.shape[0]
    if k is None:
        u = torch.rand(B, generator=generator, dtype=torch.float64, device=x0.device)
        k = torch.floor(u * n).clamp(0, n - 1).long() + 1
    elif k.shape != (B,) or k.is_floating_point() or bool(((k < 1) | (k > n)).any()):
        raise ValueError(f"k must be int64 steps of shape ({B},) in 1..{n}, got {k!r}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    elif noise.shape != x0.shape:
        raise ValueError(
            f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}"
        )
    step = _step_terms(model, x0, k, noise, variance, bin_width, y, detach_mean)
    total = n * step + prior_term(sde, x0)
    bpd = total / (math.prod(x0.shape[1:]) * math.log(2))
    return bpd.mean() if reduce else bpd


def vlb_objective(
    variance: Variance = "posterior",
    bin_width: float | None = 2 / 256,
    detach_mean: bool = False,
):
    """`vlb_loss` as a Trainer objective (model, batch, StepRandom[, labels]) -> bits/dim,
    with per-example steps k and noise drawn through StepRandom (so resumed and multi-process
    runs repeat single-process ones)."""
    variance = _check_variance(variance)
    if bin_width is not None:
        bin_width = check_finite_number("bin_width", bin_width, positive=True)

    def objective(model, x: Tensor, rnd, y: Tensor | None = None) -> Tensor:
        n = grid_size(model.sde)
        u = rnd.rand(dtype=torch.float64)
        k = torch.floor(u * n).clamp(0, n - 1).long() + 1
        noise = rnd.randn(*x.shape[1:], dtype=x.dtype)
        return vlb_loss(
            model,
            x,
            variance=variance,
            bin_width=bin_width,
            y=y,
            k=k,
            noise=noise,
            detach_mean=detach_mean,
        )

    return objective


__all__ = [
    "VLB_VARIANCES",
    "VLBTerms",
    "prior_term",
    "vlb_terms",
    "vlb_loss",
    "vlb_objective",
]
