"""Which default grid for each fixed-grid sampler: Karras's against sdegen's log-SNR jump grid.

The measurement behind the default grids in sdegen.solvers.methods (METHODS[name].schedule).
Every sampler here runs with all its defaults at NFE budgets 10, 20 and 50 on two grids, the
Karras grid (rho = 7, what k-diffusion's examples and EDM use) and "log_snr_jump" (uniform in
the log-SNR, ending where the final denoising step still does work; solvers/schedules.py), on
the analytic mixtures of benchmarks/peers.py with their exact scores, VP and EDM SDEs. Metric:
the Frechet distance of the samples' Gaussian fit to the true moments (`harness.mixture_metrics`),
the mean over 3 seeds of 1000 draws each (the same prior draws, and for stochastic samplers the
same noise seeds, on both grids). The ratio jump / Karras is summarised per sampler and budget
by its geometric mean over the (mixture, SDE) cells and the cells it is below 1, separately for
the mixtures the choice was made on (the ring and four of peers.TUNED_ON) and the held-out
ones (peers.HELD_OUT, digits64 among them), which were looked at only after the choice.

    python benchmarks/grid_choice.py                  # about 25 minutes on one core
    python benchmarks/grid_choice.py --quick          # a smoke run
    python benchmarks/grid_choice.py --replot
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

import sdegen
from sdegen.assembly import harness, plots
from sdegen.solvers import METHODS
from sdegen.solvers.methods import K_METHODS

peers = harness.sibling(__file__, "peers")

GRIDS = ("karras", "log_snr_jump")
# every fixed-grid sampler that was on the Karras grid before this measurement
SAMPLERS = (
    "euler_maruyama",
    "reverse_diffusion",
    "ancestral",
    "pc",
    "euler",
    "rk4",
    "heun",
    "edm_sde",
    *K_METHODS,  # k-diffusion's samplers by its names
)
TUNING = ("ring", "gmm16c4s1", "gmm16c4s2", "gmm32c3s1", "gmm64c4s1")
SETUPS = ("vp", "edm")
NFES = (10, 20, 50)
SEEDS = 3
N = 1000


def run(samplers, mixtures, setups, nfes, n: int, seeds: int) -> list[dict]:
    records = []
    for setup in setups:
        sde = peers.make_sde(setup)
        for mix in mixtures:
            model = peers.make_mixture(mix, peers.make_sde(setup, peers.MODEL_DOMAIN))
            ref = model.sample(n, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
            zs = [
                sde.prior_sample(
                    (n, *model.event_shape),
                    generator=torch.Generator().manual_seed(s),
                    dtype=torch.float64,
                )
                for s in range(seeds)
            ]
            for method in samplers:
                for nfe in nfes:
                    rec = {"setup": setup, "mixture": mix, "method": method, "nfe": nfe}
                    for grid in GRIDS:
                        fds = []
                        for s, z in enumerate(zs):
                            kw = {}
                            if METHODS[method].stochastic:
                                kw["generator"] = torch.Generator().manual_seed(10 + s)
                            r = sdegen.sample(
                                model,
                                sde,
                                tuple(z.shape),
                                method=method,
                                nfe=nfe,
                                noise=z,
                                schedule=grid,
                                **kw,
                            )
                            fds.append(harness.mixture_metrics(r.x, model, ref)["frechet"])
                        rec[grid] = fds
                    rec["ratio"] = sum(rec["log_snr_jump"]) / sum(rec["karras"])
                    records.append(rec)
            print(setup, mix, flush=True)
    return records


def noise_floor(mixtures, n: int, seeds: int) -> dict[str, float]:
    """Per mixture: the metric for true samples, the Frechet distance of n draws (seeds 1000,
    1001, ...) to the true moments, mean over `seeds` sets (the data do not depend on the SDE)."""
    floors = {}
    for mix in mixtures:
        model = peers.make_mixture(mix, peers.make_sde("vp", peers.MODEL_DOMAIN))
        fds = [
            harness.mixture_metrics(
                model.sample(
                    n, generator=torch.Generator().manual_seed(1000 + k), dtype=torch.float64
                ),
                model,
                model.sample(n, generator=torch.Generator().manual_seed(99), dtype=torch.float64),
            )["frechet"]
            for k in range(seeds)
        ]
        floors[mix] = sum(fds) / len(fds)
    return floors


def summary(records: list[dict]) -> list[dict]:
    """Per (role, sampler, NFE): geometric mean of the ratio over the cells, cells won."""
    rows = []
    for role in ("tuning", "held out"):
        for method in dict.fromkeys(r["method"] for r in records):
            for nfe in dict.fromkeys(r["nfe"] for r in records):
                rs = [
                    r["ratio"]
                    for r in records
                    if (r["role"], r["method"], r["nfe"]) == (role, method, nfe)
                ]
                if not rs:
                    continue
                finite = [v for v in rs if 0 < v < math.inf]
                geo = math.exp(sum(map(math.log, finite)) / len(finite)) if finite else math.nan
                rows.append(
                    {
                        "role": role,
                        "method": method,
                        "nfe": nfe,
                        "geo_mean": geo,
                        "won": sum(v < 1 for v in rs),
                        "cells": len(rs),
                        "min": min(rs),
                        "max": max(rs),
                    }
                )
    return rows


def markdown(result: dict) -> str:
    meta, rows = result["meta"], result["summary"]
    nfes = list(dict.fromkeys(r["nfe"] for r in rows))
    lines = [
        "# Default grid per sampler: log-SNR jump against Karras (exact scores)",
        "",
        f"Ratio = Frechet distance on `log_snr_jump` / on `karras` for each sampler with all its "
        f"defaults, mean over {meta['seeds']} seeds of {meta['n']} draws (the same prior draws "
        f"and noise seeds on both grids); VP and EDM SDEs; geometric mean over the (mixture, SDE) "
        f"cells, then cells below 1 of all, and the range. Tuning: {', '.join(meta['tuning'])}; "
        f"held out: {', '.join(meta['held_out'])}. **Bold**: the sampler's default grid now "
        f"(sdegen.solvers.METHODS). Prior draws from seeds 0-{meta['seeds'] - 1}, sampler "
        f"noise from seeds 10-{9 + meta['seeds']}; {meta['wall_s'] / 60:.0f} min on one thread. "
        "Noise floor (the same metric for true draws of the same size, mean of "
        f"{meta['seeds']} sets): "
        + ", ".join(f"{k} {v:.2g}" for k, v in meta["noise_floor"].items())
        + ".",
        "",
        "| sampler | default | "
        + " | ".join(f"NFE {k}: tuning | NFE {k}: held out" for k in nfes)
        + " |",
        "|---|---|" + "---|---|" * len(nfes),
    ]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = []
        for nfe in nfes:
            for role in ("tuning", "held out"):
                key = (method, nfe, role)
                match = [r for r in rows if (r["method"], r["nfe"], r["role"]) == key]
                if not match:
                    cells.append("-")
                    continue
                r = match[0]
                cells.append(
                    f"{r['geo_mean']:.2g} ({r['won']}/{r['cells']}; {r['min']:.2g}-{r['max']:.2g})"
                )
        default = METHODS[method].schedule
        lines.append(f"| {method} | **{default}** | " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Geometric-mean ratio against NFE, one curve per sampler, tuning and held-out panels."""
    panels = {}
    for role in ("tuning", "held out"):
        series: dict[str, list] = {}
        for r in result["summary"]:
            if r["role"] == role:
                series.setdefault(r["method"], []).append((r["nfe"], r["geo_mean"]))
        panels[role] = (series, 1.0)
    plots.quality_vs_nfe_panels(panels, "Frechet ratio jump / Karras", path)


def main(argv: list[str] | None = None) -> dict | None:
    p = harness.parser(__doc__)
    p.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    p.add_argument("--nfe", type=int, nargs="+", default=list(NFES))
    p.add_argument("--n", type=int, default=N, help="draws per seed")
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).parent / "results" / "grid_choice",
        seeds=(SEEDS, "seeds per cell"),
        quick="ring and one held-out mixture, 200 draws, NFE 10, three samplers",
    )
    figs = {"ratio.png": lambda path: plot(result, path)}
    if args.replot:
        result = harness.load(args.out)
        harness.save(args.out, None, markdown(result), figs)
        return None
    torch.set_num_threads(1)
    tuning, held_out = list(TUNING), list(peers.HELD_OUT)
    samplers, nfes, n = args.samplers, args.nfe, args.n
    if args.quick:
        tuning, held_out, samplers, nfes, n = ["ring"], ["gmm16c4s4"], SAMPLERS[5:8], [10], 200
    start = time.perf_counter()
    records = []
    for role, mixtures in (("tuning", tuning), ("held out", held_out)):
        for r in run(samplers, mixtures, SETUPS, nfes, n, args.seeds):
            records.append({"role": role, **r})
    meta = {
        "n": n,
        "seeds": args.seeds,
        "tuning": tuning,
        "held_out": held_out,
        "setups": list(SETUPS),
        "wall_s": time.perf_counter() - start,
        "noise_floor": noise_floor(tuning + held_out, n, args.seeds),
        "torch": torch.__version__,
    }
    result = {"meta": meta, "records": records, "summary": summary(records)}
    harness.save(args.out, result, markdown(result), figs)
    return result


if __name__ == "__main__":
    main()
