"""High-order exponential integrators in the log-SNR lambda: DPM-Solver++ (3M, 2S, 3S), its SDE
form, a UniPC-style predictor-corrector and an adaptive-step solver, for every linear SDE.

With lambda = log(alpha / sigma), h = lambda_s - lambda_t and x0(lambda) the denoiser along the
path, the family of reverse processes that share the SDE's marginals,
dx = [f x - (1 + eta^2)/2 g^2 score] dt + eta g dW (eta = 0: probability-flow ODE, eta = 1: reverse
SDE), has the exact variation-of-constants solution

    x_s = (sigma_s / sigma_t) e^{-eta^2 h} x_t
          + alpha_s int_0^h c e^{-c (h - u)} x0(lambda_t + u) du
          + sigma_s sqrt(1 - e^{-2 eta^2 h}) z,

c = 1 + eta^2 (Lu et al. 2022, DPM-Solver++ eqs. 9 and 19; Xue et al. 2023, SA-Solver). Every
method here replaces x0 by the polynomial interpolating a few evaluated denoiser outputs and
integrates that polynomial exactly (`exp_weights`). With previous outputs as nodes this is
DPM-Solver++(kM); with the new output at lambda_s added as a node it is an exponential
Adams-Moulton corrector, which is UniPC's structure (Zhao et al. 2023). Nothing divides by alpha,
so VE and EDM work unchanged.

For k = 3 the exact integral weights the second divided difference D2 = (D1_0 - D1_1)/(r0 + r1)
by 2 phi_3; k-diffusion 0.1.1 (sample_dpmpp_3m_sde) and diffusers 0.42 (DPMSolverMultistep,
order 3) weight it by phi_3 (tests/test_dpm.py checks the factor).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import check_finite_number, check_int
from .exponential import _sched
from .reverse_sde import Record, batch_t, randn_like


def _phi_moments(y: float, m: int) -> list[float]:
    """I_k(y) = int_0^y e^{v - y} v^k dv for k < m, without cancellation for small y.

    For y <= 1, I_k(y) = k! sum_{j >= 0} (-1)^j y^(k+1+j) / (k+1+j)!, an alternating series whose
    first term dominates; for larger y the recurrence I_0 = 1 - e^{-y}, I_k = y^k - k I_{k-1}
    loses nothing.
    """
    if y <= 1.0:
        out = []
        for k in range(m):
            term = y ** (k + 1) / math.factorial(k + 1)
            total, n = 0.0, k + 1
            while term != 0.0 and (total == 0.0 or abs(term) > 1e-18 * abs(total)):
                total += term
                n += 1
                term *= -y / n
            out.append(math.factorial(k) * total)
        return out
    out = [-math.expm1(-y)]
    for k in range(1, m):
        out.append(y**k - k * out[-1])
    return out


def exp_weights(nodes: list[float], h: float, c: float = 1.0) -> list[float]:
    """Quadrature weights w with int_0^h c e^{-c(h-u)} P(u) du = sum_j w_j P(nodes_j).

    Exact for every polynomial P of degree < len(nodes); nodes are offsets u from lambda_t (0 for
    the current point, negative for history, in (0, h] for stages or the new point).
    """
    m = len(nodes)
    if m == 0 or h <= 0 or c <= 0:
        raise ValueError(f"need nodes, h > 0 and c > 0; got {m} nodes, h={h!r}, c={c!r}")
    # Moments in the scaled variable v = u / h keep the Vandermonde system well conditioned.
    moments = _phi_moments(c * h, m)
    rhs = torch.tensor([moments[k] / (c * h) ** k for k in range(m)], dtype=torch.float64)
    v = torch.tensor([u / h for u in nodes], dtype=torch.float64)
    vander = v[None, :] ** torch.arange(m, dtype=torch.float64)[:, None]  # (k, j) = v_j^k
    return torch.linalg.solve(vander, rhs).tolist()


def _combine(terms: list[tuple[float, Tensor]]) -> Tensor:
    out = terms[0][0] * terms[0][1]
    for w, v in terms[1:]:
        out = out + w * v
    return out


class _Path:
    """alpha, sigma, lambda at grid or intermediate times, as Python floats."""

    def __init__(self, sde, ts: Tensor) -> None:
        self.sde = sde
        self.ts = ts
        self.alpha, self.sigma, self.lam = _sched(sde, ts)

    def at_lambda(self, lam: float) -> tuple[float, float, float]:
        """(t, alpha, sigma) at log-SNR lam."""
        t = self.sde.t_of_log_snr(torch.tensor([lam], dtype=torch.float64))
        return float(t[0]), float(self.sde.alpha(t)[0]), float(self.sde.sigma(t)[0])


def exp_step(
    x: Tensor,
    x0s: list[Tensor],
    nodes: list[float],
    h: float,
    sigma_ratio: float,
    alpha_s: float,
    sigma_s: float,
    eta: float = 0.0,
    z: Tensor | None = None,
) -> Tensor:
    """One step from lambda_t to lambda_t + h with x0 interpolated through (nodes, x0s).

    sigma_ratio = sigma_s / sigma_t. z: N(0, I) noise for eta > 0 (None: the mean step).
    """
    c = 1.0 + eta**2
    w = exp_weights(nodes, h, c)
    decay = math.exp(-(eta**2) * h)
    x_new = _combine([(sigma_ratio * decay, x)] + [(alpha_s * wj, x0) for wj, x0 in zip(w, x0s)])
    if eta > 0 and z is not None:
        x_new = x_new + sigma_s * math.sqrt(-math.expm1(-2 * eta**2 * h)) * z
    return x_new


def _multistep(
    model,
    sde,
    x: Tensor,
    ts: Tensor,
    *,
    order: int,
    eta: float,
    corrector: bool,
    lower_order_final: bool,
    generator,
    noise_final: bool,
    record: Record,
) -> Tensor:
    """Shared driver of the multistep methods; one evaluation per step."""
    p = _Path(sde, ts)
    n = len(ts) - 1
    hist_lam: list[float] = []
    hist_x0: list[Tensor] = []
    x0 = model.denoise(x, batch_t(ts[0].item(), x))
    for i in range(n):
        hist_lam, hist_x0 = (hist_lam + [p.lam[i]])[-order:], (hist_x0 + [x0])[-order:]
        k = len(hist_lam)
        if lower_order_final and n < 15:
            k = min(k, n - i)
        nodes = [lam - p.lam[i] for lam in hist_lam[-k:]]
        h = p.lam[i + 1] - p.lam[i]
        stochastic = eta > 0 and (i < n - 1 or noise_final)
        z = randn_like(x, generator) if stochastic else None
        ratio = p.sigma[i + 1] / p.sigma[i]
        x_new = exp_step(x, hist_x0[-k:], nodes, h, ratio, p.alpha[i + 1], p.sigma[i + 1], eta, z)
        if i < n - 1:
            # The next step needs x0 here anyway; a corrector reuses it at no extra cost.
            x0 = model.denoise(x_new, batch_t(ts[i + 1].item(), x))
            if corrector:
                x_new = exp_step(
                    x,
                    hist_x0[-k:] + [x0],
                    nodes + [h],
                    h,
                    ratio,
                    p.alpha[i + 1],
                    p.sigma[i + 1],
                    eta,
                    z,
                )
        x = x_new
        if record:
            record(x)
    return x


def dpmpp_3m(
    model,
    sde,
    x: Tensor,
    ts: Tensor,
    *,
    order: int = 3,
    eta: float = 0.0,
    lower_order_final: bool = True,
    generator=None,
    noise_final: bool = False,
    record: Record = None,
) -> Tensor:
    """DPM-Solver++(3M) (Lu et al. 2022, multistep, data prediction); one evaluation per step.

    The denoiser is extrapolated by the polynomial through the last `order` outputs (1..4) and
    integrated exactly. eta > 0 solves the stochastic family exactly for the extrapolated x0
    (eta = 1: SDE-DPM-Solver++, the reverse SDE). The first steps use the history available;
    with fewer than 15 steps `lower_order_final` lowers the order on the last steps, as
    DPM-Solver does (on longer grids it would cost global order, and stability is no issue).
    """
    order = check_int("order", order, 1, 4)
    eta = check_finite_number("eta", eta, nonnegative=True)
    return _multistep(
        model,
        sde,
        x,
        ts,
        order=order,
        eta=eta,
        corrector=False,
        lower_order_final=lower_order_final,
        generator=generator,
        noise_final=noise_final,
        record=record,
    )


def dpmpp_sde(
    model,
    sde,
    x: Tensor,
    ts: Tensor,
    *,
    order: int = 2,
    eta: float = 1.0,
    lower_order_final: bool = True,
    generator=None,
    noise_final: bool = False,
    record: Record = None,
) -> Tensor:
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, reverse-SDE form); one evaluation per step.

    `dpmpp_3m` with eta = 1 and order 2 by default: x_s = (sigma_s/sigma_t) e^{-h} x_t + alpha_s
    (quadrature of 2 e^{-2(h-u)} x0) + sigma_s sqrt(1 - e^{-2h}) z. With order 1 it is DDIM with
    eta = 1 (DDPM's ancestral step).
    """
    return dpmpp_3m(
        model,
        sde,
        x,
        ts,
        order=order,
        eta=eta,
        lower_order_final=lower_order_final,
        generator=generator,
        noise_final=noise_final,
        record=record,
    )


def unipc(
    model,
    sde,
    x: Tensor,
    ts: Tensor,
    *,
    order: int = 2,
    lower_order_final: bool = True,
    record: Record = None,
) -> Tensor:
    """UniPC-style predictor-corrector (Zhao et al. 2023); one evaluation per step.

    Predictor: `order`-step exponential Adams-Bashforth (as `dpmpp_3m`). The denoiser output at
    the predicted point, which the next step needs anyway, then corrects that point through the
    polynomial that also interpolates it (exponential Adams-Moulton, one order higher), so the
    corrector costs no evaluation. The last step is not corrected (that would cost one). UniPC's
    own coefficients come from its B(h) choices; here they are the exact integrals.
    """
    order = check_int("order", order, 1, 3)
    return _multistep(
        model,
        sde,
        x,
        ts,
        order=order,
        eta=0.0,
        corrector=True,
        lower_order_final=lower_order_final,
        generator=None,
        noise_final=False,
        record=record,
    )


def _singlestep(model, sde, x: Tensor, ts: Tensor, stages: tuple[float, ...], record) -> Tensor:
    """Exponential Runge-Kutta step with intermediate stages at lambda_t + r h, r in `stages`.

    Stage j interpolates the outputs before it linearly (first-order for the first stage);
    the final update interpolates the first output and the last stage's (DPM-Solver++ 2S/3S:
    their 'taylor' form, which integrates that line exactly).
    """
    p = _Path(sde, ts)
    n = len(ts) - 1
    for i in range(n):
        lam_t, h = p.lam[i], p.lam[i + 1] - p.lam[i]
        sig_t = p.sigma[i]
        x0_t = model.denoise(x, batch_t(ts[i].item(), x))
        outs, nodes = [x0_t], [0.0]
        for r in stages:
            t_r, a_r, s_r = p.at_lambda(lam_t + r * h)
            x_r = exp_step(x, outs[-2:], nodes[-2:], r * h, s_r / sig_t, a_r, s_r)
            outs.append(model.denoise(x_r, batch_t(t_r, x)))
            nodes.append(r * h)
        x = exp_step(
            x,
            [x0_t, outs[-1]],
            [0.0, nodes[-1]],
            h,
            p.sigma[i + 1] / sig_t,
            p.alpha[i + 1],
            p.sigma[i + 1],
        )
        if record:
            record(x)
    return x


def dpmpp_2s(model, sde, x: Tensor, ts: Tensor, *, r: float = 0.5, record: Record = None) -> Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022, singlestep order 2); two evaluations per step."""
    r = check_finite_number("r", r, positive=True)
    if r >= 1:
        raise ValueError(f"r must be in (0, 1), got {r!r}")
    return _singlestep(model, sde, x, ts, (r,), record)


def dpmpp_3s(model, sde, x: Tensor, ts: Tensor, *, record: Record = None) -> Tensor:
    """DPM-Solver++(3S) (Lu et al. 2022, singlestep order 3, r1 = 1/3, r2 = 2/3); three
    evaluations per step."""
    return _singlestep(model, sde, x, ts, (1 / 3, 2 / 3), record)


def _rms_error(err: Tensor, a: Tensor, b: Tensor, rtol: float, atol: float) -> float:
    scale = atol + rtol * torch.maximum(a.abs(), b.abs())
    return float(((err / scale) ** 2).flatten(1).mean(1).sqrt().max())


def dpm_adaptive(
    model,
    sde,
    x: Tensor,
    ts: Tensor,
    *,
    rtol: float = 0.05,
    atol: float = 0.0078,
    h_init: float = 0.05,
    safety: float = 0.9,
    record: Record = None,
) -> Tensor:
    """Adaptive step size in lambda with an embedded 2(3) pair (Lu et al. 2022, DPM-Solver-23).

    Each step evaluates x0 at lambda_t, lambda_t + h/3 and lambda_t + 2h/3 (3 evaluations; a
    rejected attempt costs 2, as x0 at lambda_t is kept; all are counted). The 3S update is
    propagated and the 2nd-order update through the first stage gives the error estimate
    E = max over the batch of the RMS of (x_3 - x_2) / (atol + rtol max(|x_3|, |x_2|)), so the
    NFE depends on the batch. A step is accepted when E <= 1; the next h is safety * h *
    E^(-1/3), growth at most 4x per step. The defaults are DPM-Solver's for data
    in [-1, 1] (atol = 0.0078, rtol = 0.05). Records the accepted states.
    """
    rtol = check_finite_number("rtol", rtol, positive=True)
    atol = check_finite_number("atol", atol, nonnegative=True)
    h = check_finite_number("h_init", h_init, positive=True)
    safety = check_finite_number("safety", safety, positive=True)
    lam_end = float(sde.log_snr(ts[-1:].to(torch.float64))[0])
    path = _Path(sde, ts[[0]])
    lam, t, sig = path.lam[0], ts[0].item(), path.sigma[0]
    x0_t: Tensor | None = None  # reused after a rejected attempt: the state has not moved
    while lam_end - lam > 1e-9:
        h = min(h, lam_end - lam)
        if x0_t is None:
            x0_t = model.denoise(x, batch_t(t, x))
        t1, a1, s1 = path.at_lambda(lam + h / 3)
        x1 = exp_step(x, [x0_t], [0.0], h / 3, s1 / sig, a1, s1)
        x0_1 = model.denoise(x1, batch_t(t1, x))
        t2, a2, s2 = path.at_lambda(lam + 2 * h / 3)
        x2 = exp_step(x, [x0_t, x0_1], [0.0, h / 3], 2 * h / 3, s2 / sig, a2, s2)
        x0_2 = model.denoise(x2, batch_t(t2, x))
        ts_, as_, ss_ = path.at_lambda(lam + h)
        if lam_end - lam - h <= 1e-9:
            ts_ = float(ts[-1])
            as_, ss_ = float(sde.alpha(ts[-1:])[0]), float(sde.sigma(ts[-1:])[0])
        x_hi = exp_step(x, [x0_t, x0_2], [0.0, 2 * h / 3], h, ss_ / sig, as_, ss_)
        x_lo = exp_step(x, [x0_t, x0_1], [0.0, h / 3], h, ss_ / sig, as_, ss_)
        err = _rms_error(x_hi - x_lo, x_hi, x_lo, rtol, atol)
        if err <= 1.0:
            x, lam, t, sig, x0_t = x_hi, lam + h, ts_, ss_, None
            if record:
                record(x)
        h = h * min(4.0, safety * max(err, 1e-10) ** (-1 / 3))
    return x


def edm_sde(
    model,
    sde,
    x: Tensor,
    ts: Tensor,
    *,
    churn: float = 40.0,
    s_tmin: float = 0.05,
    s_tmax: float = 50.0,
    s_noise: float = 1.003,
    generator=None,
    record: Record = None,
) -> Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2) for any linear SDE.

    In x~ = x / alpha and sigma~ = sigma / alpha, each step first raises the noise level by
    gamma = min(churn / N, sqrt(2) - 1) when sigma~ is in [s_tmin, s_tmax] (adding fresh noise
    of std s_noise sqrt(sigma_hat^2 - sigma~^2)), then takes a Heun step down to the next grid
    level (Euler on the last step). The raised level is mapped back to a time through the
    log-SNR, so it must stay below the SDE's maximum noise level; it is clipped there. churn = 0
    is the deterministic `heun`. Defaults: EDM's ImageNet-64 settings, scaled to sigma~.
    2 evaluations per step, 1 on the last.
    """
    churn = check_finite_number("churn", churn, nonnegative=True)
    s_tmin = check_finite_number("s_tmin", s_tmin, nonnegative=True)
    s_tmax = check_finite_number("s_tmax", s_tmax, nonnegative=True)
    s_noise = check_finite_number("s_noise", s_noise, positive=True)
    p = _Path(sde, ts)
    sig = [s / a for s, a in zip(p.sigma, p.alpha)]
    sig_max = sig[0]
    n = len(ts) - 1
    gamma0 = min(churn / n, math.sqrt(2) - 1)
    xt = x / p.alpha[0]  # x~
    for i in range(n):
        s_cur, t_cur = sig[i], ts[i].item()
        gamma = gamma0 if s_tmin <= s_cur <= s_tmax else 0.0
        s_hat = min(s_cur * (1 + gamma), sig_max)
        if s_hat > s_cur:
            noise = randn_like(xt, generator)
            xt = xt + s_noise * math.sqrt(s_hat**2 - s_cur**2) * noise
            t_cur, a_hat, _ = p.at_lambda(-math.log(s_hat))
        else:
            a_hat = p.alpha[i]
        d = (xt - model.denoise(a_hat * xt, batch_t(t_cur, xt))) / s_hat
        x_next = xt + (sig[i + 1] - s_hat) * d
        if i < n - 1:
            x0_next = model.denoise(p.alpha[i + 1] * x_next, batch_t(ts[i + 1].item(), xt))
            d_next = (x_next - x0_next) / sig[i + 1]
            x_next = xt + (sig[i + 1] - s_hat) * 0.5 * (d + d_next)
        xt = x_next
        if record:
            record(p.alpha[i + 1] * xt)
    return p.alpha[-1] * xt
