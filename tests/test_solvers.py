"""Samplers: exact NFE, reproducibility, DDPM/DDIM equivalences and convergence orders."""

from __future__ import annotations

import math

import pytest
import torch

import sdegen
from sdegen.sde import EDMSDE, VPSDE, ddpm_betas
from sdegen.solvers import METHODS, get_schedule

from .conftest import SDE_FACTORIES, mixture

ALL_METHODS = list(METHODS)
FIXED = [m for m in ALL_METHODS if METHODS[m].nfe is not None]


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("method", ALL_METHODS)
def test_every_sampler_runs_on_every_sde_with_exact_nfe(method):
    for name, make in SDE_FACTORIES.items():
        sde = make()
        model = mixture(sde)
        if METHODS[method].nfe is None:
            r = sdegen.sample(model, sde, (32, 2), method=method, generator=_gen())
            assert r.nfe > 6, name
        else:
            steps = 40 if method.startswith("torchsde") else 6
            r = sdegen.sample(model, sde, (32, 2), method=method, steps=steps, generator=_gen())
            assert r.nfe == METHODS[method].nfe(steps, {}) + 1, name
        assert r.x.shape == (32, 2) and r.x.dtype == torch.float32
        assert bool(torch.isfinite(r.x).all()), f"{method} on {name}"


@pytest.mark.parametrize(
    "method, steps, expected",
    [
        ("euler", 7, 7),
        ("heun", 7, 13),
        ("rk4", 7, 28),
        ("pc", 7, 14),
        ("ddim", 7, 7),
        ("dpmpp_2m", 7, 7),
        ("euler_maruyama", 7, 7),
        ("ancestral", 7, 7),
        ("reverse_diffusion", 7, 7),
        ("torchsde_euler", 7, 8),
        ("torchsde_srk", 3, 31),
    ],
)
def test_nfe_is_counted_not_computed(method, steps, expected):
    sde = VPSDE()
    calls = []

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def score(self, x, t):
            calls.append(1)
            return self.inner.score(x, t)

        def denoise(self, x, t):
            calls.append(1)
            return self.inner.denoise(x, t)

        def eps(self, x, t):
            calls.append(1)
            return self.inner.eps(x, t)

    r = sdegen.sample(
        Spy(mixture(sde)),
        sde,
        (8, 2),
        method=method,
        steps=steps,
        generator=_gen(),
        denoise_final=False,
    )
    assert r.nfe == expected == len(calls)


@pytest.mark.parametrize("method", FIXED)
def test_nfe_budget_is_respected(method):
    sde = VPSDE()
    for budget in (5, 10, 20):
        try:
            r = sdegen.sample(
                mixture(sde), sde, (4, 2), method=method, nfe=budget, generator=_gen()
            )
        except ValueError as e:
            assert "too small" in str(e)
            continue
        assert r.nfe <= budget
        per_step = METHODS[method].nfe(2, {}) - METHODS[method].nfe(1, {})
        assert budget - r.nfe < per_step


@pytest.mark.parametrize("method", ALL_METHODS)
def test_same_generator_gives_bit_identical_samples(method):
    sde = VPSDE()
    model = mixture(sde)
    kw = {} if METHODS[method].nfe is None else {"steps": 30 if "torchsde" in method else 5}
    a = sdegen.sample(model, sde, (16, 2), method=method, generator=_gen(3), **kw)
    b = sdegen.sample(model, sde, (16, 2), method=method, generator=_gen(3), **kw)
    c = sdegen.sample(model, sde, (16, 2), method=method, generator=_gen(4), **kw)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)


def test_explicit_noise_fixes_the_deterministic_samplers():
    sde = VPSDE()
    model = mixture(sde)
    noise = sde.prior_sample((16, 2), generator=_gen(1), dtype=torch.float64)
    a = sdegen.sample(model, sde, noise.shape, method="heun", steps=5, noise=noise)
    b = sdegen.sample(
        model, sde, noise.shape, method="heun", steps=5, noise=noise, generator=_gen(99)
    )
    assert a.x.dtype == torch.float64 and torch.equal(a.x, b.x)


def test_trajectory_holds_every_grid_state():
    sde = VPSDE()
    r = sdegen.sample(
        mixture(sde),
        sde,
        (4, 2),
        method="dpmpp_2m",
        steps=5,
        generator=_gen(),
        return_trajectory=True,
    )
    # the default grid ends where the final denoising step jumps to zero noise (t_min or above)
    assert r.ts.shape == (6,) and r.ts[0] == sde.T and r.ts[-1] >= sde.t_min
    assert r.trajectory.shape == (7, 4, 2)  # prior draw, 5 steps, final denoising
    torch.testing.assert_close(r.trajectory[-1], r.x)


def test_a_plain_user_model_works_unchanged():
    # Any object with score/denoise/eps works: here N(0, I) data under VP, score = -x.
    class StandardNormal:
        def __init__(self, sde):
            self.sde = sde

        def score(self, x, t):
            return -x

        def eps(self, x, t):
            return self.sde.sigma(t)[:, None] * x

        def denoise(self, x, t):
            s = self.sde.sigma(t)[:, None]
            return (x - s * self.eps(x, t)) / self.sde.alpha(t)[:, None]

    sde = VPSDE()
    model = StandardNormal(sde)
    r = sdegen.sample(model, sde, (4000, 2), method="dpmpp_2m", steps=10, generator=_gen())
    assert abs(float(r.x.std()) - 1) < 0.05
    x = torch.randn(3, 2, generator=_gen(5), dtype=torch.float64)
    ll = sdegen.log_likelihood(model, sde, x)
    torch.testing.assert_close(
        ll.log_prob, torch.distributions.Normal(0.0, 1.0).log_prob(x).sum(1), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("variance", ["posterior", "forward"])
def test_ancestral_reproduces_ddpm_algorithm_2(variance):
    # Ho et al. 2020, Algorithm 2 with sigma_t^2 = beta_tilde_t ("posterior") or beta_t.
    N = 1000
    betas = ddpm_betas(N)
    sde = VPSDE.from_betas(betas)
    model = mixture(sde)
    ours = sdegen.sample(
        model,
        sde,
        (8, 2),
        method="ancestral",
        schedule="uniform",
        steps=N - 1,
        generator=_gen(7),
        dtype=torch.float64,
        variance=variance,
    )
    assert ours.nfe == N

    alphas, alpha_bar = 1 - betas, torch.cumprod(1 - betas, 0)
    g = _gen(7)
    x = torch.randn(8, 2, generator=g)
    for i in range(N - 1, -1, -1):  # 0-based timestep i is DDPM's t = i + 1
        eps = model.eps(x, torch.full((8,), (i + 1) / N))
        mean = (x - betas[i] / torch.sqrt(1 - alpha_bar[i]) * eps) / torch.sqrt(alphas[i])
        if i == 0:
            x = mean
            break
        var = (
            betas[i] * (1 - alpha_bar[i - 1]) / (1 - alpha_bar[i])
            if variance == "posterior"
            else betas[i]
        )
        x = mean + torch.sqrt(var) * torch.randn(8, 2, generator=g)
    torch.testing.assert_close(ours.x, x, rtol=1e-7, atol=1e-7)


def test_ddim_with_eta_one_is_ancestral_sampling():
    sde = VPSDE()
    model = mixture(sde)
    kw = dict(steps=12, dtype=torch.float64, schedule="uniform")
    a = sdegen.sample(model, sde, (8, 2), method="ddim", eta=1.0, generator=_gen(2), **kw)
    b = sdegen.sample(model, sde, (8, 2), method="ancestral", generator=_gen(2), **kw)
    torch.testing.assert_close(a.x, b.x, rtol=1e-9, atol=1e-9)


def _ode_reference(model, sde, noise):
    return sdegen.sample(
        model,
        sde,
        noise.shape,
        method="dopri5",
        noise=noise,
        rtol=1e-11,
        atol=1e-11,
        denoise_final=False,
    ).x


def test_ddim_converges_to_the_probability_flow_ode():
    sde = VPSDE()
    model = mixture(sde)
    noise = sde.prior_sample((128, 2), generator=_gen(0), dtype=torch.float64)
    ref = _ode_reference(model, sde, noise)
    errs = [
        float(
            (
                sdegen.sample(
                    model,
                    sde,
                    noise.shape,
                    method="ddim",
                    steps=n,
                    noise=noise,
                    denoise_final=False,
                ).x
                - ref
            )
            .norm(dim=1)
            .mean()
        )
        for n in (100, 200, 400, 800)
    ]
    assert errs[-1] < 0.005
    assert all(e1 > e2 for e1, e2 in zip(errs, errs[1:]))
    assert 1.7 < errs[-2] / errs[-1] < 2.3  # first order: halving the step halves the error


@pytest.mark.parametrize(
    "method, order, steps",
    [
        ("euler", 1, 64),
        ("heun", 2, 32),
        ("rk4", 4, 32),
        ("ddim", 1, 32),
        ("dpmpp_2m", 2, 32),
    ],
)
@pytest.mark.parametrize("sde_name", ["vp_linear", "edm"])
def test_fixed_step_solvers_converge_at_their_order(method, order, steps, sde_name):
    sde = SDE_FACTORIES[sde_name]()
    model = mixture(sde)
    noise = sde.prior_sample((128, 2), generator=_gen(0), dtype=torch.float64)
    ref = _ode_reference(model, sde, noise)

    def err(n):
        x = sdegen.sample(
            model,
            sde,
            noise.shape,
            method=method,
            steps=n,
            schedule="log_snr",
            noise=noise,
            denoise_final=False,
        ).x
        return float((x - ref).norm(dim=1).mean())

    observed = math.log2(err(steps) / err(2 * steps))
    assert order - 0.45 < observed < order + 0.6


def test_high_nfe_samples_match_the_true_moments():
    # Solver-independent check of the whole stack: at many steps, the sample mean and
    # covariance of every SDE's samples are within Monte-Carlo error of the mixture's.
    for name in ("vp_linear", "subvp", "ve", "edm", "rectified_flow"):
        sde = SDE_FACTORIES[name]()
        model = mixture(sde)
        for method, steps in (("dpmpp_2m", 100), ("euler_maruyama", 500)):
            r = sdegen.sample(
                model,
                sde,
                (20000, 2),
                method=method,
                steps=steps,
                generator=_gen(1),
                dtype=torch.float64,
                schedule="log_snr",
            )
            assert (r.x.mean(0) - model.mean()).abs().max() < 0.05, (name, method)
            assert (torch.cov(r.x.T) - model.cov()).abs().max() < 0.1, (name, method)


def test_schedules():
    sde = EDMSDE()
    ts = get_schedule(sde, "karras", 10)
    rho, lo, hi = 7, sde.t_min, sde.T
    u = torch.linspace(0, 1, 11)
    edm = (hi ** (1 / rho) + u * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho  # EDM eq. 5
    torch.testing.assert_close(ts, edm)
    vp = VPSDE()
    lam = vp.half_log_snr(get_schedule(vp, "log_snr", 8))
    torch.testing.assert_close(lam[1:] - lam[:-1], torch.full((8,), (lam[-1] - lam[0]) / 8))
    u_t = get_schedule(vp, "uniform", 4)
    assert u_t[0] == vp.T and u_t[-1] == vp.t_min


class _Bad:
    def __init__(self, out):
        self.out = out

    def score(self, x, t):
        return self.out(x)

    denoise = eps = score


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(method="dpm"), ValueError, "unknown method 'dpm'; expected one of: euler_maruyama"),
        (dict(method="heun", eta=0.5), ValueError, "method 'heun' takes no option 'eta'"),
        (dict(steps=5, nfe=5), ValueError, "give steps or nfe, not both"),
        (dict(method="dopri5", steps=5), ValueError, "adaptive: set rtol/atol"),
        (dict(method="rk4", nfe=4), ValueError, "nfe=4 is too small for 'rk4'"),
        (dict(schedule="cosine"), ValueError, "unknown schedule 'cosine'"),
        (dict(steps=0), ValueError, "steps must be an integer >= 1, got 0"),
        (dict(nfe=5.5), ValueError, "nfe must be an integer >= 1, got 5.5"),
        (dict(nfe=math.inf), ValueError, "nfe must be an integer >= 1, got inf"),
        (dict(method="dopri5", rtol=-1.0), ValueError, "rtol must be > 0, got -1"),
        (dict(method="dopri5", atol=math.inf), ValueError, "atol must be finite, got inf"),
        (dict(dtype=torch.int64), ValueError, "dtype must be a floating-point"),
        (dict(device="meta"), ValueError, "device 'meta' is not supported"),
        (dict(callback=3), TypeError, "callback must be callable"),
        (
            dict(method="torchsde_euler", steps=4, schedule="karras"),
            ValueError,
            "needs schedule='uniform'",
        ),
        (
            dict(noise=torch.zeros(3, 2)),
            ValueError,
            r"noise must have shape \(4, 2\), got \(3, 2\)",
        ),
        (dict(noise=torch.full((4, 2), math.nan)), ValueError, "noise holds 8 non-finite"),
        (dict(method="ddim", eta=-1.0), ValueError, "eta must be >= 0"),
    ],
)
def test_sample_rejects_bad_arguments(kwargs, exc, match):
    sde = VPSDE()
    with pytest.raises(exc, match=match):
        sdegen.sample(mixture(sde), sde, (4, 2), **kwargs)


def test_steps_for_nfe_is_the_most_steps_that_fit_and_fast_for_huge_budgets():
    from sdegen.solvers import steps_for_nfe

    assert steps_for_nfe("euler", 10**8) == 10**8 - 1  # N steps + the final denoise
    assert steps_for_nfe("heun", 20) == 10  # 2N - 1 + 1
    assert steps_for_nfe("rk4", 21) == 5
    assert steps_for_nfe("pc", 21, corrector_steps=2) == 6  # 3N + 1
    for method in ("euler", "heun", "rk4", "torchsde_srk"):
        for nfe in range(1, 40):
            try:
                n = steps_for_nfe(method, nfe, denoise_final=False)
            except ValueError:
                continue
            cost = sdegen.solvers.METHODS[method].nfe
            assert cost(n, {}) <= nfe < cost(n + 1, {})


@pytest.mark.parametrize("method", ALL_METHODS)
def test_callback_sees_every_step_with_time_state_and_denoised(method):
    sde = VPSDE()
    model = mixture(sde)
    seen = []
    m = METHODS[method]
    kw = {} if m.adaptive else {"steps": 8 if method.startswith("torchsde") else 6}
    res = sdegen.sample(
        model,
        sde,
        (8, 2),
        method=method,
        callback=seen.append,
        generator=torch.Generator().manual_seed(0),
        return_trajectory=True,
        **kw,
    )
    assert [d["i"] for d in seen] == list(range(len(seen)))
    assert len(seen) == res.trajectory.shape[0] - 2  # not the prior draw, not the denoised
    if m.adaptive:
        assert all(d["t"] is None for d in seen)
    else:
        assert [d["t"] for d in seen] == pytest.approx(res.ts[1:].tolist())
    for d, x in zip(seen, res.trajectory[1:]):
        assert torch.equal(d["x"], x)
    if m.live:
        assert all(d["denoised"].shape == (8, 2) for d in seen)
    else:
        assert all(d["denoised"] is None for d in seen)


@pytest.mark.parametrize("method", [m for m in FIXED if METHODS[m].step is not None])
def test_callback_denoised_is_the_x0_estimate_where_the_step_starts(method):
    # The loop passes on each step's own x0 estimate. For every fixed-grid method but pc (whose
    # predictor starts from the corrected point), edm_sde (from the raised noise level) and
    # unipc (whose estimate is taken at the predicted point, which the corrector then moves)
    # that is the model's denoiser at the state and time the step starts from. annealed_langevin
    # scores nothing at the start: its estimate is at the first point of its new level.
    sde = VPSDE()
    model = mixture(sde)
    seen = []
    res = sdegen.sample(
        model,
        sde,
        (8, 2),
        method=method,
        steps=4,
        callback=seen.append,
        generator=torch.Generator().manual_seed(1),
        return_trajectory=True,
        dtype=torch.float64,
    )
    assert len(seen) == 4
    for i, d in enumerate(seen):
        if method in ("pc", "edm_sde", "unipc", "annealed_langevin"):
            assert d["denoised"].shape == (8, 2)
            continue
        t = torch.full((8,), float(res.ts[i]))
        expected = model.denoise(res.trajectory[i], t)
        torch.testing.assert_close(d["denoised"], expected, rtol=1e-10, atol=1e-10)


def _kw(method):
    return {} if METHODS[method].adaptive else {"steps": 8 if "torchsde" in method else 4}


@pytest.mark.parametrize("method", ALL_METHODS)
def test_each_spec_lists_exactly_the_options_its_method_takes_with_their_defaults(method):
    # sample() learns a method's options from its spec alone: each listed option reaches the
    # method (it would raise TypeError otherwise), at its default it changes nothing, and an
    # option not listed is refused by name.
    sde = VPSDE()
    model = mixture(sde)
    m = METHODS[method]
    a = sdegen.sample(model, sde, (4, 2), method=method, generator=_gen(5), **_kw(method))
    b = sdegen.sample(
        model, sde, (4, 2), method=method, generator=_gen(5), **_kw(method), **m.options
    )
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe
    with pytest.raises(ValueError, match=f"method '{method}' takes no option 'bogus'"):
        sdegen.sample(model, sde, (4, 2), method=method, bogus=1, **_kw(method))


@pytest.mark.parametrize("method", ALL_METHODS)
def test_spec_says_which_methods_draw_noise(method):
    # With the prior draw fixed, only a `stochastic` method's samples depend on the generator
    # (ddim and dpmpp_3m only when eta > 0).
    sde = VPSDE()
    model = mixture(sde)
    m = METHODS[method]
    noise = sde.prior_sample((8, 2), generator=_gen(0), dtype=torch.float64)
    options = {"eta": 1.0} if "eta" in m.options else {}
    runs = [
        sdegen.sample(
            model, sde, noise.shape, method=method, noise=noise, generator=_gen(g), **options,
            **_kw(method),
        ).x
        for g in (1, 2)
    ]  # fmt: skip
    assert torch.equal(*runs) != m.stochastic


@pytest.mark.parametrize("method", [m for m in ALL_METHODS if METHODS[m].last_step_noise])
def test_last_step_adds_noise_only_when_a_denoising_step_follows(method):
    # One step: with denoise_final=False it ends on the mean (no draw at all), with a final
    # denoising step it adds its noise like any other step.
    sde = VPSDE()
    model = mixture(sde)
    noise = sde.prior_sample((8, 2), generator=_gen(0), dtype=torch.float64)
    options = {"eta": 1.0} if "eta" in METHODS[method].options else {}
    if method == "pc":
        options = {"corrector_steps": 0}  # the corrector always draws
    for denoise_final in (False, True):
        runs = [
            sdegen.sample(
                model, sde, noise.shape, method=method, steps=1, noise=noise, generator=_gen(g),
                denoise_final=denoise_final, **options,
            ).x
            for g in (1, 2)
        ]  # fmt: skip
        assert torch.equal(*runs) == (not denoise_final), denoise_final


def test_a_method_spec_has_a_step_or_a_driver():
    from sdegen.solvers import Method
    from sdegen.solvers.pf_ode import Euler, dopri5

    with pytest.raises(ValueError, match="a step or a driver"):
        Method("ode", "karras", lambda n, _: n, "neither")
    with pytest.raises(ValueError, match="a step or a driver"):
        Method("ode", "karras", lambda n, _: n, "both", step=Euler, driver=dopri5)


def test_solve_is_sample_without_the_checks_and_the_counting():
    from sdegen.solvers.grid import Recorder, solve

    sde = EDMSDE()
    model = mixture(sde)
    noise = sde.prior_sample((8, 2), generator=_gen(0), dtype=torch.float64)
    r = sdegen.sample(
        model, sde, noise.shape, method="edm_sde", steps=5, noise=noise, generator=_gen(1),
        return_trajectory=True,
    )  # fmt: skip
    rec = Recorder(noise, r.ts, trajectory=True, callback=None)
    x = solve(
        METHODS["edm_sde"], model, sde, noise, r.ts, generator=_gen(1), add_noise_last=True,
        denoise_final=True, record=rec,
    )  # fmt: skip
    assert torch.equal(x, r.x) and torch.equal(torch.stack(rec.states), r.trajectory)


def test_sample_rejects_bad_models():
    sde = VPSDE()
    with pytest.raises(TypeError, match="lacks score, denoise, eps"):
        sdegen.sample(object(), sde, (4, 2))
    with pytest.raises(ValueError, match=r"must return the shape of x \(4, 2\), but got \(4, 1\)"):
        sdegen.sample(_Bad(lambda x: x[:, :1]), sde, (4, 2))
    with pytest.raises(ValueError, match="returned NaN or inf"):
        sdegen.sample(_Bad(lambda x: x * math.nan), sde, (4, 2))
    with pytest.raises(ValueError, match=r"shape must be \(batch, \*event_shape\)"):
        sdegen.sample(mixture(sde), sde, (4,))


def test_available_lists_every_method():
    names = sdegen.available()
    assert set(names) == set(METHODS) and all(isinstance(v, str) for v in names.values())
