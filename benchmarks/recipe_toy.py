"""Training recipes on 2-D toy data: why `recipe: auto` keeps the shared keys for vectors.

The digits (benchmarks/recipe.py) favour EDM's recipe for every SDE; this checks the same
choice on a toy set whose density is known in closed form. Each SDE (vp, edm) is trained twice
on the same data, network, budget and seed: once with the shared keys (v-prediction, "simple"
weighting, t uniform) and once with EDM's (preconditioning, its weighting, log-normal noise
levels, sigma_data 0.5 as `recipe: auto` sets it). Measured per run: the test NLL in nats
through the PF-ODE (exact trace, dopri5 at rtol = atol = 1e-5), with its standard error over
the test points and the true density's NLL, and the sliced W2 of n samples (unipc, NFE 10 and
20, sampler seed 0) to the test set, beside its noise floor (n training points to the test set).

    python benchmarks/recipe_toy.py      # 4 runs of 1500 steps: ~5 min on one busy core
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from sdegen import solvers
from sdegen.assembly import harness, setup_run
from sdegen.assembly.config import EDM_RECIPE, SHARED_RECIPE, from_dict
from sdegen.assembly.likelihood import evaluate_likelihood
from sdegen.metrics import sliced_wasserstein

RECIPES = {"shared": SHARED_RECIPE, "edm": EDM_RECIPE}
TRAIN = {"n_train": 20000, "batch_size": 512, "lr": 2e-3, "warmup": 100, "log_every": 100}


def sw(x: torch.Tensor, ref: torch.Tensor) -> float:
    return sliced_wasserstein(x.double(), ref.double(), generator=torch.Generator().manual_seed(0))


def one_run(sde: str, recipe: str, args, root: Path) -> dict:
    cfg = from_dict(
        {
            "data": args.data,
            "sde": sde,
            "steps": args.steps,
            "seed": args.train_seed,
            "ckpt_every": 0,
            **TRAIN,
            **RECIPES[recipe],
        }
    )
    setup = setup_run(cfg, root / f"{sde}-{recipe}", progress=False)
    start = time.perf_counter()
    setup.fit()
    secs = time.perf_counter() - start
    model, data = setup.trainer.eval_model.eval(), setup.data
    rec = {"sde": sde, "recipe": recipe, "train_seconds": secs, "config": cfg.to_dict()}
    for nfe in args.nfe:
        g = torch.Generator().manual_seed(args.seed)
        res = solvers.sample(model, model.sde, (args.n, 2), nfe=nfe, generator=g)
        rec[f"sw_nfe{res.nfe}"] = sw(res.x, data.test)
    test = data.test[: args.n_test]
    nll = evaluate_likelihood(
        model, data, test, trace="exact", rtol=1e-5, atol=1e-5, batch=len(test), seed=0
    )
    rec.update({k: nll[k] for k in ("nll_nats", "nll_nats_sem", "true_nll_nats", "nfe")})
    print(f"{sde} {recipe}: NLL {rec['nll_nats']:.3f} nats, {secs:.0f} s", flush=True)
    return rec


def main(argv: list[str] | None = None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument("--data", default="toy:8gaussians")
    p.add_argument("--sdes", nargs="+", default=["vp", "edm"], choices=["vp", "subvp", "ve", "edm"])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--n", type=int, default=2000, help="samples per sliced W2")
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    p.add_argument("--n-test", type=int, help="test points of the NLL (default: all)")
    p.add_argument("--train-seed", type=int, default=0)
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).resolve().parent / "results" / "recipe_toy",
        seed=(0, "sampler seed"),
        threads=1,
    )
    if args.replot:
        result = harness.load(args.out)
        harness.save(args.out, None, markdown(result), {})
        return result
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        records = [one_run(s, r, args, Path(tmp)) for s in args.sdes for r in RECIPES]
        data = setup_run(from_dict({"data": args.data}), Path(tmp) / "floor", progress=False).data
    perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1))
    floor = sw(data.train[perm[: args.n]], data.test)
    result = {
        "meta": {
            "data": args.data,
            "steps": args.steps,
            "train": TRAIN,
            "train_seed": args.train_seed,
            "n": args.n,
            "n_test": len(data.test[: args.n_test]),
            "seed": args.seed,
            "seconds": time.perf_counter() - start,
            "date": time.strftime("%Y-%m-%d"),
            **harness.environment(),
        },
        "noise_floor": {"sliced_w2": floor},
        "records": records,
    }
    harness.save(args.out, result, markdown(result), {})
    return result


def markdown(result: dict) -> str:
    meta, recs = result["meta"], result["records"]
    sw_keys = sorted(
        {k for r in recs for k in r if k.startswith("sw_nfe")}, key=lambda k: int(k[6:])
    )
    lines = [
        f"# Training recipes on {meta['data']}: shared keys against EDM's",
        "",
        f"sdegen {meta.get('sdegen', '')}, torch {meta.get('torch', '')}, "
        f"{meta.get('threads', 1)} thread(s), {meta['date']}; {meta['seconds']:.0f} s in all. "
        f"Every run: the default MLP, {meta['steps']} steps, {meta['train']}, train seed "
        f"{meta['train_seed']}. NLL: {meta['n_test']} test points, PF-ODE with the exact trace, "
        f"dopri5 rtol = atol = 1e-5, +- its standard error; the true density's NLL is "
        f"{recs[0]['true_nll_nats']:.3f} nats. Sliced W2: n = {meta['n']} samples (unipc, "
        f"sampler seed {meta['seed']}, NFE counted) to the test set; noise floor "
        f"{result['noise_floor']['sliced_w2']:.3f}.",
        "",
        "| sde | keys | train s | NLL (nats) | "
        + " | ".join(f"sliced W2, NFE {k[6:]}" for k in sw_keys)
        + " |",
        "|---|---|---|---|" + "---|" * len(sw_keys),
    ]
    for r in recs:
        c = r["config"]
        keys = f"{c['parametrization']} / {c['weighting']} / {c['time_sampling']}"
        cells = " | ".join(f"{r[k]:.3f}" for k in sw_keys)
        lines.append(
            f"| {r['sde']} | {keys} | {r['train_seconds']:.0f} | "
            f"{r['nll_nats']:.3f} +- {r['nll_nats_sem']:.3f} | {cells} |"
        )
    lines += ["", "keys: parametrization / weighting / time_sampling.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
