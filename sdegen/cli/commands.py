"""The subcommands: train, sample, likelihood, bench, demo. Each only wires library calls."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import solvers
from .._progress import Progress
from .._utils import resolve_device
from ..assembly import (
    SDES,
    Data,
    evaluate_likelihood,
    harness,
    load_config,
    load_data,
    load_foreign,
    load_run,
    plots,
    read_run_config,
    resolve_trace,
    setup_run,
)
from ..assembly.latent import autoencoder_dir, decode
from ..assembly.text import TextSetup
from ..metrics import frechet_distance_to_moments, sliced_wasserstein
from ..models import VQVAE, KLAutoencoder, LearnedVarianceModel, ring_mixture
from ..models.latent import encode_scaled
from ..random import PerExampleGenerator
from ..solvers.inverse import DEFAULT_INVERSE
from ..training import init_distributed, latest_checkpoint


def train(args: argparse.Namespace) -> int:
    run = Path(args.run)
    if args.resume:
        if args.config is not None:
            raise ValueError(
                "--resume continues a run with its own config.json; --config cannot be given"
            )
        cfg = read_run_config(run)
        extra = load_config(None, list(args.set))
        changed = sorted({s.split("=")[0].strip() for s in args.set} - {"steps"})
        if changed:
            raise ValueError(
                f"--resume continues a run as configured; only --set steps=N (to train longer) "
                f"may change, not {', '.join(changed)}"
            )
        if args.set:
            cfg.steps = extra.steps
        if getattr(args, "conditional", False) and not cfg.conditional:
            raise ValueError(
                "--conditional cannot make an unconditional run conditional on --resume"
            )
    else:
        if latest_checkpoint(run) is not None or latest_checkpoint(autoencoder_dir(run)):
            raise ValueError(
                f"run folder {run} already holds a checkpoint; use --resume to "
                "continue it or choose a new --run folder"
            )
        cfg = load_config(args.config, args.set)
        if getattr(args, "conditional", False):
            cfg.conditional = True
    if args.device is not None:
        cfg.device = args.device
    device = resolve_device(cfg.device)
    # everything is built, and so every config key checked, before any training
    setup = setup_run(cfg, run, device=device, progress=not args.quiet)
    trainer, autoencoder = setup.trainer, setup.autoencoder
    if args.resume:
        stage_1 = autoencoder is not None and latest_checkpoint(autoencoder_dir(run)) is not None
        if not trainer.resume() and not stage_1:
            raise FileNotFoundError(f"run folder {run} has no checkpoint to resume from")
        if trainer.step >= cfg.steps:
            if trainer.step > cfg.steps:
                raise ValueError(
                    f"run {run} is at step {trainer.step}; --set steps={cfg.steps} would not "
                    f"train: give steps > {trainer.step}"
                )
            print(f"run {run} is already at step {trainer.step} = steps; nothing to do")
            return 0
    start = trainer.step
    history = setup.fit()
    if trainer.rank == 0:
        last = history[-1]["loss"] if history else float("nan")
        where = "" if autoencoder is None else f" (in the latents of a {cfg.latent} autoencoder)"
        kind = (
            f"{'text-' if cfg.text else ''}conditional (p_uncond {cfg.p_uncond}) "
            if cfg.conditional or cfg.text
            else ""
        )
        print(
            f"trained {kind}{cfg.data}{where} with {cfg.sde}/{cfg.parametrization}: steps "
            f"{start} -> {trainer.step}, last loss {last:.4f}; run folder {run}"
        )
    return 0


def _save_samples(x: torch.Tensor, data: Data | None, out: Path, title: str) -> Path | None:
    """A grid of images or a scatter of 2-D points (over the test set, when known); other
    shapes get no picture."""
    png = out.with_suffix(".png")
    if x.ndim == 4 and x.shape[1] in (1, 3):
        plots.image_grid(x, png, title=title)
    elif x.ndim == 2 and x.shape[1] >= 2:
        plots.scatter(x, png, reference=None if data is None else data.test, title=title)
    else:
        return None
    return png


def _sample_kwargs(args: argparse.Namespace) -> dict:
    """sample()'s grid and budget arguments from --nfe / --steps / --rtol / --atol."""
    method = solvers.METHODS[args.method]
    if method.adaptive:
        if args.nfe is not None or args.steps is not None:
            raise ValueError(
                f"--method {args.method} is adaptive: it chooses its own steps; "
                "give --rtol/--atol instead of --nfe/--steps"
            )
        return {k: getattr(args, k) for k in ("rtol", "atol") if getattr(args, k) is not None}
    if args.rtol is not None or args.atol is not None:
        raise ValueError(
            f"--rtol/--atol apply to adaptive methods only "
            f"({', '.join(n for n, m in solvers.METHODS.items() if m.adaptive)}); "
            f"--method {args.method} takes --nfe or --steps"
        )
    if args.nfe is not None and args.steps is not None:
        raise ValueError("give --nfe or --steps, not both")
    return {"nfe": args.nfe} if args.nfe is not None else {"steps": args.steps or 50}


def _output_path(out: Path) -> Path:
    """`out` with its folder made, or an error naming what is in the way, before any work."""
    _output_folder(out.parent, out)
    return out


def _output_folder(folder: Path, out: Path | None = None) -> Path:
    """`folder` made and writable, or a ValueError naming --out (`out`, else the folder) and
    what is in the way, before any work."""
    out = folder if out is None else out
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise ValueError(f"--out {out}: {folder} is not a folder") from None
    except OSError as e:  # a parent that cannot hold folders (/proc), no permission, ...
        raise ValueError(f"--out {out}: cannot make the folder {folder} ({e.strerror})") from None
    if not os.access(folder, os.W_OK):
        raise ValueError(f"--out {out}: folder {folder} is not writable")
    return folder


@dataclass
class _Source:
    """What sample/likelihood work on: a trained run (--run) or a model of one's own (--model)."""

    model: torch.nn.Module
    sde: object
    data: Data | None
    event_shape: tuple[int, ...]
    step: int | None
    folder: Path  # where outputs go by default
    text: TextSetup | None = None  # a text-conditional run's captions and tokenizer
    autoencoder: KLAutoencoder | VQVAE | None = None  # a latent run's: decodes the samples


def _event_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ValueError(f"--shape must be positive integers separated by commas, got {text!r}")
    return shape


def _source(args: argparse.Namespace, need_data: bool = False) -> _Source:
    """The run folder's model and data, or the --model factory's model with --data/--shape."""
    if (args.run is None) == (args.model is None):
        raise ValueError("give either --run (a trained run) or --model MODULE:FACTORY (your own)")
    if args.run is not None:
        for flag in ("data", "shape"):
            if getattr(args, flag, None) is not None:
                raise ValueError(f"--{flag} goes with --model; a run has its own data")
        run = load_run(args.run, ema=not args.no_ema)
        ae = run.autoencoder
        shape = ae.latent_shape if ae is not None else run.data.event_shape
        return _Source(run.model, run.model.sde, run.data, shape, run.step, Path(args.run),
                       run.text, run.autoencoder)  # fmt: skip
    model, sde = load_foreign(args.model)
    data = load_data(args.data) if getattr(args, "data", None) is not None else None
    if need_data and data is None:
        raise ValueError("--model needs --data (e.g. digits, toy:8gaussians) to evaluate on")
    shape_arg = getattr(args, "shape", None)
    if shape_arg is not None and data is not None:
        raise ValueError("give --shape or --data, not both (the data set fixes the shape)")
    if data is not None:
        shape, given = data.event_shape, f"--data {args.data}"
    elif shape_arg is not None:
        shape, given = _event_shape(shape_arg), f"--shape {shape_arg}"
    else:
        raise ValueError("--model needs --shape C,H,W (or D) or --data for the sample shape")
    own = getattr(model, "event_shape", None)  # where the model states one (analytic models)
    if own is not None and tuple(own) != tuple(shape):
        raise ValueError(
            f"{given} gives examples of shape {tuple(shape)}, but --model {args.model} takes "
            f"{tuple(own)}"
        )
    return _Source(model, sde, data, shape, None, Path("."))


SAMPLE_BATCH = 256  # samples per batch with per-example seeds (--batch)
# what --operator accepts (the observation model y = A x of an inverse problem, with --observe)
OPERATOR_SPECS = ("downsample:K", "grayscale", "blur:SIZE,STD", "blur:KERNEL_FILE", "matrix:FILE")


def _load_tensor(path: str, flag: str) -> torch.Tensor:
    """The tensor in the file given to `flag`, on the CPU: a .npy array, an .npz's "x" (what
    `sdegen sample` writes) or its only array, else a tensor saved by torch.save (loaded with
    weights_only). ValueError naming the flag and the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{flag} {path}: no such file")
    keys: list[str] = []
    value: object = None
    try:
        if p.suffix == ".npy":
            value = torch.from_numpy(np.load(p, allow_pickle=False))
        elif p.suffix == ".npz":
            with np.load(p, allow_pickle=False) as z:
                keys = list(z.keys())
                key = "x" if "x" in keys else keys[0] if len(keys) == 1 else None
                value = None if key is None else torch.from_numpy(z[key])
        else:
            value = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file: pickle, zip and numpy errors alike
        raise ValueError(
            f"{flag} {path} could not be read as a tensor ({type(e).__name__}); expected a .pt "
            f"holding one tensor (torch.save), a .npy or an .npz"
        ) from None
    if value is None:
        raise ValueError(
            f"{flag} {path}: an .npz must hold an array 'x' or exactly one, got {keys}"
        )
    if not torch.is_tensor(value):
        raise ValueError(f"{flag} {path} must hold one tensor, got {type(value).__name__}")
    return value


def _operator(spec: str, shape: tuple[int, ...]) -> tuple[solvers.LinearOperator, tuple]:
    """The operator A named by --operator SPEC and the shape of one example's observation A x,
    for examples of `shape`; a ValueError starting with the flag otherwise."""
    try:
        op = _build_operator(spec, shape)
        return op, tuple(op(torch.zeros(1, *shape)).shape[1:])
    except ValueError as e:
        text = str(e)
        raise ValueError(text if text.startswith("--") else f"--operator {spec}: {text}") from None


def _build_operator(spec: str, shape: tuple[int, ...]) -> solvers.LinearOperator:
    name, _, arg = spec.partition(":")
    expected = f"--operator {spec!r}: expected one of {', '.join(OPERATOR_SPECS)}"
    if name == "downsample" and arg.isdigit():
        return solvers.Downsample(int(arg))
    if name == "grayscale" and not arg:
        if len(shape) != 3 or shape[0] < 2:
            raise ValueError(f"acts on images of 2 or more channels C,H,W; the shape is {shape}")
        return solvers.Grayscale(shape[0])
    if name == "blur" and arg:
        parts = arg.split(",")
        if len(parts) == 2 and not Path(arg).is_file():
            try:
                size, std = int(parts[0]), float(parts[1])
            except ValueError:
                raise ValueError(expected) from None
            return solvers.Blur.gaussian(size, std)
        return solvers.Blur(_load_tensor(arg, "--operator blur:"))
    if name == "matrix" and arg:
        return solvers.Matrix(_load_tensor(arg, "--operator matrix:"))
    raise ValueError(expected)


def _observation(args: argparse.Namespace, src: _Source, device) -> dict:
    """sample()'s inverse-problem arguments from --observe with --mask (inpainting) or
    --operator (y = A x), --sigma-y, --inverse and --inverse-scale; {} without --observe. One
    example's shape in a file stands for the whole batch."""
    settings = {
        "sigma_y": args.sigma_y,
        "inverse": args.inverse,
        "inverse_scale": args.inverse_scale,
    }
    if args.observe is None:
        given = [f"--{k.replace('_', '-')}" for k, v in settings.items() if v is not None]
        given = [f for f, v in (("--mask", args.mask), ("--operator", args.operator)) if v] + given
        if given:
            verb = "needs" if len(given) == 1 else "need"
            raise ValueError(f"{', '.join(given)} {verb} --observe FILE (the observation)")
        return {}
    if (args.mask is None) == (args.operator is None):
        raise ValueError(
            f"--observe needs exactly one of --mask FILE (inpainting: True or 1 where observed) "
            f"and --operator SPEC ({', '.join(OPERATOR_SPECS)}), got "
            f"{'both' if args.mask is not None else 'neither'}"
        )
    if src.autoencoder is not None:
        raise ValueError(
            "this run samples latents of an autoencoder, and --observe observes the data: "
            "inverse problems need a run trained on the data itself"
        )
    kw = {k: v for k, v in settings.items() if v is not None}
    y = _load_tensor(args.observe, "--observe")
    y = y if y.is_floating_point() else y.to(torch.get_default_dtype())
    shape = src.event_shape
    if args.mask is not None:
        mask = _load_tensor(args.mask, "--mask")
        if mask.dtype != torch.bool:
            if mask.is_complex() or not bool(((mask == 0) | (mask == 1)).all()):
                raise ValueError(
                    f"--mask {args.mask} must be bool or hold only 0 and 1 (1: observed)"
                )
            mask = mask != 0
        dims = ", ".join(map(str, shape))
        if tuple(y.shape[-len(shape) :]) != shape or y.ndim > len(shape) + 1:
            raise ValueError(
                f"--observe {args.observe} has shape {tuple(y.shape)}, but a sample of this model "
                f"has shape {shape}: give (N, {dims}), (1, {dims}) or ({dims})"
            )
        try:
            torch.broadcast_shapes(tuple(mask.shape), (1, *shape))
        except RuntimeError:
            raise ValueError(
                f"--mask {args.mask} has shape {tuple(mask.shape)}, which does not broadcast to "
                f"a sample's shape ({dims})"
            ) from None
        one = [t[None] if tuple(t.shape) == shape else t for t in (y, mask)]
        return {**kw, "known": one[0].to(device), "mask": one[1].to(device)}
    op, observed = _operator(args.operator, shape)
    y = y[None] if tuple(y.shape) == observed else y
    if tuple(y.shape[1:]) != observed:
        dims = ", ".join(map(str, observed))
        raise ValueError(
            f"--observe {args.observe} has shape {tuple(y.shape)}, but --operator "
            f"{args.operator} observes {observed} of each sample: give (N, {dims}), "
            f"(1, {dims}) or ({dims})"
        )
    return {**kw, "operator": op, "y_obs": y.to(device)}


def _under_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ  # set by torchrun for each process, whatever their number


def _example_seeds(args: argparse.Namespace, n: int | None, what: str) -> list[int] | None:
    """One seed per example: --seeds (the first n of them, for n examples), or under torchrun
    --seed + k for example k (then n must be known); None without either: one generator seeded
    by --seed, one process (the default)."""
    if args.seeds is not None:
        if n is not None and n > len(args.seeds):
            raise ValueError(
                f"--n asks for {n} {what} but --seeds lists only {len(args.seeds)} seeds: give "
                "one seed per example"
            )
        return args.seeds[:n]
    if _under_torchrun():
        assert n is not None  # callers know n when --seeds is not given
        return list(range(args.seed, args.seed + n))
    return None


def _seeds_tag(seeds: list[int]) -> str:
    """Seeds as ranges, for a file name: "0-63", "3_7_10-19" (cut to 40 characters)."""
    runs: list[list[int]] = []
    for s in seeds:
        if runs and s == runs[-1][1] + 1:
            runs[-1][1] = s
        else:
            runs.append([s, s])
    text = "_".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)
    return text if len(text) <= 40 else f"{text[:32]}..n{len(seeds)}"


def sample(args: argparse.Namespace) -> int:
    kw = _sample_kwargs(args)
    n = args.n if args.n is not None or args.seeds is not None else 64
    seeds = _example_seeds(args, n, "samples")
    n = len(seeds) if seeds is not None else n
    if args.batch is not None and seeds is None:
        raise ValueError("--batch goes with --seeds (or torchrun): batches need a seed per sample")
    label = getattr(args, "class_label", None)
    prompt = getattr(args, "prompt", None)
    guidance = getattr(args, "guidance", None)
    if label is not None and prompt is not None:
        raise ValueError("give --class or --prompt, not both")
    if guidance is not None and label is None and prompt is None:
        raise ValueError("--guidance needs --class or --prompt (what to guide towards)")
    device = harness.process_device(resolve_device(args.device))
    rank, world = init_distributed(str(device))
    src = _source(args)
    if isinstance(src.model, torch.nn.Module):
        src.model.to(device)
    if label is not None:
        if src.text is not None:
            raise ValueError("this run is text-conditional: give --prompt, not --class")
        if getattr(src.model, "num_classes", None) is None:
            raise ValueError(
                f"--class {label}: this is an unconditional model (a run trained without "
                f"--conditional, or a --model without num_classes or ConditionTables)"
            )
        kw["y"] = label  # checked against the model's classes by sample()
    if prompt is not None:
        if src.text is None:
            raise ValueError("--prompt needs a text-conditional run (trained with --set text=true)")
        kw["y"] = src.text.prompt_ids(prompt, n).to(device)
    if guidance is not None:
        kw["guidance"] = guidance
    if args.method == "ancestral" and isinstance(src.model, LearnedVarianceModel):
        kw["variance"] = "learned"  # a learned_variance run samples with its own Sigma_theta
    init, t_start = getattr(args, "init", None), getattr(args, "t_start", None)
    if (init is None) != (t_start is None):
        raise ValueError("SDEdit needs both --init FILE.pt and --t-start T")
    if init is not None:
        x_init = _load_tensor(init, "--init")
        ae = src.autoencoder
        image = None if ae is None else tuple(ae.event_shape)
        if tuple(x_init.shape) in (tuple(src.event_shape), image):
            x_init = x_init[None]
        if ae is not None and tuple(x_init.shape[1:]) == image:
            # a latent run edits latents: start from the image's rescaled latents
            x_init = encode_scaled(ae, x_init.to(torch.get_default_dtype()))
        kw.update(x_init=x_init.to(device), t_start=t_start)  # shapes checked by sample()
    observation = _observation(args, src, device)  # shapes checked by sample()
    kw.update(observation)
    problem = None if not observation else args.operator or "inpaint"
    w_tag = f"-w{guidance:g}" if guidance else ""
    tag = "" if label is None else f"-class{label}{w_tag}"
    if prompt is not None:
        tag = "-" + ("_".join(prompt.lower().split()) or "null")[:60] + w_tag
    if problem is not None:
        tag += "-" + "".join(c if c.isalnum() else "_" for c in problem.split(",")[0])[:30]
    budget = (
        f"nfe{args.nfe}"
        if args.nfe is not None
        else f"steps{kw['steps']}"
        if "steps" in kw
        else "adaptive"
    )
    seed_tag = f"seed{args.seed}" if seeds is None else f"seeds{_seeds_tag(seeds)}"
    out = _output_path(
        Path(args.out)
        if args.out
        else src.folder / "samples" / f"{args.method}-{budget}-{seed_tag}{tag}"
    )
    steps = kw.get("steps") or (
        solvers.steps_for_nfe(args.method, args.nfe) if args.nfe is not None else 0
    )
    # per-example seeds: aligned batches of --batch, dealt to the torchrun processes in turn;
    # else one batch from one generator, as a single process always sampled
    batch = (args.batch or SAMPLE_BATCH) if seeds is not None else n
    generator = (
        torch.Generator(device).manual_seed(args.seed)
        if seeds is None
        else PerExampleGenerator(seeds, device or "cpu")
    )
    mine = len(harness.batch_slices(n, batch, rank, world))
    quiet = args.quiet or not steps or rank != 0
    progress = Progress(steps * mine, f"sample {args.method}", quiet=quiet)
    try:
        x, results = harness.sample_batches(
            src.model,
            src.sde,
            (n, *src.event_shape),
            batch_size=batch,
            method=args.method,
            generator=generator,
            device=device,
            callback=lambda _: progress.update(),
            **kw,
        )
    finally:
        progress.close()
    if rank != 0:
        return 0  # process 0 writes what all of them sampled
    res = results[0]
    # evaluations per sample: each batch's count (they differ only for adaptive methods)
    nfes = [r.nfe for r in results]
    nfe = nfes[0] if len(set(nfes)) == 1 else sum(k * len(r.x) for k, r in zip(nfes, results)) / n
    vjps = sum(r.nfe_backward * len(r.x) for r in results) / n  # an inverse problem's, per sample
    if src.autoencoder is not None:
        x = decode(src.autoencoder.to(device), x.to(device))
    x = x.cpu()
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise FloatingPointError(
            f"sampling produced {bad} non-finite values (NaN or inf); nothing was written"
            + (f" (is --guidance {guidance:g} too large?)" if guidance else "")
        )
    np.savez(
        out.with_suffix(".npz"),
        x=x.numpy(),
        nfe=nfe,
        method=args.method,
        seed=args.seed if seeds is None else -1,
        seeds=np.asarray([] if seeds is None else seeds, dtype=np.int64),
        batch=batch,
        nfe_batches=np.asarray(nfes),
        step=-1 if src.step is None else src.step,
        label=-1 if label is None else label,
        prompt="" if prompt is None else prompt,
        guidance=float("nan") if guidance is None else guidance,
        batch_factor=res.batch_factor,
        inverse_problem="" if problem is None else problem,
        nfe_backward=vjps,
    )
    what = "" if label is None else f", class {label}"
    what += "" if prompt is None else f", prompt {prompt!r}"
    what += f", guidance {guidance:g}" if guidance and (label is not None or prompt) else ""
    if problem is not None:
        how = args.inverse or DEFAULT_INVERSE["inpaint" if args.mask else "operator"]
        what += f", observed by {problem} ({how}, {vjps:g} VJPs each)"
    trained = "" if src.step is None else f", step {src.step}"
    seed_text = f"seed {args.seed}" if seeds is None else f"seeds {_seeds_tag(seeds)}"
    png = _save_samples(x, src.data, out, f"{args.method}, NFE {nfe:g}{what}{trained}, {seed_text}")
    doubled = " on a doubled batch (classifier-free guidance)" if res.batch_factor == 2 else ""
    split = "" if world == 1 else f", {len(results)} batches over {world} processes"
    print(
        f"sampled {n}{what} with {args.method}: NFE {nfe:g}{doubled} (counted){split}; wrote "
        f"{out.with_suffix('.npz')}" + (f" and {png}" if png else "")
    )
    return 0


def likelihood(args: argparse.Namespace) -> int:
    device = harness.process_device(resolve_device(args.device))
    rank, world = init_distributed(str(device))
    src = _source(args, need_data=True)
    assert src.data is not None  # _source(need_data=True) guarantees it
    whole = src.data.test if args.split == "test" else src.data.train
    if args.n and args.n > len(whole):
        raise ValueError(
            f"--n {args.n} is more than the {len(whole)} examples of the {args.split} split"
        )
    x = whole[: args.n] if args.n else whole
    if args.seeds is not None and not args.n:  # as many examples as seeds
        if len(args.seeds) > len(x):
            raise ValueError(
                f"--seeds lists {len(args.seeds)} seeds, but the {args.split} split has only "
                f"{len(x)} examples"
            )
        x = x[: len(args.seeds)]
    n = len(x)
    seeds = _example_seeds(args, n, "examples")
    # a part of the split writes its own file, so a quick --n run never replaces the whole
    # split's result (which can take hours)
    out = src.folder / f"likelihood-{args.split}{'' if n == len(whole) else f'-n{n}'}.json"
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"run folder {out.parent} is not writable: cannot write {out.name}")
    trace = resolve_trace(args.trace, src.data)
    if trace == "exact" and args.probes is not None:
        raise ValueError(
            f"--probes {args.probes} counts Hutchinson probes, but the trace is exact here "
            f"(--trace {args.trace}): drop --probes, or pass --trace hutchinson"
        )
    probes = 2 if args.probes is None else args.probes
    mine = sum(s.stop - s.start for s in harness.batch_slices(n, args.batch, rank, world))
    progress = Progress(
        len(x) if seeds is None else mine,
        f"likelihood ({trace} trace)",
        quiet=args.quiet or rank != 0,
    )
    start = time.perf_counter()
    try:
        result = evaluate_likelihood(
            src.model.to(device) if isinstance(src.model, torch.nn.Module) else src.model,
            src.data,
            x.to(device),
            trace=trace,
            rtol=args.rtol,
            atol=args.atol,
            batch=args.batch,
            seed=args.seed,
            probes=probes,
            progress=progress,
            autoencoder=src.autoencoder,
            seeds=seeds,
        )
    finally:
        progress.close()
    if rank != 0:
        return 0  # process 0 writes what all of them computed
    result.update(split=args.split, step=src.step, seconds=time.perf_counter() - start)
    if seeds is not None:
        result.update(seeds=_seeds_tag(seeds), batch=args.batch)
    bad = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise FloatingPointError(
            f"the likelihood came out non-finite ({', '.join(bad)}); nothing was written"
        )
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1, allow_nan=False))
    os.replace(tmp, out)
    line = f"{args.split} NLL {result['nll_nats']:.4f} nats"
    if result["kind"] == "bound":
        line = f"{args.split} NLL <= {result['nll_nats']:.4f} nats (latent-diffusion bound)"
    if "bits_per_dim" in result:
        line += f", {result['bits_per_dim']:.4f} bits/dim"
    if "true_nll_nats" in result:
        line += f" (true density: {result['true_nll_nats']:.4f} nats)"
    how = "exact" if trace == "exact" else f"Hutchinson estimate, {probes} probes"
    print(
        f"{line}; {result['n']} examples, NFE {result['nfe']} (+{result['nfe_backward']} "
        f"VJPs), trace {how}"
        + ("" if world == 1 else f", over {world} processes")
        + f"; wrote {out}"
    )
    return 0


def bench(args: argparse.Namespace) -> int:
    folder, names = harness.find_benchmarks()
    if folder is None:
        looked = ", ".join(str(d) for d in harness.benchmark_dirs())
        name = "" if args.list or args.name is None else f"cannot run {args.name!r}: "
        raise FileNotFoundError(
            f"{name}no benchmarks found (looked in {looked}): they are scripts in sdegen's "
            "source repository, folder benchmarks/, not part of the installed package; run "
            f"from a clone, or set {harness.BENCHMARKS_ENV} to that folder"
        )
    if args.list or args.name is None:
        for name in names:
            print(name)
        return 0
    if args.name not in names:
        raise ValueError(
            f"unknown benchmark {args.name!r}; available: {', '.join(names)} "
            f"(benchmarks are read from {folder})"
        )
    harness.load_script(folder / f"{args.name}.py").main(args.rest)
    return 0


def demo(args: argparse.Namespace) -> int:
    sde = SDES[args.sde]()
    model = ring_mixture(sde)
    methods = ("dpmpp_2m", "euler_maruyama")
    for method in methods:  # a budget too small for a method: refused before any output
        solvers.steps_for_nfe(method, args.nfe)
    g = torch.Generator().manual_seed(args.seed)
    truth = model.sample(args.n, generator=g)
    print(
        f"sdegen demo: {args.n} samples of an 8-component Gaussian mixture under {sde}, "
        f"exact analytic score, seed {args.seed}"
    )
    floor = sliced_wasserstein(truth, model.sample(args.n, generator=g), generator=g)
    print(f"noise floor (two independent true sample sets): sliced W2 = {floor:.4f}\n")
    print(f"{'method':<18}{'NFE':>6}{'Frechet':>10}{'sliced W2':>11}{'time [s]':>10}")
    for method in methods:
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
