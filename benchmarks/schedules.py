"""Which time grid suits which sampler: every grid x method x SDE at low NFE, exact score.

This is the measurement behind the default grid of each method in sdegen.solvers.METHODS.
Metric: Frechet distance of the samples' Gaussian fit to the true moments of the analytic
8-Gaussian ring (low variance, so small NFE budgets separate clearly), mean over seeds.

A second part compares DDPM's beta schedules (linear, cosine, quadratic, sigmoid;
`sdegen.sde.beta_schedule`) as SDEs (`ddpm_sde`, N steps): their log-SNR curves (snr_curves.png)
and the same metric for a few samplers on the uniform and log-SNR grids.

    python benchmarks/schedules.py                # a few minutes on 2 cores
    python benchmarks/schedules.py --parts betas  # the beta schedules only (under a minute);
                                                  # the grid part is kept from results.json
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

import sdegen
from sdegen.assembly import SDES, harness
from sdegen.metrics import frechet_distance_to_moments
from sdegen.models import ring_mixture
from sdegen.sde import BETA_SCHEDULES, beta_schedule, ddpm_sde, grid_times
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


BETA_METHODS = ["ddim", "dpmpp_2m", "ancestral"]
BETA_GRIDS = ["uniform", "log_snr"]


def run_betas(
    n: int, nfes: list[int], seeds: int, steps: int, names: list[str]
) -> tuple[list[dict], list[dict]]:
    """Per beta schedule: a summary of its SNR (and the log-SNR curve at every 10th grid time),
    and the Frechet metric of BETA_METHODS on BETA_GRIDS with the exact ring score."""
    curves, records = [], []
    for name in names:
        sde = ddpm_sde(name, steps)
        betas = beta_schedule(name, steps)
        t = grid_times(sde)
        log_snr = torch.log(sde.snr(t))
        # the half-noise point: the first grid time where the log-SNR is below 0
        half = float(t[int(torch.nonzero(log_snr < 0)[0])])
        curves.append(
            {
                "schedule": name,
                "steps": steps,
                "beta_1": float(betas[0]),
                "beta_N": float(betas[-1]),
                "alpha_bar_N": float(torch.prod(1 - betas)),
                "log_snr_first": float(log_snr[0]),
                "log_snr_last": float(log_snr[-1]),
                "t_half_noise": half,
                "t": t[::10].tolist() + [1.0],
                "log_snr": log_snr[::10].tolist() + [float(log_snr[-1])],
            }
        )
        model = ring_mixture(sde)
        for method in BETA_METHODS:
            for grid in BETA_GRIDS:
                for nfe in nfes:
                    fds = []
                    for s in range(seeds):
                        x = sdegen.sample(
                            model,
                            sde,
                            (n, 2),
                            method=method,
                            nfe=nfe,
                            schedule=grid,
                            generator=torch.Generator().manual_seed(s),
                        ).x
                        ok = bool(torch.isfinite(x).all())
                        fds.append(
                            frechet_distance_to_moments(x.double(), model.mean(), model.cov())
                            if ok
                            else math.inf
                        )
                    records.append(
                        {
                            "beta_schedule": name,
                            "method": method,
                            "schedule": grid,
                            "nfe": nfe,
                            "frechet": sum(fds) / len(fds),
                        }
                    )
        print("betas", name, flush=True)
    return curves, records


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
                default = METHODS[method].default_schedule(SDES[sde_name]())
                cells.append(f"**{cell}**" if default == sch else cell)
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def markdown_betas(curves: list[dict], records: list[dict], meta: dict) -> str:
    nfes = meta["nfe"]
    lines = [
        f"## DDPM beta schedules (N = {curves[0]['steps']} steps, `ddpm_sde`)",
        "",
        "log SNR = log(alpha_bar / (1 - alpha_bar)) at the first and last grid time; t(half "
        "noise): the first grid time where the log-SNR is below 0. Samplers: Frechet distance "
        f"as above (exact score, {meta['n']} samples, mean over {meta['seeds']} seeds), NFE "
        f"{' / '.join(map(str, nfes))}, on the uniform grid and the log-SNR grid.",
        "",
        "| schedule | beta_1 | beta_N | alpha_bar_N | log SNR first | log SNR last | "
        "t(half noise) | "
        + " | ".join(f"{m} {g}" for m in BETA_METHODS for g in BETA_GRIDS)
        + " |",
        "|---|" + "---|" * (6 + len(BETA_METHODS) * len(BETA_GRIDS)),
    ]
    for c in curves:
        cells = []
        for m in BETA_METHODS:
            for g in BETA_GRIDS:
                vals = [
                    r["frechet"]
                    for r in records
                    if (r["beta_schedule"], r["method"], r["schedule"]) == (c["schedule"], m, g)
                ]
                cells.append(" / ".join(f"{v:.2g}" for v in vals) or "-")
        lines.append(
            f"| {c['schedule']} | {c['beta_1']:.3g} | {c['beta_N']:.3g} | "
            f"{c['alpha_bar_N']:.2g} | {c['log_snr_first']:.2f} | {c['log_snr_last']:.2f} | "
            f"{c['t_half_noise']:.3f} | " + " | ".join(cells) + " |"
        )
    lines.append("")
    return "\n".join(lines)


def plot_snr(curves: list[dict], path: Path) -> None:
    plt = harness.pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(9, 3.6))
    for c in curves:
        ax.plot(c["t"], c["log_snr"], label=c["schedule"])
        betas = beta_schedule(c["schedule"], c["steps"])
        bx.plot(torch.arange(1, c["steps"] + 1) / c["steps"], betas, label=c["schedule"])
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xlabel="t = k / N", ylabel="log SNR = log(alpha_bar / (1 - alpha_bar))")
    ax.set_title(f"DDPM beta schedules, N = {curves[0]['steps']}")
    bx.set(xlabel="t = k / N", ylabel="beta_k", yscale="log", title="betas")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")


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
    p.add_argument("--betas", nargs="+", default=list(BETA_SCHEDULES), choices=BETA_SCHEDULES)
    p.add_argument("--beta-steps", type=int, default=1000, help="N of the beta schedules")
    p.add_argument(
        "--parts",
        nargs="+",
        default=["grids", "betas"],
        choices=["grids", "betas"],
        help="what to run; a part left out is kept from the --out folder's results.json",
    )
    args = harness.parse(
        p, argv, out=Path(__file__).parent / "results" / "schedules", seeds=(2, None)
    )
    if args.replot:
        result = harness.load(args.out)
    else:
        torch.set_num_threads(1)
        kept = harness.load(args.out) if set(args.parts) != {"grids", "betas"} else {}
        meta = {
            "n": args.n,
            "nfe": args.nfe,
            "seeds": args.seeds,
            "torch": torch.__version__,
            "noise_floor": noise_floor(args.n, args.seeds),
        }
        result = {"meta": {**kept.get("meta", {}), **meta}}
        if "grids" in args.parts:
            result["records"] = run(args.n, args.nfe, args.seeds, args.methods, args.sdes)
        else:
            result["records"] = kept["records"]
            for key in ("n", "nfe", "seeds", "noise_floor"):  # the grid part's settings
                result["meta"][key] = kept["meta"][key]
        if "betas" in args.parts:
            curves, beta_records = run_betas(
                args.n, args.nfe, args.seeds, args.beta_steps, args.betas
            )
            result["meta"]["betas"] = {"n": args.n, "nfe": args.nfe, "seeds": args.seeds}
        else:
            curves, beta_records = kept.get("beta_curves", []), kept.get("beta_records", [])
            if "betas" in kept.get("meta", {}):
                result["meta"]["betas"] = kept["meta"]["betas"]
        result["beta_curves"], result["beta_records"] = curves, beta_records
    meta, records = result["meta"], result["records"]
    curves, beta_records = result.get("beta_curves", []), result.get("beta_records", [])
    table = markdown(records, meta)
    figures = {"grid_vs_method.png": lambda path: plot(records, path, meta["nfe"][0])}
    if curves:
        table += "\n" + markdown_betas(curves, beta_records, meta["betas"])
        figures["snr_curves.png"] = lambda path: plot_snr(curves, path)
    harness.save(args.out, None if args.replot else result, table, figures)


if __name__ == "__main__":
    main()
