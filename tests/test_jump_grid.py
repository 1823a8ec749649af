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
    START_PER_LEVEL,
    check_grid,
    log_snr_jump,
    uniform_log_snr,
)

from .conftest import mixture

SDES = {"vp": VPSDE, "ve": VESDE, "edm": EDMSDE}


@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("steps", [1, 4, 9, 19])
@pytest.mark.parametrize("sd", [1.0, 0.3, 2.0])
@pytest.mark.parametrize("start", [None, START_PER_LEVEL])
def test_log_snr_jump_levels(name, steps, sd, start):
    sde = SDES[name]()
    kw = {} if start is None else {"start_per_level": start}
    ts = get_schedule(sde, "log_snr_jump", steps, denoise_final=True, data_std=sd, **kw)
    lam = sde.half_log_snr(ts)
    lo, hi = sde.half_log_snr_range()
    # sigma/alpha = 2.5 sd / levels^1.5 at the jump (t_min's level at most); with a start,
    # start * sd * levels after T's
    last = min(-math.log(JUMP_SCALE * sd / (steps + 1) ** JUMP_POWER), hi)
    if start is None:  # uniform in lambda from lambda(T)
        torch.testing.assert_close(lam, torch.linspace(lo, last, steps + 1), rtol=0, atol=1e-9)
    first = -math.log(START_PER_LEVEL * sd * (steps + 1))
    assert ts.shape == (steps + 1,) and float(ts[0]) == sde.T
    assert bool((ts[1:] < ts[:-1]).all())
    assert float(ts[-1]) > sde.t_min if last < hi else float(ts[-1]) == sde.t_min
    torch.testing.assert_close(float(lam[-1]), last, rtol=0, atol=1e-9)
    if steps == 1 or start is None:
        return
    if first <= lo:  # the start lies above T's level: uniform from T
        torch.testing.assert_close(lam, torch.linspace(lo, last, steps + 1), rtol=0, atol=1e-9)
        return
    # one step from T to sd * levels, then uniform in lambda down to the jump level
    torch.testing.assert_close(lam[1:], torch.linspace(first, last, steps), rtol=0, atol=1e-9)
    assert float(lam[0]) == pytest.approx(lo, abs=1e-9) and float(lam[0]) < first


@pytest.mark.parametrize("name", list(SDES))
def test_log_snr_jump_levels_scale_with_the_data(name):
    # the levels sigma/alpha after T are proportional to data_std (T's level is the SDE's)
    sde = SDES[name]()
    s1, s2 = (
        sde.sigma(ts) / sde.alpha(ts)
        for ts in (log_snr_jump(sde, 6, data_std=sd, start_per_level=1.0) for sd in (0.4, 1.2))
    )
    torch.testing.assert_close(s2[1:] / s1[1:], torch.full((6,), 3.0), rtol=1e-9, atol=0)
    assert float(s1[0]) == pytest.approx(float(s2[0]), rel=1e-12)


def test_log_snr_jump_is_data_scale_equivariant_for_exponential_integrators():
    # Gaussian data N(0, C) and N(0, c^2 C) on VE SDEs whose noise levels are c times each other
    # (sigma = t, T = sigma_max, t_min = sigma_min): the probability flow of the second is c times
    # that of the first, and so are their default grids' levels (each placed by its model's
    # data_std), so an exponential integrator's samples from prior draws c times each other are
    # c times each other, to rounding
    cov = torch.tensor([[1.0, 0.3], [0.3, 0.5]])
    c = 0.25
    sdes = [EDMSDE(sigma_min=0.002 * k, sigma_max=80.0 * k) for k in (1.0, c)]
    models = [
        sdegen.GaussianScore(torch.zeros(2), k * k * cov, sde) for k, sde in zip((1.0, c), sdes)
    ]
    assert models[1].data_std == pytest.approx(c * models[0].data_std, rel=1e-12)
    z = sdes[0].prior_sample((64, 2), generator=torch.Generator().manual_seed(3))
    for method in ("unipc", "dpmpp_2m"):
        a, b = (
            sdegen.sample(m, sde, (64, 2), method=method, nfe=6, noise=k * z)
            for m, sde, k in zip(models, sdes, (1.0, c))
        )
        torch.testing.assert_close(b.ts, a.ts * c, rtol=1e-12, atol=0)
        torch.testing.assert_close(b.x, c * a.x, rtol=1e-9, atol=1e-12)
    # without the data's scale (both grids for unit-variance data) they are not
    plain = [sdegen.sample(m, sde, (64, 2), method="unipc", noise=k * z, schedule=
             get_schedule(sde, "log_snr_jump", 5, denoise_final=True)).x
             for m, sde, k in zip(models, sdes, (1.0, c))]  # fmt: skip
    assert float((plain[1] - c * plain[0]).abs().max()) > 1e-3 * float(plain[1].abs().max())


def test_data_std_is_the_models_sigma_data_through_wrappers():
    from sdegen.models import data_std
    from sdegen.solvers.counting import CountingModel

    sde = VPSDE()
    truth = mixture(sde)
    x = truth.sample(200_000, generator=torch.Generator().manual_seed(0))
    assert data_std(truth) == pytest.approx(float(x.var(0).mean().sqrt()), rel=0.01)
    assert data_std(CountingModel(truth)) == data_std(truth)
    assert data_std(object()) == 1.0  # unknown: unit-variance data
    point = sdegen.GaussianScore(torch.ones(2), torch.zeros(2, 2), sde)
    assert point.data_std is None and data_std(point) == 1.0  # a point mass has no scale
    model = sdegen.ScoreModel(sdegen.models.MLP(2, hidden=8, depth=1), sde, sigma_data=0.5)
    assert data_std(model) == 0.5
    with pytest.raises(ValueError, match="data_std"):
        log_snr_jump(sde, 4, data_std=float("nan"))
    for bad in (-1.0, 0.0, float("nan"), "wide"):
        model.data_std = bad
        with pytest.raises(ValueError, match=r"ScoreModel.data_std must be a positive finite"):
            sdegen.sample(model, sde, (4, 2), nfe=5)
    model.data_std = None
    # sample() places the default grid by the model's data_std; unipc's starts at 5 stds at NFE 5
    sd = data_std(truth)
    for method, kw in (("unipc", {"start_per_level": START_PER_LEVEL}), ("dpmpp_2m", {})):
        res = sdegen.sample(truth, sde, (4, 2), method=method, nfe=5)
        want = get_schedule(sde, "log_snr_jump", 4, denoise_final=True, data_std=sd, **kw)
        assert torch.equal(res.ts, want), method
        if method == "unipc":
            lam = sde.half_log_snr(res.ts[1])
            assert float(lam) == pytest.approx(-math.log(5 * sd), abs=1e-9)
    with pytest.raises(ValueError, match="start_per_level"):
        log_snr_jump(sde, 4, start_per_level=0.0)


@pytest.mark.parametrize("name", list(SDES))
def test_log_snr_jump_reaches_t_min_on_long_grids_and_without_denoising(name):
    sde = SDES[name]()
    long = log_snr_jump(sde, 2000)
    assert float(long[-1]) == sde.t_min
    torch.testing.assert_close(long, uniform_log_snr(sde, 2000), rtol=1e-12, atol=0)
    # the start rises with the budget: on long grids it passes T's level, and the grid is the
    # uniform one
    started = log_snr_jump(sde, 2000, start_per_level=START_PER_LEVEL)
    torch.testing.assert_close(started, long, rtol=0, atol=0)
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


def test_a_runs_model_carries_its_training_splits_std(tmp_path):
    from sdegen.assembly import TrainConfig
    from sdegen.assembly.runs import setup_run
    from sdegen.models import data_std

    cfg = TrainConfig(data="toy:8gaussians", sde="vp", steps=1, batch_size=8, n_train=512)
    run = setup_run(cfg, tmp_path / "run", progress=False)
    x = run.data.train.double()
    want = float(((x - x.mean(0)) ** 2).sum(1).mean().div(x.shape[1]).sqrt())
    assert run.model.data_std == pytest.approx(want, rel=1e-3)
    assert data_std(run.model) == run.model.data_std != run.model.sigma_data
    assert 1.5 < run.model.data_std < 2.5  # the 8 Gaussians' radius-2 ring, not unit scale


def test_euler_defaults_to_karras_on_ve_only():
    """methods.py's one per-SDE exception (measured in nfe_fid): the PF-ODE Euler in t runs on
    Karras's grid on VESDE and on the jump grid elsewhere, in an SDEdit window too; an explicit
    schedule still wins."""
    from sdegen.solvers import METHODS

    m = METHODS["euler"]
    assert m.default_schedule(VESDE()) == "karras"
    assert m.default_schedule(VPSDE()) == m.default_schedule(EDMSDE()) == "log_snr_jump"
    assert METHODS["k_euler"].default_schedule(VESDE()) == "log_snr_jump"
    for sde in (VESDE(), VPSDE()):
        model = mixture(sde)
        res = sdegen.sample(model, sde, (4, 2), method="euler", nfe=6, return_trajectory=True)
        want = get_schedule(sde, m.default_schedule(sde), 5, denoise_final=True, data_std=float(
            model.data_std))  # fmt: skip
        torch.testing.assert_close(res.ts, want.to(res.ts))
    from sdegen.solvers.sampling import _Window

    ve = VESDE()
    edit = sdegen.sample(mixture(ve), ve, (4, 2), method="euler", steps=4,
                         x_init=torch.zeros(1, 2), t_start=0.5)  # fmt: skip
    want = get_schedule(_Window(ve, 0.5), "karras", 4, denoise_final=True)
    assert edit.nfe == 5 and torch.equal(edit.ts, want.to(edit.ts))
    explicit = sdegen.sample(mixture(VESDE()), VESDE(), (4, 2), method="euler", nfe=6,
                             schedule="log_snr_jump")  # fmt: skip
    want = get_schedule(VESDE(), "log_snr_jump", 5, denoise_final=True,
                        data_std=float(mixture(VESDE()).data_std))  # fmt: skip
    torch.testing.assert_close(explicit.ts, want.to(explicit.ts))
