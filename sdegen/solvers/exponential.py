"""Exponential integrators in the log-SNR lambda = log(alpha/sigma), for every linear SDE.

In data-prediction form the PF-ODE solution from t to s is exactly
    x_s = (sigma_s / sigma_t) x_t + sigma_s int_{lambda_t}^{lambda_s} e^{lambda} x0(lambda) dlambda,
so only the denoiser x0 = E[x0 | x_t] is approximated. Freezing x0 over the step gives DDIM;
a linear multistep extrapolation gives DPM-Solver++(2M) (Lu et al. 2022). Nothing here divides
by alpha, so VE (alpha = 1) and schedules with small alpha(T) work the same way.
"""

from __future__ import annotations

import math

from torch import Tensor

from .._utils import check_finite_number
from .reverse_sde import Record, batch_t, randn_like


def _sched(sde, ts: Tensor) -> tuple[list[float], list[float], list[float]]:
    alpha, sigma, lam = sde.alpha(ts), sde.sigma(ts), sde.log_snr(ts)
    return alpha.tolist(), sigma.tolist(), lam.tolist()


def ddim(
    model,
    sde,
    x: Tensor,
    ts: Tensor,
    *,
    eta: float = 0.0,
    generator=None,
    noise_final: bool = False,
    record: Record = None,
) -> Tensor:
    """DDIM (Song, Meng & Ermon 2021, eq. 12) for any linear SDE; one evaluation per step.

    x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z, with eps = (x_t - alpha_t x0)/sigma_t and
    c = eta * G sigma_s / sigma_t, G^2 = sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2. eta = 0 is the
    first-order exponential integrator of the PF-ODE; eta = 1 is DDPM's ancestral sampler.
    """
    eta = check_finite_number("eta", eta, nonnegative=True)
    alpha, sigma, _ = _sched(sde, ts)
    n = len(ts) - 1
    for i in range(n):
        at, st, as_, ss = alpha[i], sigma[i], alpha[i + 1], sigma[i + 1]
        x0 = model.denoise(x, batch_t(ts[i].item(), x))
        stochastic = eta > 0 and (i < n - 1 or noise_final)
        c = 0.0
        if stochastic:
            g2 = max(st**2 - (at / as_ * ss) ** 2, 0.0)
            c = min(eta * math.sqrt(g2) * ss / st, ss)
        # x_s = alpha_s x0 + (sqrt(sigma_s^2 - c^2)/sigma_t) (x_t - alpha_t x0) + c z
        x = as_ * x0 + (math.sqrt(ss**2 - c**2) / st) * (x - at * x0)
        if stochastic:
            x = x + c * randn_like(x, generator)
        if record:
            record(x)
    return x


def dpmpp_2m(
    model, sde, x: Tensor, ts: Tensor, *, lower_order_final: bool = True, record: Record = None
) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2); one evaluation per step.

    The first step is first order (no history); with `lower_order_final` so is the last, which
    keeps few-step sampling stable (their Appendix; global order stays 2).
    """
    alpha, sigma, lam = _sched(sde, ts)
    n = len(ts) - 1
    x0_prev: Tensor | None = None
    for i in range(n):
        x0 = model.denoise(x, batch_t(ts[i].item(), x))
        h = lam[i + 1] - lam[i]
        if x0_prev is None or (lower_order_final and i == n - 1):
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        # x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^{-h}) D
        x = (sigma[i + 1] / sigma[i]) * x + alpha[i + 1] * (-math.expm1(-h)) * d
        x0_prev = x0
        if record:
            record(x)
    return x
