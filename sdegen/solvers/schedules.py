"""Time grids for samplers: steps + 1 float64 times from T down to t_min, for any linear SDE.

Grids other than "uniform" are placed in the log-SNR lambda = log(alpha/sigma) and mapped back
through sde.t_of_half_log_snr, so the same schedule means the same noise levels whatever the SDE.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import check_choice, check_finite_number


def uniform_t(sde, steps: int) -> Tensor:
    """Uniform in t from T to t_min (Song et al. 2021)."""
    return torch.linspace(sde.T, sde.t_min, steps + 1, dtype=torch.float64)


def uniform_log_snr(sde, steps: int) -> Tensor:
    """Uniform in lambda(t) (Lu et al. 2022, DPM-Solver's recommended grid)."""
    lo, hi = sde.half_log_snr_range()
    lam = torch.linspace(lo, hi, steps + 1, dtype=torch.float64)
    return _endpoints(sde, sde.t_of_half_log_snr(lam))


def karras(sde, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al. 2022 (EDM, eq. 5) in the noise level sigma/alpha = exp(-lambda), rho = 7."""
    rho = check_finite_number("rho", rho, positive=True)
    lo, hi = sde.half_log_snr_range()
    s_max, s_min = (
        torch.exp(torch.tensor(-lo, dtype=torch.float64)),
        torch.exp(torch.tensor(-hi, dtype=torch.float64)),
    )
    u = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    s = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    return _endpoints(sde, sde.t_of_half_log_snr(-torch.log(s)))


def _endpoints(sde, ts: Tensor) -> Tensor:
    # The inverse log-SNR is exact only to rounding; pin the ends so grids start at T and end at
    # t_min exactly.
    ts = ts.clone()
    ts[0], ts[-1] = sde.T, sde.t_min
    return ts


SCHEDULES = {"uniform": uniform_t, "log_snr": uniform_log_snr, "karras": karras}


def get_schedule(sde, name: str, steps: int, **kwargs) -> Tensor:
    """The grid `name` ("uniform", "log_snr" or "karras") with `steps` steps, float64 (steps+1,)."""
    check_choice("schedule", name, SCHEDULES)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    ts = SCHEDULES[name](sde, steps, **kwargs)
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"schedule {name!r} with {steps} steps is not strictly decreasing")
    return ts


def check_grid(sde, ts) -> Tensor:
    """A user-given grid as float64 (steps+1,): strictly decreasing from sde.T to sde.t_min."""
    if not torch.is_tensor(ts) or ts.ndim != 1 or ts.numel() < 2:
        got = tuple(ts.shape) if torch.is_tensor(ts) else type(ts).__name__
        raise ValueError(f"a grid must be a 1-D tensor of at least 2 times, got {got}")
    ts = ts.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("the grid must be finite, got NaN or inf")
    scale = max(1.0, abs(sde.T))
    if abs(float(ts[0]) - sde.T) > 1e-9 * scale or abs(float(ts[-1]) - sde.t_min) > 1e-9 * scale:
        raise ValueError(
            f"the grid must run from T = {sde.T:.6g} to t_min = {sde.t_min:.6g}, "
            f"got {float(ts[0]):.6g} to {float(ts[-1]):.6g}"
        )
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("the grid must be strictly decreasing")
    return ts
