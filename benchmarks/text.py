"""Text-conditional generation on the 8x8 digits: is the prompt obeyed, against the guidance w?

Two text-conditional U-Nets (VP, v-parametrised, cross-attention over the built-in text
encoder, caption dropout p_uncond; config key `text: true`), one on the pixels and one on the
latents of a KL autoencoder (config key `latent: kl`, the autoencoder trained first for as
many steps), are trained on the digits' train split with captions made from each image's
label and measured attributes (`sdegen.data.captions`: thickness = ink mass, size = radius of
gyration, slant = shear, each a per-class tertile word). Each is then sampled from prompts
at each guidance weight w:

- "a D" for every digit D, and
- "a WORD D" for every digit and every attribute word (thin/medium/thick,
  small/medium-sized/large, left-slanted/upright/right-slanted),

n samples per prompt. Scores: digit accuracy = the digits CNN (`sdegen.metrics.digits`)
classifies the sample as D (chance 0.1); attribute accuracy = the sample's measured tertile
within class D (the same functions and bins the captions came from) is the requested one
(chance 1/3 by construction of the tertiles). Floors: the CNN's accuracy on the real test split;
for attributes, the real test images' own captions are obeyed by definition, so the reference
is chance (1/3) for an unconditional model, and the test split's agreement with the train
split's tertiles is reported (how far the bins transfer).

    python benchmarks/text.py                    # trains both, then samples; ~15 min on 2 cores
    python benchmarks/text.py --runs DIR         # keep the trained runs in DIR (reused later)
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
from sdegen.assembly.latent import decode
from sdegen.data.captions import ATTRIBUTES, Prompt, caption
from sdegen.metrics import fid
from sdegen.metrics.digits import ensure_digits_classifier, load_digits_classifier

WEIGHTS = (0.0, 1.0, 2.0, 4.0)
# the models compared: name -> config key latent (pixels, or the KL autoencoder's latents)
MODELS = {"pixel": "none", "latent": "kl"}
METHOD = "dpmpp_2m"


def train(run_dir: Path, steps: int, p_uncond: float, seed: int, latent: str = "none"):
    cfg = TrainConfig(
        data="digits",
        steps=steps,
        batch_size=128,
        lr=1e-3,
        warmup=100,
        ckpt_every=steps,
        log_every=50,
        network_params={"channels": 32, "channel_mult": [1, 2]},
        text=True,
        p_uncond=p_uncond,
        seed=seed,
        latent=latent,
        latent_steps=steps,
        recipe="shared",  # the keys its results were made with, pixel and latent alike
    )
    setup_run(cfg, run_dir, progress=False).fit()
    return load_run(run_dir)


def prompts() -> list[Prompt]:
    """ "a D" for every digit, then "a WORD D" for every attribute word and digit."""
    out = [Prompt(digit=d) for d in range(10)]
    for name, words in ATTRIBUTES.items():
        for level in range(len(words)):
            out += [Prompt(digit=d, **{name: level}) for d in range(10)]
    return out


def score(x: torch.Tensor, asked: list[Prompt], clf, bins) -> dict:
    """Digit accuracy over all samples and, per attribute, the accuracy over the samples whose
    prompt names it (measured within the requested digit's class)."""
    digit = torch.tensor([p.digit for p in asked])
    pred = clf(x.float()).argmax(1)
    levels = bins.levels(x.double(), digit)
    out = {"digit_accuracy": float((pred == digit).double().mean())}
    for name in ATTRIBUTES:
        idx = [i for i, p in enumerate(asked) if getattr(p, name) is not None]
        want = torch.tensor([getattr(asked[i], name) for i in idx])
        out[f"{name}_accuracy"] = float((levels[name][idx] == want).double().mean())
        # the same samples' digits right too
        both = (levels[name][idx] == want) & (pred[idx] == digit[idx])
        out[f"{name}_and_digit_accuracy"] = float(both.double().mean())
    return out


def evaluate(run, name: str, clf, n: int, nfe: int, seed: int, out: Path) -> list[dict]:
    asked = [p for p in prompts() for _ in range(n)]
    ids = run.text.prompt_ids([caption(p) for p in asked])
    feats = lambda x: clf.features(x.float())  # noqa: E731
    records = []
    for w in WEIGHTS:
        start = time.perf_counter()
        ae = run.autoencoder
        res = sdegen.sample(
            run.model,
            run.model.sde,
            (len(asked), *(ae.latent_shape if ae is not None else (1, 8, 8))),
            method=METHOD,
            nfe=nfe,
            y=ids,
            guidance=w,
            generator=torch.Generator().manual_seed(seed),
        )
        x = res.x if ae is None else decode(ae, res.x)
        seconds = time.perf_counter() - start
        digit_only = x[: 10 * n]
        record = {
            "model": name,
            "guidance": w,
            "seed": seed,
            "n": len(asked),
            "nfe": res.nfe,
            "batch_factor": res.batch_factor,
            "seconds": seconds,
            **score(x, asked, clf, run.text.bins),
            "fid_digit_prompts": fid(digit_only, run.data.train, features=feats),
        }
        records.append(record)
        print(json.dumps(record), flush=True)
        # a grid: rows thin/thick/small/large/left/right for digits 0-9, one sample each
        rows = []
        for attr, level in (("thickness", 0), ("thickness", 2), ("size", 0), ("size", 2),
                            ("slant", 0), ("slant", 2)):  # fmt: skip
            for d in range(10):
                i = asked.index(Prompt(digit=d, **{attr: level}))
                rows.append(x[i])
        plots.image_grid(
            torch.stack(rows),
            out / f"grid_{name}_w{w:g}.png",
            nrow=10,
            title=f"{name}; rows: thin, thick, small, large, left-, right-slanted; w = {w:g}",
        )
    return records


def markdown(records: list[dict], meta: dict) -> str:
    lines = [
        "# Text-conditional digits: prompts obeyed against the guidance weight",
        "",
        "Text-conditional U-Nets, VP, v-parametrised, caption dropout p_uncond = "
        f"{meta['p_uncond']}: "
        + "; ".join(
            f"**{k}** ({m['train_steps']} score-model steps"
            + (
                f" after {m['latent_steps']} steps of its {m['latent']} autoencoder, latents "
                f"{tuple(m['latent_shape'])}"
                if m["latent"] != "none"
                else " on pixels"
            )
            + f", {m['train_seconds']:.0f} s of training in all)"
            for k, m in meta["models"].items()
        )
        + f". {meta['n']} samples per row ({meta['n_per_prompt']} per prompt, {meta['prompts']} "
        f"prompts: 'a D' and 'a WORD D'), {METHOD} at counted NFE {meta['nfe']} (each "
        f"evaluation one network call on a doubled batch), seed {meta['seed']}. Digit: the "
        f"digits CNN's class equals D (CNN on the real test split: "
        f"{meta['clf_test_accuracy']:.3f}; chance 0.1). Attribute: the measured tertile within "
        f"class D equals the requested word (chance 1/3; the real test split's captions "
        f"measured with the train split's bins agree by construction). FID of the 'a D' samples "
        f"against the train split (digits CNN features); floor, real test split: "
        f"{meta['fid_floor']:.2f}.",
        "",
        "| model | w | digit | thickness | size | slant | thickness & digit | size & digit "
        "| slant & digit | FID ('a D') | s per sample |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['model']} | {r['guidance']:g} | {r['digit_accuracy']:.3f} | "
            f"{r['thickness_accuracy']:.3f} | "
            f"{r['size_accuracy']:.3f} | {r['slant_accuracy']:.3f} | "
            f"{r['thickness_and_digit_accuracy']:.3f} | {r['size_and_digit_accuracy']:.3f} | "
            f"{r['slant_and_digit_accuracy']:.3f} | {r['fid_digit_prompts']:.2f} | "
            f"{r['seconds'] / r['n']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def plot(records: list[dict], meta: dict, path: Path) -> None:
    plt = harness.pyplot()
    models = list(meta["models"])
    fig, axes = plt.subplots(1, len(models), figsize=(5 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models):
        rs = [r for r in records if r["model"] == model]
        ws = [r["guidance"] for r in rs]
        for key, label in (("digit_accuracy", "digit"), ("thickness_accuracy", "thickness"),
                           ("size_accuracy", "size"), ("slant_accuracy", "slant")):  # fmt: skip
            ax.plot(ws, [r[key] for r in rs], "o-", label=label)
        ax.axhline(0.1, color="0.6", ls=":", label="chance, digit")
        ax.axhline(1 / 3, color="0.6", ls="--", label="chance, attribute")
        ax.set(xlabel="guidance weight w", ylabel="accuracy", ylim=(0, 1.02))
        ax.legend(fontsize=8)
        ax.set_title(f"{model}: NFE {meta['nfe']}, n = {meta['n']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figures(records: list[dict], meta: dict) -> dict:
    return {"accuracy_vs_w.png": lambda path: plot(records, meta, path)}


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument(
        "--models", nargs="+", choices=MODELS, default=list(MODELS), help="which models to train"
    )
    p.add_argument("--runs", type=Path, help="a folder to keep the trained runs in (reused)")
    p.add_argument("--steps", type=int, default=2000, help="training steps of each model")
    p.add_argument("--p-uncond", type=float, default=0.2)
    p.add_argument("--n-per-prompt", type=int, default=10)
    p.add_argument("--nfe", type=int, default=20)
    p.add_argument("--classifier", type=Path, help="digits CNN weights (default: the cached one)")
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).parent / "results" / "text",
        seed=(0, "training and sampling seed"),
        replot="rebuild table.md and the accuracy plot from results.json",
    )
    if args.replot:
        result = harness.load(args.out)
        meta, records = result["meta"], result["records"]
        harness.save(args.out, None, markdown(records, meta), figures(records, meta))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    clf = load_digits_classifier(args.classifier or ensure_digits_classifier())
    runs_dir = args.runs or Path(tempfile.mkdtemp(prefix="sdegen-text-"))
    runs, models = {}, {}
    for name in args.models:
        folder = runs_dir / name
        start = time.perf_counter()
        if (folder / "latest").exists():
            run = load_run(folder)
        else:
            run = train(folder, args.steps, args.p_uncond, args.seed, latent=MODELS[name])
        runs[name] = run
        ae = run.autoencoder
        models[name] = {
            "train_steps": run.step,
            "train_seconds": time.perf_counter() - start,
            "latent": run.cfg.latent,
            "latent_steps": run.cfg.latent_steps if ae is not None else 0,
            "latent_shape": list(ae.latent_shape) if ae is not None else None,
        }
    with torch.no_grad():  # from here on only sampling and scoring
        data = next(iter(runs.values())).data
        feats = lambda x: clf.features(x.float())  # noqa: E731
        meta = {
            "models": models,
            "p_uncond": args.p_uncond,
            "n_per_prompt": args.n_per_prompt,
            "prompts": len(prompts()),
            "n": len(prompts()) * args.n_per_prompt,
            "nfe": args.nfe,
            "seed": args.seed,
            "clf_test_accuracy": float(
                (clf(data.test).argmax(1) == data.test_labels).double().mean()
            ),
            "fid_floor": fid(data.test, data.train, features=feats),
            "torch": torch.__version__,
        }
        records = []
        for name, run in runs.items():
            records += evaluate(run, name, clf, args.n_per_prompt, args.nfe, args.seed, args.out)
        result = {"meta": meta, "records": records}
        grids = [f"grid_{name}_w{w:g}.png" for name in runs for w in WEIGHTS]
        harness.save(args.out, result, markdown(records, meta), figures(records, meta), also=grids)


if __name__ == "__main__":
    main()
