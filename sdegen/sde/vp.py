"""Variance-preserving SDEs (DDPM's continuous limit) and sub-VP, over three beta schedules.

Every VP-family SDE is fixed by the integrated rate B(t) = int_0^t beta(s) ds, i.e. by
alpha_bar(t) = exp(-B(t)) in DDPM's notation:

    VP:      alpha = exp(-B/2), sigma^2 = 1 - exp(-B),      f = -beta/2, g^2 = beta
    sub-VP:  alpha = exp(-B/2), sigma   = 1 - exp(-B),      f = -beta/2, g^2 = beta (1 - exp(-2B))

(Song et al. 2021, "Score-based generative modeling through SDEs", eqs. 11 and 29.)
A schedule supplies B(t), beta(t) and the inverse t(B); the SDE classes add alpha and sigma.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .._utils import check_choice, check_finite_number, check_int
from .base import LinearSDE


class LinearBeta:
    """beta(t) = beta_min + t (beta_max - beta_min) (Ho et al. 2020 in continuous time)."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        self.beta_min = check_finite_number("beta_min", beta_min, positive=True)
        self.beta_max = check_finite_number("beta_max", beta_max, positive=True)
        if self.beta_min > self.beta_max:
            raise ValueError(
                f"beta_min must be <= beta_max, got beta_min={beta_min!r}, beta_max={beta_max!r}"
            )

    def B(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + (self.beta_max - self.beta_min) * t

    def t_of_B(self, B: Tensor) -> Tensor:
        # Root of the quadratic, written without cancellation for small B.
        d = self.beta_max - self.beta_min
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * d * B))

    def __repr__(self) -> str:
        return f"linear(beta_min={self.beta_min:g}, beta_max={self.beta_max:g})"


class CosineBeta:
    """alpha_bar(t) = cos^2(phi(t)) / cos^2(phi(0)), phi(t) = (t + s)/(1 + s) * pi/2.

    Nichol & Dhariwal 2021, "Improved denoising diffusion probabilistic models", eq. 17.
    alpha_bar(1) = 0, so T must stay below 1: `t_max()` is where beta(t) reaches `beta_max`
    (999 by default, the clip of Nichol & Dhariwal's discrete betas, giving T ~ 0.998).
    """

    def __init__(self, s: float = 0.008) -> None:
        self.s = check_finite_number("s", s, nonnegative=True)
        self._log_cos0 = math.log(math.cos(self.s / (1 + self.s) * math.pi / 2))

    def _phi(self, t: Tensor) -> Tensor:
        return (t + self.s) / (1 + self.s) * (math.pi / 2)

    def B(self, t: Tensor) -> Tensor:
        return -2 * (torch.log(torch.cos(self._phi(t))) - self._log_cos0)

    def beta(self, t: Tensor) -> Tensor:
        return math.pi / (1 + self.s) * torch.tan(self._phi(t))

    def t_of_B(self, B: Tensor) -> Tensor:
        phi = torch.arccos(torch.exp(-0.5 * B + self._log_cos0))
        return phi * 2 * (1 + self.s) / math.pi - self.s

    def t_max(self, beta_max: float = 999.0) -> float:
        return math.atan(beta_max * (1 + self.s) / math.pi) * 2 * (1 + self.s) / math.pi - self.s

    def __repr__(self) -> str:
        return f"cosine(s={self.s:g})"


class DiscreteBeta:
    """The N-step DDPM schedule beta_1..beta_N as a continuous one: B(t) piecewise linear.

    Knot k (t = k/N) carries B = -log alpha_bar_k = -sum_{j<=k} log(1 - beta_j), so at
    t = (i+1)/N the SDE's kernel equals DDPM's q(x_i | x_0) for the 0-based timestep i, and
    beta(t) = N * -log(1 - beta_k) on ((k-1)/N, k/N]. Continuous solvers then run discrete models.
    """

    def __init__(self, betas: Tensor | np.ndarray | list[float]) -> None:
        try:
            b = torch.as_tensor(np.asarray(betas, dtype=np.float64))
        except (TypeError, ValueError) as err:
            msg = f"betas must be a 1-D array of numbers, got {betas!r} ({err})"
            raise ValueError(msg) from None
        if b.ndim != 1 or b.numel() < 2:
            raise ValueError(
                f"betas must be a 1-D array of at least 2 values, got shape {tuple(b.shape)}"
            )
        if not bool(torch.isfinite(b).all()) or bool(((b <= 0) | (b >= 1)).any()):
            raise ValueError(
                f"betas must lie in (0, 1), got min {float(b.min())!r}, max {float(b.max())!r}"
            )
        self.betas = b
        self.N = b.numel()
        self._knots = torch.cat(
            [torch.zeros(1, dtype=torch.float64), torch.cumsum(-torch.log1p(-b), 0)]
        )

    def _segment(self, t: Tensor) -> tuple[Tensor, Tensor]:
        u = t.to(torch.float64) * self.N
        k = torch.clamp(torch.ceil(u) - 1, 0, self.N - 1).long()  # segment (k/N, (k+1)/N]
        return u - k, k

    def B(self, t: Tensor) -> Tensor:
        frac, k = self._segment(t)
        knots = self._knots.to(t.device)
        return (knots[k] + frac * (knots[k + 1] - knots[k])).to(t.dtype)

    def beta(self, t: Tensor) -> Tensor:
        _, k = self._segment(t)
        knots = self._knots.to(t.device)
        return ((knots[k + 1] - knots[k]) * self.N).to(t.dtype)

    def t_of_B(self, B: Tensor) -> Tensor:
        knots = self._knots.to(B.device)
        B64 = B.to(torch.float64)
        k = torch.clamp(torch.searchsorted(knots, B64) - 1, 0, self.N - 1)
        frac = (B64 - knots[k]) / (knots[k + 1] - knots[k])
        return ((k + frac) / self.N).to(B.dtype)

    def __repr__(self) -> str:
        return f"discrete(N={self.N})"


def ddpm_betas(n: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """DDPM's linear beta array (Ho et al. 2020: 1e-4 to 0.02 over 1000 steps), float64."""
    check_int("n", n, low=2)
    for name, v in (("beta_start", beta_start), ("beta_end", beta_end)):
        if not 0 < check_finite_number(name, v) < 1:
            raise ValueError(f"{name} must lie in (0, 1), got {v!r}")
    return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)


_SCHEDULES = ("linear", "cosine")


class _VPFamily(LinearSDE):
    def __init__(
        self,
        schedule: str | LinearBeta | CosineBeta | DiscreteBeta = "linear",
        *,
        beta_min: float = 0.1,
        beta_max: float = 20.0,
        cosine_s: float = 0.008,
        t_min: float | None = None,
        T: float | None = None,
    ) -> None:
        if isinstance(schedule, str):
            check_choice("schedule", schedule, _SCHEDULES)
            schedule = (
                LinearBeta(beta_min, beta_max) if schedule == "linear" else CosineBeta(cosine_s)
            )
        elif not all(callable(getattr(schedule, m, None)) for m in ("B", "beta", "t_of_B")):
            raise TypeError(
                f"schedule must be one of {', '.join(map(repr, _SCHEDULES))} or a schedule object "
                f"with B(t), beta(t) and t_of_B(B) (LinearBeta, CosineBeta, DiscreteBeta), got "
                f"{schedule!r}"
            )
        self.schedule = schedule
        if isinstance(schedule, DiscreteBeta):
            t_min = 1.0 / schedule.N if t_min is None else t_min
            T = 1.0 if T is None else T
            if check_finite_number("T", T) > 1:
                raise ValueError(
                    f"T must be <= 1 for a discrete schedule (t = 1 is its last timestep, "
                    f"{schedule.N - 1}; beyond it the betas would be extrapolated), got {T!r}"
                )
        if isinstance(schedule, CosineBeta) and T is None:
            T = schedule.t_max()
        if isinstance(schedule, CosineBeta) and T is not None and T >= 1:
            raise ValueError(f"T must be < 1 for the cosine schedule (alpha(1) = 0), got {T!r}")
        super().__init__(
            t_min=1e-3 if t_min is None else t_min, T=1.0 if T is None else T, prior_std=1.0
        )

    @classmethod
    def from_betas(cls, betas: Tensor | np.ndarray | list[float], **kwargs):
        """The SDE whose kernel at t = (i+1)/N equals DDPM's q(x_i | x_0) for these betas."""
        return cls(DiscreteBeta(betas), **kwargs)

    def timestep(self, t: Tensor) -> Tensor:
        """DDPM's 0-based timestep index i = N t - 1 of a discrete schedule (continuous in t)."""
        if not isinstance(self.schedule, DiscreteBeta):
            raise ValueError(f"timestep() needs a discrete schedule, this SDE has {self.schedule}")
        return self.check_t(t) * self.schedule.N - 1

    def _alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self.schedule.B(t))

    def _f(self, t: Tensor) -> Tensor:
        return -0.5 * self.schedule.beta(t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule}, t_min={self.t_min:g}, T={self.T:g})"


class VPSDE(_VPFamily):
    """Variance-preserving SDE dx = -beta(t)/2 x dt + sqrt(beta(t)) dW (DDPM's continuous limit).

    Args:
        schedule: "linear" (beta_min, beta_max), "cosine" (cosine_s), or a schedule object;
            `VPSDE.from_betas(betas)` builds one from DDPM's discrete beta array.
        t_min, T: integration interval; defaults 1e-3 and 1 (cosine: T where beta = 999;
            discrete: t_min = 1/N).

    Example:
        >>> import torch
        >>> from sdegen.sde import VPSDE, ddpm_betas
        >>> sde = VPSDE()  # beta(t) from 0.1 to 20 over t in [1e-3, 1]
        >>> t = torch.tensor([0.1, 0.5, 1.0])
        >>> torch.allclose(sde.alpha(t) ** 2 + sde.sigma(t) ** 2, torch.ones(3))
        True
        >>> torch.allclose(sde.g2(t), 0.1 + 19.9 * t)  # g^2 = beta
        True
        >>> x0, noise = torch.zeros(3, 2), torch.ones(3, 2)
        >>> sde.perturb(x0, t, noise).shape  # x_t = alpha x0 + sigma noise
        torch.Size([3, 2])
        >>> ddpm = VPSDE.from_betas(ddpm_betas(1000))  # DDPM's 1000 steps, t = (i + 1) / 1000
        >>> ddpm.t_min, ddpm.T
        (0.001, 1.0)
    """

    def _sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.schedule.B(t)))

    def _g2(self, t: Tensor) -> Tensor:
        return self.schedule.beta(t)

    def _half_log_snr(self, t: Tensor) -> Tensor:
        # lambda = -1/2 log(exp(B) - 1), stable for small and large B.
        return -0.5 * _log_expm1(self.schedule.B(t))

    def _t_of_half_log_snr(self, lam: Tensor) -> Tensor:
        return self.schedule.t_of_B(torch.nn.functional.softplus(-2 * lam))


class SubVPSDE(_VPFamily):
    """Sub-VP SDE dx = -beta/2 x dt + sqrt(beta (1 - exp(-2B))) dW (Song et al. 2021, eq. 29).

    Its kernel variance (1 - exp(-B))^2 is below the VP one at every t. Arguments as VPSDE.
    """

    def _sigma(self, t: Tensor) -> Tensor:
        return -torch.expm1(-self.schedule.B(t))

    def _g2(self, t: Tensor) -> Tensor:
        return self.schedule.beta(t) * -torch.expm1(-2 * self.schedule.B(t))

    def _half_log_snr(self, t: Tensor) -> Tensor:
        B = self.schedule.B(t)
        return -0.5 * B - torch.log(-torch.expm1(-B))

    def _t_of_half_log_snr(self, lam: Tensor) -> Tensor:
        # exp(lam) = u / (1 - u^2) with u = exp(-B/2): the positive root of r u^2 + u - r = 0.
        r = torch.exp(lam.to(torch.float64))
        u = 2 * r / (1 + torch.sqrt(1 + 4 * r**2))
        return self.schedule.t_of_B(-2 * torch.log(u)).to(lam.dtype)


def _log_expm1(x: Tensor) -> Tensor:
    """log(exp(x) - 1) without overflow for large x or cancellation for small x."""
    return torch.where(x > 20, x + torch.log1p(-torch.exp(-x)), torch.log(torch.expm1(x)))
