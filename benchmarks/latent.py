"""Latent vs pixel diffusion on the 8x8 digits (Rombach et al. 2022, LDM), at equal training.

A KL-regularised autoencoder (conv, latent 2 x 4 x 4 = 32 dims for 64 pixels, discretized-
logistic decoder over the 17 grey levels, KL weight beta) is trained first, its latent scale
fitted to unit std; then two score models with the same U-Net width, the same objective
(denoising score matching, "simple" weighting, VP SDE) and the same number of steps and batch:
one on dequantized pixels, one on the rescaled posterior draws of the frozen autoencoder
(re-drawn every step). Measured on each: FID against the training images in the digits
classifier's features (`sdegen.metrics.digits`; the floor is the test set's), counted NFE and
wall time per sample for DPM-Solver++(2M) at each NFE, and test bits/dim: the pixel model's
PF-ODE log-likelihood of dequantized test images, and the latent model's bound
(`LatentDiffusion.bound`: latent PF-ODE + decoder + encoder entropy), both with the Hutchinson
trace, both in bits per pixel of the discrete data. Also the autoencoder's reconstruction
(MSE, PSNR) and rate.

    python benchmarks/latent.py          # 2.5 min of CPU, 4-12 min wall on a busy 2-core machine
    python benchmarks/latent.py --quick  # a smoke run
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch

import sdegen
from sdegen.assembly import harness, load_data, plots
from sdegen.data import dequantize
from sdegen.metrics import fid
from sdegen.metrics.digits import ensure_digits_classifier, load_digits_classifier
from sdegen.models import KLAutoencoder, LatentDiffusion, UNet
from sdegen.score_density import ScoreSDEDensity
from sdegen.training import Trainer, density_loss, score_matching
from sdegen.training.objectives import latent_score_matching

KINDS = ("pixel", "latent")


def _trainer(model, objective, x, args, steps_hint: int) -> Trainer:
    return Trainer(
        model,
        objective,
        x,
        batch_size=args.batch,
        lr=args.lr,
        warmup=min(50, steps_hint // 10),
        seed=args.seed,
        ema_decay=0.995,
        progress=False,
    )


def train_autoencoder(data, args) -> tuple[KLAutoencoder, float, dict]:
    torch.manual_seed(args.seed)
    ae = KLAutoencoder.conv(
        (1, 8, 8),
        latent_channels=args.latent_channels,
        hidden=32,
        likelihood="discretized",
        levels=17,
        beta=args.beta,
    ).float()
    start = time.perf_counter()
    trainer = _trainer(ae, density_loss(), data.train, args, args.ae_steps)
    trainer.fit(args.ae_steps)
    seconds = time.perf_counter() - start
    ae = copy.deepcopy(trainer.eval_model).double().eval()
    scale = ae.fit_latent_scale(data.train.double(), generator=torch.Generator().manual_seed(0))
    stats = ae.evaluate(data.test.double(), torch.Generator().manual_seed(args.seed))
    stats.update(latent_scale=scale, train_s=seconds, steps=args.ae_steps)
    return ae, seconds, stats


def train_score(kind: str, ae: KLAutoencoder, data, args) -> tuple:
    sde = sdegen.VPSDE()
    torch.manual_seed(args.seed)
    if kind == "pixel":
        net = UNet(1, channels=args.channels, channel_mult=(1, 2))
        objective = score_matching("simple", bin_width=data.bin_width)
    else:
        net = UNet(ae.latent_shape[0], channels=args.channels, channel_mult=(1, 2))
        objective = latent_score_matching(ae, "simple")
    model = sdegen.ScoreModel(net, sde).float()
    start, cpu = time.perf_counter(), time.process_time()
    trainer = _trainer(model, objective, data.train, args, args.steps)
    trainer.fit(args.steps)
    seconds = (time.perf_counter() - start, time.process_time() - cpu)
    model = trainer.eval_model.eval()
    params = sum(p.numel() for p in model.parameters())
    return model, sde, seconds, params


@torch.no_grad()
def sample_metrics(kind, model, sde, ae, data, feats, args, out: Path) -> list[dict]:
    shape = (1, 8, 8) if kind == "pixel" else ae.latent_shape
    ldm = LatentDiffusion(ae, ScoreSDEDensity(model, sde, ae.latent_shape))
    rows = []
    for nfe in args.nfe:
        start = time.perf_counter()
        res = sdegen.sample(
            model,
            sde,
            (args.n, *shape),
            method="dpmpp_2m",
            nfe=nfe,
            generator=torch.Generator().manual_seed(args.seed),
        )
        x = res.x if kind == "pixel" else ldm.decode(res.x).float()  # type: ignore[union-attr]
        seconds = time.perf_counter() - start
        x = x.clamp(-1, 1)
        rows.append(
            {
                "kind": kind,
                "nfe": res.nfe,
                "n": args.n,
                "fid": fid(x, data.train, features=feats),
                "ms_per_sample": 1000 * seconds / args.n,
            }
        )
        print(rows[-1], flush=True)
        plots.image_grid(x[:64], out / f"samples_{kind}_nfe{nfe}.png", 8, f"{kind}, NFE {res.nfe}")
    return rows


def likelihood(kind, model, sde, ae, data, args) -> dict:
    x = data.test[: args.n_bpd].double()
    net = copy.deepcopy(model).double()
    g = torch.Generator().manual_seed(args.seed)
    settings = {"trace": "hutchinson", "rtol": args.tol, "atol": args.tol}
    start = time.perf_counter()
    if kind == "pixel":
        density = ScoreSDEDensity(net, sde, (1, 8, 8))
        xd = dequantize(x, data.bin_width, generator=g)
        bpd = sdegen.bits_per_dim(density.log_prob(xd, generator=g, **settings), 64, data.bin_width)
        parts = {}
    else:
        ldm = LatentDiffusion(ae, ScoreSDEDensity(net, sde, ae.latent_shape))
        b = ldm.bound(x, generator=g, **settings)
        bpd = sdegen.bits_per_dim(b.log_prob, 64, data.bin_width)
        # bits/dim = decoder (discrete bits of the pixels given z) + prior + entropy terms
        parts = {
            "reconstruction_bpd": float(
                sdegen.bits_per_dim(b.reconstruction, 64, data.bin_width).mean()
            ),
            "prior_bpd": float(-b.prior.mean() / (64 * math.log(2))),
            "entropy_bpd": float(-b.entropy.mean() / (64 * math.log(2))),
        }
    return {
        "bpd": float(bpd.mean()),
        "bpd_sem": float(bpd.std() / math.sqrt(len(bpd))),
        "n_bpd": len(x),
        "bpd_s": time.perf_counter() - start,
        **parts,
    }


def run(args, out: Path) -> dict:
    wall, cpu = time.perf_counter(), time.process_time()
    data = load_data("digits", seed=args.seed)
    clf = load_digits_classifier(args.classifier or ensure_digits_classifier())
    feats = lambda x: clf.features(x.float())  # noqa: E731
    ae, _, ae_stats = train_autoencoder(data, args)
    print("autoencoder", ae_stats, flush=True)
    records = []
    for kind in KINDS:
        model, sde, seconds, params = train_score(kind, ae, data, args)
        rec = {"kind": kind, "params": params, "steps": args.steps}
        rec.update(train_s=seconds[0], train_cpu_s=seconds[1])
        rec.update(likelihood(kind, model, sde, ae, data, args))
        rec["samples"] = sample_metrics(kind, model, sde, ae, data, feats, args, out)
        records.append(rec)
        print(kind, {k: v for k, v in rec.items() if k != "samples"}, flush=True)
    meta = {
        k: getattr(args, k)
        for k in ("seed", "steps", "ae_steps", "batch", "lr", "channels", "beta", "n", "nfe")
    }
    meta.update(
        n_bpd=args.n_bpd,
        tol=args.tol,
        latent_shape=list(ae.latent_shape),
        fid_floor=fid(data.test, data.train, features=feats),
        torch=torch.__version__,
        wall_s=time.perf_counter() - wall,
        cpu_s=time.process_time() - cpu,
    )
    return {"meta": meta, "autoencoder": ae_stats, "records": records}


def markdown(result: dict) -> str:
    m, a = result["meta"], result["autoencoder"]
    lines = [
        "# Latent vs pixel diffusion on the 8x8 digits",
        "",
        f"Seed {m['seed']}, 1500 training and 297 test images, 1 torch thread of a busy 2-core "
        f"machine shared with other jobs: the whole run took {m['wall_s'] / 60:.1f} min wall, "
        f"{m['cpu_s'] / 60:.1f} min of CPU, so wall times are indicative (CPU seconds of "
        "training in brackets; the latent model's include its encoder). Autoencoder: "
        "KL-regularised, latent "
        f"{' x '.join(map(str, m['latent_shape']))}, beta {m['beta']}, {m['ae_steps']} steps "
        f"({a['train_s']:.0f} s), discretized-logistic decoder; test MSE {a['mse']:.4f} "
        f"(PSNR {a['psnr']:.1f} dB), rate {a['rate_bits']:.1f} bits per image, latent scale "
        f"{a['latent_scale']:.3g}. Score models: U-Net width {m['channels']} (levels 1, 2), VP "
        f"SDE, DSM with the simple weighting, {m['steps']} steps of batch {m['batch']} each.",
        "",
        f"FID: {m['n']} samples of DPM-Solver++(2M) against the training images in the digits "
        f"classifier's features (floor, the test images: {m['fid_floor']:.2f}); one sample "
        "set per cell (FID's sampling spread is not measured: nearby values may differ by "
        "chance); NFE counted. "
        f"Bits/dim on {m['n_bpd']} test images, Hutchinson trace, rtol = atol = {m['tol']}: the "
        "pixel model's PF-ODE log-likelihood of dequantized images (an estimate of a bound on "
        "the discrete bits), the latent model's variational bound (decoder + latent prior + "
        "encoder entropy), both upper bounds on bits/dim; ± is the standard error over images.",
        "",
        "| model | params | train s (CPU s) | bits/dim | NFE | FID | ms / sample |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["records"]:
        for s in r["samples"]:
            lines.append(
                f"| {r['kind']} | {r['params']} | {r['train_s']:.0f} ({r['train_cpu_s']:.0f}) | "
                f"{r['bpd']:.3f} ± "
                f"{r['bpd_sem']:.3f} | {s['nfe']} | {s['fid']:.2f} | {s['ms_per_sample']:.2f} |"
            )
    lat = next((r for r in result["records"] if r["kind"] == "latent"), None)
    if lat is not None:
        lines += [
            "",
            "The latent bound's parts, bits/dim: decoder "
            f"{lat['reconstruction_bpd']:.3f}, latent prior {lat['prior_bpd']:.3f}, encoder "
            f"entropy {lat['entropy_bpd']:.3f} (sum {lat['bpd']:.3f}).",
        ]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for r in result["records"]:
        ax.plot(
            [s["nfe"] for s in r["samples"]],
            [s["fid"] for s in r["samples"]],
            "o-",
            label=f"{r['kind']} ({r['bpd']:.2f} bits/dim)",
        )
    ax.axhline(result["meta"]["fid_floor"], color="0.6", ls="--", label="test images")
    ax.set(xlabel="NFE", ylabel="FID (digits features)", title="latent vs pixel diffusion")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv: list[str] | None = None) -> dict:
    p = harness.parser(__doc__)
    p.add_argument("--steps", type=int, default=600, help="score-model training steps")
    p.add_argument("--ae-steps", type=int, default=500, help="autoencoder training steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--channels", type=int, default=32, help="U-Net width of both models")
    p.add_argument("--latent-channels", type=int, default=2)
    p.add_argument("--beta", type=float, default=1e-3, help="the autoencoder's KL weight")
    p.add_argument("--n", type=int, default=500, help="samples per FID")
    p.add_argument("--nfe", type=int, nargs="+", default=[10, 20])
    p.add_argument("--n-bpd", type=int, default=32, help="test images for bits/dim")
    p.add_argument("--tol", type=float, default=1e-3, help="PF-ODE rtol = atol for bits/dim")
    p.add_argument("--classifier", type=Path, help="digits classifier file (default: the cache)")
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).parent / "results" / "latent",
        seed=0,
        quick="a few steps, for a smoke test",
    )
    if args.replot:
        result = harness.load(args.out)
    else:
        torch.set_num_threads(1)
        if args.quick:
            args.steps, args.ae_steps, args.n, args.nfe, args.n_bpd = 4, 4, 20, [4], 2
            args.channels, args.tol = 8, 1e-2
        args.out.mkdir(parents=True, exist_ok=True)
        result = run(args, args.out)
    kinds = [r["kind"] for r in result["records"]]
    grids = [f"samples_{k}_nfe{n}.png" for k in kinds for n in result["meta"]["nfe"]]
    harness.save(
        args.out,
        None if args.replot else result,
        markdown(result),
        {"fid_vs_nfe.png": lambda path: plot(result, path)},
        also=grids,
    )
    return result


if __name__ == "__main__":
    main()
