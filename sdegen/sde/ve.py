"""Variance-exploding SDEs: SMLD/NCSN's geometric sigma and the EDM schedule sigma(t) = t."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import check_finite_number
from .base import LinearSDE


def _check_sigmas(sigma_min: float, sigma_max: float) -> tuple[float, float]:
    lo = check_finite_number("sigma_min", sigma_min, positive=True)
    hi = check_finite_number("sigma_max", sigma_max, positive=True)
    if lo >= hi:
        raise ValueError(
            f"sigma_min must be < sigma_max, got sigma_min={sigma_min!r}, sigma_max={sigma_max!r}"
        )
    return lo, hi


class VESDE(LinearSDE):
    """VE SDE dx = sqrt(d sigma^2/dt) dW with sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    Song et al. 2021 (SMLD in continuous time, their eq. 30); alpha = 1, prior N(0, sigma_max^2 I).
    Defaults follow their CIFAR-10 setting (sigma_min 0.01, sigma_max 50, t_min 1e-5).
    """

    def __init__(
        self,
        sigma_min: float = 0.01,
        sigma_max: float = 50.0,
        *,
        t_min: float = 1e-5,
        T: float = 1.0,
    ) -> None:
        self.sigma_min, self.sigma_max = _check_sigmas(sigma_min, sigma_max)
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)
        super().__init__(t_min=t_min, T=T, prior_std=self.sigma_max)

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(t * self._log_ratio)

    def _f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _g2(self, t: Tensor) -> Tensor:
        return 2 * self._log_ratio * self._sigma(t) ** 2

    def _half_log_snr(self, t: Tensor) -> Tensor:
        return -(math.log(self.sigma_min) + t * self._log_ratio)

    def _t_of_half_log_snr(self, lam: Tensor) -> Tensor:
        return (-lam - math.log(self.sigma_min)) / self._log_ratio

    def __repr__(self) -> str:
        return (
            f"VESDE(sigma_min={self.sigma_min:g}, sigma_max={self.sigma_max:g}, "
            f"t_min={self.t_min:g}, T={self.T:g})"
        )


class EDMSDE(LinearSDE):
    """The EDM schedule sigma(t) = t, alpha = 1: dx = sqrt(2t) dW (Karras et al. 2022).

    Time is the noise level, t in [sigma_min, sigma_max] (defaults 0.002 and 80); prior
    N(0, sigma_max^2 I).
    """

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        lo, hi = _check_sigmas(sigma_min, sigma_max)
        super().__init__(t_min=lo, T=hi, prior_std=hi)

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def _sigma(self, t: Tensor) -> Tensor:
        return t

    def _f(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def _g2(self, t: Tensor) -> Tensor:
        return t + t  # 2 t exactly, without wrapping the Python 2 in a tensor per call

    def _half_log_snr(self, t: Tensor) -> Tensor:
        return -torch.log(t)

    def _t_of_half_log_snr(self, lam: Tensor) -> Tensor:
        return torch.exp(-lam)

    def __repr__(self) -> str:
        return f"EDMSDE(sigma_min={self.t_min:g}, sigma_max={self.T:g})"
