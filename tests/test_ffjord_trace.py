"""FFJORD's exact trace from the network's forward-mode Jacobian (ODENet.forward_and_divergence)
against autograd Jacobians, and the log-densities and gradients it gives against the autograd
(`sdegen.divergence`) path; the moons density by quadrature against Monte Carlo over the angle.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdegen.data.toy import toy_log_prob
from sdegen.models.flows.ffjord import FFJORD, ODENet


def perturbed_net(dim: int, hidden: tuple[int, ...], activation: str, seed: int) -> ODENet:
    """An ODENet with every parameter moved by N(0, 0.5^2), far from its init."""
    torch.manual_seed(seed)
    net = ODENet(dim, hidden, activation).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return net


@settings(max_examples=12, deadline=None)
@given(
    dim=st.integers(1, 4),
    hidden=st.lists(st.integers(1, 6), min_size=1, max_size=3),
    activation=st.sampled_from(["tanh", "softplus"]),
    per_example_t=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_forward_and_divergence_is_the_autograd_jacobian_trace(
    dim, hidden, activation, per_example_t, seed
):
    net = perturbed_net(dim, tuple(hidden), activation, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, dim, generator=g, dtype=torch.float64)
    t = torch.rand(3 if per_example_t else (), generator=g, dtype=torch.float64)
    f, tr = net.forward_and_divergence(t, x)
    torch.testing.assert_close(f, net(t, x), rtol=1e-12, atol=1e-12)
    for i in range(3):
        ti = t[i] if per_example_t else t
        jac = torch.autograd.functional.jacobian(lambda u, ti=ti: net(ti, u[None])[0], x[i])
        torch.testing.assert_close(tr[i], torch.trace(jac), rtol=1e-10, atol=1e-12)


def _both_paths(seed: int = 0) -> tuple[FFJORD, FFJORD]:
    """The same perturbed FFJORD twice: one on the network's own trace, one whose dynamics is
    a wrapper, so that its exact trace comes from autograd VJPs (sdegen.divergence)."""
    fast = FFJORD(2, (8, 8), "tanh", T=0.7, rtol=1e-8, atol=1e-8).double()
    fast.net = perturbed_net(2, (8, 8), "tanh", seed)
    slow = FFJORD(2, (8, 8), "tanh", T=0.7, rtol=1e-8, atol=1e-8).double()
    slow.load_state_dict(fast.state_dict())
    slow.dynamics = lambda t, x: slow.net(t, x)
    assert fast._own_dynamics() and not slow._own_dynamics()
    return fast, slow


def test_log_prob_and_gradients_agree_with_the_autograd_trace():
    fast, slow = _both_paths()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        lp_fast, lp_slow = fast.log_prob(x), slow.log_prob(x)
    assert lp_fast.std() > 0.1  # a non-trivial flow
    torch.testing.assert_close(lp_fast, lp_slow, rtol=1e-9, atol=1e-9)
    for m in (fast, slow):
        m.zero_grad()
        m.loss(x).backward()
    for (name, a), b in zip(fast.named_parameters(), slow.parameters()):
        assert a.grad is not None and a.grad.abs().sum() > 0, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-9, msg=name)


def test_adjoint_gradients_agree_with_the_autograd_trace():
    fast, slow = _both_paths(seed=5)
    fast.adjoint = slow.adjoint = True
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for m in (fast, slow):
        m.zero_grad()
        m.loss(x).backward()
    for a, b in zip(fast.parameters(), slow.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8)


def test_moons_density_by_quadrature_matches_monte_carlo_over_the_angle():
    # p(x) = 1/2 sum_arcs E_theta N(x; 2 c(theta) + shift, 0.2^2 I), theta ~ U(0, pi)
    g = torch.Generator().manual_seed(0)
    theta = math.pi * torch.rand(400_000, generator=g, dtype=torch.float64)
    c, s = torch.cos(theta), torch.sin(theta)
    shift = torch.tensor([-1.0, -0.2], dtype=torch.float64)
    centres = torch.cat([torch.stack([c, s], 1), torch.stack([1 - c, 0.5 - s], 1)]) * 2 + shift
    # on the arcs, near their ends (where the midpoint rule is weakest) and between them
    pts = torch.tensor(
        [[-1.0, 1.8], [0.41, 1.21], [1.0, -1.2], [-0.41, -0.61], [3.0, 0.7], [1.1, -0.2]]
    )
    pts = pts.double()
    sq = ((pts[:, None, :] - centres) ** 2).sum(-1)
    dens = torch.exp(-sq / (2 * 0.04)) / (2 * math.pi * 0.04)  # (6, 2n), mean over both arcs
    mc, se = dens.mean(1), dens.std(1) / math.sqrt(dens.shape[1])
    exact = toy_log_prob("moons", pts).exp()
    assert bool((mc > 1e-3).all())  # every point is in the support's bulk
    assert bool(((exact - mc).abs() < 4 * se + 1e-6).all()), (exact, mc, se)


def test_exact_frobenius_is_the_probe_estimates_expectation():
    # The own-network path gives int ||dv/dx||_F^2 ds exactly; the autograd path an unbiased
    # probe estimate of it: their means over many probes agree within the estimate's error.
    fast, slow = _both_paths(seed=2)
    x0 = torch.tensor([[0.4, -0.9]], dtype=torch.float64)
    with torch.no_grad():
        _, st_fast = fast.log_prob_with_stats(x0)
        _, st_slow = slow.log_prob_with_stats(
            x0.expand(3000, 2), noise="gaussian", generator=torch.Generator().manual_seed(1)
        )
    est = st_slow.jacobian_frobenius
    assert est.std() > 0.1 * est.mean() > 0  # really stochastic
    assert abs(est.mean() - st_fast.jacobian_frobenius[0]) < 4 * est.std() / math.sqrt(len(est))
    # and the kinetic energy does not depend on the path
    torch.testing.assert_close(st_slow.kinetic[:1], st_fast.kinetic, rtol=1e-9, atol=1e-12)


def test_model_deep_copies_after_a_regularised_loss():
    # last_stats keeps detached regularisers, so an evaluation copy can be made mid-training
    import copy

    model = FFJORD(2, (8,), kinetic_weight=0.1, jacobian_weight=0.1)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    model.loss(x).backward()
    twin = copy.deepcopy(model)
    assert model.last_stats.kinetic.grad_fn is None
    with torch.no_grad():
        torch.testing.assert_close(twin.log_prob(x), model.log_prob(x))
