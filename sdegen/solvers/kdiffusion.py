"""k-diffusion's samplers (Crowson, k-diffusion 0.1.1 `sampling.py`) and DEIS, for every linear
SDE: Heun, DPM-2 and their ancestral forms, DPM-Solver++(2S) ancestral, linear multistep (LMS)
and DEIS's multistep in log rho.

All work in EDM's variables x~ = x / alpha and sigma~ = sigma / alpha = exp(-lambda) (k-diffusion's
x and sigma), in which the PF-ODE of every linear SDE is dx~/dsigma~ = d = (x~ - D) / sigma~, D
the denoiser; a level sigma~ off the grid is mapped back to a time through the inverse log-SNR.
On the EDM SDE (alpha = 1, sigma = t) the variables are k-diffusion's own.

k-diffusion's grids end at sigma = 0, where its samplers take an Euler step, x = D; sdegen's end
at t_min and the final denoising step of `sample` is that step. So N steps here plus the
final denoising are k-diffusion's sampler on the N + 1 levels sigma~(ts) followed by 0, with
the same evaluations, except LMS, whose step to 0 k-diffusion takes by extrapolation.
"""

from __future__ import annotations

import math
from abc import abstractmethod
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from torch import Tensor

from .._utils import check_bool, check_finite_number, check_int
from .exp_quadrature import LogSNRSchedule, TimeRows, scale
from .grid import GridMethod, randn_like

__all__ = ["Heun", "DPM2", "DPM2Ancestral", "DPMpp2SAncestral", "LMS", "DEIS", "ancestral_step"]

# 16-point Gauss-Legendre: exact to rounding for polynomials up to degree 31 (LMS), and for
# DEIS's e^u times a quadratic to ~1e-13 even across a step of e^5 in sigma.
_GL_NODES, _GL_WEIGHTS = (a.tolist() for a in np.polynomial.legendre.leggauss(16))


def lagrange_integrals(nodes: list[float], b: float, weight=None) -> list[float]:
    """int_0^b w(u) L_j(u) du for each Lagrange basis polynomial L_j on `nodes` (w = 1 if None).

    The nodes are offsets from the current point (0 first), so the basis stays well scaled.
    """
    return lagrange_integrals_many([(nodes, b, weight)])[0]


Weight = Callable[[float], float] | None


def lagrange_integrals_many(
    cases: Sequence[tuple[list[float], float, Weight]],
) -> list[list[float]]:
    """`lagrange_integrals(nodes, b, weight)` of each case, vectorised over the cases with the
    same number of nodes (a method computes every step's once per solve this way). Each value
    is the scalar computation's to the bit: the same IEEE operations in the same order, the
    16-point Gauss-Legendre sum taken node by node; w(u) is called on Python floats."""
    out: list[list[float]] = [[] for _ in cases]
    by_size: dict[int, list[int]] = {}
    for c, (nodes, _, _) in enumerate(cases):
        by_size.setdefault(len(nodes), []).append(c)
    gl = np.asarray(_GL_NODES)
    for m, idx in by_size.items():
        at = np.array([cases[c][0] for c in idx], dtype=np.float64)  # the nodes, (G, m)
        half = 0.5 * np.array([cases[c][1] for c in idx], dtype=np.float64)  # (G,)
        us = half[:, None] * (1 + gl)[None, :]  # (G, 16)
        ws = np.ones_like(us)
        for row, c in enumerate(idx):
            weight = cases[c][2]
            if weight is not None:
                ws[row] = [weight(u) for u in us[row].tolist()]  # w(u) once per node
        cols = []
        for j in range(m):
            total = np.zeros(len(idx))
            for q, w in enumerate(_GL_WEIGHTS):
                basis = np.ones(len(idx))
                for k in range(m):
                    if k != j:
                        basis = basis * ((us[:, q] - at[:, k]) / (at[:, j] - at[:, k]))
                total = total + w * basis * ws[:, q]
            cols.append(half * total)
        for row, c in enumerate(idx):
            out[c] = [float(col[row]) for col in cols]
    return out


def ancestral_step(sig_from: float, sig_to: float, eta: float) -> tuple[float, float]:
    """k-diffusion's get_ancestral_step: (sigma_down, sigma_up) with sigma_down^2 + sigma_up^2 =
    sig_to^2; eta = 1 gives DDPM's posterior noise, eta = 0 none."""
    up = min(sig_to, eta * math.sqrt(sig_to**2 * (sig_from**2 - sig_to**2) / sig_from**2))
    return math.sqrt(sig_to**2 - up**2), up


class _SigmaGrid(GridMethod):
    """A method in x~ and sigma~: the grid's alpha and sigma~, computed once per solve."""

    def __init__(self, model, sde, ts: Tensor, **noise) -> None:
        super().__init__(model, sde, ts, **noise)
        self.path = LogSNRSchedule(sde, ts)
        self.sig = [s / a for s, a in zip(self.path.sigma, self.path.alpha)]


class _TwoStage(_SigmaGrid):
    """One evaluation at the grid level sigma~_i, one at a second level (`level`), then the
    update to sigma_down; ancestral methods (eta > 0) add noise of std sigma_up, where
    sigma_down^2 + sigma_up^2 = sigma~_{i+1}^2. A step that adds no noise goes to sigma~_{i+1}.

    Every step's levels, and the time and alpha of its second level (through the inverse
    log-SNR), depend on the grid alone: they are computed once per solve, so a step is tensor
    work on the state only."""

    def __init__(self, model, sde, ts: Tensor, *, eta: float = 0.0, **noise) -> None:
        super().__init__(model, sde, ts, **noise)
        self.eta = check_finite_number("eta", eta, nonnegative=True)
        sig = self.sig
        self.down: list[tuple[float, float]] = []  # (sigma_down, sigma_up) of each step
        for i in range(self.n):
            s_down, s_up = sig[i + 1], 0.0
            if self.eta > 0 and self.adds_noise(i):
                s_down, s_up = ancestral_step(sig[i], sig[i + 1], self.eta)
                if s_down <= 0:  # k-diffusion then takes an Euler step, of one evaluation
                    largest = min(s / math.sqrt(s**2 - t**2) for s, t in zip(sig, sig[1:]) if s > t)
                    raise ValueError(
                        f"eta={eta!r} is too large on this {self.n}-step grid: at step {i} the "
                        f"noise takes all of sigma_next, leaving no step for the second "
                        f"evaluation; eta <= {largest:.4g} here (eta = 1 is DDPM's noise)"
                    )
            self.down.append((s_down, s_up))
        levels = [self.level(sig[i], d[0]) for i, d in enumerate(self.down)]
        at = self.path.at_lambdas([-math.log(s2) for s2 in levels])
        # (sigma~, t, alpha) of each step's second evaluation
        self.second = [(s2, t2, a2) for s2, (t2, a2, _) in zip(levels, at)]
        self.second_t = TimeRows([t2 for t2, _, _ in at])

    @abstractmethod
    def level(self, s: float, s_down: float) -> float:
        """sigma~ of the second evaluation of a step from s to s_down."""

    @abstractmethod
    def stage_floats(self, i: int) -> list[float]:
        """The Python floats step i's `stage` multiplies or divides by, computed once per solve
        (they reach `stage` as 0-dim tensors in x's dtype, the same products to the bit)."""

    @abstractmethod
    def stage(self, i: int, x: Tensor, denoised: Tensor, c: list[Tensor]) -> Tensor:
        """Step i's two-stage update from sigma s to s_down, given the denoised estimate at s
        and the step's `stage_floats` c."""

    def coefficients(self, t: Tensor) -> dict[str, list[list[float]]]:
        return {
            "stage": [self.stage_floats(i) for i in range(self.n)],
            "up": [[s_up] for _, s_up in self.down],
        }

    def second_eval(self, i: int, x_tilde: Tensor) -> tuple[float, Tensor]:
        """(sigma~, D) at step i's second level, for x~ there."""
        s2, _, a2 = self.second[i]
        return s2, self.model.denoise(scale(a2, x_tilde), self.second_t(i, x_tilde))

    def step(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        alpha = self.path.alpha
        denoised = self.model.denoise(x, self.path.t_batch(i, x))
        x_cur = x if alpha[i] == 1.0 else x / alpha[i]  # x / 1 is x exactly
        c = self.coefs(x)
        x_next = self.stage(i, x_cur, denoised, c["stage"][i])
        if self.down[i][1] > 0:
            x_next = x_next + c["up"][i][0] * randn_like(x_next, self.generator)
        return scale(alpha[i + 1], x_next), denoised


class Heun(_TwoStage):
    """k-diffusion's sample_heun (Karras et al. 2022, Algorithm 1 with Heun steps, no churn):
    a Heun step into every grid level, sigma_min included; 2 evaluations per step. sdegen's
    `heun` instead takes an Euler step into sigma_min (EDM's Euler step to 0 moved one level up)."""

    def level(self, s: float, s_down: float) -> float:
        return s_down

    def stage_floats(self, i: int) -> list[float]:
        s, s_down = self.sig[i], self.down[i][0]
        return [s, s_down - s, self.second[i][0], 0.5]

    def stage(self, i: int, x: Tensor, denoised: Tensor, c: list[Tensor]) -> Tensor:
        s, ds, s2, half = c  # sigma, sigma_down - sigma, the second level, 1/2
        d = (x - denoised) / s
        x_2 = x + d * ds
        _, denoised_2 = self.second_eval(i, x_2)
        d_2 = (x_2 - denoised_2) / s2
        return x + half * (d + d_2) * ds


class DPM2(_TwoStage):
    """k-diffusion's sample_dpm_2 (DPM-Solver-2 in sigma~, no churn): Euler to the geometric
    midpoint sqrt(sigma_i sigma_next), then the full step with the slope there; 2 evaluations
    per step (k-diffusion's Euler step to sigma = 0 is sdegen's final denoising step)."""

    def level(self, s: float, s_down: float) -> float:
        return math.exp(0.5 * (math.log(s) + math.log(s_down)))

    def stage_floats(self, i: int) -> list[float]:
        s, s_down, s_mid = self.sig[i], self.down[i][0], self.second[i][0]
        return [s, s_mid - s, s_mid, s_down - s]

    def stage(self, i: int, x: Tensor, denoised: Tensor, c: list[Tensor]) -> Tensor:
        s, to_mid, s_mid, ds = c  # sigma, s_mid - sigma, s_mid, sigma_down - sigma
        d = (x - denoised) / s
        x_2 = x + d * to_mid
        _, denoised_2 = self.second_eval(i, x_2)
        return x + ((x_2 - denoised_2) / s_mid) * ds


class DPM2Ancestral(DPM2):
    """k-diffusion's sample_dpm_2_ancestral: a DPM-2 step to sigma_down, then noise of std
    sigma_up (eta = 1: DDPM's posterior variance); 2 evaluations per step."""

    def __init__(self, model, sde, ts: Tensor, *, eta: float, **noise) -> None:
        super().__init__(model, sde, ts, eta=eta, **noise)


class DPMpp2SAncestral(_TwoStage):
    """k-diffusion's sample_dpmpp_2s_ancestral: a DPM-Solver++(2S) step (r = 1/2, data
    prediction) to sigma_down, then noise of std sigma_up; 2 evaluations per step. eta = 0 is
    sdegen's `dpmpp_2s` (r = 1/2) on the same grid."""

    def __init__(self, model, sde, ts: Tensor, *, eta: float, **noise) -> None:
        super().__init__(model, sde, ts, eta=eta, **noise)

    def level(self, s: float, s_down: float) -> float:
        h = math.log(s) - math.log(s_down)  # lambda_next - lambda
        return math.exp(math.log(s) - 0.5 * h)

    def stage_floats(self, i: int) -> list[float]:
        s, s_down, s_mid = self.sig[i], self.down[i][0], self.second[i][0]
        h = math.log(s) - math.log(s_down)
        return [s_mid / s, math.expm1(-0.5 * h), s_down / s, math.expm1(-h)]

    def stage(self, i: int, x: Tensor, denoised: Tensor, c: list[Tensor]) -> Tensor:
        to_mid, e_mid, to_down, e_down = c
        x_2 = to_mid * x - e_mid * denoised
        _, denoised_2 = self.second_eval(i, x_2)
        return to_down * x - e_down * denoised_2


class _SigmaMultistep(_SigmaGrid):
    """x~_{i+1} = x~_i + sum_j c_j d_{i-j}: the slope d = (x~ - D)/sigma~ (the noise prediction)
    interpolated through the last k outputs by a polynomial, integrated exactly over sigma~;
    one evaluation per step. The first steps use the history available."""

    log_sigma = False  # interpolate in log sigma~ (DEIS) instead of sigma~ (LMS)

    def __init__(self, model, sde, ts: Tensor, *, order: int, max_order: int) -> None:
        super().__init__(model, sde, ts)
        self.order = check_int("order", order, 1, max_order)
        self.ds: list[Tensor] = []
        self._coeffs: list[list[float]] | None = None

    def current_order(self, i: int) -> int:
        return min(i + 1, self.order)

    def coeffs(self, i: int) -> list[float]:
        """Step i's factors of its last k slopes, newest first; every step's are computed at
        the first, vectorised (`lagrange_integrals_many`), as the step computed them."""
        if self._coeffs is None:
            sig, cases = self.sig, list[tuple[list[float], float, Weight]]()
            for j in range(self.n):
                k = self.current_order(j)
                if self.log_sigma:
                    # d as a polynomial in u = log(sigma~ / sigma~_j); dsigma~ = sigma~_j e^u du
                    nodes = [math.log(sig[j - q] / sig[j]) for q in range(k)]
                    weight = partial(_exp_weight, sig[j])
                    cases.append((nodes, math.log(sig[j + 1] / sig[j]), weight))
                else:
                    cases.append(
                        ([sig[j - q] - sig[j] for q in range(k)], sig[j + 1] - sig[j], None)
                    )
            self._coeffs = lagrange_integrals_many(cases)
        return self._coeffs[i]

    def step(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sig = self.path.alpha, self.sig
        denoised = self.model.denoise(x, self.path.t_batch(i, x))
        x_cur = x if alpha[i] == 1.0 else x / alpha[i]  # x / 1 is x exactly
        self.ds = (self.ds + [(x_cur - denoised) / sig[i]])[-self.order :]
        coeffs = self.coeffs(i)
        x_next = x_cur
        for c, d in zip(coeffs, reversed(self.ds[-len(coeffs) :])):
            x_next = x_next + c * d
        return scale(alpha[i + 1], x_next), denoised


def _exp_weight(s: float, u: float) -> float:
    """DEIS's weight s e^u (dsigma~ = sigma~_i e^u du)."""
    return s * math.exp(u)


class LMS(_SigmaMultistep):
    """k-diffusion's sample_lms: linear multistep of `order` (1..4) in sigma~, the Lagrange basis
    integrated exactly (k-diffusion uses scipy's quad at epsrel 1e-4); one evaluation per step.
    k-diffusion's last step, to sigma = 0, extrapolates as well; sdegen's final denoising
    step returns D at sigma_min instead."""

    def __init__(self, model, sde, ts: Tensor, *, order: int) -> None:
        super().__init__(model, sde, ts, order=order, max_order=4)


class DEIS(_SigmaMultistep):
    """DEIS (Zhang & Chen 2022) as diffusers' DEISMultistepScheduler (algorithm "deis", solver
    type "logrho"): the noise prediction extrapolated by the polynomial in log rho (rho =
    sigma~, so log rho = -lambda) through the last `order` outputs (1..3) and integrated exactly
    in rho, which is the exponential integrator for the noise prediction. Order 1 is DDIM. With
    fewer than 15 steps `lower_order_final` uses order 1 on the last step and at most 2 on the
    one before, as diffusers does. One evaluation per step."""

    log_sigma = True

    def __init__(self, model, sde, ts: Tensor, *, order: int, lower_order_final: bool) -> None:
        super().__init__(model, sde, ts, order=order, max_order=3)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)

    def current_order(self, i: int) -> int:
        k = super().current_order(i)
        if self.lower_order_final and self.n < 15:
            k = min(k, self.n - i)
        return k
