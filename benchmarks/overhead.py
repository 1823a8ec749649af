"""Per-step overhead of the fixed-grid samplers against k-diffusion's, with a trivial model.

Both libraries sample with the same trivial exact denoiser, D(x, sigma) = x / (1 + sigma^2)
(the posterior mean of N(0, I) data under VE noise sigma), so nearly all the time measured is
the samplers' own bookkeeping: sdegen through `KDiffusionModel` on the EDM SDE (alpha = 1,
sigma(t) = t, so it receives the same sigma), k-diffusion's `sample_*` functions directly on
sdegen's own grid of noise levels followed by sigma = 0. Batch 1, 2-D, float32, one thread.
Every denoiser call is counted by one wrapper shared by both sides; the figure reported is
wall time per call, the median over `--repeats` runs that alternate between the two libraries
(so both see the same machine load), and the ratio sdegen / k-diffusion of those medians.

    python benchmarks/overhead.py                 # ~1 minute on one core
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch

import sdegen
from sdegen.assembly import harness
from sdegen.models.adapters import KDiffusionModel

# sdegen method -> the k-diffusion sampler of the same update (see the README's name table)
PAIRS = {
    "k_euler": "sample_euler",
    "ddim": "sample_euler",
    "euler_ancestral": "sample_euler_ancestral",
    "k_heun": "sample_heun",
    "heun": "sample_heun",
    "dpm_2": "sample_dpm_2",
    "lms": "sample_lms",
    "dpmpp_2m": "sample_dpmpp_2m",
    "dpmpp_2s_ancestral": "sample_dpmpp_2s_ancestral",
}


class Counted:
    """D(x, sigma) = x / (1 + sigma^2), counting its calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
        return x / (1 + s * s)


def _sdegen_run(method: str, sde, nfe: int, seed: int) -> tuple[float, int]:
    d = Counted()
    model = KDiffusionModel(d, sde)
    g = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    sdegen.sample(model, sde, (1, 2), method=method, nfe=nfe, generator=g)
    return time.perf_counter() - start, d.calls


def _k_run(ks, name: str, sigmas: torch.Tensor, seed: int) -> tuple[float, int]:
    d = Counted()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 2, generator=g) * sigmas[0]
    kw = {}
    if "ancestral" in name:
        kw["noise_sampler"] = lambda s, s_next: torch.randn(1, 2, generator=g)
    start = time.perf_counter()
    getattr(ks, name)(d, x, sigmas, disable=True, **kw)
    return time.perf_counter() - start, d.calls


def measure(ks, nfe: int, repeats: int, seed: int) -> list[dict]:
    sde = sdegen.EDMSDE()
    records = []
    for method, k_name in PAIRS.items():
        # k-diffusion steps on sdegen's own grid for this method and budget, then to sigma = 0
        ts = sdegen.sample(KDiffusionModel(Counted(), sde), sde, (1, 2), method=method, nfe=nfe).ts
        sigmas = torch.cat([ts.to(torch.float32), torch.zeros(1)])
        ours, theirs, calls = [], [], (0, 0)
        _sdegen_run(method, sde, nfe, seed)  # warm-up of both paths
        _k_run(ks, k_name, sigmas, seed)
        for r in range(repeats):
            t_ours, n_ours = _sdegen_run(method, sde, nfe, seed + r)
            t_theirs, n_theirs = _k_run(ks, k_name, sigmas, seed + r)
            ours.append(t_ours / n_ours)
            theirs.append(t_theirs / n_theirs)
            calls = (n_ours, n_theirs)
        a, b = statistics.median(ours), statistics.median(theirs)
        records.append(
            {
                "method": method,
                "k_diffusion": k_name,
                "calls_sdegen": calls[0],
                "calls_k_diffusion": calls[1],
                "us_per_call_sdegen": 1e6 * a,
                "us_per_call_k_diffusion": 1e6 * b,
                "ratio": a / b,
                "spread_sdegen": 1e6 * (max(ours) - min(ours)),
                "spread_k_diffusion": 1e6 * (max(theirs) - min(theirs)),
            }
        )
        print(
            f"{method:20s} vs {k_name:26s} {1e6 * a:8.1f} / {1e6 * b:8.1f} us per call, "
            f"ratio {a / b:.2f} (calls {calls[0]} / {calls[1]})",
            flush=True,
        )
    return records


def markdown(records: list[dict], meta: dict) -> str:
    lines = [
        "# Per-step overhead against k-diffusion (trivial exact denoiser)",
        "",
        f"Batch 1, 2-D, float32, {meta['threads']} thread, budget NFE {meta['nfe']} (sdegen's "
        f"final denoise included; k-diffusion steps on the same grid to sigma = 0), median of "
        f"{meta['repeats']} alternating runs, seed {meta['seed']}, k-diffusion imported as: "
        f"{meta['k_diffusion']}. Microseconds of wall time per denoiser call; the spread is "
        "max - min over the runs.",
        "",
        "| sdegen | k-diffusion | calls | us/call sdegen | us/call k-diffusion | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        lines.append(
            f"| {r['method']} | {r['k_diffusion']} | {r['calls_sdegen']} / "
            f"{r['calls_k_diffusion']} | {r['us_per_call_sdegen']:.0f} "
            f"(± {r['spread_sdegen'] / 2:.0f}) | {r['us_per_call_k_diffusion']:.0f} "
            f"(± {r['spread_k_diffusion'] / 2:.0f}) | {r['ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = [r["method"] for r in records]
    ax.barh(names, [r["ratio"] for r in records], color="tab:blue")
    ax.axvline(1.0, color="0.4", ls="--")
    ax.set(xlabel="time per call, sdegen / k-diffusion", title="per-step overhead (trivial model)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict | None:
    p = harness.parser(__doc__)
    p.add_argument("--nfe", type=int, default=100, help="network-evaluation budget")
    p.add_argument("--repeats", type=int, default=15, help="alternating runs per sampler")
    args = harness.parse(
        p,
        argv,
        out=Path(__file__).parent / "results" / "overhead",
        seed=(0, "seed of the prior draws and the noise"),
        replot="rebuild table.md and the plot from results.json",
    )
    if args.replot:
        result = harness.load(args.out)
        figs = {"ratio.png": lambda path: plot(result["records"], path)}
        harness.save(args.out, None, markdown(result["records"], result["meta"]), figs)
        return None
    ks, how = harness.sibling(__file__, "_peers_adapters").load_k_diffusion()
    if ks is None:
        raise SystemExit(f"overhead needs k-diffusion to compare with: {how}")
    torch.set_num_threads(1)
    records = measure(ks, args.nfe, args.repeats, args.seed)
    meta = {
        "nfe": args.nfe,
        "repeats": args.repeats,
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "k_diffusion": how,
        "torch": torch.__version__,
    }
    result = {"meta": meta, "records": records}
    figs = {"ratio.png": lambda path: plot(records, path)}
    harness.save(args.out, result, markdown(records, meta), figs)
    return result


if __name__ == "__main__":
    main()
