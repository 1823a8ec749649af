"""SDE closed forms: kernels against simulation, f and g^2 against autograd, Fokker-Planck."""

from __future__ import annotations

import math

import pytest
import torch
import torchsde
from hypothesis import given, settings
from hypothesis import strategies as st

from sdegen.sde import EDMSDE, VESDE, VPSDE, LinearSDE, SubVPSDE, ddpm_betas
from sdegen.sde.base import _time_derivative

from .conftest import SDE_FACTORIES, mixture


def _grid(sde, n=9):
    return torch.linspace(sde.t_min, sde.T, n)


def test_f_and_g2_match_autograd_of_alpha_sigma(sde):
    # The closed forms of each subclass against the definitions f = dlog alpha/dt,
    # g^2 = dsigma^2/dt - 2 f sigma^2 differentiated by autograd.
    t = _grid(sde, 33)[1:-1]
    f = _time_derivative(lambda s: torch.log(sde._alpha(s)), t)
    g2 = _time_derivative(lambda s: sde._sigma(s) ** 2, t) - 2 * f * sde._sigma(t) ** 2
    torch.testing.assert_close(sde.f(t), f, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(sde.g2(t), g2, rtol=1e-6, atol=1e-9)
    assert bool((sde.g2(t) > 0).all())


def test_log_snr_inverse_round_trip(sde):
    t = _grid(sde, 41)
    lam = sde.half_log_snr(t)
    torch.testing.assert_close(lam, torch.log(sde.alpha(t) / sde.sigma(t)))
    torch.testing.assert_close(sde.t_of_half_log_snr(lam), t, rtol=1e-9, atol=1e-9)
    # the generic bisection agrees with each subclass's closed-form inverse
    torch.testing.assert_close(LinearSDE._t_of_half_log_snr(sde, lam), t, rtol=1e-9, atol=1e-9)


def test_g2_over_sigma2_is_minus_twice_dlambda_dt(sde):
    # The identity behind likelihood-weighting importance sampling.
    t = _grid(sde, 17)[1:-1]
    dlam = _time_derivative(sde._half_log_snr, t)
    torch.testing.assert_close(sde.g2(t) / sde.sigma(t) ** 2, -2 * dlam, rtol=1e-6, atol=1e-9)


def test_transition_composes_to_marginal(sde):
    # p(x_t | x_s) composed with p(x_s | x0) is p(x_t | x0): scales multiply, variances add.
    s, t = torch.tensor([sde.t_min + 0.2 * (sde.T - sde.t_min)]), torch.tensor([0.7 * sde.T])
    a, G = sde.transition(s, t)
    torch.testing.assert_close(a * sde.alpha(s), sde.alpha(t))
    torch.testing.assert_close(a**2 * sde.sigma(s) ** 2 + G**2, sde.sigma(t) ** 2)


def _simulate_forward(sde, x0: float, t0: float, t1: float, n=6000, steps=200, seed=0):
    """Forward SDE from x(t0) = x0 by torchsde (Euler, n paths); samples at t1, shape (n,)."""

    class Forward(torch.nn.Module):
        noise_type, sde_type = "diagonal", "ito"

        def f(self, t, y):
            return sde.drift(y, t.expand(y.shape[0]))

        def g(self, t, y):
            return sde.diffusion(t.expand(y.shape[0]))[:, None] + 0 * y

    y0 = torch.full((n, 1), x0)
    ts = torch.tensor([t0, t1])
    bm = torchsde.BrownianInterval(t0, t1, size=(n, 1), entropy=seed)
    return torchsde.sdeint(Forward(), y0, ts, bm=bm, dt=(t1 - t0) / steps, method="euler")[-1, :, 0]


@settings(max_examples=12, deadline=None)
@given(
    kind=st.sampled_from(["vp", "subvp", "ve", "edm"]),
    lo=st.floats(0.05, 1.0),
    hi=st.floats(2.0, 25.0),
    frac=st.floats(0.2, 0.9),
    x0=st.floats(-2.0, 2.0),
)
def test_kernel_matches_torchsde_simulation(kind, lo, hi, frac, x0):
    sde = {
        "vp": lambda: VPSDE(beta_min=lo, beta_max=hi),
        "subvp": lambda: SubVPSDE(beta_min=lo, beta_max=hi),
        "ve": lambda: VESDE(sigma_min=lo / 10, sigma_max=hi / 5),
        "edm": lambda: EDMSDE(sigma_min=lo / 10, sigma_max=hi / 5),
    }[kind]()
    t0 = sde.t_min
    t1 = t0 + frac * (sde.T - t0)
    xs = _simulate_forward(sde, x0, t0, t1)
    a, std = sde.transition(torch.tensor([t0]), torch.tensor([t1]))
    n = xs.numel()
    # 5 standard errors for the mean and for the std, plus the Euler bias O(dt).
    tol_mean = 5 * float(std) / math.sqrt(n) + 0.02 * (abs(x0) + float(std))
    assert abs(float(xs.mean()) - float(a) * x0) < tol_mean
    assert abs(float(xs.std()) - float(std)) < 5 * float(std) / math.sqrt(2 * n) + 0.02 * float(std)


@pytest.mark.parametrize("name", list(SDE_FACTORIES))
def test_fokker_planck_consistency(name):
    # d/dt log p_t = -div(f x) - (f x) . grad log p + g^2/2 (lap log p + |grad log p|^2), with
    # p_t the diffused mixture (closed form in alpha, sigma) and f, g from the SDE itself.
    sde = SDE_FACTORIES[name]()
    model = mixture(sde, dim=3)
    g = torch.Generator().manual_seed(1)
    B = 16
    u = torch.rand(B, generator=g)
    t = sde.t_min + (0.02 + 0.96 * u) * (sde.T - sde.t_min)
    x = model.sample(B, generator=g, dtype=torch.float64)
    x = sde.perturb(x, t, torch.randn(x.shape, generator=g))

    tt = t.clone().requires_grad_(True)
    (dlogp_dt,) = torch.autograd.grad(model.log_prob(x, tt).sum(), tt)

    xx = x.clone().requires_grad_(True)
    logp = model.log_prob(xx, t)
    (grad,) = torch.autograd.grad(logp.sum(), xx, create_graph=True)
    lap = sum(
        torch.autograd.grad(grad[:, i].sum(), xx, retain_graph=True)[0][:, i] for i in range(3)
    )
    drift = sde.drift(xx, t)
    div_drift = sum(
        torch.autograd.grad(drift[:, i].sum(), xx, retain_graph=True)[0][:, i] for i in range(3)
    )
    g2 = sde.diffusion(t) ** 2
    rhs = -div_drift - (drift * grad).sum(1) + 0.5 * g2 * (lap + (grad**2).sum(1))
    torch.testing.assert_close(dlogp_dt, rhs.detach(), rtol=1e-6, atol=1e-6)


def test_fokker_planck_catches_a_wrong_diffusion():
    # The check above must fail when g^2 does not match alpha, sigma: a VP SDE whose g^2 is
    # off by 10% violates it.
    class Broken(VPSDE):
        def _g2(self, t):
            return 1.1 * super()._g2(t)

    sde = Broken()
    model = mixture(sde, dim=2)
    x = torch.tensor([[0.3, -0.2]])
    t = torch.tensor([0.4], requires_grad=True)
    (lhs,) = torch.autograd.grad(model.log_prob(x, t).sum(), t)
    xx = x.clone().requires_grad_(True)
    grad = model.score(xx, t.detach())
    f, g2 = sde.f(t.detach()), sde.g2(t.detach())
    lap = sum(
        torch.autograd.grad(grad[:, i].sum(), xx, retain_graph=True)[0][:, i] for i in range(2)
    )
    rhs = -2 * f - f * (x * grad).sum(1) + 0.5 * g2 * (lap + (grad**2).sum(1))
    assert abs(float(lhs) - float(rhs.detach())) > 1e-3


def test_discrete_vp_matches_ddpm_alpha_bar():
    betas = ddpm_betas(1000)
    sde = VPSDE.from_betas(betas)
    alpha_bar = torch.cumprod(1 - betas, 0)
    i = torch.tensor([0, 1, 10, 499, 998, 999])
    t = (i + 1) / 1000
    torch.testing.assert_close(sde.alpha(t) ** 2, alpha_bar[i])
    torch.testing.assert_close(sde.sigma(t) ** 2, 1 - alpha_bar[i])
    torch.testing.assert_close(sde.timestep(t), i.double())
    # adjacent grid points: 1 - a^2 is DDPM's beta_i
    a, G = sde.transition(t[1:2] - 1e-3, t[1:2])
    torch.testing.assert_close(1 - a**2, betas[1:2])
    torch.testing.assert_close(G**2, betas[1:2])


def test_cosine_schedule_matches_nichol_dhariwal():
    sde, s = VPSDE("cosine"), 0.008
    t = torch.tensor([0.01, 0.3, 0.7, 0.95])
    f = lambda u: torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    torch.testing.assert_close(sde.alpha(t) ** 2, f(t) / f(torch.tensor(0.0)))
    assert sde.T < 1 and float(sde.g2(torch.tensor([sde.T]))) == pytest.approx(999, rel=1e-9)


def test_prior_log_prob_is_the_gaussian_density(sde):
    z = sde.prior_sample((5, 3), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = torch.distributions.Normal(0.0, sde.prior_std).log_prob(z).sum(1)
    torch.testing.assert_close(sde.prior_log_prob(z), ref)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VPSDE(beta_min=5, beta_max=1), "beta_min must be <= beta_max"),
        (lambda: VPSDE(beta_min=float("nan")), "beta_min must be finite"),
        (lambda: VPSDE(beta_min=-1.0), "beta_min must be > 0"),
        (
            lambda: VPSDE("quadratic"),
            "unknown schedule 'quadratic'; expected one of: linear, cosine",
        ),
        (lambda: VPSDE("cosine", T=1.0), "T must be < 1"),
        (lambda: VPSDE(t_min=0.0), r"sigma\(t\) must be finite and > 0"),
        (lambda: VPSDE(t_min=2.0), "t_min must be < T"),
        (lambda: VESDE(sigma_min=0.0), "sigma_min must be > 0"),
        (lambda: VESDE(sigma_min=5, sigma_max=1), "sigma_min must be < sigma_max"),
        (lambda: EDMSDE(sigma_max=float("inf")), "sigma_max must be finite"),
        (lambda: VPSDE.from_betas([0.1, 1.5]), r"betas must lie in \(0, 1\)"),
        (lambda: VPSDE.from_betas([[0.1, 0.2]]), "betas must be a 1-D array"),
        (
            lambda: LinearSDE(lambda t: 1 - t, lambda t: t, t_min=1e-3, T=1.0),
            r"alpha\(t\) must be finite and > 0 on \[t_min, T\]; alpha\(1\) = 0",
        ),
        (
            lambda: LinearSDE(lambda t: t, lambda t: 1 + 0 * t, t_min=0.1, T=1.0),
            "log-SNR log\\(alpha/sigma\\) must decrease",
        ),
        (lambda: LinearSDE(None, lambda t: t, t_min=0.1, T=1.0), "alpha must be a callable"),
    ],
)
def test_invalid_parameters_name_the_value(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_times_outside_the_interval_are_rejected():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"t must lie in \[t_min, T\] = \[0.001, 1\], got 1.5"):
        sde.sigma(torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="got nan"):
        sde.alpha(torch.tensor([float("nan")]))
    with pytest.raises(ValueError, match="lam must lie in"):
        sde.t_of_half_log_snr(torch.tensor([100.0]))
    with pytest.raises(ValueError, match="noise must have the shape of x0"):
        sde.perturb(torch.zeros(2, 3), torch.full((2,), 0.5), torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"t must have shape \(batch,\)"):
        sde.marginal(torch.zeros(2, 3), torch.full((3,), 0.5))


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: VPSDE(3), TypeError, "schedule must be one of 'linear', 'cosine' or a schedule"),
        (lambda: SubVPSDE(None), TypeError, "schedule must be one of .*got None"),
        (lambda: ddpm_betas(2.5), ValueError, "n must be an integer >= 2, got 2.5"),
        (lambda: ddpm_betas(10, -0.1), ValueError, r"beta_start must lie in \(0, 1\), got -0.1"),
        (lambda: ddpm_betas(10, 1e-4, 2.0), ValueError, r"beta_end must lie in \(0, 1\), got 2.0"),
        (lambda: ddpm_betas(10, math.nan), ValueError, "beta_start must be finite, got nan"),
        (lambda: VPSDE.from_betas("ab"), ValueError, "betas must be a 1-D array of numbers"),
    ],
)
def test_bad_schedules_name_the_argument(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_times_of_the_wrong_type_are_refused_and_empty_batches_work():
    sde = VPSDE()
    with pytest.raises(TypeError, match="t must be a real tensor, got torch.complex64"):
        sde.alpha(torch.tensor([0.5 + 0j], dtype=torch.complex64))
    with pytest.raises(TypeError, match="t must be a real tensor, got torch.bool"):
        sde.sigma(torch.tensor([True]))
    with pytest.raises(TypeError, match="lam must be a real number or tensor, got str"):
        sde.t_of_half_log_snr("a")
    assert sde.prior_log_prob(torch.zeros(0, 3)).shape == (0,)
    torch.testing.assert_close(
        sde.prior_log_prob(torch.zeros(2, 3)), torch.full((2,), -1.5 * math.log(2 * math.pi))
    )


def test_snr_and_the_deprecated_log_snr_names():
    # log_snr named lambda = log(alpha / sigma), half the log-SNR; it is kept as a warning alias
    sde = VPSDE()
    t = torch.tensor([0.01, 0.3, 0.9], dtype=torch.float64)
    lam = sde.half_log_snr(t)
    torch.testing.assert_close(lam, torch.log(sde.alpha(t) / sde.sigma(t)))
    torch.testing.assert_close(sde.snr(t), sde.alpha(t) ** 2 / sde.sigma(t) ** 2)
    with pytest.warns(DeprecationWarning, match="half the log-SNR"):
        assert torch.equal(sde.log_snr(t), lam)
    with pytest.warns(DeprecationWarning, match="t_of_half_log_snr"):
        torch.testing.assert_close(sde.t_of_log_snr(lam), t)
    with pytest.warns(DeprecationWarning, match="half_log_snr_range"):
        assert sde.log_snr_range() == sde.half_log_snr_range()


def test_times_checked_trusts_times_inside_and_checks_outside():
    from sdegen.sde.base import times_checked

    sde = VPSDE()
    bad = torch.tensor([2.0])
    with pytest.raises(ValueError, match=r"t must lie in \[t_min, T\]"):
        sde.alpha(bad)
    with times_checked():  # a solver's loop over a grid it checked once
        assert sde.check_t(bad) is bad
    with pytest.raises(RuntimeError), times_checked():
        raise RuntimeError("a failing step")
    with pytest.raises(ValueError, match=r"t must lie in \[t_min, T\]"):
        sde.alpha(bad)  # the flag is reset after the context, also after an error
