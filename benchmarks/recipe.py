"""Training recipes per SDE on the 8x8 digits: digits-FID at equal compute, shared vs auto.

One digits score model per run, all with the same U-Net (nfe_fid's), steps, batch, learning
rate and seed; the runs differ only in the SDE and in the recipe keys (parametrization,
weighting, time_sampling):

- vp, subvp, ve, edm: what `recipe: auto` trains on images, EDM's preconditioning, log-normal
  noise levels and loss weighting (Karras et al. 2022, Table 1) for every SDE;
- vp-shared, subvp-shared, ve-shared, edm-shared: the shared keys (v-prediction, "simple"
  weighting, t uniform), what `recipe: auto` gave VP, sub-VP and VE on images before, and the
  configuration behind nfe_fid's EDM FID of about 70.

Each model draws n samples from one fixed seed per sampler x NFE cell and is scored by the
digits-FID (features of the digits CNN) against the TEST split (297 images), as nfe_fid does;
the floor is the FID of n random train images to the test split. Checkpoints are cached
outside git (nfe_fid's cache, folder recipe/) and retrained only when missing. The table gives
each cell's FID and, per sampler x NFE, the ratio max/min FID over the SDEs of one recipe.

    python benchmarks/recipe.py            # 1500 steps, batch 64: ~9 min on one busy core
    python benchmarks/recipe.py --steps 3000 --batch-size 128 --runs vp subvp ve edm \
        vp-shared subvp-shared ve-shared edm-shared --out benchmarks/results/recipe_3000
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch

from sdegen.assembly import harness, plots
from sdegen.assembly.config import SHARED_RECIPE
from sdegen.assembly.likelihood import evaluate_likelihood
from sdegen.metrics import (
    digits_features,
    ensure_digits_classifier,
    fid_to_moments,
    gaussian_moments,
    load_digits_classifier,
)

nfe_fid = harness.sibling(__file__, "nfe_fid")  # network, cached training, sampling

# run name -> config keys besides nfe_fid's digits run (same network, budget, seed); the shared
# runs give the shared keys explicitly, so their configs (and cached checkpoints) are the ones
# recipe auto resolved to before it gave images EDM's recipe
RUNS: dict[str, dict] = {
    **{sde: {"sde": sde} for sde in ("vp", "subvp", "ve", "edm")},
    **{f"{sde}-shared": {"sde": sde, **SHARED_RECIPE} for sde in ("vp", "subvp", "ve")},
    "edm-shared": {"sde": "edm", "recipe": "shared"},
}
# the ratio rows: the runs that train each SDE by one recipe
GROUPS = {
    "auto": ["vp", "subvp", "ve", "edm"],
    "shared": ["vp-shared", "subvp-shared", "ve-shared", "edm-shared"],
}
DEFAULT_RUNS = ["vp", "edm", "vp-shared", "edm-shared"]
STEPS, BATCH = 1500, 64  # fits ~8 min here (EMA 0.999 needs >= ~1000 steps); README: --steps 3000
FLOOR_SEED = 7


def config(run: str, steps: int, batch: int, seed: int):
    """The TrainConfig of one run: nfe_fid's digits run with the run's keys."""
    keys = {k: v for k, v in RUNS[run].items() if k != "sde"}
    return nfe_fid.train_config(RUNS[run]["sde"], steps, seed, batch_size=batch, **keys)


def main(argv: list[str] | None = None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, choices=list(RUNS))
    p.add_argument("--steps", type=int, default=STEPS, help="training steps of every run")
    p.add_argument("--batch-size", type=int, default=BATCH, help="batch of every run")
    p.add_argument("--methods", nargs="+", default=["dpmpp_2m", "unipc"])
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    p.add_argument("--n", type=int, default=500, help="samples per cell")
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument(
        "--bpd",
        action="store_true",
        help="also the test split's bits/dim (PF-ODE, Hutchinson, rtol = atol = 1e-4, seed 0)",
    )
    p.add_argument("--cache", type=Path, help="checkpoint cache (default $SDEGEN_CACHE)")
    p.add_argument("--classifier", type=Path, help="digits classifier file (default: cache)")
    args = harness.parse(
        p,
        argv,
        out=None,
        out_help="default benchmarks/results/recipe, with --quick a temp folder",
        seed=(0, "sampler seed"),
        floor_sets=(5, "random train subsets behind the floor"),
        threads=1,
        quick="a smoke run (20 steps, 64 samples, NFE 10)",
    )
    if args.out is None:
        quick = Path(tempfile.gettempdir()) / "sdegen-recipe-quick"
        args.out = quick if args.quick else Path(__file__).resolve().parent / "results" / "recipe"
    if args.replot:
        result = harness.load(args.out)
        harness.save(args.out, None, markdown(result), figures(result))
        return result
    if args.quick:
        args.steps, args.n, args.nfe, args.floor_sets = min(args.steps, 20), 64, [10], 2
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    clf_path = ensure_digits_classifier(args.classifier)
    feats = digits_features(clf_path)
    data = nfe_fid.load_data("digits")
    train, test = data.train, data.test
    test_moments = gaussian_moments(feats(test))
    floors = []
    for k in range(args.floor_sets):
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(FLOOR_SEED + k))
        floors.append(fid_to_moments(train[perm[: args.n]], *test_moments, features=feats))
    floor, floor_std = harness.mean_std(floors)
    root = nfe_fid.cache_root(args.cache).parent / "recipe"
    records, training = [], {}
    for run in args.runs:
        cfg = config(run, args.steps, args.batch_size, args.train_seed)
        model, training[run] = nfe_fid.trained_model(cfg, root)
        print(f"{run}: trained {training[run]['train_seconds']:.0f} s", flush=True)
        if args.bpd:
            nll = evaluate_likelihood(
                model, data, test, trace="hutchinson", rtol=1e-4, atol=1e-4, batch=len(test), seed=0
            )
            training[run]["bpd"] = {k: nll[k] for k in ("bits_per_dim", "nll_nats_sem", "nfe")}
            print(f"{run}: {nll['bits_per_dim']:.3f} bits/dim", flush=True)
        for method, budget in harness.cells(args.methods, args.nfe):
            res, secs = nfe_fid.draw(
                model, model.sde, (args.n, *data.event_shape), method, budget, args.seed
            )
            finite = bool(torch.isfinite(res.x).all())
            fid = fid_to_moments(res.x, *test_moments, features=feats) if finite else math.inf
            records.append(
                {
                    "run": run,
                    "method": method,
                    "nfe_budget": budget,
                    "nfe": res.nfe,
                    "fid_test": fid,
                    "seconds": secs,
                }
            )
            print(f"{run:10s} {method:9s} nfe={res.nfe:3d} FID test={fid:.2f}", flush=True)
            if (method, budget) == (args.methods[0], args.nfe[-1]) and finite:
                plots.image_grid(
                    res.x[:64].float(),
                    args.out / f"digits_{run}.png",
                    nrow=8,
                    title=f"{run}, {method}, NFE {res.nfe}",
                )
    result = {
        "meta": {
            "runs": args.runs,
            "steps": args.steps,
            "batch_size": args.batch_size,
            "train_seed": args.train_seed,
            "network": nfe_fid.NETWORK,
            "methods": args.methods,
            "nfe": args.nfe,
            "n": args.n,
            "seed": args.seed,
            "quick": args.quick,
            "seconds": time.perf_counter() - start,
            "date": time.strftime("%Y-%m-%d"),
            "classifier": {"path": str(clf_path), **load_digits_classifier(clf_path).metadata},
            **harness.environment(),
        },
        "noise_floor": {"fid_test": floor, "fid_test_std": floor_std, "sets": args.floor_sets},
        "records": records,
        "training": training,
    }
    harness.save(
        args.out,
        result,
        markdown(result),
        figures(result),
        also=[f"digits_{r}.png" for r in args.runs],
    )
    return result


def ratios(result: dict) -> dict[str, dict[tuple[str, int], float]]:
    """Per recipe of GROUPS and (method, NFE): max/min digits-FID over the group's runs that
    were run, when there are at least two."""
    out: dict[str, dict[tuple[str, int], float]] = {}
    for recipe, group in GROUPS.items():
        runs = [r for r in result["meta"]["runs"] if r in group]
        if len(runs) < 2:
            continue
        cells: dict[tuple[str, int], list[float]] = {}
        for rec in result["records"]:
            if rec["run"] in runs:
                cells.setdefault((rec["method"], rec["nfe"]), []).append(rec["fid_test"])
        out[recipe] = {k: max(v) / min(v) for k, v in cells.items() if len(v) == len(runs)}
    return out


def markdown(result: dict) -> str:
    meta = result["meta"]
    cells = sorted({(r["method"], r["nfe"]) for r in result["records"]})
    fl = result["noise_floor"]
    bpd = int(all("bpd" in result["training"][run] for run in meta["runs"]))
    lines = [
        "# Training recipes per SDE: digits-FID at equal compute",
        "",
        f"sdegen {meta.get('sdegen', '')}, torch {meta.get('torch', '')}, "
        f"{meta.get('threads', 1)} thread(s), {meta['date']}; {meta['seconds']:.0f} s in all. "
        f"Every run: nfe_fid's U-Net {meta['network']}, {meta['steps']} steps, batch "
        f"{meta['batch_size']}, lr 1e-3, EMA 0.999, train seed {meta['train_seed']}. "
        f"Cells: digits-FID against the test split (297 images) of n = {meta['n']} samples, "
        f"sampler seed {meta['seed']}, NFE counted (denoising step included). Floor: n random "
        f"train images against the test split, {fl['fid_test']:.2f} +- {fl['fid_test_std']:.2f} "
        f"({fl['sets']} sets).",
        "",
        "| run | keys | train s | "
        + " | ".join(f"{m} NFE {n}" for m, n in cells)
        + (" | bits/dim |" if bpd else " |"),
        "|---|---|---|" + "---|" * (len(cells) + bpd),
    ]
    fids = {(r["run"], r["method"], r["nfe"]): r["fid_test"] for r in result["records"]}
    for run in meta["runs"]:
        c = result["training"][run]["config"]
        keys = f"{c['parametrization']} / {c['weighting']} / {c['time_sampling']}"
        row = [f"{fids.get((run, m, n), math.nan):.1f}" for m, n in cells]
        secs = result["training"][run].get("train_seconds", math.nan)
        if bpd:
            row.append(f"{result['training'][run]['bpd']['bits_per_dim']:.3f}")
        lines.append(f"| {run} | {keys} | {secs:.0f} | " + " | ".join(row) + " |")
    for recipe, cell_ratios in ratios(result).items():
        row = [f"{cell_ratios.get(cell, math.nan):.2f}" for cell in cells] + [""] * bpd
        lines.append(f"| max/min FID, {recipe} | | | " + " | ".join(row) + " |")
    lines += [
        "",
        "keys: parametrization / weighting / time_sampling. "
        + (
            "bits/dim: the test split's (297 images, uniform dequantization), PF-ODE with "
            "Hutchinson's trace (one probe), dopri5 at rtol = atol = 1e-4, seed 0. "
            if bpd
            else ""
        )
        + "The ratio rows compare the SDEs "
        "trained by one recipe, over those of its runs in the table: "
        + "; ".join(f"{g} ({', '.join(runs)})" for g, runs in GROUPS.items())
        + ". Goal (issue 13): ratio at most 1.2.",
        "",
    ]
    return "\n".join(lines)


def figures(result: dict) -> dict:
    return {}


if __name__ == "__main__":
    main()
