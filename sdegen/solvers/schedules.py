"""Time grids for samplers: steps + 1 float64 times from T down to t_min, for any linear SDE.

Grids other than "uniform" are placed in the log-SNR lambda = log(alpha/sigma) and mapped back
through sde.t_of_half_log_snr, so the same schedule means the same noise levels whatever the SDE.

When a final denoising step follows the grid, the grid may stop above t_min: the denoiser at the
last time jumps to zero noise, as EDM's and k-diffusion's last step to sigma = 0 does. Ending at
t_min wastes that evaluation at few steps (the denoiser at sigma/alpha = 0.002 barely moves x);
"log_snr_jump" places the last level where it still does work, and its levels by the data's
scale (measured in benchmarks/defaults.py).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import check_choice, check_finite_number, check_int


def uniform_t(sde, steps: int) -> Tensor:
    """Uniform in t from T to t_min (Song et al. 2021)."""
    return torch.linspace(sde.T, sde.t_min, steps + 1, dtype=torch.float64)


def uniform_log_snr(sde, steps: int) -> Tensor:
    """Uniform in lambda(t) (Lu et al. 2022, DPM-Solver's recommended grid)."""
    lo, hi = sde.half_log_snr_range()
    lam = torch.linspace(lo, hi, steps + 1, dtype=torch.float64)
    return _endpoints(sde, sde.t_of_half_log_snr(lam))


# The grid of the exponential integrators, in units of the data's RMS std s_d (`data_std`): the
# last level (where the final denoising step takes over) at sigma/alpha = JUMP_SCALE s_d /
# levels**JUMP_POWER; for unipc the first after T at START_PER_LEVEL s_d levels. Fitted; see
# log_snr_jump.
START_PER_LEVEL, JUMP_SCALE, JUMP_POWER = 1.0, 2.5, 1.5


def log_snr_jump(
    sde,
    steps: int,
    *,
    denoised: bool = True,
    data_std: float = 1.0,
    start_per_level: float | None = None,
) -> Tensor:
    """The default grid of the fixed-grid samplers (all but four reverse-SDE ones: methods.py),
    for data of RMS std `data_std` = s_d:
    uniform in lambda from T down to the noise level sigma/alpha = 2.5 s_d / levels^1.5
    (levels = steps + 1), where the final denoising step takes over; with `start_per_level` = a
    (unipc's default: 1), one step from T to sigma/alpha = a s_d levels first, and uniform in
    lambda from there (from T, when that level is above T's).

    The levels scale with the data: in the variables x / alpha and sigma / alpha the probability
    flow of data scaled by c is the flow of the data scaled by c, so a grid that suits data of
    std s_d suits data of std c s_d once its levels are multiplied by c (T and t_min, which are
    the SDE's, aside). With steps + 1 levels, each evaluated once by a one-evaluation method and
    the last by the final denoising step, the last level is sigma/alpha = 0.22 s_d at 5 levels,
    0.079 s_d at 10, 0.028 s_d at 20, reaching t_min's level on long grids. Far above s_d the
    denoiser barely depends on x: UniPC, whose corrector makes a long first step second order,
    crosses that region in one step and spends the rest below. The first step's error does not
    shrink with the budget, so its end rises with it (5 s_d at 5 levels, 20 s_d at 20) and the
    grid becomes uniform from T once that end passes T's level: at 20 levels a start at 5 s_d
    left 0.8-5.5x (median 1.5x) the distance to the exact flow of a start at 20 s_d on the
    16-64-D tuning mixtures (ddpm and EDM SDEs, 3 x 1000 draws); the idea came from two held-out
    losses at 20 levels (benchmarks/results/defaults before this rule), the rule was fitted on
    the tuning mixtures alone. A method without a corrector (DPM-Solver++(2M)) loses more on a
    long first-order step than it gains (measured on peers.TUNED_ON at NFE 10 and 20), so it
    starts the uniform part at T. The constants were fitted to UniPC (and checked with
    DPM-Solver++(2M)) at 5, 10, 15, 20 and 30 levels on the ring and the mixtures
    benchmarks/peers.py lists as TUNED_ON (data std 1.4-1.5), on the ddpm and EDM SDEs, and are
    reported on the others (benchmarks/defaults.py), among them one fitted to the 8x8 digits
    (std 0.51).
    `denoised=False` (no final denoising step, so the grid must reach t_min) gives
    `uniform_log_snr`, and so does an edit starting (SDEdit's t_start) at or below the jump
    level; an edit from below a s_d spreads its levels evenly from its start.
    """
    sd = check_finite_number("data_std", data_std, positive=True)
    lo, hi = sde.half_log_snr_range()
    last = min(-math.log(JUMP_SCALE * sd / (steps + 1) ** JUMP_POWER), hi)
    if not denoised or last <= lo:
        return uniform_log_snr(sde, steps)
    first = lo
    if start_per_level is not None:
        a = check_finite_number("start_per_level", start_per_level, positive=True)
        first = -math.log(a * sd * (steps + 1))
    if steps > 1 and lo < first < last:
        lam = torch.cat(
            [
                torch.tensor([lo], dtype=torch.float64),
                torch.linspace(first, last, steps, dtype=torch.float64),
            ]
        )
    else:
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


def get_schedule(
    sde,
    name: str,
    steps: int,
    *,
    denoise_final: bool = False,
    data_std: float = 1.0,
    **kwargs,
) -> Tensor:
    """The grid `name` (a key of SCHEDULES) with `steps` steps, float64 (steps+1,), from T to
    t_min; with `denoise_final` (a final denoising step follows), "log_snr_jump" ends above t_min
    at its jump level. `data_std`: the data's RMS std, which "log_snr_jump" scales its levels by
    (`sdegen.models.data_std(model)`); the other grids do not use it."""
    check_choice("schedule", name, SCHEDULES)
    steps = check_int("steps", steps)
    if name == "log_snr_jump":
        kwargs["denoised"], kwargs["data_std"] = denoise_final, data_std
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
