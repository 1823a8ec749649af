"""FFJORD (Grathwohl et al. 2019): divergences against autograd Jacobians, unbiased Hutchinson
log-densities, normalisation by quadrature, one-solve sampling with log-densities, gradients
(backprop and adjoint, T included), exact NFE counts, the regularisers of Finlay et al. (2020)
against closed forms for linear dynamics, argument checks and a short training run.

Networks are tiny and taken far from their init (every parameter perturbed), so the flows are
not near the identity and nothing passes trivially.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sdegen.divergence import exact_divergence, probes_like
from sdegen.models.flows.ffjord import FFJORD, FFJORDStats

TIGHT = {"rtol": 1e-7, "atol": 1e-7}


def make_model(dim: int = 2, seed: int = 0, std: float = 0.5, **kwargs) -> FFJORD:
    """A tiny FFJORD with every parameter perturbed by N(0, std^2)."""
    torch.manual_seed(seed)
    model = FFJORD(dim, (16, 16), kwargs.pop("activation", "tanh"), T=0.8, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.net.parameters():
            p.add_(std * torch.randn(p.shape, generator=g))
    return model


def count_calls(model: FFJORD) -> list[int]:
    """Wrap model.dynamics so that every call increments the returned counter."""
    calls, inner = [0], model.dynamics

    def counted(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        calls[0] += 1
        return inner(t, x)

    model.dynamics = counted
    return calls


def test_exact_divergence_is_the_jacobian_trace():
    model = make_model(dim=3)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    t = torch.rand((), generator=g, dtype=torch.float64) * model.T.detach()
    div = exact_divergence(model.dynamics(t, x), x)
    for xi, di in zip(x.detach(), div):
        jac = torch.autograd.functional.jacobian(lambda v: model.dynamics(t, v[None])[0], xi)
        torch.testing.assert_close(di, torch.trace(jac), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_log_prob_is_unbiased(noise):
    # One point repeated K times: each row draws its own probe, so the rows are K estimates.
    model = make_model(dim=3)
    x0 = torch.tensor([[0.3, -0.7, 1.1]], dtype=torch.float64)
    exact = model.log_prob(x0, trace="exact", **TIGHT).detach()
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        est = model.log_prob(
            x0.expand(2000, 3), trace="hutchinson", noise=noise, generator=g, **TIGHT
        )
    se = est.std() / math.sqrt(len(est))
    assert est.std() > 1e-3  # really stochastic
    assert abs(est.mean() - exact[0]) < 5 * se


def test_integrates_to_one_by_quadrature():
    model = make_model(dim=2, trace="exact", **TIGHT)
    u = torch.linspace(-7.0, 7.0, 100, dtype=torch.float64)
    h = float(u[1] - u[0])
    grid = torch.cartesian_prod(u, u)
    with torch.no_grad():
        lp = model.log_prob(grid)
    assert (lp - model.base_log_prob(grid)).abs().max() > 0.5  # far from the identity flow
    assert abs(float(lp.exp().sum()) * h * h - 1.0) < 1e-2


def test_sample_and_log_prob_agrees_with_log_prob():
    model = make_model(dim=2, **TIGHT)
    with torch.no_grad():
        x, lp = model.sample_and_log_prob(64, generator=torch.Generator().manual_seed(3))
        x_only = model.sample(64, generator=torch.Generator().manual_seed(3))
        lp_again = model.log_prob(x)
    assert x.shape == (64, 2) and lp.shape == (64,)
    assert (lp - model.base_log_prob(x)).abs().max() > 0.1
    torch.testing.assert_close(lp, lp_again, rtol=0, atol=1e-4)
    torch.testing.assert_close(x, x_only, rtol=0, atol=1e-4)


def test_gradients_reach_every_parameter_and_adjoint_agrees():
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    grads = []
    for adjoint in (False, True):
        model = make_model(dim=2, adjoint=adjoint, rtol=1e-8, atol=1e-8)
        model.log_prob(x).sum().backward()
        named = dict(model.named_parameters())
        assert "raw_T" in named
        for name, p in named.items():
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        grads.append(torch.cat([p.grad.flatten() for p in named.values()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_defaults_and_fixed_T():
    model = FFJORD(2, (8,), train_T=False, T=2.0)
    assert "raw_T" not in dict(model.named_parameters())
    assert float(model.T) == pytest.approx(2.0)
    assert model.log_prob_kind == "ode" and model.event_shape == (2,)
    assert FFJORD(16, (8,)).trace == "exact" and FFJORD(17, (8,)).trace == "hutchinson"


@pytest.mark.parametrize("adjoint", [False, True])
def test_nfe_counted_exactly(adjoint):
    model = make_model(dim=2, adjoint=adjoint)
    calls = count_calls(model)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    lp, stats = model.log_prob_with_stats(x, regularize=False)
    # last_stats: the same numbers (its regularisers detached), the same live backward count
    assert isinstance(stats, FFJORDStats) and model.last_stats == stats
    assert stats.nfe_forward > 0 and stats.nfe_forward == calls[0]
    assert stats.nfe_backward == 0
    lp.sum().backward()
    assert stats.nfe_backward == calls[0] - stats.nfe_forward
    assert model.last_stats.nfe_backward == stats.nfe_backward
    assert (stats.nfe_backward > 0) == adjoint


def test_zero_dynamics_has_no_energy():
    model = make_model(dim=2)
    model.dynamics = lambda t, x: 0 * x
    x = torch.randn(7, 2, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    lp, stats = model.log_prob_with_stats(x)
    torch.testing.assert_close(lp, model.base_log_prob(x))
    assert stats.kinetic.abs().max() == 0 and stats.jacobian_frobenius.abs().max() == 0


@pytest.mark.parametrize("trace, noise", [("exact", "rademacher"), ("hutchinson", "gaussian")])
def test_linear_dynamics_closed_forms(trace, noise):
    # f(x) = A x over time T: z = exp(T A) x, log p(x) = log N(z) + T tr A; in normalised time
    # v = T A x, so KE = int_0^1 |T A exp(s T A) x|^2 ds and JF = |eps^T T A|^2 for the probe
    # eps, whose mean is T^2 |A|_F^2. The probe is the generator's first draw, for either trace.
    A = torch.tensor([[0.3, -0.8], [0.5, -0.2]], dtype=torch.float64)
    model = make_model(dim=2, **TIGHT)
    model.dynamics = lambda t, x: x @ A.T
    T = float(model.T.detach())
    x = torch.randn(4000, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        lp, stats = model.log_prob_with_stats(
            x, trace=trace, noise=noise, generator=torch.Generator().manual_seed(8)
        )
    eps = probes_like(x, 1, noise, torch.Generator().manual_seed(8))[0]
    z = x @ torch.linalg.matrix_exp(T * A).T
    div = T * torch.trace(A) if trace == "exact" else T * ((eps @ A) * eps).sum(1)
    torch.testing.assert_close(lp, model.base_log_prob(z) + div, rtol=0, atol=1e-6)

    nodes, weights = (torch.from_numpy(a) for a in np.polynomial.legendre.leggauss(30))
    s, w = (nodes + 1) / 2, weights / 2
    maps = T * A @ torch.linalg.matrix_exp(s[:, None, None] * T * A)  # (30, 2, 2)
    ke_true = torch.einsum("q,qbi->b", w, torch.einsum("qij,bj->qbi", maps, x).pow(2))
    torch.testing.assert_close(stats.kinetic, ke_true, rtol=1e-5, atol=1e-7)

    jf = stats.jacobian_frobenius
    torch.testing.assert_close(jf, (eps @ (T * A)).pow(2).sum(1), rtol=1e-6, atol=1e-9)
    assert abs(jf.mean() - T**2 * A.pow(2).sum()) < 5 * jf.std() / math.sqrt(len(jf))


def test_loss_adds_the_weighted_regularisers():
    model = make_model(dim=2, kinetic_weight=0.3, jacobian_weight=0.7)
    x = torch.randn(9, 2, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    loss = model.loss(x, generator=torch.Generator().manual_seed(10))
    lp, st = model.log_prob_with_stats(x, generator=torch.Generator().manual_seed(10))
    expected = -lp.mean() + 0.3 * st.kinetic.mean() + 0.7 * st.jacobian_frobenius.mean()
    torch.testing.assert_close(loss, expected)
    assert FFJORD(2, (8,)).loss(x).shape == ()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"dim": 0}, "dim"),
        ({"hidden_dims": ()}, "hidden_dims"),
        ({"hidden_dims": (16, 0)}, "hidden_dims"),
        ({"activation": "relu"}, "'relu'.*softplus, tanh"),
        ({"trace": "exakt"}, "'exakt'.*exact, hutchinson"),
        ({"method": "dopri9"}, "'dopri9'.*dopri5"),
        ({"T": -1.0}, "T must be > 0, got -1.0"),
        ({"rtol": 0.0}, "rtol"),
        ({"kinetic_weight": -0.1}, "kinetic_weight must be >= 0, got -0.1"),
    ],
)
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FFJORD(**{"dim": 2, "hidden_dims": (8,), **kwargs})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"trace": "exakt"}, "'exakt'.*exact, hutchinson"),
        ({"noise": "uniform"}, "'uniform'.*rademacher, gaussian"),
        ({"probes": 0}, "probes must be an integer >= 1, got 0"),
        ({"method": "dopri9"}, "'dopri9'"),
        ({"atol": -1.0}, "atol must be > 0, got -1.0"),
    ],
)
def test_bad_call_arguments(kwargs, match):
    model = FFJORD(2, (8,))
    x = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        model.log_prob(x, **kwargs)


def test_bad_data_and_sample_sizes():
    model = FFJORD(2, (8,))
    with pytest.raises(ValueError, match=r"shape \(batch, 2\), got \(3, 3\)"):
        model.log_prob(torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="NaN"):
        model.log_prob(torch.tensor([[0.0, float("nan")]], dtype=torch.float64))
    with pytest.raises(ValueError, match="n must be an integer >= 1, got 0"):
        model.sample(0)


def test_training_reduces_held_out_nll():
    g = torch.Generator().manual_seed(11)
    scale = torch.tensor([0.5, 1.5], dtype=torch.float64)
    shift = torch.tensor([1.5, -1.0], dtype=torch.float64)

    def data(n: int) -> torch.Tensor:
        return torch.randn(n, 2, generator=g, dtype=torch.float64) * scale + shift

    torch.manual_seed(0)
    model = FFJORD(2, (16, 16), rtol=1e-3, atol=1e-3, kinetic_weight=0.01, jacobian_weight=0.01)
    held_out = data(256)
    opt = torch.optim.Adam(model.parameters(), lr=2e-2)
    with torch.no_grad():
        before = -model.log_prob(held_out, rtol=1e-5, atol=1e-5).mean()
    for _ in range(60):
        opt.zero_grad()
        model.loss(data(128), generator=g).backward()
        opt.step()
    with torch.no_grad():
        after = -model.log_prob(held_out, rtol=1e-5, atol=1e-5).mean()
    entropy = 1 + math.log(2 * math.pi) + math.log(0.5 * 1.5)  # the best achievable NLL
    assert after < before - 1.0
    assert after < entropy + 0.3
