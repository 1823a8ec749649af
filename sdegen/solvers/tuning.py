"""Time grids tuned to a model, two ways: `tune_schedule` places steps by an error estimate from
one pilot run (cheap, for any sampler of a given order); `optimise_schedule` searches the grid
that minimises one sampler's actual error (many trial runs, for that sampler only).

A step of size h from lambda in an order-p exponential integrator has local error about
C h^(p+1) ||d^p x0 / d lambda^p||, x0 the denoiser along the sampling path. For a fixed number of
steps the sum of such errors is smallest, to leading order, when every step carries the same
share (de Boor's equidistribution): the grid density in lambda is proportional to
||d^p x0 / d lambda^p||^(1/(p+1)). `tune_schedule` estimates that derivative on pilot trajectories
of the model itself (its own pilot noise, never the data) and returns the grid; the pilot cost is
reported so that benchmarks can state it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .._utils import check_finite_number, check_int
from ..models.base import data_std
from .counting import CountingModel
from .grid import solve
from .methods import METHODS
from .schedules import check_grid, get_schedule


@dataclass(frozen=True)
class TunedSchedule:
    """A tuned grid and what it cost.

    Attributes:
        ts: float64 times, shape (steps + 1,), from T down to t_min.
        pilot_nfe: network evaluations of the pilot run (on `pilot_batch` samples).
        pilot_batch: number of pilot trajectories.
        density: the grid density (error estimate^(1/(p+1)), floored) on the pilot intervals,
            shape (pilot_steps,), at
        density_log_snr: the intervals' midpoints in log-SNR.
    """

    ts: Tensor
    pilot_nfe: int
    pilot_batch: int
    density: Tensor
    density_log_snr: Tensor


class _Recorder:
    """Pass-through model that keeps every denoiser output."""

    def __init__(self, model) -> None:
        self.model = model
        self.outputs: list[Tensor] = []

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        out = self.model.denoise(x, t)
        self.outputs.append(out)
        return out

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model.score(x, t)

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        return self.model.eps(x, t)


@torch.no_grad()
def tune_schedule(
    model,
    sde,
    shape: tuple[int, ...],
    steps: int,
    *,
    order: int = 2,
    pilot_steps: int = 200,
    floor: float = 1e-3,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> TunedSchedule:
    """A grid from one cheap pilot run, for any sampler of order p: `steps` steps that share its
    estimated local error equally (no search; compare `optimise_schedule`).

    Args:
        model: the score model the grid is for (the grid depends on it).
        sde: its SDE.
        shape: (pilot_batch, *event_shape) of the pilot run, e.g. (256, 2).
        steps: number of steps of the returned grid.
        order: the order p of the sampler the grid is for (1 for DDIM, 2 for DPM-Solver++(2M),
            3 for 3M / UniPC).
        pilot_steps: log-SNR steps of the pilot DPM-Solver++(3M) run (pilot_steps + 1
            evaluations).
        floor: fraction of the largest density added everywhere, so no region is left without
            steps.
        generator: random source of the pilot prior draw (use one independent of evaluation).
    Returns:
        TunedSchedule with the grid `ts` (pass it as `sample(..., schedule=ts)`) and the pilot
        cost.
    """
    steps = check_int("steps", steps, 1)
    order = check_int("order", order, 1)
    pilot_steps = check_int("pilot_steps", pilot_steps, order + 2)
    floor = check_finite_number("floor", floor, positive=True)
    grid = get_schedule(sde, "log_snr", pilot_steps)
    rec = _Recorder(model)
    counted = CountingModel(rec)
    x = sde.prior_sample(tuple(shape), generator=generator, dtype=dtype, device=device)
    solve(METHODS["dpmpp_3m"], counted, sde, x, grid, denoise_final=True)
    x0 = torch.stack([o.to(torch.float64) for o in rec.outputs])  # (pilot_steps + 1, B, *D)
    lam = sde.half_log_snr(grid)
    dlam = float(lam[1] - lam[0])  # the pilot grid is uniform in lambda
    diff = x0
    for _ in range(order):
        diff = (diff[1:] - diff[:-1]) / dlam
    err = diff.flatten(1).pow(2).mean(1).sqrt()  # RMS of the p-th derivative
    # the k-th difference sits at the centre of the points it spans; carry it to the pilot
    # intervals' midpoints (constant beyond the ends)
    centres = lam[:-order] + order * dlam / 2 if order else lam
    mids = lam[:-1] + dlam / 2
    err_mid = torch.from_numpy(np.interp(mids.numpy(), centres.numpy(), err.numpy()))
    # rounding noise of the differences must not shape the grid where x0 does not move
    rounding = 1e-9 * (1.0 + float(x0.abs().max())) / dlam**order
    density = (err_mid + floor * err_mid.max() + rounding).pow(1.0 / (order + 1))
    # cumulative integral of the density over lambda, from lambda(T); invert at equal quantiles
    cum = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(density, 0) * dlam])
    knots = lam
    targets = torch.linspace(0, float(cum[-1]), steps + 1, dtype=torch.float64)
    idx = torch.searchsorted(cum, targets).clamp(1, cum.numel() - 1)
    c0, c1 = cum[idx - 1], cum[idx]
    w = ((targets - c0) / (c1 - c0).clamp_min(1e-300)).clamp(0, 1)
    lam_grid = knots[idx - 1] + w * (knots[idx] - knots[idx - 1])
    ts = sde.t_of_half_log_snr(lam_grid)
    ts[0], ts[-1] = sde.T, sde.t_min
    if not bool((ts[1:] < ts[:-1]).all()):
        raise ValueError(f"the tuned grid with {steps} steps is not strictly decreasing: {ts}")
    return TunedSchedule(
        ts=ts, pilot_nfe=counted.nfe, pilot_batch=shape[0], density=density, density_log_snr=mids
    )


@dataclass(frozen=True)
class OptimisedSchedule:
    """A grid chosen to minimise a sampler's error on pilot trajectories, and its cost.

    Attributes:
        ts: float64 times, shape (steps + 1,), from T down to the time the final denoising
            step jumps from (t_min or above).
        pilot_error: RMS distance of the sampler's pilot outputs to the reference, on this grid.
        start_error: the same on the starting grid.
        pilot_nfe: network evaluations spent (reference solve plus every trial run), each on
            `pilot_batch` samples.
        pilot_batch: number of pilot trajectories.
    """

    ts: Tensor
    pilot_error: float
    start_error: float
    pilot_nfe: int
    pilot_batch: int


@torch.no_grad()
def optimise_schedule(
    model,
    sde,
    shape: tuple[int, ...],
    method: str,
    steps: int,
    *,
    start: Tensor | None = None,
    max_trials: int | None = None,
    reference_tol: float = 1e-6,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    **options,
) -> OptimisedSchedule:
    """A grid searched for one sampler: Nelder-Mead moves `steps` steps until `method` lands
    closest to the exact ODE solution (many trial runs; compare `tune_schedule`).

    Pilot prior draws (from `generator`: keep it independent of any evaluation) are solved once
    to `reference_tol` by the adaptive DPM-Solver-23; the grid points after T, parametrised as
    softmax weights of the log-SNR increments (plus one for the gap left before t_min) so the
    grid stays ordered, are then moved by Nelder-Mead to minimise the RMS distance of the
    method's output (with its final denoising step, which jumps to zero noise from the grid's
    last time, so that time moves too) to that reference. Starts from `start` (default: the
    method's own default grid for `steps`, so the search only improves on it). For
    deterministic methods only.

    Returns:
        OptimisedSchedule; `pilot_nfe` counts every evaluation spent, so tables can state it.
    """
    from scipy.optimize import minimize

    from .sampling import sample

    steps = check_int("steps", steps, 1)
    if method not in METHODS or METHODS[method].kind != "ode" or METHODS[method].nfe is None:
        fixed = [k for k, m in METHODS.items() if m.kind == "ode" and m.nfe is not None]
        raise ValueError(
            f"method must be a deterministic fixed-grid sampler ({', '.join(fixed)}), "
            f"got {method!r}"
        )
    reference_tol = check_finite_number("reference_tol", reference_tol, positive=True)
    if max_trials is not None:
        max_trials = check_int("max_trials", max_trials)
    if start is not None:
        start = check_grid(sde, start, denoise_final=True)
        if len(start) != steps + 1:
            raise ValueError(
                f"start must be a grid of steps + 1 = {steps + 1} times, got {len(start)}"
            )
    shape = tuple(shape)
    counted = CountingModel(model)
    noise = sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    ref = sample(
        counted, sde, shape, method="dpm_adaptive", noise=noise, rtol=reference_tol,
        atol=reference_tol,
    ).x  # fmt: skip
    if start is None:
        start = METHODS[method].grid(sde, steps, data_std=data_std(model))
    lam0, lam1 = sde.half_log_snr_range()
    lam_start = sde.half_log_snr(start.to(torch.float64))
    # n increments and the gap before t_min (kept positive so the last time can move either way)
    gaps = torch.cat([torch.diff(lam_start), (lam1 - lam_start[-1:]).clamp_min(1e-3)])
    theta0 = torch.log(gaps / gaps.sum()).numpy()

    def grid(theta) -> Tensor:
        w = torch.softmax(torch.as_tensor(theta, dtype=torch.float64), 0)[:-1]
        lam = lam0 + (lam1 - lam0) * torch.cat([torch.zeros(1, dtype=torch.float64), w.cumsum(0)])
        ts = sde.t_of_half_log_snr(lam.clamp(lam0, lam1)).clamp_min(sde.t_min)
        ts[0] = sde.T
        return ts

    def error(theta) -> float:
        ts = grid(theta)
        if not bool((ts[1:] < ts[:-1]).all()):
            return float("inf")
        x = sample(counted, sde, shape, method=method, schedule=ts, noise=noise, **options).x
        e = float((x - ref).flatten(1).pow(2).sum(1).mean().sqrt())
        return e if math.isfinite(e) else float("inf")

    start_error = error(theta0)
    if steps == 1:
        return OptimisedSchedule(grid(theta0), start_error, start_error, counted.nfe, shape[0])
    trials = max_trials if max_trials is not None else 60 * steps
    res = minimize(
        error, theta0, method="Nelder-Mead",
        options={"maxfev": trials, "xatol": 1e-3, "fatol": 1e-6, "adaptive": True},
    )  # fmt: skip
    best = res.x if res.fun < start_error else theta0
    return OptimisedSchedule(
        grid(best), min(float(res.fun), start_error), start_error, counted.nfe, shape[0]
    )
