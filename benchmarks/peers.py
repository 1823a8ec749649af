"""sdegen's samplers against k-diffusion's and diffusers' on the same analytic mixtures and NFE.

The score is exact (a Gaussian mixture diffused by the SDE), so every difference is solver error.
Every sampler, ours or a peer's, gets the same prior draw z for a given seed and calls the same
model through one `sdegen.solvers.CountingModel`, so the NFE in the table is counted, not
computed; a peer's step count is the largest whose counted NFE fits the budget (found by a dry
run on two points). Quality: Frechet distance of the samples' Gaussian fit to the mixture's true
mean and covariance ("FID" in raw space) and sliced W2 to an independent true set, mean +- std
over sampler seeds, beside the noise floor (the same metrics for independent true sets).

Setups (the SDE every library integrates):
  ddpm  VPSDE.from_betas(diffusers' default "linear" betas 1e-4..0.02 over 1000 steps, computed
        as diffusers computes them, in float32): the process diffusers' schedulers assume, so
        sdegen, k-diffusion and diffusers all solve the same ODE. A diffusers timestep i is
        sdegen time t = (i + 1) / 1000 (alphas_cumprod[i] = alpha(t)^2, checked at run time).
  vp    sdegen's default VPSDE (linear beta 0.1..20, t in [1e-3, 1]): sdegen and k-diffusion.
  edm   EDMSDE (sigma in [0.002, 80]): sdegen and k-diffusion.
k-diffusion sees the denoiser D(x_ve, s) = model.denoise(alpha(t) x_ve, t), t = t_of_log_snr(-log
s), on its own Karras grid (get_sigmas_karras, rho = 7) between the SDE's sigma/alpha at t_min and
T, started from x_ve = z / alpha(T). diffusers' schedulers get eps = model.eps(x, t) and the
configuration they ship with, except clip_sample=False for DDIM (the data are not images in
[-1, 1]); "DDIM-trailing" also starts at the last timestep (its default "leading" spacing starts
below it). No option of any sampler was tuned on these results.

Install the peers without replacing torch (k-diffusion's package imports torchvision, whose PyPI
build does not load beside a CPU torch; `k_diffusion.sampling` itself needs only its one helper
`utils.append_dims`, so that module is loaded alone when the package import fails):

    pip install --no-deps k-diffusion==0.1.1.post1 && pip install diffusers==0.42.1
    python benchmarks/peers.py                 # full run (about 20 min on one core); or
    sdegen bench peers                         # the same; new sdegen samplers join by themselves
    python benchmarks/peers.py --n 500 --nfe 5 --seeds 1 --tables ring/ddpm  # smoke run
    python benchmarks/peers.py --replot        # table and PNG again from results.json
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

import sdegen
from sdegen._utils import append_dims
from sdegen.models import GaussianMixtureScore, ring_mixture
from sdegen.sde import EDMSDE, VPSDE
from sdegen.solvers import METHODS, CountingModel, optimise_schedule, steps_for_nfe

HERE = Path(__file__).resolve().parent


def load_sibling(name: str) -> types.ModuleType:
    """Another script of benchmarks/ as a module (benchmarks/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


sm = load_sibling("solvers_mixture")  # metrics, noise floor and mean +- std, shared

N_TRAIN = 1000  # diffusers' num_train_timesteps default
MODEL_DOMAIN = 0.1  # the exact model accepts t down to t_min / 10 (see make_sde)
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
SETUPS = ("ddpm", "vp", "edm")
MIXTURES = ("ring", "gmm16")
# Default tables and sample counts, sized to run in about 20 minutes on one loaded core: the
# 16-D mixture costs ~20x the ring per evaluation, so it runs on the setup where all three
# libraries meet, with fewer samples (its noise floor is in the table).
DEFAULT_TABLES = ("ring/ddpm", "ring/vp", "ring/edm", "gmm16/ddpm")
DEFAULT_N = {"ring": 5000, "gmm16": 2000}
LIBS = ("sdegen", "k-diffusion", "diffusers")


# ---- the problems ------------------------------------------------------------------------------


def diffusers_betas(n: int = N_TRAIN, start: float = 1e-4, end: float = 0.02) -> torch.Tensor:
    """diffusers' "linear" beta_schedule as it builds it (a float32 linspace), in float64."""
    return torch.linspace(start, end, n, dtype=torch.float32).to(torch.float64)


def make_sde(setup: str, domain: float = 1.0):
    """The SDE of a setup: "ddpm" (diffusers' discrete VP), "vp" or "edm".

    domain < 1 gives the same process on a longer interval, t_min * domain: the exact model is
    built on it so that a peer's intermediate evaluation just below the grid's last noise level
    (float32 rounding of the grid, ancestral sub-steps) is still a valid model call.
    """
    if setup == "ddpm":
        return VPSDE.from_betas(diffusers_betas(), t_min=domain / N_TRAIN)
    if setup == "vp":
        return VPSDE(t_min=1e-3 * domain)
    if setup == "edm":
        return EDMSDE(sigma_min=0.002 * domain)
    raise ValueError(f"unknown setup {setup!r}; expected one of: {', '.join(SETUPS)}")


def random_mixture(
    sde, dim: int = 16, components: int = 8, seed: int = 0, spread: float = 1.5
) -> GaussianMixtureScore:
    """A fixed random D-dim mixture: random weights, means N(0, spread^2 I), full covariances
    Q diag(l) Q^T with Q a random rotation and l log-uniform in [0.01, 1] (condition number 100).
    """
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    w = 0.5 + torch.rand(components, generator=g, dtype=f64)
    means = spread * torch.randn(components, dim, generator=g, dtype=f64)
    q, _ = torch.linalg.qr(torch.randn(components, dim, dim, generator=g, dtype=f64))
    lam = 10 ** (-2 * torch.rand(components, dim, generator=g, dtype=f64))
    covs = q @ torch.diag_embed(lam) @ q.transpose(-1, -2)
    return GaussianMixtureScore(w, means, 0.5 * (covs + covs.transpose(-1, -2)), sde)


def make_mixture(name: str, sde) -> GaussianMixtureScore:
    if name == "ring":
        return ring_mixture(sde)
    if name == "gmm16":
        return random_mixture(sde, dim=16)
    raise ValueError(f"unknown mixture {name!r}; expected one of: {', '.join(MIXTURES)}")


def ve_sigmas(sde) -> tuple[float, float]:
    """(sigma_min, sigma_max) of the SDE in EDM/VE variables: sigma/alpha at t_min and at T."""
    lo, hi = sde.log_snr_range()
    return math.exp(-hi), math.exp(-lo)


def diffusers_time(timestep, batch: int, like: torch.Tensor) -> torch.Tensor:
    """sdegen time t = (i + 1) / N of diffusers timestep i (its q(x_i | x_0) is the kernel at t)."""
    t = (float(timestep) + 1) / N_TRAIN
    return torch.full((batch,), t, dtype=like.dtype, device=like.device)


# ---- the peers ---------------------------------------------------------------------------------


def load_k_diffusion() -> tuple[types.ModuleType | None, str]:
    """k_diffusion.sampling and how it was imported; (None, reason) when it is not installed.

    The package's __init__ imports every submodule, and k_diffusion.utils imports torchvision;
    sampling.py uses one function of utils, append_dims (trailing singleton dims, the same
    operation as sdegen's append_dims). When the package import fails, sampling.py is loaded
    alone beside a stand-in utils holding that one function.
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
    utils.append_dims = lambda x, target_dims: append_dims(x, target_dims)
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


def git_commit() -> str | None:
    """HEAD of the sdegen checkout, with "+dirty" when the tree has changes; None outside git."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=HERE,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


class KDenoiser:
    """k-diffusion's denoiser protocol D(x_ve, sigma) over an sdegen model of any linear SDE.

    x_ve = x / alpha(t) and sigma = sigma(t)/alpha(t) = exp(-lambda(t)), so E[x0 | x_ve] is the
    model's denoise at (alpha(t) x_ve, t). Every call goes through the counting wrapper.
    """

    def __init__(self, counted: CountingModel, sde) -> None:
        self.counted, self.sde = counted, sde

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device)
        t = self.sde.t_of_log_snr(-torch.log(sigma.expand(x.shape[0])))
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


# ---- the benchmark -----------------------------------------------------------------------------


def _entries(args, ks, diffusers, model, sde, setup: str, like: torch.Tensor):
    """(library, sampler, budget, runner or skip reason) for every cell of one table."""
    for m in args.methods:
        adaptive = METHODS[m].nfe is None
        for b in [None] if adaptive else args.nfe:
            yield "sdegen", m, b, sdegen_runner(model, sde, m, b)
    for m in args.tuned:
        for b in args.nfe:
            yield "sdegen", f"{m}+opt", b, tuned_runner(model, sde, m, b, like, args)
    if ks is not None:
        for name in args.kdiff:
            if name == K_ADAPTIVE:
                yield "k-diffusion", name, None, kdiff_runner(ks, model, sde, name, None)
                continue
            for b in args.nfe:
                steps = fit_steps(lambda n, nm=name: kdiff_runner(ks, model, sde, nm, n), b, like)
                if steps is None:
                    yield "k-diffusion", name, b, f"nfe={b} is below one step"
                else:
                    yield "k-diffusion", name, b, kdiff_runner(ks, model, sde, name, steps)
    if diffusers is not None and setup == "ddpm":
        for name in args.diffusers:
            for b in args.nfe:
                steps = fit_steps(
                    lambda n, nm=name: diffusers_runner(diffusers, model, nm, n), b, like
                )
                if steps is None:
                    yield "diffusers", name, b, f"nfe={b} is below one step"
                else:
                    yield "diffusers", name, b, diffusers_runner(diffusers, model, name, steps)


def run(args, ks, diffusers) -> dict:
    records, floors, checks, meta_n = [], {}, {}, {}
    for key in args.tables:
        mix, setup = key.split("/")
        n = args.n or DEFAULT_N[mix]
        meta_n[key] = n
        sde = make_sde(setup)
        if setup == "ddpm" and diffusers is not None:
            checks[key] = check_diffusers_mapping(diffusers, sde)
        model = make_mixture(mix, make_sde(setup, MODEL_DOMAIN))
        shape = (n, *model.event_shape)
        reference = model.sample(
            n, generator=torch.Generator().manual_seed(args.seed + 99), dtype=torch.float64
        )
        floors[key] = sm.noise_floor(model, reference, n, args.seed, args.floor_sets)
        zs = [
            sde.prior_sample(
                shape,
                generator=torch.Generator().manual_seed(args.seed + k),
                dtype=torch.float64,
            )
            for k in range(args.seeds)
        ]
        for lib, name, budget, runner in _entries(args, ks, diffusers, model, sde, setup, zs[0]):
            rec = {"mixture": mix, "setup": setup, "lib": lib, "sampler": name}
            rec["nfe_budget"] = budget
            if isinstance(runner, str):
                records.append({**rec, "skipped": runner})
                continue
            if isinstance(runner, tuple):  # a tuned grid: its one-off pilot cost goes on record
                runner, pilot = runner
                rec.update(pilot)
            runs = []
            try:
                for k, z in enumerate(zs):
                    start = time.perf_counter()
                    x, nfe = runner(z, args.seed + k)
                    seconds = time.perf_counter() - start
                    runs.append(
                        {"nfe": nfe, "seconds": seconds, **sm._metrics(x, model, reference)}
                    )
            except ValueError as e:
                if lib != "sdegen":  # a peer's error is a finding, not a skip
                    raise
                # sdegen: budget below one step of this method
                records.append({**rec, "skipped": str(e)})
                continue
            nfes = sorted({r["nfe"] for r in runs})
            if budget is not None and nfes[-1] > budget:
                raise RuntimeError(f"{lib}:{name} counted {nfes} over the budget {budget}")
            rec["nfe"] = nfes[0] if len(nfes) == 1 else nfes
            for m in ("frechet", "sliced_w2", "seconds"):
                rec[m], rec[m + "_std"] = sm._mean_std([r[m] for r in runs])
            rec["frechet_runs"] = [r["frechet"] for r in runs]
            records.append(rec)
            print(
                f"{key:12s} {lib + ':' + name:42s} budget={budget!s:>4} nfe={rec['nfe']!s:>4} "
                f"FID={rec['frechet']:.4g} SW2={rec['sliced_w2']:.4g}",
                flush=True,
            )
    return {"records": records, "noise_floor": floors, "diffusers_mapping": checks, "n": meta_n}


def verdicts(result: dict, budgets=(5, 10, 20)) -> list[dict]:
    """For each table and budget: sdegen's best against the best peer, by mean FID.

    The difference is paired (every sampler saw the same prior draws), so its standard error is
    the std over seeds of the per-seed differences / sqrt(seeds); "significant" means the mean
    difference exceeds two of them.
    """
    out = []
    for key in result["noise_floor"]:
        mix, setup = key.split("/")
        for b in budgets:
            recs = [
                r
                for r in result["records"]
                if (r["mixture"], r["setup"], r["nfe_budget"]) == (mix, setup, b)
                and "skipped" not in r
                and math.isfinite(r["frechet"])
            ]
            ours = [r for r in recs if r["lib"] == "sdegen"]
            peers = [r for r in recs if r["lib"] != "sdegen"]
            if not ours or not peers:
                continue
            a = min(ours, key=lambda r: r["frechet"])
            p = min(peers, key=lambda r: r["frechet"])
            diff = torch.tensor(a["frechet_runs"]) - torch.tensor(p["frechet_runs"])
            se = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
            out.append(
                {
                    "table": key,
                    "nfe": b,
                    "sdegen": a["sampler"],
                    "sdegen_fid": a["frechet"],
                    "peer": f"{p['lib']}:{p['sampler']}",
                    "peer_fid": p["frechet"],
                    "sdegen_lower": a["frechet"] < p["frechet"],
                    "ratio": a["frechet"] / p["frechet"] if p["frechet"] > 0 else math.inf,
                    "significant": bool(abs(float(diff.mean())) > 2 * se) if se == se else None,
                    "floor": result["noise_floor"][key]["frechet"],
                }
            )
    return out


def _fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "inf"


def markdown(result: dict) -> str:
    meta = result["meta"]
    nfes = meta["nfe"]
    lines = [
        "# sdegen against k-diffusion and diffusers on analytic mixtures (exact score)",
        "",
        f"FID = squared Frechet distance of the samples' Gaussian fit to the mixture's true mean "
        f"and covariance (raw space), mean +- std over {meta['seeds']} seeds from {meta['seed']} "
        f"(the same prior draws for every sampler), float64, the sample count in each heading. NFE "
        "budgets are columns; a number in parentheses is the NFE counted when below the budget. "
        "Bold: the best of each library per column. '-': budget below one step. Versions: "
        f"torch {meta['torch']}, sdegen {meta['sdegen']}, k-diffusion {meta['k-diffusion']} "
        f"({meta['k_diffusion_import']}), diffusers {meta['diffusers']}; {meta['threads']} "
        "torch thread(s). Noise floor: the same metric for "
        f"{meta['floor_sets']} independent true sets (mean +- std). Sliced W2 is in the JSON.",
        "",
        "NAME+opt: the sdegen sampler on a grid from `optimise_schedule`, tuned once per table "
        "and budget against the model alone (a tight adaptive solve of pilot draws with their "
        "own seed, never the evaluation draws or true samples). Each sample costs the budget; "
        "the one-off pilot cost is listed under each table.",
        "",
    ]
    vs = verdicts(result)
    for key, floor in result["noise_floor"].items():
        mix, setup = key.split("/")
        recs = [r for r in result["records"] if (r["mixture"], r["setup"]) == (mix, setup)]
        cols = nfes + [None]
        best = {}
        for lib in LIBS:
            for b in cols:
                cands = [
                    r
                    for r in recs
                    if r["lib"] == lib and r["nfe_budget"] == b and "skipped" not in r
                ]
                if cands:
                    best[lib, b] = min(cands, key=lambda r: r["frechet"])["sampler"]
        lines += [
            f"## {mix}, {setup}: {meta['n'][key]} samples (noise floor: FID "
            f"{floor['frechet']:.2e} +- {floor['frechet_std']:.1e})",
            "",
            "| sampler | " + " | ".join(f"NFE {b}" for b in nfes) + " | adaptive |",
            "|---|" + "---|" * len(cols),
        ]
        for lib in LIBS:
            for name in dict.fromkeys(r["sampler"] for r in recs if r["lib"] == lib):
                cells = []
                for b in cols:
                    r = next(
                        (
                            r
                            for r in recs
                            if (r["lib"], r["sampler"], r["nfe_budget"]) == (lib, name, b)
                        ),
                        None,
                    )
                    if r is None:
                        cells.append("")
                    elif "skipped" in r:
                        cells.append("-")
                    else:
                        c = f"{_fmt(r['frechet'])} +- {_fmt(r['frechet_std'])}"
                        if best.get((lib, b)) == name:
                            c = f"**{c}**"
                        if b is None or r["nfe"] != b:
                            c += f" ({r['nfe']})"
                        cells.append(c)
                lines.append(f"| {lib}:{name} | " + " | ".join(cells) + " |")
        lines.append("")
        pilots = [r for r in recs if "pilot_nfe" in r]
        if pilots:
            costs = ", ".join(
                f"{r['sampler']} at NFE {r['nfe_budget']}: {r['pilot_nfe']}" for r in pilots
            )
            lines += [
                f"Pilot cost of the tuned grids (evaluations on {pilots[0]['pilot_batch']} pilot "
                f"samples): {costs}.",
                "",
            ]
        for v in (v for v in vs if v["table"] == key):
            word = "lower" if v["sdegen_lower"] else "higher"
            sig = {True: "significant", False: "not significant", None: "one seed"}[
                v["significant"]
            ]
            lines.append(
                f"- NFE {v['nfe']}: sdegen's best ({v['sdegen']}, {_fmt(v['sdegen_fid'])}) is "
                f"{word} than the best peer ({v['peer']}, {_fmt(v['peer_fid'])}): ratio "
                f"{v['ratio']:.2f}, paired difference {sig} (2 standard errors)."
            )
        lines.append("")
    wins = [v for v in vs if v["sdegen_lower"]]
    lines.append(
        f"sdegen's best is lower than the best peer in {len(wins)} of {len(vs)} (table, NFE) "
        "cells at NFE 5, 10, 20."
    )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """FID against counted NFE, one curve per sampler: sdegen solid, k-diffusion dashed,
    diffusers dotted; adaptive solvers are single points. The y-axis stops at 30 (curves above
    it are diverged samplers; their numbers are in the table)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(result["noise_floor"])
    cols = min(2, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(11 * cols, 6.5 * rows), squeeze=False)
    styles = {"sdegen": ("-", "o"), "k-diffusion": ("--", "s"), "diffusers": (":", "^")}
    cmap = plt.get_cmap("tab20")
    for ax, key in zip(axes.flat, keys):
        mix, setup = key.split("/")
        recs = [
            r
            for r in result["records"]
            if (r["mixture"], r["setup"]) == (mix, setup) and "skipped" not in r
        ]
        names = list(dict.fromkeys((r["lib"], r["sampler"]) for r in recs))
        for i, (lib, name) in enumerate(names):
            pts = sorted(
                (r["nfe"] if isinstance(r["nfe"], int) else statistics.mean(r["nfe"]), r["frechet"])
                for r in recs
                if (r["lib"], r["sampler"]) == (lib, name) and math.isfinite(r["frechet"])
            )
            if pts:
                ls, marker = styles[lib]
                ax.plot(
                    *zip(*pts),
                    ls=ls,
                    marker=marker,
                    ms=4,
                    color=cmap(i % 20),
                    lw=1.3,
                    label=f"{lib}:{name}",
                )
        floor = result["noise_floor"][key]["frechet"]
        ax.axhline(floor, color="k", ls="-.", lw=1.5, label="noise floor")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="NFE (counted)",
            ylabel="FID (raw space)",
            title=f"{mix}, {setup}",
            ylim=(floor / 3, 30),
        )
        ax.legend(fontsize=6.5, ncol=2, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "--n", type=int, default=None, help=f"samples per run (default per mixture: {DEFAULT_N})"
    )
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument(
        "--tables",
        nargs="+",
        default=list(DEFAULT_TABLES),
        choices=[f"{m}/{s}" for m in MIXTURES for s in SETUPS],
        help="mixture/setup pairs",
    )
    p.add_argument(
        "--methods",
        nargs="*",
        default=list(METHODS),
        choices=list(METHODS),
        help="sdegen samplers (default: all of sdegen.solvers.METHODS)",
    )
    p.add_argument(
        "--kdiff",
        nargs="*",
        default=[*K_SAMPLERS, K_ADAPTIVE],
        choices=[*K_SAMPLERS, K_ADAPTIVE],
        help="k-diffusion samplers",
    )
    p.add_argument(
        "--diffusers",
        nargs="*",
        default=list(D_SCHEDULERS),
        choices=list(D_SCHEDULERS),
        help="diffusers schedulers (setup ddpm only)",
    )
    p.add_argument(
        "--tuned",
        nargs="*",
        default=["unipc", "dpmpp_3m", "dpmpp_2m"],
        choices=[k for k, m in METHODS.items() if m.kind == "ode" and m.nfe is not None],
        help="sdegen samplers also run on a grid from optimise_schedule (shown as NAME+opt)",
    )
    p.add_argument("--pilot-batch", type=int, default=256, help="pilot draws for tuned grids")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, default=3, help="sampler seeds averaged per cell")
    p.add_argument("--floor-sets", type=int, default=5, help="true sets for the noise floor")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--out", type=Path, default=HERE / "results" / "peers")
    p.add_argument("--replot", action="store_true", help="rebuild table and PNG from the JSON")
    args = p.parse_args(argv)
    if args.replot:
        result = json.loads((args.out / "results.json").read_text())
    else:
        if args.n is not None and args.n < 2:
            raise ValueError(f"--n must be >= 2 (a covariance is fitted), got {args.n}")
        if args.seeds < 1 or args.floor_sets < 1:
            raise ValueError(
                f"--seeds and --floor-sets must be >= 1, got {args.seeds}, {args.floor_sets}"
            )
        if any(b < 1 for b in args.nfe):
            raise ValueError(f"--nfe budgets must be >= 1, got {args.nfe}")
        torch.set_num_threads(args.threads)
        ks, how = load_k_diffusion()
        diffusers = load_diffusers()
        if ks is None and diffusers is None:
            print("neither k-diffusion nor diffusers is installed: only sdegen rows (see --help)")
        result = run(args, ks, diffusers)
        result["meta"] = {
            "n": result.pop("n"),
            "seed": args.seed,
            "seeds": args.seeds,
            "floor_sets": args.floor_sets,
            "nfe": args.nfe,
            "dtype": "float64",
            "torch": torch.__version__,
            "sdegen": sdegen.__version__,
            "sdegen_commit": git_commit(),
            "k-diffusion": version("k-diffusion") if ks is not None else None,
            "k_diffusion_import": how,
            "diffusers": diffusers.__version__ if diffusers is not None else None,
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
        }
        result["verdicts"] = verdicts(result)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(result, indent=1))
    (args.out / "table.md").write_text(markdown(result))
    plot(result, args.out / "fid_vs_nfe.png")
    written = (
        "table.md, fid_vs_nfe.png" if args.replot else "results.json, table.md, fid_vs_nfe.png"
    )
    print(f"wrote {written} in {args.out}")


if __name__ == "__main__":
    main()
