"""Log-likelihood through the probability-flow ODE (Song et al. 2021, Appendix D.2).

Along the PF-ODE dx/dt = v(x, t), d log p_t(x_t)/dt = -div v, so
    log p_{t_min}(x) = log p_T(z) + int_{t_min}^{T} div v(x_t, t) dt,   z = x(T).
The divergence is computed exactly (all D vector-Jacobian products, batched by torch.func.vmap in
chunks; see sdegen.divergence) or estimated by Hutchinson's trick with probes drawn once per solve
(Grathwohl et al. 2019, FFJORD).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._ode import check_ode_settings
from .._utils import check_tensor_finite
from ..divergence import (
    VmapMemo,
    check_chunk,
    divergence,
    exact_divergence,
    hutchinson_divergence,
    probes_like,
)
from ..models.base import check_sde
from ..models.density import bits_per_dim
from .counting import CountingModel
from .grid import batch_t
from .pf_ode import integrate, ode_drift
from .results import LikelihoodResult

# what a likelihood solve uses of the SDE
SDE_NEEDS = ("alpha", "sigma", "drift", "g2", "prior_log_prob", "t_min", "T")
# dtypes an ODE solve with likelihood tolerances can run in
SOLVE_DTYPES = (torch.float32, torch.float64)


def check_likelihood_x(x) -> None:
    """Raise unless x is a finite float32/float64 tensor of shape (B, *D), B >= 1, D nonempty."""
    check_tensor_finite("x", x)
    if x.ndim < 2 or x.shape[0] == 0 or x[:1].numel() == 0:
        raise ValueError(
            f"x must have shape (batch, *event_shape) with batch >= 1 and a nonempty event, "
            f"got {tuple(x.shape)}"
        )
    if x.dtype not in SOLVE_DTYPES:
        kind = "a floating-point" if not x.is_floating_point() else "a float32 or float64"
        raise TypeError(
            f"x must be {kind} tensor (the dtype of the ODE solve), got {x.dtype}; "
            "convert it with x.double() (or x.float())"
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
    method: str = "dopri5",
    generator: torch.Generator | None = None,
    differentiable: bool = False,
    chunk: int | None = None,
    options: dict | None = None,
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
        rtol, atol, method, options: passed to torchdiffeq.odeint; rtol and atol finite and > 0,
            method a torchdiffeq method name, options a dict or None.
        differentiable: keep the graph so log_prob can be back-propagated to the model's
            parameters (for maximum-likelihood training); otherwise every step is detached.
        chunk: basis vectors per batched VJP for the exact trace: an integer >= 1, or None
            (default) for as many as fit in ~2^24 elements.
    Returns:
        LikelihoodResult (log_prob, prior_log_prob, delta_log_prob, z, nfe, nfe_backward).
    Raises:
        ValueError / TypeError naming the argument: an unknown trace, noise or method; probes
        not an integer >= 1; rtol or atol not finite and > 0; chunk not None or an integer
        >= 1; x not a finite float32/float64 tensor of shape (B, *D) with B >= 1; sde not an
        SDE object.
    """
    cfg = check_ode_settings(
        trace=trace,
        probes=probes,
        noise=noise,
        rtol=rtol,
        atol=atol,
        method=method,
        options=options,
    )
    rtol, atol = cfg["rtol"], cfg["atol"]
    check_chunk(chunk)
    check_sde(sde, SDE_NEEDS)
    check_likelihood_x(x)
    counted = CountingModel(model)
    eps = probes_like(x, probes, noise, generator) if trace == "hutchinson" else None
    vjp_count = [0]
    dim = x[0].numel()

    memo = VmapMemo()  # what torch.func can do with this model, learned once per solve

    def func(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        y = state[0] if differentiable else state[0].detach()
        tb = batch_t(float(t.detach()), y)
        v, div = divergence(
            lambda u: ode_drift(counted, sde, u, tb),
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

    ts = torch.tensor([sde.t_min, sde.T], dtype=x.dtype, device=x.device)
    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    grad_ctx = torch.enable_grad() if differentiable else torch.no_grad()
    with grad_ctx:
        zs, deltas = integrate(
            func, (x, delta0), ts, sde, rtol=rtol, atol=atol, method=method, options=options
        )
    z, delta = zs[-1], deltas[-1]
    prior = sde.prior_log_prob(z)
    return LikelihoodResult(
        log_prob=prior + delta,
        prior_log_prob=prior,
        delta_log_prob=delta,
        z=z,
        nfe=counted.nfe,
        nfe_backward=vjp_count[0],
        trace=trace,
    )


__all__ = ["log_likelihood", "bits_per_dim", "exact_divergence", "hutchinson_divergence"]
