"""k-diffusion's sampler names with k-diffusion's meaning (sdegen/solvers/kdiffusion.py and the
K_METHODS entries of METHODS), checked three ways:

- against k-diffusion 0.1.1's own `sampling.py` (skipped where k-diffusion is not installed; CI's
  test extra does not have it), on the EDM SDE, where sdegen's variables are k-diffusion's, and
  on VP through the denoiser adapter x~ = x / alpha, sigma~ = sigma / alpha, with the same
  prior draw and the same injected noise, to 1e-10 in float64 (also two existing names:
  dpmpp_2m and dpmpp_sde are k-diffusion's dpmpp_2m and dpmpp_2m_sde(solver_type="heun") when
  their last step keeps its order);
- DEIS against diffusers' closed-form log-rho coefficients (copied below, no import needed);
- always: on the analytic Gaussian mixture, each deterministic sampler converges to a tight
  dopri5 solve of the PF-ODE at its order, and the ancestral ones draw the mixture's moments.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import sdegen
from sdegen.sde import EDMSDE, VPSDE
from sdegen.solvers import METHODS

from .conftest import mixture

F64 = torch.float64
SHAPE = (16, 2)
NEW = [
    "k_euler",
    "euler_ancestral",
    "k_heun",
    "dpm_2",
    "dpm_2_ancestral",
    "dpmpp_2s_ancestral",
    "lms",
    "deis",
]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _load_k_sampling():
    """k_diffusion/sampling.py alone (the package's __init__ needs torchvision), beside a
    stand-in k_diffusion.utils with the one function it uses, as benchmarks/_peers_adapters.py
    loads it; None when k-diffusion or a module sampling.py imports is missing."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None
    pkg_dir = Path(spec.submodule_search_locations[0])
    saved = {k: sys.modules.get(k) for k in ("k_diffusion", "k_diffusion.utils")}
    pkg, utils = types.ModuleType("k_diffusion"), types.ModuleType("k_diffusion.utils")
    pkg.__path__ = [str(pkg_dir)]
    utils.append_dims = lambda x, n: x.reshape(x.shape + (1,) * (n - x.ndim))  # type: ignore[attr-defined]
    pkg.utils = utils  # type: ignore[attr-defined]
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = pkg, utils
    try:
        sspec = importlib.util.spec_from_file_location(
            "k_diffusion.sampling", pkg_dir / "sampling.py"
        )
        module = importlib.util.module_from_spec(sspec)
        sspec.loader.exec_module(module)
    except ImportError:
        return None
    finally:
        for k, v in saved.items():  # leave sys.modules as it was
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


KS = _load_k_sampling()
needs_k = pytest.mark.skipif(KS is None, reason="k-diffusion 0.1.1 is not installed")

# sdegen name -> (k-diffusion sampler, sdegen options, k-diffusion options); the ancestral and
# SDE ones at k-diffusion's default eta = 1
K_PAIRS = {
    "k_euler": ("sample_euler", {}, {}),
    "euler_ancestral": ("sample_euler_ancestral", {}, {}),
    "k_heun": ("sample_heun", {}, {}),
    "dpm_2": ("sample_dpm_2", {}, {}),
    "dpm_2_ancestral": ("sample_dpm_2_ancestral", {}, {}),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", {}, {}),
    "lms": ("sample_lms", {}, {}),
    # existing names with k-diffusion's meaning once the last step keeps its order
    "dpmpp_2m": ("sample_dpmpp_2m", {"lower_order_final": False}, {}),
    "dpmpp_sde": ("sample_dpmpp_2m_sde", {"lower_order_final": False}, {"solver_type": "heun"}),
}


@needs_k
@pytest.mark.parametrize("sde_cls", [EDMSDE, VPSDE], ids=["edm", "vp"])
@pytest.mark.parametrize("name", list(K_PAIRS))
def test_matches_k_diffusion(name, sde_cls):
    """sdegen's N steps and final denoising = k-diffusion on the levels sigma~(ts) and 0 (LMS,
    which extrapolates into 0, without the denoising step and without the 0), same evaluations."""
    sde = sde_cls()
    model = mixture(sde)
    k_name, options, k_options = K_PAIRS[name]
    x_T = sde.prior_sample(SHAPE, generator=_gen(0), dtype=F64)
    denoise = name != "lms"
    r = sdegen.sample(
        model, sde, SHAPE, method=name, steps=8, schedule="karras", noise=x_T,
        generator=_gen(3), denoise_final=denoise, **options,
    )  # fmt: skip
    sig = sde.sigma(r.ts) / sde.alpha(r.ts)
    sigmas = torch.cat([sig, sig.new_zeros(1)]) if denoise else sig
    calls = [0]

    def k_model(x, sigma):  # k-diffusion's D(x~, sigma~) for the SDE's model
        calls[0] += 1
        t = sde.t_of_half_log_snr(-torch.log(sigma.to(F64)))
        return model.denoise(sde.alpha(t)[:, None] * x, t)

    g = _gen(3)  # sdegen draws one N(0, I) per noisy step from its generator, in step order
    kw = dict(k_options)
    if "ancestral" in k_name or "sde" in k_name:
        kw["noise_sampler"] = lambda s, s_next: torch.randn(SHAPE, generator=g, dtype=F64)
    x_k = getattr(KS, k_name)(k_model, x_T / sde.alpha(r.ts[:1]), sigmas, disable=True, **kw)
    if not denoise:
        x_k = x_k * sde.alpha(r.ts[-1:])
    assert calls[0] == r.nfe
    torch.testing.assert_close(r.x, x_k, rtol=1e-10, atol=1e-10)


def _diffusers_deis(d_list: list[torch.Tensor], rhos: list[float], x: torch.Tensor):
    """diffusers 0.42 DEISMultistepScheduler's log-rho update in rho = sigma~ (its
    multistep_deis_{second,third}_order_update, deis_first_order_update), for x~ and the
    noise predictions d at rhos[0] (current), rhos[1], ... (older); steps to rho_t."""
    rho_t, r = rhos[-1], rhos[:-1]
    log = np.log
    if len(d_list) == 1:
        return x + (rho_t - r[0]) * d_list[0]
    if len(d_list) == 2:

        def ind2(t, b, c):
            return t * (-log(c) + log(t) - 1) / (log(b) - log(c))

        c1 = ind2(rho_t, r[0], r[1]) - ind2(r[0], r[0], r[1])
        c2 = ind2(rho_t, r[1], r[0]) - ind2(r[0], r[1], r[0])
        return x + c1 * d_list[0] + c2 * d_list[1]

    def ind3(t, b, c, d):
        num = t * (
            log(c) * (log(d) - log(t) + 1) - log(d) * log(t) + log(d) + log(t) ** 2 - 2 * log(t) + 2
        )
        return num / ((log(b) - log(c)) * (log(b) - log(d)))

    c1 = ind3(rho_t, r[0], r[1], r[2]) - ind3(r[0], r[0], r[1], r[2])
    c2 = ind3(rho_t, r[1], r[2], r[0]) - ind3(r[0], r[1], r[2], r[0])
    c3 = ind3(rho_t, r[2], r[0], r[1]) - ind3(r[0], r[2], r[0], r[1])
    return x + c1 * d_list[0] + c2 * d_list[1] + c3 * d_list[2]


@pytest.mark.parametrize("steps", [6, 20])
def test_deis_matches_diffusers_log_rho_coefficients(steps):
    """DEIS-3 = diffusers' DEIS (order 3, lower_order_final below 15 steps) on the same grid."""
    sde = EDMSDE()
    model = mixture(sde)
    x_T = sde.prior_sample(SHAPE, generator=_gen(0), dtype=F64)
    r = sdegen.sample(model, sde, SHAPE, method="deis", steps=steps, noise=x_T, denoise_final=False)
    rho = (sde.sigma(r.ts) / sde.alpha(r.ts)).tolist()
    x, ds = x_T.clone(), []
    for i in range(steps):
        t = torch.full((SHAPE[0],), float(r.ts[i]), dtype=F64)
        ds.insert(0, (x - model.denoise(x, t)) / rho[i])
        k = min(i + 1, 3, steps - i if steps < 15 else 3)
        x = _diffusers_deis(ds[:k], rho[i - k + 1 : i + 1][::-1] + [rho[i + 1]], x)
    torch.testing.assert_close(r.x, x, rtol=1e-10, atol=1e-10)


def test_euler_names_are_ddim():
    """k-diffusion's Euler in sigma~ is DDIM at eta 0, Euler ancestral DDIM at eta 1 (eta the
    same parameter): the same numbers on the same grid."""
    sde = VPSDE()
    model = mixture(sde)
    for name, eta in (("k_euler", 0.0), ("euler_ancestral", 1.0)):
        a = sdegen.sample(
            model, sde, SHAPE, method=name, steps=7, generator=_gen(1), schedule="karras"
        )
        b = sdegen.sample(
            model, sde, SHAPE, method="ddim", steps=7, generator=_gen(1), schedule="karras", eta=eta
        )
        torch.testing.assert_close(a.x, b.x, rtol=1e-12, atol=1e-12)


def test_specs_say_cost_grid_and_noise():
    # the measured default grid (methods.py); euler_ancestral, a reverse-SDE sampler that loses
    # on it at NFE 50, keeps the Karras grid
    for name in NEW:
        want = "karras" if name == "euler_ancestral" else "log_snr_jump"
        assert METHODS[name].schedule == want, name
    assert {n: METHODS[n].nfe(10, {}) for n in NEW} == {
        "k_euler": 10, "euler_ancestral": 10, "k_heun": 20, "dpm_2": 20,
        "dpm_2_ancestral": 20, "dpmpp_2s_ancestral": 20, "lms": 10, "deis": 10,
    }  # fmt: skip
    stochastic = {n for n in NEW if METHODS[n].stochastic}
    assert stochastic == {"euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral"}
    for name in ("euler", "heun", "dpmpp_sde"):  # the sdegen names k-diffusion reads otherwise
        assert "k-diffusion" in sdegen.available()[name]


# ---- convergence to the exact PF-ODE solution on the analytic mixture -------------------------

# (steps, 2 * steps) in the asymptotic range on the EDM SDE's Karras grid, and the order
ORDERS = {
    "k_euler": (512, 1.0),
    "k_heun": (128, 2.0),
    "dpm_2": (128, 2.0),
    "lms": (256, 4.0),
    "deis": (128, 3.0),
}


@pytest.fixture(scope="module")
def exact():
    sde = EDMSDE()
    model = mixture(sde)
    x_T = sde.prior_sample(SHAPE, generator=_gen(0), dtype=F64)
    ref = sdegen.sample(
        model, sde, SHAPE, method="dopri5", noise=x_T, rtol=1e-12, atol=1e-12, denoise_final=False
    )
    return sde, model, x_T, ref.x


@pytest.mark.parametrize("name", list(ORDERS))
def test_converges_at_its_order(name, exact):
    sde, model, x_T, x_ref = exact
    n, order = ORDERS[name]
    errs = []
    for steps in (n, 2 * n):
        r = sdegen.sample(
            model,
            sde,
            SHAPE,
            method=name,
            steps=steps,
            noise=x_T,
            denoise_final=False,
            schedule="karras",
        )
        errs.append(float((r.x - x_ref).pow(2).mean().sqrt()))
    observed = math.log2(errs[0] / errs[1])
    assert abs(observed - order) <= 0.5, f"{name}: errors {errs}, observed order {observed:.2f}"


@pytest.mark.parametrize("name", ["euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral"])
def test_ancestral_samples_have_the_mixture_moments(name):
    sde = EDMSDE()
    model = mixture(sde)
    n = 4000
    x = sdegen.sample(model, sde, (n, 2), method=name, steps=50, generator=_gen(11)).x
    mean, cov = model.mean(), model.cov()
    se = (torch.diagonal(cov) / n).sqrt()
    assert ((x.mean(0) - mean).abs() <= 4 * se).all(), f"{name}: mean {x.mean(0)} vs {mean}"
    # sample covariance entries: standard error sqrt((C_ii C_jj + C_ij^2) / n)
    d = torch.diagonal(cov)
    se_cov = ((d[:, None] * d[None, :] + cov**2) / n).sqrt()
    assert ((torch.cov(x.T) - cov).abs() <= 5 * se_cov).all(), f"{name}: cov {torch.cov(x.T)}"
