"""The final denoising step as a jump to zero noise from the grid's last time, and the default
grid that places that time ("log_snr_jump")."""

from __future__ import annotations

import math

import pytest
import torch

import sdegen
from sdegen.sde import EDMSDE, VESDE, VPSDE
from sdegen.solvers import get_schedule
from sdegen.solvers.schedules import (
    JUMP_POWER,
    JUMP_SCALE,
    check_grid,
    log_snr_jump,
    uniform_log_snr,
)

from .conftest import mixture

SDES = {"vp": VPSDE, "ve": VESDE, "edm": EDMSDE}


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("steps", [1, 4, 9, 19])
def test_log_snr_jump_levels(name, steps):
    sde = SDES[name]()
    ts = get_schedule(sde, "log_snr_jump", steps, denoise_final=True)
    lam = sde.half_log_snr(ts)
    lo, hi = sde.half_log_snr_range()
    last = -math.log(JUMP_SCALE / (steps + 1) ** JUMP_POWER)  # sigma/alpha = 5.5 / levels^1.5
    assert ts.shape == (steps + 1,) and float(ts[0]) == sde.T
    assert bool((ts[1:] < ts[:-1]).all())
    assert float(ts[-1]) > sde.t_min
    torch.testing.assert_close(float(lam[-1]), last, rtol=0, atol=1e-9)
    # uniform in lambda from lambda(T) to the jump level
    torch.testing.assert_close(lam, torch.linspace(lo, last, steps + 1), rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", list(SDES))
def test_log_snr_jump_reaches_t_min_on_long_grids_and_without_denoising(name):
    sde = SDES[name]()
    long = log_snr_jump(sde, 2000)
    assert float(long[-1]) == sde.t_min
    torch.testing.assert_close(long, uniform_log_snr(sde, 2000), rtol=1e-12, atol=0)
    plain = get_schedule(sde, "log_snr_jump", 7, denoise_final=False)
    assert torch.equal(plain, uniform_log_snr(sde, 7))


def test_final_denoising_at_the_grids_last_time():
    sde = VPSDE()
    truth = mixture(sde)
    res = sdegen.sample(
        truth,
        sde,
        (64, 2),
        method="dpmpp_2m",
        nfe=5,
        return_trajectory=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert res.nfe == 5 and len(res.ts) == 5  # 4 steps, then the jump from ts[-1]
    assert float(res.ts[-1]) > sde.t_min
    t_last = torch.full((64,), float(res.ts[-1]))
    assert torch.equal(res.x, truth.denoise(res.trajectory[-2], t_last))


def test_a_given_grid_may_end_above_t_min_only_with_a_final_denoising_step():
    sde = VPSDE()
    truth = mixture(sde)
    ts = torch.tensor([sde.T, 0.5, 0.2])
    res = sdegen.sample(truth, sde, (8, 2), schedule=ts, generator=torch.Generator().manual_seed(0))
    assert res.nfe == 3 and torch.equal(res.ts, ts)
    with pytest.raises(ValueError, match="to t_min = 0.001, got 1 to 0.2"):
        sdegen.sample(truth, sde, (8, 2), schedule=ts, denoise_final=False)
    below = torch.tensor([sde.T, 0.5, 1e-4])
    with pytest.raises(ValueError, match="a last time >= t_min"):
        check_grid(sde, below, denoise_final=True)


def _kdiffusion():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "_peers_adapters.py"
    spec = importlib.util.spec_from_file_location("_peers_adapters_test_jump", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ks, _ = mod.load_k_diffusion()
    if ks is None:
        pytest.skip("k-diffusion is not installed")
    return ks


def test_dpmpp_2m_with_the_jump_is_k_diffusions_dpmpp_2m():
    # k-diffusion's sample_dpmpp_2m on the levels sigma/alpha(ts) followed by 0: second order
    # into every level, first order (the denoiser's output) on the jump to 0.
    ks = _kdiffusion()
    sde = EDMSDE()  # alpha = 1: k-diffusion's variable is x itself
    truth = mixture(sde)
    ts = get_schedule(sde, "log_snr_jump", 6, denoise_final=True)
    z = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(1))
    ours = sdegen.sample(truth, sde, (32, 2), method="dpmpp_2m", schedule=ts, noise=z).x

    def denoiser(x, sigma):
        return truth.denoise(x, sigma.expand(x.shape[0]))

    sigmas = torch.cat([sde.sigma(ts), torch.zeros(1)])
    theirs = ks.sample_dpmpp_2m(denoiser, z, sigmas, disable=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-10)


def test_lower_order_final_is_the_jump_and_applies_to_the_last_step_without_it():
    sde = VPSDE()
    truth = mixture(sde)
    z = sde.prior_sample((16, 2), generator=torch.Generator().manual_seed(2))
    for method in ("dpmpp_2m", "dpmpp_3m", "unipc", "deis"):
        kw = dict(method=method, steps=6, noise=z)
        on = sdegen.sample(truth, sde, (16, 2), lower_order_final=True, **kw).x
        off = sdegen.sample(truth, sde, (16, 2), lower_order_final=False, **kw).x
        assert torch.equal(on, off), method
        kw["denoise_final"] = False
        on = sdegen.sample(truth, sde, (16, 2), lower_order_final=True, **kw).x
        off = sdegen.sample(truth, sde, (16, 2), lower_order_final=False, **kw).x
        assert not torch.equal(on, off), method
