"""DiT vs U-Net on the 8x8 digits at equal parameter count: FID, Inception Score, test DSM loss.

Two score networks of (nearly) the same size, the package's U-Net (`network: unet`) and the
Diffusion Transformer (`network: dit`, Peebles & Xie 2023), are trained by the same run config
but for the network: VP SDE, v-parametrisation, the digits train split, the same steps, batch,
learning rate, EMA and seed (so the same batches, times and noise). Each is then scored by:

- test DSM loss: the training objective on the 297 held-out test images, each with `--loss-draws`
  fixed (time, noise) draws, the same draws for both networks (EMA weights);
- FID: digits-CNN features (`sdegen.metrics.digits`) of `--n` samples (DPM-Solver++(2M), the
  same prior noise for both) against the train split; floor: the real test split's FID;
- Inception Score on the digits CNN (10 splits); reference: `--n` real train images, shuffled;
- wall time per training step (median over the steps, one torch thread; the two networks
  train in turn, step by step, so both are timed under the same load).

    python benchmarks/dit.py            # ~6-8 minutes on one busy CPU core
    python benchmarks/dit.py --replot   # table and figures from results.json
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

from sdegen.assembly import (
    TrainConfig,
    build_model,
    harness,
    load_data,
    make_trainer,
    plots,
    set_data_std,
)
from sdegen.metrics import fid, inception_score, inception_score_from_probs
from sdegen.metrics.digits import ensure_digits_classifier, load_digits_classifier
from sdegen.training import held_out_loss, score_matching

NETS = ("unet", "dit")


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def trainer_for(kind: str, params: dict, args, data):
    """The Trainer of `kind` ("unet" or "dit") by the shared run config."""
    cfg = TrainConfig(
        data="digits",
        network=kind,
        network_params=params,
        steps=args.steps,
        batch_size=args.batch,
        lr=args.lr,
        warmup=args.warmup,
        ema_decay=args.ema,
        ckpt_every=0,
        seed=args.seed,
        recipe="shared",  # the keys its results were made with (v / simple / continuous)
    )
    model = build_model(cfg, data.event_shape)
    set_data_std(model, cfg, data)  # as the CLI's runs: the default grid for its data
    run_dir = Path(tempfile.mkdtemp(prefix=f"sdegen-dit-bench-{kind}-"))
    return cfg, make_trainer(cfg, data, model, run_dir, progress=False)


def train(params: dict, args, data) -> list[tuple[object, dict]]:
    """Both networks trained step by step in turn (U-Net step k, DiT step k, ...), so the
    time per step of each is measured under the same load of the shared machine."""
    runs = {kind: trainer_for(kind, params[kind], args, data) for kind in NETS}
    seconds: dict[str, list[float]] = {kind: [] for kind in NETS}
    losses: dict[str, list[float]] = {kind: [] for kind in NETS}
    for _ in range(args.steps):
        for kind, (_, trainer) in runs.items():
            start = time.perf_counter()
            rec = trainer.train_step()
            seconds[kind].append(time.perf_counter() - start)
            losses[kind].append(rec["loss"])
    out = []
    for kind, (cfg, trainer) in runs.items():
        # the objective make_trainer trains with, on held-out images with fixed draws
        objective = score_matching(cfg.weighting, bin_width=data.bin_width)
        test = data.test.repeat(args.loss_draws, 1, 1, 1)
        test_loss = held_out_loss(objective, test)(trainer.eval_model, trainer.step)["test_loss"]
        times = sorted(seconds[kind])
        record = {
            "network": kind,
            "params": params[kind],
            "parameters": count(trainer.model.net),
            "steps": args.steps,
            "seconds_per_step": times[len(times) // 2],
            "train_seconds": sum(times),
            "train_loss_curve": losses[kind],
            "test_loss": test_loss,
            "test_loss_rows": len(test),
        }
        out.append((trainer.eval_model, record))
    return out


def evaluate(model, record: dict, args, data, clf, out: Path) -> dict:
    feats = lambda x: clf.features(x.float())  # noqa: E731
    probs = lambda x: torch.softmax(clf(x.float()).double(), dim=1)  # noqa: E731
    noise = torch.randn(args.n, 1, 8, 8, generator=torch.Generator().manual_seed(args.seed + 7))
    start = time.perf_counter()
    with torch.no_grad():
        # One batch, as before; with batch_size and a PerExampleGenerator the same call deals
        # aligned batches to torchrun's processes (the sampler is deterministic from `noise`).
        x, batches = harness.sample_batches(
            model, model.sde, noise.shape, method="dpmpp_2m", nfe=args.nfe, noise=noise
        )
        nfe = batches[0].nfe
        seconds = time.perf_counter() - start
        score = inception_score(x, classifier=probs, splits=args.splits)
        record.update(
            n=args.n,
            nfe=nfe,
            sample_seconds=seconds,
            fid=fid(x, data.train, features=feats),
            inception_score=score.mean,
            inception_score_std=score.std,
        )
    kind = record["network"]
    title = f"{kind}, {record['parameters']:,} parameters, NFE {nfe}"
    plots.image_grid(x[:64], out / f"samples_{kind}.png", nrow=8, title=title)
    return record


def markdown(records: list[dict], meta: dict) -> str:
    by = {r["network"]: r for r in records}
    u, d = by["unet"], by["dit"]
    gap = 100 * (d["parameters"] - u["parameters"]) / u["parameters"]
    lines = [
        "# DiT vs U-Net on the 8x8 digits, equal parameter count",
        "",
        f"Both trained {meta['steps']} steps on the digits train split (1500 images), batch "
        f"{meta['batch']}, AdamW lr {meta['lr']:g} (warm-up {meta['warmup']}), EMA "
        f"{meta['ema']}, VP SDE, v-parametrisation, seed {meta['seed']} (same batches, times "
        f"and noise), trained in turn step by step so both see the same machine load; one "
        f"torch thread on a shared 2-core CPU, whole run "
        f"{meta['total_seconds'] / 60:.1f} min (sized to stay under ~8 min). Parameter counts "
        f"differ by {gap:+.1f}%. Samples: {meta['n']} by DPM-Solver++(2M), counted NFE "
        f"{u['nfe']}, the same prior noise for both.",
        "",
        "| network | config | parameters | s / step (median) | test DSM loss | FID | IS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in (u, d):
        cfg = ", ".join(f"{k} {v}" for k, v in r["params"].items())
        lines.append(
            f"| {r['network']} | {cfg} | {r['parameters']:,} | {r['seconds_per_step']:.3f} | "
            f"{r['test_loss']:.4f} | {r['fid']:.2f} | {r['inception_score']:.2f} ± "
            f"{r['inception_score_std']:.2f} |"
        )
    lines += [
        f"| real data | | | | | {meta['fid_floor']:.2f} (floor) | {meta['is_real']:.2f} ± "
        f"{meta['is_real_std']:.2f} |",
        "",
        f"Test DSM loss: the training objective on the 297 test images x {meta['loss_draws']} "
        "fixed (time, noise) draws, identical for both networks (EMA weights). FID: digits-CNN "
        "features against the train split; floor: the 297 real test images against the train "
        f"split (smaller n than the samples', so a slightly high floor). IS: digits CNN, "
        f"{meta['splits']} splits of {meta['n'] // meta['splits']} (mean ± std over splits); "
        f"real: {meta['n']} shuffled train images in the same splits (the CNN scores "
        f"{meta['clf_test_accuracy']:.3f} on the test split). A short, small-scale run: it "
        "compares the two backbones at one budget, not their asymptotic quality.",
    ]
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in records:
        curve = torch.tensor(r["train_loss_curve"])
        k = max(1, len(curve) // 40)
        smooth = curve[: len(curve) // k * k].reshape(-1, k).mean(1)
        steps = torch.arange(len(smooth)) * k + k
        ax.plot(steps, smooth, label=f"{r['network']} ({r['parameters']:,} parameters)")
    ax.set(xlabel="training step", ylabel="training DSM loss (batch mean)", yscale="log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(records: list[dict]) -> dict:
    return {"train_loss.png": lambda path: plot(records, path)}


def main(argv: list[str] | None = None) -> dict | None:
    p = harness.parser(__doc__)
    p.add_argument("--steps", type=int, default=400, help="training steps of each network")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--ema", type=float, default=0.99, help="EMA decay (short runs: 0.99)")
    p.add_argument("--unet-channels", type=int, default=16)
    p.add_argument("--dit-hidden", type=int, default=48)
    p.add_argument("--dit-depth", type=int, default=4)
    p.add_argument("--dit-heads", type=int, default=4)
    p.add_argument("--patch-size", type=int, default=2)
    p.add_argument("--n", type=int, default=1000, help="samples per network")
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--splits", type=int, default=10, help="Inception Score splits")
    p.add_argument("--loss-draws", type=int, default=4, help="noise draws per test image")
    p.add_argument("--classifier", type=Path, help="digits classifier file (default: the cache)")
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).parent / "results" / "dit",
        seed=(0, "training and sampling seed"),
        threads=1,
        replot="rebuild table.md and the loss plot from results.json",
    )
    if args.replot:
        result = harness.load(args.out)
        harness.save(args.out, None, markdown(result["records"], result["meta"]),
                     figures(result["records"]))  # fmt: skip
        return None
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    clf = load_digits_classifier(args.classifier or ensure_digits_classifier())
    data = load_data("digits", seed=args.seed)
    params = {
        "unet": {"channels": args.unet_channels, "channel_mult": [1, 2]},
        "dit": {
            "hidden": args.dit_hidden,
            "depth": args.dit_depth,
            "heads": args.dit_heads,
            "patch_size": args.patch_size,
        },
    }
    records = []
    for model, record in train(params, args, data):
        records.append(evaluate(model, record, args, data, clf, args.out))
        shown = {k: v for k, v in record.items() if k != "train_loss_curve"}
        print(json.dumps(shown), flush=True)
    with torch.no_grad():
        real = data.train[
            torch.randperm(
                len(data.train), generator=torch.Generator().manual_seed(args.seed + 11)
            )[: args.n]
        ]
        real_is = inception_score_from_probs(
            torch.softmax(clf(real.float()).double(), dim=1), splits=args.splits
        )
        meta = {
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "warmup": args.warmup,
            "ema": args.ema,
            "seed": args.seed,
            "n": args.n,
            "splits": args.splits,
            "loss_draws": args.loss_draws,
            "fid_floor": fid(data.test, data.train, features=lambda x: clf.features(x.float())),
            "is_real": real_is.mean,
            "is_real_std": real_is.std,
            "clf_test_accuracy": float(
                (clf(data.test.float()).argmax(1) == data.test_labels).double().mean()
            ),
            "total_seconds": time.perf_counter() - start,
            **harness.environment(),
            "commit": harness.git_commit(),
        }
    result = {"meta": meta, "records": records}
    harness.save(args.out, result, markdown(records, meta), figures(records),
                 also=[f"samples_{k}.png" for k in NETS])  # fmt: skip
    return result


if __name__ == "__main__":
    main()
