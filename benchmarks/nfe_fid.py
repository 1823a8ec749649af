"""Sample quality against the counted NFE, for every SDE and sampler.

(a) Analytic Gaussian mixtures with the exact score (the 2-D ring of `solvers_mixture.py` and
the 16-D random mixture with full covariances of `peers.py`): every difference is solver error.
Metrics, noise floor and seeds are solvers_mixture's: the Frechet distance (FD) of the samples'
Gaussian fit to the true moments and the sliced W2 to independent true samples, the floor being
the same metrics for independent true sets.

(b) One score model per SDE (VP, sub-VP, VE, EDM) trained on the TRAIN split of the 8x8 digits
with the same U-Net, budget and seed, cached outside git and retrained only when missing. Each
SDE x sampler x NFE cell draws n samples from one fixed seed (the same prior noise for every
cell) and scores them by digits-FID (features of the digits CNN) against the TEST split (297
images) and against the train split less a random subset of n images. Noise floors, disjoint
real sets of the same sizes: n random train images against the test split, and against the
rest of the train split, over a few random subsets (the first is the one held out above).

Nothing is chosen by looking at test FID: every sampler runs with its default grid and options
(adaptive ones with their default rtol/atol). Writes results.json, table.md and PNGs.

    python benchmarks/nfe_fid.py           # full run: ~40 min on one core (training included)
    python benchmarks/nfe_fid.py --quick   # smoke run, about a minute (into a temp folder)
    python benchmarks/nfe_fid.py --parts digits --digits-methods dpmpp_2m heun  # one part
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
from pathlib import Path

import torch

import sdegen
from sdegen.assembly import (
    SDES,
    TrainConfig,
    build_model,
    from_dict,
    harness,
    load_data,
    load_run,
    make_trainer,
    plots,
    save_config,
)
from sdegen.metrics import (
    default_digits_classifier_path,
    digits_features,
    ensure_digits_classifier,
    fid_to_moments,
    gaussian_moments,
    load_digits_classifier,
)
from sdegen.models import ring_mixture
from sdegen.solvers import METHODS
from sdegen.training import latest_checkpoint

peers = harness.sibling(__file__, "peers")  # the 16-D random mixture
report = harness.sibling(__file__, "_nfe_fid_report")  # tables and PNGs

NFES = [5, 10, 20, 50, 100]
# torchsde's methods are slow and unstable at few steps (README); run them with --methods.
DEFAULT_METHODS = [m for m in METHODS if not m.startswith("torchsde_")]
MIXTURES = {"ring": ring_mixture, "gmm16": lambda sde: peers.random_mixture(sde, dim=16)}
MIXTURE_N = {"ring": 5_000, "gmm16": 500}  # set by the time budget (about 10 min for (a))
DIGIT_SDES = ["vp", "subvp", "ve", "edm"]  # the results' SDEs; --sdes takes any of SDES
# The digits U-Net: the quickstart's architecture at half the channels (16, not 32), 3.5x
# cheaper per evaluation, so that every sampler x NFE cell fits the time budget.
NETWORK = {"channels": 16, "channel_mult": [1, 2]}
TRAIN_STEPS = 3000
FLOOR_SEED = 7  # the random train subsets of the digits floors


# ---- shared: one cell --------------------------------------------------------------------------


def draw(model, sde, shape: tuple[int, ...], method: str, budget: int | None, seed: int):
    """One sample set with the method's default grid and options: (SolveResult, seconds)."""
    start = time.perf_counter()
    res = sdegen.sample(
        model,
        sde,
        shape,
        method=method,
        generator=torch.Generator().manual_seed(seed),
        **({} if budget is None else {"nfe": budget}),
    )
    return res, time.perf_counter() - start


def _counted(nfes: list[int]) -> int | float:
    """The counted NFE of a cell: the value when every seed agrees, else their mean."""
    return nfes[0] if len(set(nfes)) == 1 else sum(nfes) / len(nfes)


# ---- (a) analytic mixtures ---------------------------------------------------------------------


def _part_meta(args, methods: list[str], start: float) -> dict:
    return {
        "nfe": args.nfe,
        "methods": methods,
        "excluded": [m for m in METHODS if m.startswith("torchsde_") and m not in methods],
        "seed": args.seed,
        "floor_sets": args.floor_sets,
        "quick": args.quick,
        "seconds": time.perf_counter() - start,
        "date": time.strftime("%Y-%m-%d"),
        **harness.environment(),
    }


def analytic(args) -> dict:
    start = time.perf_counter()
    records, floors = [], {}
    for mix in args.mixtures:
        n = args.mixture_n or MIXTURE_N[mix]
        for sde_name in args.sdes:
            sde = SDES[sde_name]()
            model = MIXTURES[mix](sde)
            shape = (n, *model.event_shape)
            reference = model.sample(
                n, generator=torch.Generator().manual_seed(args.seed + 99), dtype=torch.float64
            )
            floors[f"{mix}/{sde_name}"] = {
                "n": n,
                **harness.noise_floor(model, reference, n, args.seed, args.floor_sets),
            }
            for method, budget in harness.cells(args.methods, args.nfe):
                rec = {"mixture": mix, "sde": sde_name, "method": method, "nfe_budget": budget}
                try:
                    runs = []
                    for k in range(args.seeds):
                        res, secs = draw(model, sde, shape, method, budget, args.seed + k)
                        runs.append(
                            {
                                "nfe": res.nfe,
                                "seconds": secs,
                                **harness.mixture_metrics(res.x, model, reference),
                            }
                        )
                except ValueError as e:  # budget below one step of this method
                    records.append({**rec, "skipped": str(e)})
                    continue
                rec.update(
                    n=n,
                    seeds=list(range(args.seed, args.seed + args.seeds)),
                    nfe=_counted([r["nfe"] for r in runs]),
                    nfe_runs=[r["nfe"] for r in runs],
                )
                for key in ("frechet", "sliced_w2", "seconds"):
                    rec[key], rec[key + "_std"] = harness.mean_std([r[key] for r in runs])
                records.append(rec)
                print(
                    f"{mix:5s} {sde_name:5s} {method:18s} budget={budget!s:>4} "
                    f"nfe={rec['nfe']!s:>5} FD={rec['frechet']:.4g} SW2={rec['sliced_w2']:.4g}",
                    flush=True,
                )
    meta = {**_part_meta(args, args.methods, start), "seeds": args.seeds}
    return {"meta": meta, "records": records, "noise_floor": floors}


# ---- (b) digits --------------------------------------------------------------------------------


def train_config(sde: str, steps: int, seed: int, **keys) -> TrainConfig:
    """The digits run of one SDE: the same network, budget and seed for every SDE, each SDE
    trained by its recipe (`recipe: auto`, EDM's for the EDM SDE); `keys`: other config keys."""
    values = {
        "data": "digits",
        "sde": sde,
        "steps": steps,
        "batch_size": 128,
        "lr": 1e-3,
        "warmup": 100,
        "ckpt_every": steps,
        "log_every": max(1, min(50, steps)),
        "network_params": dict(NETWORK),
        "seed": seed,
    }
    return from_dict({**values, **keys})


def cache_root(cache: Path | None) -> Path:
    """`cache`/nfe_fid; by default in the package's cache ($SDEGEN_CACHE or ~/.cache/sdegen)."""
    return (cache or default_digits_classifier_path().parent) / "nfe_fid"


def trained_model(cfg: TrainConfig, root: Path):
    """The run's model (EMA weights) from `root`/<sde>-<config hash>, trained there first when
    missing or unfinished (an unfinished run resumes). Returns (model, training record)."""
    key = hashlib.sha1(json.dumps(cfg.to_dict(), sort_keys=True).encode()).hexdigest()[:10]
    run_dir = root / f"{cfg.sde}-{key}"
    info_path = run_dir / "nfe_fid_training.json"
    done = latest_checkpoint(run_dir) is not None and info_path.is_file()
    if not done:
        data = load_data(cfg.data, seed=cfg.seed)
        model = build_model(cfg, data.event_shape)
        save_config(cfg, run_dir)
        trainer = make_trainer(cfg, data, model, run_dir, progress=False)
        resumed_from = trainer.step if trainer.resume() else 0
        start = time.perf_counter()
        history = trainer.fit(cfg.steps)
        info = {
            "train_seconds": time.perf_counter() - start,
            "resumed_from_step": resumed_from,
            "threads": torch.get_num_threads(),
            "final_loss": history[-1]["loss"] if history else None,
            "torch": torch.__version__,
        }
        info_path.write_text(json.dumps(info, indent=1))
    run = load_run(run_dir)
    if run.step != cfg.steps:
        raise RuntimeError(f"{run_dir} holds step {run.step}, expected {cfg.steps}")
    info = json.loads(info_path.read_text())
    params = sum(p.numel() for p in run.model.parameters())
    record = {
        "config": cfg.to_dict(),
        "run_dir": str(run_dir),
        "trained_now": not done,
        "parameters": params,
        **info,
    }
    return run.model, record


def digits(args) -> dict:
    start = time.perf_counter()
    clf_path = ensure_digits_classifier(args.classifier)
    clf_meta = load_digits_classifier(clf_path).metadata
    feats = digits_features(clf_path)
    data = load_data("digits")
    train, test = data.train, data.test
    n = args.n
    if not 2 <= n <= len(train) - 2:
        raise ValueError(
            f"--n must be in [2, {len(train) - 2}] (train split {len(train)}), got {n}"
        )
    # Floors: disjoint real sets of the sizes the samples meet, over random train splits.
    # The samples' train reference is the rest of the first split.
    perms = [
        torch.randperm(len(train), generator=torch.Generator().manual_seed(FLOOR_SEED + k))
        for k in range(args.floor_sets)
    ]
    f_test = feats(test)
    test_moments = gaussian_moments(f_test)
    train_ref = train[perms[0][n:]]
    train_moments = gaussian_moments(feats(train_ref))
    floor_test = [fid_to_moments(train[p[:n]], *test_moments, features=feats) for p in perms]
    floor_train = [
        fid_to_moments(train[p[:n]], *gaussian_moments(feats(train[p[n:]])), features=feats)
        for p in perms
    ]
    floor = {"sets": args.floor_sets, "n": n, "n_test": len(test), "n_train_ref": len(train_ref)}
    floor["fid_test"], floor["fid_test_std"] = harness.mean_std(floor_test)
    floor["fid_train"], floor["fid_train_std"] = harness.mean_std(floor_train)
    print(f"digits floor: {floor}", flush=True)

    root = cache_root(args.cache)
    records, training = [], {}
    for sde_name in args.sdes:
        model, training[sde_name] = trained_model(
            train_config(sde_name, args.train_steps, args.train_seed), root
        )
        print(f"{sde_name}: {training[sde_name]}", flush=True)
        for method, budget in harness.cells(args.digits_methods, args.nfe):
            rec = {"sde": sde_name, "method": method, "nfe_budget": budget}
            try:
                res, secs = draw(
                    model, model.sde, (n, *data.event_shape), method, budget, args.seed
                )
            except ValueError as e:
                records.append({**rec, "skipped": str(e)})
                continue
            finite = bool(torch.isfinite(res.x).all())
            rec.update(
                n=n,
                seed=args.seed,
                nfe=res.nfe,
                steps=len(res.ts) - 1 if res.ts is not None else None,
                seconds=secs,
                fid_test=fid_to_moments(res.x, *test_moments, features=feats)
                if finite
                else math.inf,
                fid_train=fid_to_moments(res.x, *train_moments, features=feats)
                if finite
                else math.inf,
            )
            records.append(rec)
            print(
                f"digits {sde_name:5s} {method:18s} budget={budget!s:>4} nfe={res.nfe:4d} "
                f"FID test={rec['fid_test']:.3f} train={rec['fid_train']:.3f} ({secs:.1f} s)",
                flush=True,
            )
            if method == args.grid_method and budget == args.grid_nfe and finite:
                plots.image_grid(
                    res.x[:64].float(),
                    args.out / f"digits_{sde_name}_{method}_nfe{res.nfe}.png",
                    nrow=8,
                    title=f"{sde_name}, {method}, NFE {res.nfe}",
                )
    return {
        "meta": {**_part_meta(args, args.digits_methods, start), "n": n},
        "records": records,
        "noise_floor": floor,
        "training": training,
        "classifier": {"path": str(clf_path), **clf_meta},
    }


def main(argv: list[str] | None = None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument(
        "--parts", nargs="+", default=["analytic", "digits"], choices=["analytic", "digits"]
    )
    p.add_argument("--nfe", type=int, nargs="+", default=NFES)
    p.add_argument("--sdes", nargs="+", default=DIGIT_SDES, choices=list(SDES))
    p.add_argument("--methods", nargs="+", choices=list(METHODS), help="(a) and (b) samplers")
    p.add_argument("--digits-methods", nargs="+", choices=list(METHODS), help="(b) only")
    p.add_argument("--mixtures", nargs="+", default=list(MIXTURES), choices=list(MIXTURES))
    p.add_argument("--mixture-n", type=int, help="samples per mixture cell (default per mixture)")
    p.add_argument("--n", type=int, default=500, help="(b) samples per digits cell")
    p.add_argument("--train-steps", type=int, default=TRAIN_STEPS)
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="checkpoint cache (default $SDEGEN_CACHE)")
    p.add_argument("--classifier", type=Path, help="digits classifier file (default: cache)")
    p.add_argument("--grid-method", default="dpmpp_2m", help="sampler of the sample grids")
    p.add_argument("--grid-nfe", type=int, default=20)
    args = harness.parse(
        p,
        argv,
        out=None,
        out_help="default benchmarks/results/nfe_fid, with --quick a temp folder",
        seed=(0, "sampler seed (the first of --seeds)"),
        seeds=(3, "(a) sampler seeds averaged per cell"),
        floor_sets=(5, "real sets behind each floor"),
        threads=1,
        quick="a small smoke run",
    )
    if args.out is None:  # a smoke run does not overwrite the committed results
        quick = Path(tempfile.gettempdir()) / "sdegen-nfe_fid-quick"
        args.out = quick if args.quick else Path(__file__).resolve().parent / "results" / "nfe_fid"
    if args.replot:
        result = harness.load(args.out)
        harness.save(args.out, None, report.markdown(result), report.figures(result))
        return result
    if args.quick:
        args.nfe, args.seeds, args.floor_sets = [n for n in args.nfe if n <= 10], 1, 2
        args.mixture_n, args.n = args.mixture_n or 500, min(args.n, 200)
        args.train_steps = min(args.train_steps, 100)
        args.methods = args.methods or ["euler_maruyama", "heun", "dpmpp_2m", "dopri5"]
    args.methods = args.methods or DEFAULT_METHODS
    args.digits_methods = args.digits_methods or args.methods
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {}
    if "analytic" in args.parts:
        result["analytic"] = analytic(args)
    if "digits" in args.parts:
        result["digits"] = digits(args)
    grids = [  # the sample grids digits() drew
        f"digits_{r['sde']}_{r['method']}_nfe{r['nfe']}.png"
        for r in result.get("digits", {}).get("records", [])
        if (r["method"], r["nfe_budget"]) == (args.grid_method, args.grid_nfe)
        and "skipped" not in r
        and math.isfinite(r["fid_test"])
    ]
    old = args.out / harness.RESULTS
    if old.is_file():  # a part not run now keeps its earlier results
        for name, part in json.loads(old.read_text()).items():
            if name not in result:
                result[name] = part
                print(f"kept part {name!r} of {old} ({part['meta']['date']})")
    harness.save(args.out, result, report.markdown(result), report.figures(result), also=grids)
    return result


if __name__ == "__main__":
    main()
