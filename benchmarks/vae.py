"""VAE posterior-collapse remedies and the image flow's multi-scale split, on the 8x8 digits.

VAEs (conv encoder/decoder, 16 latent dims, discretized-logistic decoder over the digits' 17
grey levels, so bits/dim is the exact discrete -log2 P(x) / 64) trained with the same budget:
plain beta = 1; linear KL annealing (Bowman et al. 2016) over the first half of training;
cyclical annealing (Fu et al. 2019: 4 cycles, rising over half of each); free bits (Kingma et
al. 2016) at lambda nats per latent dimension. Measured on the test set: bits/dim from the
importance-weighted estimate (k samples) and from the ELBO, the KL in nats, and the active
units (Burda et al. 2016: Var_x E_q[z_u] > 0.01).

Flows: the Glow-style image flow (RealNVPImage, 2 scales) without the split, with the split
(half the channels factored out after the first scale) and with the split and Glow's learned
split prior, trained for the same steps on dequantized digits; exact test bits/dim and time.

    python benchmarks/vae.py            # 2 CPU-minutes; about 8 minutes on a busy 2-core machine
    python benchmarks/vae.py --quick    # a smoke run
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path

import torch

from sdegen.assembly import harness, load_data
from sdegen.data import dequantize
from sdegen.models import VAE, KLSchedule, RealNVPImage
from sdegen.models.density import bits_per_dim
from sdegen.training import Trainer, annealed_vae_loss, density_loss

VAES = ("plain", "annealed", "cyclical", "free_bits")
FLOWS = ("no_split", "split", "split_prior")
LATENT = 16
ACTIVE = 0.01  # Burda et al.'s activity threshold


def vae_setup(variant: str, steps: int, free_bits: float):
    """(VAE, schedule or None) for a variant; the schedule is None for a constant beta."""
    model = VAE.conv(
        (1, 8, 8),
        latent_dim=LATENT,
        hidden=32,
        likelihood="discretized",
        levels=17,
        free_bits=free_bits if variant == "free_bits" else 0.0,
    )
    schedule = {
        "annealed": KLSchedule(beta=1.0, warmup=steps // 2),
        "cyclical": KLSchedule(beta=1.0, warmup=steps // 8, period=steps // 4),
    }.get(variant)
    return model, schedule


def trainer_for(model, objective, data, args) -> Trainer:
    """The shared Trainer with this benchmark's settings."""
    return Trainer(
        model,
        objective,
        data.train,
        batch_size=args.batch,
        lr=args.lr,
        warmup=50,
        seed=args.seed,
        ema_decay=0.99,
        progress=False,
    )


def fit(trainer: Trainer, steps: int) -> tuple[torch.nn.Module, dict]:
    """Train for `steps`; the EMA weights, and the wall and CPU seconds of training."""
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(steps)
    seconds = {"train_s": time.perf_counter() - start, "train_cpu_s": time.process_time() - cpu}
    return trainer.eval_model, seconds


def fit_vae(variant: str, data, args) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(args.seed)
    model, schedule = vae_setup(variant, args.steps, args.free_bits)
    model.float()
    if schedule is None:
        objective = density_loss()
    else:  # beta = schedule(the step of the trainer below)
        objective = annealed_vae_loss(schedule, step=lambda: trainer.step)
    trainer = trainer_for(model, objective, data, args)
    return fit(trainer, args.steps)


@torch.no_grad()
def eval_vae(model: VAE, data, args) -> dict:
    vae = copy.deepcopy(model).double().eval()
    x = data.test.double()
    g = torch.Generator().manual_seed(args.seed)
    d, w = math.prod(data.event_shape), data.bin_width
    lp = vae.log_prob(x, k=args.k, generator=g)
    rec, kl = vae.elbo_terms(x, g)
    bpd = bits_per_dim(lp, d, w)
    activity = vae.latent_activity(x)
    return {
        "bpd": float(bpd.mean()),
        "bpd_sem": float(bpd.std() / math.sqrt(len(bpd))),
        "elbo_bpd": float(bits_per_dim(rec - kl, d, w).mean()),
        "kl_nats": float(kl.mean()),
        "active_units": int((activity > ACTIVE).sum()),
        "activity": [float(a) for a in activity],
    }


@torch.no_grad()
def eval_flow(model: RealNVPImage, data, args) -> dict:
    flow = copy.deepcopy(model).double().eval()
    g = torch.Generator().manual_seed(args.seed)
    x = dequantize(data.test.double(), data.bin_width, generator=g)
    bpd = flow.bits_per_dim(x, data.bin_width)
    return {
        "bpd": float(bpd.mean()),
        "bpd_sem": float(bpd.std() / math.sqrt(len(bpd))),
        "params": sum(p.numel() for p in flow.parameters()),
        "level_dims": [math.prod(s) for s in flow.level_shapes],
    }


def run(args) -> list[dict]:
    data = load_data("digits", seed=args.seed)
    records = []
    for variant in args.vaes:
        model, seconds = fit_vae(variant, data, args)
        rec = {"kind": "vae", "variant": variant, "steps": args.steps, **seconds}
        rec.update(eval_vae(model, data, args))
        records.append(rec)
        print(variant, {k: v for k, v in rec.items() if k != "activity"}, flush=True)
    for variant in args.flows:
        torch.manual_seed(args.seed)
        split = variant != "no_split"
        flow = RealNVPImage((1, 8, 8), 2, 2, 32, split=split, split_prior=variant == "split_prior")
        objective = density_loss(bin_width=data.bin_width)
        model, seconds = fit(trainer_for(flow.float(), objective, data, args), args.flow_steps)
        rec = {"kind": "flow", "variant": variant, "steps": args.flow_steps, **seconds}
        rec.update(eval_flow(model, data, args))
        records.append(rec)
        print(variant, rec, flush=True)
    return records


def _seconds(r: dict) -> str:
    return f"{r['train_s']:.0f} ({r['train_cpu_s']:.0f})"


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        "# VAE: KL annealing and free bits; the image flow's multi-scale split",
        "",
        f"8x8 digits (1500 train, {m['n_test']} test images, 17 grey levels), seed "
        f"{m['seed']}, batch {m['batch']}, lr {m['lr']}, EMA 0.99 (evaluated), 1 torch thread; one "
        "training run per row (the seed-to-seed spread is not measured). ± is the standard "
        "error over test images. Train s: wall (CPU) seconds on a shared 2-core machine.",
        "",
        f"## VAEs ({m['steps']} steps; {LATENT} latent dims; discretized-logistic decoder)",
        "",
        f"bits/dim: importance-weighted estimate with k = {m['k']} (a stochastic lower bound on "
        "log p, so an upper bound on bits/dim in expectation); -ELBO: the true ELBO, whatever "
        "the training loss was; active: units with Var_x E_q[z_u] > 0.01 (Burda et al. "
        f"2016). Free bits: lambda = {m['free_bits']} nats per latent dimension. Annealed: "
        "beta 0 -> 1 over the first half; cyclical: 4 cycles, rising over half of each. "
        "latent_activity.png: every unit's activity, sorted.",
        "",
        "| variant | bits/dim (IW) | -ELBO bits/dim | KL (nats) | active units | units with "
        "activity > 0.1 | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["records"]:
        if r["kind"] == "vae":
            lines.append(
                f"| {r['variant']} | {r['bpd']:.3f} ± {r['bpd_sem']:.3f} | "
                f"{r['elbo_bpd']:.3f} | {r['kl_nats']:.2f} | {r['active_units']} / {LATENT} "
                f"| {sum(a > 0.1 for a in r['activity'])} | {_seconds(r)} |"
            )
    lines += [
        "",
        f"## Image flow ({m['flow_steps']} steps; 2 scales, 2 couplings of each kind per "
        "scale, ActNorm + invertible 1x1 conv, 32 hidden channels)",
        "",
        "Exact test bits/dim after uniform dequantization (one draw). Dims per level: what "
        "each split factors out, then what the last scale sees.",
        "",
        "| variant | bits/dim | parameters | dims per level | train s |",
        "|---|---|---|---|---|",
    ]
    for r in result["records"]:
        if r["kind"] == "flow":
            lines.append(
                f"| {r['variant']} | {r['bpd']:.3f} ± {r['bpd_sem']:.3f} | {r['params']} | "
                f"{' + '.join(map(str, r['level_dims']))} | {_seconds(r)} |"
            )
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    plt = harness.pyplot()
    vaes = [r for r in result["records"] if r["kind"] == "vae"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in vaes:
        activity = sorted(r["activity"], reverse=True)
        ax.semilogy(range(1, len(activity) + 1), activity, marker="o", label=r["variant"])
    ax.axhline(ACTIVE, color="k", lw=0.8, ls="--")
    ax.set(xlabel="latent unit (sorted)", ylabel="Var_x E_q[z_u]", title="VAE latent activity")
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--steps", type=int, default=1000, help="VAE training steps")
    p.add_argument("--flow-steps", type=int, default=250, help="flow training steps")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--k", type=int, default=256, help="importance samples of the VAE estimate")
    p.add_argument("--free-bits", type=float, default=0.5, help="lambda, nats per latent dim")
    p.add_argument("--vaes", nargs="+", default=list(VAES), choices=VAES)
    p.add_argument("--flows", nargs="*", default=list(FLOWS), choices=FLOWS)
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).parent / "results" / "vae",
        seed=0,
        quick="a few steps, for a smoke test",
    )
    if args.replot:
        result = harness.load(args.out)
    else:
        torch.set_num_threads(1)
        if args.quick:
            args.steps, args.flow_steps, args.k = 8, 4, 4
        records = run(args)
        meta = {
            k: getattr(args, k)
            for k in ("seed", "steps", "flow_steps", "batch", "lr", "k", "free_bits")
        }
        meta.update(n_test=len(load_data("digits").test), torch=torch.__version__)
        result = {"meta": meta, "records": records}
    harness.save(
        args.out,
        None if args.replot else result,
        markdown(result),
        {"latent_activity.png": lambda path: plot(result, path)},
    )


if __name__ == "__main__":
    main()
