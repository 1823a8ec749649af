"""sdegen's samplers against k-diffusion's and diffusers' on the same analytic mixtures and NFE.

The score is exact (a Gaussian mixture diffused by the SDE), so every difference is solver error.
Every sampler, ours or a peer's, gets the same prior draw z for a given seed and calls the same
model through one `sdegen.solvers.CountingModel`, so the NFE in the table is counted, not
computed; a peer's step count is the largest whose counted NFE fits the budget (found by a dry
run on two points). Quality: Frechet distance of the samples' Gaussian fit to the mixture's true
mean and covariance ("FID" in raw space) and sliced W2 to an independent true set, mean +- std
over sampler seeds, beside the noise floor (the same metrics for independent true sets).
Accuracy: the RMS distance of each sample to the exact flow's, the probability-flow ODE solved
from the same prior draw to rounding (UniPC, EXACT_STEPS steps uniform in log-SNR from T), for
the deterministic samplers. The exact flow's own FID is the level no ODE sampler can be told
from: near it, FID differences among samplers are the luck of which points each lands on (an
inexact solver can land below it), and the distance says which solved the ODE.

Setups (the SDE every library integrates):
  ddpm  VPSDE.from_betas(diffusers' default "linear" betas 1e-4..0.02 over 1000 steps, computed
        as diffusers computes them, in float32): the process diffusers' schedulers assume, so
        sdegen, k-diffusion and diffusers all solve the same ODE. A diffusers timestep i is
        sdegen time t = (i + 1) / 1000 (alphas_cumprod[i] = alpha(t)^2, checked at run time).
  vp    sdegen's default VPSDE (linear beta 0.1..20, t in [1e-3, 1]): sdegen and k-diffusion.
  edm   EDMSDE (sigma in [0.002, 80]): sdegen and k-diffusion.
k-diffusion sees the denoiser D(x_ve, s) = model.denoise(alpha(t) x_ve, t), t =
t_of_half_log_snr(-log s), on its own Karras grid (get_sigmas_karras, rho = 7) between the SDE's
sigma/alpha at t_min and T, started from x_ve = z / alpha(T). diffusers' schedulers get eps =
model.eps(x, t) and the configuration they ship with, except clip_sample=False for DDIM (the data
are not images in [-1, 1]); "DDIM-trailing" also starts at the last timestep (its default "leading"
spacing starts below it). No option of any sampler was tuned on these results.

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

import math
import os
import platform
import re
import statistics
import time
from pathlib import Path

import torch

import sdegen
from sdegen.assembly import SDES, harness
from sdegen.models import GaussianMixtureScore, ring_mixture
from sdegen.sde import VPSDE
from sdegen.solvers import METHODS

adapters = harness.sibling(__file__, "_peers_adapters")  # the peers and the runners
report = harness.sibling(__file__, "_peers_report")  # verdicts, table and plot
# used here and, as peers.NAME, by tests/test_benchmarks.py and likelihood_speed.py
N_TRAIN, K_SAMPLERS, K_ADAPTIVE = adapters.N_TRAIN, adapters.K_SAMPLERS, adapters.K_ADAPTIVE
D_SCHEDULERS, KDenoiser, fit_steps = adapters.D_SCHEDULERS, adapters.KDenoiser, adapters.fit_steps
ve_sigmas, diffusers_time = adapters.ve_sigmas, adapters.diffusers_time
load_k_diffusion = adapters.load_k_diffusion
check_diffusers_mapping = adapters.check_diffusers_mapping
verdicts, markdown, plot = report.verdicts, report.markdown, report.plot
git_commit, version = harness.git_commit, harness.version

MODEL_DOMAIN = 0.1  # the exact model accepts t down to t_min / 10 (see make_sde)
SETUPS = ("ddpm", "vp", "edm")
# Ill-conditioned mixtures (issue 13), fixed before any default was tuned: "gmm{D}c{k}s{seed}" is
# random_mixture(dim=D, cond=10**k, seed=seed); "digits64" is one Gaussian per class fitted to
# the 8x8 digits' train split (benchmarks/inverse.py), condition numbers in the thousands.
# TUNED_ON (with the ring) chose the default grid's rule (solvers/schedules.py: log_snr_jump);
# the others were never looked at before the rule was fixed. The second rule (levels scaled by
# the data's std, a step from T to 5 std) was fitted on TUNED_ON, two 64-D mixtures among them,
# added then with seeds not used before; its idea came from the first rule's loss on the
# held-out digits64, whose std (0.51) is a third of every other mixture's (1.2-1.5). The third
# (the start rising with the budget, s_d per level) was fitted on TUNED_ON by the distance to the
# exact flow; its idea came from the second rule's held-out losses at NFE 20 (gmm64c4s3, digits64).
TUNED_ON = ("gmm16c4s1", "gmm16c4s2", "gmm16c4s3", "gmm32c3s1", "gmm64c4s1", "gmm64c4s2")
HELD_OUT = ("gmm16c4s4", "gmm16c4s5", "gmm32c4s3", "gmm64c4s3", "digits64")
MIXTURES = ("ring", "gmm16", *TUNED_ON, *HELD_OUT)
# Default tables and sample counts, sized to run in about 20 minutes on one loaded core: the
# 16-D mixture costs ~20x the ring per evaluation, so it runs on the setup where all three
# libraries meet, with fewer samples (its noise floor is in the table).
DEFAULT_TABLES = ("ring/ddpm", "ring/vp", "ring/edm", "gmm16/ddpm")
DEFAULT_N = {"ring": 5000, "gmm16": 2000}
# UniPC steps (uniform in log-SNR from T, final denoising step) of the exact flow's solve: 200
# steps are within 6e-5 RMS of 400 on the 16-64-D mixtures and digits64 (ddpm and EDM), against
# distances of 1e-2 and more for the samplers at NFE <= 20; each run records its own check.
EXACT_STEPS = 400
# k-diffusion's samplers that draw fresh noise on the way: their samples are not the flow's
STOCHASTIC_PEERS = ("euler_ancestral", "dpm_2_ancestral", "dpmpp_2s_ancestral", "dpmpp_sde",
                    "dpmpp_2m_sde", "dpmpp_3m_sde")  # fmt: skip


# ---- the problems ------------------------------------------------------------------------------


def make_sde(setup: str, domain: float = 1.0):
    """The SDE of a setup: "ddpm" (diffusers' discrete VP), "vp" or "edm".

    domain < 1 gives the same process on a longer interval, t_min * domain: the exact model is
    built on it so that a peer's intermediate evaluation just below the grid's last noise level
    (float32 rounding of the grid, ancestral sub-steps) is still a valid model call.
    """
    if setup == "ddpm":
        return VPSDE.from_betas(adapters.diffusers_betas(), t_min=domain / N_TRAIN)
    if setup == "vp":
        return SDES["vp"](t_min=1e-3 * domain)
    if setup == "edm":
        return SDES["edm"](sigma_min=0.002 * domain)
    raise ValueError(f"unknown setup {setup!r}; expected one of: {', '.join(SETUPS)}")


def random_mixture(
    sde,
    dim: int = 16,
    components: int = 8,
    seed: int = 0,
    spread: float = 1.5,
    cond: float = 100.0,
) -> GaussianMixtureScore:
    """A fixed random D-dim mixture: random weights, means N(0, spread^2 I), full covariances
    Q diag(l) Q^T with Q a random rotation and l log-uniform in [1/cond, 1] (condition number up
    to `cond`).
    """
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    w = 0.5 + torch.rand(components, generator=g, dtype=f64)
    means = spread * torch.randn(components, dim, generator=g, dtype=f64)
    q, _ = torch.linalg.qr(torch.randn(components, dim, dim, generator=g, dtype=f64))
    lam = 10 ** (-math.log10(cond) * torch.rand(components, dim, generator=g, dtype=f64))
    covs = q @ torch.diag_embed(lam) @ q.transpose(-1, -2)
    return GaussianMixtureScore(w, means, 0.5 * (covs + covs.transpose(-1, -2)), sde)


def make_mixture(name: str, sde) -> GaussianMixtureScore:
    if name == "ring":
        return ring_mixture(sde)
    if name == "gmm16":
        return random_mixture(sde, dim=16)
    if name == "digits64":
        from sdegen.data.images import load_digits

        data = load_digits("train")
        return harness.sibling(__file__, "inverse").fit_mixture(data.x, data.y, sde, (64,))
    match = re.fullmatch(r"gmm(\d+)c(\d+)s(\d+)", name)
    if match and name in MIXTURES:
        dim, k, seed = map(int, match.groups())
        return random_mixture(sde, dim=dim, seed=seed, cond=10.0**k)
    raise ValueError(f"unknown mixture {name!r}; expected one of: {', '.join(MIXTURES)}")


# ---- the benchmark -----------------------------------------------------------------------------


def _entries(args, ks, diffusers, model, sde, setup: str, like: torch.Tensor):
    """(library, sampler, budget, runner or skip reason) for every cell of one table."""
    kdiff, diff = adapters.kdiff_runner, adapters.diffusers_runner
    for m, b in harness.cells(args.methods, args.nfe):
        yield "sdegen", m, b, adapters.sdegen_runner(model, sde, m, b)
    for m in args.tuned:
        for b in args.nfe:
            yield "sdegen", f"{m}+opt", b, adapters.tuned_runner(model, sde, m, b, like, args)
    if ks is not None:
        for name in args.kdiff:
            if name == K_ADAPTIVE:
                yield "k-diffusion", name, None, kdiff(ks, model, sde, name, None)
                continue
            for b in args.nfe:
                steps = fit_steps(lambda n, nm=name: kdiff(ks, model, sde, nm, n), b, like)
                if steps is None:
                    yield "k-diffusion", name, b, f"nfe={b} is below one step"
                else:
                    yield "k-diffusion", name, b, kdiff(ks, model, sde, name, steps)
    if diffusers is not None and setup == "ddpm":
        for name in args.diffusers:
            for b in args.nfe:
                steps = fit_steps(lambda n, nm=name: diff(diffusers, model, nm, n), b, like)
                if steps is None:
                    yield "diffusers", name, b, f"nfe={b} is below one step"
                else:
                    yield "diffusers", name, b, diff(diffusers, model, name, steps)


def deterministic(lib: str, name: str) -> bool:
    """Whether the sampler's output is a function of its prior draw (an ODE sampler)."""
    if lib == "sdegen":  # an ODE method with an eta option draws noise only at eta > 0
        m = METHODS[name.removesuffix("+opt")]
        return not m.stochastic or (m.kind == "ode" and m.options.get("eta", 1.0) == 0)
    return lib == "diffusers" or name not in STOCHASTIC_PEERS


def exact_flow(model, sde, zs: list[torch.Tensor]) -> tuple[list[torch.Tensor], float]:
    """The probability flow's samples from the prior draws zs, solved to rounding, and the RMS
    distance of the first draw's solve at half the steps (the solve's own error bound)."""

    def solve(z: torch.Tensor, steps: int) -> torch.Tensor:
        return sdegen.sample(
            model, sde, tuple(z.shape), method="unipc", noise=z, steps=steps, schedule="log_snr"
        ).x

    flows = [solve(z, EXACT_STEPS) for z in zs]
    return flows, flow_distance(solve(zs[0], EXACT_STEPS // 2), flows[0])


def flow_distance(x: torch.Tensor, flow: torch.Tensor) -> float:
    """RMS over samples of the Euclidean distance between x and the exact flow's samples."""
    return float((x - flow).flatten(1).pow(2).sum(1).mean().sqrt())


def run(args, ks, diffusers) -> dict:
    records, floors, checks, meta_n, exact = [], {}, {}, {}, {}
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
        floors[key] = harness.noise_floor(model, reference, n, args.seed, args.floor_sets)
        zs = [
            sde.prior_sample(
                shape,
                generator=torch.Generator().manual_seed(args.seed + k),
                dtype=torch.float64,
            )
            for k in range(args.seeds)
        ]
        flows, check = exact_flow(model, sde, zs)
        fids = [harness.mixture_metrics(x, model, reference)["frechet"] for x in flows]
        exact[key] = {"steps": EXACT_STEPS, "half_steps_distance": check, "frechet_runs": fids}
        exact[key]["frechet"], exact[key]["frechet_std"] = harness.mean_std(fids)
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
                    metrics = harness.mixture_metrics(x, model, reference)
                    metrics["flow_distance"] = flow_distance(x.to(torch.float64), flows[k])
                    runs.append({"nfe": nfe, "seconds": seconds, **metrics})
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
                rec[m], rec[m + "_std"] = harness.mean_std([r[m] for r in runs])
            rec["frechet_runs"] = [r["frechet"] for r in runs]
            if deterministic(lib, name):
                rec["flow_distance_runs"] = [r["flow_distance"] for r in runs]
                rec["flow_distance"] = statistics.mean(rec["flow_distance_runs"])
            records.append(rec)
            print(
                f"{key:12s} {lib + ':' + name:42s} budget={budget!s:>4} nfe={rec['nfe']!s:>4} "
                f"FID={rec['frechet']:.4g} SW2={rec['sliced_w2']:.4g}",
                flush=True,
            )
    return {
        "records": records,
        "noise_floor": floors,
        "exact_flow": exact,
        "diffusers_mapping": checks,
        "n": meta_n,
    }


def meta(args, result: dict, ks, how: str, diffusers) -> dict:
    """results.json's "meta" of a `run` (whose per-table sample counts it takes from `result`):
    sizes, seeds, versions and machine."""
    return {
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


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
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
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).resolve().parent / "results" / "peers",
        seed=0,
        seeds=3,
        floor_sets=5,
        threads=1,
    )
    if args.replot:
        result = harness.load(args.out)
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
        diffusers = adapters.load_diffusers()
        if ks is None and diffusers is None:
            print("neither k-diffusion nor diffusers is installed: only sdegen rows (see --help)")
        result = run(args, ks, diffusers)
        result["meta"] = meta(args, result, ks, how, diffusers)
        result["verdicts"] = verdicts(result)
    harness.save(
        args.out,
        None if args.replot else result,
        markdown(result),
        {"fid_vs_nfe.png": lambda path: plot(result, path)},
    )


if __name__ == "__main__":
    main()
