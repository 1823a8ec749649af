"""Adaptive step size in the log-SNR with an embedded exponential 2(3) pair (Lu et al. 2022,
DPM-Solver-23). Error control chooses the steps, so it drives its own loop and reports each
accepted state to the recorder."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import check_finite_number, check_tolerances
from .exp_quadrature import LogSNRSchedule, exp_step
from .grid import Record, batch_t
from .rk import check_controller


def _rms_error(err: Tensor, a: Tensor, b: Tensor, rtol: float, atol: float) -> float:
    scale = atol + rtol * torch.maximum(a.abs(), b.abs())
    return float(((err / scale) ** 2).flatten(1).mean(1).sqrt().max())


def dpm_adaptive(
    model,
    sde,
    x: Tensor,
    ts: Tensor,
    *,
    rtol: float,
    atol: float,
    h_init: float,
    safety: float,
    record: Record = None,
) -> Tensor:
    """DPM-Solver-23 from x (B, *D) at ts[0] to ts[-1]; returns x there.

    Each step evaluates x0 at lambda_t, lambda_t + h/3 and lambda_t + 2h/3 (3 evaluations; a
    rejected attempt costs 2, as x0 at lambda_t is kept; all are counted). The 3S update is
    propagated and the 2nd-order update through the first stage gives the error estimate
    E = max over the batch of the RMS of (x_3 - x_2) / (atol + rtol max(|x_3|, |x_2|)), so the
    NFE depends on the batch. A step is accepted when E <= 1; the next h is safety * h *
    E^(-1/3), growth at most 4x per step, from h_init. DPM-Solver's defaults for data in
    [-1, 1] are atol = 0.0078, rtol = 0.05 (see METHODS). Records the accepted states, each with
    the x0 estimate at its step's start.
    """
    rtol, atol = check_tolerances(rtol, atol, x.dtype, zero_atol=True)
    h = check_finite_number("h_init", h_init, positive=True)
    safety = check_controller(safety)[0]
    lam_end = float(sde.half_log_snr(ts[-1:].to(torch.float64))[0])
    path = LogSNRSchedule(sde, ts[[0]])
    lam, t, sig = path.lam[0], ts[0].item(), path.sigma[0]
    span = lam_end - lam
    x0_t: Tensor | None = None  # reused after a rejected attempt: the state has not moved
    while lam_end - lam > 1e-9:
        h = min(h, lam_end - lam)
        if x0_t is None:
            x0_t = model.denoise(x, batch_t(t, x))
        t1, a1, s1 = path.at_lambda(lam + h / 3)
        x1 = exp_step(x, [x0_t], [0.0], h / 3, s1 / sig, a1, s1)
        x0_1 = model.denoise(x1, batch_t(t1, x))
        t2, a2, s2 = path.at_lambda(lam + 2 * h / 3)
        x2 = exp_step(x, [x0_t, x0_1], [0.0, h / 3], 2 * h / 3, s2 / sig, a2, s2)
        x0_2 = model.denoise(x2, batch_t(t2, x))
        t_s, a_s, s_s = path.at_lambda(lam + h)
        if lam_end - lam - h <= 1e-9:
            t_s = float(ts[-1])
            a_s, s_s = float(sde.alpha(ts[-1:])[0]), float(sde.sigma(ts[-1:])[0])
        x_hi = exp_step(x, [x0_t, x0_2], [0.0, 2 * h / 3], h, s_s / sig, a_s, s_s)
        x_lo = exp_step(x, [x0_t, x0_1], [0.0, h / 3], h, s_s / sig, a_s, s_s)
        err = _rms_error(x_hi - x_lo, x_hi, x_lo, rtol, atol)
        if err <= 1.0:
            if record is not None:
                record(x_hi, x0_t)
            x, lam, t, sig, x0_t = x_hi, lam + h, t_s, s_s, None
        if not math.isfinite(err):
            raise RuntimeError(
                f"dpm_adaptive: the error estimate is {err} at t = {t:g} (a non-finite x0 from "
                "the model, or a state that overflowed)"
            )
        h = h * min(4.0, safety * max(err, 1e-10) ** (-1 / 3))
        if h < 1e-12 * span:
            raise RuntimeError(
                f"dpm_adaptive: the step size underflowed at t = {t:g} (error {err:.3g} at "
                f"rtol={rtol:g}, atol={atol:g} in {x.dtype}: tolerances too tight for the "
                "model's rounding)"
            )
    return x
