"""The variance of DDPM's reverse step p(x_s | x_t) = N(mu(x_t), Sigma): fixed, learned, optimal.

The reverse step of a linear SDE from t to s < t has the mean of the forward posterior
q(x_s | x_t, x_0) (`posterior`) with x_0 replaced by the model's estimate. Its variance can be

- fixed (Ho et al. 2020): beta = the forward transition variance x_s -> x_t (DDPM's beta_t on
  adjacent steps), or beta_tilde = the posterior variance of q(x_s | x_t, x_0);
- learned (Nichol & Dhariwal 2021, "Improved DDPM", eq. 15): per element
  Sigma = exp(v log beta + (1 - v) log beta_tilde), v the network's extra outputs;
- optimal (Bao et al. 2022, "Analytic-DPM", Theorem 1): for a reverse step with the exact
  posterior mean E[x_0 | x_t] and an isotropic variance, the KL-optimal variance is

      sigma*^2 = lambda^2 + c0^2 sigma_t^2 / alpha_t^2 (1 - E||E[eps | x_t]||^2 / d),

  with lambda^2 = beta_tilde and c0 the x_0 coefficient of the posterior mean; equivalently
  lambda^2 + c0^2 E tr Cov(x_0 | x_t) / d. For Gaussian data Cov(x_0 | x_t) is known in closed
  form, so the optimum is exact (`optimal_variance`); for a trained model E||eps_theta||^2 is
  estimated by Monte Carlo and put into `analytic_dpm_variance`.

All times s, t have shape (B,); results are float64. s = 0 stands for the data (DDPM's last
step x_1 -> x_0), where beta_tilde = 0: Improved DDPM then clips log beta_tilde to the next
step's value, which `variance_bounds` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import append_dims, check_finite_number
from .discrete import posterior_coefficients, step_times


def variance_bounds(sde, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """(beta_tilde, beta) of the reverse step t -> s: Improved DDPM's interpolation bounds.

    beta = sigma_t^2 - a^2 sigma_s^2 (a = alpha_t / alpha_s) is the forward transition variance
    (DDPM's beta_t on adjacent grid steps, the respaced 1 - alpha_bar_t / alpha_bar_s on a
    strided grid, Nichol & Dhariwal 2021, section 4) and beta_tilde = beta sigma_s^2 / sigma_t^2
    the posterior variance. Where s = 0 (beta_tilde = 0) the lower bound is beta_tilde of the
    step 2t -> t instead: on DDPM's grid, beta_tilde_2 for the first step, Improved DDPM's clip.

    Args:
        sde: a linear SDE.
        s, t: times (B,), 0 <= s < t; 2t <= T where s = 0.
    Returns:
        beta_tilde and beta, float64 of shape (B,), 0 < beta_tilde <= beta.
    """
    s64, t64 = step_times(s, t)
    first = s64 <= 0
    if bool((first & (2 * t64 > sde.T * (1 + 1e-9))).any()):
        raise ValueError(f"a step from t to s = 0 needs 2t <= T = {sde.T} for the clipped bound")
    c0, _, beta_tilde = posterior_coefficients(sde, s64, t64)
    # beta from the posterior: var = sigma_s^2 beta / sigma_t^2 and c0 = alpha_s beta / sigma_t^2
    sig_t2 = sde.sigma(t64).to(torch.float64) ** 2
    alpha_s = torch.where(first, torch.ones_like(s64), sde.alpha(torch.where(first, t64, s64)))
    beta = c0 * sig_t2 / alpha_s
    if bool(first.any()):
        beta_tilde = beta_tilde.clone()
        beta_tilde[first] = posterior_coefficients(sde, t64[first], 2 * t64[first])[2]
    return beta_tilde, beta


def interpolated_variance(sde, v: Tensor, s: Tensor, t: Tensor) -> Tensor:
    """Improved DDPM's learned variance exp(v log beta + (1 - v) log beta_tilde), per element.

    Nichol & Dhariwal 2021, eq. 15: v = 0 gives beta_tilde, v = 1 gives beta; v is not clamped,
    so the network may also extrapolate.

    Args:
        sde: a linear SDE.
        v: the interpolation weights, shape (B, *D).
        s, t: times (B,) of the step t -> s (see `variance_bounds`).
    Returns:
        the variance, shape (B, *D), in v's dtype (differentiable in v).
    """
    if not torch.is_tensor(v) or v.ndim < 1 or v.shape[0] != t.shape[0]:
        got = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
        raise ValueError(f"v must have shape (B, *D) with B = {tuple(t.shape)}, got {got}")
    lo, hi = variance_bounds(sde, s, t)
    log_lo = append_dims(torch.log(lo).to(v.dtype), v.ndim)
    log_hi = append_dims(torch.log(hi).to(v.dtype), v.ndim)
    return torch.exp(v * log_hi + (1 - v) * log_lo)


def _posterior_x0_coefficient(sde, s64: Tensor, t64: Tensor) -> tuple[Tensor, Tensor]:
    """(c0, lambda^2): the x_0 coefficient and the variance of q(x_s | x_t, x_0)."""
    c0, _, lam2 = posterior_coefficients(sde, s64, t64)
    return c0, lam2


def analytic_dpm_variance(
    sde,
    s: Tensor,
    t: Tensor,
    gamma: Tensor | float,
    *,
    data_range: tuple[float, float] | None = None,
) -> Tensor:
    """Analytic-DPM's optimal isotropic reverse variance from Gamma_t = E||eps(x_t)||^2 / d.

    Bao et al. 2022, Theorem 1, for the reverse step t -> s with the posterior mean:
    sigma*^2 = lambda^2 + c0^2 sigma_t^2 / alpha_t^2 (1 - Gamma_t), lambda^2 = beta_tilde.
    Gamma is clipped to [0, 1] (its range for the exact noise predictor; an estimate may leave
    it), and with `data_range` = (a, b), data in [a, b]^d, the result to the bounds of their
    Theorem 2, [lambda^2, lambda^2 + c0^2 ((b - a) / 2)^2] (Cov(x_0 | x_t) is at most
    ((b - a)/2)^2 per dimension), which binds where alpha_t is small.

    Args:
        sde: a linear SDE.
        s, t: times (B,), 0 <= s < t.
        gamma: E||E[eps | x_t]||^2 / d at t, shape (B,) or a number (a Monte Carlo estimate
            from a trained noise predictor, or the exact value).
        data_range: (a, b) with a < b, the range of the data; None: no such bound.
    Returns:
        sigma*^2, float64 of shape (B,).
    """
    s64, t64 = step_times(s, t)
    g = torch.as_tensor(gamma, dtype=torch.float64).expand(t64.shape)
    c0, lam2 = _posterior_x0_coefficient(sde, s64, t64)
    post = (sde.sigma(t64) / sde.alpha(t64)).to(torch.float64) ** 2 * (1 - g).clamp(0, 1)
    if data_range is not None:
        lo, hi = (check_finite_number("data_range", v) for v in data_range)
        if not lo < hi:
            raise ValueError(f"data_range must be (a, b) with a < b, got {data_range!r}")
        post = post.clamp(max=((hi - lo) / 2) ** 2)
    return lam2 + c0**2 * post


def gaussian_posterior_covariance(sde, t: Tensor, cov: Tensor) -> Tensor:
    """Cov(x_0 | x_t) for data of covariance cov (D, D): C - alpha^2 C (alpha^2 C + sigma^2 I)^-1 C.

    For Gaussian data x_0 ~ N(m, C) and x_t = alpha x_0 + sigma eps it is the same for every x_t
    (and every m). Computed in C's eigenbasis, C = U diag(l) U^T: U diag(l sigma^2 /
    (alpha^2 l + sigma^2)) U^T, which stays positive semi-definite for singular C.

    Args:
        t: times (B,).
        cov: symmetric positive semi-definite, shape (D, D).
    Returns:
        float64 of shape (B, D, D).
    """
    if not torch.is_tensor(cov) or cov.ndim != 2 or cov.shape[0] != cov.shape[1]:
        got = tuple(cov.shape) if torch.is_tensor(cov) else type(cov).__name__
        raise ValueError(f"cov must be a square matrix (D, D), got {got}")
    C = cov.detach().to(torch.float64)
    if not torch.allclose(C, C.T, atol=1e-10 * (1 + float(C.abs().max()))):
        raise ValueError("cov must be symmetric")
    evals, evecs = torch.linalg.eigh(C)
    if bool((evals < -1e-9 * (1 + evals.abs().max())).any()):
        raise ValueError(f"cov must be positive semi-definite; eigenvalue {float(evals.min()):.3g}")
    t64 = t.detach().to(torch.float64)
    a2 = sde.alpha(t64).to(torch.float64)[:, None] ** 2
    s2 = sde.sigma(t64).to(torch.float64)[:, None] ** 2
    lam = evals.clamp_min(0)[None, :]
    post = lam * s2 / (a2 * lam + s2)  # (B, D)
    return torch.einsum("ij,bj,kj->bik", evecs, post, evecs)


def optimal_variance(sde, s: Tensor, t: Tensor, cov: Tensor, *, diagonal: bool = False) -> Tensor:
    """The exact KL-optimal reverse variance for Gaussian data of covariance cov (D, D).

    With the exact posterior mean, E_q KL(q(x_s | x_t, x_0) || N(mu(x_t), Sigma)) is smallest at
    Sigma = lambda^2 + c0^2 Cov(x_0 | x_t): per element (`diagonal=True`, the optimum of a
    learned per-element variance, which Gaussian data make independent of x_t) or its trace / d
    (isotropic, Analytic-DPM's sigma*^2).

    Args:
        sde: a linear SDE.
        s, t: times (B,), 0 <= s < t.
        cov: data covariance (D, D).
        diagonal: per-element optimum instead of the isotropic one.
    Returns:
        float64 of shape (B,) (isotropic) or (B, D) (diagonal).
    """
    s64, t64 = step_times(s, t)
    c0, lam2 = _posterior_x0_coefficient(sde, s64, t64)
    post = torch.diagonal(gaussian_posterior_covariance(sde, t64, cov), dim1=-2, dim2=-1)
    if diagonal:
        return lam2[:, None] + c0[:, None] ** 2 * post
    return lam2 + c0**2 * post.mean(dim=1)
