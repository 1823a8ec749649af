"""Sample-quality metrics: Fréchet distance (FID-style) and sliced Wasserstein distance."""

from .distances import (
    frechet_distance,
    frechet_distance_from_samples,
    frechet_distance_to_moments,
    gaussian_moments,
    sliced_wasserstein,
)

__all__ = [
    "gaussian_moments",
    "frechet_distance",
    "frechet_distance_from_samples",
    "frechet_distance_to_moments",
    "sliced_wasserstein",
]
