"""Langevin dynamics on a score: the standalone sampler at one noise level (unadjusted, ULA, or
Metropolis-adjusted, MALA) and annealed Langevin dynamics over a sequence of noise levels
(Song & Ermon 2019, NCSN Algorithm 1) as a fixed-grid method of `sample`.

The one update of both is `langevin_step`: x <- x + h/2 score(x) + sqrt(h) z, z ~ N(0, I), the
Euler-Maruyama step of the Langevin diffusion dx = 1/2 grad log p(x) dt + dW, whose stationary
law is p.

ULA's bias on a Gaussian (what `langevin`'s tests check). For p = N(mu, s^2) the score is
-(x - mu)/s^2, so a step is x' - mu = (1 - c)(x - mu) + sqrt(h) z with c = h / (2 s^2). The
chain is linear-Gaussian: its mean tends to mu (no bias), and its variance v to the fixed point
of v = (1 - c)^2 v + h, i.e.

    v = h / (c (2 - c)) = s^2 / (1 - h / (4 s^2)),

finite only for h < 4 s^2 (|1 - c| < 1; larger steps diverge). The bias s^2 h / (4 s^2 - h) is
O(h), always upwards; Metropolis adjustment removes it exactly. In D dimensions with covariance
S = U diag(l) U^T the same holds along each eigenvector: the stationary covariance is
U diag(l / (1 - h / (4 l))) U^T.

Noise levels when alpha(t) != 1 (annealed Langevin). NCSN perturbs data as x~ = x0 + sigma~ eps,
with noise level sigma~. A linear SDE's x_t = alpha x0 + sigma eps is that same perturbation,
scaled: x_t = alpha(t) x~ with sigma~(t) = sigma(t) / alpha(t) (k-diffusion's sigma and
exp(-lambda), lambda the half log-SNR). So the noise level of time t is sigma~(t), and NCSN's
algorithm runs in x~: at level i the score of x~ is alpha_i score(alpha_i x~, t_i) and the step
is eps sigma~_i^2 / sigma~_L^2. Langevin is equivariant under the scaling, so in x_t this is the
same chain with step h_i = alpha_i^2 eps sigma~_i^2 / sigma~_L^2 = eps sigma_i^2 / sigma~_L^2 on
the score at x_t, and moving from level t_{i-1} to t_i rescales x by alpha_i / alpha_{i-1}
(keeps x~). For VE SDEs (alpha = 1) this is NCSN verbatim; for VP the chain at level i
targets the marginal p_{t_i} of x_t itself, and the state handed between levels and to the
callback is x_t, like every other sampler's.

Why h_i / sigma~_i^2 = eps / sigma~_L^2 must stay below 4: by Tweedie's second-order formula
Cov[x0 | x~] = sigma~^4 Hess log p + sigma~^2 I >= 0, so -Hess log p <= I / sigma~^2 at every
level, for any data: the ULA linear stability bound h < 4 / lambda_max(-Hess) is never violated
when eps < 4 sigma~_L^2, whatever the data and the level.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._utils import append_dims, check_finite_number, check_int, check_tensor_finite
from ..random import rand
from .exp_quadrature import TimeRows
from .grid import X0, GridMethod, deferred_x0, randn_like

__all__ = ["langevin", "langevin_step", "LangevinResult", "AnnealedLangevin", "EPS_RATIO"]

# The default last-level step eps = EPS_RATIO * sigma~_L^2, so h_i = 2 sigma~_i^2 at every
# level: where the noise dominates (p ~ N(0, sigma~_i^2)) one step then forgets the state it
# started from (c = h / (2 sigma~^2) = 1), which is what few steps per level need. Chosen by
# measurement (benchmarks/langevin.py, the 8-Gaussian ring): NCSN's own ratio, eps / sigma_L^2 =
# 2e-5 / 0.01^2 = 0.2 (Song & Ermon 2019, App. B.1), is made for K = 100 steps per level and
# fails badly at K = 1-3 with a few dozen levels.
EPS_RATIO = 2.0


def langevin_step(x: Tensor, score: Tensor, step_size: Tensor | float, z: Tensor) -> Tensor:
    """One unadjusted Langevin step x + h/2 score + sqrt(h) z.

    Args:
        x, score, z: shape (B, *D); z ~ N(0, I).
        step_size: h > 0, a float or a (B,) tensor (per example).
    Returns:
        the new state, shape (B, *D).
    """
    h = step_size if not torch.is_tensor(step_size) else append_dims(step_size.to(x.dtype), x.ndim)
    root = math.sqrt(h) if not torch.is_tensor(h) else h.sqrt()
    return _update(x, score, 0.5 * h, root, z)


def _update(x: Tensor, score: Tensor, half_h, root_h, z: Tensor) -> Tensor:
    """x + (h/2) score + sqrt(h) z, given h/2 and sqrt(h) (floats or tensors)."""
    return x + half_h * score + root_h * z


@dataclass(frozen=True)
class LangevinResult:
    """The end of a batch of Langevin chains.

    Attributes:
        x: the last state of each chain, shape (B, *D).
        nfe: score evaluations made (n_steps for ULA; n_steps + 1 for MALA, which also scores
            the start).
        acceptance_rate: MALA's accepted fraction of all B * n_steps proposals (None for ULA).
        acceptance: MALA's accepted fraction per chain, shape (B,) (None for ULA).
    """

    x: Tensor
    nfe: int
    acceptance_rate: float | None = None
    acceptance: Tensor | None = None


def _checked_call(name: str, fn: Callable[[Tensor], Tensor], x: Tensor, shape: tuple) -> Tensor:
    out = fn(x)
    if not torch.is_tensor(out) or tuple(out.shape) != shape:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"{name}(x) must return a tensor of shape {shape}, got {got}")
    return out.detach().to(x.dtype)


def _log_q(x_to: Tensor, x_from: Tensor, score_from: Tensor, h: float) -> Tensor:
    """log N(x_to; x_from + h/2 score_from, h I) up to its constant, per example (B,)."""
    r = x_to - x_from - 0.5 * h * score_from
    return -(r.reshape(r.shape[0], -1) ** 2).sum(1) / (2 * h)


def langevin(
    score_fn: Callable[[Tensor], Tensor],
    x0: Tensor,
    step_size: float,
    n_steps: int,
    *,
    metropolis: bool = False,
    log_prob: Callable[[Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
) -> LangevinResult:
    """Langevin dynamics at one fixed noise level: ULA, or MALA with `metropolis=True`.

    ULA (Roberts & Tweedie 1996; its O(h) bias is derived in the module docstring) repeats
    x <- x + h/2 s(x) + sqrt(h) z. MALA (Roberts & Tweedie 1996; Besag 1994) takes that as a
    proposal y and accepts it with probability min(1, p(y) q(x | y) / (p(x) q(y | x))),
    q(y | x) = N(y; x + h/2 s(x), h I), so p is exactly stationary for any h (the score of an
    accepted proposal is kept: one score evaluation per step). Every chain (row of x0) moves
    and accepts independently.

    Args:
        score_fn: x (B, *D) -> grad log p(x) (B, *D), e.g. `lambda x: model.score(x, t)` for a
            score model at time t.
        x0: starting states, shape (B, *D), one chain per row.
        step_size: h > 0, in units of x squared.
        n_steps: number of steps (>= 1).
        metropolis: adjust by Metropolis-Hastings (MALA); needs `log_prob`.
        log_prob: x (B, *D) -> log p(x) (B,), up to an additive constant; its gradient must be
            score_fn (only MALA uses it).
        generator: random source of the noise and the accept/reject draws.
    Returns:
        LangevinResult with the last states, the score evaluations made, and for MALA the
        acceptance rate.

    Example:
        ULA on N(0, 1) with h = 1: the stationary variance is 1 / (1 - 1/4) = 4/3; MALA's is 1.

        >>> import torch
        >>> from sdegen.solvers import langevin
        >>> g = torch.Generator().manual_seed(0)
        >>> x0 = torch.zeros(20000, 1)
        >>> ula = langevin(lambda x: -x, x0, 1.0, 50, generator=g)
        >>> round(float(ula.x.var()), 1), ula.nfe
        (1.3, 50)
        >>> mala = langevin(lambda x: -x, x0, 1.0, 50, metropolis=True,
        ...                 log_prob=lambda x: -0.5 * (x**2).sum(1), generator=g)
        >>> round(float(mala.x.var()), 1), 0.5 < mala.acceptance_rate < 1, mala.nfe
        (1.0, True, 51)
    """
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, x -> score, got {score_fn!r}")
    check_tensor_finite("x0", x0)
    if x0.ndim < 2 or not x0.is_floating_point():
        raise ValueError(
            f"x0 must be a floating-point tensor of shape (chains, *event_shape), got "
            f"{x0.dtype} of shape {tuple(x0.shape)}"
        )
    h = check_finite_number("step_size", step_size, positive=True)
    n_steps = check_int("n_steps", n_steps, 1)
    if metropolis and not callable(log_prob):
        raise ValueError(f"metropolis=True needs log_prob, x -> log p(x) (B,), got {log_prob!r}")
    if not metropolis and log_prob is not None:
        raise ValueError("log_prob is used only with metropolis=True (MALA); ULA takes none")
    B, shape = x0.shape[0], tuple(x0.shape)
    x = x0.detach().clone()
    score = _checked_call("score_fn", score_fn, x, shape)
    nfe = 1
    if not metropolis:
        for k in range(n_steps):
            if k > 0:
                score = _checked_call("score_fn", score_fn, x, shape)
                nfe += 1
            x = langevin_step(x, score, h, randn_like(x, generator))
        if not bool(torch.isfinite(x).all()):  # one check per run, after the loop
            raise ValueError(
                f"the chains reached NaN or inf within {n_steps} steps of step_size {h:g}: a "
                f"step too large for this score (ULA diverges), or a score that is not finite"
            )
        return LangevinResult(x=x, nfe=nfe)
    assert log_prob is not None  # checked above
    logp = _checked_call("log_prob", log_prob, x, (B,))
    if not bool(torch.isfinite(logp).all()):
        raise ValueError("log_prob(x0) is NaN or inf: MALA would reject every proposal")
    accepted = torch.zeros(B, dtype=torch.float64, device=x.device)
    for _ in range(n_steps):
        y = langevin_step(x, score, h, randn_like(x, generator))
        score_y = _checked_call("score_fn", score_fn, y, shape)
        logp_y = _checked_call("log_prob", log_prob, y, (B,))
        nfe += 1
        log_ratio = logp_y - logp + _log_q(x, y, score_y, h) - _log_q(y, x, score, h)
        u = rand((B,), generator, dtype=torch.float64, device=x.device)
        accept = torch.log(u) < log_ratio.to(torch.float64)
        keep = append_dims(accept, x.ndim)
        x = torch.where(keep, y, x)
        score = torch.where(keep, score_y, score)
        logp = torch.where(accept, logp_y, logp)
        accepted += accept
    rate = accepted / n_steps
    return LangevinResult(x=x, nfe=nfe, acceptance_rate=float(rate.mean()), acceptance=rate)


class AnnealedLangevin(GridMethod):
    """Annealed Langevin dynamics (Song & Ermon 2019, NCSN Algorithm 1) on the grid ts.

    The noise levels are the grid's times t_1 > ... > t_L (ts[1:], so ts[-1] = t_min is the last
    level; ts[0] = T is where the prior draw starts), with noise level sigma~(t) = sigma/alpha
    (see the module docstring: on the default "log_snr" grid the levels are geometric, NCSN's
    choice). Step i moves x to level t_{i+1}, rescaling it by alpha(t_{i+1})/alpha(t_i), and
    takes K Langevin steps there with step size

        h = eps sigma(t_{i+1})^2 / sigma~_L^2    (in x~ = x/alpha: eps sigma~_{i+1}^2 / sigma~_L^2),

    K evaluations per level, L K in all (plus one for `sample`'s final Tweedie denoise). Every
    Langevin step adds noise, the last one included (NCSN's algorithm; with denoise_final the
    denoiser removes it). The x0 estimate passed to the callback is Tweedie's at the level's
    last scored point.

    Options:
        K: Langevin steps per noise level (>= 1).
        eps: the last level's step size in units of (x/alpha)^2 (the paper's epsilon); None:
            EPS_RATIO sigma~_L^2 (= 2 sigma~_L^2; NCSN's setting is 0.2 sigma~_L^2 with K =
            100). Must be below 4 sigma~_L^2 for stability (module docstring).
    """

    def __init__(self, model, sde, ts: Tensor, *, K: int, eps: float | None, **noise) -> None:
        super().__init__(model, sde, ts, **noise)
        self.K = check_int("K", K, 1)
        alpha, sigma = sde.alpha(ts), sde.sigma(ts)
        noise_level_L = float(sigma[-1] / alpha[-1])
        if eps is None:
            eps = EPS_RATIO * noise_level_L**2
        self.eps = check_finite_number("eps", eps, positive=True)
        # the step of each level, in x_t's units; the rescaling of x between levels
        self.h = (self.eps * sigma**2 / noise_level_L**2).tolist()
        self.scale = (alpha[1:] / alpha[:-1]).tolist()
        self.t = TimeRows(ts.tolist())

    def coefficients(self, t: Tensor) -> dict[str, list[list[float]]]:
        # per level, as langevin_step computes them from the float h: h/2, sqrt(h); the rescaling
        h = self.h[1:]
        return {
            "half_h": [[0.5 * v] for v in h],
            "root_h": [[math.sqrt(v)] for v in h],
            "scale": [[v] for v in self.scale],
        }

    def step(self, i: int, x: Tensor) -> tuple[Tensor, X0]:
        c, t = self.coefs(x), self.t(i + 1, x)
        half_h, root_h = c["half_h"][i][0], c["root_h"][i][0]
        if self.scale[i] != 1.0:  # x * 1 is x exactly (VE, EDM)
            x = x * c["scale"][i][0]  # the same x~ = x/alpha at the new level
        for _ in range(self.K):
            start = x
            score = self.model.score(x, t)
            x = _update(x, score, half_h, root_h, randn_like(x, self.generator))
        return x, deferred_x0(self.sde, score, start, t)
