"""The probability-flow ODE in t: fixed-grid Euler and RK4, and adaptive Dormand-Prince through
torchdiffeq.

The probability-flow ODE (Song et al. 2021, eq. 13) is dx/dt = f(t) x - g(t)^2 score(x, t) / 2;
it shares the SDE's marginals, so integrating it from the prior at T to t_min draws samples.
Euler and RK4 are torchdiffeq's own steps written out, so they agree with `torchdiffeq.odeint`
to the bit: times are in x's dtype, as torchdiffeq casts them, and every sum is taken in its
order (torchdiffeq negates time to integrate forward; IEEE rounding is symmetric in sign, so
that changes nothing).
"""

from __future__ import annotations

import torch
import torchdiffeq
from torch import Tensor

from .._ode import landing_options
from .._utils import append_dims, check_finite_number
from .exp_quadrature import TimeRows
from .grid import X0, GridMethod, Record, batch_t, deferred_x0

__all__ = ["ode_drift", "integrate", "Euler", "RK4", "dopri5"]


def _velocity(model, sde, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    score = model.score(x, t)
    return sde.drift(x, t) - 0.5 * append_dims(sde.g2(t), x.ndim) * score, score


def ode_drift(model, sde, x: Tensor, t: Tensor) -> Tensor:
    """The probability-flow velocity f x - g^2 score / 2; x (B, *D), t (B,) -> (B, *D)."""
    return _velocity(model, sde, x, t)[0]


def integrate(
    func,
    y0,
    ts: Tensor,
    sde,
    *,
    method: str,
    options: dict | None = None,
    bounds: tuple[float, float] | None = None,
    **kwargs,
):
    """torchdiffeq.odeint of func(t, y) over ts, kept inside [t_min, T] (or `bounds`).

    torchdiffeq's adaptive solvers probe t0 + h0 when choosing the first step and step past the
    final time before interpolating; the model must never see a time outside [t_min, T]. So an
    adaptive step is made to land on the final time (option step_t) and the probes are clamped.
    bounds: (lo, hi) of the integration variable when it is not t (for example the angle of
    `log_likelihood`); None for (sde.t_min, sde.T).
    """
    lo, hi = (sde.t_min, sde.T) if bounds is None else bounds

    def clamped(t: Tensor, y):
        return func(t.clamp(lo, hi), y)

    options = landing_options(method, ts, options)
    return torchdiffeq.odeint(clamped, y0, ts, method=method, options=options or None, **kwargs)


class _PFODEStep(GridMethod):
    """A step in torchdiffeq's arithmetic: times and dt in x's dtype, the model's time kept
    inside [t_min, T] as `integrate` does. Everything that depends on the grid alone (the
    times of the step's evaluations as (B,) rows, dt, f and -g^2/2 there) is computed once per
    solve, vectorised over the grid in x's dtype on the CPU (no device read), so that a
    velocity is the model's call and one or three tensor operations."""

    stages: tuple[float, ...] = ()  # fractions of a step where it evaluates besides its ends

    def coefficients(self, t: Tensor) -> dict[str, Tensor]:
        sde, t0, dt = self.sde, t[:-1], t[1:] - t[:-1]
        times = {"start": t0, "end": t[1:]}
        times.update({f"stage{j}": t0 + dt * frac for j, frac in enumerate(self.stages)})
        out, self.rows = {"dt": dt}, {}
        for name, tt in times.items():
            tc = tt.clamp(sde.t_min, sde.T)
            out[f"f_{name}"], out[f"nhg2_{name}"] = sde.f(tc), -(0.5 * sde.g2(tc))
            self.rows[name] = TimeRows(tc.tolist())
        # f = 0 at every time (VE, EDM): f x adds nothing
        self.f_zero = not any(bool((out[f"f_{name}"] != 0).any()) for name in times)
        return out

    def velocity(self, c: dict, at: str, i: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(f x - g^2/2 score, score, the (B,) time) at step i's time `at`: f x + (-g^2/2)
        score, which is f x - (g^2/2) score to the bit."""
        tb = self.rows[at](i, x)
        score = self.model.score(x, tb)
        k = c[f"nhg2_{at}"][i] * score
        return (k if self.f_zero else c[f"f_{at}"][i] * x + k), score, tb


class Euler(_PFODEStep):
    """Euler on the PF-ODE; one evaluation per step."""

    def step(self, i: int, x: Tensor) -> tuple[Tensor, X0]:
        c = self.coefs(x)
        k1, score, tb = self.velocity(c, "start", i, x)
        return x + c["dt"][i] * k1, deferred_x0(self.sde, score, x, tb)


class RK4(_PFODEStep):
    """Classical RK4 by the 3/8 rule (torchdiffeq's "rk4"); four evaluations per step."""

    stages = (1 / 3, 2 / 3)

    def step(self, i: int, x: Tensor) -> tuple[Tensor, X0]:
        c = self.coefs(x)
        dt = c["dt"][i]
        third = c["third"][i]
        k1, score, tb = self.velocity(c, "start", i, x)
        k2 = self.velocity(c, "stage0", i, x + dt * k1 * third)[0]
        k3 = self.velocity(c, "stage1", i, x + dt * (k2 - k1 * third))[0]
        k4 = self.velocity(c, "end", i, x + dt * (k1 - k2 + k3))[0]
        out = x + (k1 + c["three"][i] * (k2 + k3) + k4) * dt * c["eighth"][i]
        return out, deferred_x0(self.sde, score, x, tb)

    def coefficients(self, t: Tensor) -> dict[str, Tensor]:
        ones = torch.ones(len(t) - 1, dtype=t.dtype)
        # the Python constants of torchdiffeq's rk4 step, in x's dtype
        return {**super().coefficients(t), "third": ones * (1 / 3), "three": ones * 3,
                "eighth": ones * 0.125}  # fmt: skip


def dopri5(
    model, sde, x: Tensor, ts: Tensor, *, rtol: float, atol: float, record: Record = None
) -> Tensor:
    """Adaptive Dormand-Prince 5(4) through torchdiffeq from x (B, *D) at T to t_min; returns x
    there. Rejected steps count; only the end state is recorded."""
    rtol = check_finite_number("rtol", rtol, positive=True)
    atol = check_finite_number("atol", atol, positive=True)

    def func(t: Tensor, y: Tensor) -> Tensor:
        return ode_drift(model, sde, y, batch_t(float(t), y))

    ys = integrate(
        func, x, ts[[0, -1]].to(x.dtype).to(x.device), sde, method="dopri5", rtol=rtol, atol=atol
    )
    if record is not None:
        for y in ys[1:]:
            record(y)
    return ys[-1]


def __getattr__(name: str):
    # the function forms these methods had before the one loop (deprecated)
    from ._deprecated import legacy

    return legacy(__name__, name)
