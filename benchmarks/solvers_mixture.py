"""Sample quality against NFE for every sampler, on an analytic Gaussian mixture.

The score is exact, so every difference between samplers is solver error, not model error.
For each SDE, sampler and NFE budget it records the NFE actually counted, the Frechet distance
of the samples' Gaussian fit to the mixture's true mean and covariance, and the sliced
2-Wasserstein distance to an independent set of true samples; and the noise floor of both
metrics (the same metric between true samples). Writes JSON, a markdown table and a PNG.

    python benchmarks/solvers_mixture.py                   # full run (a few minutes on 2 cores)
    python benchmarks/solvers_mixture.py --n 500 --nfe 5   # smoke run
"""

from __future__ import annotations

from pathlib import Path

import torch

from sdegen.assembly import SDES, harness, plots
from sdegen.models import ring_mixture
from sdegen.solvers import METHODS

DEFAULT_SDES = ["vp", "subvp", "ve", "edm"]  # the results' SDEs; --sdes takes any of SDES


def run(
    n: int,
    nfes: list[int],
    sdes: list[str],
    seed: int,
    methods: list[str],
    seeds: int = 3,
    floor_sets: int = 5,
) -> dict:
    records, floors = [], {}
    for sde_name in sdes:
        sde = SDES[sde_name]()
        model = ring_mixture(sde)
        reference = model.sample(
            n, generator=torch.Generator().manual_seed(seed + 99), dtype=torch.float64
        )
        floors[sde_name] = harness.noise_floor(model, reference, n, seed, floor_sets)
        for method, budget in harness.cells(methods, nfes):
            kw = {} if budget is None else {"nfe": budget}
            rec = {"sde": sde_name, "method": method, "nfe_budget": budget}
            try:
                res, fields = harness.mixture_runs(
                    model, sde, reference, method=method, n=n, seed=seed, seeds=seeds, **kw
                )
            except ValueError as e:  # budget below one step of this method
                records.append({**rec, "skipped": str(e)})
                continue
            rec.update(fields)
            records.append(rec)
            print(
                f"{sde_name:6s} {method:26s} budget={budget!s:>4} nfe={res.nfe:4d} "
                f"FD={rec['frechet']:.4g} SW2={rec['sliced_w2']:.4g}",
                flush=True,
            )
    return {"records": records, "noise_floor": floors}


def markdown(result: dict, nfes: list[int]) -> str:
    meta = result["meta"]
    lines = [
        "# Sampler error against NFE on an analytic 8-Gaussian ring (exact score)",
        "",
        f"Sliced W2 to {meta['n']} independent true samples (lower is better; Frechet distance "
        f"to the true moments in the JSON), mean over {meta['seeds']} sampler seeds from "
        f"{meta['seed']}, {meta['n']} samples each, NFE as counted (denoising step included), "
        f"float32, each method's default grid, {meta['threads']} torch thread(s). The noise "
        f"floor is the same metric for {meta['floor_sets']} independent true sample sets "
        "(mean +- std): differences inside it are not significant. A cell of '-' is a budget "
        "below one step of that method.",
        "",
    ]
    for sde_name, floor in result["noise_floor"].items():
        recs = [r for r in result["records"] if r["sde"] == sde_name]
        lines += [
            f"## {sde_name} (noise floor: SW2 {floor['sliced_w2']:.4f} +- "
            f"{floor['sliced_w2_std']:.4f}, FD {floor['frechet']:.2e} +- "
            f"{floor['frechet_std']:.1e})",
            "",
            "| method | " + " | ".join(f"NFE {b}" for b in nfes) + " | adaptive |",
            "|---|" + "---|" * (len(nfes) + 1),
        ]
        for method in dict.fromkeys(r["method"] for r in recs):
            cells = []
            for b in nfes + [None]:
                r = next((r for r in recs if r["method"] == method and r["nfe_budget"] == b), None)
                if r is None or "skipped" in r:
                    cells.append("-" if b is not None or r is not None else "")
                else:
                    cells.append(
                        f"{r['sliced_w2']:.4f}" + ("" if r["nfe"] == b else f" ({r['nfe']})")
                    )
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("A number in parentheses is the NFE counted when it differs from the budget.")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    plots.quality_vs_nfe_panels(
        harness.nfe_panels(result, "method"),
        "sliced W2",
        path,
        style=lambda name, pts: "o" if len(pts) == 1 else ".-",
    )


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    p.add_argument("--sdes", nargs="+", default=DEFAULT_SDES, choices=list(SDES))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).parent / "results" / "solvers_mixture",
        seed=0,
        seeds=3,
        floor_sets=5,
        threads=1,
    )
    if args.replot:
        result = harness.load(args.out)
    else:
        torch.set_num_threads(args.threads)
        result = run(
            args.n, args.nfe, args.sdes, args.seed, args.methods, args.seeds, args.floor_sets
        )
        result["meta"] = {
            "n": args.n,
            "seed": args.seed,
            "seeds": args.seeds,
            "floor_sets": args.floor_sets,
            "nfe": args.nfe,
            **harness.environment(),
        }
    harness.save(
        args.out,
        None if args.replot else result,
        markdown(result, result["meta"]["nfe"]),
        {"sw_vs_nfe.png": lambda path: plot(result, path)},
    )


if __name__ == "__main__":
    main()
