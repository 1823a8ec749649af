"""The samplers by name: each method's spec (how it runs, what it integrates, its cost, its
options and their defaults, whether it draws noise, its default grid) in the plain dict
`METHODS`, which `sample` and the command line pick from."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from torch import Tensor

from .._utils import check_choice, check_int
from ..sde.ve import VESDE
from . import (
    adaptive,
    edm,
    exponential,
    kdiffusion,
    langevin,
    pf_ode,
    reverse_sde,
    torchsde_methods,
)
from .grid import GridMethod
from .schedules import START_PER_LEVEL, get_schedule


@dataclass(frozen=True, eq=False)
class Method:
    """A sampler's spec.

    Attributes:
        kind: "sde" (integrates the reverse SDE) or "ode" (the probability-flow ODE; "ode"
            methods with an `eta` option draw noise when it is > 0).
        schedule: default grid, a name in SCHEDULES.
        schedule_options: keyword arguments of that grid for this method (unipc's start
            level, per grid level).
        schedule_by_sde: ((SDE class, grid name), ...): the default grid on SDEs of those
            classes instead of `schedule` (measured exceptions; `default_schedule`).
        nfe: `nfe(steps, options)`, the evaluations that many steps cost (None: adaptive, the
            cost is not set by steps). Used only to choose `steps` for an NFE budget; the NFE
            reported is always the counted one.
        summary: one line for `available()`.
        step: the step of a fixed-grid method, run by the one loop (`grid.integrate_grid`) ...
        driver: ... or a function that integrates on its own, driver(model, sde, x, ts, *,
            record, **options) -> x (adaptive methods, torchdiffeq, torchsde).
        options: the options the method takes, with their defaults.
        stochastic: it takes the generator.
        last_step_noise: it takes add_noise_last: whether its last step adds noise (True when a
            final denoising step follows).
        live: its states reach the callback as it goes, with an x0 estimate; False where a
            library integrates the whole grid in one call (the callbacks then come after the
            solve, with no estimate).
    """

    kind: str
    schedule: str
    nfe: Callable[[int, dict], int] | None
    summary: str
    step: type[GridMethod] | Callable[..., GridMethod] | None = None
    driver: Callable[..., Tensor] | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    stochastic: bool = False
    last_step_noise: bool = False
    live: bool = True
    schedule_options: Mapping[str, object] = field(default_factory=dict)
    schedule_by_sde: tuple[tuple[type, str], ...] = ()

    def __post_init__(self) -> None:
        if (self.step is None) == (self.driver is None):
            raise ValueError("a Method has a step or a driver, not both and not neither")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "schedule_options", MappingProxyType(dict(self.schedule_options)))

    def grid(
        self,
        sde,
        steps: int,
        *,
        schedule: str | None = None,
        denoise_final: bool = True,
        data_std: float = 1.0,
    ) -> Tensor:
        """The grid `schedule` (default: this method's own on `sde`, `default_schedule`, with its
        `schedule_options`) of `steps` steps for data of RMS std `data_std`."""
        name = schedule or self.default_schedule(sde)
        kwargs = dict(self.schedule_options) if name == self.schedule else {}
        return get_schedule(
            sde, name, steps, denoise_final=denoise_final, data_std=data_std, **kwargs
        )

    def default_schedule(self, sde) -> str:
        """The name of the grid `sample` uses on `sde` unless told otherwise: the one
        `schedule_by_sde` names for its class, else `schedule`. An SDEdit window counts as the
        SDE it views."""
        sde = getattr(sde, "sde", sde)
        return next((name for cls, name in self.schedule_by_sde if isinstance(sde, cls)),
                    self.schedule)  # fmt: skip

    @property
    def adaptive(self) -> bool:
        """True when the step count is chosen by error control (rtol, atol), not by the user."""
        return self.nfe is None

    @property
    def fn(self) -> Callable[..., Tensor]:
        """Deprecated: the function form fn(model, sde, x, ts, **options) -> x; use
        `sample(..., method=name)` or `grid.solve(spec, ...)`."""
        from ._deprecated import method_function

        warnings.warn(
            "Method.fn is deprecated; use sample(..., method=name) or grid.solve(spec, ...)",
            DeprecationWarning,
            stacklevel=2,
        )
        return method_function(self)


def _per_step(k: int) -> Callable[[int, dict], int]:
    return lambda n, _: k * n


_PC = {"snr": 0.16, "corrector_steps": 1, "predictor": "reverse_diffusion"}


def _pc_cost(n: int, options: dict) -> int:
    k = check_int("corrector_steps", options.get("corrector_steps", _PC["corrector_steps"]), 0)
    return n * (1 + k)


_LANGEVIN = {"K": 1, "eps": None}


def _langevin_cost(n: int, options: dict) -> int:
    return n * check_int("K", options.get("K", _LANGEVIN["K"]), 1)


def _torchsde(name: str, cost: Callable[[int, dict], int], summary: str) -> Method:
    # torchsde steps a fixed dt (a uniform grid) and integrates the whole grid in one call
    driver = getattr(torchsde_methods, name)
    return Method("sde", "uniform", cost, summary, driver=driver, stochastic=True, live=False)


_3M = {"order": 3, "eta": 0.0, "lower_order_final": True}


def _ddim_eta0(model, sde, ts: Tensor) -> GridMethod:
    return exponential.DDIM(model, sde, ts, eta=0.0)


_ANCESTRAL = {"eta": 1.0}

# k-diffusion's samplers by k-diffusion's names (kdiffusion.py). k-diffusion leaves the grid to
# the caller (its examples use Karras's); here they default to sdegen's measured grid (below),
# and schedule="karras" gives k-diffusion's usual setup.
# Euler in sigma~ = sigma/alpha is DDIM (eta = 0), and Euler ancestral is DDIM with k-diffusion's
# eta (the same noise formula); k-diffusion's names that sdegen already uses with another
# meaning (euler, heun) take the prefix "k_". N steps plus the final denoising step are
# k-diffusion's sampler on the levels sigma~(ts) followed by 0.
# fmt: off
K_METHODS: dict[str, Method] = {
    "k_euler": Method(
        "ode", "log_snr_jump", _per_step(1),
        "k-diffusion's euler: Euler in sigma/alpha (= ddim at eta 0)", step=_ddim_eta0),
    "euler_ancestral": Method(
        "ode", "karras", _per_step(1),
        "k-diffusion's euler_ancestral (= ddim; eta 1: DDPM's noise)",
        step=exponential.DDIM, options=_ANCESTRAL, stochastic=True, last_step_noise=True),
    "k_heun": Method(
        "ode", "log_snr_jump", _per_step(2),
        "k-diffusion's heun: Heun in sigma/alpha into every level (heun: last one Euler)",
        step=kdiffusion.Heun),
    "dpm_2": Method(
        "ode", "log_snr_jump", _per_step(2),
        "k-diffusion's dpm_2: DPM-Solver-2 midpoint in log sigma, Euler in sigma/alpha",
        step=kdiffusion.DPM2),
    "dpm_2_ancestral": Method(
        "ode", "log_snr_jump", _per_step(2), "k-diffusion's dpm_2_ancestral (eta)",
        step=kdiffusion.DPM2Ancestral, options=_ANCESTRAL, stochastic=True,
        last_step_noise=True),
    "dpmpp_2s_ancestral": Method(
        "ode", "log_snr_jump", _per_step(2), "k-diffusion's dpmpp_2s_ancestral (eta)",
        step=kdiffusion.DPMpp2SAncestral, options=_ANCESTRAL, stochastic=True,
        last_step_noise=True),
    "lms": Method(
        "ode", "log_snr_jump", _per_step(1),
        "k-diffusion's lms: linear multistep in sigma/alpha (order 1-4)",
        step=kdiffusion.LMS, options={"order": 4}),
    "deis": Method(
        "ode", "log_snr_jump", _per_step(1),
        "DEIS multistep in log rho as diffusers' DEISMultistep (order 1-3)",
        step=kdiffusion.DEIS, options={"order": 3, "lower_order_final": True}),
}
# fmt: on

# Default grids were chosen by measurement: uniform t fails badly on EDM and VE at low NFE
# (benchmarks/schedules.py). The log-SNR grid that ends where the final denoising step still does
# work ("log_snr_jump", benchmarks/defaults.py) is the default of every fixed-grid sampler but
# four: against the Karras grid (benchmarks/grid_choice.py: Frechet distance, 3 x 1000 draws,
# VP and EDM SDEs, exact scores) it was lower for each at NFE 10 in 9-10 of 10 cells on the
# tuning mixtures (ring and four of peers.TUNED_ON) and 10 of 10 held out (deis 7 and 7),
# geometric means 0.006-0.94 held out, and at NFE 20 0.19-1.0; at NFE 50 it is level held out
# (0.89-1.0) and on the tuning mixtures but for the stochastic dpm_2_ancestral and
# dpmpp_2s_ancestral (1.2, cells near the noise floor). The four reverse-SDE samplers
# euler_maruyama, reverse_diffusion, ancestral and euler_ancestral keep the Karras grid: the
# jump grid wins at NFE 10-20 for them too (0.23-0.84 held out) but loses at NFE 50 (1.1-1.2
# held out, 1.2-1.3 tuning; 1-4 of 10 cells won). unipc, whose corrector makes a long first step
# second order, crosses the levels above 5 data stds in one step.
# stochastic: takes the generator; last_step_noise: adds noise on its last step only when a
# final denoising step follows.
# fmt: off
METHODS: dict[str, Method] = {
    "euler_maruyama": Method(
        "sde", "karras", _per_step(1), "Euler-Maruyama on the reverse SDE",
        step=reverse_sde.EulerMaruyama, stochastic=True, last_step_noise=True),
    "reverse_diffusion": Method(
        "sde", "karras", _per_step(1), "reverse diffusion predictor (Song et al. 2021)",
        step=reverse_sde.ReverseDiffusion, stochastic=True, last_step_noise=True),
    "ancestral": Method(
        "sde", "karras", _per_step(1), "ancestral sampling: DDPM for VP, SMLD for VE",
        step=reverse_sde.Ancestral, options={"variance": "posterior"},
        stochastic=True, last_step_noise=True),
    "pc": Method(
        "sde", "log_snr_jump", _pc_cost, "predictor-corrector with a Langevin corrector (snr)",
        step=reverse_sde.PC, options=_PC, stochastic=True, last_step_noise=True),
    # torchsde calls the drift once more, to check its shape, before integrating.
    "torchsde_euler": _torchsde(
        "torchsde_euler", lambda n, _: n + 1, "torchsde euler on the reverse SDE"),
    "torchsde_milstein": _torchsde(
        "torchsde_milstein", lambda n, _: n + 1, "torchsde milstein on the reverse SDE"),
    "torchsde_srk": _torchsde(
        "torchsde_srk", lambda n, _: 10 * n + 1,
        "torchsde stochastic Runge-Kutta (strong order 1.5)"),
    "torchsde_reversible_heun": _torchsde(
        "torchsde_reversible_heun", lambda n, _: n + 2,
        "torchsde reversible Heun (unstable at few steps)"),
    "dopri5": Method(
        "ode", "uniform", None, "adaptive Dormand-Prince 5(4) on the PF-ODE (rtol, atol)",
        driver=pf_ode.dopri5, options={"rtol": 1e-5, "atol": 1e-5}, live=False),
    # On VESDE, t is log sigma up to scale, and Euler in it did better on Karras's grid from
    # NFE 10 on: benchmarks/nfe_fid on Karras's grid (the run committed at 1854983, reproduced
    # exactly since) against the jump grid, seeds 0-2: ring Frechet distance 0.0012 / 0.0066 /
    # 0.0034 / 0.0019 against 0.025 / 0.011 / 0.0048 / 0.0023 at NFE 10 / 20 / 50 / 100, digits-FID
    # 1042 / 114 / 34 / 22 against 1436 / 198 / 43 / 25; at NFE 5 both are far off (ring 115
    # against 0.056). The jump grid stays its default on the other SDEs, where it won.
    "euler": Method(
        "ode", "log_snr_jump", _per_step(1),
        "Euler on the PF-ODE in t (k-diffusion's euler, in sigma, is k_euler)", step=pf_ode.Euler,
        schedule_by_sde=((VESDE, "karras"),)),
    "rk4": Method(
        "ode", "log_snr_jump", _per_step(4), "classical RK4 on the PF-ODE", step=pf_ode.RK4),
    "heun": Method(
        "ode", "log_snr_jump", lambda n, _: 2 * n - 1,
        "Heun on the PF-ODE in sigma, last step Euler (k-diffusion's heun is k_heun)",
        step=edm.Heun),
    "ddim": Method(
        "ode", "log_snr_jump", _per_step(1),
        "DDIM: first-order exponential integrator (eta > 0: stochastic)",
        step=exponential.DDIM, options={"eta": 0.0}, stochastic=True, last_step_noise=True),
    "dpmpp_2m": Method(
        "ode", "log_snr_jump", _per_step(1), "DPM-Solver++(2M) multistep exponential integrator",
        step=exponential.DPMpp2M, options={"lower_order_final": True}),
    "dpmpp_3m": Method(
        "ode", "log_snr_jump", _per_step(1),
        "DPM-Solver++(3M) multistep (order 1-4; eta > 0: stochastic)",
        step=exponential.DPMpp3M, options=_3M, stochastic=True, last_step_noise=True),
    # SDE-DPM-Solver++(2M): the 3M step at eta = 1 and order 2 (Lu et al. 2022, SDE form)
    "dpmpp_sde": Method(
        "sde", "log_snr", _per_step(1),
        "SDE-DPM-Solver++(2M) on the reverse SDE (not k-diffusion's singlestep dpmpp_sde)",
        step=exponential.DPMpp3M, options={**_3M, "order": 2, "eta": 1.0},
        stochastic=True, last_step_noise=True),
    "unipc": Method(
        "ode", "log_snr_jump", _per_step(1),
        "UniPC-style multistep predictor-corrector, corrector free",
        step=exponential.UniPC, options={"order": 3, "lower_order_final": True},
        schedule_options={"start_per_level": START_PER_LEVEL}),
    "dpmpp_2s": Method(
        "ode", "log_snr_jump", _per_step(2), "DPM-Solver++(2S) singlestep",
        step=exponential.DPMpp2S, options={"r": 0.5}),
    "dpmpp_3s": Method(
        "ode", "log_snr_jump", _per_step(3), "DPM-Solver++(3S) singlestep",
        step=exponential.DPMpp3S),
    "dpm_adaptive": Method(
        "ode", "uniform", None, "adaptive DPM-Solver-23 in log-SNR (rtol, atol)",
        driver=adaptive.dpm_adaptive,
        options={"rtol": 0.05, "atol": 0.0078, "h_init": 0.05, "safety": 0.9}),
    # EDM's ImageNet-64 settings, scaled to sigma / alpha
    "edm_sde": Method(
        "sde", "log_snr_jump", lambda n, _: 2 * n - 1,
        "EDM stochastic sampler (churn) with Heun steps",
        step=edm.EDMStochastic,
        options={"churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003},
        stochastic=True),
    # NCSN's sampler (Song & Ermon 2019): K Langevin steps at each level of the grid, the
    # levels geometric in sigma/alpha on the default log-SNR grid (langevin.py)
    "annealed_langevin": Method(
        "sde", "log_snr", _langevin_cost,
        "annealed Langevin dynamics (NCSN): K steps of size ~ eps sigma^2 per noise level",
        step=langevin.AnnealedLangevin, options=_LANGEVIN, stochastic=True),
    **K_METHODS,
}
# fmt: on


# What `sample`, `sdegen sample` and ScoreSDEDensity use when no method is named: UniPC's
# corrector costs nothing and wins at 5-20 evaluations on ill-conditioned mixtures
# (benchmarks/defaults.py: at NFE 5 DPM-Solver++(2M) loses to diffusers' UniPC on some). Its
# order 3 (the predictor's; the corrector's is 4) was chosen on the tuning mixtures
# (benchmarks/peers.py: TUNED_ON and the ring, ddpm and EDM, NFE 5-20): against order 2 on the
# same grid (3 x 1000 draws per cell) it lowered the Frechet distance in 32 of 42 (mixture, SDE,
# NFE) cells, all 14 at NFE 5, and the RMS distance to the exact flow in 22 of 28 at NFE 10-20
# (6 of 14 at NFE 5, within 6%).
DEFAULT_METHOD = "unipc"


def available() -> dict[str, str]:
    """Sampler names and a one-line summary of each."""
    return {name: m.summary for name, m in METHODS.items()}


def check_options(name: str, options: dict) -> Method:
    """METHODS[name], after checking that it is a method and takes every one of `options`."""
    check_choice("method", name, METHODS)
    m = METHODS[name]
    for key in options:
        if key not in m.options:
            raise ValueError(
                f"method {name!r} takes no option {key!r}; it takes: "
                f"{', '.join(m.options) or 'none'}"
            )
    return m


def fit_steps(name: str, nfe: int, extra: int, options: dict) -> int:
    """The most steps of METHODS[name] whose cost, plus `extra` evaluations, fits in `nfe`
    (costs grow with the step count, so a bisection finds it in O(log nfe) cost evaluations)."""
    cost = METHODS[name].nfe
    if cost is None:
        raise ValueError(f"method {name!r} is adaptive: set rtol/atol, not steps or nfe")
    check_int("nfe", nfe, 1)
    if cost(1, options) + extra > nfe:
        raise ValueError(
            f"nfe={nfe} is too small for {name!r}: one step costs "
            f"{cost(1, options) + extra} evaluations"
        )
    lo, hi = 1, nfe  # every step costs at least one evaluation: at most nfe steps fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if cost(mid, options) + extra <= nfe:
            lo = mid
        else:
            hi = mid - 1
    return lo


def steps_for_nfe(method: str, nfe: int, *, denoise_final: bool = True, **options) -> int:
    """The number of steps `sample(..., method=method, nfe=nfe)` uses: the most that fit."""
    check_options(method, options)
    return fit_steps(method, nfe, 1 if denoise_final else 0, options)
