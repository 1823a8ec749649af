"""EDM's samplers (Karras et al. 2022) for any linear SDE: the deterministic Heun sampler
(Algorithm 1) and the stochastic one with churn (Algorithm 2).

Both work in EDM's variables x~ = x / alpha and sigma~ = sigma / alpha = exp(-lambda), in which the
PF-ODE of every linear SDE is dx~/dsigma~ = (x~ - D(x, t)) / sigma~, D the denoiser: nearly linear
in sigma~, so few steps go far (integrating in t instead overshoots on VE: one step across a 10x
drop in sigma multiplies x - D by 1 - ln 10). Euler in these variables is exactly DDIM. The last
step is a plain Euler step, as in EDM, so N steps cost 2N - 1 evaluations.
"""

from __future__ import annotations

import math

from torch import Tensor

from .._utils import check_finite_number
from .exp_quadrature import LogSNRSchedule, TimeRows, scale
from .grid import GridMethod, randn_like

__all__ = ["Heun", "EDMStochastic"]


class Heun(GridMethod):
    """Heun's second-order method in EDM's variables (Karras et al. 2022, Algorithm 1), the last
    step Euler; 2 evaluations per step, 1 on the last."""

    def __init__(self, model, sde, ts: Tensor) -> None:
        super().__init__(model, sde, ts)
        self.path = LogSNRSchedule(sde, ts)
        self.alpha = self.path.alpha
        self.sig = (sde.sigma(ts) / sde.alpha(ts)).tolist()  # sigma~

    def coefficients(self, t: Tensor) -> dict[str, list[list[float]]]:
        # each step's sigma~, its change, the next sigma~ and half the change (floats in x's dtype)
        sig = self.sig
        return {
            "c": [
                [sig[i], sig[i + 1] - sig[i], sig[i + 1], (sig[i + 1] - sig[i]) * 0.5]
                for i in range(self.n)
            ]
        }

    def step(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        alpha = self.alpha
        s, ds, s_next, half_ds = self.coefs(x)["c"][i]
        denoised = self.model.denoise(x, self.path.t_batch(i, x))
        x_cur = x if alpha[i] == 1.0 else x / alpha[i]  # x / 1 is x exactly
        d_cur = (x_cur - denoised) / s
        x_next = x_cur + ds * d_cur  # in x~
        if i < self.n - 1:
            x0_next = self.model.denoise(scale(alpha[i + 1], x_next), self.path.t_batch(i + 1, x))
            d_prime = (x_next - x0_next) / s_next
            x_next = x_cur + half_ds * (d_cur + d_prime)
        return scale(alpha[i + 1], x_next), denoised


class EDMStochastic(GridMethod):
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) for any linear SDE.

    Each step first raises the noise level sigma~ by gamma = min(churn / N, sqrt(2) - 1) when
    sigma~ is in [s_tmin, s_tmax] (adding fresh noise of std s_noise sqrt(sigma_hat^2 -
    sigma~^2)), then takes a Heun step down to the next grid level (Euler on the last step). The
    raised level is mapped back to a time t_hat through the log-SNR, so it must stay below the
    SDE's maximum noise level; it is clipped there. churn = 0 is the deterministic `Heun`.
    EDM's ImageNet-64 settings, scaled to sigma~, are the defaults (see METHODS). 2 evaluations
    per step, 1 on the last. The x0 estimate passed on is the one at the raised level.
    """

    def __init__(
        self,
        model,
        sde,
        ts: Tensor,
        *,
        churn: float,
        s_tmin: float,
        s_tmax: float,
        s_noise: float,
        generator=None,
    ) -> None:
        super().__init__(model, sde, ts, generator=generator)
        churn = check_finite_number("churn", churn, nonnegative=True)
        self.s_tmin = check_finite_number("s_tmin", s_tmin, nonnegative=True)
        self.s_tmax = check_finite_number("s_tmax", s_tmax, nonnegative=True)
        if self.s_tmin > self.s_tmax:
            raise ValueError(
                f"s_tmin must be <= s_tmax (churn acts for sigma in [s_tmin, s_tmax]), got "
                f"s_tmin={s_tmin!r}, s_tmax={s_tmax!r}"
            )
        self.s_noise = check_finite_number("s_noise", s_noise, positive=True)
        self.path = LogSNRSchedule(sde, ts)
        self.sig = [s / a for s, a in zip(self.path.sigma, self.path.alpha)]  # sigma~
        self.gamma = min(churn / self.n, math.sqrt(2) - 1)
        # per step, once per solve: the raised level sigma_hat (sigma~ (1 + gamma) inside
        # [s_tmin, s_tmax], capped at sigma~(T)) and, where it is raised, its time and alpha
        sig = self.sig
        self.sigma_hat = []
        for i in range(self.n):
            gamma = self.gamma if self.s_tmin <= sig[i] <= self.s_tmax else 0.0
            self.sigma_hat.append(min(sig[i] * (1 + gamma), sig[0]))
        raised = [i for i in range(self.n) if self.sigma_hat[i] > sig[i]]
        at = self.path.at_lambdas([-math.log(self.sigma_hat[i]) for i in raised])
        self.at_hat = {i: (t, a) for i, (t, a, _) in zip(raised, at)}
        # the time of each step's first evaluation: t_hat where raised, else the grid's
        self.t_first = TimeRows([self.at_hat[i][0] if i in self.at_hat else t for i, t in
                                 enumerate(self.path.t[: self.n])])  # fmt: skip
        # x~ of the state this sampler returned last: dividing that state by alpha again would
        # round differently from carrying x~ (the results are pinned bit for bit).
        self._x_tilde: tuple[Tensor, Tensor] | None = None

    def coefficients(self, t: Tensor) -> dict[str, list[list[float]]]:
        # per step: the churn noise's std, sigma_hat, sigma~_{i+1} - sigma_hat, sigma~_{i+1},
        # half the change (floats in x's dtype)
        sig, out = self.sig, []
        for i in range(self.n):
            hat = self.sigma_hat[i]
            churn = self.s_noise * math.sqrt(hat**2 - sig[i] ** 2) if i in self.at_hat else 0.0
            out.append([churn, hat, sig[i + 1] - hat, sig[i + 1], (sig[i + 1] - hat) * 0.5])
        return {"c": out}

    def step(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.path
        if self._x_tilde is not None and self._x_tilde[0] is x:
            x_cur = self._x_tilde[1]
        else:
            x_cur = x if p.alpha[i] == 1.0 else x / p.alpha[i]  # x / 1 is x exactly
        # Increase the noise level temporarily: sigma_hat = sigma~ (1 + gamma).
        churn, sigma_hat, ds, s_next, half_ds = self.coefs(x)["c"][i]
        if i in self.at_hat:
            noise = randn_like(x_cur, self.generator)
            x_hat = x_cur + churn * noise
            alpha_hat = self.at_hat[i][1]
        else:
            x_hat, alpha_hat = x_cur, p.alpha[i]
        # Euler step from sigma_hat to sigma~_{i+1}.
        denoised = self.model.denoise(scale(alpha_hat, x_hat), self.t_first(i, x_hat))
        d_cur = (x_hat - denoised) / sigma_hat
        x_next = x_hat + ds * d_cur
        if i < self.n - 1:
            # Second-order correction.
            x0_next = self.model.denoise(scale(p.alpha[i + 1], x_next), p.t_batch(i + 1, x_hat))
            d_prime = (x_next - x0_next) / s_next
            x_next = x_hat + half_ds * (d_cur + d_prime)
        x_out = scale(p.alpha[i + 1], x_next)
        self._x_tilde = (x_out, x_next)
        return x_out, denoised
