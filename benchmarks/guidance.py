"""Classifier-free guidance on the 8x8 digits: class accuracy and FID against the weight w.

One class-conditional U-Net (VP, v-parametrised, label dropout p_uncond) is trained on the
bundled digits' train split, then sampled with labels 0-9 in equal numbers at each guidance
weight w (w = 0: unconditional, 1: conditional) with two samplers at an NFE budget. Each sample
set is scored by the digits CNN of `sdegen.metrics.digits` (the "digits" FID features):
accuracy = fraction classified as the requested digit; FID = Frechet distance of the CNN's
features to those of the train split. Floors: the CNN's accuracy on the held-out test split,
and the FID of the test split (297 real images) to the train split.

    python benchmarks/guidance.py                    # ~10 minutes on 2 CPU cores
    python benchmarks/guidance.py --run RUN_DIR      # reuse a trained conditional digits run
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import torch

import sdegen
from sdegen.assembly import (
    TrainConfig,
    harness,
    load_run,
    plots,
    setup_run,
)
from sdegen.metrics import fid
from sdegen.metrics.digits import ensure_digits_classifier, load_digits_classifier

WEIGHTS = (0.0, 1.0, 2.0, 4.0)
SAMPLERS = ("dpmpp_2m", "euler_maruyama")


def train(run_dir: Path, steps: int, p_uncond: float, seed: int):
    cfg = TrainConfig(
        data="digits",
        steps=steps,
        batch_size=128,
        lr=1e-3,
        warmup=100,
        ckpt_every=steps,
        log_every=50,
        network_params={"channels": 32, "channel_mult": [1, 2]},
        conditional=True,
        p_uncond=p_uncond,
        seed=seed,
        recipe="shared",  # the keys its results were made with (v / simple / continuous)
    )
    setup_run(cfg, run_dir, progress=False).fit()
    return load_run(run_dir)


def evaluate(model, data, clf, n_per_class: int, nfe: int, seeds: int, out: Path) -> list[dict]:
    labels = torch.arange(10).repeat_interleave(n_per_class)
    feats = lambda x: clf.features(x.float())  # noqa: E731
    records = []
    for method in SAMPLERS:
        for w in WEIGHTS:
            for seed in range(seeds):
                start = time.perf_counter()
                res = sdegen.sample(
                    model,
                    model.sde,
                    (len(labels), 1, 8, 8),
                    method=method,
                    nfe=nfe,
                    y=labels,
                    guidance=w,
                    generator=torch.Generator().manual_seed(seed),
                )
                seconds = time.perf_counter() - start
                with torch.no_grad():
                    pred = clf(res.x.float()).argmax(1)
                    score = fid(res.x, data.train, features=feats)
                records.append(
                    {
                        "method": method,
                        "guidance": w,
                        "seed": seed,
                        "n": len(labels),
                        "nfe": res.nfe,
                        "batch_factor": res.batch_factor,
                        "accuracy": float((pred == labels).double().mean()),
                        "fid": score,
                        "seconds": seconds,
                    }
                )
                print(json.dumps(records[-1]), flush=True)
                if seed == 0:
                    grid = res.x.reshape(10, n_per_class, 1, 8, 8)[:, :8].reshape(-1, 1, 8, 8)
                    plots.image_grid(
                        grid,
                        out / f"grid_{method}_w{w:g}.png",
                        nrow=min(8, n_per_class),
                        title=f"{method}, w = {w:g}, NFE {res.nfe}",
                    )
    return records


def _mean(records: list[dict], method: str, w: float, key: str) -> float:
    vals = [r[key] for r in records if r["method"] == method and r["guidance"] == w]
    return sum(vals) / len(vals)


def markdown(records: list[dict], meta: dict) -> str:
    lines = [
        "# Classifier-free guidance on the 8x8 digits",
        "",
        f"One class-conditional U-Net ({meta['train_steps']} steps, VP, v-parametrised, label "
        f"dropout p_uncond = {meta['p_uncond']}), {meta['n']} samples per cell (labels 0-9 in "
        f"equal numbers), counted NFE {meta['nfe']} (each evaluation is one network call on a "
        f"doubled batch), mean over {meta['seeds']} seed(s). Accuracy: the digits CNN's "
        f"prediction equals the requested label (the CNN scores {meta['clf_test_accuracy']:.3f}"
        f" on the real test split; chance 0.1). FID: digits-CNN features against the train "
        f"split (1500 images); floor: the real test split (297 images) scores "
        f"{meta['fid_floor']:.2f}.",
        "",
        "| sampler | w | NFE | accuracy | FID |",
        "|---|---|---|---|---|",
    ]
    for method in SAMPLERS:
        for w in WEIGHTS:
            nfe = next(r["nfe"] for r in records if r["method"] == method and r["guidance"] == w)
            lines.append(
                f"| {method} | {w:g} | {nfe} | {_mean(records, method, w, 'accuracy'):.3f} | "
                f"{_mean(records, method, w, 'fid'):.2f} |"
            )
    return "\n".join(lines) + "\n"


def plot(records: list[dict], meta: dict, path: Path) -> None:
    plt = harness.pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for method in SAMPLERS:
        acc = [_mean(records, method, w, "accuracy") for w in WEIGHTS]
        fd = [_mean(records, method, w, "fid") for w in WEIGHTS]
        axes[0].plot(WEIGHTS, acc, "o-", label=method)
        axes[1].plot(WEIGHTS, fd, "o-", label=method)
    axes[0].axhline(meta["clf_test_accuracy"], color="0.6", ls="--", label="real test images")
    axes[1].axhline(meta["fid_floor"], color="0.6", ls="--", label="real test images")
    axes[0].set(xlabel="guidance weight w", ylabel="classifier accuracy", ylim=(0, 1.02))
    axes[1].set(xlabel="guidance weight w", ylabel="FID (digits CNN features)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.suptitle(f"digits, NFE {meta['nfe']}, {meta['n']} samples per point", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(records: list[dict], meta: dict) -> dict:
    return {"accuracy_fid_vs_w.png": lambda path: plot(records, meta, path)}


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--run", type=Path, help="a trained conditional digits run folder to reuse")
    p.add_argument("--steps", type=int, default=1500, help="training steps (without --run)")
    p.add_argument("--p-uncond", type=float, default=0.2)
    p.add_argument("--n-per-class", type=int, default=100)
    p.add_argument("--nfe", type=int, default=20)
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).parent / "results" / "guidance",
        seed=(0, "training seed"),
        seeds=(1, None),
        replot="rebuild table.md and the accuracy/FID plot from results.json",
    )
    if args.replot:
        result = harness.load(args.out)
        meta, records = result["meta"], result["records"]
        harness.save(args.out, None, markdown(records, meta), figures(records, meta))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    clf = load_digits_classifier(ensure_digits_classifier())
    start = time.perf_counter()
    if args.run is not None:
        run = load_run(args.run)
    else:
        run = train(
            Path(tempfile.mkdtemp(prefix="sdegen-guidance-")), args.steps, args.p_uncond, args.seed
        )
    if not run.cfg.conditional:
        raise ValueError(f"run {args.run} is not class-conditional (config conditional: false)")
    train_seconds = time.perf_counter() - start
    with torch.no_grad():  # from here on only sampling and scoring
        data = run.data
        feats = lambda x: clf.features(x.float())  # noqa: E731
        meta = {
            "train_steps": run.step,
            "p_uncond": run.cfg.p_uncond,
            "train_seconds": train_seconds,
            "n": 10 * args.n_per_class,
            "nfe": args.nfe,
            "seeds": args.seeds,
            "clf_test_accuracy": float(
                (clf(data.test).argmax(1) == data.test_labels).double().mean()
            ),
            "fid_floor": fid(data.test, data.train, features=feats),
            "torch": torch.__version__,
        }
        records = evaluate(run.model, data, clf, args.n_per_class, args.nfe, args.seeds, args.out)
        grids = [f"grid_{method}_w{w:g}.png" for method in SAMPLERS for w in WEIGHTS]
        result = {"meta": meta, "records": records}
        harness.save(args.out, result, markdown(records, meta), figures(records, meta), also=grids)


if __name__ == "__main__":
    main()
