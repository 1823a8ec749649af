"""PNG figures of samples, densities, losses and quality against NFE: the command line, the
quickstart report and the benchmarks draw with these (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402


def image_grid(x: Tensor, path: Path, nrow: int | None = None, title: str = "") -> None:
    """Save images x of shape (N, C, H, W) with values in [-1, 1] as one grid PNG."""
    n, c, h, w = x.shape
    nrow = nrow or max(1, int(n**0.5))
    ncol = -(-n // nrow)
    canvas = torch.ones(c, ncol * (h + 1) + 1, nrow * (w + 1) + 1)
    img = (x.detach().float().cpu().clamp(-1, 1) + 1) / 2
    for i in range(n):
        r, col = divmod(i, nrow)
        canvas[
            :, 1 + r * (h + 1) : 1 + r * (h + 1) + h, 1 + col * (w + 1) : 1 + col * (w + 1) + w
        ] = img[i]
    fig, ax = plt.subplots(figsize=(0.5 * nrow + 1, 0.5 * ncol + 1))
    ax.imshow(canvas.permute(1, 2, 0).squeeze(-1).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def scatter(x: Tensor, path: Path, reference: Tensor | None = None, title: str = "") -> None:
    """Save a scatter plot of 2-D points (first two coordinates), over reference points if given."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    if reference is not None:
        r = reference.detach().float().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=1, c="0.75", label="data")
    p = x.detach().float().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=1, c="C0", label="samples")
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=9)
    ax.legend(markerscale=6, fontsize=8, loc="upper right")
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def densities(
    panels: list[tuple[str, Tensor]], extent: tuple[float, float, float, float], path: Path
) -> None:
    """Save side-by-side heat maps of densities exp(log p) on a grid, one panel each."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (title, logp) in zip(axes[0], panels):
        ax.imshow(logp.exp().T.flip(0).cpu().numpy(), extent=extent, cmap="magma")
        ax.set_title(title, fontsize=9)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def loss_curve(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    """Save training-loss curves (step, loss), one line each, log-scale loss axis."""
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for name, pts in curves.items():
        ax.plot(*zip(*pts), label=name)
    ax.set(xlabel="step", ylabel="loss", yscale="log")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def quality_vs_nfe(
    series: dict[str, list[tuple[int, float]]], floor: float | None, ylabel: str, path: Path
) -> None:
    """Save quality-against-NFE curves, one per sampler, with the metric's noise floor."""
    quality_vs_nfe_panels({"": (series, floor)}, ylabel, path)


Series = dict[str, list[tuple[int, float]]]


def quality_vs_nfe_panels(
    panels: dict[str, tuple[Series, float | None]],
    ylabel: str,
    path: Path,
    style: Callable[[str, list[tuple[int, float]]], str] | None = None,
) -> None:
    """Save one log-log panel per title: quality-against-NFE curves, one per series name, and
    the panel's noise floor (None: no floor line). `style(name, points)` gives a curve's
    matplotlib format string (default ".-")."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    for ax, (title, (series, floor)) in zip(axes[0], panels.items()):
        for name, pts in series.items():
            pts = sorted(pts)
            ax.plot(*zip(*pts), style(name, pts) if style else ".-", label=name)
        if floor is not None:
            ax.axhline(floor, color="k", ls=":", label="noise floor")
        ax.set(xscale="log", yscale="log", xlabel="NFE (counted)", ylabel=ylabel, title=title)
    axes[0][-1].legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
