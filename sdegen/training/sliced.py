"""Sliced score matching (Song, Garg, Shi & Ermon 2019), beside denoising score matching.

Hyvarinen's (2005) score-matching objective 1/2 E_p ||s(x) - grad log p(x)||^2 equals, after an
integration by parts, E_p [tr(ds/dx) + 1/2 ||s||^2] plus a constant that does not depend on s;
the trace costs D backward passes. Sliced score matching projects onto random directions v
with E[v v^T] = I (Rademacher or standard normal):

    J(s) = E_p E_v [ v^T (ds/dx) v + 1/2 (v^T s)^2 ],

one vector-Jacobian product per projection (the term v^T (ds/dx) v is Hutchinson's estimate of
the trace, `sdegen.divergence`). The variance-reduced form SSM-VR takes the second term's
expectation over v exactly, 1/2 ||s||^2. "exact" computes the trace itself (D VJPs; for low
dimensions and for tests). All three have the same expectation,

    J(s) = 1/2 E_p ||s - grad log p||^2 - 1/2 E_p ||grad log p||^2,

so they are minimised by the true score, and need only samples of p, never its score.

Noise-conditional SSM (`ssm_loss`) applies this to every marginal p_t of an SDE: x_t =
alpha x0 + sigma eps is a sample of p_t, and the per-time objective is weighted as DSM's. With
lambda(t) the factor DSM puts on ||s - grad log p(x_t | x0)||^2 (sigma^2/D for "simple",
sigma^2 for "sigma2", the likelihood weighting's g^2 (T - t_min)/2 or, importance-sampled,
(lambda_max - lambda_min) sigma^2), the per-example loss is 2 lambda(t) J_t, and then

    E[DSM] = E[SSM] + E_t[lambda(t) D / sigma(t)^2]

for every model: the two objectives differ by a constant (D for "sigma2", 1 for "simple"), so
they have the same minimiser and the same gradients in expectation. (Proof: E||s - grad log
p(x_t | x0)||^2 = E||s - grad log p_t||^2 + E||eps/sigma||^2 - E||grad log p_t||^2.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._utils import check_choice, check_finite_number, check_int, check_tensor_finite
from ..divergence import divergence, probes_like
from ..protocols import SDE
from .losses import WEIGHTINGS, _given_or_drawn_times_and_noise, check_weighting
from .objectives import _dequantize, _step_times_and_noise, check_p_uncond, label_dropout

__all__ = ["PROJECTIONS", "sliced_score_matching_loss", "ssm_loss", "sliced_score_matching"]

PROJECTIONS = ("rademacher", "gaussian", "exact")


def sliced_score_matching_loss(
    score_fn: Callable[[Tensor], Tensor],
    x: Tensor,
    *,
    n_projections: int = 1,
    projection: str = "rademacher",
    variance_reduction: bool = False,
    generator: torch.Generator | None = None,
    probes: Tensor | None = None,
    reduce: bool = True,
) -> Tensor:
    """Sliced score matching of a score at one noise level, on samples x of the target.

    Per example: mean_k [v_k^T (ds/dx) v_k + 1/2 (v_k^T s)^2] (SSM), or with
    `variance_reduction` mean_k v_k^T (ds/dx) v_k + 1/2 ||s||^2 (SSM-VR); with projection
    "exact", tr(ds/dx) + 1/2 ||s||^2 (Hyvarinen's objective, D VJPs). Differentiable in what
    score_fn closes over (a network's weights) whenever grad mode is on.

    Args:
        score_fn: x (B, *D) -> s(x) (B, *D), e.g. `lambda x: net(x)` or
            `lambda x: model.score(x, t)`.
        x: samples of the target, shape (B, *D).
        n_projections: directions v per example (>= 1).
        projection: "rademacher" (entries +-1), "gaussian" (standard normal) or "exact".
        variance_reduction: SSM-VR (the 1/2 ||s||^2 term exact).
        generator: random source of the directions.
        probes: the directions themselves, shape (n_projections, B, *D), instead of drawing.
        reduce: mean over the batch; else per-example values (B,).
    Returns:
        the loss (nats-free: units of score^2), a scalar, or (B,) if not reduce.
    """
    check_choice("projection", projection, PROJECTIONS)
    check_tensor_finite("x", x)
    if not callable(score_fn):
        raise TypeError(f"score_fn must be callable, x -> score, got {score_fn!r}")
    if projection == "exact":
        s, div = divergence(score_fn, x, trace="exact", create_graph=torch.is_grad_enabled())
        per_example = div + 0.5 * _sq_norm(s)
        return per_example.mean() if reduce else per_example
    if probes is None:
        n_projections = check_int("n_projections", n_projections, 1)
        probes = probes_like(x, n_projections, projection, generator)
    elif tuple(probes.shape[1:]) != tuple(x.shape):
        raise ValueError(
            f"probes must have shape (K, {', '.join(map(str, x.shape))}), got {tuple(probes.shape)}"
        )
    s, div = divergence(
        score_fn, x, trace="hutchinson", probes=probes, create_graph=torch.is_grad_enabled()
    )
    if tuple(s.shape) != tuple(x.shape):
        raise ValueError(f"score_fn(x) must have x's shape {tuple(x.shape)}, got {tuple(s.shape)}")
    if variance_reduction:
        second = 0.5 * _sq_norm(s)
    else:
        proj = (probes * s).reshape(probes.shape[0], x.shape[0], -1).sum(-1)  # (K, B)
        second = 0.5 * (proj**2).mean(0)
    per_example = div + second
    return per_example.mean() if reduce else per_example


def _sq_norm(s: Tensor) -> Tensor:
    return (s.reshape(s.shape[0], -1) ** 2).sum(1)


def score_weight(
    sde: SDE, t: Tensor, weighting: str, importance_sampling: bool, dim: int
) -> Tensor:
    """lambda(t) (B,): the factor DSM with `weighting` puts on ||s - grad log p(x_t | x0)||^2
    (see `dsm_loss`), for an event of `dim` numbers."""
    sigma2 = sde.sigma(t) ** 2
    if weighting == "simple":
        return sigma2 / dim
    if weighting == "sigma2":
        return sigma2
    if importance_sampling:
        lo, hi = sde.half_log_snr_range()
        return (hi - lo) * sigma2
    return 0.5 * (sde.T - sde.t_min) * sde.g2(t)


def ssm_loss(
    model,
    x0: Tensor,
    *,
    weighting: str = "simple",
    importance_sampling: bool | None = None,
    n_projections: int = 1,
    projection: str = "rademacher",
    variance_reduction: bool = False,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    probes: Tensor | None = None,
    reduce: bool = True,
    y: Tensor | None = None,
) -> Tensor:
    """Noise-conditional sliced score matching of a score model on clean data x0.

    x_t = alpha(t) x0 + sigma(t) eps, t drawn as for `dsm_loss`, is a sample of p_t, and the
    per-example loss is 2 lambda(t) SSM(s(., t); x_t) (module docstring), which equals DSM with
    the same weighting up to a constant independent of the model.

    Args:
        model: a score model with `.sde` and `score(x, t)` differentiable in x.
        x0: clean data, shape (B, *D).
        weighting, importance_sampling, generator, t, noise, reduce, y: as for `dsm_loss`.
        n_projections, projection, variance_reduction, probes: as for
            `sliced_score_matching_loss`.
    Returns:
        the loss, a scalar (or (B,) if not reduce).
    """
    importance_sampling = check_weighting(weighting, importance_sampling)
    check_tensor_finite("x0", x0)
    sde = model.sde
    t, noise = _given_or_drawn_times_and_noise(sde, x0, t, noise, importance_sampling, generator)
    x_t = sde.perturb(x0, t, noise)

    def score_fn(x: Tensor) -> Tensor:
        return model.score(x, t) if y is None else model.score(x, t, y)

    per = sliced_score_matching_loss(
        score_fn,
        x_t,
        n_projections=n_projections,
        projection=projection,
        variance_reduction=variance_reduction,
        generator=generator,
        probes=probes,
        reduce=False,
    )
    w = score_weight(sde, t, weighting, importance_sampling, x0[0].numel())
    per_example = 2 * w.to(per.dtype) * per
    return per_example.mean() if reduce else per_example


def sliced_score_matching(
    weighting: str = "simple",
    importance_sampling: bool | None = None,
    n_projections: int = 1,
    projection: str = "rademacher",
    variance_reduction: bool = False,
    bin_width: float | None = None,
    p_uncond: float = 0.0,
):
    """The Trainer objective of `ssm_loss`: per-example times, noise and directions drawn from
    the step's StepRandom (so resumed and multi-process runs repeat single-process ones).

    bin_width and p_uncond: as for `score_matching` (dequantization; label dropout of a
    conditional model). The held-out evaluation runs it without gradients: the Jacobian
    products then keep no graph.
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    check_choice("projection", projection, PROJECTIONS)
    n_projections = check_int("n_projections", n_projections, 1)
    if bin_width is not None:
        bin_width = check_finite_number("bin_width", bin_width, positive=True)
    p_uncond = check_p_uncond(p_uncond)
    if importance_sampling is None:
        importance_sampling = weighting == "likelihood"

    def objective(model, x: Tensor, rnd, y: Tensor | None = None) -> Tensor:
        x = _dequantize(x, rnd, bin_width)
        t, noise = _step_times_and_noise(model, x, rnd, importance_sampling)
        probes = None
        if projection != "exact":
            # drawn per example, batch first, then moved to (K, B, *D)
            u = rnd.randn(n_projections, *x.shape[1:], dtype=x.dtype)
            probes = (torch.sign(u) if projection == "rademacher" else u).transpose(0, 1)
        y = label_dropout(y, rnd, p_uncond)
        return ssm_loss(
            model,
            x,
            weighting=weighting,
            importance_sampling=importance_sampling,
            projection=projection,
            variance_reduction=variance_reduction,
            t=t,
            noise=noise,
            probes=probes,
            y=y,
        )

    return objective
