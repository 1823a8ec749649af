"""High-order exponential integrators: quadrature weights, exactness, orders, equivalences."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad

import sdegen
from sdegen import GaussianScore
from sdegen.sde import EDMSDE, VESDE, VPSDE
from sdegen.solvers import METHODS, get_schedule
from sdegen.solvers.counting import CountingModel
from sdegen.solvers.exp_quadrature import exp_step, exp_weights
from sdegen.solvers.grid import solve

from .conftest import SDE_FACTORIES

NEW_ODE = ["dpmpp_3m", "unipc", "dpmpp_2s", "dpmpp_3s"]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("h, c", [(0.3, 1.0), (2.0, 2.0), (1e-3, 1.0), (5.0, 1.5), (40.0, 1.0)])
def test_exp_weights_integrate_polynomials_exactly(h, c):
    nodes = [0.0, -0.4 * h, -0.9 * h, h]
    w = exp_weights(nodes, h, c)
    for k in range(4):
        exact = quad(lambda u, k=k: c * math.exp(-c * (h - u)) * u**k, 0, h, epsrel=1e-13)[0]
        approx = sum(wj * n**k for wj, n in zip(w, nodes))
        assert approx == pytest.approx(exact, rel=1e-9, abs=1e-300)


def test_exp_weights_rejects_bad_arguments():
    with pytest.raises(ValueError, match="h > 0"):
        exp_weights([0.0], 0.0)
    with pytest.raises(ValueError, match="nodes"):
        exp_weights([], 1.0)


def _gauss(sde, mean=(0.5, -1.0), var=(0.3, 2.0)):
    return GaussianScore(torch.tensor(mean), torch.diag(torch.tensor(var)), sde)


def _exact_ode_end(sde, model_mean, var, x_T):
    """The PF-ODE maps N(mu, diag var) marginals affinely: x_t = a_t mu + sqrt(a^2 v + s^2) z."""
    mu, v = torch.tensor(model_mean), torch.tensor(var)
    T, t0 = torch.tensor([sde.T]), torch.tensor([sde.t_min])
    aT, sT, a0, s0 = sde.alpha(T), sde.sigma(T), sde.alpha(t0), sde.sigma(t0)
    z = (x_T - aT * mu) / torch.sqrt(aT**2 * v + sT**2)
    return a0 * mu + torch.sqrt(a0**2 * v + s0**2) * z


@pytest.mark.parametrize("method", NEW_ODE + ["dpm_adaptive"])
@pytest.mark.parametrize("sde_name", ["vp_linear", "ve", "edm", "subvp"])
def test_exact_for_a_point_mass(method, sde_name):
    # x0(x, t) = mu exactly, so the exponential integrators have no error at any step size.
    sde = SDE_FACTORIES[sde_name]()
    model = GaussianScore(torch.tensor([0.7, -0.2]), torch.zeros(2, 2), sde)
    x_T = sde.prior_sample((16, 2), generator=_gen(), dtype=torch.float64)
    kw = {} if method == "dpm_adaptive" else {"steps": 3}
    r = sdegen.sample(model, sde, (16, 2), method=method, noise=x_T, denoise_final=False, **kw)
    expected = _exact_ode_end(sde, [0.7, -0.2], [0.0, 0.0], x_T)
    torch.testing.assert_close(r.x, expected, rtol=1e-9, atol=1e-9)


def _order(method, sde, steps=(32, 64), **options):
    model = _gauss(sde)
    x_T = sde.prior_sample((64, 2), generator=_gen(1), dtype=torch.float64)
    exact = _exact_ode_end(sde, [0.5, -1.0], [0.3, 2.0], x_T)
    errs = []
    for n in steps:
        r = sdegen.sample(
            model, sde, (64, 2), method=method, steps=n, schedule="log_snr", noise=x_T,
            denoise_final=False, **options,
        )  # fmt: skip
        errs.append(float((r.x - exact).abs().max()))
    return math.log2(errs[0] / errs[1]), errs


CASES = [
    ("dpmpp_3m", {}, 3),
    ("dpmpp_3m", {"order": 2}, 2),
    ("unipc", {"order": 2}, 3),
    ("dpmpp_2s", {}, 2),
    ("dpmpp_3s", {}, 3),
]


@pytest.mark.parametrize(
    "method, options, order, sde_name",
    [(*c, s) for c in CASES for s in ("vp_linear", "ve")]
    + [("dpmpp_3m", {"order": 4}, 4, "vp_linear")],
)
def test_convergence_order_on_a_gaussian(method, options, order, sde_name):
    # Observed between 32 and 64 log-SNR steps. The first multistep steps run at lower order for
    # lack of history, so far below this step size the order would fall to the startup's; on VE
    # order 4 measures 3.4 here and 3.0 between 64 and 128 steps for that reason.
    observed, errs = _order(method, SDE_FACTORIES[sde_name](), **options)
    assert observed > order - 0.35, (observed, errs)


@pytest.mark.parametrize("sde_name", ["vp_linear", "ve"])
def test_default_unipc_is_order_3_with_an_order_4_corrector(sde_name):
    # Between 64 and 128 log-SNR steps the default (predictor order 3) observes 3.7 on both SDEs,
    # order 2 (corrector order 3) 3.0; nearer 32 steps the startup steps hold both near 3.
    observed, errs = _order("unipc", SDE_FACTORIES[sde_name](), steps=(64, 128))
    assert observed > 3.5, (observed, errs)


def test_exp_step_integrates_the_interpolating_polynomial():
    # Independent check of one multistep update: scipy quadrature of the Lagrange polynomial
    # through three denoiser outputs, element by element.
    h, h0, h1, ratio, alpha_s = 0.7, 0.5, 0.9, 0.8, 1.3
    g = _gen(3)
    x = torch.randn(4, generator=g)
    m0, m1, m2 = (torch.randn(4, generator=g) for _ in range(3))
    nodes = [-(h0 + h1), -h0, 0.0]
    got = exp_step(x, [m2, m1, m0], nodes, h, ratio, alpha_s, 0.0)
    for j in range(4):
        coeffs = np.polyfit(nodes, [float(m2[j]), float(m1[j]), float(m0[j])], 2)
        integral = quad(lambda u, c=coeffs: math.exp(u - h) * np.polyval(c, u), 0, h, epsrel=1e-13)[
            0
        ]
        assert float(got[j]) == pytest.approx(ratio * float(x[j]) + alpha_s * integral, rel=1e-10)


def test_3m_second_difference_weight_is_twice_the_published_phi3():
    # DPM-Solver++(3M) as written in k-diffusion and diffusers weights D2 = (D1_0 - D1_1)/(r0+r1)
    # by phi_3 = phi_2/h - 1/2; the quadratic interpolant's exact integral weights it by 2 phi_3.
    h, h0, h1 = 0.7, 0.5, 0.9
    g = _gen(4)
    x = torch.randn(3, generator=g)
    m0, m1, m2 = (torch.randn(3, generator=g) for _ in range(3))
    r0, r1 = h0 / h, h1 / h
    d1_0, d1_1 = (m0 - m1) / r0, (m1 - m2) / r1
    d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi1 = math.expm1(-h)
    phi2 = phi1 / h + 1
    phi3 = phi2 / h - 0.5
    base = 0.8 * x - 1.3 * phi1 * m0 + 1.3 * phi2 * d1
    got = exp_step(x, [m2, m1, m0], [-(h0 + h1), -h0, 0.0], h, 0.8, 1.3, 0.0)
    torch.testing.assert_close(got, base - 2 * 1.3 * phi3 * d2, rtol=1e-12, atol=1e-12)
    assert float((got - (base - 1.3 * phi3 * d2)).abs().max()) > 1e-3


def test_sde_solver_order_one_is_ddim_with_eta_one():
    sde = VPSDE()
    model = _gauss(sde)
    kw = dict(steps=8, schedule="log_snr", dtype=torch.float64)
    a = sdegen.sample(model, sde, (50, 2), method="dpmpp_sde", order=1, generator=_gen(4), **kw)
    b = sdegen.sample(model, sde, (50, 2), method="ddim", eta=1.0, generator=_gen(4), **kw)
    torch.testing.assert_close(a.x, b.x, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("sde_name", ["vp_linear", "ve"])
def test_sde_solver_reaches_the_gaussian_marginal(sde_name):
    sde = SDE_FACTORIES[sde_name]()
    model = _gauss(sde)
    r = sdegen.sample(
        model, sde, (20000, 2), method="dpmpp_sde", steps=100, generator=_gen(5),
        dtype=torch.float64,
    )  # fmt: skip
    # sampling std of the variance estimate: sqrt(2 / 20000) = 1%; measured bias <= 1.5%
    torch.testing.assert_close(r.x.mean(0), torch.tensor([0.5, -1.0]), atol=0.04, rtol=0)
    torch.testing.assert_close(r.x.var(0), torch.tensor([0.3, 2.0]), atol=0, rtol=0.04)


def test_edm_sde_without_churn_is_heun():
    sde = EDMSDE()
    model = _gauss(sde)
    kw = dict(steps=7, dtype=torch.float64, noise=sde.prior_sample((20, 2), generator=_gen(6)))
    a = sdegen.sample(model, sde, (20, 2), method="edm_sde", churn=0.0, **kw)
    b = sdegen.sample(model, sde, (20, 2), method="heun", **kw)
    torch.testing.assert_close(a.x, b.x, rtol=1e-10, atol=1e-10)
    assert a.nfe == b.nfe == 2 * 7 - 1 + 1


@pytest.mark.parametrize("sde_name", ["vp_linear", "ve"])
def test_edm_sde_with_churn_reaches_the_gaussian_marginal(sde_name):
    sde = SDE_FACTORIES[sde_name]()
    model = _gauss(sde)
    r = sdegen.sample(
        model, sde, (20000, 2), method="edm_sde", steps=100, churn=30.0, s_tmin=0.0,
        s_tmax=1e9, s_noise=1.0, generator=_gen(7), dtype=torch.float64,
    )  # fmt: skip
    # churned Heun is biased at finite steps (measured +2.3% to +2.8% in the variance at 100
    # steps, +7% at 40); the tolerance adds 4 sampling std (1% each) to that
    torch.testing.assert_close(r.x.mean(0), torch.tensor([0.5, -1.0]), atol=0.04, rtol=0)
    torch.testing.assert_close(r.x.var(0), torch.tensor([0.3, 2.0]), atol=0, rtol=0.07)


@pytest.mark.parametrize("sde_name", ["vp_linear", "ve", "edm"])
def test_adaptive_error_falls_with_tolerance_and_nfe_is_counted(sde_name):
    sde = SDE_FACTORIES[sde_name]()
    model = _gauss(sde)
    x_T = sde.prior_sample((64, 2), generator=_gen(8), dtype=torch.float64)
    exact = _exact_ode_end(sde, [0.5, -1.0], [0.3, 2.0], x_T)
    errs, nfes = [], []
    for rtol in (1e-2, 1e-6):
        calls = CountingModel(model)
        r = sdegen.sample(
            calls, sde, (64, 2), method="dpm_adaptive", rtol=rtol, atol=rtol, noise=x_T,
            denoise_final=False,
        )  # fmt: skip
        assert r.nfe == calls.nfe  # the reported NFE is the counted one, rejections included
        errs.append(float((r.x - exact).abs().max()))
        nfes.append(r.nfe)
    assert errs[1] < errs[0] / 10 and nfes[1] > nfes[0], (errs, nfes)
    assert errs[1] < 1e-5


def test_new_method_options_are_checked():
    sde = VPSDE()
    model = _gauss(sde)
    with pytest.raises(ValueError, match="order must be an integer in 1..4"):
        sdegen.sample(model, sde, (4, 2), method="dpmpp_3m", steps=3, order=7)
    with pytest.raises(ValueError, match="eta"):
        sdegen.sample(model, sde, (4, 2), method="dpmpp_3m", steps=3, eta=-1.0)
    with pytest.raises(ValueError, match="r must be in"):
        sdegen.sample(model, sde, (4, 2), method="dpmpp_2s", steps=3, r=1.5)
    with pytest.raises(ValueError, match="churn"):
        sdegen.sample(model, sde, (4, 2), method="edm_sde", steps=3, churn=float("nan"))


def test_multistep_with_record_and_float32_runs_on_ve():
    sde = VESDE()
    model = _gauss(sde)
    r = sdegen.sample(model, sde, (8, 2), method="unipc", steps=5, return_trajectory=True)
    assert r.trajectory.shape == (7, 8, 2) and r.x.dtype == torch.float32


def test_3m_order_one_is_ddim():
    sde = VPSDE()
    model = CountingModel(_gauss(sde))
    ts = get_schedule(sde, "log_snr", 5)
    x = sde.prior_sample((10, 2), generator=_gen(9), dtype=torch.float64)
    torch.testing.assert_close(
        solve(METHODS["dpmpp_3m"], model, sde, x, ts, order=1),
        solve(METHODS["ddim"], model, sde, x, ts),
    )
