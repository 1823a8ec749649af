"""The per-step overhead work (issue 13, item 3): no host synchronisation inside the step loop
of any fixed-grid method, and the once-per-solve precomputations giving the values the steps
computed before, to the bit.

A host synchronisation is an operation that reads a tensor's value back to Python (item,
bool, float, int, tolist, numpy, cpu, nonzero): on an accelerator each one waits for the
device. A CPU test cannot time that, but it can catch the operation itself: the model below
returns its outputs as a tensor subclass that raises on every such read, so the state the
sampler builds from them is guarded too, and any read of it inside a step fails the test.
Reads of the CPU float64 time grid stay allowed (no device is involved there).
"""

from __future__ import annotations

import math

import pytest
import torch

import sdegen
from sdegen.models.adapters import EDMModel, KDiffusionModel, unit_alpha
from sdegen.sde import EDMSDE, VESDE, VPSDE
from sdegen.solvers.exp_quadrature import (
    LogSNRSchedule,
    _phi_moments,
    exp_weights,
    exp_weights_many,
    scale,
)
from sdegen.solvers.grid import batch_t
from sdegen.solvers.methods import METHODS

from .conftest import mixture

SYNCS = ("item", "__bool__", "__float__", "__int__", "__index__", "tolist", "numpy", "cpu")
SYNCS += ("nonzero",)
FIXED_GRID = [name for name, m in METHODS.items() if m.step is not None]


# whether Guarded refuses reads; a test disarms it once the step loop is over (`sample` checks
# its samples once per solve, after the loop)
ARMED = [True]


class Guarded(torch.Tensor):
    """A tensor whose values may not be read back to the host (while ARMED); ops keep the
    subclass."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if ARMED[0] and getattr(func, "__name__", "") in SYNCS:
            raise AssertionError(f"host synchronisation in the step loop: Tensor.{func.__name__}")
        return super().__torch_function__(func, types, args, kwargs or {})


class GuardedModel:
    """Wraps a score model: inputs reach it as plain tensors, outputs leave it guarded, from
    the second call of each method on (the counting wrapper checks the first output once per
    solve, which is allowed)."""

    def __init__(self, model) -> None:
        self.model, self.calls = model, {}

    def _call(self, name: str, x, t):
        out = getattr(self.model, name)(x.as_subclass(torch.Tensor), t.as_subclass(torch.Tensor))
        self.calls[name] = self.calls.get(name, 0) + 1
        return out if self.calls[name] == 1 else out.as_subclass(Guarded)

    def score(self, x, t):
        return self._call("score", x, t)

    def denoise(self, x, t):
        return self._call("denoise", x, t)

    def eps(self, x, t):
        return self._call("eps", x, t)


def test_the_guard_catches_a_sync():
    x = torch.ones(2, 2).as_subclass(Guarded)
    y = 2 * x - 1
    assert type(y) is Guarded
    for read in (lambda: bool(y.sum() > 0), lambda: float(y[0, 0]), lambda: y.sum().item()):
        with pytest.raises(AssertionError, match="host synchronisation"):
            read()
    assert type(y.norm(dim=1).mean().clamp_min(1e-3)) is Guarded  # device-side ops are fine


@pytest.mark.parametrize("sde_cls", [VPSDE, EDMSDE])
@pytest.mark.parametrize("method", FIXED_GRID)
def test_no_host_sync_in_the_step_loop(method, sde_cls):
    sde = sde_cls()
    model, states = GuardedModel(mixture(sde)), []

    def callback(info: dict) -> None:
        states.append(type(info["x"]))
        ARMED[0] = info["i"] < 3  # after the last of the 4 steps, reads are allowed again

    try:
        res = sdegen.sample(
            model, sde, (3, 2), method=method, steps=4, generator=torch.Generator().manual_seed(0),
            callback=callback,
        )  # fmt: skip
    finally:
        ARMED[0] = True
    assert len(states) == 4 and states[-1] is Guarded  # the steps worked on guarded outputs
    g = torch.Generator().manual_seed(0)
    want = sdegen.sample(mixture(sde), sde, (3, 2), method=method, steps=4, generator=g)
    assert torch.equal(res.x.as_subclass(torch.Tensor), want.x)  # and the guard changed nothing


def test_at_lambdas_is_at_lambda_to_the_bit():
    for sde in (VPSDE(), VESDE(), EDMSDE()):
        ts = sdegen.solvers.schedules.get_schedule(sde, "karras", 12)
        path = LogSNRSchedule(sde, ts)
        lams = [0.5 * (a + b) for a, b in zip(path.lam[:-1], path.lam[1:])] + path.lam
        assert path.at_lambdas(lams) == [path.at_lambda(lam) for lam in lams]
        lo, hi = sde.half_log_snr_range()
        with pytest.raises(ValueError, match="lam must lie"):
            path.at_lambdas([0.5 * (lo + hi), hi + 1.0])
        assert path.at_lambdas([]) == []


def test_t_batch_is_batch_t():
    sde = VPSDE()
    ts = sdegen.solvers.schedules.get_schedule(sde, "log_snr", 7)
    path = LogSNRSchedule(sde, ts)
    for dtype in (torch.float32, torch.float64):
        x = torch.zeros(5, 3, dtype=dtype)
        for i in range(len(ts)):
            got = path.t_batch(i, x)
            assert got.dtype == dtype and got.shape == (5,)
            assert torch.equal(got, batch_t(float(ts[i]), x))
    assert path.t_batch(0, torch.zeros(2, 3)).shape == (2,)  # a new batch size rebuilds it


def _exp_weights_one_solve(nodes: list[float], h: float, c: float) -> list[float]:
    """The weights as exp_weights computed them before the batching: one solve per case."""
    m = len(nodes)
    moments = _phi_moments(c * h, m)
    rhs = torch.tensor([moments[k] / (c * h) ** k for k in range(m)], dtype=torch.float64)
    v = torch.tensor([u / h for u in nodes], dtype=torch.float64)
    vander = v[None, :] ** torch.arange(m, dtype=torch.float64)[:, None]
    return torch.linalg.solve(vander, rhs).tolist()


def test_batched_weights_are_the_one_solve_weights_to_the_bit():
    g = torch.Generator().manual_seed(3)
    cases = []
    for _ in range(400):
        m = int(torch.randint(1, 5, (), generator=g))
        h = float(torch.rand((), generator=g)) * 2 + 1e-3
        past = (-torch.rand(m - 1, generator=g).cumsum(0) * h).tolist()
        c = 1.0 + float(torch.rand((), generator=g))
        cases.append(([0.0] + past if m < 4 else past[:2] + [0.0, h], h, c))
        if m > 1:  # a case with one node fewer at the same y = c h (its moments are shared)
            cases.append((cases[-1][0][1:], h, c))
    assert exp_weights_many(cases) == [_exp_weights_one_solve(*case) for case in cases]


def test_exp_weights_many_is_exp_weights_to_the_bit():
    cases = [([0.0], 0.3, 1.0), ([0.0, -0.2], 0.3, 1.0), ([-0.5, -0.2, 0.0], 1.7, 2.0)]
    cases += [([0.0, 0.4], 0.4, 1.0), ([0.0, -0.1, -0.3, -0.6], 0.25, 1.5), ([0.0], 2.0, 2.0)]
    got = exp_weights_many(cases)
    assert got == [exp_weights(*case) for case in cases]
    # one node: int_0^h c e^{-c(h-u)} du = 1 - e^{-ch}
    assert got[0][0] == pytest.approx(-math.expm1(-0.3), rel=1e-14)
    with pytest.raises(ValueError, match="h > 0"):
        exp_weights_many([([0.0], -1.0, 1.0)])


def test_scale_skips_only_a_factor_of_one():
    x = torch.randn(3, 2)
    assert scale(1.0, x) is x
    assert torch.equal(scale(0.5, x), 0.5 * x)


def test_unit_alpha_only_for_alpha_one_by_construction():
    class Scaled(VESDE):
        def _alpha(self, t):
            return 2 * torch.ones_like(t)

    assert unit_alpha(VESDE()) and unit_alpha(EDMSDE())
    assert not unit_alpha(VPSDE()) and not unit_alpha(Scaled())


@pytest.mark.parametrize("sde_cls", [VPSDE, VESDE, EDMSDE])
def test_x0_only_is_the_x0_of_x0_eps(sde_cls):
    sde = sde_cls()

    def denoiser(x, sigma):
        return torch.tanh(x) / (1 + sigma[:, None] ** 2)

    class Net(torch.nn.Module):
        def forward(self, x, c):
            return torch.sin(x) * c[:, None]

    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.3, 0.5, 0.7, 0.9]) * sde.T
    for model in (KDiffusionModel(denoiser, sde), EDMModel(Net(), sde)):
        x0, eps = model.x0_eps(x, t)
        assert torch.equal(model.denoise(x, t), x0)
        assert torch.equal(model.x0_only(x, t), x0)
        # x0 and eps describe the same x: x = alpha x0 + sigma eps
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        torch.testing.assert_close(a * x0 + s * eps, x)
    # the adapter's D really sees x / alpha and sigma / alpha
    want = denoiser(x / sde.alpha(t)[:, None], sde.sigma(t) / sde.alpha(t))
    torch.testing.assert_close(KDiffusionModel(denoiser, sde).denoise(x, t), want, rtol=0, atol=0)


# ---- once-per-solve coefficients and deferred x0 estimates (issue 13, item 3, second pass) ----


def test_deferred_x0_is_tweedie_when_read():
    from sdegen.solvers.grid import Deferred, Recorder, deferred_x0, score_to_x0

    sde = VPSDE()
    g = torch.Generator().manual_seed(5)
    x, score = torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)
    t = torch.full((3,), 0.4, dtype=torch.float64)
    d = deferred_x0(sde, score, x, t)
    assert isinstance(d, Deferred)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    torch.testing.assert_close(d(), (x + s**2 * score) / a, rtol=1e-14, atol=0)
    assert torch.equal(d(), score_to_x0(sde, score, x, t))

    def boom():
        raise AssertionError("computed without a callback")

    Recorder(x, None, trajectory=True, callback=None)(x, Deferred(boom))  # never read
    seen = []
    Recorder(x, None, trajectory=False, callback=seen.append)(x, Deferred(lambda: 2 * x))
    assert torch.equal(seen[0]["denoised"], 2 * x)


@pytest.mark.parametrize("method", ["euler_maruyama", "reverse_diffusion", "ancestral"])
def test_callback_denoised_is_tweedie_at_the_step_start(method):
    # the estimate the callback reads is (x + sigma^2 score) / alpha at the state and time where
    # each step starts, computed here independently from the model's score
    sde = VPSDE()
    model = mixture(sde)
    noise = torch.randn(4, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    seen = []
    res = sdegen.sample(
        model, sde, (4, 2), method=method, steps=5, noise=noise, return_trajectory=True,
        generator=torch.Generator().manual_seed(0), callback=seen.append,
    )  # fmt: skip
    assert len(seen) == 5
    for info in seen:
        i = info["i"]
        x, t = res.trajectory[i], torch.full((4,), float(res.ts[i]), dtype=torch.float64)
        a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        want = (x + s**2 * model.score(x, t)) / a
        torch.testing.assert_close(info["denoised"], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_float_rows_multiply_as_python_floats(dtype):
    from sdegen.solvers.grid import float_rows

    g = torch.Generator().manual_seed(1)
    rows = [[0.1, -0.0, 0.0, 1e-30], [3.7, 0.1, math.pi], [], [2.0 / 3.0]]
    tables = float_rows(rows, dtype)
    x = torch.randn(5, 3, generator=g).to(dtype)
    for row, table in zip(rows, tables):
        assert len(row) == len(table)
        for v, c in zip(row, table):
            assert c.ndim == 0 and c.device.type == "cpu" and (c * x).dtype == dtype
            if dtype in (torch.float32, torch.float64):
                assert torch.equal(c * x, v * x)
            else:  # half precision: rounding-level only (torch's scalar path differs)
                torch.testing.assert_close(c * x, v * x, rtol=1e-2, atol=1e-30)
            assert math.copysign(1.0, float(c)) == math.copysign(1.0, v)  # -0.0 kept apart
    assert tables[0][0] is tables[1][1]  # one tensor per distinct value


@pytest.mark.parametrize("sde_cls", [VPSDE, VESDE, EDMSDE])
def test_reverse_sde_coefficients_are_the_per_step_sde_values(sde_cls):
    from sdegen.solvers.reverse_sde import Ancestral, EulerMaruyama

    sde = sde_cls()
    ts = sdegen.solvers.schedules.get_schedule(sde, "karras", 6)
    for dtype in (torch.float64, torch.float32):
        x = torch.zeros(3, 2, dtype=dtype)
        em = EulerMaruyama(None, sde, ts, generator=None, add_noise_last=True)
        anc = Ancestral(None, sde, ts, variance="posterior", generator=None, add_noise_last=True)
        c, ca = em.coefs(x), anc.coefs(x)
        assert em.coefs(x) is c  # once per solve
        for i in range(len(ts) - 1):
            t, s = (batch_t(float(ts[j]), x) for j in (i, i + 1))
            dt = float(ts[i + 1]) - float(ts[i])
            assert torch.equal(c["g2"][i].expand(3), sde.g2(t))
            noise = sde.diffusion(t)[:, None] * (-dt) ** 0.5
            assert torch.equal(c["noise"][i].expand(3, 1), noise)
            assert torch.equal(c["dt"][i], torch.tensor(dt, dtype=dtype))
            a, G = sde.transition(s, t)
            assert torch.equal(ca["G2"][i].expand(3), G**2)
            assert torch.equal(ca["std"][i].expand(3), G * sde.sigma(s) / sde.sigma(t))
        assert em.f_zero == (sde_cls is not VPSDE)
    assert em.coefs(torch.zeros(3, 2, dtype=torch.float64))["g2"][0].dtype == torch.float64


def test_predict_is_the_grid_step():
    from sdegen.solvers.reverse_sde import ReverseDiffusion

    sde = VPSDE()
    model = mixture(sde)
    ts = torch.tensor([0.8, 0.5, 0.2], dtype=torch.float64)
    method = ReverseDiffusion(model, sde, ts, generator=None, add_noise_last=True)
    x, z = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    assert torch.equal(method.predict(x, 0.5, 0.2, z)[0], method.move(1, x, z)[0])
    with pytest.raises(ValueError, match="not a step of this method's grid"):
        method.predict(x, 0.8, 0.2, z)


def _lagrange_scalar(nodes, b, weight=None):
    """lagrange_integrals as a scalar loop (its form before the vectorisation)."""
    from sdegen.solvers.kdiffusion import _GL_NODES, _GL_WEIGHTS

    half = 0.5 * b
    us = [half * (1 + g) for g in _GL_NODES]
    ws = [1.0] * len(us) if weight is None else [weight(u) for u in us]
    out = []
    for j, uj in enumerate(nodes):
        total = 0.0
        for u, w, wu in zip(us, _GL_WEIGHTS, ws):
            basis = 1.0
            for k, uk in enumerate(nodes):
                if k != j:
                    basis *= (u - uk) / (uj - uk)
            total += w * basis * wu
        out.append(half * total)
    return out


def test_lagrange_integrals_many_is_the_scalar_loop_to_the_bit():
    from sdegen.solvers.kdiffusion import lagrange_integrals, lagrange_integrals_many

    g = torch.Generator().manual_seed(4)
    cases = []
    for _ in range(60):
        m = int(torch.randint(1, 5, (), generator=g))
        b = -float(torch.rand((), generator=g)) - 0.05
        nodes = [0.0] + (torch.rand(m - 1, generator=g).cumsum(0) * 0.7).tolist()
        s = float(torch.rand((), generator=g)) + 0.5
        cases.append((nodes, b, None if m % 2 else (lambda u, s=s: s * math.exp(u))))
    got = lagrange_integrals_many(cases)
    assert got == [_lagrange_scalar(*case) for case in cases]
    assert got[0] == lagrange_integrals(*cases[0])
    # closed forms: the basis sums to 1, so the weights sum to int_0^b w(u) du
    assert sum(lagrange_integrals([0.0, 0.4, 1.1], -0.8)) == pytest.approx(-0.8, rel=1e-14)
    got = lagrange_integrals([0.0, 0.3], -0.6, lambda u: 2 * math.exp(u))
    assert sum(got) == pytest.approx(2 * math.expm1(-0.6), rel=1e-13)


def test_equal_weight_systems_are_solved_once():
    cases = [([0.0, -0.2], 0.3, 1.0), ([-0.5, -0.2, 0.0], 1.7, 2.0), ([0.0, -0.2], 0.3, 1.0)]
    got = exp_weights_many(cases)
    assert got[0] is got[2] and got == [exp_weights(*case) for case in cases]


def test_at_lambdas_on_many_levels_is_at_lambda_to_the_bit():
    # hundreds of levels, computed SCALAR_RUN at a time: every SDE kind, the generic one
    # (bisection) included, and the VP SDE, whose fully vectorised inverse rounds differently
    from sdegen.sde import LinearSDE

    flow = LinearSDE(lambda t: 1 - t, lambda t: t, t_min=1e-3, T=1 - 1e-3, prior_std=1.0)
    g = torch.Generator().manual_seed(6)
    for sde in (VPSDE(), VESDE(), EDMSDE(), flow):
        path = LogSNRSchedule(sde, sdegen.solvers.schedules.get_schedule(sde, "karras", 4))
        lo, hi = sde.half_log_snr_range()
        lams = (lo + (hi - lo) * torch.rand(40 if sde is flow else 200, generator=g)).tolist()
        assert path.at_lambdas(lams) == [path.at_lambda(lam) for lam in lams]


@pytest.mark.parametrize("method", ["euler", "heun", "rk4", "k_euler"])
def test_half_precision_grids_ending_at_t_min_sample(method):
    # the grid ends at t_min = 1e-3 and the final denoising step runs there; in bfloat16 that
    # time rounds to 0.000999, just below t_min, as the steps' times do: not a user's error
    sde = VPSDE()
    model = sdegen.GaussianScore(torch.zeros(2), torch.eye(2), sde)
    res = sdegen.sample(model, sde, (64, 2), method=method, steps=8, dtype=torch.bfloat16,
                        schedule="karras", generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert res.x.dtype == torch.bfloat16 and bool(torch.isfinite(res.x).all())
    assert float(res.ts[-1]) == sde.t_min
    assert 0.5 < float(res.x.float().std()) < 1.5  # N(0, I) data, not a blow-up
