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

import torchdiffeq
from torch import Tensor

from .._ode import landing_options
from .._utils import append_dims, check_finite_number
from .grid import GridMethod, Record, batch_t, score_to_x0

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
    """The step times are 0-dim tensors in x's dtype, as torchdiffeq has them, but kept on the
    CPU (the grid is a CPU float64 tensor): reading one back as a float for the model's (B,)
    time then never waits for an accelerator, and a CPU 0-dim dt scales x on any device."""

    def __init__(self, model, sde, ts: Tensor) -> None:
        super().__init__(model, sde, ts)
        self.t_x: Tensor | None = None  # the grid in x's dtype, on the CPU

    def t_batch(self, t: Tensor, x: Tensor) -> Tensor:
        """A 0-dim CPU time t, kept inside [t_min, T] as `integrate` does, as (B,) for x."""
        return batch_t(float(t.clamp(self.sde.t_min, self.sde.T)), x)

    def velocity(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(velocity, score) at a 0-dim CPU time t."""
        return _velocity(self.model, self.sde, x, self.t_batch(t, x))

    def times(self, i: int, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """t0, dt = t1 - t0 and t1 as 0-dim CPU tensors in x's dtype, as torchdiffeq steps
        them."""
        if self.t_x is None:
            self.t_x = self.ts.to(x.dtype)
        t0, t1 = self.t_x[i], self.t_x[i + 1]
        return t0, t1 - t0, t1


class Euler(_PFODEStep):
    """Euler on the PF-ODE; one evaluation per step."""

    def step(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        t0, dt, _ = self.times(i, x)
        tb = self.t_batch(t0, x)  # once for the velocity and the x0 estimate
        k1, score = _velocity(self.model, self.sde, x, tb)
        return x + dt * k1, score_to_x0(self.sde, score, x, tb)


class RK4(_PFODEStep):
    """Classical RK4 by the 3/8 rule (torchdiffeq's "rk4"); four evaluations per step."""

    def step(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        t0, dt, t1 = self.times(i, x)
        tb = self.t_batch(t0, x)  # once for k1 and the x0 estimate
        k1, score = _velocity(self.model, self.sde, x, tb)
        k2 = self.velocity(t0 + dt * (1 / 3), x + dt * k1 * (1 / 3))[0]
        k3 = self.velocity(t0 + dt * (2 / 3), x + dt * (k2 - k1 * (1 / 3)))[0]
        k4 = self.velocity(t1, x + dt * (k1 - k2 + k3))[0]
        return x + (k1 + 3 * (k2 + k3) + k4) * dt * 0.125, score_to_x0(self.sde, score, x, tb)


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
