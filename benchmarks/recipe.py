"""Training recipes per SDE on the 8x8 digits: digits-FID at equal compute, shared vs auto.

One digits score model per run, all with the same U-Net (nfe_fid's), steps, batch, learning
rate and seed; the runs differ only in the SDE and in the recipe keys (parametrization,
weighting, time_sampling):

- vp, subvp, ve: the shared recipe (v-prediction, "simple" weighting, t uniform), which is
  also what `recipe: auto` gives them;
- edm-shared: the EDM SDE trained by the shared recipe (`recipe: shared`), the configuration
  behind nfe_fid's FID of about 70;
- edm: the EDM SDE by `recipe: auto`, i.e. EDM's preconditioning, log-normal noise levels and
  loss weighting (Karras et al. 2022, Table 1);
- vp-edm, ve-edm: the EDM recipe on VP / VE (candidates for their auto recipe).

Each model draws n samples from one fixed seed per sampler x NFE cell and is scored by the
digits-FID (features of the digits CNN) against the TEST split (297 images), as nfe_fid does;
the floor is the FID of n random train images to the test split. Checkpoints are cached
outside git (nfe_fid's cache, folder recipe/) and retrained only when missing. The table gives
each cell's FID and, per sampler x NFE, the ratio max/min FID over the SDEs of one recipe.

    python benchmarks/recipe.py            # 1500 steps, batch 64: ~8 min on one busy core
    python benchmarks/recipe.py --steps 3000 --batch-size 128 --runs vp ve subvp edm-shared edm
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch

from sdegen.assembly import harness, plots
from sdegen.metrics import (
    digits_features,
    ensure_digits_classifier,
    fid_to_moments,
    gaussian_moments,
    load_digits_classifier,
)

nfe_fid = harness.sibling(__file__, "nfe_fid")  # network, cached training, sampling

# run name -> config keys besides nfe_fid's digits run (same network, budget, seed)
RUNS: dict[str, dict] = {
    "vp": {"sde": "vp"},
    "subvp": {"sde": "subvp"},
    "ve": {"sde": "ve"},
    "edm-shared": {"sde": "edm", "recipe": "shared"},
    "edm": {"sde": "edm"},
    "vp-edm": {
        "sde": "vp",
        "parametrization": "edm",
        "weighting": "edm",
        "time_sampling": "lognormal",
    },
    "ve-edm": {
        "sde": "ve",
        "parametrization": "edm",
        "weighting": "edm",
        "time_sampling": "lognormal",
    },
}
# the ratio rows: the runs that train each SDE by one recipe (shared defaults, `recipe: auto`,
# EDM's recipe for every SDE)
GROUPS = {
    "shared": ["vp", "subvp", "ve", "edm-shared"],
    "auto": ["vp", "subvp", "ve", "edm"],
    "edm recipe": ["vp-edm", "ve-edm", "edm"],
}
DEFAULT_RUNS = ["vp", "edm-shared", "edm"]
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
        "| run | keys | train s | " + " | ".join(f"{m} NFE {n}" for m, n in cells) + " |",
        "|---|---|---|" + "---|" * len(cells),
    ]
    fids = {(r["run"], r["method"], r["nfe"]): r["fid_test"] for r in result["records"]}
    for run in meta["runs"]:
        c = result["training"][run]["config"]
        keys = f"{c['parametrization']} / {c['weighting']} / {c['time_sampling']}"
        row = [f"{fids.get((run, m, n), math.nan):.1f}" for m, n in cells]
        secs = result["training"][run].get("train_seconds", math.nan)
        lines.append(f"| {run} | {keys} | {secs:.0f} | " + " | ".join(row) + " |")
    for recipe, cell_ratios in ratios(result).items():
        row = [f"{cell_ratios.get(cell, math.nan):.2f}" for cell in cells]
        lines.append(f"| max/min FID, {recipe} | | | " + " | ".join(row) + " |")
    lines += [
        "",
        "keys: parametrization / weighting / time_sampling. The ratio rows compare the SDEs "
        "trained by one recipe, over the runs of the table: shared (vp, subvp, ve, edm-shared), "
        "auto (vp, subvp, ve, edm: what `recipe: auto` trains), edm recipe (vp-edm, ve-edm, "
        "edm). Goal (issue 13): ratio at most 1.2.",
        "",
    ]
    return "\n".join(lines)


def figures(result: dict) -> dict:
    return {}


if __name__ == "__main__":
    main()
