"""Every model family behind one density API, trained with the same budget and evaluated alike.

Families: score SDE (VP, v-parametrised, likelihood-weighted DSM; PF-ODE likelihood and the
reverse-SDE bound), RealNVP, FFJORD, VAE, GAN. Data: the 2-D toy sets 8gaussians,
checkerboard, moons (test NLL in nats) and the 8x8 digits (bits/dim after uniform
dequantization with bin width 2/17). Each number is reported with its kind (exact, ODE, bound,
estimate, none), the NFE where an ODE is solved, and wall time; samples are compared with the
test set (sliced W2 for 2-D, Frechet distance of pixel Gaussians for digits) beside the noise
floor of that metric (training vs test set). Writes results.json, table.md and PNGs.

Equal wall time on the toy sets: every family trains until --steps steps or --toy-seconds of
training CPU time (this thread's, so a busy machine does not shorten anyone's budget), whichever
comes first; the table gives the steps each family took and its CPU seconds. FFJORD is the one
family the time budget stops. On digits only the step budget applies.

    python benchmarks/likelihood.py                  # full run (tens of minutes on 2 cores)
    python benchmarks/likelihood.py --no-digits      # the toy sets (digits rows kept from the
                                                     # last full run, and marked so)
    python benchmarks/likelihood.py --quick          # a smoke run
"""

from __future__ import annotations

import copy
import json
import math
import time
from pathlib import Path

import torch

from sdegen.assembly import harness, load_data, plots
from sdegen.data import dequantize
from sdegen.metrics import frechet_distance_from_samples, sliced_wasserstein
from sdegen.models import FFJORD, GAN, MLP, VAE, RealNVP, RealNVPImage, ScoreModel, UNet
from sdegen.models.density import bits_per_dim
from sdegen.score_density import ScoreSDEDensity
from sdegen.sde import VPSDE
from sdegen.training import Trainer, density_loss, score_matching

FAMILIES = ("score_sde", "realnvp", "ffjord", "vae", "gan")
TOY = ("8gaussians", "checkerboard", "moons")
# FFJORD's regularised default (measured against the reference in benchmarks/ffjord.py)
# FFJORD's regularised default: the reference's toy network (concat-squash 64-64-64, tanh,
# T = 0.5; benchmarks/ffjord.py) with Finlay et al.'s regularisers, which keep the NFE from
# growing, and the training tolerance 1e-4.
FFJORD_DEFAULT = dict(
    hidden_dims=(64, 64, 64),
    activation="tanh",
    T=0.5,
    kinetic_weight=0.01,
    jacobian_weight=0.01,
    rtol=1e-4,
    atol=1e-4,
)
# Trainer settings that differ from the shared ones, per family: FFJORD takes the reference's
# batch of 100 (a step costs a solve, so smaller batches mean more steps in the time budget)
# and no EMA (at a few hundred steps an EMA of decay 0.999 would still weigh the initial
# network by 0.999^300 = 0.74).
TRAINER_OVERRIDES: dict[str, dict] = {
    "gan": {"grad_clip": None},
    "ffjord": {"batch_size": 100, "ema_decay": None},
}


def build(family: str, shape: tuple[int, ...]):
    """(model, objective, density view) for a family on examples of `shape`."""
    image = len(shape) == 3
    d = math.prod(shape)
    if family == "score_sde":
        sde = VPSDE()
        net = UNet(shape[0], channels=32) if image else MLP(d, hidden=256)
        model = ScoreModel(net, sde, "v")
        return model, score_matching("likelihood"), ScoreSDEDensity(model, sde, shape)
    if family == "realnvp":
        model = RealNVPImage(shape, hidden=32) if image else RealNVP(d, num_layers=8)
    elif family == "ffjord":
        # Finlay et al.'s regularisers keep the NFE from growing during training
        model = FFJORD(d, **FFJORD_DEFAULT, trace="hutchinson" if image else "exact")
    elif family == "vae":
        model = VAE.conv(shape, latent_dim=8) if image else VAE.mlp(d, latent_dim=2)
    else:
        model = GAN.dcgan(shape) if image else GAN.mlp(d)
    return model, density_loss(), model


def _flat_if_needed(family: str, x: torch.Tensor) -> torch.Tensor:
    # FFJORD here is a vector model: images go in flattened
    return x.reshape(len(x), -1) if family == "ffjord" and x.ndim == 4 else x


@torch.no_grad()
def evaluate(family: str, dens, data, n_eval: int, seed: int) -> dict:
    """Test log-likelihood (with its kind and cost) of a trained family."""
    g = torch.Generator().manual_seed(seed)
    x = data.test[:n_eval].double()
    if data.bin_width is not None:
        x = dequantize(x, data.bin_width, generator=g)
    dens = copy.deepcopy(dens).double().eval()
    start = time.perf_counter()
    out: dict = {"n": len(x)}
    xin = _flat_if_needed(family, x)
    if family == "gan":
        out.update(kind="none", log_prob=None)
    elif family == "score_sde":
        trace = "hutchinson" if data.is_image else "exact"
        res = dens.log_prob_with_stats(
            xin, trace=trace, probes=2, rtol=1e-4, atol=1e-4, generator=g
        )
        out.update(kind=f"ode ({trace} trace)", log_prob=res.log_prob, nfe=res.nfe)
        if not data.is_image:
            bound = dens.sde_bound(xin[:200], time_points=64, generator=g)
            out["sde_bound_nll"] = float(bound.mean())
    elif family == "ffjord":
        lp, stats = dens.log_prob_with_stats(xin, rtol=1e-4, atol=1e-4, generator=g)
        out.update(kind=f"ode ({dens.trace} trace)", log_prob=lp, nfe=stats.nfe_forward)
    elif family == "vae":
        out.update(
            kind="estimate (importance-weighted, k=1000)",
            log_prob=dens.log_prob(xin, k=1000, generator=g),
        )
        out["elbo_nll"] = float(-dens.elbo(xin, generator=g).mean())
    else:
        out.update(kind="exact", log_prob=dens.log_prob(xin))
    lp = out.pop("log_prob")
    if lp is not None:
        out["nll_nats"] = float(-lp.mean())
        out["nll_sem"] = float(lp.std() / math.sqrt(len(lp)))
        if data.bin_width is not None:
            out["bits_per_dim"] = float(
                bits_per_dim(lp, math.prod(data.event_shape), data.bin_width).mean()
            )
            if "elbo_nll" in out:
                D = math.prod(data.event_shape)
                out["elbo_bpd"] = (out["elbo_nll"] - D * math.log(data.bin_width)) / (
                    D * math.log(2)
                )
    out["eval_seconds"] = time.perf_counter() - start
    return out


def sample_quality(family: str, dens, data, seed: int) -> tuple[torch.Tensor, float]:
    n = len(data.test)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = dens.sample(n, generator=g).reshape(n, *data.event_shape).double()
    ref = data.test.double()
    if data.is_image:
        return x, frechet_distance_from_samples(x.reshape(n, -1), ref.reshape(n, -1))
    return x, sliced_wasserstein(x, ref, generator=torch.Generator().manual_seed(0))


def noise_floor(data) -> float:
    n = len(data.test)
    other = data.train[
        torch.randperm(len(data.train), generator=torch.Generator().manual_seed(7))[:n]
    ].double()
    if data.is_image:
        return frechet_distance_from_samples(other.reshape(n, -1), data.test.reshape(n, -1))
    return sliced_wasserstein(other, data.test.double(), generator=torch.Generator().manual_seed(0))


def true_nll(data, n_eval: int) -> float | None:
    """-mean log p of the test points under the data's closed-form density, where it has one."""
    if data.true_log_prob is None:
        return None
    return float(-data.true_log_prob(data.test[:n_eval].double()).mean())


def fill_reference(result: dict, n_eval: int, seed: int) -> None:
    """Add dims and true_nll to records made before the script recorded them."""
    for rec in result["records"]:
        if not {"dims", "true_nll", "n_samples"} <= set(rec):
            data = load_data(rec["data"], seed=seed)
            rec.setdefault("dims", math.prod(data.event_shape))
            rec.setdefault("n_samples", len(data.test))
            rec.setdefault("true_nll", true_nll(data, n_eval))


@torch.no_grad()
def density_grid(family: str, dens, k: int = 48, lim: float = 4.0):
    ax = torch.linspace(-lim, lim, k, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(ax, ax, indexing="ij"), -1).reshape(-1, 2)
    dens = copy.deepcopy(dens).double().eval()
    if family == "gan":
        return None
    if family == "score_sde":
        return dens.log_prob(grid, rtol=1e-4, atol=1e-4).reshape(k, k)
    if family == "ffjord":
        return dens.log_prob(grid, rtol=1e-4, atol=1e-4).reshape(k, k)
    if family == "vae":
        return dens.log_prob(grid, k=200).reshape(k, k)
    return dens.log_prob(grid).reshape(k, k)


def run(args) -> dict:
    records = []
    panels: dict[str, dict] = {}
    datasets = [f"toy:{n}" for n in args.toy] + (["digits"] if args.digits else [])
    for spec in datasets:
        data = load_data(spec, n_train=args.n_train, seed=args.seed)
        floor = noise_floor(data)
        truth = true_nll(data, args.n_eval)
        steps = args.image_steps if data.is_image else args.steps
        for family in args.families:
            torch.manual_seed(args.seed)
            model, objective, dens = build(family, data.event_shape)
            model.float()  # in place, whatever torch's default dtype; the data are float32
            train_x = _flat_if_needed(family, data.train)
            settings = dict(
                batch_size=args.batch, lr=args.lr, warmup=50, ema_decay=0.999, grad_clip=1.0
            )
            settings.update(TRAINER_OVERRIDES.get(family, {}))
            trainer = Trainer(model, objective, train_x, seed=args.seed, progress=False, **settings)
            budget = None if data.is_image else args.toy_seconds
            start, start_cpu = time.perf_counter(), time.thread_time()
            if budget is None:
                trainer.fit(steps)
            while budget is not None and trainer.step < steps:
                if time.thread_time() - start_cpu >= budget:
                    break
                trainer.fit(min(steps, trainer.step + 10))
            train_seconds = time.perf_counter() - start
            train_cpu = time.thread_time() - start_cpu
            trained = trainer.eval_model.eval()
            view = (
                ScoreSDEDensity(trained, trained.sde, data.event_shape)
                if family == "score_sde"
                else trained
            )
            rec = {
                "data": spec,
                "family": family,
                "steps": trainer.step,
                "step_budget": steps,
                "seconds_budget": budget,
                "batch": settings["batch_size"],
                "ema_decay": settings["ema_decay"],
                "train_cpu_seconds": train_cpu,
                "dims": math.prod(data.event_shape),
                "n_samples": len(data.test),
                "true_nll": truth,
                "train_seconds": train_seconds,
                "noise_floor": floor,
            }
            rec.update(evaluate(family, view, data, args.n_eval, args.seed))
            samples, rec["sample_quality"] = sample_quality(family, view, data, args.seed)
            records.append(rec)
            print(json.dumps({k: v for k, v in rec.items() if k != "noise_floor"}), flush=True)
            if data.is_image:
                plots.image_grid(
                    samples[:64].float(), args.out / f"digits_{family}.png", nrow=8, title=family
                )
            else:
                panels.setdefault(spec, {})[family] = (density_grid(family, view), samples)
    return {"records": records, "panels": panels}


def plot_panels(panels: dict, out: Path) -> list[str]:
    """One PNG of density panels per toy data set (a GAN's samples instead); their names."""
    plt = harness.pyplot()
    names = []
    for spec, fams in panels.items():
        fig, axes = plt.subplots(1, len(fams), figsize=(3.2 * len(fams), 3.4), squeeze=False)
        for ax, (family, (logp, samples)) in zip(axes[0], fams.items()):
            if logp is None:  # a GAN has no density: show its samples
                s = samples.float()
                ax.hist2d(
                    s[:, 0].numpy(),
                    s[:, 1].numpy(),
                    bins=48,
                    range=[[-4, 4], [-4, 4]],
                    cmap="magma",
                )
                ax.set_title(f"{family} (samples)", fontsize=9)
            else:
                ax.imshow(
                    logp.detach().exp().T.flip(0).numpy(), extent=(-4, 4, -4, 4), cmap="magma"
                )
                ax.set_title(family, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        names.append(f"density_{spec.split(':')[1]}.png")
        fig.savefig(out / names[-1], dpi=110, bbox_inches="tight")
        plt.close(fig)
    return names


def markdown(result: dict) -> str:
    m = result["meta"]
    lines = [
        "# One density API: every family, the same budget",
        "",
        f"Seed {m['seed']}; {m['steps']} steps (toy) / {m['image_steps']} steps (digits) at "
        f"batch {m['batch']}, lr {m['lr']}, EMA 0.999, on {m['threads']} torch thread(s). "
        + (
            f"Equal wall time on the toy sets: every family trains for {m['steps']} steps or "
            f"{m['toy_seconds']:g} s of training CPU time, whichever comes first (*steps* and "
            "*train CPU s* say which); "
            + ", ".join(
                f"{fam}: {', '.join(f'{k} {v}' for k, v in o.items())}"
                for fam, o in m.get("trainer_overrides", {}).items()
            )
            + " (trainer settings that differ). "
            if m.get("toy_seconds")
            else ""
        )
        + "Test NLL in nats (toy) or bits/dim after uniform dequantization (digits), with "
        "its standard error over test points; *kind* says what the number is. Sample "
        "quality: sliced W2 (toy) or pixel-space Frechet distance (digits) to the test set, "
        "beside the noise floor (training vs test set).",
        "",
    ]
    for note in m.get("notes", []):
        lines += [note, ""]
    for spec in dict.fromkeys(r["data"] for r in result["records"]):
        recs = [r for r in result["records"] if r["data"] == spec]
        image = spec == "digits"
        unit = "bits/dim" if image else "NLL (nats)"
        lines += [
            f"## {spec} ({recs[0]['n']} test points; {recs[0]['n_samples']} samples, "
            f"sample-quality noise floor {recs[0]['noise_floor']:.4g}"
            + (
                f"; the true density's NLL is {recs[0]['true_nll']:.3f} nats)"
                if recs[0].get("true_nll") is not None
                else ")"
            ),
            "",
            f"| family | {unit} | kind | other bound | NFE | samples | steps | batch | "
            "train s | train CPU s | eval s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        if any(r.get("from_earlier_run") for r in recs):
            lines[-2:-2] = [
                "Rows of an earlier full run (this run trained the toy sets only): "
                f"{recs[0].get('from_earlier_run')}.",
                "",
            ]
        for r in recs:
            if "nll_nats" in r:
                val = r["bits_per_dim"] if image else r["nll_nats"]
                sem = r["nll_sem"] / (r["dims"] * math.log(2)) if image else r["nll_sem"]
                cell = f"{val:.3f} ± {sem:.3f}"
            else:
                cell = "-"
            other = ""
            if "sde_bound_nll" in r:
                other = f"SDE bound {r['sde_bound_nll']:.3f}"
            if "elbo_nll" in r:
                other = f"-ELBO {r['elbo_bpd'] if image else r['elbo_nll']:.3f}"
            cpu = r.get("train_cpu_seconds")
            lines.append(
                f"| {r['family']} | {cell} | {r['kind']} | {other} | "
                f"{r.get('nfe', '-')} | {r['sample_quality']:.4g} | {r['steps']} | "
                f"{r.get('batch', m['batch'])} | {r['train_seconds']:.0f} | "
                f"{'-' if cpu is None else f'{cpu:.0f}'} | {r['eval_seconds']:.0f} |"
            )
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--toy", nargs="*", default=list(TOY))
    p.add_argument("--no-digits", dest="digits", action="store_false")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument(
        "--toy-seconds",
        type=float,
        default=30.0,
        help="training CPU seconds per family on a toy set (with --steps, whichever first)",
    )
    p.add_argument("--image-steps", type=int, default=800)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-eval", type=int, default=1000)
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).parent / "results" / "likelihood",
        seed=0,
        quick="a few steps, for a smoke test",
        replot="rebuild table.md from results.json (the PNGs need a run)",
    )
    if args.replot:  # the table only: the density panels are not in the JSON
        result = harness.load(args.out)
        fill_reference(result, result["meta"]["n_eval"], result["meta"]["seed"])
        harness.save(args.out, result, markdown(result))
        return
    if args.quick:
        args.steps, args.image_steps, args.n_eval, args.n_train = 5, 2, 32, 2000
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    result = run(args)
    earlier = args.out / "results.json"
    if not args.digits and earlier.is_file() and not args.quick:
        # keep the digits rows of the last full run, marked as such
        old = json.loads(earlier.read_text())
        tag = old.get("meta", {}).get("git_commit") or "an earlier run"
        for rec in old["records"]:
            if rec["data"] == "digits":
                rec.setdefault("from_earlier_run", f"{rec.get('from_earlier_run', tag)}")
                result["records"].append(rec)
    images = [f"digits_{f}.png" for f in args.families] if args.digits else []
    panels = plot_panels(result.pop("panels"), args.out)
    meta = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    result["meta"] = {
        **meta,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ffjord_default": {
            k: list(v) if isinstance(v, tuple) else v for k, v in FFJORD_DEFAULT.items()
        },
        "trainer_overrides": TRAINER_OVERRIDES,
        "git_commit": harness.git_commit(),
    }
    harness.save(args.out, result, markdown(result), also=panels + images)


if __name__ == "__main__":
    main()
