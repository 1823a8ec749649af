"""sdegen's FFJORD against the reference implementation (rtqichen/ffjord) at its toy budget.

The budget is the reference's train_toy.py defaults: one CNF block, concat-squash 64-64-64,
tanh, T = 0.5 (train_T on), exact (brute-force) trace, dopri5 with rtol = atol = 1e-5, Adam
with lr 1e-3 and weight decay 1e-5, batch 100, a fresh batch every iteration, 1500 iterations,
float32 training. Both implementations see the SAME batches (drawn from
`sdegen.data.toy_sample`, so the data source is one), are trained in one process with their
iterations interleaved (the order alternates), so machine load falls on both alike, and are
evaluated alike: test NLL in nats on one held-out test set of --n-test points drawn from the same
sampler with another seed, exact trace, dopri5 at 1e-5 (the reference's test settings), in
float64. Reported per data set: mean ± standard error over seeds, each seed's value, the floor
(the true density's entropy by Monte Carlo where the density is known in closed form), time per
iteration of each implementation and their ratio in the same run, and counted NFE.

The reference is imported from a checkout given by --reference DIR (default: the environment
variable SDEGEN_FFJORD_REFERENCE); without one, only sdegen's columns are filled and the table
says so. Nothing of it is copied into sdegen.

    python benchmarks/ffjord.py --reference /path/to/ffjord          # full protocol
    python benchmarks/ffjord.py --quick                              # a smoke run
    python benchmarks/ffjord.py --data 8gaussians --seed 1 --seeds 1 --out /tmp/a   # one job
    python benchmarks/ffjord.py --merge /tmp/a /tmp/b                # jobs -> one table
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import inspect
import math
import os
import sys
import time
import warnings
from pathlib import Path

import torch

from sdegen.assembly import harness
from sdegen.data.toy import TOY_LOG_PROB_DATASETS, toy_log_prob, toy_sample
from sdegen.models import FFJORD

DATA = ("8gaussians", "checkerboard", "moons")
IMPLS = ("sdegen", "reference")
REFERENCE_ENV = "SDEGEN_FFJORD_REFERENCE"
# the reference's train_toy.py defaults
HIDDEN, ACTIVATION, T0, TOL = (64, 64, 64), "tanh", 0.5, 1e-5
LR, WEIGHT_DECAY = 1e-3, 1e-5


def load_reference(path: str | None):
    """The reference's `lib.layers` module from the checkout `path`, or (None, why not).

    No shim is needed with torch 2.x and torchdiffeq 0.2.x: the package imports as is (its
    `torch.tensor(t)` copies only warn, and those warnings are silenced here)."""
    if not path:
        return None, f"no reference checkout (--reference or ${REFERENCE_ENV})"
    root = Path(path)
    if not (root / "lib" / "layers" / "cnf.py").is_file():
        return None, f"{root} is not an rtqichen/ffjord checkout (no lib/layers/cnf.py)"
    known = sys.modules.get("lib")
    if known is not None and Path(getattr(known, "__file__", "")).parent.parent != root:
        return None, "a different module named `lib` is already imported"
    sys.path.insert(0, str(root))
    warnings.filterwarnings("ignore", message=".*copy construct from a tensor.*")
    return importlib.import_module("lib.layers"), f"lib.layers from {root}"


class Reference:
    """The reference's toy model (train_misc.build_model_tabular with train_toy's defaults)
    behind the two calls the benchmark makes: log p(x) and its counted NFE."""

    def __init__(self, layers) -> None:
        net = layers.ODEnet(
            hidden_dims=HIDDEN,
            input_shape=(2,),
            strides=None,
            conv=False,
            layer_type="concatsquash",
            nonlinearity=ACTIVATION,
        )
        self.odefunc = layers.ODEfunc(
            diffeq=net, divergence_fn="brute_force", residual=False, rademacher=False
        )
        # CNF's own tolerances default to 1e-5, train_toy's too
        self.model = layers.CNF(
            odefunc=self.odefunc, T=T0, train_T=True, solver="dopri5", atol=TOL, rtol=TOL
        )

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        z, delta = self.model(x, torch.zeros(len(x), 1, dtype=x.dtype))
        return FFJORD.base_log_prob(z) - delta[:, 0]

    @property
    def nfe(self) -> int:
        return int(self.odefunc.num_evals())

    @property
    def T(self) -> float:
        return float(self.model.sqrt_end_time.detach() ** 2)


def build_sdegen() -> FFJORD:
    """sdegen's FFJORD at the reference's budget, float32 like the reference's training."""
    model = FFJORD(2, HIDDEN, ACTIVATION, T=T0, trace="exact", rtol=TOL, atol=TOL)
    return model.float()


def floor(data: str, n: int, seed: int) -> dict | None:
    """The entropy of the data density (the lowest expected test NLL) by Monte Carlo over n
    exact samples, with its standard error; None where there is no closed-form density."""
    if data not in TOY_LOG_PROB_DATASETS:
        return None
    x = toy_sample(data, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    lp = toy_log_prob(data, x)
    return {"entropy": float(-lp.mean()), "se": float(lp.std() / math.sqrt(n)), "n": n}


def train_pair(data: str, seed: int, iters: int, batch: int, layers) -> dict:
    """Train sdegen's FFJORD (and the reference when `layers` is given) on the same batches,
    interleaved; returns the trained float64 copies and the per-iteration times and NFE."""
    models: dict = {}
    torch.manual_seed(seed)
    models["sdegen"] = build_sdegen()
    if layers is not None:
        torch.manual_seed(seed)
        models["reference"] = Reference(layers)
    params = {
        "sdegen": models["sdegen"].parameters(),
        **({"reference": models["reference"].model.parameters()} if layers else {}),
    }
    opts = {k: torch.optim.Adam(p, lr=LR, weight_decay=WEIGHT_DECAY) for k, p in params.items()}
    log = {k: {"seconds": [], "nfe_forward": [], "nfe_backward": [], "loss": []} for k in models}
    g = torch.Generator().manual_seed(10_000 + seed)
    for it in range(iters):
        x = toy_sample(data, batch, generator=g)  # float32, one batch for both
        order = list(models) if it % 2 == 0 else list(models)[::-1]
        for name in order:
            m, opt, rec = models[name], opts[name], log[name]
            start = time.perf_counter()
            opt.zero_grad()
            if name == "sdegen":
                loss = m.loss(x)
                nfe_f = m.last_stats.nfe_forward
            else:
                loss = -m.log_prob(x).mean()
                nfe_f = m.nfe
            loss.backward()
            opt.step()
            rec["seconds"].append(time.perf_counter() - start)
            nfe_b = m.last_stats.nfe_backward if name == "sdegen" else m.nfe - nfe_f
            rec["nfe_forward"].append(nfe_f)
            rec["nfe_backward"].append(nfe_b)
            rec["loss"].append(float(loss.detach()))
        if (it + 1) % 100 == 0:
            print(
                f"{data} seed {seed} iteration {it + 1}: "
                + ", ".join(
                    f"{k} loss {sum(v['loss'][-100:]) / 100:.3f} {sum(v['seconds'][-100:]):.0f} s"
                    for k, v in log.items()
                ),
                flush=True,
            )
    return {"models": models, "log": log}


@torch.no_grad()
def test_nll(name: str, model, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Per-point NLL (n,) of the test set x in float64 at the reference's test settings."""
    if name == "sdegen":
        m = copy.deepcopy(model).double().eval()
        lp = m.log_prob(x, trace="exact", rtol=TOL, atol=TOL, method="dopri5")
        return -lp, m.last_stats.nfe_forward
    ref = copy.deepcopy(model)
    ref.model.double().eval()
    return -ref.log_prob(x), ref.nfe


def run_job(data: str, seed: int, args, layers) -> list[dict]:
    test = toy_sample(
        data,
        args.n_test,
        generator=torch.Generator().manual_seed(args.test_seed + seed),
        dtype=torch.float64,
    )
    trained = train_pair(data, seed, args.iters, args.batch, layers)
    nll = {}
    records = []
    for name, model in trained["models"].items():
        start = time.perf_counter()
        per_point, nfe = test_nll(name, model, test)
        nll[name] = per_point
        log = trained["log"][name]
        T = float(model.T) if name == "sdegen" else model.T
        k = max(1, len(log["loss"]) // 10)
        records.append(
            {
                "data": data,
                "seed": seed,
                "impl": name,
                "iters": args.iters,
                "batch": args.batch,
                "n_test": args.n_test,
                "nll": float(per_point.mean()),
                "nll_se_points": float(per_point.std() / math.sqrt(len(per_point))),
                "seconds_per_iter": sum(log["seconds"]) / len(log["seconds"]),
                "train_seconds": sum(log["seconds"]),
                "nfe_forward_mean": sum(log["nfe_forward"]) / len(log["nfe_forward"]),
                "nfe_backward_mean": sum(log["nfe_backward"]) / len(log["nfe_backward"]),
                "nfe_forward_last": log["nfe_forward"][-1],
                "test_nfe": nfe,
                "T_final": T,
                "loss_curve": [
                    sum(log["loss"][i : i + k]) / len(log["loss"][i : i + k])
                    for i in range(0, len(log["loss"]), k)
                ],
                "eval_seconds": time.perf_counter() - start,
            }
        )
    if "reference" in nll:
        diff = nll["sdegen"] - nll["reference"]  # paired over the same test points
        for r in records:
            r["paired_diff"] = float(diff.mean())
            r["paired_diff_se"] = float(diff.std() / math.sqrt(len(diff)))
            r["time_ratio"] = records[0]["seconds_per_iter"] / records[1]["seconds_per_iter"]
    return records


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error over seeds (0 for one seed)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    var = sum((v - m) ** 2 for v in values) / (len(values) - 1)
    return m, math.sqrt(var / len(values))


def summary(result: dict) -> dict:
    """Per data set and implementation: NLL mean ± SE over seeds, gap to the floor, time per
    iteration, and the per-seed time ratio sdegen / reference."""
    out: dict = {}
    for data in dict.fromkeys(r["data"] for r in result["records"]):
        recs = [r for r in result["records"] if r["data"] == data]
        fl = result["floors"].get(data)
        row: dict = {"floor": fl["entropy"] if fl else None}
        for impl in IMPLS:
            rs = sorted((r for r in recs if r["impl"] == impl), key=lambda r: r["seed"])
            if not rs:
                continue
            m, se = mean_se([r["nll"] for r in rs])
            row[impl] = {
                "seeds": [r["seed"] for r in rs],
                "nll": m,
                "nll_se": se,
                "per_seed": [r["nll"] for r in rs],
                "gap": None if fl is None else m - fl["entropy"],
                "seconds_per_iter": mean_se([r["seconds_per_iter"] for r in rs])[0],
                "nfe_forward_mean": mean_se([r["nfe_forward_mean"] for r in rs])[0],
                "nfe_backward_mean": mean_se([r["nfe_backward_mean"] for r in rs])[0],
                "T_final": [r["T_final"] for r in rs],
                "source": [r.get("ffjord_source_sha1") for r in rs],
            }
        if "reference" in row:
            ratios = [r["time_ratio"] for r in recs if r["impl"] == "sdegen"]
            diffs = [r["paired_diff"] for r in recs if r["impl"] == "sdegen"]
            row["time_ratio"], row["time_ratio_se"] = mean_se(ratios)
            row["diff"], row["diff_se"] = mean_se(diffs)
            # each seed's paired difference has its own error over the test points
            row["diff_se_points"] = [r["paired_diff_se"] for r in recs if r["impl"] == "sdegen"]
        out[data] = row
    return out


def markdown(result: dict) -> str:
    m = result["meta"]
    s = summary(result)
    lines = [
        "# FFJORD: sdegen against the reference implementation at its toy budget",
        "",
        f"Budget (the reference's train_toy.py defaults): concat-squash {HIDDEN}, {ACTIVATION}, "
        f"T = {T0} with train_T, exact trace, dopri5 rtol = atol = {TOL}, Adam lr {LR} with "
        f"weight decay {WEIGHT_DECAY}, batch {m['batch']} fresh every iteration, {m['iters']} "
        "iterations, float32 training. Both see the same batches (sdegen.data.toy_sample), are "
        "trained in one process with interleaved iterations (alternating order), and are "
        f"evaluated alike: test NLL in nats on {m['n_test']} held-out points (test seed "
        f"{m['test_seed']} + training seed), exact trace, dopri5 at {TOL}, float64. NLL: mean "
        "± standard error over the training seeds; *diff*: sdegen minus reference on the same "
        "test points, mean over seeds ± SE. Floor: the entropy of the data density by Monte "
        f"Carlo over {m['floor_n']} exact samples (SE about 0.001), where the density is known "
        f"in closed form. Time per iteration: zero_grad + loss + backward + Adam step, on "
        f"{m['threads']} torch thread(s) on a shared, busy machine; the ratio is sdegen / "
        "reference per seed (same run), mean ± SE. NFE: dynamics evaluations per iteration, "
        "mean over the run (backward: the reference's adjoint solve; sdegen backpropagates "
        "through the solver and calls the dynamics 0 times there).",
        "",
        f"Reference: {m['reference']}.",
    ]
    for note in m.get("notes", []):
        lines += ["", note]
    lines += [
        "",
        "| data | floor | impl | seeds | NLL (mean ± SE) | per seed | gap to floor | "
        "s / iter | NFE fwd / bwd | T at end | FFJORD source |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for data, row in s.items():
        fl = "-" if row["floor"] is None else f"{row['floor']:.3f}"
        for impl in IMPLS:
            if impl not in row:
                continue
            r = row[impl]
            gap = "-" if r["gap"] is None else f"{r['gap']:.3f}"
            lines.append(
                f"| {data} | {fl} | {impl} | {len(r['seeds'])} | {r['nll']:.3f} ± "
                f"{r['nll_se']:.3f} | {', '.join(f'{v:.3f}' for v in r['per_seed'])} | {gap} | "
                f"{r['seconds_per_iter']:.3f} | {r['nfe_forward_mean']:.1f} / "
                f"{r['nfe_backward_mean']:.1f} | "
                f"{', '.join(f'{t:.3f}' for t in r['T_final'])} | "
                f"{', '.join(str(v) for v in r['source']) if impl == 'sdegen' else '-'} |"
            )
    if any("reference" in row for row in s.values()):
        lines += [
            "",
            "| data | seeds | diff sdegen - reference (nats), mean ± SE over seeds | "
            "SE over test points, per seed | time ratio sdegen / reference |",
            "|---|---|---|---|---|",
        ]
        for data, row in s.items():
            if "reference" in row:
                pts = ", ".join(f"{v:.3f}" for v in row["diff_se_points"])
                lines.append(
                    f"| {data} | {len(row['diff_se_points'])} | {row['diff']:+.3f} ± "
                    f"{row['diff_se']:.3f} | {pts} | "
                    f"{row['time_ratio']:.2f} ± {row['time_ratio_se']:.2f} |"
                )
    lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    """Training loss curves (mean over seeds) per data set, both implementations."""
    plt = harness.pyplot()
    datas = list(dict.fromkeys(r["data"] for r in result["records"]))
    fig, axes = plt.subplots(1, len(datas), figsize=(4 * len(datas), 3.2), squeeze=False)
    floors = result["floors"]
    for ax, data in zip(axes[0], datas):
        for impl, colour in zip(IMPLS, ("C0", "C1")):
            curves = [
                r["loss_curve"]
                for r in result["records"]
                if r["data"] == data and r["impl"] == impl
            ]
            if not curves:
                continue
            k = min(len(c) for c in curves)
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(k)]
            iters = result["meta"]["iters"]
            xs = [(i + 0.5) * iters / k for i in range(k)]
            ax.plot(xs, mean, colour, label=impl)
        if floors.get(data):
            ax.axhline(floors[data]["entropy"], color="k", ls=":", label="floor")
        ax.set_title(data, fontsize=9)
        ax.set_xlabel("iteration")
        ax.set_ylabel("training NLL (nats)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--data", nargs="+", default=list(DATA), choices=DATA)
    p.add_argument("--iters", type=int, default=1500)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--n-test", type=int, default=10_000)
    p.add_argument("--test-seed", type=int, default=1_000)
    p.add_argument("--floor-n", type=int, default=1_000_000)
    p.add_argument(
        "--reference",
        default=os.environ.get(REFERENCE_ENV),
        help=f"rtqichen/ffjord checkout (default ${REFERENCE_ENV})",
    )
    p.add_argument("--note", action="append", default=[], help="a line for the table")
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        default=None,
        help="results folders of earlier jobs to combine into --out (runs nothing)",
    )
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).parent / "results" / "ffjord",
        seed=(0, "first training seed"),
        seeds=(3, "training seeds per data set (seed, seed + 1, ...)"),
        quick="a few iterations and a small test set, for a smoke test",
    )
    if args.replot:
        result = harness.load(args.out)
        harness.save(
            args.out, result, markdown(result), {"loss_curves.png": lambda f: plot(result, f)}
        )
        return
    if args.merge:
        parts = [harness.load(d) for d in args.merge]
        for part in parts:  # each record keeps the FFJORD source it ran with
            for r in part["records"]:
                r.setdefault("ffjord_source_sha1", part["meta"].get("ffjord_source_sha1"))
        result = {
            "records": [r for part in parts for r in part["records"]],
            "floors": {k: v for part in parts for k, v in part["floors"].items()},
            "meta": {
                **parts[0]["meta"],
                "merged_from": [str(d) for d in args.merge],
                "notes": args.note,
            },
        }
        harness.save(
            args.out, result, markdown(result), {"loss_curves.png": lambda f: plot(result, f)}
        )
        return
    if args.quick:
        args.iters, args.n_test, args.floor_n, args.seeds = 3, 200, 10_000, 1
    torch.set_num_threads(1)
    layers, how = load_reference(args.reference)
    records, floors = [], {}
    for data in args.data:
        floors[data] = floor(data, args.floor_n, seed=7)
        for seed in range(args.seed, args.seed + args.seeds):
            for rec in run_job(data, seed, args, layers):
                records.append(rec)
                print({k: v for k, v in rec.items() if k != "loss_curve"}, flush=True)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    meta.update(reference=how, notes=args.note, **harness.environment())
    # which FFJORD ran: a hash of its source (runs are merged across jobs)
    meta["ffjord_source_sha1"] = hashlib.sha1(
        Path(inspect.getfile(FFJORD)).read_bytes()
    ).hexdigest()[:12]
    meta["git_commit"] = harness.git_commit()
    meta["threads"] = torch.get_num_threads()
    result = {"records": records, "floors": floors, "meta": meta}
    harness.save(args.out, result, markdown(result), {"loss_curves.png": lambda f: plot(result, f)})


if __name__ == "__main__":
    main()
