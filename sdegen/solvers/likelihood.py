"""Log-likelihood through the probability-flow ODE (Song et al. 2021, Appendix D.2).

Along any ODE dy/ds = F(y, s) the density of y obeys d log p_s(y_s)/ds = -div_y F, so
    log p_{s0}(y_{s0}) = log p_{s1}(y_{s1}) + int_{s0}^{s1} div_y F(y_s, s) ds.          (1)
The divergence is computed exactly (all D vector-Jacobian products, batched by torch.func.vmap in
chunks; see sdegen.divergence) or estimated by Hutchinson's trick with probes drawn once per solve
(Grathwohl et al. 2019, FFJORD). Two parametrisations of the PF-ODE are integrated (`time`):

time="t": y = x, s = t, F = v(x, t) = f(t) x - g(t)^2 score(x, t) / 2 from t_min to T, and
    log p_{t_min}(x) = log prior(x_T) + int_{t_min}^{T} div v dt.

time="angle" (default): the variance-normalised state u = x / r(t), r = sqrt(alpha^2 + sigma^2),
in the angle phi(t) = arctan(sigma(t) / alpha(t)) = arctan(exp(-lambda(t))), lambda the half
log-SNR. Then u = cos(phi) x0 + sin(phi) eps on a forward path, as in Salimans & Ho (2022,
"Progressive distillation", Sec. 4 and App. D) and TrigFlow (Lu & Song 2024), and the PF-ODE is
du/dphi = cos(phi) eps_hat - sin(phi) x0_hat (the v-prediction). With x0_hat = (x + sigma^2
score) / alpha and eps_hat = -sigma score (Tweedie), x = r u, cos(phi) = alpha / r and
sin(phi) = sigma / r, this is
    F(u, phi) = du/dphi = -tan(phi) (u + r score(r u, t(phi))),                          (2)
with t(phi) = sde.t_of_half_log_snr(-log tan phi). The divergence of (2) in u is
-tan(phi) (D + r^2 div_x score): the exact trace stays exact (the same `divergence` machinery
applied to u -> F(u, phi)), and a Rademacher probe sees the same estimate as in t, since
e^T e = D. The change of variable x = r u adds D log r to the log-density, so by (1)
    log p_{t_min}(x) = log prior(r_T u_T) + int_{phi_0}^{phi_T} div_u F dphi + D log(r_T / r_0),
phi_0 = phi(t_min), phi_T = phi(T). Why this form: if the data were N(0, I) then u would not move
(F = 0 exactly, since score = -x / r^2), so for data of unit scale both ends of the path, where
the data is nearly a point (phi -> 0) and where it is nearly the prior (phi -> pi/2), are almost
stationary, and the whole path is the bounded interval phi in (0, pi/2) whatever the SDE (VP,
VE, EDM and sub-VP give the same ODE up to where phi_0 and phi_T lie). benchmarks/
likelihood_speed.py measures it against t and against k-diffusion at equal error.

The ODE is integrated by sdegen's own embedded Runge-Kutta pair (solvers/rk.py; by default
method="auto": Dormand-Prince 5(4), or Bogacki-Shampine 3(2) where the tolerance is loose, see
AUTO_LOOSE_TOL) rather than torchdiffeq's: what made it cheaper at equal error, measured on the
benchmark's 2-D ring and 16-D mixture (VP and EDM), was (i) the error norm on the state alone,
the increment weighted 0.1 (the increment is a quadrature along the path, its error follows the
state's), (ii) no forced short landing step, and (iii) a first step predicted from the angle
ODE's O(1) scale instead of a probe, no longer, from the data end, than the data's finest scale
read off the first evaluation's divergence (data_end_step; measured on ill-conditioned mixtures).
A PI controller, Tsitouras 5(4), Dormand-Prince 8(7), a
per-example step size, the norm over examples as a mean or a max, and other integration
variables (log phi, sqrt phi, phi + c log phi, a sigma_data other than 1, and the
data-prediction form dw/ds = -x0_hat in s = -alpha / sigma, w = x / sigma) were measured and
gave no gain or a loss; so did, measured later, Verner's efficient 6(5) pair (2010, Numer.
Algorithms 53: 1.3-1.5x the evaluations at equal error: its order-5 estimate
holds the order-6 solution far tighter than needed), a goal-oriented
error norm (the state's error weighted by the adjoint, which here is r * score: it spent more),
the increment left out of the norm or weighted 1, Hairer's starting step instead of the predicted
one, a step growth limit of 3 or 5 (never reached), and a safety factor of 0.8 (better on one
table, worse on two). The half
log-SNR lambda itself was measured too and not kept: in lambda both ends are long stretches on
which the state grows or decays like exp(+-lambda) (x, x / sigma or x / alpha alike), and dopri5
needed more evaluations than in t for the same error (2-D ring, VP and EDM, tol 1e-3..1e-6).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._ode import SOLVERS, check_method, check_ode_settings, check_solver_options
from .._utils import append_dims, check_bool, check_choice, check_tensor_finite
from ..divergence import (
    VmapMemo,
    check_chunk,
    divergence,
    exact_divergence,
    hutchinson_divergence,
    probes_like,
)
from ..models.base import check_model_sde, check_sde
from ..models.density import bits_per_dim
from . import rk
from .counting import CountingModel
from .grid import batch_t
from .pf_ode import integrate, ode_drift
from .results import LikelihoodResult

# what a likelihood solve uses of the SDE
SDE_NEEDS = ("alpha", "sigma", "drift", "g2", "prior_log_prob", "t_min", "T")
# what the default time="angle" also needs: t(phi) through the half log-SNR
ANGLE_NEEDS = SDE_NEEDS + ("t_of_half_log_snr",)
# the variables the PF-ODE can be integrated in (see the module docstring)
TIMES = ("angle", "t")
# dtypes an ODE solve with likelihood tolerances can run in
SOLVE_DTYPES = (torch.float32, torch.float64)
# sdegen's own adaptive pairs (solvers/rk.py), and "auto" (the default): the pair chosen by the
# tolerance (auto_pair). Any other torchdiffeq method name goes to torchdiffeq.odeint, and
# "torchdiffeq:NAME" reaches torchdiffeq's NAME even where sdegen has a pair of that name
# (torchdiffeq's own dopri5).
AUTO = "auto"
OWN_METHODS = (AUTO, *rk.TABLEAUS)
# "auto" integrates with Bogacki-Shampine 3(2) where max(rtol, atol) >= AUTO_LOOSE_TOL and with
# Dormand-Prince 5(4) below. Why: a solve of few steps is cheaper with the lower order. A p-th
# order pair takes ~ L (C_p / tol)^(1/p) steps of s_p evaluations (bs3: p = 3, s = 3; dopri5:
# p = 5, s = 6), so the lower order wins above a crossover tolerance, 5.5e-3 at the state's
# tolerance (TOL_SCALE * tol) if C_3 = C_5, i.e. tol ~ 5e-2; measured on the benchmark's ring and
# 16-D mixture (benchmarks/likelihood_speed.py) bs3 needed fewer evaluations than dopri5 at equal
# log-density error down to tol = 1e-2 and more from 1e-3. 1e-2 was picked on those four
# tables and checked on four held-out ill-conditioned ones (gmm16c4s4/s5, VP and EDM), where it
# lowered the NFE ratio to k-diffusion too and raised it nowhere.
AUTO_LOOSE_TOL = 1e-2
TORCHDIFFEQ_PREFIX = "torchdiffeq:"
# how much each part of the state (y, delta) counts in the own pairs' error norm: the state's
# error drives both, and the log-density increment, a quadrature along the path, only weakly
# (measured: benchmarks/likelihood_speed.py; controlling delta alike cost more evaluations for
# the same error, leaving it out entirely was no better than 0.1)
ERROR_WEIGHTS = (1.0, 0.1)
# the own pairs hold the state to TOL_SCALE * (rtol, atol): with the increment weighted down,
# this keeps the log-density error at a given tolerance at or below what torchdiffeq's dopri5
# gave (measured on the benchmark's mixtures; the comparison at equal error does not depend on it)
TOL_SCALE = 0.1
# options an own pair takes (passed to rk.solve)
RK_OPTIONS = ("h0", "safety", "beta", "fac_min", "fac_max", "max_steps")


def auto_pair(rtol: float, atol: float) -> str:
    """The own pair that method="auto" integrates with at tolerances (rtol, atol): "bs3" where
    max(rtol, atol) >= AUTO_LOOSE_TOL (a loose solve: few steps), else "dopri5"."""
    return "bs3" if max(rtol, atol) >= AUTO_LOOSE_TOL else "dopri5"


def resolve_method(method: str) -> tuple[str, str]:
    """("sdegen", pair) for an own pair, ("torchdiffeq", name) for a torchdiffeq method, a bare
    name or "torchdiffeq:" + name; ValueError listing the names otherwise."""
    if isinstance(method, str) and method.startswith(TORCHDIFFEQ_PREFIX):
        return "torchdiffeq", check_method(method[len(TORCHDIFFEQ_PREFIX) :], "method")
    if method in OWN_METHODS:
        return "sdegen", method
    names = (*SOLVERS, *(m for m in OWN_METHODS if m not in SOLVERS), TORCHDIFFEQ_PREFIX + "NAME")
    return "torchdiffeq", check_choice("method", method, names)


def check_likelihood_x(x, name: str = "x") -> None:
    """Raise unless x is a finite float32/float64 tensor of shape (B, *D), B >= 1, D nonempty;
    the messages call it `name`."""
    check_tensor_finite(name, x)
    if x.ndim < 2 or x.shape[0] == 0 or x[:1].numel() == 0:
        raise ValueError(
            f"{name} must have shape (batch, *event_shape) with batch >= 1 and a nonempty event, "
            f"got {tuple(x.shape)}"
        )
    if x.dtype not in SOLVE_DTYPES:
        kind = "a floating-point" if not x.is_floating_point() else "a float32 or float64"
        raise TypeError(
            f"{name} must be {kind} tensor (the dtype of the ODE solve), got {x.dtype}; "
            f"convert it with {name}.double() (or {name}.float())"
        )


def log_likelihood(
    model,
    sde,
    x: Tensor,
    *,
    trace: str = "exact",
    probes: int = 1,
    noise: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = AUTO,
    generator: torch.Generator | None = None,
    differentiable: bool = False,
    chunk: int | None = None,
    options: dict | None = None,
    time: str = "angle",
) -> LikelihoodResult:
    """log p_{t_min}(x) in nats by integrating the PF-ODE with its divergence from t_min to T.

    Args:
        model: any object with score(x, t) (and denoise, eps), t of shape (B,).
        sde: the model's SDE; its prior gives log p_T(z).
        x: data of shape (B, *D); the dtype of x is the dtype of the solve (use float64 for
            tight tolerances).
        trace: "exact" (D VJPs per evaluation; exact up to the ODE tolerance) or "hutchinson"
            (`probes` VJPs per evaluation; an unbiased estimate).
        probes, noise: Hutchinson probe count and distribution ("rademacher" or "gaussian"),
            drawn once per solve from `generator`.
        rtol, atol: finite and > 0. With an own pair they bound the local error of the state
            (u or x) at TOL_SCALE * (rtol, atol), the log-density increment weighted by
            ERROR_WEIGHTS; with torchdiffeq, both parts at (rtol, atol) (its mixed RMS norm).
        method: "auto" (default: "bs3" where max(rtol, atol) >= AUTO_LOOSE_TOL = 1e-2, else
            "dopri5"), or one of sdegen's own adaptive pairs "dopri5", "tsit5", "bs3"
            (solvers/rk.py: every evaluation inside the interval, the last steps evenly spread,
            times as Python floats so no evaluation waits on the device); "torchdiffeq:NAME" for
            torchdiffeq's NAME; any other torchdiffeq method name (rk4, dopri8, ...) goes to
            torchdiffeq too.
        options: a dict or None: for an own pair, keywords of rk.solve (RK_OPTIONS: h0, safety,
            beta, fac_min, fac_max, max_steps; in the angle h0 defaults to
            (TOL_SCALE * tol)^(1/p), p the pair's order, a step predicted from the ODE's scale,
            and from the data end to no more than the data's finest scale (data_end_step); in
            t to Hairer's estimate); for torchdiffeq, its options.
        differentiable: keep the graph so log_prob can be back-propagated to the model's
            parameters (for maximum-likelihood training); otherwise every step is detached.
        chunk: basis vectors per batched VJP for the exact trace: an integer >= 1, or None
            (default) for as many as fit in ~2^24 elements.
        time: the integration variable (module docstring): "angle" (default), the state
            x / sqrt(alpha^2 + sigma^2) in phi = arctan(sigma / alpha), which needs fewer
            evaluations for the same error (benchmarks/likelihood_speed.py); or "t", the state x in
            the SDE's own time (what sdegen did before). Both solve the same ODE: they agree to the
            solver tolerance, and rtol, atol apply to the state of the chosen variable.
    Returns:
        LikelihoodResult (log_prob, prior_log_prob, delta_log_prob, z, nfe, nfe_backward).
    Raises:
        ValueError / TypeError naming the argument: an unknown trace, noise, method, own-pair
        option or time; probes
        not an integer >= 1; rtol or atol not finite and > 0; chunk not None or an integer
        >= 1; x not a finite float32/float64 tensor of shape (B, *D) with B >= 1; sde not an
        SDE object.
    """
    _, res = _solve(
        model,
        sde,
        x,
        reverse=False,
        log_prob=True,
        trace=trace,
        probes=probes,
        noise=noise,
        rtol=rtol,
        atol=atol,
        method=method,
        generator=generator,
        differentiable=differentiable,
        chunk=chunk,
        options=options,
        time=time,
    )
    if res is None:  # unreachable: a solve with log_prob=True returns its result
        raise RuntimeError("log_likelihood: the solve returned no log-density")
    return res


def pf_ode_sample(
    model,
    sde,
    z: Tensor,
    *,
    log_prob: bool = True,
    trace: str = "exact",
    probes: int = 1,
    noise: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = AUTO,
    generator: torch.Generator | None = None,
    differentiable: bool = False,
    chunk: int | None = None,
    options: dict | None = None,
    time: str = "angle",
) -> tuple[Tensor, LikelihoodResult | None]:
    """The PF-ODE carried backwards, from a draw z at T to x at t_min, by the same solve
    `log_likelihood` makes forwards (same variable, pair, tolerances and step control), and,
    with log_prob=True, the log-density of x in the same solve (Song et al. 2021, App. D.2:
    log p_{t_min}(x) = log prior(z) + int_{t_min}^{T} div v dt, the integral carried along).

    Args:
        z: the state at T, shape (B, *D), a finite float32/float64 tensor (e.g. a prior draw).
        log_prob: integrate the divergence too (trace, probes, noise, chunk as in
            log_likelihood); False carries the state alone, one model call per evaluation and
            no VJP.
        differentiable: keep the graph through the solve (x, and log_prob where asked, are then
            differentiable in z and in the model's parameters: a reparametrized sample);
            otherwise every step is detached.
        the rest: as in `log_likelihood`, checked by the same functions.
    Returns:
        (x of shape (B, *D), a LikelihoodResult of x whose `z` is the given z, or None when
        log_prob is False).
    Raises:
        what log_likelihood raises, for z in the place of x.
    """
    return _solve(
        model,
        sde,
        z,
        reverse=True,
        log_prob=log_prob,
        trace=trace,
        probes=probes,
        noise=noise,
        rtol=rtol,
        atol=atol,
        method=method,
        generator=generator,
        differentiable=differentiable,
        chunk=chunk,
        options=options,
        time=time,
    )


def _solve(
    model,
    sde,
    y: Tensor,
    *,
    reverse: bool,
    log_prob: bool,
    trace: str,
    probes: int,
    noise: str,
    rtol: float,
    atol: float,
    method: str,
    generator: torch.Generator | None,
    differentiable: bool,
    chunk: int | None,
    options: dict | None,
    time: str,
) -> tuple[Tensor, LikelihoodResult | None]:
    """The one PF-ODE solve behind log_likelihood (reverse=False: y = x at t_min, carried to T)
    and pf_ode_sample (reverse=True: y = z at T, carried to t_min). log_prob False carries the
    state alone (trace is checked all the same). Returns (the state at the other end, in x's
    units; the LikelihoodResult of the t_min end, or None when log_prob is False)."""
    cfg = check_ode_settings(
        trace=trace,
        probes=probes,
        noise=noise,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
        method_check=resolve_method,
    )
    rtol, atol = cfg["rtol"], cfg["atol"]
    integrator, method = cfg["method"]
    if method == AUTO:
        method = auto_pair(rtol, atol)
    if integrator == "sdegen":
        rk_options = _rk_options(options)
    else:
        rk_options = {}
        check_solver_options(method, options)
    check_chunk(chunk)
    differentiable = check_bool("differentiable", differentiable)
    check_choice("time", time, TIMES)
    check_sde(sde, ANGLE_NEEDS if time == "angle" else SDE_NEEDS)
    check_model_sde(model, sde)
    check_likelihood_x(y, "z" if reverse else "x")
    counted = CountingModel(model)
    eps = probes_like(y, probes, noise, generator) if log_prob and trace == "hutchinson" else None
    vjp_count = [0]
    dim = y[0].numel()

    memo = VmapMemo()  # what torch.func can do with this model, learned once per solve

    if time == "angle":
        (phi0, phiT), (r0, rT) = _angles(sde)

        def field(s: float, u: Tensor) -> Tensor:
            phi = s
            # (2): du/dphi = -tan(phi) (u + r score(r u, t)), with t, alpha, sigma at t(phi)
            lam = torch.tensor(-math.log(math.tan(phi)), dtype=torch.float64)
            tb = batch_t(float(sde.t_of_half_log_snr(lam)), u)  # a CPU tensor: no device sync
            a, sg = append_dims(sde.alpha(tb), u.ndim), append_dims(sde.sigma(tb), u.ndim)
            r = torch.sqrt(a * a + sg * sg)
            return -(sg / a) * (u + r * counted.score(r * u, tb))

        ends: tuple[float, float] = (phi0, phiT)
        bounds: tuple[float, float] | None = ends
        scale_in, scale_out = (rT, r0) if reverse else (r0, rT)
        # a step predicted from the ODE's scale: for unit-scale data u and F are O(1) on an
        # interval of ~pi/2, so a step of a p-th order pair meets the tolerance near tol^(1/p).
        # From the data end, no longer than the data's finest scale (data_end_step, read off the
        # first evaluation's divergence): on ill-conditioned data (variances ~1e-4) the step from
        # the tolerance alone straddled that scale and was accepted on a wrong error estimate
        # (mean error 40-70x the tolerance on a Gaussian of condition number 1e4 at tol 1e-3)
        if integrator == "sdegen" and "h0" not in rk_options:
            p = rk.TABLEAUS[method].order
            h_tol = min(phiT - phi0, (TOL_SCALE * (rtol + atol) / 2) ** (1 / p))
            rk_options["h0"] = h_tol
            if log_prob and not reverse:
                rk_options["h0"] = lambda k1: min(h_tol, data_end_step(k1[1], phi0))
    else:

        def field(s: float, u: Tensor) -> Tensor:
            return ode_drift(counted, sde, u, batch_t(s, u))

        ends, bounds, scale_in, scale_out = (sde.t_min, sde.T), None, 1.0, 1.0
    if reverse:
        ends = (ends[1], ends[0])

    def func(s: float, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        y = state[0] if differentiable else state[0].detach()
        if not log_prob:
            v = field(s, y)
            return (v if differentiable else v.detach(),)
        v, div = divergence(
            lambda u: field(s, u),
            y,
            trace=trace,
            probes=eps,
            chunk=chunk,
            create_graph=differentiable,
            memo=memo,
        )
        vjp_count[0] += dim if trace == "exact" else probes
        if not differentiable:
            v, div = v.detach(), div.detach()
        return v, div

    start: tuple[Tensor, ...] = (y / scale_in,)
    if log_prob:
        start += (torch.zeros(y.shape[0], dtype=y.dtype, device=y.device),)
    grad_ctx = torch.enable_grad() if differentiable else torch.no_grad()
    with grad_ctx:
        if integrator == "sdegen":
            end, _ = rk.solve(
                func,
                start,
                ends[0],
                ends[1],
                rtol=TOL_SCALE * rtol,
                atol=TOL_SCALE * atol,
                method=method,
                weights=ERROR_WEIGHTS[: len(start)],
                **rk_options,
            )
        else:  # torchdiffeq hands the time over as a 0-dim tensor (read back: a host sync)
            path = integrate(
                lambda s, state: func(float(s), state),
                start,
                torch.tensor(ends, dtype=y.dtype, device=y.device),
                sde,
                rtol=rtol,
                atol=atol,
                method=method,
                options=options,
                bounds=bounds,
            )
            end = tuple(p[-1] for p in path)
    # back to x = r u: the Jacobian of the change of variable adds D log(r_T / r_0)
    y_end = end[0] * scale_out
    if not log_prob:
        return y_end, None
    # the increment from t_min to T (a reverse solve integrated it from T to t_min)
    delta = -end[1] if reverse else end[1]
    if time == "angle":
        delta = delta + dim * math.log(rT / r0)
    z = y if reverse else y_end
    prior = sde.prior_log_prob(z)
    return y_end, LikelihoodResult(
        log_prob=prior + delta,
        prior_log_prob=prior,
        delta_log_prob=delta,
        z=z,
        nfe=counted.nfe,
        nfe_backward=vjp_count[0],
        trace=trace,
    )


def _rk_options(options: dict | None) -> dict:
    """The options of an own pair (keywords of rk.solve: RK_OPTIONS) as a new dict; ValueError
    naming an unknown one."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(RK_OPTIONS))
    if unknown:
        raise ValueError(
            f"options {unknown} are not options of sdegen's own ODE pairs (method in "
            f"{', '.join(OWN_METHODS)}); expected some of: {', '.join(RK_OPTIONS)} (torchdiffeq's "
            f"options go with method='{TORCHDIFFEQ_PREFIX}NAME')"
        )
    return options


def data_end_step(div0: Tensor, phi0: float) -> float:
    """A first step that does not straddle the data's finest scale, read off the divergence
    div0 = div_u F(u, phi0) of the first evaluation (shape (B,); no extra evaluation).

    For data whose noised u = x / r has covariance C at phi0 (locally, for a mixture),
    div_u F = tan(phi) (tr C^-1 - D) by (2) and Tweedie (r^2 div_x score = -tr C^-1), so
    q = div_u F / tan(phi0) = sum_i (1 / var_i - 1) over C's eigenvalues var_i, and
    1 / sqrt(1 + q) <= the smallest standard deviation sqrt(var_min) of u wherever every
    var_i <= 1 (each term is then >= 0; a variance above 1 lowers q by less than 1). q is
    averaged over the batch (a Hutchinson trace gives an unbiased estimate of it). The step is
    that bound, but no shorter than phi0 itself: every var_i >= sin(phi0)^2, so nothing in the
    field is finer than phi0. Unit-scale data gives q ~ 0 and a step of 1, which the step from
    the tolerance caps.
    """
    q = max(0.0, float(div0.detach().mean()) / math.tan(phi0))
    return max(phi0, 1.0 / math.sqrt(1.0 + q))


def _angles(sde) -> tuple[tuple[float, float], tuple[float, float]]:
    """((phi_0, phi_T), (r_0, r_T)): the angle arctan(sigma / alpha) and the scale
    sqrt(alpha^2 + sigma^2) at t_min and T, in float64, as Python floats."""
    ends = torch.tensor([sde.t_min, sde.T], dtype=torch.float64)
    a, s = sde.alpha(ends), sde.sigma(ends)
    phi, r = torch.atan2(s, a), torch.hypot(a, s)
    return (float(phi[0]), float(phi[1])), (float(r[0]), float(r[1]))


__all__ = [
    "log_likelihood",
    "pf_ode_sample",
    "bits_per_dim",
    "exact_divergence",
    "hutchinson_divergence",
]
