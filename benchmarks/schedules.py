"""Which time grid suits which sampler: every grid x method x SDE at low NFE, exact score.

This is the measurement behind the default grid of each method in sdegen.solvers.METHODS.
Metric: Frechet distance of the samples' Gaussian fit to the true moments of the analytic
8-Gaussian ring (low variance, so small NFE budgets separate clearly), mean over seeds.

    python benchmarks/schedules.py                # a few minutes on 2 cores
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

import sdegen
from sdegen.assembly import SDES, harness
from sdegen.metrics import frechet_distance_to_moments
from sdegen.models import ring_mixture
from sdegen.solvers import METHODS, SCHEDULES

DEFAULT_SDES = ["vp", "subvp", "ve", "edm"]  # the results' SDEs; --sdes takes any of SDES
# torchsde methods need a uniform grid and dopri5 has none, so they are not compared here.
DEFAULT_METHODS = [
    m for m, spec in METHODS.items() if spec.nfe is not None and not m.startswith("torchsde")
]


def run(n: int, nfes: list[int], seeds: int, methods: list[str], sdes: list[str]) -> list[dict]:
    records = []
    for sde_name in sdes:
        sde = SDES[sde_name]()
        model = ring_mixture(sde)
        for method in methods:
            for schedule in SCHEDULES:
                for nfe in nfes:
                    fds = []
                    for s in range(seeds):
                        try:
                            x = sdegen.sample(
                                model,
                                sde,
                                (n, 2),
                                method=method,
                                nfe=nfe,
                                schedule=schedule,
                                generator=torch.Generator().manual_seed(s),
                            ).x
                        except ValueError:
                            break
                        ok = bool(torch.isfinite(x).all())
                        fds.append(
                            frechet_distance_to_moments(x.double(), model.mean(), model.cov())
                            if ok
                            else math.inf
                        )
                    if fds:
                        records.append(
                            {
                                "sde": sde_name,
                                "method": method,
                                "schedule": schedule,
                                "nfe": nfe,
                                "frechet": sum(fds) / len(fds),
                            }
                        )
            print(sde_name, method, flush=True)
    return records


def noise_floor(n: int, seeds: int) -> float:
    """The metric for true samples: Frechet distance of n data samples to the true moments,
    mean over `seeds` sets (the data do not depend on the SDE)."""
    model = ring_mixture(SDES["vp"]())
    fds = [
        frechet_distance_to_moments(
            model.sample(n, generator=torch.Generator().manual_seed(1000 + k), dtype=torch.float64),
            model.mean(),
            model.cov(),
        )
        for k in range(seeds)
    ]
    return sum(fds) / len(fds)


def markdown(records: list[dict], meta: dict) -> str:
    lines = [
        "# Time grid against sampler at low NFE (Frechet distance to the true moments)",
        "",
        f"Analytic 8-Gaussian ring, exact score, {meta['n']} samples, mean over "
        f"{meta['seeds']} seeds; each cell is NFE {' / NFE '.join(map(str, meta['nfe']))}. "
        "**Bold**: the method's default grid. Noise floor (the same metric for "
        f"{meta['n']} true samples, mean of {meta['seeds']} sets): {meta['noise_floor']:.2g}.",
        "",
    ]
    for sde_name in dict.fromkeys(r["sde"] for r in records):
        lines += [
            f"## {sde_name}",
            "",
            "| method | " + " | ".join(SCHEDULES) + " |",
            "|---|" + "---|" * len(SCHEDULES),
        ]
        for method in dict.fromkeys(r["method"] for r in records):
            cells = []
            for sch in SCHEDULES:
                vals = [
                    r["frechet"]
                    for r in records
                    if (r["sde"], r["method"], r["schedule"]) == (sde_name, method, sch)
                ]
                cell = " / ".join(f"{v:.2g}" for v in vals) or "-"
                cells.append(f"**{cell}**" if METHODS[method].schedule == sch else cell)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(records: list[dict], path: Path, nfe: int) -> None:
    plt = harness.pyplot()
    sdes = list(dict.fromkeys(r["sde"] for r in records))
    methods = list(dict.fromkeys(r["method"] for r in records))
    fig, axes = plt.subplots(1, len(sdes), figsize=(3.2 * len(sdes), 4), squeeze=False)
    for ax, sde_name in zip(axes[0], sdes):
        grid = torch.full((len(methods), len(SCHEDULES)), float("nan"))
        for r in records:
            if r["sde"] == sde_name and r["nfe"] == nfe:
                grid[methods.index(r["method"]), list(SCHEDULES).index(r["schedule"])] = math.log10(
                    min(r["frechet"], 1e6)
                )
        im = ax.imshow(grid.numpy(), cmap="viridis_r", vmin=-3.5, vmax=1)
        ax.set(
            title=f"{sde_name}, NFE {nfe}",
            xticks=range(len(SCHEDULES)),
            xticklabels=list(SCHEDULES),
            yticks=range(len(methods)),
            yticklabels=methods if ax is axes[0][0] else [],
        )
    fig.colorbar(im, ax=axes[0].tolist(), label="log10 Frechet distance")
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--n", type=int, default=4000)
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    p.add_argument("--methods", nargs="+", default=DEFAULT_METHODS, choices=list(METHODS))
    p.add_argument("--sdes", nargs="+", default=DEFAULT_SDES, choices=list(SDES))
    args = harness.parse(
        p, argv, out=Path(__file__).parent / "results" / "schedules", seeds=(2, None)
    )
    if args.replot:
        result = harness.load(args.out)
    else:
        torch.set_num_threads(1)
        records = run(args.n, args.nfe, args.seeds, args.methods, args.sdes)
        meta = {
            "n": args.n,
            "nfe": args.nfe,
            "seeds": args.seeds,
            "torch": torch.__version__,
            "noise_floor": noise_floor(args.n, args.seeds),
        }
        result = {"meta": meta, "records": records}
    meta, records = result["meta"], result["records"]
    harness.save(
        args.out,
        None if args.replot else result,
        markdown(records, meta),
        {"grid_vs_method.png": lambda path: plot(records, path, meta["nfe"][0])},
    )


if __name__ == "__main__":
    main()
