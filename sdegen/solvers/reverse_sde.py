"""Reverse-time SDE samplers (Song et al. 2021, Appendix E and G), for any linear SDE.

The reverse SDE is dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dW_bar, integrated from T to t_min.
Each method here is a plain function over a decreasing float64 grid `ts`; `noise_final=False`
leaves the noise out of the last step (Song et al.'s convention when no denoising step follows).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from .._utils import append_dims, check_choice, check_finite_number

Record = Callable[[Tensor], None] | None


def batch_t(t: float, x: Tensor) -> Tensor:
    """A grid time as a (B,) tensor in x's dtype and device."""
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def randn_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)


def _coef(v: Tensor, x: Tensor) -> Tensor:
    return append_dims(v.to(x.dtype), x.ndim)


def euler_maruyama_step(model, sde, x: Tensor, t: float, s: float, z: Tensor | None) -> Tensor:
    """One Euler-Maruyama step of the reverse SDE from t to s < t; z is N(0, I) noise or None."""
    tb = batch_t(t, x)
    dt = s - t
    drift = sde.drift(x, tb) - _coef(sde.g2(tb), x) * model.score(x, tb)
    x = x + drift * dt
    if z is not None:
        x = x + _coef(sde.diffusion(tb), x) * (-dt) ** 0.5 * z
    return x


def reverse_diffusion_step(model, sde, x: Tensor, t: float, s: float, z: Tensor | None) -> Tensor:
    """Song et al.'s reverse diffusion predictor: reverse the forward discretization s -> t.

    With the exact transition x_t = a x_s + G eps (a = alpha_t/alpha_s), the step is
    x_s = x_t - (a - 1) x_t + G^2 score + G z (their eq. 46; DDPM-style for VP, SMLD for VE).
    """
    tb = batch_t(t, x)
    a, G = sde.transition(batch_t(s, x), tb)
    x = (2 - _coef(a, x)) * x + _coef(G**2, x) * model.score(x, tb)
    if z is not None:
        x = x + _coef(G, x) * z
    return x


def ancestral_step(
    model, sde, x: Tensor, t: float, s: float, z: Tensor | None, variance: str = "posterior"
) -> Tensor:
    """Ancestral sampling with the DDPM posterior q(x_s | x_t, x0 = E[x0 | x_t]).

    Mean (x_t + G^2 score) / a, which is Ho et al.'s 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1 -
    alpha_bar_t) eps) for VP and SMLD's x_t + (sigma_t^2 - sigma_s^2) score for VE. Noise std:
    "posterior" G sigma_s / sigma_t (DDPM's beta-tilde; SMLD's choice), or "forward" G (beta).
    """
    tb, sb = batch_t(t, x), batch_t(s, x)
    a, G = sde.transition(sb, tb)
    x = (x + _coef(G**2, x) * model.score(x, tb)) / _coef(a, x)
    if z is not None:
        std = G * sde.sigma(sb) / sde.sigma(tb) if variance == "posterior" else G
        x = x + _coef(std, x) * z
    return x


def langevin_correct(model, sde, x: Tensor, t: float, s: float, z: Tensor, snr: float) -> Tensor:
    """One annealed Langevin corrector step at time t (Song et al. 2021, Algorithm 5).

    Step size 2 a^2 (snr ||z|| / ||score||)^2, a^2 = (alpha_t/alpha_s)^2 (1 - beta_i for VP, 1 for
    VE), with the norms averaged over the batch as in Song et al.'s code: per-example norms make
    the step explode wherever the score vanishes (at a mode), which low-dimensional data hit.
    """
    tb = batch_t(t, x)
    grad = model.score(x, tb)
    a, _ = sde.transition(batch_t(s, x), tb)
    g_norm = grad.reshape(x.shape[0], -1).norm(dim=1).mean()
    z_norm = z.reshape(x.shape[0], -1).norm(dim=1).mean()
    step = 2 * a.to(x.dtype) ** 2 * (snr * z_norm / g_norm.clamp_min(1e-12)) ** 2
    return x + _coef(step, x) * grad + _coef((2 * step).sqrt(), x) * z


def _run(
    step: Callable, x: Tensor, ts: Tensor, generator, noise_final: bool, record: Record
) -> Tensor:
    n = len(ts) - 1
    for i in range(n):
        last = i == n - 1
        z = None if (last and not noise_final) else randn_like(x, generator)
        x = step(x, float(ts[i]), float(ts[i + 1]), z)
        if record:
            record(x)
    return x


def euler_maruyama(
    model, sde, x: Tensor, ts: Tensor, *, generator=None, noise_final=False, record: Record = None
) -> Tensor:
    """Euler-Maruyama on the reverse SDE; one evaluation per step."""
    return _run(partial(euler_maruyama_step, model, sde), x, ts, generator, noise_final, record)


def reverse_diffusion(
    model, sde, x: Tensor, ts: Tensor, *, generator=None, noise_final=False, record: Record = None
) -> Tensor:
    """Song et al.'s reverse diffusion predictor alone; one evaluation per step."""
    return _run(partial(reverse_diffusion_step, model, sde), x, ts, generator, noise_final, record)


def ancestral(
    model,
    sde,
    x: Tensor,
    ts: Tensor,
    *,
    generator=None,
    noise_final=False,
    record: Record = None,
    variance: str = "posterior",
) -> Tensor:
    """Ancestral sampling (DDPM for VP, SMLD for VE); one evaluation per step."""
    check_choice("variance", variance, ("posterior", "forward"))
    return _run(
        lambda x, t, s, z: ancestral_step(model, sde, x, t, s, z, variance),
        x,
        ts,
        generator,
        noise_final,
        record,
    )


PREDICTORS = {
    "reverse_diffusion": reverse_diffusion_step,
    "euler_maruyama": euler_maruyama_step,
    "ancestral": ancestral_step,
}


def pc(
    model,
    sde,
    x: Tensor,
    ts: Tensor,
    *,
    generator=None,
    noise_final=False,
    record: Record = None,
    snr: float = 0.16,
    corrector_steps: int = 1,
    predictor: str = "reverse_diffusion",
) -> Tensor:
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 1 style): at each grid time,
    `corrector_steps` Langevin corrections then one predictor step; (1 + corrector_steps)
    evaluations per step. snr = 0.16 is their CIFAR-10 VE setting.
    """
    snr = check_finite_number("snr", snr, positive=True)
    if not isinstance(corrector_steps, int) or corrector_steps < 0:
        raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
    pred = PREDICTORS[check_choice("predictor", predictor, PREDICTORS)]

    def step(x, t, s, z):
        for _ in range(corrector_steps):
            x = langevin_correct(model, sde, x, t, s, randn_like(x, generator), snr)
        return pred(model, sde, x, t, s, z)

    return _run(step, x, ts, generator, noise_final, record)
