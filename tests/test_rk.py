"""sdegen.solvers.rk, the adaptive embedded Runge-Kutta pairs: order conditions of the tableaus,
closed-form linear ODEs, the empirical order of the solution and of the error estimate,
agreement with torchdiffeq, the step logic (landing, direction, counting) and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq
from hypothesis import given, settings
from hypothesis import strategies as st

from sdegen.solvers import rk

PAIRS = sorted(rk.TABLEAUS)


@pytest.mark.parametrize("name", PAIRS)
def test_tableaus_satisfy_the_order_conditions(name):
    # the quadrature conditions sum b c^(q-1) = 1/q up to the pair's order p for b, up to p - 1
    # for the embedded b_hat = b - e, the row-sum condition sum_j a_ij = c_i, the order-3 tree
    # condition and, for p >= 4, two order-4 ones, and first-same-as-last
    tab = rk.TABLEAUS[name]
    p = tab.order
    c = torch.tensor(tab.c)
    A = torch.zeros(len(c), len(c))
    for i, row in enumerate(tab.a):
        A[i, : len(row)] = torch.tensor(row) if row else 0.0
    b, e = torch.tensor(tab.b), torch.tensor(tab.e)
    torch.testing.assert_close(A.sum(1), c, rtol=0, atol=1e-14)
    for q in range(1, p + 1):
        assert float(b @ c ** (q - 1)) == pytest.approx(1 / q, abs=1e-14), q
    for q in range(1, p):
        assert float((b - e) @ c ** (q - 1)) == pytest.approx(1 / q, abs=1e-14), q
    assert float(b @ (A @ c)) == pytest.approx(1 / 6, abs=1e-14)
    if p >= 4:
        assert float(b @ (A @ (A @ c))) == pytest.approx(1 / 24, abs=1e-14)
        assert float(b @ (c * (A @ c))) == pytest.approx(1 / 8, abs=1e-14)
    # the embedded solution is a different one (else the estimate would be 0), of order p - 1
    assert float((b - e) @ c ** (p - 1)) != pytest.approx(1 / p, abs=1e-6)
    assert tab.c[-1] == 1.0 and tab.a[-1] == tab.b[:-1] and tab.b[-1] == 0.0


def _per_step(name: str) -> int:
    """Evaluations per step of a first-same-as-last pair: its stages but the first."""
    return len(rk.TABLEAUS[name].c) - 1


def _linear_problem(seed: int, dim: int):
    """dy/dt = M y with M a damped rotation plus noise: y(t) = expm(M t) y0, and a scalar
    riding along, dz/dt = 1^T M y, so z(t) = 1^T (y(t) - y0) (a two-tensor state)."""
    g = torch.Generator().manual_seed(seed)
    M = 0.6 * torch.randn(dim, dim, generator=g) - 0.3 * torch.eye(dim)
    y0 = torch.randn(3, dim, generator=g)

    def f(t: float, state):
        dy = state[0] @ M.T
        return dy, dy.sum(1)

    def exact(t: float):
        yt = y0 @ torch.linalg.matrix_exp(M * t).T
        return yt, (yt - y0).sum(1)

    return f, (y0, torch.zeros(3)), exact


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 1000), dim=st.integers(1, 4), name=st.sampled_from(PAIRS))
def test_a_linear_ode_is_solved_to_the_closed_form_and_agrees_with_torchdiffeq(seed, dim, name):
    f, y0, exact = _linear_problem(seed, dim)
    (y, z), stats = rk.solve(f, y0, 0.0, 2.0, rtol=1e-10, atol=1e-10, method=name)
    y_true, z_true = exact(2.0)
    torch.testing.assert_close(y, y_true, rtol=0, atol=1e-8)
    torch.testing.assert_close(z, z_true, rtol=0, atol=1e-8)
    # torchdiffeq's dopri5 at a tight tolerance: an independent integration of the same ODE
    ys, zs = torchdiffeq.odeint(
        lambda t, s: f(float(t), s), y0, torch.tensor([0.0, 2.0]), rtol=1e-11, atol=1e-11
    )
    torch.testing.assert_close(y, ys[-1], rtol=0, atol=1e-8)
    torch.testing.assert_close(z, zs[-1], rtol=0, atol=1e-8)
    per_step = _per_step(name)
    assert stats.accepted > 0
    assert stats.evaluations == 2 + per_step * (stats.accepted + stats.rejected)


@pytest.mark.parametrize("name", PAIRS)
def test_the_global_error_falls_like_h_to_the_order(name):
    # fixed steps (h0 with a tolerance that accepts everything and no growth): y' = y cos t,
    # y(t) = exp(sin t); the global error of a p-th order method falls 2^p x per halving
    p = rk.TABLEAUS[name].order

    def f(t, s):
        return (s[0] * math.cos(t),)

    errs = []
    for n in (16, 32, 64):
        (y,), stats = rk.solve(
            f, (torch.ones(1),), 0.0, 4.0, rtol=1e3, atol=1e3, method=name, h0=4 / n, fac_max=1.0
        )
        assert stats.accepted == n and stats.rejected == 0
        errs.append(abs(float(y) - math.exp(math.sin(4.0))))
    slopes = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(s > p - 0.7 for s in slopes), slopes
    assert slopes[-1] > p - 0.3, slopes


@pytest.mark.parametrize("name", PAIRS)
def test_the_error_estimate_is_the_local_error_of_the_embedded_solution(name):
    # one step of y' = -y^2 (y = 1 / (1 + t)): the estimate h sum e_i k_i is y1 - y1_hat, whose
    # leading term is the order-(p - 1) solution's local error, O(h^p): 2^p x per halving
    tab = rk.TABLEAUS[name]
    p = tab.order

    def f(t, s):
        return (-(s[0] ** 2),)

    def one_step(h: float):
        y0 = (torch.ones(1),)
        y1, err, k_last = rk.step(f, tab, 0.0, y0, f(0.0, y0), h)
        torch.testing.assert_close(k_last[0], -(y1[0] ** 2))  # first same as last
        return float(err[0].abs()), abs(float(y1[0]) - 1 / (1 + h))

    # (Tsitouras' estimate reaches its asymptotic rate only below h ~ 0.05)
    ests = [one_step(h)[0] for h in (0.05, 0.025, 0.0125)]
    for a, b in zip(ests, ests[1:]):
        assert p - 0.4 < math.log2(a / b) < p + 0.5
    local = [one_step(h)[1] for h in (0.2, 0.1, 0.05)]
    for a, b in zip(local, local[1:]):  # the propagated solution: O(h^(p + 1)) locally
        assert math.log2(a / b) > p + 0.5


@pytest.mark.parametrize("direction", [1, -1])
def test_every_evaluation_lies_inside_the_interval_and_the_last_lands_on_t1(direction):
    # exp(t) growth, integrated forward or backward; the model may not be called outside
    # [t0, t1] (a likelihood field is undefined past pi/2), and the end is hit exactly
    t0, t1 = (0.0, 3.0) if direction == 1 else (3.0, 0.0)
    seen: list[float] = []

    def f(t, s):
        seen.append(t)
        return (s[0],)

    (y,), stats = rk.solve(f, (torch.ones(2),), t0, t1, rtol=1e-6, atol=1e-6)
    assert min(seen) >= min(t0, t1) and max(seen) <= max(t0, t1)
    assert seen[-1] == t1 and stats.evaluations == len(seen)
    torch.testing.assert_close(y, torch.full((2,), math.exp(t1 - t0)), rtol=1e-5, atol=0)
    # no short landing step: the accepted steps are spread evenly at the end
    assert stats.steps[-1] == pytest.approx(stats.steps[-2], rel=1e-9)
    assert sum(stats.steps) == pytest.approx(3.0, rel=1e-12)


def test_error_weights_leave_a_component_out_of_the_control():
    # a stiff-ish second component that the control ignores (weight 0) costs no steps, and the
    # first component is integrated the same whether or not the second is there
    def f(t, s):
        return (-s[0], math.cos(40 * t) * torch.ones_like(s[1]))

    y0 = (torch.ones(2), torch.zeros(1))
    (a, _), both = rk.solve(f, y0, 0.0, 2.0, rtol=1e-6, atol=1e-6)
    (b, _), first = rk.solve(f, y0, 0.0, 2.0, rtol=1e-6, atol=1e-6, weights=(1.0, 0.0))
    (c,), alone = rk.solve(lambda t, s: (-s[0],), y0[:1], 0.0, 2.0, rtol=1e-6, atol=1e-6)
    assert first.accepted == alone.accepted < both.accepted
    torch.testing.assert_close(b, c, rtol=0, atol=0)
    torch.testing.assert_close(a, torch.full((2,), math.exp(-2.0)), rtol=1e-5, atol=0)


def test_a_rejected_step_is_retried_smaller_and_counted():
    # a first step far too large for a fast decay is rejected, then the solve succeeds
    def f(t, s):
        return (-30 * s[0],)

    (y,), stats = rk.solve(f, (torch.ones(1),), 0.0, 1.0, rtol=1e-6, atol=1e-9, h0=1.0)
    assert stats.rejected >= 1
    assert stats.evaluations == 1 + 6 * (stats.accepted + stats.rejected)
    assert float(y) == pytest.approx(math.exp(-30), abs=1e-8)


def test_a_first_step_given_as_a_function_of_the_first_slope_costs_no_evaluation():
    # h0(k1) sees f(t0, y0) and its value is the first step taken (accepted here: a slow decay)
    seen = []

    def h0(k1):
        seen.append(k1[0].clone())
        return 0.125

    (y,), stats = rk.solve(
        lambda t, s: (-0.1 * s[0],), (torch.ones(1),), 0.0, 1.0, rtol=1e-6, atol=1e-9, h0=h0
    )
    torch.testing.assert_close(seen[0], torch.full((1,), -0.1))
    assert stats.steps[0] == 0.125 and stats.rejected == 0
    assert stats.evaluations == 1 + 6 * stats.accepted  # no probe for the first step
    assert float(y) == pytest.approx(math.exp(-0.1), abs=1e-9)
    with pytest.raises(ValueError, match="h0"):
        rk.solve(
            lambda t, s: (s[0],),
            (torch.ones(1),),
            0.0,
            1.0,
            rtol=1e-6,
            atol=1e-6,
            h0=lambda k1: float("nan"),
        )


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(method="rk45"), ValueError, "unknown method 'rk45'; expected one of: dopri5, tsit5"),
        (dict(rtol=float("nan")), ValueError, "rtol"),
        (dict(atol=0.0), ValueError, "atol"),
        (dict(t1=0.0), ValueError, "t0 and t1 must differ"),
        (dict(t1=float("inf")), ValueError, "t1"),
        (dict(weights=(1.0, 1.0)), ValueError, "weights must have one entry per state tensor"),
        (dict(h0=-0.1), ValueError, "h0"),
        (dict(max_steps=0), ValueError, "max_steps"),
    ],
)
def test_bad_settings_are_refused_with_the_name(kwargs, error, match):
    kw = {**dict(t0=0.0, t1=1.0, rtol=1e-6, atol=1e-6), **kwargs}
    t0, t1 = kw.pop("t0"), kw.pop("t1")
    with pytest.raises(error, match=match):
        rk.solve(lambda t, s: (s[0],), (torch.ones(1),), t0, t1, **kw)


def test_a_solve_that_cannot_finish_raises():
    with pytest.raises(RuntimeError, match="max_steps = 3"):
        rk.solve(
            lambda t, s: (s[0],), (torch.ones(1),), 0.0, 10.0, rtol=1e-9, atol=1e-9, max_steps=3
        )
    # a field that turns NaN: every step is rejected until the step size underflows
    with pytest.raises(RuntimeError, match="underflowed"):
        rk.solve(
            lambda t, s: (s[0] * (float("nan") if t > 0.5 else 1.0),),
            (torch.ones(1),),
            0.0,
            1.0,
            rtol=1e-6,
            atol=1e-6,
        )
