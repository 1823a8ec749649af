"""Discrete-time DDPM on the 8x8 digits: discrete vs continuous training, learned vs fixed variance.

Three small U-Nets, the same architecture, steps, batch, learning rate and seed, trained on the
TRAIN split of the bundled digits (17 grey levels, used as they are: no dequantization):

- "continuous": L_simple at t uniform on [t_min, 1] of the continuous VP SDE (beta 0.1..20);
- "discrete":   L_simple at DDPM's integer steps k uniform on {1..N} of `VPSDE.from_betas`
                (Ho et al. 2020's linear betas, N = 1000), the continuous SDE's discretization;
- "learned":    the same with twice the output channels, the second half the variance weights
                v of Improved DDPM (Nichol & Dhariwal 2021), trained by L_hybrid = L_simple +
                0.001 L_vlb.

Every network sees the log-SNR, so each is evaluated on DDPM's grid (the from_betas SDE), where
the two SDEs agree to O(1/N). Each model is scored

- by DDPM's discrete bound L_T + sum L_{k-1} + L_0 (`sdegen.training.vlb.vlb_terms`, all N
  terms, discretized decoder with the digits' bin width 2/17) in bits/dim on n_bpd TEST images,
  with the reverse variance beta_tilde ("posterior"), beta ("forward") or the learned one;
- by digits-FID (features of the digits CNN, `sdegen.metrics.digits`) of n samples against the
  TEST split, drawn by ancestral sampling on DDPM's grid respaced to NFE - 1 steps plus the final
  denoising step (Improved DDPM section 4), NFE counted; with beta_tilde, beta, the learned
  variance, and Analytic-DPM's (Bao et al. 2022: Gamma_t = E||eps_theta||^2 / d estimated on
  n_gamma train images at each grid time, those evaluations reported apart). Floor: n random
  train images against the test split, over a few subsets.

Nothing is tuned on the test split. The default budget is about 200 s of CPU time (344 s wall
on the shared 2-core machine at load average 4): small nets, few steps, far from converged,
so the numbers compare the variants at equal compute, not the state of the art. All three use
the v-parametrization (sdegen's default; the loss is the noise MSE all the same): with eps, the
x0 estimate (x - sigma eps) / alpha of these under-trained nets blows up near T, where alpha_T =
0.006, and every sampler diverged in a first run.

    python benchmarks/ddpm.py            # full run (writes benchmarks/results/ddpm)
    python benchmarks/ddpm.py --quick    # smoke run, seconds (into a temp folder)
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path

import torch

import sdegen
from sdegen.assembly import harness, load_data, plots
from sdegen.metrics import (
    digits_features,
    ensure_digits_classifier,
    fid_to_moments,
    gaussian_moments,
)
from sdegen.models import LearnedVarianceModel, ScoreModel, UNet
from sdegen.sde import VPSDE, beta_schedule, grid_size
from sdegen.solvers.ancestral_learned import AnalyticDPMVariance, respaced_grid
from sdegen.training import Trainer, hybrid_objective, score_matching, vlb_terms

NFES = [25, 50, 100]
NETWORK = {"channels": 8, "channel_mult": (1, 2), "attention_levels": ()}
MODELS = ("continuous", "discrete", "learned")
# (model, reverse variance) pairs scored; "analytic" is Analytic-DPM on the discrete model
VARIANTS = [
    ("continuous", "posterior"),
    ("continuous", "forward"),
    ("discrete", "posterior"),
    ("discrete", "forward"),
    ("discrete", "analytic"),
    ("learned", "learned"),
]
FLOOR_SEED = 7


def build(kind: str, n_steps: int, seed: int):
    """The untrained model of `kind` and the SDE it trains on."""
    torch.manual_seed(seed)
    ddpm = VPSDE.from_betas(beta_schedule("linear", n_steps))
    if kind == "continuous":
        return ScoreModel(UNet(1, **NETWORK), VPSDE(), "v")
    if kind == "discrete":
        return ScoreModel(UNet(1, **NETWORK), ddpm, "v")
    return LearnedVarianceModel(UNet(1, out_channels=2, **NETWORK), ddpm, "v")


def objective(kind: str, bin_width: float):
    if kind == "continuous":
        return score_matching("simple")
    if kind == "discrete":
        return score_matching("simple", time_sampling="discrete")
    return hybrid_objective(bin_width=bin_width)


def train(kind: str, data, args) -> tuple[torch.nn.Module, dict]:
    model = build(kind, args.ddpm_steps, args.train_seed)
    trainer = Trainer(
        model,
        objective(kind, data.bin_width),
        data.train,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=None,
        seed=args.train_seed,
        log_every=max(1, args.train_steps // 10),
        progress=False,
    )
    start = time.perf_counter()
    history = trainer.fit(args.train_steps)
    info = {
        "seconds": time.perf_counter() - start,
        "final_loss": history[-1]["loss"] if history else None,
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    print(f"trained {kind}: {info}", flush=True)
    return model.eval(), info


def on_grid(kind: str, model, ddpm):
    """The model on DDPM's grid: the continuous model's network under the from_betas SDE."""
    return ScoreModel(model.net, ddpm, model.parametrization) if kind == "continuous" else model


def learned_variance(model):
    """(x_k, k) -> Sigma_theta for vlb_terms: the model's variance of step k -> k - 1."""
    n = grid_size(model.sde)
    return lambda x, k: model.variance(x, (k.to(torch.float64) / n).to(x.dtype))


def bits_per_dim(models: dict, ddpm, data, args) -> list[dict]:
    x0 = data.test[: args.n_bpd]
    records = []
    for kind, variance in VARIANTS:
        if variance == "analytic":
            continue  # Gamma at all N steps would cost N x n_gamma evaluations
        model = models[kind]
        var = learned_variance(model) if variance == "learned" else variance
        start = time.perf_counter()
        terms = vlb_terms(
            model,
            x0,
            variance=var,
            bin_width=data.bin_width,
            generator=torch.Generator().manual_seed(args.seed),
        )
        bpd = terms.bits_per_dim
        rec = {
            "model": kind,
            "variance": variance,
            "n": len(x0),
            "bpd": float(bpd.mean()),
            "bpd_sem": float(bpd.std() / math.sqrt(len(bpd))),
            "bpd_per_image": bpd.tolist(),
            "decoder_bpd": float(terms.terms[:, 0].mean() / (terms.num_dims * math.log(2))),
            "prior_bpd": float(terms.prior.mean() / (terms.num_dims * math.log(2))),
            "seconds": time.perf_counter() - start,
        }
        records.append(rec)
        print(f"bpd {kind:10s} {variance:9s} {rec['bpd']:.4f} +- {rec['bpd_sem']:.4f}", flush=True)
    return records


def fids(models: dict, ddpm, data, feats, test_moments, args) -> list[dict]:
    records = []
    shape = (args.n, *data.event_shape)
    analytic_cache: dict[int, AnalyticDPMVariance] = {}
    for kind, variance in VARIANTS:
        model = models[kind]
        for nfe in args.nfe:
            ts = respaced_grid(ddpm, nfe - 1)
            extra = {}
            var = variance
            if variance == "analytic":
                if nfe not in analytic_cache:
                    analytic_cache[nfe] = AnalyticDPMVariance.fit(
                        model,
                        ddpm,
                        data.train[: args.n_gamma],
                        ts,
                        generator=torch.Generator().manual_seed(args.seed + 1),
                        data_range=(-1.0, 1.0),
                    )
                var = analytic_cache[nfe]
                extra = {"n_gamma": args.n_gamma, "nfe_gamma": var.nfe}
            start = time.perf_counter()
            res = sdegen.sample(
                model,
                ddpm,
                shape,
                method="ancestral",
                variance=var,
                schedule=ts,
                generator=torch.Generator().manual_seed(args.seed),
            )
            finite = bool(torch.isfinite(res.x).all())
            rec = {
                "model": kind,
                "variance": variance,
                "nfe": res.nfe,
                "n": args.n,
                "seed": args.seed,
                "fid": fid_to_moments(res.x, *test_moments, features=feats) if finite else math.inf,
                "seconds": time.perf_counter() - start,
                **extra,
            }
            records.append(rec)
            print(f"fid {kind:10s} {variance:9s} nfe={res.nfe:4d} {rec['fid']:.3f}", flush=True)
            if nfe == args.grid_nfe and finite:
                plots.image_grid(
                    res.x[:64].float(),
                    args.out / f"samples_{kind}_{variance}_nfe{nfe}.png",
                    nrow=8,
                    title=f"{kind}, {variance} variance, NFE {nfe}",
                )
    return records


def variance_profile(models: dict, ddpm, data, args) -> list[dict]:
    """Where the learned variance sits between beta_tilde (0) and beta (1): the mean over
    test pixels of v = log(Sigma / beta_tilde) / log(beta / beta_tilde) at a few steps, and
    the same coordinate of Analytic-DPM's variance for the discrete model."""
    from sdegen.sde.reverse_variance import variance_bounds

    n = grid_size(ddpm)
    ks = sorted({max(2, round(n * f)) for f in (0.002, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)})
    x0 = data.test[: args.n_bpd]
    g = torch.Generator().manual_seed(args.seed + 2)
    ts = torch.tensor([k / n for k in ks], dtype=torch.float64)
    grid = torch.cat([ts.flip(0), torch.zeros(1)])  # fit() uses every time but the last
    gamma = AnalyticDPMVariance.fit(
        models["discrete"],
        ddpm,
        data.train[: args.n_gamma],
        grid,
        generator=g,
        data_range=(-1.0, 1.0),
    )
    rows = []
    for k, t in zip(ks, ts.tolist()):
        tb = torch.full((len(x0),), t)
        sb = tb - 1 / n
        noise = torch.randn(x0.shape, generator=g)
        x_t = ddpm.perturb(x0, tb, noise)
        lo, hi = (b.float() for b in variance_bounds(ddpm, sb, tb))
        span = torch.log(hi / lo)[:, None, None, None]
        with torch.no_grad():
            var = models["learned"].variance(x_t, tb)
        v = torch.log(var / lo[:, None, None, None]) / span
        a = gamma(x_t, tb, sb).float()
        rows.append(
            {
                "k": k,
                "learned_v_mean": float(v.mean()),
                "learned_v_std": float(v.std()),
                "analytic_v": float((torch.log(a / lo) / span.flatten()).mean()),
            }
        )
    return rows


def markdown(result: dict) -> str:
    meta, floor = result["meta"], result["noise_floor"]
    nfes = sorted({r["nfe"] for r in result["fid"]})
    lines = [
        "# Discrete-time DDPM on the 8x8 digits",
        "",
        f"Three U-Nets ({meta['network']}, {result['training']['discrete']['parameters']} "
        f"parameters; the learned-variance one "
        f"{result['training']['learned']['parameters']}), {meta['train_steps']} steps of batch "
        f"{meta['batch_size']} at lr {meta['lr']} (seed {meta['train_seed']}), on the digits' "
        f"train split; N = {meta['ddpm_steps']} linear betas. Sampling seed {meta['seed']}; "
        f"{meta['threads']} thread(s); whole run {meta['cpu_seconds']:.0f} s of CPU time "
        f"({meta['seconds']:.0f} s wall at load average {meta['load_average_at_start']:.1f} on "
        f"{meta['cpus']} cores). Sized to run in a few minutes on 2 cores: the nets are small and "
        "far from converged.",
        "",
        f"**Bits/dim** (DDPM's discrete bound, all N terms, discretized decoder of bin width "
        f"2/17, on the first {meta['n_bpd']} test images, one noise draw per step; +- is the "
        "standard error over images; the same images and noise for every row, so differences "
        "are paired):",
        "",
        "| model | variance | bits/dim | minus discrete, forward (paired) | L_0 (decoder) | "
        "L_T (prior) |",
        "|---|---|---|---|---|---|",
    ]
    ref = next(
        torch.tensor(r["bpd_per_image"])
        for r in result["bpd"]
        if (r["model"], r["variance"]) == ("discrete", "forward")
    )
    for r in result["bpd"]:
        diff = torch.tensor(r["bpd_per_image"]) - ref
        paired = f"{float(diff.mean()):+.4f} +- {float(diff.std() / math.sqrt(len(diff))):.4f}"
        lines.append(
            f"| {r['model']} | {r['variance']} | {r['bpd']:.3f} +- {r['bpd_sem']:.3f} | "
            f"{paired if float(diff.abs().max()) > 0 else '-'} | {r['decoder_bpd']:.2e} | "
            f"{r['prior_bpd']:.2e} |"
        )
    lines += [
        "",
        f"**FID** (digits-CNN features of {meta['n']} samples against the {floor['n_test']} "
        "test images) by ancestral sampling on DDPM's grid respaced to NFE - 1 steps and the "
        f"final denoising step, NFE counted. Floor: {meta['n']} real train images, "
        f"{floor['fid_test']:.2f} +- {floor['fid_test_std']:.2f} over {floor['sets']} subsets."
        " Analytic-DPM's Gamma cost extra evaluations on "
        f"{meta['n_gamma']} train images (column `Gamma NFE`, per NFE column).",
        "",
        "| model | variance | " + " | ".join(f"NFE {n}" for n in nfes) + " | Gamma NFE |",
        "|---|---|" + "---|" * len(nfes) + "---|",
    ]
    for kind, variance in VARIANTS:
        cells = {
            r["nfe"]: r for r in result["fid"] if (r["model"], r["variance"]) == (kind, variance)
        }
        if not cells:
            continue
        extra = "/".join(str(cells[n].get("nfe_gamma", "")) for n in nfes if n in cells)
        lines.append(
            f"| {kind} | {variance} | "
            + " | ".join(f"{cells[n]['fid']:.2f}" if n in cells else "" for n in nfes)
            + f" | {extra if variance == 'analytic' else '-'} |"
        )
    if result.get("variance_profile"):
        lines += [
            "",
            "**Where the variances sit** between beta_tilde (v = 0) and beta (v = 1), in Improved "
            "DDPM's log-space coordinate v, at a few steps k (learned: mean and std over the "
            "pixels of test images at x_k; Analytic-DPM: the discrete model's isotropic optimum):",
            "",
            "| k | learned v (mean) | learned v (std) | Analytic-DPM v |",
            "|---|---|---|---|",
        ]
        for r in result["variance_profile"]:
            lines.append(
                f"| {r['k']} | {r['learned_v_mean']:.3f} | {r['learned_v_std']:.3f} | "
                f"{r['analytic_v']:.3f} |"
            )
    lines += ["", "Training: " + ", ".join(
        f"{k} {v['seconds']:.0f} s (final loss {v['final_loss']:.4f})"
        for k, v in result["training"].items()
    ) + "."]  # fmt: skip
    return "\n".join(lines) + "\n"


def plot_fid(result: dict, path: Path) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, variance in VARIANTS:
        rows = sorted(
            (r for r in result["fid"] if (r["model"], r["variance"]) == (kind, variance)),
            key=lambda r: r["nfe"],
        )
        if rows:
            ax.plot([r["nfe"] for r in rows], [r["fid"] for r in rows], "o-",
                    label=f"{kind}, {variance}")  # fmt: skip
    floor = result["noise_floor"]
    ax.axhline(floor["fid_test"], color="0.6", ls="--", label="real train images (floor)")
    ax.set(xscale="log", yscale="log", xlabel="NFE (counted)", ylabel="FID (digits CNN)")
    ax.legend(fontsize=7)
    ax.set_title(f"ancestral sampling on DDPM's respaced grid, n = {result['meta']['n']}",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(result: dict) -> dict:
    return {"fid_vs_nfe.png": lambda path: plot_fid(result, path)}


def main(argv: list[str] | None = None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument("--nfe", type=int, nargs="+", default=NFES)
    p.add_argument("--n", type=int, default=300, help="samples per FID cell")
    p.add_argument("--n-bpd", type=int, default=48, help="test images of the bound")
    p.add_argument("--n-gamma", type=int, default=200, help="train images for Analytic-DPM")
    p.add_argument("--ddpm-steps", type=int, default=1000, help="N, DDPM's steps")
    p.add_argument("--train-steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--train-seed", type=int, default=0)
    p.add_argument("--grid-nfe", type=int, default=50, help="NFE of the sample grids saved")
    p.add_argument("--classifier", type=Path, help="digits classifier file (default: cache)")
    args = harness.parse(
        p,
        argv,
        out=None,
        out_help="default benchmarks/results/ddpm, with --quick a temp folder",
        seed=(0, "sampling seed"),
        floor_sets=(5, "real sets behind the FID floor"),
        threads=1,
        quick="a small smoke run",
    )
    if args.out is None:  # a smoke run does not overwrite the committed results
        quick = Path(tempfile.gettempdir()) / "sdegen-ddpm-quick"
        args.out = quick if args.quick else Path(__file__).resolve().parent / "results" / "ddpm"
    if args.replot:
        result = harness.load(args.out)
        harness.save(args.out, None, markdown(result), figures(result))
        return result
    if args.quick:
        args.nfe, args.n, args.n_bpd, args.n_gamma = [4, 8], 32, 2, 16
        args.ddpm_steps, args.train_steps, args.floor_sets, args.grid_nfe = 50, 4, 2, 8
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start, cpu_start, load = time.perf_counter(), time.process_time(), os.getloadavg()[0]
    data = load_data("digits")
    clf_path = ensure_digits_classifier(args.classifier)
    feats = digits_features(clf_path)
    test_moments = gaussian_moments(feats(data.test))
    floor_fids = []
    for k in range(args.floor_sets):
        perm = torch.randperm(
            len(data.train), generator=torch.Generator().manual_seed(FLOOR_SEED + k)
        )
        floor_fids.append(fid_to_moments(data.train[perm[: args.n]], *test_moments, features=feats))
    floor = {"sets": args.floor_sets, "n": args.n, "n_test": len(data.test)}
    floor["fid_test"], floor["fid_test_std"] = harness.mean_std(floor_fids)

    models, training = {}, {}
    for kind in MODELS:
        models[kind], training[kind] = train(kind, data, args)
    ddpm = models["discrete"].sde
    models["continuous"] = on_grid("continuous", models["continuous"], ddpm)
    with torch.no_grad():  # from here on only sampling and scoring
        bpd = bits_per_dim(models, ddpm, data, args)
        fid = fids(models, ddpm, data, feats, test_moments, args)
        profile = variance_profile(models, ddpm, data, args)
        meta = {
            **{k: getattr(args, k) for k in ("nfe", "n", "n_bpd", "n_gamma", "ddpm_steps")},
            **{
                k: getattr(args, k)
                for k in ("train_steps", "batch_size", "lr", "train_seed", "seed")
            },
            "network": {k: list(v) if isinstance(v, tuple) else v for k, v in NETWORK.items()},
            "quick": args.quick,
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start,
            "load_average_at_start": load,
            "date": time.strftime("%Y-%m-%d"),
            "commit": harness.git_commit(),
            **harness.environment(),
        }
        result = {
            "meta": meta,
            "training": training,
            "noise_floor": floor,
            "bpd": bpd,
            "fid": fid,
            "variance_profile": profile,
        }
        grids = [f"samples_{k}_{v}_nfe{args.grid_nfe}.png" for k, v in VARIANTS]
        harness.save(args.out, result, markdown(result), figures(result), also=grids)
        return result


if __name__ == "__main__":
    main()
