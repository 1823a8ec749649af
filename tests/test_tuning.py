"""Tuned time grids: equidistribution of the local error estimate, pilot-optimised grids,
and user-given grids in `sample`."""

from __future__ import annotations

import pytest
import torch

import sdegen
from sdegen import GaussianScore
from sdegen.models import ring_mixture
from sdegen.sde import VESDE, VPSDE
from sdegen.solvers import get_schedule
from sdegen.solvers.counting import CountingModel
from sdegen.solvers.tuning import optimise_schedule, tune_schedule


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_point_mass_gives_the_uniform_log_snr_grid():
    # x0 is constant along every path: no error anywhere, so equidistribution is uniform.
    sde = VPSDE()
    model = GaussianScore(torch.tensor([0.3, -0.1]), torch.zeros(2, 2), sde)
    tuned = tune_schedule(model, sde, (8, 2), 6, pilot_steps=40, dtype=torch.float64)
    torch.testing.assert_close(tuned.ts, get_schedule(sde, "log_snr", 6), rtol=1e-5, atol=1e-6)
    assert tuned.pilot_nfe == 41 and tuned.pilot_batch == 8


@pytest.mark.parametrize("order", [1, 2, 3])
def test_each_step_carries_the_same_share_of_the_density(order):
    sde = VESDE()
    model = ring_mixture(sde)
    tuned = tune_schedule(model, sde, (64, 2), 5, order=order, pilot_steps=100, generator=_gen(1))
    ts = tuned.ts
    assert ts[0] == sde.T and ts[-1] == sde.t_min and bool((ts[1:] < ts[:-1]).all())
    # integrate the returned piecewise-constant density between consecutive grid points
    lam_grid = sde.half_log_snr(ts)
    mids, dens = tuned.density_log_snr, tuned.density
    half = float(mids[1] - mids[0]) / 2
    fine = torch.linspace(float(lam_grid[0]), float(lam_grid[-1]), 200001, dtype=torch.float64)
    idx = torch.bucketize(fine, mids - half).clamp(1, len(mids)) - 1
    cell = dens[idx]
    shares = [
        float(cell[(fine >= a) & (fine < b)].sum())
        for a, b in zip(lam_grid[:-1].tolist(), lam_grid[1:].tolist())
    ]
    total = sum(shares)
    assert max(abs(s / total - 1 / 5) for s in shares) < 0.01, shares
    # and the density is not flat: the ring puts its errors at intermediate noise levels
    assert float(dens.max() / dens.min()) > 5


def test_optimised_grid_beats_its_start_on_fresh_noise():
    sde = VPSDE()
    model = ring_mixture(sde)
    counted = CountingModel(model)
    opt = optimise_schedule(
        counted, sde, (128, 2), "unipc", 4, max_trials=80, generator=_gen(2), dtype=torch.float64
    )
    assert opt.pilot_nfe == counted.nfe and opt.pilot_batch == 128
    assert opt.pilot_error < 0.8 * opt.start_error
    # evaluate on independent noise against a tight reference solve
    noise = sde.prior_sample((2000, 2), generator=_gen(3), dtype=torch.float64)
    ref = sdegen.sample(model, sde, (2000, 2), method="dpm_adaptive", noise=noise, rtol=1e-7,
                        atol=1e-7).x  # fmt: skip

    def err(ts):
        x = sdegen.sample(model, sde, (2000, 2), method="unipc", schedule=ts, noise=noise).x
        return float((x - ref).pow(2).sum(1).mean().sqrt())

    start = tune_schedule(model, sde, (128, 2), 4, generator=_gen(2), dtype=torch.float64).ts
    assert err(opt.ts) < 0.8 * err(start)


def test_optimise_rejects_stochastic_and_adaptive_methods():
    sde = VPSDE()
    model = ring_mixture(sde)
    for method in ("euler_maruyama", "dopri5", "nope"):
        with pytest.raises(ValueError, match="deterministic fixed-grid sampler"):
            optimise_schedule(model, sde, (8, 2), method, 3)


def test_sample_accepts_a_grid_and_checks_it():
    sde = VPSDE()
    model = ring_mixture(sde)
    ts = get_schedule(sde, "karras", 6)
    noise = sde.prior_sample((16, 2), generator=_gen(4))
    a = sdegen.sample(model, sde, (16, 2), method="dpmpp_3m", schedule=ts, noise=noise)
    b = sdegen.sample(model, sde, (16, 2), method="dpmpp_3m", steps=6, schedule="karras",
                      noise=noise)  # fmt: skip
    torch.testing.assert_close(a.x, b.x)
    assert a.nfe == 7
    with pytest.raises(ValueError, match="strictly decreasing"):
        sdegen.sample(model, sde, (4, 2), schedule=ts.flip(0).flip(0)[[0, 2, 1, 6]])
    with pytest.raises(ValueError, match="run from T"):
        sdegen.sample(model, sde, (4, 2), schedule=ts[1:])
    with pytest.raises(ValueError, match="run from T"):  # above t_min: only before a denoising
        sdegen.sample(model, sde, (4, 2), schedule=ts[:-1], denoise_final=False)
    with pytest.raises(ValueError, match="sets the steps"):
        sdegen.sample(model, sde, (4, 2), schedule=ts, steps=6)
    with pytest.raises(ValueError, match="1-D tensor"):
        sdegen.sample(model, sde, (4, 2), schedule=ts[None])
