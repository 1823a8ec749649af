"""PF-ODE Euler and RK4 (sdegen.solvers.pf_ode): their steps take the velocity through the
denoiser, A x + B D (issue 13, per-step overhead), so they are checked against independent
solves of the PF-ODE through the score: torchdiffeq's own euler and rk4 of `ode_drift` (to
1e-12 relative in float64) for every SDE, parametrization and a guided model; k-diffusion's
Euler update written out on EDM; and the closed-form PF-ODE flow of Gaussian data, at which
Euler converges at order 1 and RK4 at order 4."""

from __future__ import annotations

import pytest
import torch
import torchdiffeq

import sdegen
from sdegen import GaussianScore, ScoreModel
from sdegen.models.adapters import KDiffusionModel
from sdegen.sde import EDMSDE, VESDE, VPSDE
from sdegen.solvers.guidance import guided_model
from sdegen.solvers.pf_ode import RK4, Euler, ode_drift

from .conftest import mixture

METHODS = ["euler", "rk4"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _torchdiffeq(model, sde, noise: torch.Tensor, ts: torch.Tensor, method: str):
    """torchdiffeq.odeint of the score-form velocity over the grid, the model's time kept in
    [t_min, T] (as the steps keep it); every state, (n + 1, B, *D)."""

    def func(t, y):
        tc = t.clamp(sde.t_min, sde.T)
        return ode_drift(model, sde, y, tc.expand(y.shape[0]).to(y.dtype))

    return torchdiffeq.odeint(func, noise, ts.to(noise.dtype), method=method)


def _close(got: torch.Tensor, want: torch.Tensor, rtol: float) -> None:
    # relative to each state's scale: entries near 0 carry the rounding of the large ones
    scale = want.abs().amax(dim=tuple(range(1, want.ndim)), keepdim=True)
    err = ((got - want).abs() / scale).max().item()
    assert err <= rtol, f"max error / scale {err:.3g} > {rtol:.1g}"


def _run(model, sde, method: str, steps: int, seed: int = 0, **kw):
    noise = sde.prior_sample((8, 2), generator=_gen(seed), dtype=torch.float64)
    r = sdegen.sample(
        model, sde, noise.shape, method=method, steps=steps, noise=noise, denoise_final=False,
        return_trajectory=True, **kw,
    )  # fmt: skip
    return noise, r


@pytest.mark.parametrize("method", METHODS)
def test_steps_are_torchdiffeq_of_the_score_velocity_for_every_sde(sde, method):
    model = mixture(sde)
    noise, r = _run(model, sde, method, steps=6)
    want = _torchdiffeq(model, sde, noise, r.ts, method)
    _close(r.trajectory, want, 1e-12)
    assert r.nfe == 6 * (1 if method == "euler" else 4)


class _Net(torch.nn.Module):
    """A fixed smooth nonlinear network, (B, 2) and (B,) -> (B, 2)."""

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        w = torch.tensor([[0.7, -0.3], [0.2, 0.9]], dtype=x.dtype)
        return torch.tanh(x @ w) * (1 + 0.1 * c[:, None]) + 0.05 * x


@pytest.mark.parametrize("parametrization", ["eps", "x0", "v", "score", "edm"])
@pytest.mark.parametrize("sde_cls", [VPSDE, EDMSDE])
def test_every_parametrization_integrates_its_own_score(parametrization, sde_cls):
    # the denoiser of an eps-, v- or score-network reaches the step through its conversions,
    # the torchdiffeq reference through the score's: the same field
    sde = sde_cls()
    model = ScoreModel(_Net(), sde, parametrization, sigma_data=0.5)
    for method in METHODS:
        noise, r = _run(model, sde, method, steps=5, seed=1)
        _close(r.trajectory, _torchdiffeq(model, sde, noise, r.ts, method), 1e-12)


def test_a_guided_model_integrates_its_guided_score():
    sde = VPSDE()
    model = mixture(sde)  # its component index is a class label
    y = torch.tensor([0, 1] * 4)
    guided = guided_model(model, sde, 8, y=y, guidance=2.5)
    for method in METHODS:
        noise, r = _run(model, sde, method, steps=5, seed=2, y=y, guidance=2.5)
        _close(r.trajectory, _torchdiffeq(guided, sde, noise, r.ts, method), 1e-12)
        # and guidance changed the path: the unguided conditional one differs
        _, plain = _run(model, sde, method, steps=5, seed=2, y=y)
        assert (plain.x - r.x).abs().max() > 1e-3


def test_euler_on_edm_is_k_diffusions_euler():
    # EDM: alpha = 1, sigma = t, so the PF-ODE is dx/dt = (x - D) / t (Karras et al. 2022,
    # eq. 4 with Algorithm 1's d); k-diffusion's sample_euler step, written out
    sde = EDMSDE()

    def denoiser(x, sigma):
        return torch.sin(x) / (1 + sigma[:, None] ** 2)

    model = KDiffusionModel(denoiser, sde)
    noise, r = _run(model, sde, "euler", steps=12, seed=3)
    x, ts = noise, r.ts.tolist()
    for i in range(len(ts) - 1):
        sigma = torch.full((8,), ts[i], dtype=torch.float64)
        d = (x - denoiser(x, sigma)) / ts[i]
        x = x + d * (ts[i + 1] - ts[i])
        _close(r.trajectory[i + 1], x, 1e-13)


def test_callback_denoised_is_the_denoiser_at_each_step_start():
    sde = VPSDE()
    model = mixture(sde)
    for method in METHODS:
        seen = []
        _, r = _run(model, sde, method, steps=4, seed=4, callback=seen.append)
        assert [info["i"] for info in seen] == [0, 1, 2, 3]
        for info in seen:
            i = info["i"]
            x, t = r.trajectory[i], torch.full((8,), float(r.ts[i]), dtype=torch.float64)
            # Tweedie's x0 from the score, computed independently of the step
            a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
            _close(info["denoised"], (x + s**2 * model.score(x, t)) / a, 1e-12)


@pytest.mark.parametrize("kind", ["vp", "ve", "edm"])
def test_increment_coefficients_are_closed_forms(kind):
    b0, b1, s0, s1 = 0.2, 15.0, 0.02, 40.0
    sde = {"vp": VPSDE(beta_min=b0, beta_max=b1), "ve": VESDE(s0, s1), "edm": EDMSDE()}[kind]
    ts = sdegen.solvers.schedules.get_schedule(sde, "karras", 5)
    x = torch.zeros(3, 2)
    euler = Euler(None, sde, ts)
    c = euler.coefs(x)
    t, dt = ts[:-1], ts[1:] - ts[:-1]
    # f = 0 and alpha = 1 (VE, EDM): dt g^2 / (2 sigma^2) (x - D) alone
    assert euler.unit == (kind != "vp")
    if kind == "edm":  # g^2 = 2 t, sigma = t: dt / t
        want = dt / t
    elif kind == "ve":  # sigma = s0 (s1 / s0)^t: g^2 = 2 sigma^2 log(s1 / s0)
        want = dt * torch.tensor(s1 / s0).log()
    else:  # A = dt (f + g^2 / (2 sigma^2)), B = -dt alpha g^2 / (2 sigma^2); g^2 = beta = -2 f
        beta = b0 + t * (b1 - b0)
        log_alpha = -0.5 * (b0 * t + 0.5 * (b1 - b0) * t**2)
        s2 = -torch.expm1(2 * log_alpha)
        a = torch.stack(c["A_start"])
        # f + g^2 / (2 sigma^2) = beta alpha^2 / (2 sigma^2): small near T, where the step's
        # sum cancels (rounding 1e-16 of beta / 2 is then ~4e-13 of A)
        want_a = dt * beta * (2 * log_alpha).exp() / (2 * s2)
        torch.testing.assert_close(a, want_a, rtol=1e-12, atol=0)
        want = -dt * log_alpha.exp() * beta / (2 * s2)
    got = torch.stack(c["c_start" if euler.unit else "B_start"])
    torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
    # RK4's stages sit at a third and two thirds of each step, its last at the step's end
    rk4 = RK4(None, sde, ts)
    rk4.coefs(x)
    want = {"stage0": t + dt / 3, "stage1": t + dt * (2 / 3), "end": ts[1:]}
    for name, times in want.items():
        got = torch.tensor(rk4.rows[name].times)
        torch.testing.assert_close(got, times.clamp(sde.t_min, sde.T), rtol=1e-15, atol=0)


def _gaussian_flow(sde, mean, var, x_T, t):
    """The PF-ODE's exact flow for N(mean, diag(var)) data: x_t - alpha_t mean =
    sqrt(C_t / C_T) (x_T - alpha_T mean), C_t = alpha_t^2 var + sigma_t^2 (each C_t solves
    dC/dt = 2 f C + g^2, so sqrt(C_t) z solves dy/dt = (f + g^2 / (2 C)) y)."""

    def c(s):
        s = torch.full((1,), float(s), dtype=torch.float64)
        return sde.alpha(s) ** 2 * var + sde.sigma(s) ** 2

    a_t, a_T = (sde.alpha(torch.tensor([float(s)])) for s in (t, sde.T))
    return a_t * mean + (c(t) / c(sde.T)).sqrt() * (x_T - a_T * mean)


@pytest.mark.parametrize("sde_cls", [VPSDE, EDMSDE])
def test_euler_and_rk4_converge_at_their_orders_to_the_gaussian_flow(sde_cls):
    sde = sde_cls()
    mean, var = torch.tensor([0.5, -1.0]), torch.tensor([0.3, 1.5])
    model = GaussianScore(mean, torch.diag(var), sde)
    x_T = sde.prior_sample((4, 2), generator=_gen(5), dtype=torch.float64)
    want = _gaussian_flow(sde, mean, var, x_T, sde.t_min)
    for method, order, sizes in (("euler", 1, (40, 80, 160)), ("rk4", 4, (10, 20, 40))):
        errors = []
        for n in sizes:
            r = sdegen.sample(
                model, sde, x_T.shape, method=method, steps=n, noise=x_T, denoise_final=False
            )
            errors.append((r.x - want).abs().max().item())
        rates = [torch.tensor(e0 / e1).log2().item() for e0, e1 in zip(errors, errors[1:])]
        assert all(abs(rate - order) < 0.35 for rate in rates), (method, errors, rates)
