"""Annealed Langevin dynamics against the reverse-SDE and PF-ODE samplers at equal NFE.

On the analytic 8-Gaussian ring (exact score, so every difference is sampler error), for each
SDE and NFE budget: annealed Langevin (Song & Ermon 2019) with its defaults (K = 1 step per
level, eps = 2 sigma~_L^2), with K = 3, and with NCSN's step ratio eps = 0.2 sigma~_L^2;
the reverse-SDE samplers euler_maruyama, reverse_diffusion, ancestral and pc; and two PF-ODE
samplers, heun and dpmpp_2m. Each cell records the NFE counted (final denoise included), the
sliced W2 to an independent true set and the Frechet distance to the true moments, averaged over
sampler seeds, with the metrics' noise floor (the same metric between true sets).

    python benchmarks/langevin.py                 # ~1 CPU-minute (n = 4000, 2 seeds, vp and ve)
    python benchmarks/langevin.py --nfe 10 30 100 300             # ~2.5 CPU-minutes
    python benchmarks/langevin.py --n 300 --nfe 10 --sdes ve   # smoke run
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from sdegen.assembly import SDES, harness, plots
from sdegen.models import ring_mixture

# (label, method, options); "eps_ratio" is eps / sigma~_L^2, turned into eps per SDE
VARIANTS = [
    ("annealed_langevin", "annealed_langevin", {}),
    ("annealed_langevin K=3", "annealed_langevin", {"K": 3}),
    ("annealed_langevin NCSN eps", "annealed_langevin", {"eps_ratio": 0.2}),
    ("euler_maruyama", "euler_maruyama", {}),
    ("reverse_diffusion", "reverse_diffusion", {}),
    ("ancestral", "ancestral", {}),
    ("pc", "pc", {}),
    ("heun (PF-ODE)", "heun", {}),
    ("dpmpp_2m (PF-ODE)", "dpmpp_2m", {}),
]


def _options(sde, options: dict) -> dict:
    options = dict(options)
    if "eps_ratio" in options:
        t = torch.tensor([sde.t_min], dtype=torch.float64)
        options["eps"] = options.pop("eps_ratio") * float(sde.sigma(t) / sde.alpha(t)) ** 2
    return options


def run(n: int, nfes: list[int], sdes: list[str], seed: int, seeds: int, floor_sets: int) -> dict:
    records, floors = [], {}
    for sde_name in sdes:
        sde = SDES[sde_name]()
        model = ring_mixture(sde)
        reference = model.sample(
            n, generator=torch.Generator().manual_seed(seed + 99), dtype=torch.float64
        )
        floors[sde_name] = harness.noise_floor(model, reference, n, seed, floor_sets)
        for label, method, options in VARIANTS:
            for budget in nfes:
                rec = {"sde": sde_name, "variant": label, "method": method, "nfe_budget": budget}
                kw = _options(sde, options)
                try:
                    res, fields = harness.mixture_runs(
                        model, sde, reference, method=method, n=n, seed=seed, seeds=seeds,
                        nfe=budget, **kw,
                    )  # fmt: skip
                except ValueError as e:  # budget below one step of this method
                    records.append({**rec, "skipped": str(e)})
                    continue
                rec.update(fields, options=kw)
                records.append(rec)
                print(
                    f"{sde_name:4s} {label:28s} budget={budget:4d} nfe={res.nfe:4d} "
                    f"FD={rec['frechet']:.4g} SW2={rec['sliced_w2']:.4g}",
                    flush=True,
                )
    return {"records": records, "noise_floor": floors}


def _table(recs: list[dict], nfes: list[int], key: str, fmt: str) -> list[str]:
    lines = [
        "| sampler | " + " | ".join(f"NFE {b}" for b in nfes) + " |",
        "|---|" + "---|" * len(nfes),
    ]
    for label in dict.fromkeys(r["variant"] for r in recs):
        cells = []
        for b in nfes:
            r = next(r for r in recs if r["variant"] == label and r["nfe_budget"] == b)
            if "skipped" in r:
                cells.append("-")
            else:
                cells.append(format(r[key], fmt) + ("" if r["nfe"] == b else f" ({r['nfe']})"))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def markdown(result: dict) -> str:
    meta = result["meta"]
    nfes = meta["nfe"]
    lines = [
        "# Annealed Langevin against reverse-SDE and PF-ODE samplers at equal NFE",
        "",
        f"Analytic 8-Gaussian ring (exact score), {meta['n']} samples per run, mean over "
        f"{meta['seeds']} sampler seeds from {meta['seed']}, NFE as counted (the final "
        f"denoising step included), float32, each method's default grid (annealed Langevin: "
        f"log-SNR, i.e. geometric noise levels sigma/alpha), {meta['threads']} torch "
        "thread(s). Annealed Langevin: K = 1 step per level and eps = 2 sigma~_L^2 "
        "(defaults), K = 3, or NCSN's ratio eps = 0.2 sigma~_L^2 (K = 1). Noise floor: the "
        f"same metric for {meta['floor_sets']} independent true sets (mean +- std). Run time "
        f"{meta['seconds']:.0f} s wall, {meta['cpu_seconds']:.0f} s CPU (busy shared 2-core "
        "machine). A number "
        "in parentheses is the NFE counted where the budget does not divide into whole "
        "levels; '-' is a budget below one step.",
        "",
    ]
    for sde_name, floor in result["noise_floor"].items():
        recs = [r for r in result["records"] if r["sde"] == sde_name]
        lines += [
            f"## {sde_name}: sliced W2 to true samples (noise floor {floor['sliced_w2']:.4f} +- "
            f"{floor['sliced_w2_std']:.4f})",
            "",
            *_table(recs, nfes, "sliced_w2", ".4f"),
            "",
            f"## {sde_name}: Frechet distance to the true moments (noise floor "
            f"{floor['frechet']:.1e} +- {floor['frechet_std']:.1e})",
            "",
            *_table(recs, nfes, "frechet", ".3g"),
            "",
        ]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    plots.quality_vs_nfe_panels(
        harness.nfe_panels(result, "variant"),
        "sliced W2",
        path,
        style=lambda name, pts: "o-" if name.startswith("annealed") else ".--",
    )


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--n", type=int, default=4000, help="samples per run")
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 30, 100])
    p.add_argument("--sdes", nargs="+", default=["vp", "ve"], choices=list(SDES))
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).parent / "results" / "langevin",
        seed=0,
        seeds=2,
        floor_sets=5,
        threads=1,
    )
    if args.replot:
        result = harness.load(args.out)
    else:
        torch.set_num_threads(args.threads)
        start, cpu = time.perf_counter(), time.process_time()
        result = run(args.n, args.nfe, args.sdes, args.seed, args.seeds, args.floor_sets)
        result["meta"] = {
            "n": args.n,
            "seed": args.seed,
            "seeds": args.seeds,
            "floor_sets": args.floor_sets,
            "nfe": args.nfe,
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu,
            **harness.environment(),
        }
    harness.save(
        args.out,
        None if args.replot else result,
        markdown(result),
        {"sw_vs_nfe.png": lambda path: plot(result, path)},
    )


if __name__ == "__main__":
    main()
