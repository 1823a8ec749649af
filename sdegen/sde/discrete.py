"""Discrete-time DDPM: beta schedules, the forward posterior, and the terms of the bound.

A DDPM with betas beta_1..beta_N is the SDE `VPSDE.from_betas(betas)`: its kernel at the grid
time t_k = k / N is DDPM's q(x_k | x_0) = N(sqrt(alpha_bar_k) x_0, (1 - alpha_bar_k) I), k = 1..N
(1-based, as in Ho et al. 2020; x_0 is the data, at t = 0). Everything here is pure math on
tensors:

- `beta_schedule`: the linear (Ho et al. 2020), cosine (Nichol & Dhariwal 2021), quadratic and
  sigmoid (Xu et al. 2022, GeoDiff) beta arrays; `ddpm_sde` the SDE on one of them.
- `posterior` / `posterior_coefficients`: q(x_s | x_t, x_0) for any linear SDE and s < t; on
  adjacent grid steps of a from_betas SDE it is DDPM's (mu_tilde, beta_tilde) (Ho et al. eq. 7).
- `gaussian_kl` and `discretized_gaussian_log_likelihood`: the two kinds of terms of DDPM's
  variational bound L_T + sum_t L_{t-1} + L_0 (Ho et al. 2020, eq. 5 and section 3.3).
- `grid_size`, `grid_times`, `grid_index`, `previous_grid_time`, `previous_step_coefficients`:
  the integer grid of a from_betas SDE.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import append_dims, check_choice, check_finite_number, check_int
from .vp import VPSDE, DiscreteBeta, ddpm_betas

BETA_SCHEDULES = ("linear", "cosine", "quadratic", "sigmoid")

_PARAMS = {
    "linear": ("beta_start", "beta_end"),
    "quadratic": ("beta_start", "beta_end"),
    "sigmoid": ("beta_start", "beta_end"),
    "cosine": ("s", "max_beta"),
}


def beta_schedule(name: str, n: int, **params: float) -> Tensor:
    """DDPM's beta_1..beta_n for a named schedule, float64 of shape (n,), each in (0, 1).

    Args:
        name: "linear": beta_start..beta_end evenly spaced (Ho et al. 2020);
            "quadratic": sqrt(beta) evenly spaced between sqrt(beta_start) and sqrt(beta_end);
            "sigmoid": beta_start + (beta_end - beta_start) sigmoid(linspace(-6, 6, n))
            (Xu et al. 2022, GeoDiff);
            "cosine": alpha_bar(t) = cos^2((t + s)/(1 + s) pi/2) / cos^2(s/(1 + s) pi/2) at
            t = k/n, beta_k = 1 - alpha_bar_k / alpha_bar_{k-1} clipped at max_beta
            (Nichol & Dhariwal 2021, eq. 17; s = 0.008, max_beta = 0.999 by default).
        n: number of steps, >= 2.
        params: beta_start, beta_end (linear, quadratic, sigmoid) default to DDPM's 1e-4 and
            0.02 scaled by 1000/n, as Improved DDPM does so that any n gives about the same
            alpha_bar_n (given values are used as they are); s, max_beta (cosine).

    Example:
        >>> from sdegen.sde import beta_schedule
        >>> b = beta_schedule("linear", 1000)
        >>> b.shape, round(float(b[0]), 6), round(float(b[-1]), 6)
        (torch.Size([1000]), 0.0001, 0.02)
        >>> round(float(beta_schedule("linear", 250)[-1]), 6)  # scaled by 1000 / 250
        0.08
        >>> round(float(beta_schedule("cosine", 1000)[-1]), 3)  # clipped
        0.999
    """
    check_choice("name", name, BETA_SCHEDULES)
    n = check_int("n", n, low=2)
    unknown = sorted(set(params) - set(_PARAMS[name]))
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {', '.join(unknown)} for the {name!r} beta schedule; "
            f"expected: {', '.join(_PARAMS[name])}"
        )
    if name == "cosine":
        return _cosine_betas(n, params.get("s", 0.008), params.get("max_beta", 0.999))
    scale = 1000.0 / n
    start = params.get("beta_start", 1e-4 * scale)
    end = params.get("beta_end", 0.02 * scale)
    for key, v in (("beta_start", start), ("beta_end", end)):
        if not 0 < check_finite_number(key, v) < 1:
            what = "given" if key in params else f"DDPM's default scaled by 1000/n for n={n}"
            raise ValueError(f"{key} must lie in (0, 1), got {v!r} ({what})")
    if start > end:
        raise ValueError(f"beta_start must be <= beta_end, got {start!r} > {end!r}")
    if name == "linear":
        return ddpm_betas(n, start, end)
    if name == "quadratic":
        return torch.linspace(math.sqrt(start), math.sqrt(end), n, dtype=torch.float64) ** 2
    u = torch.sigmoid(torch.linspace(-6.0, 6.0, n, dtype=torch.float64))
    return start + (end - start) * u


def ddpm_sde(
    schedule: str = "linear",
    n: int = 1000,
    *,
    beta_start: float | None = None,
    beta_end: float | None = None,
    s: float | None = None,
    max_beta: float | None = None,
) -> VPSDE:
    """DDPM's discrete-time diffusion as an SDE: `VPSDE.from_betas(beta_schedule(schedule, n,
    ...))` with grid times k/n, k = 1..n; the parameters left None take `beta_schedule`'s
    defaults. It is the config's `sde: ddpm` (sde_params e.g. {schedule: cosine, n: 1000})."""
    given = {"beta_start": beta_start, "beta_end": beta_end, "s": s, "max_beta": max_beta}
    params = {k: v for k, v in given.items() if v is not None}
    return VPSDE.from_betas(beta_schedule(schedule, n, **params))


def _cosine_betas(n: int, s: float, max_beta: float) -> Tensor:
    s = check_finite_number("s", s, nonnegative=True)
    if not 0 < check_finite_number("max_beta", max_beta) < 1:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta!r}")
    k = torch.arange(n + 1, dtype=torch.float64) / n
    log_cos = torch.log(torch.cos((k + s) / (1 + s) * (math.pi / 2)).clamp_min(0))
    # beta_k = 1 - alpha_bar_k / alpha_bar_{k-1} = 1 - (cos_k / cos_{k-1})^2
    betas = -torch.expm1(2 * (log_cos[1:] - log_cos[:-1]))
    return betas.clamp(max=max_beta)


# ---- the integer grid of a from_betas SDE ---------------------------------------------------


def _discrete_schedule(sde) -> DiscreteBeta:
    schedule = getattr(sde, "schedule", None)
    if not isinstance(schedule, DiscreteBeta):
        raise ValueError(
            f"this needs an SDE on DDPM's discrete grid, built with VPSDE.from_betas(betas) "
            f"(or SubVPSDE.from_betas), got {sde!r}"
        )
    return schedule


def grid_size(sde) -> int:
    """N, the number of steps of a from_betas SDE; ValueError for an SDE without a grid."""
    return _discrete_schedule(sde).N


def grid_times(sde, *, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
    """The grid times t_k = k / N, k = 1..N, of a from_betas SDE; shape (N,)."""
    n = grid_size(sde)
    return (torch.arange(1, n + 1, dtype=torch.float64, device=device) / n).to(dtype)


def grid_index(sde, t: Tensor) -> Tensor:
    """The 1-based DDPM index k = round(N t) of grid times t (B,), int64; ValueError when a t
    is not on the grid (off by more than rounding in t's dtype allows)."""
    n = grid_size(sde)
    if not torch.is_tensor(t) or not t.is_floating_point():
        raise TypeError(f"t must be a floating-point tensor, got {t!r}")
    u = t.detach().to(torch.float64) * n
    k = torch.round(u)
    tol = max(1e-6, 8 * torch.finfo(t.dtype).eps * n)
    bad = ((u - k).abs() > tol) | (k < 1) | (k > n)
    if bool(bad.any()):
        v = float(t.detach().flatten()[bad.flatten()][0])
        raise ValueError(f"t must hold grid times k/N, k = 1..{n}, got {v!r}")
    return k.long()


def previous_grid_time(sde, t: Tensor) -> Tensor:
    """s = t - 1/N (clamped at 0): the time of DDPM's previous step x_{k-1} for t = k/N;
    defined for every t in [1/N, 1], on the grid or between; shape (B,), t's dtype."""
    n = grid_size(sde)
    return (t - 1.0 / n).clamp_min(0)


# ---- the forward posterior ------------------------------------------------------------------


def step_times(s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """The times of steps t -> s checked (tensors of one shape (B,)), detached, as float64."""
    for name, v in (("s", s), ("t", t)):
        if not torch.is_tensor(v) or v.ndim != 1:
            got = tuple(v.shape) if torch.is_tensor(v) else type(v).__name__
            raise ValueError(f"{name} must be a tensor of shape (B,), got {got}")
    if s.shape != t.shape:
        raise ValueError(
            f"s and t must have the same shape, got {tuple(s.shape)} and {tuple(t.shape)}"
        )
    return s.detach().to(torch.float64), t.detach().to(torch.float64)


def posterior_coefficients(sde, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """q(x_s | x_t, x_0) = N(c0 x_0 + ct x_t, var I) for a linear SDE, 0 <= s < t.

    With a = alpha(t)/alpha(s) and v = sigma(t)^2 - a^2 sigma(s)^2 (the transition
    x_s -> x_t, `sde.transition`), conditioning the Gaussian pair (x_s, x_t) given x_0 gives

        c0 = alpha(s) v / sigma(t)^2,   ct = a sigma(s)^2 / sigma(t)^2,
        var = sigma(s)^2 v / sigma(t)^2,

    which on adjacent steps of DDPM are sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t),
    sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) and beta_tilde_t (Ho et al. 2020,
    eq. 7). s = 0 stands for the data itself (alpha = 1, sigma = 0): c0 = 1, ct = var = 0.

    Args:
        sde: a linear SDE (alpha, sigma, transition).
        s, t: times of shape (B,), s in {0} or [t_min, T], t in [t_min, T], s < t.
    Returns:
        c0, ct, var, each float64 of shape (B,).
    """
    s64, t64 = step_times(s, t)
    if bool((s64 >= t64).any()):
        i = int(torch.nonzero(s64 >= t64)[0])
        raise ValueError(f"s must be < t, got s={float(s64[i])!r}, t={float(t64[i])!r}")
    return _coefficients(sde, s64, t64)


def _coefficients(
    sde, s64: Tensor, t64: Tensor, *, unchecked_s: bool = False
) -> tuple[Tensor, Tensor, Tensor]:
    """`posterior_coefficients` for float64 times already known to satisfy 0 <= s < t.

    unchecked_s: evaluate alpha(s), sigma(s) by the SDE's closed forms without the [t_min, T]
    check: on a from_betas grid they hold on all of [0, T] (B(0) = 0), and s = t - 1/N falls
    below t_min = 1/N for t between the first two grid times.
    """
    data = s64 <= 0
    s_in = torch.where(data, t64, s64)  # placeholder in range where s = 0; masked below
    if unchecked_s:
        alpha_s, sigma_s = sde._alpha(s_in), sde._sigma(s_in)
    else:
        alpha_s, sigma_s = sde.alpha(s_in), sde.sigma(s_in)
    alpha_s = torch.where(data, torch.ones_like(s64), alpha_s)
    sig_s2 = torch.where(data, torch.zeros_like(s64), sigma_s**2)
    sig_t2 = sde.sigma(t64) ** 2
    a = sde.alpha(t64) / alpha_s  # the transition x_s -> x_t: N(a x_s, v I)
    v = sig_t2 - a**2 * sig_s2
    return alpha_s * v / sig_t2, a * sig_s2 / sig_t2, sig_s2 * v / sig_t2


def previous_step_coefficients(sde, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """`posterior_coefficients` (c0, ct, var) from t to the previous grid step
    s = `previous_grid_time(sde, t)` of a from_betas SDE: DDPM's mu_tilde_t = c0 x_0 + ct x_t
    and beta_tilde_t = var at t = k/N (and between grid times); float64 of shape (B,)."""
    if not torch.is_tensor(t) or t.ndim != 1:
        got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
        raise ValueError(f"t must be a tensor of shape (B,), got {got}")
    t64 = t.detach().to(torch.float64)
    return _coefficients(sde, previous_grid_time(sde, t64), t64, unchecked_s=True)


def posterior(sde, x0: Tensor, x_t: Tensor, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and variance of q(x_s | x_t, x_0) (see `posterior_coefficients`).

    Args:
        sde: a linear SDE.
        x0, x_t: shape (B, *D).
        s, t: times of shape (B,), 0 <= s < t (s = 0: the data itself).
    Returns:
        mean of shape (B, *D) and variance of shape (B, 1, ..., 1) (broadcastable to x),
        both in x_t's dtype.

    Example:
        >>> import torch
        >>> from sdegen.sde import VPSDE, beta_schedule, grid_times, posterior, previous_grid_time
        >>> betas = beta_schedule("linear", 100)
        >>> sde = VPSDE.from_betas(betas)
        >>> t = grid_times(sde)[[49, 49]]  # step 50 (t = 0.5), twice
        >>> s = previous_grid_time(sde, t)  # step 49
        >>> mean, var = posterior(sde, torch.zeros(2, 3), torch.ones(2, 3), s, t)
        >>> ab = torch.cumprod(1 - betas, 0)  # alpha_bar, float64
        >>> beta_tilde = (1 - ab[48]) / (1 - ab[49]) * betas[49]
        >>> abs(float(var[0, 0]) - float(beta_tilde)) < 1e-7 * float(beta_tilde)
        True
    """
    if x0.shape != x_t.shape or x_t.ndim < 1 or t.shape != (x_t.shape[0],):
        raise ValueError(
            f"x0 and x_t must have the same shape (B, *D) and t the shape (B,), got "
            f"{tuple(x0.shape)}, {tuple(x_t.shape)}, {tuple(t.shape)}"
        )
    c0, ct, var = posterior_coefficients(sde, s, t)
    nd = x_t.ndim
    c0, ct, var = (append_dims(c.to(x_t.dtype), nd) for c in (c0, ct, var))
    return c0 * x0 + ct * x_t, var


# ---- terms of the bound ---------------------------------------------------------------------


def gaussian_kl(mean1: Tensor, var1: Tensor, mean2: Tensor, var2: Tensor) -> Tensor:
    """KL(N(mean1, var1) || N(mean2, var2)) elementwise, in nats; arguments broadcast together.

    0.5 (log var2 - log var1 + (var1 + (mean1 - mean2)^2) / var2 - 1); variances must be > 0.
    """
    for name, v in (("mean1", mean1), ("var1", var1), ("mean2", mean2), ("var2", var2)):
        if not torch.is_tensor(v):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    for name, v in (("var1", var1), ("var2", var2)):
        if v.device.type == "cpu" and bool((v.detach() <= 0).any()):
            raise ValueError(f"{name} must be > 0, got min {float(v.detach().min())!r}")
    return 0.5 * (torch.log(var2) - torch.log(var1) + (var1 + (mean1 - mean2) ** 2) / var2 - 1.0)


def _log1mexp(z: Tensor) -> Tensor:
    """log(1 - exp(z)) for z <= 0, accurate near 0 and for very negative z."""
    return torch.where(z > -math.log(2), torch.log(-torch.expm1(z)), torch.log1p(-torch.exp(z)))


def _log_normal_cdf_diff(lo: Tensor, hi: Tensor) -> Tensor:
    """log(Phi(hi) - Phi(lo)) for lo < hi, computed in the lower tail (flipped when both lie in
    the upper one) so neither cancellation nor underflow loses it."""
    flip = lo + hi > 0
    lo, hi = torch.where(flip, -hi, lo), torch.where(flip, -lo, hi)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + _log1mexp(torch.special.log_ndtr(lo) - log_hi)


def discretized_gaussian_log_likelihood(
    x: Tensor, mean: Tensor, var: Tensor, bin_width: float
) -> Tensor:
    """log P(x) in nats, elementwise, of N(mean, var) discretized to bins of width bin_width.

    DDPM's decoder L_0 (Ho et al. 2020, section 3.3): a value x gets the Gaussian mass of
    [x - w/2, x + w/2] (w = bin_width), the lowest bin's extended to -inf and the highest's to
    +inf, so the masses of all bins sum to 1. Two grids of [-1, 1] are understood: DDPM's, with
    values -1, -1 + w, ..., 1 (w = 2/255 for 8-bit data), and sdegen's bin centres
    -1 + (k + 1/2) w (w = 2/256 for 8-bit data, `sdegen.data.quantize`); the edge bins are those
    within 3w/4 of -1 or 1.

    Args:
        x: data in [-1, 1] on one of these grids; mean, var: broadcastable to x, var > 0.
        bin_width: w > 0.
    Returns:
        log-probabilities of the broadcast shape, nats.
    """
    w = check_finite_number("bin_width", bin_width, positive=True)
    if w > 2:
        raise ValueError(f"bin_width must be <= 2 (data in [-1, 1]), got {bin_width!r}")
    for name, v in (("x", x), ("mean", mean), ("var", var)):
        if not torch.is_tensor(v):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if x.device.type == "cpu":
        if bool((x.detach().abs() > 1 + 1e-6).any()):
            raise ValueError(f"x must lie in [-1, 1], got values up to {float(x.abs().max())!r}")
        if bool((var.detach() <= 0).any()):
            raise ValueError(f"var must be > 0, got min {float(var.detach().min())!r}")
    std = var.sqrt()
    lo = (x - w / 2 - mean) / std
    hi = (x + w / 2 - mean) / std
    lower_edge = x < -1 + 0.75 * w
    upper_edge = x > 1 - 0.75 * w
    inf = torch.full_like(lo, math.inf)
    lo = torch.where(lower_edge, -inf, lo)
    hi = torch.where(upper_edge, inf, hi)
    return _log_normal_cdf_diff(lo, hi)
