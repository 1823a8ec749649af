"""Time grids for samplers: steps + 1 float64 times from T down to t_min, for any linear SDE.

Grids other than "uniform" are placed in the log-SNR lambda = log(alpha/sigma) and mapped back
through sde.t_of_half_log_snr, so the same schedule means the same noise levels whatever the SDE.

When a final denoising step follows the grid, the grid may stop above t_min: the denoiser at the
last time jumps to zero noise, as EDM's and k-diffusion's last step to sigma = 0 does. Ending at
t_min wastes that evaluation at few steps (the denoiser at sigma/alpha = 0.002 barely moves x);
"log_snr_jump" places the last level where it still does work (measured in
benchmarks/default_vs_peers.py).
"""

from __future__ import annotations

import math

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


# The jump level sigma/alpha = JUMP_SCALE / levels**JUMP_POWER, fitted (see log_snr_jump).
JUMP_SCALE, JUMP_POWER = 5.5, 1.5


def log_snr_jump(sde, steps: int, *, denoised: bool = True) -> Tensor:
    """Uniform in lambda from T down to the noise level sigma/alpha = 5.5 / (steps + 1)^1.5,
    where the final denoising step takes over (the default grid of the exponential integrators).

    With steps + 1 levels, each evaluated once by a one-evaluation method and the last by the
    final denoising step, the last level is sigma/alpha = 0.49 at 5 levels, 0.17 at 10, 0.061 at
    20 and 0.016 at 50, reaching t_min's level on long grids (from 66 levels on the default
    VPSDE, 197 on EDMSDE). The rule was fitted to the best last level of UniPC and
    DPM-Solver++(2M)/(3M) at 5, 10 and 20 levels on the ring and the mixtures that
    benchmarks/peers.py lists as TUNED_ON, on the ddpm and EDM SDEs, and is reported on the
    others (benchmarks/defaults.py). `denoised=False` (no final denoising step, so the grid must
    reach t_min) gives `uniform_log_snr`, and so does an edit starting (SDEdit's t_start) at or
    below the jump level; an edit from above it spreads its levels down to the jump.
    """
    lo, hi = sde.half_log_snr_range()
    last = min(-math.log(JUMP_SCALE / (steps + 1) ** JUMP_POWER), hi)
    if not denoised or last <= lo:
        return uniform_log_snr(sde, steps)
    lam = torch.linspace(lo, last, steps + 1, dtype=torch.float64)
    ts = sde.t_of_half_log_snr(lam).clone()
    ts[0] = sde.T
    if last == hi:
        ts[-1] = sde.t_min
    return ts


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


SCHEDULES = {
    "uniform": uniform_t,
    "log_snr": uniform_log_snr,
    "log_snr_jump": log_snr_jump,
    "karras": karras,
}


def get_schedule(sde, name: str, steps: int, *, denoise_final: bool = False, **kwargs) -> Tensor:
    """The grid `name` (a key of SCHEDULES) with `steps` steps, float64 (steps+1,), from T to
    t_min; with `denoise_final` (a final denoising step follows), "log_snr_jump" ends above t_min
    at its jump level."""
    check_choice("schedule", name, SCHEDULES)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if name == "log_snr_jump":
        kwargs["denoised"] = denoise_final
    ts = SCHEDULES[name](sde, steps, **kwargs)
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"schedule {name!r} with {steps} steps is not strictly decreasing")
    return ts


def check_grid(sde, ts, *, denoise_final: bool = False) -> Tensor:
    """A user-given grid as float64 (steps+1,): strictly decreasing from sde.T to sde.t_min, or,
    with `denoise_final` (the final denoising step jumps to zero noise from the last time), to
    any last time in [t_min, T)."""
    if not torch.is_tensor(ts) or ts.ndim != 1 or ts.numel() < 2:
        got = tuple(ts.shape) if torch.is_tensor(ts) else type(ts).__name__
        raise ValueError(f"a grid must be a 1-D tensor of at least 2 times, got {got}")
    ts = ts.detach().to("cpu", torch.float64)
    if not bool(torch.isfinite(ts).all()):
        raise ValueError("the grid must be finite, got NaN or inf")
    scale = max(1.0, abs(sde.T))
    start, end = float(ts[0]), float(ts[-1])
    off_end = (
        end < sde.t_min - 1e-9 * scale if denoise_final else abs(end - sde.t_min) > 1e-9 * scale
    )
    if abs(start - sde.T) > 1e-9 * scale or off_end:
        to = (
            f"a last time >= t_min = {sde.t_min:.6g}"
            if denoise_final
            else f"t_min = {sde.t_min:.6g}"
        )
        raise ValueError(
            f"the grid must run from T = {sde.T:.6g} to {to}, got {start:.6g} to {end:.6g}"
        )
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError("the grid must be strictly decreasing")
    return ts
