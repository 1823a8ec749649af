"""Probability-flow ODE samplers: torchdiffeq (adaptive and fixed-grid) and EDM's Heun.

The probability-flow ODE (Song et al. 2021, eq. 13) is dx/dt = f(t) x - g(t)^2 score(x, t) / 2;
it shares the SDE's marginals, so integrating it from the prior at T to t_min draws samples.
"""

from __future__ import annotations

import torchdiffeq
from torch import Tensor

from .._ode import landing_options
from .._utils import append_dims, check_finite_number
from .reverse_sde import Record, batch_t


def ode_drift(model, sde, x: Tensor, t: Tensor) -> Tensor:
    """The probability-flow velocity f x - g^2 score / 2; x (B, *D), t (B,) -> (B, *D)."""
    return sde.drift(x, t) - 0.5 * append_dims(sde.g2(t), x.ndim) * model.score(x, t)


def integrate(func, y0, ts: Tensor, sde, *, method: str, options: dict | None = None, **kwargs):
    """torchdiffeq.odeint of func(t, y) over ts, kept inside [t_min, T].

    torchdiffeq's adaptive solvers probe t0 + h0 when choosing the first step and step past the
    final time before interpolating; the model must never see a time outside [t_min, T]. So an
    adaptive step is made to land on the final time (option step_t) and the probes are clamped.
    """
    lo, hi = sde.t_min, sde.T

    def clamped(t: Tensor, y):
        return func(t.clamp(lo, hi), y)

    options = landing_options(method, ts, options)
    return torchdiffeq.odeint(clamped, y0, ts, method=method, options=options or None, **kwargs)


def _torchdiffeq(
    model, sde, x: Tensor, ts: Tensor, method: str, record: Record, **kwargs
) -> Tensor:
    def func(t: Tensor, y: Tensor) -> Tensor:
        return ode_drift(model, sde, y, batch_t(float(t), y))

    ys = integrate(func, x, ts.to(x.dtype).to(x.device), sde, method=method, **kwargs)
    if record:
        for y in ys[1:]:
            record(y)
    return ys[-1]


def dopri5(
    model,
    sde,
    x: Tensor,
    ts: Tensor,
    *,
    rtol: float = 1e-5,
    atol: float = 1e-5,
    record: Record = None,
) -> Tensor:
    """Adaptive Dormand-Prince 5(4) through torchdiffeq from T to t_min (rejected steps count)."""
    rtol = check_finite_number("rtol", rtol, positive=True)
    atol = check_finite_number("atol", atol, positive=True)
    return _torchdiffeq(model, sde, x, ts[[0, -1]], "dopri5", record, rtol=rtol, atol=atol)


def euler(model, sde, x: Tensor, ts: Tensor, *, record: Record = None) -> Tensor:
    """Fixed-grid Euler through torchdiffeq on the given grid; one evaluation per step."""
    return _torchdiffeq(model, sde, x, ts, "euler", record)


def rk4(model, sde, x: Tensor, ts: Tensor, *, record: Record = None) -> Tensor:
    """Fixed-grid classical RK4 (3/8 rule) through torchdiffeq; four evaluations per step."""
    return _torchdiffeq(model, sde, x, ts, "rk4", record)


def heun(model, sde, x: Tensor, ts: Tensor, *, record: Record = None) -> Tensor:
    """Heun's second-order method in EDM's variables (Karras et al. 2022, Algorithm 1).

    With x~ = x / alpha and sigma~ = sigma / alpha = exp(-lambda), the PF-ODE of every linear SDE
    is dx~/dsigma~ = (x~ - D(x, t)) / sigma~, D the denoiser: nearly linear in sigma~, so few
    steps go far (integrating in t instead overshoots on VE: one step across a 10x drop in sigma
    multiplies x - D by 1 - ln 10). The last step is a plain Euler step, as in EDM, so N steps
    cost 2N - 1 evaluations; Euler in these variables is exactly DDIM.
    """
    alpha = sde.alpha(ts).tolist()
    sig = (sde.sigma(ts) / sde.alpha(ts)).tolist()
    n = len(ts) - 1
    for i in range(n):
        d = (x / alpha[i] - model.denoise(x, batch_t(ts[i].item(), x))) / sig[i]
        x_next = x / alpha[i] + (sig[i + 1] - sig[i]) * d  # in x~
        if i < n - 1:
            x_e = alpha[i + 1] * x_next
            d_next = (x_next - model.denoise(x_e, batch_t(ts[i + 1].item(), x))) / sig[i + 1]
            x_next = x / alpha[i] + (sig[i + 1] - sig[i]) * 0.5 * (d + d_next)
        x = alpha[i + 1] * x_next
        if record:
            record(x)
    return x
