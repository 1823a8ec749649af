"""What every benchmark script shares: finding and loading the scripts, their common options,
the metrics and noise floors of the analytic-mixture benchmarks, and writing the results.

A benchmark is a script in benchmarks/ with a `main(argv)`; files whose names start with "_"
are its helpers, not benchmarks. A run writes, into one --out folder, results.json (every
number, with its sample counts and noise floors, and a "meta" record of the settings and the
machine), table.md (the tables of the README) and PNGs, and prints which files it wrote;
--replot rebuilds the table and the PNGs from results.json without running anything.

This lives in the package, not in benchmarks/, so that a script imports it however it is
started (`python benchmarks/x.py`, `sdegen bench x`, a test loading the file) without putting
benchmarks/ on sys.path, and so that `sdegen bench` and the scripts that reuse a sibling share
one loader.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

# ---- finding and loading the scripts ------------------------------------------------------------

BENCHMARKS_ENV = "SDEGEN_BENCHMARKS"
# benchmarks/ of the source checkout this package sits in (a clone or an editable install)
CHECKOUT_BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def benchmark_dirs() -> list[Path]:
    """Where benchmarks are looked for, in order: $SDEGEN_BENCHMARKS alone when it is set; else
    benchmarks/ beside the package, then ./benchmarks (a clone one works in with sdegen
    installed from a wheel)."""
    if os.environ.get(BENCHMARKS_ENV):
        return [Path(os.environ[BENCHMARKS_ENV])]
    cwd = Path.cwd() / "benchmarks"
    return [CHECKOUT_BENCHMARKS] + ([cwd] if cwd.resolve() != CHECKOUT_BENCHMARKS else [])


def benchmark_names(folder: Path) -> list[str]:
    """The benchmarks of `folder`: its .py files with a main function, "_" helpers left out."""
    if not folder.is_dir():
        return []
    return sorted(
        p.stem
        for p in folder.glob("*.py")
        if not p.name.startswith("_") and "def main(" in p.read_text()
    )


def find_benchmarks() -> tuple[Path | None, list[str]]:
    """The first folder of benchmark_dirs() holding benchmarks, and their names; (None, [])
    when none does."""
    for folder in benchmark_dirs():
        names = benchmark_names(folder)
        if names:
            return folder, names
    return None, []


def load_script(path: Path) -> types.ModuleType:
    """The Python file `path` as a module named by its stem, kept in sys.modules (dataclasses
    and pickling look modules up there), so that a script is loaded once per process. When that
    name belongs to a module from elsewhere, it is left in place and the script is not kept."""
    path = Path(path)
    name = path.stem
    known = sys.modules.get(name)
    if known is not None:
        here = getattr(known, "__file__", None)
        if here is not None and Path(here).resolve() == path.resolve():
            return known
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load {path} as a Python module")
    module = importlib.util.module_from_spec(spec)
    if known is None:
        sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        if known is None:
            del sys.modules[name]
        raise
    return module


def sibling(file: str | Path, name: str) -> types.ModuleType:
    """Another script of the folder holding `file` (pass __file__), as a module: benchmarks/
    is not a package."""
    return load_script(Path(file).resolve().parent / f"{name}.py")


# ---- options ------------------------------------------------------------------------------------

Option = Any  # a default value, or (default, help)
_HELP = {
    "seed": None,
    "seeds": "sampler seeds averaged per cell",
    "floor_sets": "true sets for the noise floor",
    "threads": "torch intra-op threads",
}


def parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser described by the first line of the script's docstring."""
    return argparse.ArgumentParser(description=(doc or "").split("\n")[0])


def parse(
    p: argparse.ArgumentParser,
    argv: list[str] | None,
    *,
    out: Path | None,
    out_help: str | None = None,
    seed: Option = None,
    seeds: Option = None,
    floor_sets: Option = None,
    threads: Option = None,
    quick: str | None = None,
    replot: bool | str = True,
) -> argparse.Namespace:
    """Add the common options a benchmark asks for after its own, and parse argv.

    seed, seeds, floor_sets and threads give --seed, --seeds, --floor-sets and --threads their
    default (None: no such option), or (default, help); quick is the help of a --quick
    smoke-run flag (None: none); --out (default `out`) is the results folder and --replot
    rebuilds its table and PNGs from its results.json (replot: False for no such flag, or its
    help when it does less).
    """
    for key, value in (
        ("seed", seed),
        ("seeds", seeds),
        ("floor_sets", floor_sets),
        ("threads", threads),
    ):
        if value is not None:
            default, help = value if isinstance(value, tuple) else (value, _HELP[key])
            p.add_argument("--" + key.replace("_", "-"), type=int, default=default, help=help)
    if quick is not None:
        p.add_argument("--quick", action="store_true", help=quick)
    p.add_argument("--out", type=Path, default=out, help=out_help)
    if replot:
        help = replot if isinstance(replot, str) else "rebuild table and PNGs from results.json"
        p.add_argument("--replot", action="store_true", help=help)
    return p.parse_args(argv)


def nfe_panels(result: dict, series: str, metric: str = "sliced_w2") -> dict:
    """The panels of `plots.quality_vs_nfe_panels` from a per-SDE benchmark result: one per
    SDE of result["noise_floor"] (its floor: noise_floor[sde][metric]), a curve per value of
    each record's `series` key, points (nfe, metric); records marked "skipped" left out."""
    panels = {}
    for sde, floor in result["noise_floor"].items():
        curves: dict[str, list] = {}
        for r in result["records"]:
            if r["sde"] == sde and "skipped" not in r:
                curves.setdefault(r[series], []).append((r["nfe"], r[metric]))
        panels[sde] = (curves, floor[metric])
    return panels


def cells(methods: Iterable[str], nfes: list[int]) -> Iterator[tuple[str, int | None]]:
    """(method, NFE budget) pairs; an adaptive method runs once, with budget None."""
    from ..solvers import METHODS

    for method in methods:
        for budget in [None] if METHODS[method].nfe is None else nfes:
            yield method, budget


# ---- metrics and noise floors of an analytic mixture ------------------------------------------

PROJ_SEED = 12345  # the same projection directions for every sliced-Wasserstein value


def mixture_metrics(x: torch.Tensor, model, reference: torch.Tensor) -> dict[str, float]:
    """Samples x against an analytic mixture `model`: the Frechet distance of their Gaussian
    fit to its true moments and the sliced W2 to `reference` (true samples); inf when x holds
    NaN or inf."""
    from ..metrics import frechet_distance_to_moments, sliced_wasserstein

    x = x.to(torch.float64)
    if not bool(torch.isfinite(x).all()):
        return {"frechet": math.inf, "sliced_w2": math.inf}
    return {
        "frechet": frechet_distance_to_moments(x, model.mean(), model.cov()),
        "sliced_w2": sliced_wasserstein(
            x, reference, generator=torch.Generator().manual_seed(PROJ_SEED)
        ),
    }


def mixture_runs(
    model, sde, reference: torch.Tensor, *, method: str, n: int, seed: int, seeds: int, **kw
) -> tuple[Any, dict]:
    """Sample n points with `method` (keyword arguments kw: nfe, options) from `seeds` prior
    draws (seeds seed, seed + 1, ...) and score each by mixture_metrics: (the last result, the
    record fields nfe, steps, seeds, schedule and the mean and std of frechet, sliced_w2 and
    seconds). Raises ValueError when the budget is below one step of the method."""
    from ..solvers import METHODS, sample

    runs = []
    for k in range(seeds):
        start = time.perf_counter()
        res = sample(
            model, sde, (n, *reference.shape[1:]), method=method,
            generator=torch.Generator().manual_seed(seed + k), **kw,
        )  # fmt: skip
        runs.append(
            {"seconds": time.perf_counter() - start, **mixture_metrics(res.x, model, reference)}
        )
    fields: dict[str, Any] = {
        "nfe": res.nfe,
        "steps": len(res.ts) - 1,
        "seeds": seeds,
        "schedule": METHODS[method].default_schedule(sde),
    }
    for key in ("frechet", "sliced_w2", "seconds"):
        fields[key], fields[key + "_std"] = mean_std([r[key] for r in runs])
    return res, fields


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and standard deviation (0 for a single value)."""
    t = torch.tensor(values, dtype=torch.float64)
    return float(t.mean()), float(t.std()) if len(values) > 1 else 0.0


def noise_floor(model, reference: torch.Tensor, n: int, seed: int, sets: int) -> dict:
    """mixture_metrics of `sets` independent true sets of n samples (seeds seed + 100 + k)
    against the reference set: mean and std of each, and the number of sets."""
    runs = [
        mixture_metrics(
            model.sample(n, generator=torch.Generator().manual_seed(seed + 100 + k)),
            model,
            reference,
        )
        for k in range(sets)
    ]
    out: dict[str, Any] = {"sets": sets}
    for key in ("frechet", "sliced_w2"):
        out[key], out[key + "_std"] = mean_std([r[key] for r in runs])
    return out


# ---- the record of a run ------------------------------------------------------------------------


def environment() -> dict:
    """torch and sdegen versions, torch threads, machine and CPU count, for a run's meta."""
    from .. import __version__

    return {
        "torch": torch.__version__,
        "sdegen": __version__,
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


def git_commit() -> str | None:
    """HEAD of the sdegen checkout, with "+dirty" when the tree has changes; None outside git."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def version(dist: str) -> str | None:
    """The installed version of distribution `dist`, or None."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---- writing ------------------------------------------------------------------------------------

RESULTS, TABLE = "results.json", "table.md"


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load(out: Path) -> dict:
    """The results.json of `out`, for --replot."""
    path = Path(out) / RESULTS
    if not path.is_file():
        raise FileNotFoundError(
            f"--replot needs {path}: run the benchmark first, or give --out its folder"
        )
    return json.loads(path.read_text())


def save(
    out: Path,
    result: dict | None,
    table: str | None,
    figures: Mapping[str, Callable[[Path], object]] | None = None,
    *,
    also: Iterable[str] = (),
) -> list[str]:
    """Write a run into `out`: results.json from `result` (None: keep the file, as --replot
    does), table.md from `table` (None: none), and each PNG by figures[name](out / name); print
    which files were written (`also`: ones the benchmark wrote itself) and return their names.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if result is not None:
        (out / RESULTS).write_text(json.dumps(result, indent=1))
        written.append(RESULTS)
    if table is not None:
        (out / TABLE).write_text(table)
        written.append(TABLE)
    for name, draw in (figures or {}).items():
        draw(out / name)
        written.append(name)
    written += [name for name in also if name not in written]
    print(f"wrote {', '.join(written)} in {out}")
    return written


# ---- splitting the examples over processes (torchrun) -----------------------------------------


def batch_slices(n: int, batch_size: int, rank: int = 0, world: int = 1) -> list[slice]:
    """The batches of examples 0..n-1 that process `rank` of `world` computes: example k lies in
    batch k // batch_size whatever the number of processes, and batch j goes to process
    j % world (round robin). Each batch is then the same computation under 1, 2 or N processes,
    which makes their outputs bit-identical; EDM's generate.py (Karras et al. 2022) splits the
    examples by the number of processes instead, so its batches, and with them its outputs,
    change with it.

    Example:
        >>> batch_slices(10, 4, rank=1, world=2)
        [slice(4, 8, None)]
    """
    from .._utils import check_int

    n, batch_size = check_int("n", n, 0), check_int("batch_size", batch_size, 1)
    world = check_int("world", world, 1)
    rank = check_int("rank", rank, 0, world - 1)
    starts = range(rank * batch_size, n, world * batch_size)
    return [slice(k, min(k + batch_size, n)) for k in starts]


def process_device(device: torch.device | None) -> torch.device | None:
    """This process's device under torchrun: a bare "cuda" becomes cuda:LOCAL_RANK (and the
    current CUDA device, which NCCL's collectives use), so that the processes of one machine
    take one GPU each; any other device is returned as it is."""
    local = os.environ.get("LOCAL_RANK")
    if device is None or device.type != "cuda" or device.index is not None or local is None:
        return device
    device = torch.device("cuda", int(local))
    torch.cuda.set_device(device)
    return device


def map_batches(
    fn: Callable[[slice, Any], Any], n: int, batch_size: int, generator=None
) -> list[Any]:
    """fn(rows, generator of those rows) for each batch of examples 0..n-1 (rows: a slice), the
    results in batch order (their tensors moved to the CPU).

    With a `sdegen.random.PerExampleGenerator` of n seeds, each batch gets its rows' view
    (example k's draws come from seed k in whichever batch) and, under torchrun (a process
    group of several processes), the batches are dealt to the processes by `batch_slices` and
    every result reaches every process (all_gather_object); every process must then call this
    with the same arguments. With a torch.Generator or None the batches run here, in order,
    each continuing the generator's one stream, as a single loop over them would.
    """
    from ..random import PerExampleGenerator

    per_example = isinstance(generator, PerExampleGenerator)
    if per_example and len(generator) != n:
        raise ValueError(
            f"the per-example generator holds {len(generator)} seeds for {n} examples; give "
            "one seed per example"
        )
    rank, world = 0, 1
    if per_example:
        from ..training import init_distributed

        rank, world = init_distributed(str(generator.device))
    mine = [  # (batch index, its result)
        (rows.start // batch_size, _on_cpu(fn(rows, generator[rows] if per_example else generator)))
        for rows in batch_slices(n, batch_size, rank, world)
    ]
    if world == 1:
        return [result for _, result in mine]
    import torch.distributed as dist

    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, mine)
    return [result for _, result in sorted((p for part in parts for p in part), key=lambda p: p[0])]


def _on_cpu(obj: Any) -> Any:
    """obj with every tensor in it (in tuples, lists, dicts and dataclasses) on the CPU."""
    import dataclasses

    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, (tuple, list)):
        return type(obj)(_on_cpu(v) for v in obj)
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: _on_cpu(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return dataclasses.replace(obj, **fields)
    return obj


# sample()'s arguments that hold one row per example, shape (n, ...): each batch gets its rows
PER_EXAMPLE_KWARGS = ("noise", "y", "x_init", "known", "mask", "y_obs")


def sample_batches(
    model, sde, shape: tuple[int, ...], *, batch_size: int | None = None, generator=None, **kw
) -> tuple[torch.Tensor, list[Any]]:
    """`sdegen.sample` of shape (n, *D) in batches of `batch_size` (None: one batch of n), split
    over the torchrun processes as `map_batches` splits them: with a PerExampleGenerator of n
    seeds (`sdegen.random`) the samples are bit-identical under 1, 2 or N processes; with a
    torch.Generator (or None, or no randomness at all: a deterministic method from given
    `noise`) the batches run in this process, in order. Keyword arguments go to `sample`; those
    in PER_EXAMPLE_KWARGS with n rows are sliced to each batch's rows. Returns the samples
    (n, *D) on the CPU, the same on every process, and each batch's SolveResult (for its nfe).
    """
    from .._utils import check_int
    from ..solvers import sample

    n = check_int("shape[0]", shape[0], 1)
    batch_size = n if batch_size is None else check_int("batch_size", batch_size, 1)

    def rowwise(v) -> bool:  # a tensor or list (labels y=[...]) with one row per example
        rows = isinstance(v, (list, tuple)) or (torch.is_tensor(v) and v.ndim > 0)
        return rows and len(v) == n

    def one(rows: slice, gen) -> Any:
        part: dict[str, Any] = {
            k: v[rows] if k in PER_EXAMPLE_KWARGS and rowwise(v) else v for k, v in kw.items()
        }
        b = rows.stop - rows.start
        return sample(model, sde, (b, *shape[1:]), generator=gen, **part)

    results = map_batches(one, n, batch_size, generator)
    return torch.cat([r.x for r in results]), results
