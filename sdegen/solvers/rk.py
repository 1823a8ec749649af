"""Adaptive embedded Runge-Kutta pairs for states that are tuples of tensors (the likelihood
ODE: the state and its log-density increment), with even landing steps and no evaluation outside
the interval.

An embedded pair (Hairer, Norsett & Wanner, "Solving ODEs I", Sec. II.4) advances
y1 = y0 + h sum_i b_i k_i and estimates the local error by h sum_i e_i k_i (e = b - b_hat, b_hat
the weights of the embedded lower-order solution). A step is accepted when the scaled error
    E = max over the tuple's tensors i of w_i RMS(err_i / (atol + rtol max(|y0_i|, |y1_i|)))
is <= 1 (torchdiffeq's mixed norm when every weight w_i is 1). The next step is
h * clip(safety E^-beta1 E_prev^beta2, fac_min, fac_max): the classical controller with
beta = (1/k, 0), k the order of the error estimate's leading term, or a PI controller
(Gustafsson 1991; Hairer & Wanner, "Solving ODEs II", Sec. IV.2) with beta2 > 0. After a
rejection the step does not grow. The first step is Hairer's estimate from f(t0, y0) and one
explicit-Euler probe (one more evaluation, kept inside the interval), or `h0` when given (a
number, or a function of the first slope: a step read off the field at no extra evaluation). The
remaining interval is always cut into equal steps no longer than the controller's h, so the
solve ends on t1 without a short landing step (torchdiffeq's step_t forces one) and without a
stage past t1 (which torchdiffeq evaluates before interpolating back).

Times are Python floats, so an evaluation never reads a time back from an accelerator; the one
host sync per step is the error norm the controller needs.

Pairs: "dopri5" (Dormand & Prince 1980, 5(4), 7 stages, first same as last: 6 evaluations a
step), "tsit5" (Tsitouras 2011, "Runge-Kutta pairs of order 5(4) satisfying only the first
column simplifying assumption", Comput. Math. Appl. 62, Table 1; also 6 a step) and "bs3"
(Bogacki & Shampine 1989, "A 3(2) pair of Runge-Kutta formulas", Appl. Math. Lett. 2(4),
321-325: 4 stages, first same as last, 3 evaluations a step), which is cheaper where the
tolerance is loose (few steps are taken, and a step costs half of a 5(4) pair's).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._utils import check_choice, check_finite_number, check_int

State = tuple[Tensor, ...]
Field = Callable[[float, State], State]


@dataclass(frozen=True)
class Tableau:
    """An explicit embedded pair. c: nodes (s,); a: rows of the lower-triangular matrix, row i
    of length i; b: weights of the propagated solution (s,); e: b - b_hat (s,), the error
    weights; order: the order of the propagated solution (the error estimate is O(h^order)).
    Every pair here is first-same-as-last: c[-1] = 1 and the last row of a is b[:-1], so the
    last stage is f(t + h, y1), the next step's first."""

    name: str
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    e: tuple[float, ...]
    order: int


DOPRI5 = Tableau(
    name="dopri5",
    c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=(
        (),
        (1 / 5,),
        (3 / 40, 9 / 40),
        (44 / 45, -56 / 15, 32 / 9),
        (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
        (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
        (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
    ),
    b=(35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0),
    e=(
        35 / 384 - 5179 / 57600,
        0.0,
        500 / 1113 - 7571 / 16695,
        125 / 192 - 393 / 640,
        -2187 / 6784 + 92097 / 339200,
        11 / 84 - 187 / 2100,
        -1 / 40,
    ),
    order=5,
)

_TS_B = (
    0.09646076681806523,
    0.01,
    0.4798896504144996,
    1.379008574103742,
    -3.290069515436081,
    2.324710524099774,
)
TSIT5 = Tableau(
    name="tsit5",
    c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (
            5.86145544294642,
            -12.92096931784711,
            8.159367898576159,
            -0.071584973281401,
            -0.028269050394068383,
        ),
        _TS_B,
    ),
    b=(*_TS_B, 0.0),
    e=(
        -0.00178001105222577714,
        -0.0008164344596567469,
        0.007880878010261995,
        -0.1447110071732629,
        0.5823571654525552,
        -0.45808210592918697,
        1 / 66,
    ),
    order=5,
)


# Bogacki & Shampine (1989): the order-3 solution b and the embedded order-2 b_hat
BS3 = Tableau(
    name="bs3",
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    e=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
    order=3,
)


TABLEAUS = {t.name: t for t in (DOPRI5, TSIT5, BS3)}


@dataclass
class RKStats:
    """What a solve did: accepted and rejected steps, field evaluations (every stage, the
    initial-step probe and rejected steps included), and the accepted step sizes."""

    accepted: int = 0
    rejected: int = 0
    evaluations: int = 0
    steps: list[float] = field(default_factory=list)


def _combine(y: State, h: float, coeffs: Sequence[float], ks: list[State]) -> State:
    """y + h sum_j coeffs[j] ks[j], per tensor of the tuple (zero coefficients skipped)."""
    out = []
    for i, yi in enumerate(y):
        acc = yi
        for cj, k in zip(coeffs, ks):
            if cj != 0.0:
                acc = acc + (h * cj) * k[i]
        out.append(acc)
    return tuple(out)


def step(
    func: Field,
    tab: Tableau,
    t: float,
    y: State,
    k1: State,
    h: float,
    t_end: float | None = None,
) -> tuple[State, State, State]:
    """One step of the pair `tab` from (t, y) with k1 = func(t, y) and signed step h:
    (y1, the error estimate h sum_i e_i k_i, func(t + h, y1)); len(tab.c) - 1 evaluations.
    t_end, when given, is the time used for the stages at c = 1 (the interval's end, exactly)."""
    ks, y_stage = [k1], y
    for i in range(1, len(tab.c)):
        ti = t_end if (t_end is not None and tab.c[i] == 1.0) else t + tab.c[i] * h
        y_stage = _combine(y, h, tab.a[i], ks)
        ks.append(func(ti, y_stage))
    # first same as last: the last stage's state is the solution, its slope the next k1
    err = _combine(tuple(torch.zeros_like(v) for v in y), h, tab.e, ks)
    return y_stage, err, ks[-1]


def error_norm(
    err: State, y0: State, y1: State, rtol: float, atol: float, weights: Sequence[float]
) -> float:
    """max_i weights[i] RMS(err_i / (atol + rtol max(|y0_i|, |y1_i|))) as a float (one host
    sync), over the tensors i of the state tuple; a weight 0 leaves a tensor out."""
    parts = []
    for w, e, a, b in zip(weights, err, y0, y1):
        if w == 0:
            continue
        e, a, b = e.detach(), a.detach(), b.detach()  # step control, never differentiated
        scale = atol + rtol * torch.maximum(a.abs(), b.abs())
        parts.append(w * ((e / scale) ** 2).mean().sqrt().to(torch.float64))
    return float(torch.stack(parts).max()) if parts else 0.0  # one read-back


def initial_step(
    func: Field, t0: float, y0: State, f0: State, direction: float, order: int, norm, span: float
) -> float:
    """Hairer, Norsett & Wanner's starting step (Sec. II.4) from f0 = f(t0, y0) and one probe
    f(t0 + h, y0 + h f0): one evaluation. norm(v) is the scaled RMS of a state-shaped tuple."""
    d0, d1 = norm(y0), norm(f0)
    h = 1e-6 * span if d0 < 1e-5 or d1 < 1e-5 else min(0.01 * d0 / d1, span)
    f1 = func(t0 + direction * h, _combine(y0, direction * h, (1.0,), [f0]))
    d2 = norm(tuple(a - b for a, b in zip(f1, f0))) / h
    if max(d1, d2) <= 1e-15:
        h1 = max(1e-6 * span, h * 1e-3)
    else:
        h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h, h1)


def check_controller(
    safety: float, fac_min: float = 0.2, fac_max: float = 10.0
) -> tuple[float, float, float]:
    """A step-size controller's (safety, fac_min, fac_max) as floats: 0 < safety <= 1 and
    0 < fac_min < 1 <= fac_max, else ValueError naming the value. A safety above 1 can grow the
    step after a rejection, so the solve retries the same step forever."""
    safety = check_finite_number("safety", safety, positive=True)
    if safety > 1:
        raise ValueError(f"safety must be in (0, 1] (the step's shrink factor), got {safety!r}")
    fac_min = check_finite_number("fac_min", fac_min, positive=True)
    fac_max = check_finite_number("fac_max", fac_max, positive=True)
    if not fac_min < 1 <= fac_max:
        raise ValueError(
            f"fac_min and fac_max must satisfy 0 < fac_min < 1 <= fac_max (the least and most a "
            f"step may change by), got fac_min={fac_min!r}, fac_max={fac_max!r}"
        )
    return safety, fac_min, fac_max


def solve(
    func: Field,
    y0: State,
    t0: float,
    t1: float,
    *,
    rtol: float,
    atol: float,
    method: str = "dopri5",
    weights: Sequence[float] | None = None,
    h0: float | Callable[[State], float] | None = None,
    safety: float = 0.9,
    beta: tuple[float, float] | None = None,
    fac_min: float = 0.2,
    fac_max: float = 10.0,
    max_steps: int = 100_000,
) -> tuple[State, RKStats]:
    """Integrate dy/dt = func(t, y) from t0 to t1 (either direction) with an embedded pair.

    Args:
        func: (t: float, y: tuple of tensors) -> tuple of tensors of the same shapes.
        y0: the state at t0, a tuple of tensors.
        t0, t1: the ends of the interval (floats); the field is evaluated only inside it.
        rtol, atol: finite and > 0; the step is accepted when the scaled error is <= 1.
        method: a pair of TABLEAUS ("dopri5", "tsit5", "bs3").
        weights: per tensor of the state, how much its error counts (default 1 each; 0 leaves
            a tensor out of the control).
        h0: the first step's size (> 0); a function of the first slope f(t0, y0) returning it
            (a step read off the field at no extra evaluation); or None for Hairer's estimate
            (one more evaluation).
        safety, beta, fac_min, fac_max: the controller h_new = h * clip(safety *
            E^-beta[0] * E_prev^beta[1], fac_min, fac_max); beta None for (1/k, 0), k the
            order of the pair (Hairer & Wanner's PI values are (0.7/k, 0.4/k); measured no
            better on the likelihood ODE, benchmarks/likelihood_speed.py).
        max_steps: accepted plus rejected steps before RuntimeError.
    Returns:
        (the state at t1, RKStats).
    Raises:
        ValueError naming the argument for an unknown method, a tolerance not finite and > 0,
        t0 == t1, or a weight list of the wrong length; RuntimeError when max_steps is reached
        or the step underflows (a non-finite field).
    """
    tab = TABLEAUS[check_choice("method", method, TABLEAUS)]
    rtol = check_finite_number("rtol", rtol, positive=True)
    atol = check_finite_number("atol", atol, positive=True)
    t0 = check_finite_number("t0", t0)
    t1 = check_finite_number("t1", t1)
    max_steps = check_int("max_steps", max_steps)
    safety, fac_min, fac_max = check_controller(safety, fac_min, fac_max)
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
    weights = tuple(weights) if weights is not None else (1.0,) * len(y0)
    if len(weights) != len(y0):
        raise ValueError(
            f"weights must have one entry per state tensor ({len(y0)}), got {len(weights)}"
        )
    direction = 1.0 if t1 > t0 else -1.0
    if beta is None:
        beta = (1.0 / tab.order, 0.0)
    if not isinstance(beta, (tuple, list)) or len(beta) != 2:
        raise TypeError(f"beta must be a pair (beta1, beta2) of numbers >= 0, got {beta!r}")
    beta = (
        check_finite_number("beta[0]", beta[0], nonnegative=True),
        check_finite_number("beta[1]", beta[1], nonnegative=True),
    )
    span = abs(t1 - t0)
    stats = RKStats()

    def f(t: float, y: State) -> State:
        stats.evaluations += 1
        return tuple(func(t, y))

    def scaled(v: State) -> float:
        return error_norm(v, y0, y0, rtol, atol, weights) if v else 0.0

    t, y = t0, tuple(y0)
    k1 = f(t, y)
    if h0 is None:
        h = initial_step(f, t0, y, k1, direction, tab.order, scaled, span)
    else:
        h = check_finite_number("h0", h0(k1) if callable(h0) else h0, positive=True)
    h = min(h, span)
    err_prev, rejected_last = 1e-4, False
    steps_done = 0
    while direction * (t1 - t) > 0:
        if steps_done >= max_steps:
            raise RuntimeError(f"rk.solve: max_steps = {max_steps} reached at t = {t}")
        steps_done += 1
        remaining = direction * (t1 - t)
        # spread the rest evenly over as many steps of size <= h as it needs
        n_left = max(1, math.ceil(remaining / h - 1e-9))
        h_step = remaining / n_left
        last = n_left == 1
        hs = direction * h_step
        y_new, err, k_last = step(f, tab, t, y, k1, hs, t1 if last else None)
        e = error_norm(err, y, y_new, rtol, atol, weights)
        if e <= 1.0:
            t = t1 if last else t + hs
            y = y_new
            k1 = k_last
            stats.accepted += 1
            stats.steps.append(h_step)
            fac = safety * max(e, 1e-10) ** (-beta[0]) * err_prev ** beta[1]
            fac = min(fac_max if not rejected_last else 1.0, max(fac_min, fac))
            h = h_step * fac
            err_prev, rejected_last = max(e, 1e-4), False
        else:  # rejected (a NaN or inf error too): shrink and retry from the same t
            stats.rejected += 1
            fac = safety * e ** (-1.0 / tab.order) if math.isfinite(e) else fac_min
            h = h_step * max(fac_min, fac)
            rejected_last = True
            if h < 1e-12 * span:
                raise RuntimeError(
                    f"rk.solve: the step size underflowed at t = {t} (error {e}: a non-finite "
                    "or non-smooth field)"
                )
    return y, stats


__all__ = [
    "Tableau",
    "DOPRI5",
    "TSIT5",
    "BS3",
    "TABLEAUS",
    "RKStats",
    "solve",
    "step",
    "error_norm",
]
