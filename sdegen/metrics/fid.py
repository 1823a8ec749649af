"""FID and KID on pluggable features (`sdegen.metrics.features`).

FID (Heusel et al. 2017) is the squared Fréchet distance between Gaussian fits of the two
feature sets; KID (Binkowski et al. 2018) the unbiased MMD^2 with the cubic polynomial kernel
k(a, b) = (a.b / F + 1)^3, averaged over random subsets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._utils import check_int
from .distances import frechet_distance_from_samples, frechet_distance_to_moments
from .features import FeatureFn, get_features

__all__ = ["fid", "fid_to_moments", "kid", "KIDResult", "polynomial_mmd2"]


def _extractor(features: str | FeatureFn, kwargs: dict[str, Any]) -> FeatureFn:
    if callable(features):
        if kwargs:
            raise TypeError(f"feature options {sorted(kwargs)} need a feature name, not a callable")
        return features
    if not isinstance(features, str):
        raise TypeError(f"features must be a name or a callable, got {type(features).__name__}")
    return get_features(features, **kwargs)


def fid(x: Tensor, y: Tensor, *, features: str | FeatureFn = "raw", **feature_kwargs: Any) -> float:
    """Fréchet distance between Gaussian fits of the features of x and y (FID, Heusel 2017).

    Args:
        x: samples of shape (N, *D), N >= 2.
        y: reference samples of shape (M, *D), M >= 2.
        features: "raw", "digits", "inception" (see `FEATURES`) or a callable
            ``(B, *D) -> (B, F)``; `feature_kwargs` go to the named extractor (e.g. path=).

    Returns:
        FID as a float >= 0 (`frechet_distance` of the two moment pairs, covariances / (N-1)).
    """
    extract = _extractor(features, feature_kwargs)
    return frechet_distance_from_samples(extract(x), extract(y))


def fid_to_moments(
    x: Tensor, mean: Any, cov: Any, *, features: str | FeatureFn = "raw", **feature_kwargs: Any
) -> float:
    """FID of samples x (N, *D) to reference feature statistics N(mean (F,), cov (F, F)),
    e.g. ``gaussian_moments(get_features(name)(data))`` computed once for a data set."""
    extract = _extractor(features, feature_kwargs)
    return frechet_distance_to_moments(extract(x), mean, cov)


@dataclass(frozen=True)
class KIDResult:
    """KID estimate: `mean` and `std` of the per-subset unbiased MMD^2 over `subsets` random
    subsets of `subset_size` from each set (std is nan for one subset). The subsets overlap,
    so std is the spread of one subset's estimate, not the standard error of `mean`."""

    mean: float
    std: float
    subsets: int
    subset_size: int


def polynomial_mmd2(x: Tensor, y: Tensor) -> Tensor:
    """Unbiased MMD^2 with k(a, b) = (a.b / F + 1)^3 between x (m, F) and y (n, F), m, n >= 2:

    sum_{i!=j} k(x_i, x_j) / (m(m-1)) + sum_{i!=j} k(y_i, y_j) / (n(n-1))
    - 2 sum_{i,j} k(x_i, y_j) / (m n).   Returns a 0-dim tensor (it can be < 0)."""
    m, n, d = x.shape[0], y.shape[0], x.shape[1]
    if min(m, n) < 2:
        raise ValueError(f"polynomial_mmd2 needs at least 2 samples in each set, got {m} and {n}")
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return sxx + syy - 2 * kxy.mean()


def kid(
    x: Tensor,
    y: Tensor,
    *,
    features: str | FeatureFn = "raw",
    subsets: int = 100,
    subset_size: int | None = None,
    generator: torch.Generator | None = None,
    **feature_kwargs: Any,
) -> KIDResult:
    """Kernel Inception Distance (Binkowski et al. 2018) between the features of x and y.

    For each of `subsets` rounds, `subset_size` rows are drawn without replacement from each
    feature set (with `generator`, on its device) and `polynomial_mmd2` is computed in float64.

    Args:
        x: samples of shape (N, *D); y: samples of shape (M, *D).
        features: as in `fid`; the default "raw" makes ``kid(fx, fy)`` work on ready features.
        subsets: number of rounds, >= 1.
        subset_size: rows per round, 2 <= subset_size <= min(N, M); default min(N, M, 1000).
        generator: source of the subsets; pass a seeded one for reproducible values.

    Returns:
        `KIDResult` with the mean and std over rounds.
    """
    extract = _extractor(features, feature_kwargs)
    fx, fy = extract(x), extract(y)
    if fx.ndim != 2 or fy.ndim != 2 or fx.shape[1] != fy.shape[1]:
        shapes = f"{tuple(fx.shape)} and {tuple(fy.shape)}"
        raise ValueError(f"features of x and y must be (N, F) and (M, F), got {shapes}")
    n, m = fx.shape[0], fy.shape[0]
    subsets = check_int("subsets", subsets, 1)
    size = min(n, m, 1000) if subset_size is None else check_int("subset_size", subset_size, 2)
    if size < 2 or size > min(n, m):
        raise ValueError(
            f"subset_size must be in 2..min(N, M) = {min(n, m)} (N={n}, M={m}), got {size}"
        )
    fx, fy = fx.to(torch.float64), fy.to(device=fx.device, dtype=torch.float64)
    gen_dev = generator.device if generator is not None else "cpu"
    values = torch.empty(subsets, dtype=torch.float64)
    for k in range(subsets):
        ix = torch.randperm(n, generator=generator, device=gen_dev)[:size].to(fx.device)
        iy = torch.randperm(m, generator=generator, device=gen_dev)[:size].to(fx.device)
        values[k] = polynomial_mmd2(fx[ix], fy[iy]).cpu()
    std = float(values.std()) if subsets > 1 else math.nan
    return KIDResult(float(values.mean()), std, subsets, size)
