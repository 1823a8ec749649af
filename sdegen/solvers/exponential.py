"""Exponential integrators in the log-SNR lambda = log(alpha/sigma), for every linear SDE: DDIM,
DPM-Solver++ (2M, 3M, 2S, 3S), SDE-DPM-Solver++ and a UniPC-style predictor-corrector.

With h = lambda_s - lambda_t and x0(lambda) the denoiser along the path, the family of reverse
processes that share the SDE's marginals, dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dW
(eta = 0: probability-flow ODE, eta = 1: reverse SDE), has the exact variation-of-constants
solution

    x_s = (sigma_s / sigma_t) e^{-eta^2 h} x_t
          + alpha_s int_0^h c e^{-c (h - u)} x0(lambda_t + u) du
          + sigma_s sqrt(1 - e^{-2 eta^2 h}) z,

c = 1 + eta^2 (Lu et al. 2022, DPM-Solver++ eqs. 9 and 19; Xue et al. 2023, SA-Solver). Only the
denoiser is approximated. Freezing x0 over the step gives DDIM; the higher methods replace x0 by
the polynomial interpolating a few evaluated denoiser outputs and integrate it exactly
(`exp_weights`, in exp_quadrature.py). With previous outputs as nodes this is DPM-Solver++(kM);
with the new output at lambda_s added as a node it is an exponential Adams-Moulton corrector,
which is UniPC's structure (Zhao et al. 2023). Nothing divides by alpha, so VE (alpha = 1) and
schedules with small alpha(T) work the same way.
"""

from __future__ import annotations

import math

from torch import Tensor

from .._utils import check_bool, check_finite_number, check_int
from .exp_quadrature import (
    LogSNRSchedule,
    TimeRows,
    combine,
    exp_step,
    exp_weights,
    exp_weights_many,
    scale,
    step_coefficients,
)
from .grid import GridMethod, randn_like

__all__ = ["DDIM", "DPMpp2M", "DPMpp3M", "UniPC", "DPMpp2S", "DPMpp3S", "exp_step", "exp_weights"]


class DDIM(GridMethod):
    """DDIM (Song, Meng & Ermon 2021, eq. 12) for any linear SDE; one evaluation per step.

    x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z, with eps = (x_t - alpha_t x0)/sigma_t and
    c = eta * G sigma_s / sigma_t, G^2 = sigma_t^2 - (alpha_t/alpha_s)^2 sigma_s^2. eta = 0 is the
    first-order exponential integrator of the PF-ODE; eta = 1 is DDPM's ancestral sampler.
    """

    def __init__(self, model, sde, ts: Tensor, *, eta: float, **noise) -> None:
        super().__init__(model, sde, ts, **noise)
        self.eta = check_finite_number("eta", eta, nonnegative=True)
        self.path = p = LogSNRSchedule(sde, ts)
        # per step: the noise std c and the factor sqrt(sigma_s^2 - c^2) / sigma_t, once
        self.c, self.coef = [], []
        for i in range(self.n):
            at, st, as_, ss = p.alpha[i], p.sigma[i], p.alpha[i + 1], p.sigma[i + 1]
            c = 0.0
            if self.eta > 0 and self.adds_noise(i):
                g2 = max(st**2 - (at / as_ * ss) ** 2, 0.0)
                c = min(self.eta * math.sqrt(g2) * ss / st, ss)
            self.c.append(c)
            self.coef.append(math.sqrt(ss**2 - c**2) / st)

    def step(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.path
        at, as_ = p.alpha[i], p.alpha[i + 1]
        x0 = self.model.denoise(x, p.t_batch(i, x))
        # x_s = alpha_s x0 + (sqrt(sigma_s^2 - c^2)/sigma_t) (x_t - alpha_t x0) + c z
        x_s = scale(as_, x0) + self.coef[i] * (x - scale(at, x0))
        if self.c[i] > 0:
            x_s = x_s + self.c[i] * randn_like(x_s, self.generator)
        return x_s, x0


class DPMpp2M(GridMethod):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2); one evaluation per step.

    The first step is first order (no history); with `lower_order_final` so is the last, which
    keeps few-step sampling stable (their Appendix; global order stays 2).
    """

    def __init__(self, model, sde, ts: Tensor, *, lower_order_final: bool) -> None:
        super().__init__(model, sde, ts)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.path = LogSNRSchedule(sde, ts)
        self.x0_prev: Tensor | None = None

    def step(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        alpha, sigma, lam = self.path.alpha, self.path.sigma, self.path.lam
        x0 = self.model.denoise(x, self.path.t_batch(i, x))
        h = lam[i + 1] - lam[i]
        if self.x0_prev is None or (self.lower_order_final and i == self.n - 1):
            d = x0
        else:
            r = (lam[i] - lam[i - 1]) / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * self.x0_prev
        self.x0_prev = x0
        # x_s = (sigma_s/sigma_t) x_t + alpha_s (1 - e^{-h}) D
        return (sigma[i + 1] / sigma[i]) * x + alpha[i + 1] * (-math.expm1(-h)) * d, x0


class DPMpp3M(GridMethod):
    """DPM-Solver++(3M) (Lu et al. 2022, multistep, data prediction); one evaluation per step.

    The denoiser is extrapolated by the polynomial through the last `order` outputs (1..4) and
    integrated exactly. eta > 0 solves the stochastic family exactly for the extrapolated x0
    (eta = 1: SDE-DPM-Solver++, the reverse SDE; with order 1 that is DDIM with eta = 1,
    DDPM's ancestral step). The first steps use the history available; with fewer than 15 steps
    `lower_order_final` lowers the order on the last steps, as DPM-Solver does (on longer grids
    it would cost global order, and stability is no issue).

    With `corrector` (UniPC), the output at the new point, which the next step needs anyway,
    corrects that point through the polynomial that also interpolates it, at no cost.

    The exact integral weights the second divided difference D2 = (D1_0 - D1_1)/(r0 + r1) by
    2 phi_3; k-diffusion 0.1.1 (sample_dpmpp_3m_sde) and diffusers 0.42 (DPMSolverMultistep,
    order 3) weight it by phi_3 (tests/test_dpm.py checks the factor).
    """

    max_order = 4
    corrector = False

    def __init__(
        self, model, sde, ts: Tensor, *, order: int, eta: float, lower_order_final: bool, **noise
    ) -> None:
        super().__init__(model, sde, ts, **noise)
        self.order = check_int("order", order, 1, self.max_order)
        self.eta = check_finite_number("eta", eta, nonnegative=True)
        self.lower_order_final = check_bool("lower_order_final", lower_order_final)
        self.path = p = LogSNRSchedule(sde, ts)
        self.hist_x0: list[Tensor] = []
        self.x0: Tensor | None = None  # the output at the current point, from the last step
        # per step, once per solve: the order k, the nodes (the last k lambdas, as offsets from
        # lambda_i) and their weights, those of the corrector (the new point as a node too)
        c = 1.0 + self.eta**2
        self.k, self.nodes, cases = [], [], []
        for i in range(self.n):
            k = min(i + 1, self.order)
            if self.lower_order_final and self.n < 15:
                k = min(k, self.n - i)
            nodes = [p.lam[j] - p.lam[i] for j in range(i + 1 - k, i + 1)]
            h = p.lam[i + 1] - p.lam[i]
            self.k.append(k)
            self.nodes.append(nodes)
            cases.append((nodes, h, c))
            if self.corrector and i < self.n - 1:
                cases.append((nodes + [h], h, c))
        weights = iter(exp_weights_many(cases))
        self.w, self.w_corr = [], []
        for i in range(self.n):
            self.w.append(next(weights))
            self.w_corr.append(next(weights) if self.corrector and i < self.n - 1 else None)

    def coefficients(self, t: Tensor) -> dict[str, list[list[float]]]:
        # each step's factors of x and of the x0s (predictor, corrector) and of the noise
        p, pred, corr, noise = self.path, [], [], []
        for i in range(self.n):
            h = p.lam[i + 1] - p.lam[i]
            at = (h, p.sigma[i + 1] / p.sigma[i], p.alpha[i + 1], p.sigma[i + 1], self.eta)
            c, nz = step_coefficients(self.w[i], *at)
            pred.append(c)
            noise.append([nz])
            w_corr = self.w_corr[i]
            corr.append([] if w_corr is None else step_coefficients(w_corr, *at)[0])
        out = {"pred": pred, "corr": corr}
        return {**out, "noise": noise} if self.eta > 0 else out  # no noise at eta = 0

    def step(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        p, n, k, c = self.path, self.n, self.k[i], self.coefs(x)
        if self.x0 is None:
            self.x0 = self.model.denoise(x, p.t_batch(0, x))
        x0 = self.x0
        self.hist_x0 = (self.hist_x0 + [x0])[-self.order :]
        z = randn_like(x, self.generator) if self.eta > 0 and self.adds_noise(i) else None
        x0s = self.hist_x0[-k:]
        # exp_step with every factor computed once per solve; x's term is shared
        pred = c["pred"][i]
        first = pred[0] * x
        x_s = combine(first, pred[1:], x0s)
        if z is not None:
            x_s = x_s + c["noise"][i][0] * z
        if i < n - 1:
            # The next step needs x0 here anyway; a corrector reuses it at no extra cost.
            self.x0 = self.model.denoise(x_s, p.t_batch(i + 1, x))
            if self.corrector:
                x_s = combine(first, c["corr"][i][1:], [*x0s, self.x0])
                if z is not None:
                    x_s = x_s + c["noise"][i][0] * z
        return x_s, x0


class UniPC(DPMpp3M):
    """UniPC-style predictor-corrector (Zhao et al. 2023); one evaluation per step.

    Predictor: `order`-step exponential Adams-Bashforth (1..3, as DPM-Solver++(kM)). The
    denoiser output at the predicted point, which the next step needs anyway, then corrects that
    point through the polynomial that also interpolates it (exponential Adams-Moulton, one order
    higher), so the corrector costs no evaluation. The last step is not corrected (that would
    cost one). UniPC's own coefficients come from its B(h) choices; here they are the exact
    integrals.
    """

    max_order = 3
    corrector = True

    def __init__(self, model, sde, ts: Tensor, *, order: int, lower_order_final: bool) -> None:
        super().__init__(model, sde, ts, order=order, eta=0.0, lower_order_final=lower_order_final)


class _Singlestep(GridMethod):
    """Exponential Runge-Kutta step with intermediate stages at lambda_t + r h, r in `stages`.

    Stage j interpolates the outputs before it linearly (first-order for the first stage);
    the final update interpolates the first output and the last stage's (DPM-Solver++ 2S/3S:
    their 'taylor' form, which integrates that line exactly).
    """

    def __init__(self, model, sde, ts: Tensor, stages: tuple[float, ...]) -> None:
        super().__init__(model, sde, ts)
        self.stages = stages
        self.path = p = LogSNRSchedule(sde, ts)
        # per step, once per solve: each stage's (t, alpha, sigma) and weights, and the final
        # update's weights
        lams, cases = [], []
        for i in range(self.n):
            lam_t, h = p.lam[i], p.lam[i + 1] - p.lam[i]
            nodes = [0.0]
            for r in stages:
                lams.append(lam_t + r * h)
                cases.append((nodes[-2:], r * h, 1.0))
                nodes.append(r * h)
            cases.append(([0.0, nodes[-1]], h, 1.0))
        self.at_stage = p.at_lambdas(lams)
        self.t_stage = TimeRows([t for t, _, _ in self.at_stage])
        self.w = exp_weights_many(cases)

    def coefficients(self, t: Tensor) -> dict[str, list[list[float]]]:
        # exp_step's factors of each stage (x's, then the x0s') and of each final update
        p, m, stage, final = self.path, len(self.stages), [], []
        for i in range(self.n):
            h, sig_t = p.lam[i + 1] - p.lam[i], p.sigma[i]
            for j, r in enumerate(self.stages):
                _, a_r, s_r = self.at_stage[m * i + j]
                w = self.w[(m + 1) * i + j]
                stage.append(step_coefficients(w, r * h, s_r / sig_t, a_r, s_r)[0])
            w = self.w[(m + 1) * i + m]
            ratio = p.sigma[i + 1] / sig_t
            final.append(step_coefficients(w, h, ratio, p.alpha[i + 1], p.sigma[i + 1])[0])
        return {"stage": stage, "final": final}

    def step(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        p, m, c = self.path, len(self.stages), self.coefs(x)
        x0_t = self.model.denoise(x, p.t_batch(i, x))
        outs = [x0_t]
        for j in range(m):
            # exp_step through the last two outputs, factors computed once per solve
            w = c["stage"][m * i + j]
            x_r = combine(w[0] * x, w[1:], outs[-2:])
            outs.append(self.model.denoise(x_r, self.t_stage(m * i + j, x)))
        w = c["final"][i]
        return combine(w[0] * x, w[1:], [x0_t, outs[-1]]), x0_t


class DPMpp2S(_Singlestep):
    """DPM-Solver++(2S) (Lu et al. 2022, singlestep order 2, stage at lambda_t + r h); two
    evaluations per step."""

    def __init__(self, model, sde, ts: Tensor, *, r: float) -> None:
        r = check_finite_number("r", r, positive=True)
        if r >= 1:
            raise ValueError(f"r must be in (0, 1), got {r!r}")
        super().__init__(model, sde, ts, (r,))


class DPMpp3S(_Singlestep):
    """DPM-Solver++(3S) (Lu et al. 2022, singlestep order 3, r1 = 1/3, r2 = 2/3); three
    evaluations per step."""

    def __init__(self, model, sde, ts: Tensor) -> None:
        super().__init__(model, sde, ts, (1 / 3, 2 / 3))


def __getattr__(name: str):
    # the function forms these methods had before the one loop (deprecated)
    from ._deprecated import legacy

    return legacy(__name__, name)
