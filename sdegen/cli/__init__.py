"""The `sdegen` command line: train | sample | likelihood | bench | quickstart | demo."""

from __future__ import annotations

import argparse
import sys

from ..solvers import METHODS
from . import commands
from .build import SDES


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdegen", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a score model from a config file")
    p.add_argument("--config", help="YAML or TOML run config (defaults apply without one)")
    p.add_argument(
        "--run",
        "--run-dir",
        dest="run",
        required=True,
        help="run folder for checkpoints and logs (--run-dir under torchrun)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set steps=500 --set sde=ve",
    )
    p.add_argument("--resume", action="store_true", help="continue the run in --run")
    p.add_argument(
        "--conditional",
        action="store_true",
        help="class-conditional model with label dropout (config keys conditional, p_uncond)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1... (default: the config's, auto)")
    p.set_defaults(run_command=commands.train)

    p = sub.add_parser("sample", help="sample a trained run; writes .npz and .png")
    p.add_argument("--run", "--run-dir", dest="run", required=True)
    p.add_argument("--method", default="dpmpp_2m", choices=list(METHODS))
    p.add_argument("--nfe", type=int, default=None, help="network-evaluation budget")
    p.add_argument("--steps", type=int, default=50, help="steps (when --nfe is not given)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-ema", action="store_true", help="use the raw, not the EMA, weights")
    p.add_argument(
        "--class",
        dest="class_label",
        type=int,
        default=None,
        help="sample this class (conditional runs; -1: unconditional)",
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance weight w with --class (0 uncond., 1 cond., >1 guided)",
    )
    p.add_argument("--out", help="output path without suffix (default: RUN/samples/...)")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda...")
    p.set_defaults(run_command=commands.sample)

    p = sub.add_parser("likelihood", help="NLL (nats) and bits/dim of a split under the PF-ODE")
    p.add_argument("--run", "--run-dir", dest="run", required=True)
    p.add_argument("--split", choices=["test", "train"], default="test")
    p.add_argument("--n", type=int, default=0, help="first N examples (0: all)")
    p.add_argument("--trace", choices=["exact", "hutchinson"], default="exact")
    p.add_argument("--rtol", type=float, default=1e-5)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0, help="dequantization / probe seed")
    p.add_argument("--no-ema", action="store_true")
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda...")
    p.set_defaults(run_command=commands.likelihood)

    p = sub.add_parser("bench", help="run a benchmark script from benchmarks/")
    p.add_argument("name")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="arguments for the benchmark")
    p.set_defaults(run_command=commands.bench)

    p = sub.add_parser(
        "quickstart", help="train, sample and evaluate on built-in data; writes a report"
    )
    p.add_argument("--out", default="sdegen-quickstart")
    p.add_argument("--fast", action="store_true", help="a few steps only (for testing)")
    p.set_defaults(
        run_command=lambda a: __import__("sdegen.cli.quickstart", fromlist=["run"]).run(a)
    )

    p = sub.add_parser(
        "demo",
        help="sample an analytic Gaussian mixture with two solvers and "
        "print NFE, sample quality and log-likelihood",
    )
    p.add_argument("--sde", choices=sorted(SDES), default="vp")
    p.add_argument("--nfe", type=int, default=20, help="network-evaluation budget per solver")
    p.add_argument("--n", type=int, default=4000, help="number of samples")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(run_command=commands.demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run_command(args)
    except (ValueError, TypeError, FileNotFoundError, FloatingPointError) as e:
        print(f"sdegen: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdegen: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
