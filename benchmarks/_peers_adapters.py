"""The peers' side of benchmarks/peers.py: k-diffusion and diffusers loaded, the SDE seen in
their variables, and one runner per sampler, ours or a peer's, that maps a prior draw and a
seed to samples and the NFE counted by one `sdegen.solvers.CountingModel` around the model.

Nothing here is a benchmark (the leading "_"): peers.py and likelihood_speed.py use it.
"""

from __future__ import annotations

import importlib.util
import math
import sys
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import sdegen
from sdegen.solvers import CountingModel, optimise_schedule, steps_for_nfe

N_TRAIN = 1000  # diffusers' num_train_timesteps default
K_SAMPLERS = (
    "euler",
    "heun",
    "dpm_2",
    "lms",
    "dpmpp_2m",
    "dpm_fast",
    "euler_ancestral",
    "dpm_2_ancestral",
    "dpmpp_2s_ancestral",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "dpmpp_3m_sde",
)
K_ADAPTIVE = "dpm_adaptive"
# name -> (scheduler class name, config overrides); every other option is diffusers' default.
D_SCHEDULERS = {
    "DDIM": ("DDIMScheduler", {"clip_sample": False}),
    "DDIM-trailing": ("DDIMScheduler", {"clip_sample": False, "timestep_spacing": "trailing"}),
    "DPMSolverMultistep-2M": ("DPMSolverMultistepScheduler", {"solver_order": 2}),
    "DPMSolverMultistep-3M": ("DPMSolverMultistepScheduler", {"solver_order": 3}),
    "DPMSolverMultistep-2M-karras": (
        "DPMSolverMultistepScheduler",
        {"solver_order": 2, "use_karras_sigmas": True},
    ),
    "UniPCMultistep": ("UniPCMultistepScheduler", {}),
    "UniPCMultistep-3": ("UniPCMultistepScheduler", {"solver_order": 3}),
    "DEISMultistep": ("DEISMultistepScheduler", {}),
    "EulerDiscrete": ("EulerDiscreteScheduler", {}),
}


def append_dims(x: torch.Tensor, target_dims: int) -> torch.Tensor:
    """x with trailing singleton dims up to target_dims (k_diffusion.utils.append_dims)."""
    if x.ndim > target_dims:
        raise ValueError(f"cannot broadcast a tensor of shape {tuple(x.shape)} to {target_dims}")
    return x.reshape(x.shape + (1,) * (target_dims - x.ndim))


def diffusers_betas(n: int = N_TRAIN, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """diffusers' "linear" beta_schedule as it builds it (a float32 linspace), in float64."""
    return torch.linspace(start, end, n, dtype=torch.float32).to(torch.float64)


def ve_sigmas(sde) -> tuple[float, float]:
    """(sigma_min, sigma_max) of the SDE in EDM/VE variables: sigma/alpha at t_min and at T."""
    lo, hi = sde.half_log_snr_range()
    return math.exp(-hi), math.exp(-lo)


def diffusers_time(timestep, batch: int, like: torch.Tensor) -> torch.Tensor:
    """sdegen time t = (i + 1) / N of diffusers timestep i (its q(x_i | x_0) is the kernel at t)."""
    t = (float(timestep) + 1) / N_TRAIN
    return torch.full((batch,), t, dtype=like.dtype, device=like.device)


def load_k_diffusion() -> tuple[types.ModuleType | None, str]:
    """k_diffusion.sampling and how it was imported; (None, reason) when it is not installed.

    The package's __init__ imports every submodule, and k_diffusion.utils imports torchvision;
    sampling.py uses one function of utils, append_dims (trailing singleton dims). When the
    package import fails, sampling.py is loaded alone beside a stand-in utils holding this
    module's append_dims.
    """
    try:
        import k_diffusion.sampling as ks

        return ks, "import k_diffusion.sampling"
    except ImportError as e:
        first_error = f"{type(e).__name__}: {e}"
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        return None, "k-diffusion is not installed"
    for key in [k for k in sys.modules if k == "k_diffusion" or k.startswith("k_diffusion.")]:
        del sys.modules[key]  # drop what the failed import left half-built
    pkg_dir = Path(spec.submodule_search_locations[0])
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [str(pkg_dir)]
    utils = types.ModuleType("k_diffusion.utils")
    utils.append_dims = append_dims
    pkg.utils = utils
    sys.modules["k_diffusion"], sys.modules["k_diffusion.utils"] = pkg, utils
    sspec = importlib.util.spec_from_file_location("k_diffusion.sampling", pkg_dir / "sampling.py")
    ks = importlib.util.module_from_spec(sspec)
    sys.modules["k_diffusion.sampling"] = ks
    sspec.loader.exec_module(ks)
    pkg.sampling = ks
    return (
        ks,
        f"k_diffusion/sampling.py alone with utils.append_dims (package import: {first_error})",
    )


def load_diffusers() -> types.ModuleType | None:
    try:
        import diffusers
    except ImportError:
        return None
    diffusers.utils.logging.set_verbosity_error()
    return diffusers


class KDenoiser:
    """k-diffusion's denoiser protocol D(x_ve, sigma) over an sdegen model of any linear SDE.

    x_ve = x / alpha(t) and sigma = sigma(t)/alpha(t) = exp(-lambda(t)), so E[x0 | x_ve] is the
    model's denoise at (alpha(t) x_ve, t). Every call goes through the counting wrapper.
    """

    def __init__(self, counted: CountingModel, sde) -> None:
        self.counted, self.sde = counted, sde

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        t = self.sde.t_of_half_log_snr(-torch.log(sigma.expand(x.shape[0])))
        a = append_dims(self.sde.alpha(t), x.ndim).to(x.dtype)
        return self.counted.denoise(a * x, t.to(x.dtype))


def check_diffusers_mapping(diffusers, sde) -> dict[str, float]:
    """alphas_cumprod[i] of diffusers' default schedule against alpha((i+1)/N)^2 of `sde`.

    diffusers keeps betas and alphas_cumprod in float32; the betas agree exactly, the float64
    cumulative product of them to 1e-12 and diffusers' own float32 product to float32 rounding.
    """
    sched = diffusers.DDIMScheduler()
    t = (torch.arange(N_TRAIN, dtype=torch.float64) + 1) / N_TRAIN
    a2 = sde.alpha(t) ** 2
    betas = sched.betas.to(torch.float64)
    exact = torch.cumprod(1 - betas, 0)
    out = {
        "betas_max_abs": float((betas - diffusers_betas()).abs().max()),
        "cumprod64_max_rel": float(((a2 - exact) / exact).abs().max()),
        "alphas_cumprod_max_rel": float(((a2 - sched.alphas_cumprod.double()) / a2).abs().max()),
    }
    if out["betas_max_abs"] != 0 or out["cumprod64_max_rel"] > 1e-12:
        raise RuntimeError(f"the ddpm SDE does not match diffusers' schedule: {out}")
    if out["alphas_cumprod_max_rel"] > 1e-5:
        raise RuntimeError(f"diffusers' float32 alphas_cumprod is off the SDE: {out}")
    return out


# ---- one sampler run: (z, seed) -> (samples, counted NFE) ---------------------------------------

Runner = Callable[[torch.Tensor, int], tuple[torch.Tensor, int]]


def sdegen_runner(model, sde, method: str, budget: int | None) -> Runner:
    def run(z: torch.Tensor, seed: int) -> tuple[torch.Tensor, int]:
        kw = {} if budget is None else {"nfe": budget}
        res = sdegen.sample(
            model,
            sde,
            tuple(z.shape),
            method=method,
            noise=z,
            generator=torch.Generator().manual_seed(seed),
            **kw,
        )
        return res.x, res.nfe

    return run


def tuned_runner(model, sde, method: str, budget: int, like: torch.Tensor, args):
    """sdegen's `method` on a grid from `optimise_schedule`, tuned once per (table, method,
    budget) on its own pilot draws (seed `args.seed + 1000`, never an evaluation draw), against
    the model only. Returns the runner and the pilot record (its NFE and batch) for the table."""
    steps = steps_for_nfe(method, budget)
    opt = optimise_schedule(
        model,
        sde,
        (args.pilot_batch, *like.shape[1:]),
        method,
        steps,
        generator=torch.Generator().manual_seed(args.seed + 1000),
        dtype=like.dtype,
    )

    def run(z: torch.Tensor, seed: int) -> tuple[torch.Tensor, int]:
        res = sdegen.sample(model, sde, tuple(z.shape), method=method, schedule=opt.ts, noise=z)
        return res.x, res.nfe

    pilot = {"pilot_nfe": opt.pilot_nfe, "pilot_batch": opt.pilot_batch, "grid": opt.ts.tolist()}
    return run, pilot


def kdiff_runner(ks, model, sde, name: str, steps: int | None) -> Runner:
    """k-diffusion's sample_<name> on its Karras grid of `steps` noise levels (plus 0);
    dpm_fast takes `steps` as its NFE and dpm_adaptive its defaults (rtol 0.05, atol 0.0078).
    Stochastic samplers draw from torch's global generator, seeded per run."""
    s_min, s_max = ve_sigmas(sde)

    def run(z: torch.Tensor, seed: int) -> tuple[torch.Tensor, int]:
        counted = CountingModel(model)
        den = KDenoiser(counted, model.sde)
        t_end = torch.full((z.shape[0],), sde.T, dtype=torch.float64)
        x = z / append_dims(sde.alpha(t_end), z.ndim).to(z.dtype)
        torch.manual_seed(seed)
        fn = getattr(ks, f"sample_{name}")
        # k-diffusion's Brownian tree is built on float32 sigma ends and queried at exp(-(-log
        # sigma)), which may land one ulp outside: torchsde warns, the draw is unaffected.
        warnings.filterwarnings("ignore", message="Should have tb<=t1", category=UserWarning)
        if name == "dpm_fast":
            x = fn(den, x, s_min, s_max, steps, disable=True)
        elif name == K_ADAPTIVE:
            x = fn(den, x, s_min, s_max, disable=True)
        else:
            x = fn(den, x, ks.get_sigmas_karras(steps, s_min, s_max), disable=True)
        return x, counted.nfe

    return run


def diffusers_runner(diffusers, model, name: str, steps: int) -> Runner:
    cls_name, overrides = D_SCHEDULERS[name]

    def run(z: torch.Tensor, seed: int) -> tuple[torch.Tensor, int]:
        sched = getattr(diffusers, cls_name)(**overrides)
        with warnings.catch_warnings():
            # numpy 2 warns about diffusers building numpy arrays from tensors (copy keyword)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="diffusers")
            sched.set_timesteps(steps)
        counted = CountingModel(model)
        x = z * sched.init_noise_sigma  # 1 for VP schedulers; 1/alpha(T) for Euler's VE scale
        for ts in sched.timesteps:
            inp = sched.scale_model_input(x, ts)
            eps = counted.eps(inp, diffusers_time(ts, x.shape[0], x))
            x = sched.step(eps, ts, x).prev_sample
        return x, counted.nfe

    return run


def fit_steps(make_run: Callable[[int], Runner], budget: int, like: torch.Tensor) -> int | None:
    """The most steps whose counted NFE fits `budget`, by dry runs on two points; None if none.

    Counts do not depend on the batch and grow with the steps, so a bisection over [1, budget]
    of dry runs on two points finds it.
    """

    def fits(steps: int) -> bool:
        return make_run(steps)(like[:2].clone(), 0)[1] <= budget

    # invariant: lo steps fit (0 by convention) and hi do not (every step costs >= 1); the
    # search never tries 1 step unless nothing larger fits (a single step to sigma = 0 fails
    # in some of k-diffusion's SDE samplers)
    lo, hi = 0, budget + 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo or None
