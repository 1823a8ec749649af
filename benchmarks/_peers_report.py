"""The report of benchmarks/peers.py: the verdicts (sdegen's best against the best peer, paired
over seeds), the markdown table and the FID-against-NFE plot, all from results.json."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import torch

from sdegen.assembly import harness

LIBS = ("sdegen", "k-diffusion", "diffusers")


def verdicts(result: dict, budgets=(5, 10, 20), sampler: str | None = None) -> list[dict]:
    """For each table and budget: sdegen's best (or its `sampler`) against the best peer, by
    mean FID.

    The difference is paired (every sampler saw the same prior draws), so its standard error is
    the std over seeds of the per-seed differences / sqrt(seeds); "significant" means the mean
    difference exceeds two of them. Where the records carry distances to the exact flow (ODE
    samplers), the same comparison by that distance is under "flow" (each side's sampler chosen
    by its distance).
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
            ours = [
                r
                for r in recs
                if r["lib"] == "sdegen" and (sampler is None or r["sampler"] == sampler)
            ]
            peers = [r for r in recs if r["lib"] != "sdegen"]
            if not ours or not peers:
                continue
            a = min(ours, key=lambda r: r["frechet"])
            p = min(peers, key=lambda r: r["frechet"])
            diff = torch.tensor(a["frechet_runs"]) - torch.tensor(p["frechet_runs"])
            se = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
            flow = _flow_verdict(ours, peers)
            out.append(
                {
                    **({"flow": flow} if flow else {}),
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


def _flow_verdict(ours: list[dict], peers: list[dict]) -> dict | None:
    ours, peers = (
        [r for r in rs if math.isfinite(r.get("flow_distance", math.nan))] for rs in (ours, peers)
    )
    if not ours or not peers:
        return None
    a = min(ours, key=lambda r: r["flow_distance"])
    p = min(peers, key=lambda r: r["flow_distance"])
    diff = torch.tensor(a["flow_distance_runs"]) - torch.tensor(p["flow_distance_runs"])
    se = float(diff.std() / math.sqrt(len(diff))) if len(diff) > 1 else math.nan
    return {
        "sdegen": a["sampler"],
        "sdegen_distance": a["flow_distance"],
        "peer": f"{p['lib']}:{p['sampler']}",
        "peer_distance": p["flow_distance"],
        "ratio": a["flow_distance"] / p["flow_distance"] if p["flow_distance"] > 0 else math.inf,
        "significant": bool(abs(float(diff.mean())) > 2 * se) if se == se else None,
    }


_SIG = {True: "significant", False: "not significant", None: "one seed"}


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
        "[d]: the RMS distance of the samples to the exact flow's (the probability-flow ODE "
        "from the same prior draws, solved to rounding), mean over seeds, for ODE samplers. The "
        "exact flow's own FID is in each heading: FID differences near it are the luck of which "
        "points a sampler lands on (an inexact solver can land below it); d says which sampler "
        "solved the ODE.",
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
        heading = (
            f"## {mix}, {setup}: {meta['n'][key]} samples (noise floor: FID "
            f"{floor['frechet']:.2e} +- {floor['frechet_std']:.1e}"
        )
        flow = result.get("exact_flow", {}).get(key)
        if flow is not None:
            heading += (
                f"; exact flow: FID {flow['frechet']:.3g} +- {flow['frechet_std']:.2g}, its solve "
                f"at {flow['steps'] // 2} steps within d {flow['half_steps_distance']:.1e}"
            )
        lines += [
            heading + ")",
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
                        if "flow_distance" in r:
                            c += f" [{_fmt(r['flow_distance'])}]"
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
            sig = _SIG[v["significant"]]
            lines.append(
                f"- NFE {v['nfe']}: sdegen's best ({v['sdegen']}, {_fmt(v['sdegen_fid'])}) is "
                f"{word} than the best peer ({v['peer']}, {_fmt(v['peer_fid'])}): ratio "
                f"{v['ratio']:.2f}, paired difference {sig} (2 standard errors)."
            )
            f = v.get("flow")
            if f is not None:
                lines.append(
                    f"  Distance to the exact flow: sdegen's nearest ({f['sdegen']}, "
                    f"{_fmt(f['sdegen_distance'])}) against the nearest peer ({f['peer']}, "
                    f"{_fmt(f['peer_distance'])}): ratio {f['ratio']:.2f}, "
                    f"{_SIG[f['significant']]}."
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
    plt = harness.pyplot()
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
        if key in result.get("exact_flow", {}):
            exact = result["exact_flow"][key]["frechet"]
            ax.axhline(exact, color="0.5", ls="-", lw=1.5, label="exact flow")
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
