"""DDPM's reverse chain with a chosen variance: its own grid, respaced, and Analytic-DPM.

Ancestral sampling (`sample(..., method="ancestral")`, `reverse_sde.Ancestral`) takes the
reverse variance as an option: "posterior" (beta_tilde), "forward" (beta), "learned" (the
model's Sigma_theta, Improved DDPM) or a callable (x, t, s) -> variance. This module adds

- `respaced_grid(sde, steps)`: a from_betas SDE's own timesteps, `steps` of them evenly spaced
  and rounded (Nichol & Dhariwal 2021, section 4), to pass as `schedule=`; the variance bounds
  of a strided step t -> s are then the respaced betas 1 - alpha_bar_t / alpha_bar_s;
- `AnalyticDPMVariance`: Analytic-DPM's variance (Bao et al. 2022) with Gamma_t =
  E||eps_theta(x_t, t)||^2 / d estimated by Monte Carlo on data at each grid time, as that
  callable.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import check_int, check_tensor_finite
from ..random import randn
from ..sde.discrete import grid_size
from ..sde.reverse_variance import analytic_dpm_variance
from .schedules import check_grid


def respaced_grid(sde, steps: int) -> Tensor:
    """DDPM's grid of a from_betas SDE respaced to `steps` steps, for `sample(schedule=...)`.

    The times k/N of steps + 1 timesteps k evenly spaced from N down to 1 and rounded (Nichol &
    Dhariwal 2021, section 4). steps = N - 1 is DDPM's full chain: N evaluations with the final
    denoising step, which is DDPM's last step x_1 -> x_0.

    Args:
        sde: a from_betas SDE (`VPSDE.from_betas`), N steps.
        steps: 1 .. N - 1.
    Returns:
        float64 (steps + 1,), decreasing from T = 1 to t_min = 1/N.

    Example:
        >>> from sdegen.sde import VPSDE, beta_schedule
        >>> from sdegen.solvers.ancestral_learned import respaced_grid
        >>> sde = VPSDE.from_betas(beta_schedule("linear", 1000))
        >>> (respaced_grid(sde, 4) * 1000).round().long().tolist()
        [1000, 750, 500, 251, 1]
    """
    n = grid_size(sde)
    steps = check_int("steps", steps, 1, n - 1)
    k = torch.round(torch.linspace(n, 1, steps + 1, dtype=torch.float64))
    return check_grid(sde, k / n)


class AnalyticDPMVariance:
    """Analytic-DPM's reverse variance for a trained noise predictor (Bao et al. 2022).

    sigma*^2(t -> s) = lambda^2 + c0^2 sigma_t^2 / alpha_t^2 (1 - Gamma_t), clipped to its
    bounds (`sdegen.sde.reverse_variance.analytic_dpm_variance`; `data_range` = (a, b) adds
    Theorem 2's for data in [a, b]), with Gamma_t =
    E||eps_theta(x_t, t)||^2 / d estimated on data. Called as (x, t, s) -> (B,), it is the
    `variance` option of ancestral sampling:

        var = AnalyticDPMVariance.fit(model, sde, data, ts)
        sample(model, sde, shape, method="ancestral", variance=var, schedule=ts)

    Attributes:
        ts: the grid times where Gamma was estimated, float64 (n,).
        gamma: the estimates, float64 (n,).
        nfe: network evaluations the estimate cost (0 when built from given values).
    """

    def __init__(
        self,
        sde,
        ts: Tensor,
        gamma: Tensor,
        *,
        nfe: int = 0,
        data_range: tuple[float, float] | None = None,
    ) -> None:
        ts = torch.as_tensor(ts, dtype=torch.float64).flatten()
        gamma = torch.as_tensor(gamma, dtype=torch.float64).flatten()
        if ts.shape != gamma.shape or ts.numel() < 1:
            raise ValueError(
                f"ts and gamma must be 1-D of the same length >= 1, got {tuple(ts.shape)} and "
                f"{tuple(gamma.shape)}"
            )
        check_tensor_finite("gamma", gamma)
        self.sde, self.ts, self.gamma, self.nfe = sde, ts, gamma, nfe
        self.data_range = data_range

    @classmethod
    @torch.no_grad()
    def fit(
        cls,
        model,
        sde,
        data: Tensor,
        ts: Tensor,
        *,
        batch_size: int = 500,
        generator: torch.Generator | None = None,
        data_range: tuple[float, float] | None = None,
    ) -> AnalyticDPMVariance:
        """Estimate Gamma_t = E||eps_theta(x_t, t)||^2 / d at each time of ts but the last
        (the final grid time starts no step) from x_t = alpha_t x_0 + sigma_t eps, x_0 the rows
        of `data` (B, *D); one evaluation per batch of `batch_size` per time (Bao et al. use a
        fresh Monte Carlo sample per timestep; here every time reuses the same x_0).
        data_range: (a, b), the data's range, for the bound of Bao et al.'s Theorem 2."""
        check_tensor_finite("data", data)
        if data.ndim < 2 or data.shape[0] < 1:
            raise ValueError(f"data must have shape (M, *D) with M >= 1, got {tuple(data.shape)}")
        batch_size = check_int("batch_size", batch_size, 1)
        ts = torch.as_tensor(ts, dtype=torch.float64).flatten()
        if ts.numel() < 2 or not bool((ts[1:] < ts[:-1]).all()):
            raise ValueError(
                f"ts must be a grid of at least 2 strictly decreasing times (the sampler's), got "
                f"{ts.tolist()[:6]}"
            )
        ts = ts[:-1]
        d = math.prod(data.shape[1:])
        gamma, nfe = torch.zeros(len(ts), dtype=torch.float64), 0
        for i, t in enumerate(ts.tolist()):
            total = 0.0
            for x0 in data.split(batch_size):
                tb = torch.full((x0.shape[0],), t, dtype=x0.dtype, device=x0.device)
                noise = randn(x0.shape, generator, dtype=x0.dtype).to(x0.device)
                eps = model.eps(sde.perturb(x0, tb, noise), tb)
                total += float((eps.double() ** 2).sum())
                nfe += 1
            gamma[i] = total / (data.shape[0] * d)
        return cls(sde, ts, gamma, nfe=nfe, data_range=data_range)

    def gamma_at(self, t: Tensor) -> Tensor:
        """Gamma at times t (B,) of the grid it was fitted on, float64 (B,); ValueError off it."""
        t64 = t.detach().to(torch.float64).cpu()
        dist = (t64[:, None] - self.ts[None, :]).abs()
        err, idx = dist.min(dim=1)
        if bool((err > 1e-6 * max(1.0, abs(self.sde.T))).any()):
            bad = float(t64[int(err.argmax())])
            raise ValueError(
                f"t = {bad:.6g} is not a time Gamma was estimated at; fit on the sampling grid "
                f"(times {self.ts[:3].tolist()}...)"
            )
        return self.gamma[idx].to(t.device)

    def __call__(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        """The variance of the step t -> s, shape (B,), float64; x is unused (isotropic)."""
        gamma = self.gamma_at(t)
        return analytic_dpm_variance(self.sde, s, t, gamma, data_range=self.data_range).to(t.device)
