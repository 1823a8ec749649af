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

import argparse
import hashlib
import importlib.util
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

import sdegen
from sdegen.assembly import (
    TrainConfig,
    build_model,
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

HERE = Path(__file__).resolve().parent


def _sibling(name: str):
    """Another script of benchmarks/ as a module (benchmarks/ is not a package)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


sm = _sibling("solvers_mixture")  # SDE table, metrics, noise floor, mean +- std
peers = _sibling("peers")  # the 16-D random mixture

NFES = [5, 10, 20, 50, 100]
# torchsde's methods are slow and unstable at few steps (README); run them with --methods.
DEFAULT_METHODS = [m for m in METHODS if not m.startswith("torchsde_")]
MIXTURES = {"ring": ring_mixture, "gmm16": lambda sde: peers.random_mixture(sde, dim=16)}
MIXTURE_N = {"ring": 5_000, "gmm16": 500}  # set by the time budget (about 10 min for (a))
DIGIT_SDES = ["vp", "subvp", "ve", "edm"]
# The digits U-Net: the quickstart's architecture at half the channels (16, not 32), 3.5x
# cheaper per evaluation, so that every sampler x NFE cell fits the time budget.
NETWORK = {"channels": 16, "channel_mult": [1, 2]}
TRAIN_STEPS = 3000
FLOOR_SEED = 7  # the random train subsets of the digits floors


# ---- shared: one cell --------------------------------------------------------------------------


def cells(methods: list[str], nfes: list[int]):
    """(method, NFE budget) pairs; an adaptive method runs once, with budget None."""
    for method in methods:
        for budget in [None] if METHODS[method].nfe is None else nfes:
            yield method, budget


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
        "torch": torch.__version__,
        "sdegen": sdegen.__version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def analytic(args) -> dict:
    start = time.perf_counter()
    records, floors = [], {}
    for mix in args.mixtures:
        n = args.mixture_n or MIXTURE_N[mix]
        for sde_name in args.sdes:
            sde = sm.SDES[sde_name]()
            model = MIXTURES[mix](sde)
            shape = (n, *model.event_shape)
            reference = model.sample(
                n, generator=torch.Generator().manual_seed(args.seed + 99), dtype=torch.float64
            )
            floors[f"{mix}/{sde_name}"] = {
                "n": n,
                **sm.noise_floor(model, reference, n, args.seed, args.floor_sets),
            }
            for method, budget in cells(args.methods, args.nfe):
                rec = {"mixture": mix, "sde": sde_name, "method": method, "nfe_budget": budget}
                try:
                    runs = []
                    for k in range(args.seeds):
                        res, secs = draw(model, sde, shape, method, budget, args.seed + k)
                        runs.append(
                            {
                                "nfe": res.nfe,
                                "seconds": secs,
                                **sm._metrics(res.x, model, reference),
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
                    rec[key], rec[key + "_std"] = sm._mean_std([r[key] for r in runs])
                records.append(rec)
                print(
                    f"{mix:5s} {sde_name:5s} {method:18s} budget={budget!s:>4} "
                    f"nfe={rec['nfe']!s:>5} FD={rec['frechet']:.4g} SW2={rec['sliced_w2']:.4g}",
                    flush=True,
                )
    meta = {**_part_meta(args, args.methods, start), "seeds": args.seeds}
    return {"meta": meta, "records": records, "noise_floor": floors}


# ---- (b) digits --------------------------------------------------------------------------------


def train_config(sde: str, steps: int, seed: int) -> TrainConfig:
    """The digits run of one SDE: the same network, budget and seed for every SDE."""
    return TrainConfig(
        data="digits",
        sde=sde,
        steps=steps,
        batch_size=128,
        lr=1e-3,
        warmup=100,
        ckpt_every=steps,
        log_every=max(1, min(50, steps)),
        network_params=dict(NETWORK),
        seed=seed,
    )


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
    floor["fid_test"], floor["fid_test_std"] = sm._mean_std(floor_test)
    floor["fid_train"], floor["fid_train_std"] = sm._mean_std(floor_train)
    print(f"digits floor: {floor}", flush=True)

    root = cache_root(args.cache)
    records, training = [], {}
    for sde_name in args.sdes:
        model, training[sde_name] = trained_model(
            train_config(sde_name, args.train_steps, args.train_seed), root
        )
        print(f"{sde_name}: {training[sde_name]}", flush=True)
        for method, budget in cells(args.digits_methods, args.nfe):
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


# ---- output ------------------------------------------------------------------------------------


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return "inf"
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _grid(recs: list[dict], nfes: list[int], key: str, second: str | None = None) -> list[str]:
    """Method x NFE-budget table of `key` (and `second` after a slash); the best cell of each
    column in bold; the counted NFE in parentheses where it differs from the budget."""
    cols = nfes + [None]
    ok = [r for r in recs if "skipped" not in r]
    best = {b: min((r[key] for r in ok if r["nfe_budget"] == b), default=None) for b in cols}
    lines = [
        "| sampler | " + " | ".join(f"NFE {b}" for b in nfes) + " | adaptive |",
        "|---|" + "---|" * len(cols),
    ]
    for method in dict.fromkeys(r["method"] for r in recs):
        row = []
        for b in cols:
            r = next((r for r in recs if r["method"] == method and r["nfe_budget"] == b), None)
            if r is None:
                row.append("")
            elif "skipped" in r:
                row.append("-")
            else:
                cell = _fmt(r[key]) + (f" / {_fmt(r[second])}" if second else "")
                if r[key] == best[b]:
                    cell = f"**{cell}**"
                if r["nfe"] != b:
                    nfe = r["nfe"]
                    cell += f" ({nfe:.0f})" if isinstance(nfe, float) else f" ({nfe})"
                row.append(cell)
        lines.append(f"| {method} | " + " | ".join(row) + " |")
    return lines


def _best_lines(part: dict, nfes: list[int]) -> list[str]:
    lines = [
        "| SDE | " + " | ".join(f"NFE {b}" for b in nfes) + " | adaptive | floor (test) |",
        "|---|" + "---|" * (len(nfes) + 2),
    ]
    floor = part["noise_floor"]
    for sde_name in part["training"]:
        row = []
        for b in nfes + [None]:
            ok = [
                r
                for r in part["records"]
                if r["sde"] == sde_name and r["nfe_budget"] == b and "skipped" not in r
            ]
            r = min(ok, key=lambda r: r["fid_test"], default=None)
            row.append("" if r is None else f"{r['method']} {_fmt(r['fid_test'])} ({r['nfe']})")
        row.append(f"{floor['fid_test']:.2f} +- {floor['fid_test_std']:.2f}")
        lines.append(f"| {sde_name} | " + " | ".join(row) + " |")
    return lines


def _run_line(meta: dict) -> str:
    line = (
        f"sdegen {meta['sdegen']}, torch {meta['torch']}, {meta['threads']} torch thread(s), "
        f"{meta['machine']}, {meta['date']}; {meta['seconds']:.0f} s in all; NFE budgets "
        f"{', '.join(map(str, meta['nfe']))} and the adaptive methods."
    )
    if meta["excluded"]:
        line += (
            f" Not run: {', '.join(meta['excluded'])} (slow and unstable at few steps, see the "
            "README; `--methods` runs them)."
        )
    return line


def markdown(result: dict) -> str:
    lines = [
        "# Sample quality against counted NFE: analytic mixtures and digits score models",
        "",
        "Every sampler on its default grid and options (adaptive: default rtol/atol); a number "
        "in parentheses is the NFE counted when it differs from the budget (denoising step "
        "included; adaptive: mean over seeds); '-' is a budget below one step of the method; "
        "the best cell of each column is in bold. Nothing was tuned on the digits test split.",
    ]
    if "analytic" in result:
        part = result["analytic"]
        meta, nfes = part["meta"], part["meta"]["nfe"]
        lines += [
            "",
            "## (a) Analytic Gaussian mixtures, exact score",
            "",
            _run_line(meta),
            "",
            f"Cells: Frechet distance (FD) of the samples' Gaussian fit to the true mixture "
            f"moments, mean over sampler seeds {meta['seed']}..{meta['seed'] + meta['seeds'] - 1}"
            f"; sliced W2 and per-cell std in the JSON. Noise floor: the FD of "
            f"{meta['floor_sets']} independent true sets of the same size (mean +- std); cells "
            "inside it are not distinguishable from exact sampling.",
        ]
        for key, floor in part["noise_floor"].items():
            mix, sde_name = key.split("/")
            recs = [r for r in part["records"] if r["mixture"] == mix and r["sde"] == sde_name]
            lines += [
                "",
                f"### {mix} / {sde_name}: n = {floor['n']}, floor FD {floor['frechet']:.2e} +- "
                f"{floor['frechet_std']:.1e}",
                "",
                *_grid(recs, nfes, "frechet"),
            ]
    if "digits" in result:
        part = result["digits"]
        meta, nfes = part["meta"], part["meta"]["nfe"]
        floor = part["noise_floor"]
        cfg = next(iter(part["training"].values()))["config"]
        train = part["training"]
        lines += [
            "",
            "## (b) Score models trained on the 8x8 digits",
            "",
            _run_line(meta),
            "",
            f"One U-Net per SDE ({next(iter(train.values()))['parameters']} parameters, "
            f"{cfg['network_params']}), {cfg['parametrization']}-parametrised, "
            f"{cfg['steps']} steps of batch {cfg['batch_size']}, lr {cfg['lr']}, EMA "
            f"{cfg['ema_decay']}, seed {cfg['seed']}, trained on the train split (1500 images); "
            "training seconds: "
            + ", ".join(f"{s} {t['train_seconds']:.0f}" for s, t in train.items())
            + f". Each cell: n = {floor['n']} samples from seed {meta['seed']} (the same prior "
            "noise in every cell). Cell = digits-FID against the test split "
            f"({floor['n_test']} images) / against {floor['n_train_ref']} train images (the "
            "model was trained on them). Noise floor, disjoint real sets of the same sizes over "
            f"{floor['sets']} random train splits: {floor['n']} train images vs the test split "
            f"**{floor['fid_test']:.2f} +- {floor['fid_test_std']:.2f}**; vs the other "
            f"{floor['n_train_ref']} train images **{floor['fid_train']:.2f} +- "
            f"{floor['fid_train_std']:.2f}**. FID is biased upward at small n: compare only at "
            "this n. One sample set per cell: differences below the floor's spread are not "
            "significant (the shared prior noise makes the comparison paired, which helps only "
            "partly).",
            "",
            "### Best sampler per NFE (test FID, counted NFE)",
            "",
            *_best_lines(part, nfes),
        ]
        for sde_name in train:
            recs = [r for r in part["records"] if r["sde"] == sde_name]
            lines += [
                "",
                f"### {sde_name}: FID test / train",
                "",
                *_grid(recs, nfes, "fid_test", "fid_train"),
            ]
    return "\n".join(lines) + "\n"


def plot_panels(panels: list[tuple[str, list[dict], str, float]], ylabel: str, path: Path) -> None:
    """One panel per (title, records, metric key, floor): the metric against counted NFE (log
    x), one curve per sampler (SDE samplers dashed), adaptive methods as single squares, the
    floor dotted. The y axis stops at 30x the panel's median: blown-up cells are in the table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.4), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, (title, recs, key, floor) in zip(axes[0], panels):
        ok = [r for r in recs if "skipped" not in r and math.isfinite(r[key])]
        for i, method in enumerate(dict.fromkeys(r["method"] for r in recs)):
            pts = sorted((r["nfe"], r[key]) for r in ok if r["method"] == method)
            if pts:
                line = "--" if METHODS[method].kind == "sde" else "-"
                style = "s" if len(pts) == 1 else "." + line
                ax.plot(*zip(*pts), style, color=cmap(i % 20), label=method)
        ax.axhline(floor, color="k", ls=":", label="noise floor")
        ax.set(xscale="log", yscale="log", xlabel="NFE (counted)", ylabel=ylabel, title=title)
        budgets = sorted({r["nfe_budget"] for r in recs if r["nfe_budget"] is not None})
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if ok:
            values = sorted(r[key] for r in ok)
            top = min(values[-1] * 1.5, 30 * values[len(values) // 2])
            ax.set_ylim(min(values[0], floor) / 1.5, top)
    fig.legend(*axes[0][-1].get_legend_handles_labels(), loc="center right", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1 - 1.2 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(result: dict, out: Path) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(result, indent=1))
    (out / "table.md").write_text(markdown(result))
    written = ["results.json", "table.md"]
    if "analytic" in result:
        part = result["analytic"]
        for mix in dict.fromkeys(r["mixture"] for r in part["records"]):
            panels = [
                (
                    f"{mix} / {key.split('/')[1]}",
                    [
                        r
                        for r in part["records"]
                        if r["mixture"] == mix and r["sde"] == key.split("/")[1]
                    ],
                    "frechet",
                    floor["frechet"],
                )
                for key, floor in part["noise_floor"].items()
                if key.startswith(mix + "/")
            ]
            plot_panels(panels, "FD to the true moments", out / f"analytic_{mix}.png")
            written.append(f"analytic_{mix}.png")
    if "digits" in result:
        part = result["digits"]
        for key, where in (("fid_test", "test"), ("fid_train", "train")):
            panels = [
                (
                    sde_name,
                    [r for r in part["records"] if r["sde"] == sde_name],
                    key,
                    part["noise_floor"][key],
                )
                for sde_name in part["training"]
            ]
            plot_panels(panels, f"digits FID vs {where}", out / f"digits_{key}.png")
            written.append(f"digits_{key}.png")
    return written


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small smoke run")
    p.add_argument(
        "--parts", nargs="+", default=["analytic", "digits"], choices=["analytic", "digits"]
    )
    p.add_argument("--nfe", type=int, nargs="+", default=NFES)
    p.add_argument("--sdes", nargs="+", default=DIGIT_SDES, choices=DIGIT_SDES)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), help="(a) and (b) samplers")
    p.add_argument("--digits-methods", nargs="+", choices=list(METHODS), help="(b) only")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (the first of --seeds)")
    p.add_argument("--mixtures", nargs="+", default=list(MIXTURES), choices=list(MIXTURES))
    p.add_argument("--mixture-n", type=int, help="samples per mixture cell (default per mixture)")
    p.add_argument("--seeds", type=int, default=3, help="(a) sampler seeds averaged per cell")
    p.add_argument("--floor-sets", type=int, default=5, help="real sets behind each floor")
    p.add_argument("--n", type=int, default=500, help="(b) samples per digits cell")
    p.add_argument("--train-steps", type=int, default=TRAIN_STEPS)
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--cache", type=Path, help="checkpoint cache (default $SDEGEN_CACHE)")
    p.add_argument("--classifier", type=Path, help="digits classifier file (default: cache)")
    p.add_argument("--grid-method", default="dpmpp_2m", help="sampler of the sample grids")
    p.add_argument("--grid-nfe", type=int, default=20)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument(
        "--out", type=Path, help="default benchmarks/results/nfe_fid, with --quick a temp folder"
    )
    p.add_argument("--replot", action="store_true", help="rebuild table and PNGs from the JSON")
    args = p.parse_args(argv)
    if args.out is None:  # a smoke run does not overwrite the committed results
        quick = Path(tempfile.gettempdir()) / "sdegen-nfe_fid-quick"
        args.out = quick if args.quick else HERE / "results" / "nfe_fid"
    if args.replot:
        result = json.loads((args.out / "results.json").read_text())
        print(f"rewrote {', '.join(write(result, args.out))} in {args.out}")
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
    old = args.out / "results.json"
    if old.is_file():  # a part not run now keeps its earlier results
        for name, part in json.loads(old.read_text()).items():
            if name not in result:
                result[name] = part
                print(f"kept part {name!r} of {old} ({part['meta']['date']})")
    print(f"wrote {', '.join(write(result, args.out))} in {args.out}")
    return result


if __name__ == "__main__":
    main()
