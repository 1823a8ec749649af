"""`sdegen quickstart`: train, sample and evaluate on built-in data, and write a report.

Two small VP score models, one on a 2-D toy set (8 Gaussians, whose density is known in closed
form) and one on the 8x8 digits; each is sampled with three solvers and its test-set likelihood
is evaluated through the probability-flow ODE. The digits model is text-conditional on
captions made from each image's label and measured attributes (`sdegen.data.captions`),
trained with caption dropout, so the same network gives the unconditional samples and metrics
(the null caption), a grid with one row per digit ("a 0" ... "a 9"), plain and with
classifier-free guidance, and rows of prompted attributes ("a thick 7", "a small 7"...).
Everything lands in one folder: report.md, PNGs and results.json. A few minutes on 2 CPU
cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import time
from pathlib import Path

import torch

from .. import __version__, solvers
from ..assembly import (
    TrainConfig,
    evaluate_likelihood,
    plots,
    setup_run,
)
from ..metrics import frechet_distance_from_samples, sliced_wasserstein
from ..solvers.results import SolveResult
from .commands import _output_folder

SAMPLERS = (("dpmpp_2m", 20), ("heun", 20), ("euler_maruyama", 100))
# --fast: a smoke run of the whole pipeline in under a minute on 2 cores; sampling the full test
# sets at the full budgets is most of its time, so it samples fewer points at lower budgets.
FAST_NFE = {"dpmpp_2m": 10, "heun": 10, "euler_maruyama": 20}
FAST_SAMPLES = 256
SWEEP = ("dpmpp_2m", "ddim", "heun", "euler_maruyama")
SWEEP_NFE = (5, 10, 20, 50)
GRID_GUIDANCE = (1.0, 3.0)  # classifier-free guidance weights of the class grids
# the prompted rows of the report: one attribute word at a time, on two digits
PROMPT_WORDS = ("thin", "thick", "small", "large", "left-slanted", "right-slanted")
PROMPT_DIGITS = (3, 7)
PROMPT_GUIDANCE = 3.0


def _configs(fast: bool) -> dict[str, TrainConfig]:
    return {
        "toy": TrainConfig(
            data="toy:8gaussians",
            n_train=20000,
            steps=40 if fast else 3000,
            batch_size=512,
            lr=2e-3,
            warmup=100,
            ckpt_every=1000,
            log_every=20,
        ),
        "digits": TrainConfig(
            data="digits",
            steps=10 if fast else 1500,
            batch_size=128,
            lr=1e-3,
            warmup=100,
            ckpt_every=500,
            log_every=20,
            network_params={"channels": 32, "channel_mult": [1, 2]},
            text=True,
            p_uncond=0.2,
        ),
    }


def _train(name: str, cfg: TrainConfig, out: Path):
    setup = setup_run(cfg, out / name)
    start = time.perf_counter()
    history = setup.fit()
    curve = [(h["step"], h["loss"]) for h in history]
    model = setup.trainer.eval_model.eval()
    return setup.data, model, curve, time.perf_counter() - start, setup.text


def _quality(x: torch.Tensor, data, image: bool) -> float:
    ref = data.test.to(torch.float64)
    if image:  # Frechet distance of pixel-space Gaussian fits (64-D)
        return frechet_distance_from_samples(
            x.reshape(len(x), -1).double(), ref.reshape(len(ref), -1)
        )
    return sliced_wasserstein(x.double(), ref, generator=torch.Generator().manual_seed(0))


def _floor(data, image: bool, n: int) -> float:
    """The metric between two independent true sets: n training examples vs the test set (the
    same n as the samples it is the floor for)."""
    return _quality(
        data.train[torch.randperm(len(data.train), generator=torch.Generator().manual_seed(1))[:n]],
        data,
        image,
    )


def _say(what: str) -> None:
    """A line saying what the quickstart does next (a phase can take minutes on a CPU)."""
    print(f"  {what} ...", flush=True)


def _sample(model, shape, method, nfe, seed=0):
    return solvers.sample(
        model,
        model.sde,
        shape,
        method=method,
        nfe=nfe,
        generator=torch.Generator().manual_seed(seed),
    )


def _samplers(fast: bool) -> list[tuple[str, int]]:
    return [(m, FAST_NFE[m] if fast else nfe) for m, nfe in SAMPLERS]


def _toy_part(out: Path, cfg: TrainConfig, fast: bool, results: dict) -> None:
    data, model, curve, secs, _ = _train("toy", cfg, out)
    n = FAST_SAMPLES if fast else len(data.test)
    part = {
        "train_seconds": secs,
        "steps": cfg.steps,
        "n_samples": n,
        "metric": "sliced W2 to the test set",
        "noise_floor": _floor(data, False, n),
        "samplers": [],
        "sweep": [],
    }
    for method, nfe in _samplers(fast):
        _say(f"sampling {n} points: {method}, NFE {nfe}")
        res = _sample(model, (n, 2), method, nfe)
        part["samplers"].append(
            {"method": method, "nfe": res.nfe, "quality": _quality(res.x, data, False)}
        )
        plots.scatter(
            res.x, out / f"toy_{method}.png", reference=data.test, title=f"{method}, NFE {res.nfe}"
        )
    sweep: dict[str, list[tuple[int, float]]] = {}
    _say(f"NFE sweep of {', '.join(SWEEP)}")
    for method in SWEEP:
        for nfe in SWEEP_NFE[:2] if fast else SWEEP_NFE:
            try:
                res = _sample(model, (n, 2), method, nfe)
            except ValueError:  # budget below one step
                continue
            q = _quality(res.x, data, False)
            sweep.setdefault(method, []).append((res.nfe, q))
            part["sweep"].append({"method": method, "nfe": res.nfe, "quality": q})
    plots.quality_vs_nfe(
        sweep, part["noise_floor"], "sliced W2 to test set", out / "toy_nfe_vs_quality.png"
    )
    m = 64 if fast else 1000
    _say(f"test likelihood of {m} points (exact trace), then the density on a grid")
    part["likelihood"] = evaluate_likelihood(
        model, data, data.test[:m], trace="exact", rtol=1e-5, atol=1e-5, batch=1000, seed=0
    )
    # the learned density on a grid, beside the true one
    k = 20 if fast else 60
    ax = torch.linspace(-4, 4, k, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(ax, ax, indexing="ij"), -1).reshape(-1, 2)
    model64 = copy.deepcopy(model).double()
    learned = solvers.log_likelihood(model64, model.sde, grid, rtol=1e-4, atol=1e-4).log_prob
    plots.densities(
        [
            ("learned (PF-ODE likelihood)", learned.reshape(k, k)),
            ("true density", data.true_log_prob(grid).reshape(k, k)),
        ],
        (-4, 4, -4, 4),
        out / "toy_density.png",
    )
    results["toy"], results["curves"]["toy"] = part, curve


def _digits_part(out: Path, cfg: TrainConfig, fast: bool, results: dict) -> None:
    data, model, curve, secs, text = _train("digits", cfg, out)
    n = 64 if fast else len(data.test)
    part = {
        "train_seconds": secs,
        "steps": cfg.steps,
        "n_samples": n,
        "metric": "Frechet distance of pixel-space Gaussian fits to the test set",
        "noise_floor": _floor(data, True, n),
        "samplers": [],
    }
    for method, nfe in _samplers(fast):
        _say(f"sampling {n} images: {method}, NFE {nfe}")
        res = _sample(model, (n, *data.event_shape), method, nfe)
        part["samplers"].append(
            {"method": method, "nfe": res.nfe, "quality": _quality(res.x, data, True)}
        )
        plots.image_grid(
            res.x[:64], out / f"digits_{method}.png", nrow=8, title=f"{method}, NFE {res.nfe}"
        )
    # one row per digit ("a 0" ... "a 9"), 8 samples each, from one noise draw: conditional
    # (w = 1) and guided
    prompts = [f"a {d}" for d in range(data.num_classes)]
    _say("prompted grids, with and without guidance")
    part["class_grids"] = []
    for w in GRID_GUIDANCE:
        res = _prompted(model, text, prompts, 8, w, data.event_shape)
        name = f"digits_classes_w{w:g}.png"
        plots.image_grid(
            res.x, out / name, nrow=8, title=f"one row per digit, guidance w = {w:g}, NFE {res.nfe}"
        )
        part["class_grids"].append(
            {"guidance": w, "nfe": res.nfe, "batch_factor": res.batch_factor, "png": name}
        )
    # prompted attributes: one row per word, 8 samples each of each digit
    prompts = [f"a {word} {d}" for word in PROMPT_WORDS for d in PROMPT_DIGITS]
    res = _prompted(model, text, prompts, 4, PROMPT_GUIDANCE, data.event_shape)
    plots.image_grid(
        res.x, out / "digits_prompts.png", nrow=8,
        title=f"rows: {', '.join(PROMPT_WORDS)} ({'/'.join(map(str, PROMPT_DIGITS))}); "
        f"w = {PROMPT_GUIDANCE:g}",
    )  # fmt: skip
    part["prompt_grid"] = {
        "prompts": prompts,
        "guidance": PROMPT_GUIDANCE,
        "nfe": res.nfe,
        "png": "digits_prompts.png",
    }
    # 64 dimensions: the exact trace would cost 64 VJPs per evaluation; Hutchinson's estimate is
    # unbiased per image and is averaged over the whole test set.
    m = 16 if fast else n
    _say(f"test likelihood of {m} images (Hutchinson trace, 2 probes)")
    part["likelihood"] = evaluate_likelihood(
        model,
        data,
        data.test[:m],
        trace="hutchinson",
        probes=2,
        rtol=1e-4,
        atol=1e-4,
        batch=m,
        seed=0,
    )
    results["digits"], results["curves"]["digits"] = part, curve


def _prompted(model, text, prompts: list[str], n: int, w: float, event_shape) -> SolveResult:
    """n samples for each prompt (in order), DPM-Solver++(2M) at NFE 20 with guidance w, from
    one noise draw."""
    ids = text.prompt_ids([p for p in prompts for _ in range(n)])
    return solvers.sample(
        model,
        model.sde,
        (len(ids), *event_shape),
        method="dpmpp_2m",
        nfe=20,
        y=ids,
        guidance=w,
        generator=torch.Generator().manual_seed(0),
    )


def _report(results: dict) -> str:
    toy, dig = results["toy"], results["digits"]
    tl, dl = toy["likelihood"], dig["likelihood"]
    lines = [
        "# sdegen quickstart report",
        "",
        f"sdegen {results['meta']['sdegen']}, torch {results['meta']['torch']}, "
        f"{results['meta']['machine']}, seed 0, total {results['meta']['seconds']:.0f} s. "
        "VP SDE (linear beta), score models parametrised "
        + ", ".join(f"{v} ({k})" for k, v in results["meta"]["parametrization"].items())
        + " "
        "(`recipe: auto`: EDM's preconditioning for image data), EMA weights. NFE are counted "
        "network evaluations, the final denoising step included.",
        "",
        f"## 2-D: 8 Gaussians (MLP, {toy['steps']} steps, {toy['train_seconds']:.0f} s)",
        "",
        f"Quality: {toy['metric']} ({toy['n_samples']} samples; noise floor "
        f"{toy['noise_floor']:.4f}, the same metric between training and test sets).",
        "",
        "| sampler | NFE | sliced W2 |",
        "|---|---|---|",
        *[f"| {s['method']} | {s['nfe']} | {s['quality']:.4f} |" for s in toy["samplers"]],
        "",
        f"Test NLL (PF-ODE, exact trace, {tl['n']} points, rtol {tl['rtol']}): "
        f"**{tl['nll_nats']:.4f} ± {tl['nll_nats_sem']:.4f} nats**; the true density gives "
        f"{tl['true_nll_nats']:.4f} nats; NFE {tl['nfe']} (+{tl['nfe_backward']} VJPs).",
        "",
        "![samples](toy_dpmpp_2m.png) ![density](toy_density.png)",
        "",
        "![quality against NFE](toy_nfe_vs_quality.png)",
        "",
        f"## 8x8 digits (U-Net, {dig['steps']} steps, {dig['train_seconds']:.0f} s)",
        "",
        f"Quality: {dig['metric']} ({dig['n_samples']} samples; noise floor "
        f"{dig['noise_floor']:.2f}, training vs test images).",
        "",
        "| sampler | NFE | Frechet (pixels) |",
        "|---|---|---|",
        *[f"| {s['method']} | {s['nfe']} | {s['quality']:.2f} |" for s in dig["samplers"]],
        "",
        f"Test likelihood (PF-ODE, Hutchinson trace with {dl['probes']} Rademacher probes per "
        f"image, uniform dequantization, {dl['n']} images, rtol {dl['rtol']}): "
        f"**{dl['bits_per_dim']:.3f} bits/dim** "
        f"({dl['nll_nats']:.2f} nats per image; 17 grey levels, bin width 2/17); NFE "
        f"{dl['nfe']} (+{dl['nfe_backward']} VJPs).",
        "",
        *[f"![{m}](digits_{m}.png)" for m, _ in SAMPLERS],
        "",
        "The digits model is text-conditional on captions made from each image's label and "
        "measured thickness, size and slant, trained with caption dropout "
        f"(p_uncond {results['meta']['p_uncond']}): the samples and numbers above use the null "
        'caption (unconditional); below, one row per prompt "a 0" ... "a 9", '
        f"DPM-Solver++(2M) at NFE {dig['class_grids'][0]['nfe']}, with classifier-free guidance "
        "w (w = 1: conditional; each evaluation runs the conditional and unconditional "
        "predictions as one doubled batch).",
        "",
        *[f"![w = {g['guidance']:g}]({g['png']})" for g in dig["class_grids"]],
        "",
        f"Prompted attributes, w = {dig['prompt_grid']['guidance']:g}, four samples per "
        f"prompt, two prompts per row: {', '.join(repr(p) for p in dig['prompt_grid']['prompts'])}"
        ".",
        "",
        f"![prompts]({dig['prompt_grid']['png']})",
        "",
        "## Training loss",
        "",
        "![loss](loss.png)",
        "",
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if (out / "config.json").is_file() or (out / "latest").exists():
        raise ValueError(
            f"--out {out} holds a training run (config.json, latest): the quickstart writes its "
            f"report, plots and two runs there; choose another folder"
        )
    _output_folder(out)  # made, or an error naming --out, before any work
    start = time.perf_counter()
    cfgs = _configs(args.fast)
    results: dict = {"curves": {}}
    print("[1/2] 2-D toy data: training, sampling, likelihood")
    _toy_part(out, cfgs["toy"], args.fast, results)
    print("[2/2] 8x8 digits: training, sampling, likelihood")
    _digits_part(out, cfgs["digits"], args.fast, results)
    plots.loss_curve(results["curves"], out / "loss.png")
    results["meta"] = {
        "sdegen": __version__,
        "torch": torch.__version__,
        "machine": platform.machine(),
        "parametrization": {name: cfg.parametrization for name, cfg in cfgs.items()},
        "p_uncond": cfgs["digits"].p_uncond,
        "fast": args.fast,
        "seconds": time.perf_counter() - start,
    }
    (out / "report.md").write_text(_report(results))
    (out / "results.json").write_text(json.dumps(results, indent=1))
    toy, dig = results["toy"], results["digits"]
    print(
        f"2-D test NLL {toy['likelihood']['nll_nats']:.3f} nats (true density "
        f"{toy['likelihood']['true_nll_nats']:.3f}); digits {dig['likelihood']['bits_per_dim']:.3f}"
        f" bits/dim; report in {out / 'report.md'} ({results['meta']['seconds']:.0f} s)"
    )
    return 0
