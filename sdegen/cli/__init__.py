"""The `sdegen` command line: train | sample | likelihood | bench | quickstart | demo."""

from __future__ import annotations

import argparse
import math
import sys

from .. import __version__
from ..assembly import EXACT_TRACE_MAX_DIM, SDES, describe_keys
from ..solvers import DEFAULT_METHOD, METHODS
from ..solvers.inverse import INVERSE_METHODS
from . import commands


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2), like every other error of the CLI."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _Help(argparse.RawDescriptionHelpFormatter):
    """Every option's default in --help (where it has one), and epilogs printed as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        shown = not (default is None or default is False or default == argparse.SUPPRESS)
        if shown and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _int_at_least(low: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def _number(*, positive: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value) or (positive and value <= 0):
            kind = "a finite number > 0" if positive else "a finite number"
            raise argparse.ArgumentTypeError(f"must be {kind}, got {text!r}")
        return value

    parse.__name__ = "positive number" if positive else "number"
    return parse


def _seed(text: str) -> int:
    value = _int_at_least(0)(text)
    if value >= 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, 2**63), got {text!r}")
    return value


positive_int, nonnegative_int = _int_at_least(1), _int_at_least(0)

SEEDS_MAX = 10_000_000  # seeds one --seeds may list (each example holds a generator)


def _seeds(text: str) -> list[int]:
    """--seeds: comma-separated seeds and inclusive ranges, e.g. "0-999" or "3,7,10-19"."""
    seeds: list[int] = []
    for part in text.split(","):
        ends = part.strip().split("-")
        if len(ends) > 2 or not all(e.strip().isdigit() for e in ends):
            raise argparse.ArgumentTypeError(
                f"must be seeds >= 0 and ranges A-B separated by commas, e.g. 0-999 or 3,7,10-19; "
                f"got {text!r}"
            )
        lo, hi = int(ends[0]), int(ends[-1])
        if hi < lo or hi >= 2**63:
            raise argparse.ArgumentTypeError(
                f"range {part.strip()!r} must run from low to high within [0, 2**63), in {text!r}"
            )
        if len(seeds) + hi - lo + 1 > SEEDS_MAX:
            raise argparse.ArgumentTypeError(f"lists more than {SEEDS_MAX} seeds: {text!r}")
        seeds.extend(range(lo, hi + 1))
    if len(set(seeds)) < len(seeds):
        raise argparse.ArgumentTypeError(
            f"lists a seed twice ({text!r}): two examples with one seed are the same example"
        )
    return seeds


def _path(text: str) -> str:
    """A path argument: any nonempty text (an empty one would mean the current folder, or fall
    back to a default, without a word)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must be a path, got an empty one")
    return text


def _add_device(p: argparse.ArgumentParser, default: str | None = "auto") -> None:
    p.add_argument("--device", default=default, help="auto (cuda if available), cpu, cuda, cuda:N")


def _add_model_source(p: argparse.ArgumentParser, *, shape: bool) -> None:
    p.add_argument(
        "--run", "--run-dir", dest="run", type=_path, help="a run folder made by sdegen train"
    )
    p.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="instead of --run, a model of your own: FACTORY() in MODULE (or FILE.py) returns "
        "(model, sde) or a model with .sde, e.g. one of sdegen.models.adapters",
    )
    p.add_argument("--data", help="with --model: the data set (toy:NAME, digits, mnist:FOLDER...)")
    if shape:
        p.add_argument("--shape", help="with --model: one example's shape, e.g. 2 or 1,8,8")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="sdegen", description=__doc__, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"sdegen {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser(
        "train",
        help="train a score model from a config file",
        formatter_class=_Help,
        epilog="config keys (--set KEY=VALUE or a YAML/TOML file):\n" + describe_keys(),
    )
    p.add_argument("--config", help="YAML or TOML run config (defaults apply without one)")
    p.add_argument(
        "--run",
        "--run-dir",
        dest="run",
        type=_path,
        required=True,
        help="run folder for checkpoints and logs (--run-dir under torchrun)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set steps=500 --set sde=ve (keys listed below)",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --run")
    p.add_argument(
        "--conditional",
        action="store_true",
        help="class-conditional model with label dropout (config keys conditional, p_uncond)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_device(p, default=None)
    p.set_defaults(run_command=commands.train)

    p = sub.add_parser(
        "sample", help="sample a trained run; writes .npz and .png", formatter_class=_Help
    )
    _add_model_source(p, shape=True)
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=list(METHODS),
        metavar="NAME",
        help=f"sampler, one of: {', '.join(METHODS)}",
    )
    p.add_argument("--nfe", type=positive_int, help="network-evaluation budget")
    p.add_argument(
        "--steps", type=positive_int, help="grid steps (default 50 when --nfe is not given)"
    )
    p.add_argument("--rtol", type=_number(positive=True), help="adaptive methods only")
    p.add_argument("--atol", type=_number(positive=True), help="adaptive methods only")
    p.add_argument(
        "--n",
        type=positive_int,
        help="number of samples (default 64, or as many as --seeds; under torchrun give --seeds: "
        "torchrun reads --n as its own --nnodes)",
    )
    p.add_argument("--seed", type=_seed, default=0, help="seed of the prior draw and the noise")
    p.add_argument(
        "--seeds",
        type=_seeds,
        metavar="SEEDS",
        help="one seed per sample, e.g. 0-999 (with --n: the first N): each sample the same in "
        "any batch and under torchrun with any number of processes (under torchrun the default "
        "is --seed + k for sample k)",
    )
    p.add_argument(
        "--batch",
        type=positive_int,
        help="samples per batch with --seeds or under torchrun (default 256); a batch is one "
        "computation, dealt to the processes in turn",
    )
    p.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA, weights")
    p.add_argument(
        "--class",
        dest="class_label",
        type=int,
        default=None,
        help="sample this class (conditional runs, or row K of a --model's ConditionTables; "
        "-1: unconditional)",
    )
    p.add_argument(
        "--prompt",
        default=None,
        help='sample from a caption, e.g. "a thick small 7" (text-conditional runs)',
    )
    p.add_argument(
        "--guidance",
        type=_number(),
        default=None,
        help="classifier-free guidance weight w with --class or --prompt (0 uncond., 1 cond., "
        ">1 guided)",
    )
    p.add_argument(
        "--init",
        default=None,
        help="SDEdit: a tensor file (.pt, .npy or .npz) of shape (N, *shape), (1, *shape) or "
        "(*shape) to edit (images, on a latent run), with --t-start",
    )
    p.add_argument(
        "--t-start",
        type=_number(positive=True),
        default=None,
        help="SDEdit: perturb --init to this time in (t_min, T] and sample from there",
    )
    p.add_argument(
        "--observe",
        metavar="FILE",
        help="inverse problem: the observation y (.pt, .npy or .npz; (N, ...) or one for all), "
        "with --mask or --operator; samples p(x | y)",
    )
    p.add_argument(
        "--mask",
        metavar="FILE",
        help="inpainting: True (or 1) where --observe is observed, the shape of the samples or "
        "of one of them",
    )
    p.add_argument(
        "--operator",
        metavar="SPEC",
        help=f"the observation y = A x: {', '.join(commands.OPERATOR_SPECS)}",
    )
    p.add_argument(
        "--sigma-y", type=_number(), help="std of the observation's noise (default 0: exact)"
    )
    p.add_argument(
        "--inverse",
        choices=list(INVERSE_METHODS),
        help="how to condition on --observe (default: replace with --mask, else moment)",
    )
    p.add_argument("--inverse-scale", type=_number(), help="guidance weight (default 1)")
    p.add_argument(
        "--out",
        type=_path,
        help="output path without suffix (default: RUN/samples/METHOD-BUDGET-SEED)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_device(p)
    p.set_defaults(run_command=commands.sample)

    p = sub.add_parser(
        "likelihood",
        help="NLL (nats) and bits/dim of a split under the PF-ODE",
        formatter_class=_Help,
        description="NLL (nats) and bits/dim of a split under the PF-ODE, written to "
        "RUN/likelihood-SPLIT.json (RUN/likelihood-SPLIT-nN.json for the first N examples, so "
        "a part never replaces the whole split's result)",
    )
    _add_model_source(p, shape=False)
    p.add_argument("--split", choices=["test", "train"], default="test", help="test or train")
    p.add_argument(
        "--n",
        type=nonnegative_int,
        default=0,
        help="first N examples (0: all, or as many as --seeds; under torchrun give --seeds)",
    )
    p.add_argument(
        "--trace",
        choices=["auto", "exact", "hutchinson"],
        default="auto",
        help=f"divergence: auto is exact up to {EXACT_TRACE_MAX_DIM} dimensions, "
        "else a Hutchinson estimate",
    )
    p.add_argument(
        "--probes", type=positive_int, help="Hutchinson probes (default 2; not with an exact trace)"
    )
    p.add_argument("--rtol", type=_number(positive=True), default=1e-5)
    p.add_argument("--atol", type=_number(positive=True), default=1e-5)
    p.add_argument("--batch", type=positive_int, default=256)
    p.add_argument("--seed", type=_seed, default=0, help="dequantization / probe seed")
    p.add_argument(
        "--seeds",
        type=_seeds,
        metavar="SEEDS",
        help="one seed per example (its dequantization and probes), e.g. 0-299: the same "
        "numbers under torchrun with any number of processes (there the default is --seed + k "
        "for example k); without --n, evaluates as many examples as seeds",
    )
    p.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA, weights")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_device(p)
    p.set_defaults(run_command=commands.likelihood)

    p = sub.add_parser(
        "bench", help="run a benchmark script from benchmarks/", formatter_class=_Help
    )
    p.add_argument("name", nargs="?", help="benchmark name (see --list)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(run_command=commands.bench)

    p = sub.add_parser(
        "quickstart",
        help="train, sample and evaluate on built-in data; writes a report",
        formatter_class=_Help,
    )
    p.add_argument("--out", type=_path, default="sdegen-quickstart", help="output folder")
    p.add_argument("--fast", action="store_true", help="a few steps only (under a minute)")
    p.set_defaults(
        run_command=lambda a: __import__("sdegen.cli.quickstart", fromlist=["run"]).run(a)
    )

    p = sub.add_parser(
        "demo",
        help="sample an analytic Gaussian mixture with two solvers and "
        "print NFE, sample quality and log-likelihood",
        formatter_class=_Help,
    )
    p.add_argument("--sde", choices=sorted(SDES), default="vp", help="the SDE of the mixture")
    p.add_argument(
        "--nfe", type=positive_int, default=20, help="network-evaluation budget per solver"
    )
    p.add_argument("--n", type=_int_at_least(2), default=4000, help="number of samples")
    p.add_argument("--seed", type=_seed, default=0, help="seed of every draw")
    p.set_defaults(run_command=commands.demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run_command(args)
    except (ValueError, TypeError, OSError, FloatingPointError) as e:
        # one line: the message names the value and what is accepted (OSError: the path)
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"sdegen: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdegen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
