"""The probability-flow ODE in t: fixed-grid Euler and RK4, and adaptive Dormand-Prince through
torchdiffeq.

The probability-flow ODE (Song et al. 2021, eq. 13) is dx/dt = f(t) x - g(t)^2 score(x, t) / 2;
it shares the SDE's marginals, so integrating it from the prior at T to t_min draws samples.
Euler and RK4 are torchdiffeq's steps (times in x's dtype, as torchdiffeq casts them), with the
velocity written through the denoiser D: A(t) x + B(t) D(x, t), the same field by Tweedie's
formula, with A and B (times the step size) computed once per solve (`_PFODEStep`). For a
model that predicts x0 a denoiser call costs about half a score call (the score is its x0
converted to eps and then to score), so the per-step overhead is k-diffusion's (issue 13).
The results therefore agree with `torchdiffeq.odeint` of `ode_drift` (the velocity through
`model.score`) to rounding, not to the bit: within 1e-12 relative in float64
(tests/test_pf_ode.py). `ode_drift` itself, which the likelihood and the adaptive `dopri5`
use, is unchanged.
"""

from __future__ import annotations

import torch
import torchdiffeq
from torch import Tensor

from .._ode import landing_options
from .._utils import append_dims, check_tolerances
from .exp_quadrature import TimeRows
from .grid import X0, GridMethod, Record, batch_t

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
    """A step on the velocity written through the denoiser,

        f x - (g^2 / 2) score = A x + B D(x, t),   A = f + c,  B = -c alpha,  c = g^2 / (2 sigma^2),

    which is the PF-ODE by Tweedie's formula score = (alpha D - x) / sigma^2 (D = E[x0 | x_t],
    `model.denoise`, the one model call every other fixed-grid method makes). Where f = 0 and
    alpha = 1 at every time (VE, EDM) it is c (x - D): k-diffusion's d = (x - D) / sigma on
    EDM, where c = 1 / t. A step works with increments dt times the velocity, so A, B and c are
    kept multiplied by the step's dt. Times and dt are in x's dtype, as torchdiffeq casts them,
    and the model's time is kept inside [t_min, T] as `integrate` does. Everything that
    depends on the grid alone (the (B,) time rows, dt A, dt B or dt c at every evaluation) is
    computed once per solve, vectorised over the grid on the CPU in float64 from the times in
    x's dtype (no device read): an increment is the model's call and two or three tensor
    operations."""

    stages: tuple[float, ...] = ()  # fractions of a step where it evaluates besides its ends

    def coefficients(self, t: Tensor) -> dict[str, Tensor]:
        sde, t0, dt = self.sde, t[:-1], t[1:] - t[:-1]
        times = {"start": t0, "end": t[1:]}
        times.update({f"stage{j}": t0 + dt * frac for j, frac in enumerate(self.stages)})
        dt64, out, parts = dt.to(torch.float64), {}, {}
        self.rows = {}
        for name, tt in times.items():
            tc = tt.clamp(sde.t_min, sde.T)  # the model's times, in x's dtype
            self.rows[name] = TimeRows(tc.tolist())
            t64 = tc.to(torch.float64)
            f, alpha = sde.f(t64), sde.alpha(t64)
            parts[name] = (f, alpha, dt64 * sde.g2(t64) / (2 * sde.sigma(t64) ** 2))
        # f = 0 and alpha = 1 at every time (VE, EDM): the increment is dt c (x - D)
        self.unit = all(bool((f == 0).all() and (a == 1).all()) for f, a, _ in parts.values())
        for name, (f, alpha, c) in parts.items():
            if self.unit:
                out[f"c_{name}"] = c.to(t.dtype)
            else:
                out[f"A_{name}"] = (dt64 * f + c).to(t.dtype)
                out[f"B_{name}"] = (-(c * alpha)).to(t.dtype)
        return out

    def increment(self, c: dict, at: str, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        """(dt (A x + B D), D) at step i's time `at`: dt times the PF-ODE velocity
        f x - g^2 score / 2, and the denoiser's x0 estimate D, each (B, *D)."""
        x0 = self.model.denoise(x, self.rows[at](i, x))
        if self.unit:
            return c[f"c_{at}"][i] * (x - x0), x0
        return c[f"A_{at}"][i] * x + c[f"B_{at}"][i] * x0, x0


class Euler(_PFODEStep):
    """Euler on the PF-ODE, x + dt v(x, t); one evaluation per step."""

    def step(self, i: int, x: Tensor) -> tuple[Tensor, X0]:
        k1, x0 = self.increment(self.coefs(x), "start", i, x)
        return x + k1, x0


class RK4(_PFODEStep):
    """Classical RK4 by the 3/8 rule (torchdiffeq's "rk4"; Kutta 1901); four evaluations per
    step. With increments K = dt v: K1 at (x, t), K2 at (x + K1/3, t + dt/3),
    K3 at (x + K2 - K1/3, t + 2dt/3), K4 at (x + K1 - K2 + K3, t + dt), and
    x + (K1 + 3 (K2 + K3) + K4) / 8."""

    stages = (1 / 3, 2 / 3)

    def step(self, i: int, x: Tensor) -> tuple[Tensor, X0]:
        c = self.coefs(x)
        k1, x0 = self.increment(c, "start", i, x)
        k1_3 = k1 * c["third"][i]
        k2 = self.increment(c, "stage0", i, x + k1_3)[0]
        k3 = self.increment(c, "stage1", i, x + (k2 - k1_3))[0]
        k4 = self.increment(c, "end", i, x + (k1 - k2 + k3))[0]
        return x + (k1 + c["three"][i] * (k2 + k3) + k4) * c["eighth"][i], x0

    def coefficients(self, t: Tensor) -> dict[str, Tensor]:
        ones = torch.ones(len(t) - 1, dtype=t.dtype)
        # the rule's constants as 0-dim tensors in x's dtype (a Python float costs a new tensor)
        return {**super().coefficients(t), "third": ones * (1 / 3), "three": ones * 3,
                "eighth": ones * 0.125}  # fmt: skip


def dopri5(
    model, sde, x: Tensor, ts: Tensor, *, rtol: float, atol: float, record: Record = None
) -> Tensor:
    """Adaptive Dormand-Prince 5(4) through torchdiffeq from x (B, *D) at T to t_min; returns x
    there. Rejected steps count; only the end state is recorded."""
    rtol, atol = check_tolerances(rtol, atol, x.dtype)

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
