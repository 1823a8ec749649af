"""Per-step overhead of every fixed-grid sampler against k-diffusion's, with a trivial model.

Both libraries sample with the same trivial exact denoiser, D(x, sigma) = x / (1 + sigma^2)
(the posterior mean of N(0, I) data under VE noise sigma), so nearly all the time measured is
the samplers' own bookkeeping: sdegen through `KDiffusionModel` on the EDM SDE (alpha = 1,
sigma(t) = t, so it receives the same sigma), k-diffusion's `sample_*` functions directly.
Batch 1, 2-D, float32, one thread. Every denoiser call is counted by one wrapper shared by both
sides; the figure reported is wall time per call (sdegen's includes all of `sdegen.sample`:
grid, prior draw, final denoising), the median over `--repeats` runs that alternate between the
two libraries (so both see the same machine load); the ratio sdegen / k-diffusion is taken per
run (each sdegen run paired with the k-diffusion run after it) and reported as the median of
those ratios, with their interquartile range as the spread.

Every method of `METHODS` with a `step` (a fixed grid) is measured. Where k-diffusion has the
same update ("same"), its sampler runs on sdegen's own grid for that method and budget followed
by sigma = 0. Where it has none ("stand-in"), the comparison is per evaluation against the
k-diffusion sampler doing the same kind of work per call, on a Karras grid with as many calls:
`sample_euler_ancestral` for the reverse-SDE methods (one call, one noise draw and a linear
update per step), `sample_dpmpp_2m` for the multistep exponential integrators (unipc, deis: one
call per step and weights from the log-SNR grid combining the current output with earlier
ones), `sample_dpmpp_2s_ancestral` (eta = 0) for the singlestep one (dpmpp_3s: stages at
intermediate log-SNR levels) and `sample_heun` for rk4 (a multi-stage Runge-Kutta step). Every
stand-in row also reports the ratio against k-diffusion's first-order sampler of the same kind
(`sample_euler`, or `sample_euler_ancestral` where noise is drawn every step), the stand-in of
earlier versions, measured in the same alternating runs.

    python benchmarks/overhead.py    # ~1 min on a quiet 2-core machine, ~3 min loaded (1 thread)
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import torch

import sdegen
from sdegen.assembly import harness
from sdegen.models.adapters import KDiffusionModel
from sdegen.solvers.methods import METHODS
from sdegen.solvers.schedules import get_schedule

# sdegen method -> (k-diffusion sampler, its keyword arguments, "same" update or "stand-in")
_EULER = ("sample_euler", {}, "stand-in")
_EULER_ANCESTRAL = ("sample_euler_ancestral", {}, "stand-in")
_MULTISTEP = ("sample_dpmpp_2m", {}, "stand-in")
_SINGLESTEP = ("sample_dpmpp_2s_ancestral", {"eta": 0.0}, "stand-in")
# evaluations per step of the k-diffusion samplers used as stand-ins (the step to 0 makes one)
STAGES = {"sample_heun": 2, "sample_dpmpp_2s_ancestral": 2}
PAIRS: dict[str, tuple[str, dict, str]] = {
    "euler_maruyama": _EULER_ANCESTRAL,
    "reverse_diffusion": _EULER_ANCESTRAL,
    "ancestral": ("sample_euler_ancestral", {}, "same"),  # DDPM's ancestral step on VP
    "pc": _EULER_ANCESTRAL,
    "euler": ("sample_euler", {}, "same"),  # Euler in t = Euler in sigma on EDM
    "rk4": ("sample_heun", {}, "stand-in"),
    "heun": ("sample_heun", {}, "same"),
    "ddim": ("sample_euler", {}, "same"),
    "dpmpp_2m": ("sample_dpmpp_2m", {}, "same"),
    "dpmpp_3m": ("sample_dpmpp_3m_sde", {"eta": 0.0}, "same"),
    "dpmpp_sde": ("sample_dpmpp_2m_sde", {"eta": 1.0}, "same"),
    "unipc": _MULTISTEP,
    "dpmpp_2s": ("sample_dpmpp_2s_ancestral", {"eta": 0.0}, "same"),
    "dpmpp_3s": _SINGLESTEP,
    "edm_sde": (
        "sample_heun",
        {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003},
        "same",
    ),
    "annealed_langevin": _EULER_ANCESTRAL,
    "k_euler": ("sample_euler", {}, "same"),
    "euler_ancestral": ("sample_euler_ancestral", {}, "same"),
    "k_heun": ("sample_heun", {}, "same"),
    "dpm_2": ("sample_dpm_2", {}, "same"),
    "dpm_2_ancestral": ("sample_dpm_2_ancestral", {}, "same"),
    "dpmpp_2s_ancestral": ("sample_dpmpp_2s_ancestral", {}, "same"),
    "lms": ("sample_lms", {}, "same"),
    "deis": _MULTISTEP,
}
# the first-order stand-in of every stand-in row, also measured (noise drawn every step or not)
FIRST_ORDER = {
    m: ("sample_euler_ancestral" if PAIRS[m] == _EULER_ANCESTRAL else "sample_euler")
    for m, (_, _, kind) in PAIRS.items()
    if kind == "stand-in"
}


class Counted:
    """D(x, sigma) = x / (1 + sigma^2), counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return x / (1 + s * s)


def _sdegen_run(method: str, sde, nfe: int, seed: int) -> tuple[float, int]:
    d = Counted()
    model = KDiffusionModel(d, sde)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    sdegen.sample(model, sde, (1, 2), method=method, nfe=nfe, generator=g)
    return time.perf_counter() - start, d.calls


def _k_run(ks, name: str, kwargs: dict, sigmas: torch.Tensor, seed: int) -> tuple[float, int]:
    d = Counted()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2, generator=g) * sigmas[0]
    kw = dict(kwargs)
    if "ancestral" in name or name.endswith("_sde"):
        # noise from the generator, as sdegen draws it (not k-diffusion's Brownian tree)
        kw["noise_sampler"] = lambda s, s_next: torch.randn(1, 2, generator=g)
    start = time.perf_counter()
    getattr(ks, name)(d, x, sigmas, disable=True, **kw)
    return time.perf_counter() - start, d.calls


def _quartiles(values: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], q[2]


def measure(ks, nfe: int, repeats: int, seed: int, methods: list[str]) -> list[dict]:
    sde = sdegen.EDMSDE()
    records = []
    for method in methods:
        k_name, k_kwargs, kind = PAIRS[method]
        run = sdegen.sample(KDiffusionModel(Counted(), sde), sde, (1, 2), method=method, nfe=nfe)
        if kind == "same":
            # k-diffusion steps on sdegen's own grid for this method and budget, then to 0
            levels = run.ts
        else:
            # a stand-in making as many calls (within one), on a Karras grid
            levels = get_schedule(sde, "karras", (run.nfe - 1) // STAGES.get(k_name, 1))
        sigmas = torch.cat([levels.to(torch.float32), torch.zeros(1)])
        first = FIRST_ORDER.get(method)
        first_sigmas = torch.cat([get_schedule(sde, "karras", run.nfe - 1).float(), torch.zeros(1)])
        ours, theirs, firsts, calls = [], [], [], (0, 0)
        _sdegen_run(method, sde, nfe, seed)  # warm-up of both paths
        _k_run(ks, k_name, k_kwargs, sigmas, seed)
        for r in range(repeats):
            t_ours, n_ours = _sdegen_run(method, sde, nfe, seed + r)
            t_theirs, n_theirs = _k_run(ks, k_name, k_kwargs, sigmas, seed + r)
            ours.append(t_ours / n_ours)
            theirs.append(t_theirs / n_theirs)
            calls = (n_ours, n_theirs)
            if first is not None:
                t_first, n_first = _k_run(ks, first, {}, first_sigmas, seed + r)
                firsts.append(t_first / n_first)
        a, b = statistics.median(ours), statistics.median(theirs)
        # each run beside the other library's next one: their ratio cancels slow load drift
        paired = [o / t for o, t in zip(ours, theirs)]
        ratio, (q1, q3) = statistics.median(paired), _quartiles(paired)
        extra = {}
        if first is not None:
            first_paired = [o / t for o, t in zip(ours, firsts)]
            extra = {
                "first_order": first,
                "ratio_first_order": statistics.median(first_paired),
                "ratio_first_order_iqr": list(_quartiles(first_paired)),
            }
        records.append(
            {
                "method": method,
                "k_diffusion": k_name,
                "k_diffusion_options": k_kwargs,
                "analogue": kind,
                "calls_sdegen": calls[0],
                "calls_k_diffusion": calls[1],
                "us_per_call_sdegen": 1e6 * a,
                "us_per_call_k_diffusion": 1e6 * b,
                "iqr_sdegen": [1e6 * v for v in _quartiles(ours)],
                "iqr_k_diffusion": [1e6 * v for v in _quartiles(theirs)],
                "ratio": ratio,
                "ratio_iqr": [q1, q3],
                **extra,
            }
        )
        print(
            f"{method:20s} vs {k_name:26s} ({kind:8s}) {1e6 * a:7.1f} / {1e6 * b:7.1f} us per "
            f"call, ratio {ratio:.2f} [IQR {q1:.2f}-{q3:.2f}] (calls {calls[0]} / {calls[1]})",
            flush=True,
        )
    return records


def _load_note(meta: dict) -> str:
    # results.json files written before the load was recorded have no such key
    if "load_average" not in meta:
        return ""
    (a, b), wall = meta["load_average"], meta["wall_s"]
    return f" (1-minute load average {a:.1f} at the start, {b:.1f} at the end; {wall:.0f} s)"


def markdown(records: list[dict], meta: dict) -> str:
    worst = max(records, key=lambda r: r["ratio"])
    lines = [
        "# Per-step overhead against k-diffusion (trivial exact denoiser)",
        "",
        f"Batch 1, 2-D, float32, {meta['threads']} thread, budget NFE {meta['nfe']} (sdegen's "
        f"whole `sample` call, final denoise included), median of {meta['repeats']} alternating "
        f"runs, seed {meta['seed']}, k-diffusion imported as: {meta['k_diffusion']}. "
        "Microseconds of wall time per denoiser call, with the interquartile range over the "
        "runs; the ratio is the median, and the IQR, of the per-run ratios sdegen / "
        "k-diffusion (each sdegen run paired with the k-diffusion run after it). "
        "\"same\": k-diffusion's sampler of the same update on sdegen's grid "
        'for the method, then sigma = 0; "stand-in": k-diffusion has no such sampler, so '
        "the time per call is compared with its sampler doing the same kind of work per call, "
        "making as many calls (within one) on a Karras grid: euler_ancestral for the "
        "reverse-SDE methods (a call, a noise draw, a linear update), dpmpp_2m for the "
        "multistep exponential integrators (unipc, deis: grid weights combining the current "
        "output with earlier ones), dpmpp_2s_ancestral (eta 0) for the singlestep dpmpp_3s, "
        "heun for rk4 (a multi-stage Runge-Kutta step). The last column compares stand-in rows "
        "with k-diffusion's first-order euler (euler_ancestral where noise is drawn every "
        "step), the stand-in of earlier versions, in the same alternating runs. Largest ratio: "
        f"{worst['method']} {worst['ratio']:.2f}. Measured on a shared "
        "2-core machine: other processes add noise, which the IQR shows" + _load_note(meta) + ".",
        "",
        "| sdegen | k-diffusion | kind | calls | us/call sdegen | us/call k-diffusion | ratio "
        "| ratio vs first-order |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        opts = ", ".join(f"{k}={v}" for k, v in r["k_diffusion_options"].items())
        name = r["k_diffusion"] + (f"({opts})" if opts else "")
        (a1, a3), (b1, b3), (q1, q3) = r["iqr_sdegen"], r["iqr_k_diffusion"], r["ratio_iqr"]
        first = ""
        if "ratio_first_order" in r:
            f1, f3 = r["ratio_first_order_iqr"]
            first = f"{r['ratio_first_order']:.2f} ({f1:.2f}-{f3:.2f}, {r['first_order']})"
        lines.append(
            f"| {r['method']} | {name} | {r['analogue']} | {r['calls_sdegen']} / "
            f"{r['calls_k_diffusion']} | {r['us_per_call_sdegen']:.0f} ({a1:.0f}-{a3:.0f}) | "
            f"{r['us_per_call_k_diffusion']:.0f} ({b1:.0f}-{b3:.0f}) | {r['ratio']:.2f} "
            f"({q1:.2f}-{q3:.2f}) | {first} |"
        )
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.25 * len(records) + 1.2))
    names = [r["method"] + ("" if r["analogue"] == "same" else " *") for r in records]
    ratios = [r["ratio"] for r in records]
    err = [
        [max(0.0, r["ratio"] - r["ratio_iqr"][0]) for r in records],
        [max(0.0, r["ratio_iqr"][1] - r["ratio"]) for r in records],
    ]
    ax.barh(names, ratios, xerr=err, color="tab:blue")
    ax.axvline(1.0, color="0.4", ls="--")
    ax.invert_yaxis()
    ax.set(
        xlabel="time per call, sdegen / k-diffusion (bars: IQR; *: stand-in)",
        title="per-step overhead (trivial model)",
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fixed_grid_methods() -> list[str]:
    """Every method of METHODS that runs on a fixed grid (has a `step`), in METHODS' order."""
    return [name for name, m in METHODS.items() if m.step is not None]


def main(argv: list[str] | None = None) -> dict | None:
    p = harness.parser(__doc__)
    p.add_argument("--nfe", type=int, default=100, help="network-evaluation budget")
    p.add_argument("--repeats", type=int, default=101, help="alternating runs per sampler")
    p.add_argument("--methods", nargs="*", default=None, help="a subset (default: all)")
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).parent / "results" / "overhead",
        seed=(0, "seed of the prior draws and the noise"),
        replot="rebuild table.md and the plot from results.json",
    )
    if args.replot:
        result = harness.load(args.out)
        figs = {"ratio.png": lambda path: plot(result["records"], path)}
        harness.save(args.out, None, markdown(result["records"], result["meta"]), figs)
        return None
    ks, how = harness.sibling(__file__, "_peers_adapters").load_k_diffusion()
    if ks is None:
        raise SystemExit(f"overhead needs k-diffusion to compare with: {how}")
    torch.set_num_threads(1)
    methods = fixed_grid_methods()
    missing = sorted(set(methods) - set(PAIRS))
    if missing:
        raise SystemExit(f"overhead has no k-diffusion pairing for {missing}: add it to PAIRS")
    if args.methods:
        unknown = sorted(set(args.methods) - set(methods))
        if unknown:
            raise SystemExit(f"--methods: not fixed-grid methods: {unknown}")
        methods = [m for m in methods if m in args.methods]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    records = measure(ks, args.nfe, args.repeats, args.seed, methods)
    meta = {
        "load_average": [load, os.getloadavg()[0]],
        "wall_s": time.perf_counter() - start,
        "nfe": args.nfe,
        "repeats": args.repeats,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "k_diffusion": how,
        "torch": torch.__version__,
    }
    result = {"meta": meta, "records": records}
    figs = {"ratio.png": lambda path: plot(records, path)}
    harness.save(args.out, result, markdown(records, meta), figs)
    return result


if __name__ == "__main__":
    main()
