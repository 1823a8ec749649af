"""Sample-quality distances: Fréchet distance between Gaussians, sliced Wasserstein distance.

All in float64. Matrix square roots use torch.linalg.eigh with eigenvalues clamped at 0, so
rank-deficient covariances work without scipy.linalg.sqrtm's complex-valued path.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._utils import check_int
from ..models.base import as_float64

_F64 = torch.float64


def _as_f64(name: str, x: Any) -> Tensor:
    """`x` (a tensor, an array, or nested lists of numbers, arrays or tensors) as a float64
    tensor; ValueError naming `name` if non-finite."""
    if torch.is_tensor(x) and x.is_complex():
        raise ValueError(f"{name} must be real, got a {x.dtype} tensor")
    t = x.detach().to(_F64) if torch.is_tensor(x) else as_float64(name, x).detach()
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or inf)")
    return t


def _samples(name: str, x: Any, min_n: int) -> Tensor:
    """Samples of shape (N, *D), N >= min_n, prod(D) >= 1, as a float64 tensor (not flattened)."""
    t = _as_f64(name, x)
    n = t.shape[0] if t.ndim >= 1 else 0
    if n < min_n or t[:1].numel() == 0:
        shape = tuple(t.shape)
        msg = f"{name} needs shape (N, *D), N >= {min_n}, D nonempty; got {shape} (N={n})"
        raise ValueError(msg)
    return t


def _flatten_pair(x: Any, y: Any, min_n: int) -> tuple[Tensor, Tensor]:
    """Both sample sets as (N, D) / (M, D) float64 tensors; their per-sample shapes must agree."""
    xs, ys = _samples("x", x, min_n), _samples("y", y, min_n)
    if xs.shape[1:] != ys.shape[1:]:
        msg = f"x and y must share their per-sample shape, got {tuple(xs.shape)}, {tuple(ys.shape)}"
        raise ValueError(msg)
    return xs.reshape(xs.shape[0], -1), ys.reshape(ys.shape[0], -1).to(xs.device)


def _psd_sqrt(c: Tensor) -> Tensor:
    """Symmetric PSD square root of a symmetric (D, D) matrix, eigenvalues clamped at 0."""
    w, v = torch.linalg.eigh(c)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def _check_gaussian(mean: Any, cov: Any, names: str, d: int | None = None) -> tuple[Tensor, Tensor]:
    """Validated float64 (mean (D,), symmetrised cov (D, D)); `names` is "mean_name cov_name"."""
    mean_name, cov_name = names.split()
    m, c = _as_f64(mean_name, mean), _as_f64(cov_name, cov)
    if m.ndim != 1 or m.shape[0] == 0 or (d is not None and m.shape[0] != d):
        want = "(D,) with D >= 1" if d is None else f"({d},) to match the first Gaussian/x"
        raise ValueError(f"{mean_name} must have shape {want}, got {tuple(m.shape)}")
    d = m.shape[0]
    if c.shape != (d, d):
        raise ValueError(
            f"{cov_name} must have shape ({d}, {d}) to match {mean_name}, got {tuple(c.shape)}"
        )
    asym = float((c - c.T).abs().max())
    if asym > 1e-6 * max(float(c.abs().max()), 1e-300):
        raise ValueError(
            f"{cov_name} of shape {tuple(c.shape)} is not symmetric (max |C - C^T| = {asym:.3g})"
        )
    c = 0.5 * (c + c.T)
    lowest = float(torch.linalg.eigvalsh(c)[0])
    if lowest < -1e-6 * max(float(c.abs().max()), 1e-300):
        raise ValueError(
            f"{cov_name} must be positive semi-definite, but its smallest eigenvalue is "
            f"{lowest:.3g}"
        )
    return m, c


def gaussian_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and unbiased covariance of a sample set, in float64.

    Args:
        x: samples of shape (N, *D), N >= 2; each sample is flattened to D = prod(*D) features.

    Returns:
        ``(mean, cov)``: float64 of shape (D,) and (D, D) on x's device; cov divides by N - 1.
    """
    xs = _samples("x", x, min_n=2)
    xs = xs.reshape(xs.shape[0], -1)
    mean = xs.mean(dim=0)
    xc = xs - mean
    cov = (xc.T @ xc) / (xs.shape[0] - 1)
    return mean, 0.5 * (cov + cov.T)


def frechet_distance(mean1: Any, cov1: Any, mean2: Any, cov2: Any) -> float:
    """Squared Fréchet (2-Wasserstein) distance between two Gaussians: FID, Heusel et al. 2017.

    d^2 = ||m1 - m2||^2 + tr(C1 + C2 - 2 (C1^{1/2} C2 C1^{1/2})^{1/2}).

    Args:
        mean1, mean2: means of shape (D,); tensors or numpy arrays (converted to float64).
        cov1, cov2: symmetric (to relative 1e-6) positive semi-definite covariances, (D, D).

    Returns:
        d^2 as a Python float, >= 0. The trace term is the nuclear norm of C1^{1/2} C2^{1/2}
        (= tr (C1^{1/2} C2 C1^{1/2})^{1/2}); the roots come from ``torch.linalg.eigh`` with
        eigenvalues clamped at 0, so round-off and rank-deficient covariances are fine.

    Raises:
        ValueError: naming the argument and its shape on a shape mismatch, or on NaN/inf.
    """
    m1, c1 = _check_gaussian(mean1, cov1, "mean1 cov1")
    m2, c2 = _check_gaussian(mean2, cov2, "mean2 cov2", d=m1.shape[0])
    c2, diff = c2.to(c1.device), m1 - m2.to(m1.device)
    # singular values of S1 S2 are the square roots of the eigenvalues of S1 C2 S1; computing them
    # directly avoids taking sqrt of O(eps) round-off eigenvalues in a shared null space.
    tr_covmean = torch.linalg.svdvals(_psd_sqrt(c1) @ _psd_sqrt(c2)).sum()
    d2 = diff @ diff + torch.trace(c1) + torch.trace(c2) - 2.0 * tr_covmean
    return max(float(d2), 0.0)


def frechet_distance_from_samples(x: Tensor, y: Tensor) -> float:
    """Squared Fréchet distance between Gaussians fitted to two sample sets (Heusel et al. 2017).

    Args:
        x: samples of shape (N, *D), N >= 2.
        y: samples of shape (M, *D), M >= 2, same per-sample shape as x.

    Returns:
        ``frechet_distance(*gaussian_moments(x), *gaussian_moments(y))`` as a float.
    """
    xs, ys = _flatten_pair(x, y, min_n=2)
    return frechet_distance(*gaussian_moments(xs), *gaussian_moments(ys))


def frechet_distance_to_moments(x: Tensor, mean: Any, cov: Any) -> float:
    """Squared Fréchet distance from the Gaussian fitted to samples to N(mean, cov) (Heusel 2017).

    Args:
        x: samples of shape (N, *D), N >= 2, flattened to D = prod(*D) features.
        mean, cov: reference statistics of shape (D,) and (D, D), e.g. of a dataset.

    Returns:
        ``frechet_distance(*gaussian_moments(x), mean, cov)`` as a float.
    """
    mx, cx = gaussian_moments(x)
    m, c = _check_gaussian(mean, cov, "mean cov", d=mx.shape[0])
    return frechet_distance(mx, cx, m, c)


def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    *,
    projections: int = 256,
    p: int = 2,
    generator: torch.Generator | None = None,
) -> float:
    """Sliced p-Wasserstein distance between two empirical distributions (Bonneel et al. 2015).

    SW_p(x, y) = (mean_k W_p^p(<u_k, x>, <u_k, y>))^(1/p) over `projections` directions u_k
    drawn uniformly on the unit sphere with ``generator`` (on its device, then moved to x's).

    Each 1-D distance is the exact W_p between the projected empirical measures (uniform weights
    1/N and 1/M), from their sorted projections. Sizes may differ: the two step quantile
    functions are compared exactly on the merged grid of levels {i/N} U {j/M} (at most N + M - 1
    pieces), so no interpolation is involved; for N == M this is the sorted pairing.

    Args:
        x: samples of shape (N, *D), N >= 1, flattened to D = prod(*D) features.
        y: samples of shape (M, *D), M >= 1, same per-sample shape as x.
        projections: number of random directions K >= 1.
        p: order of the distance, an integer >= 1.
        generator: source of the random directions; pass a seeded one for reproducible values.

    Returns:
        SW_p as a Python float (a Monte Carlo estimate over the K directions when D > 1).
    """
    xs, ys = _flatten_pair(x, y, min_n=1)
    k, p = check_int("projections", projections, 1), check_int("p", p, 1)
    n, m, d, dev = xs.shape[0], ys.shape[0], xs.shape[1], xs.device
    gen_dev = generator.device if generator is not None else "cpu"
    dirs = torch.randn(k, d, generator=generator, dtype=_F64, device=gen_dev)
    dirs = (dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-300)).to(dev)
    px = (xs @ dirs.T).sort(dim=0).values  # (N, K)
    py = (ys @ dirs.T).sort(dim=0).values  # (M, K)

    # quantile levels in integer units of 1/(N M): x's quantile function steps at multiples of M,
    # y's at multiples of N; on each piece [left, right) both are constant (exact, no rounding)
    ar = torch.arange(max(n, m), device=dev)
    left = torch.unique(torch.cat([ar[:n] * m, ar[:m] * n]))
    right = torch.cat([left[1:], left.new_tensor([n * m])])
    w = ((right - left).to(_F64) / (n * m)).unsqueeze(1)
    diff = px[left // m] - py[left // n]
    wpp = (w * diff.abs().pow(p)).sum(dim=0)  # (K,) 1-D W_p^p per direction
    return float(wpp.mean() ** (1.0 / p))
