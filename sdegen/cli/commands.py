"""The subcommands: train, sample, likelihood, bench, demo. Each only wires library calls."""

from __future__ import annotations

import argparse
import copy
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
import torch

from .. import solvers
from ..data import dequantize
from ..metrics import frechet_distance_to_moments, sliced_wasserstein
from ..models import ring_mixture
from ..models.density import bits_per_dim
from ..training import latest_checkpoint
from . import plots
from .build import SDES, Data, build_model, load_data, load_run, make_trainer, run_classes
from .config import load_config, read_run_config, save_config

BENCH_DIR = Path(__file__).resolve().parents[2] / "benchmarks"


def _check_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; expected cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return dev


def train(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if args.resume:
        cfg = read_run_config(run)
        extra = load_config(None, [s for s in args.set])
        if any(s.split("=")[0].strip() != "steps" for s in args.set):
            raise ValueError(
                "--resume continues a run as configured; only --set steps=N "
                "(to train longer) may change"
            )
        if args.set:
            cfg.steps = extra.steps
        if getattr(args, "conditional", False) and not cfg.conditional:
            raise ValueError(
                "--conditional cannot make an unconditional run conditional on --resume"
            )
    else:
        if latest_checkpoint(run) is not None:
            raise ValueError(
                f"run folder {run} already holds a checkpoint; use --resume to "
                "continue it or choose a new --run folder"
            )
        cfg = load_config(args.config, args.set)
        if getattr(args, "conditional", False):
            cfg.conditional = True
    if args.device:
        cfg.device = args.device
    device = _check_device(cfg.device)
    data = load_data(cfg.data, n_train=cfg.n_train, seed=cfg.seed)
    model = build_model(cfg, data.event_shape, run_classes(cfg, data))
    trainer = make_trainer(cfg, data, model, run, device=device, progress=not args.quiet)
    if trainer.rank == 0:
        save_config(cfg, run)
    if args.resume and not trainer.resume():
        raise FileNotFoundError(f"run folder {run} has no checkpoint to resume from")
    start = trainer.step
    history = trainer.fit(cfg.steps)
    if trainer.rank == 0:
        last = history[-1]["loss"] if history else float("nan")
        kind = f"conditional (p_uncond {cfg.p_uncond}) " if cfg.conditional else ""
        print(
            f"trained {kind}{cfg.data} with {cfg.sde}/{cfg.parametrization}: steps {start} -> "
            f"{trainer.step}, last loss {last:.4f}; run folder {run}"
        )
    return 0


def _save_samples(x: torch.Tensor, data: Data, out: Path, title: str) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    if data.is_image:
        plots.image_grid(x, png, title=title)
    else:
        plots.scatter(x, png, reference=data.test, title=title)
    return png


def sample(args: argparse.Namespace) -> int:
    run = load_run(args.run, ema=not args.no_ema)
    device = _check_device(args.device)
    run.model.to(device)
    sde = run.model.sde
    kw = {"nfe": args.nfe} if args.nfe is not None else {"steps": args.steps}
    if args.method == "dopri5":
        kw = {}
    label = getattr(args, "class_label", None)
    guidance = getattr(args, "guidance", None)
    if label is not None:
        kw["y"] = label  # checked against the model's classes by sample()
    if guidance is not None:
        if label is None:
            raise ValueError("--guidance needs --class (the class to guide towards)")
        kw["guidance"] = guidance
    res = solvers.sample(
        run.model,
        sde,
        (args.n, *run.data.event_shape),
        method=args.method,
        generator=torch.Generator(device).manual_seed(args.seed),
        device=device,
        **kw,
    )
    x = res.x.cpu()
    tag = "" if label is None else f"-class{label}" + (f"-w{guidance:g}" if guidance else "")
    out = (
        Path(args.out)
        if args.out
        else (Path(args.run) / "samples" / f"{args.method}-nfe{res.nfe}-seed{args.seed}{tag}")
    )
    np.savez(
        out.with_suffix(".npz"),
        x=x.numpy(),
        nfe=res.nfe,
        method=args.method,
        seed=args.seed,
        step=run.step,
        label=-1 if label is None else label,
        guidance=float("nan") if guidance is None else guidance,
        batch_factor=res.batch_factor,
    )
    what = (
        ""
        if label is None
        else f", class {label}" + (f", guidance {guidance:g}" if guidance else "")
    )
    png = _save_samples(
        x, run.data, out, f"{args.method}, NFE {res.nfe}{what}, step {run.step}, seed {args.seed}"
    )
    batch = " on a doubled batch (classifier-free guidance)" if res.batch_factor == 2 else ""
    print(
        f"sampled {args.n}{what} with {args.method}: NFE {res.nfe}{batch} (counted); wrote "
        f"{out.with_suffix('.npz')} and {png}"
    )
    return 0


def evaluate_likelihood(
    model,
    data: Data,
    x: torch.Tensor,
    *,
    trace: str,
    rtol: float,
    atol: float,
    batch: int,
    seed: int,
    probes: int = 1,
) -> dict:
    """NLL (nats) and, for discrete data, bits/dim of x under the PF-ODE, in float64.

    The model is copied to float64; the caller's model is left as it is.
    """
    model = copy.deepcopy(model).double()
    g = torch.Generator(x.device).manual_seed(seed)
    x = x.double()
    if data.bin_width is not None:  # uniform dequantization, explicit
        x = dequantize(x, data.bin_width, generator=g)
    logps, nfe, nfe_b = [], 0, 0
    for chunk in x.split(batch):
        res = solvers.log_likelihood(
            model, model.sde, chunk, trace=trace, probes=probes, rtol=rtol, atol=atol, generator=g
        )
        logps.append(res.log_prob)
        nfe, nfe_b = nfe + res.nfe, nfe_b + res.nfe_backward
    logp = torch.cat(logps)
    out = {
        "n": x.shape[0],
        "nll_nats": float(-logp.mean()),
        "nll_nats_sem": float(logp.std() / x.shape[0] ** 0.5),
        "nfe": nfe,
        "nfe_backward": nfe_b,
        "trace": trace,
        "probes": probes if trace == "hutchinson" else None,
        "rtol": rtol,
        "atol": atol,
        "seed": seed,
    }
    if data.bin_width is not None:
        D = int(np.prod(data.event_shape))
        out["bits_per_dim"] = float(bits_per_dim(logp, D, data.bin_width).mean())
        out["bin_width"] = data.bin_width
    if data.true_log_prob is not None:
        out["true_nll_nats"] = float(-data.true_log_prob(x).mean())
    return out


def likelihood(args: argparse.Namespace) -> int:
    run = load_run(args.run, ema=not args.no_ema)
    device = _check_device(args.device)
    x = run.data.test if args.split == "test" else run.data.train
    x = x[: args.n] if args.n else x
    start = time.perf_counter()
    result = evaluate_likelihood(
        run.model.to(device),
        run.data,
        x.to(device),
        trace=args.trace,
        rtol=args.rtol,
        atol=args.atol,
        batch=args.batch,
        seed=args.seed,
    )
    result.update(split=args.split, step=run.step, seconds=time.perf_counter() - start)
    out = Path(args.run) / f"likelihood-{args.split}.json"
    out.write_text(json.dumps(result, indent=1))
    line = f"{args.split} NLL {result['nll_nats']:.4f} nats"
    if "bits_per_dim" in result:
        line += f", {result['bits_per_dim']:.4f} bits/dim"
    if "true_nll_nats" in result:
        line += f" (true density: {result['true_nll_nats']:.4f} nats)"
    print(
        f"{line}; {result['n']} examples, NFE {result['nfe']} (+{result['nfe_backward']} "
        f"VJPs), trace {args.trace}; wrote {out}"
    )
    return 0


def bench(args: argparse.Namespace) -> int:
    names = sorted(p.stem for p in BENCH_DIR.glob("*.py")) if BENCH_DIR.is_dir() else []
    if args.name not in names:
        raise ValueError(
            f"unknown benchmark {args.name!r}; available: {', '.join(names) or 'none'}"
            f" (scripts in {BENCH_DIR})"
        )
    spec = importlib.util.spec_from_file_location(args.name, BENCH_DIR / f"{args.name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(args.rest)
    return 0


def demo(args: argparse.Namespace) -> int:
    sde = SDES[args.sde]()
    model = ring_mixture(sde)
    g = torch.Generator().manual_seed(args.seed)
    truth = model.sample(args.n, generator=g)
    print(
        f"sdegen demo: {args.n} samples of an 8-component Gaussian mixture under {sde}, "
        f"exact analytic score, seed {args.seed}"
    )
    floor = sliced_wasserstein(truth, model.sample(args.n, generator=g), generator=g)
    print(f"noise floor (two independent true sample sets): sliced W2 = {floor:.4f}\n")
    print(f"{'method':<18}{'NFE':>6}{'Frechet':>10}{'sliced W2':>11}{'time [s]':>10}")
    for method in ("dpmpp_2m", "euler_maruyama"):
        start = time.perf_counter()
        res = solvers.sample(
            model,
            sde,
            (args.n, 2),
            method=method,
            nfe=args.nfe,
            generator=torch.Generator().manual_seed(args.seed),
        )
        elapsed = time.perf_counter() - start
        fd = frechet_distance_to_moments(res.x, model.mean(), model.cov())
        sw = sliced_wasserstein(res.x, truth, generator=torch.Generator().manual_seed(0))
        print(f"{method:<18}{res.nfe:>6}{fd:>10.4f}{sw:>11.4f}{elapsed:>10.2f}")
    x = model.sample(8, generator=g, dtype=torch.float64)
    start = time.perf_counter()
    ll = solvers.log_likelihood(model, sde, x, trace="exact")
    elapsed = time.perf_counter() - start
    exact = model.log_prob(x, torch.full((8,), sde.t_min))
    err = float((ll.log_prob - exact).abs().max())
    print(
        f"\nPF-ODE log-likelihood of 8 test points (dopri5, exact trace): mean "
        f"{float(ll.log_prob.mean()):.4f} nats, true {float(exact.mean()):.4f}, "
        f"max |error| {err:.2e}, NFE {ll.nfe} (+{ll.nfe_backward} VJPs), {elapsed:.2f} s"
    )
    return 0
