"""Denoising score matching in continuous time, with the usual weightings.

With x_t = alpha x0 + sigma eps, the conditional score is -eps/sigma, and for every weighting
lambda(t) the DSM objective E_t lambda(t) ||s_theta(x_t, t) + eps/sigma||^2 is an eps-MSE with
weight lambda(t)/sigma^2:

- "simple":     DDPM's L_simple (Ho et al. 2020): mean over dims of (eps_theta - eps)^2, t uniform.
- "sigma2":     lambda = sigma^2 (Song et al. 2021): the same residual, summed over dims.
- "likelihood": lambda = g^2 (Song, Durkan et al. 2021, "Maximum likelihood training of score-based
                diffusion models"): 1/2 int g^2 E||s - grad log p_0t||^2 dt, the score-matching
                part of their bound on -log p. For every linear SDE g^2/sigma^2 = -2 dlambda/dt
                (lambda the log-SNR), so importance sampling t with density proportional to
                g^2/sigma^2 is sampling the log-SNR uniformly, with the constant weight
                lambda(t_min) - lambda(T). That is what `importance_sampling=True` does.
- "edm":        EDM's lambda(s) = (s^2 + sd^2) / (s sd)^2 on ||D(x_t) - x0||^2 (Karras et al. 2022,
                Table 1), s = sigma / alpha the noise level of x / alpha, sd = sigma_data: since
                D - x0 = -s (eps_theta - eps), the mean over dims of ((s^2 + sd^2) / sd^2)
                (eps_theta - eps)^2, which is the unit-scale MSE of the preconditioned network
                output F against its target (lambda c_out^2 = 1).

Times are continuous (uniform on [t_min, T]) by default; `time_sampling="discrete"` draws DDPM's
integer steps k uniformly from {1..N} of a from_betas SDE instead (Ho et al. 2020, Algorithm 1),
t = k/N, so the network sees only the grid times it is sampled on.
`time_sampling="lognormal"` draws EDM's training noise levels (Karras et al. 2022, Table 1):
ln(sigma/alpha) ~ N(P_mean, P_std^2) (default -1.2, 1.2), mapped to t by
`sde.t_of_half_log_snr(-ln(sigma/alpha))`. The normal is truncated to the SDE's range
[t_min, T] by its inverse CDF: no mass piles up at the ends, as a clamp would put it; the mass
outside is renormalised away (for EDMSDE's sigma in [0.002, 80], about 1e-5 of it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._utils import (
    append_dims,
    check_choice,
    check_finite_number,
    check_int,
    check_tensor_finite,
    sum_except_batch,
)
from ..protocols import SDE, ScoreModelWithSDE
from ..sde.discrete import grid_size

WEIGHTINGS = ("simple", "sigma2", "likelihood", "edm")
TIME_SAMPLINGS = ("continuous", "discrete", "lognormal")
# EDM's log-normal training noise levels, ln(sigma/alpha) ~ N(P_MEAN, P_STD^2) (Karras et al. 2022)
P_MEAN, P_STD = -1.2, 1.2
# EDM's data std (images in [-1, 1]), the default of weighting "edm"
SIGMA_DATA = 0.5


def check_lognormal(p_mean: float, p_std: float) -> tuple[float, float]:
    """(p_mean, p_std) of the log-normal time sampling checked: finite, p_std > 0."""
    return (
        check_finite_number("p_mean", p_mean),
        check_finite_number("p_std", p_std, positive=True),
    )


def check_time_sampling(
    time_sampling: str, sde: SDE | None = None, *, importance_sampling: bool = False
) -> str:
    """`time_sampling` when it is one of TIME_SAMPLINGS and fits: "discrete" needs a from_betas
    SDE (checked when sde is given); "discrete" and "lognormal" exclude importance sampling;
    else ValueError."""
    check_choice("time_sampling", time_sampling, TIME_SAMPLINGS)
    if time_sampling == "lognormal" and importance_sampling:
        raise ValueError(
            "time_sampling='lognormal' draws EDM's noise levels and cannot be combined "
            "with importance_sampling=True"
        )
    if time_sampling == "discrete":
        if importance_sampling:
            raise ValueError(
                "time_sampling='discrete' draws grid steps uniformly and cannot be combined "
                "with importance_sampling=True"
            )
        if sde is not None:
            try:
                grid_size(sde)
            except ValueError:
                raise ValueError(
                    f"time_sampling='discrete' needs an SDE on DDPM's grid, built with "
                    f"VPSDE.from_betas(betas) (sde: vp_ddpm in a config), got {sde!r}"
                ) from None
    return time_sampling


def lognormal_half_log_snr(
    sde: SDE, u: Tensor, p_mean: float = P_MEAN, p_std: float = P_STD
) -> Tensor:
    """Map u ~ U(0, 1) to lambda = -ln(sigma/alpha) with ln(sigma/alpha) ~ N(p_mean, p_std^2)
    truncated to the SDE's log-SNR range (inverse-CDF sampling of the truncated normal); shape
    preserved, float64."""
    p_mean, p_std = check_lognormal(p_mean, p_std)
    lo, hi = sde.half_log_snr_range()  # ln(sigma/alpha) lies in [-hi, -lo]
    u = u.to(torch.float64)
    ends = torch.tensor([(-hi - p_mean) / p_std, (-lo - p_mean) / p_std], dtype=torch.float64)
    c_lo, c_hi = torch.special.ndtr(ends).to(u.device)
    z = torch.special.ndtri(c_lo + u * (c_hi - c_lo))
    return (-(p_mean + p_std * z)).clamp(lo, hi)


def times_from_uniform(
    sde: SDE,
    u: Tensor,
    *,
    importance_sampling: bool = False,
    time_sampling: str = "continuous",
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
) -> Tensor:
    """Map u ~ U(0, 1) to training times: uniform on [t_min, T], or uniform in log-SNR (the
    importance distribution proportional to g^2/sigma^2), or with time_sampling="discrete" the
    grid time k/N of a from_betas SDE, k = floor(N u) + 1 uniform on {1..N}, or with
    "lognormal" EDM's ln(sigma/alpha) ~ N(p_mean, p_std^2) truncated to [t_min, T]
    (`lognormal_half_log_snr`). Shape preserved, float64 inside."""
    check_time_sampling(time_sampling, sde, importance_sampling=importance_sampling)
    u = u.to(torch.float64)
    if time_sampling == "discrete":
        n = grid_size(sde)
        return (torch.floor(u * n).clamp(0, n - 1) + 1) / n
    if time_sampling == "lognormal":
        return sde.t_of_half_log_snr(lognormal_half_log_snr(sde, u, p_mean, p_std))
    if importance_sampling:
        lo, hi = sde.half_log_snr_range()
        return sde.t_of_half_log_snr(lo + u * (hi - lo))
    return sde.t_min + u * (sde.T - sde.t_min)


def sample_times(
    sde: SDE,
    n: int,
    *,
    importance_sampling: bool = False,
    time_sampling: str = "continuous",
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
) -> Tensor:
    """n training times, shape (n,); see `times_from_uniform`."""
    n = check_int("n", n, 0)
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=device)
    return times_from_uniform(
        sde,
        u,
        importance_sampling=importance_sampling,
        time_sampling=time_sampling,
        p_mean=p_mean,
        p_std=p_std,
    ).to(dtype)


def _given_or_drawn_times_and_noise(
    sde: SDE,
    x0: Tensor,
    t: Tensor | None,
    noise: Tensor | None,
    importance_sampling: bool,
    generator: torch.Generator | None,
    time_sampling: str = "continuous",
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
) -> tuple[Tensor, Tensor]:
    if not x0.is_floating_point() or x0.ndim < 2 or x0.shape[0] == 0:
        raise ValueError(
            f"x0 must be a float tensor of shape (B, *D) with B >= 1, got {x0.dtype} of shape "
            f"{tuple(x0.shape)}"
        )
    B = x0.shape[0]
    if t is None:
        t = sample_times(
            sde,
            B,
            importance_sampling=importance_sampling,
            time_sampling=time_sampling,
            generator=generator,
            dtype=x0.dtype,
            device=x0.device,
            p_mean=p_mean,
            p_std=p_std,
        )
    elif t.shape != (B,):
        raise ValueError(f"t must have shape ({B},), got {tuple(t.shape)}")
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    else:
        check_tensor_finite("noise", noise)
        if noise.shape != x0.shape:
            raise ValueError(
                f"noise must have x0's shape {tuple(x0.shape)}, got {tuple(noise.shape)}"
            )
    return t, noise


def _model_sde(model) -> SDE:
    """model.sde, or TypeError when `model` is not a score model built on an SDE."""
    sde = getattr(model, "sde", None)
    if sde is None:
        raise TypeError(
            f"model must be a score model with its SDE as model.sde (a ScoreModel), got "
            f"{type(model).__name__}"
        )
    return sde


def check_weighting(weighting: str, importance_sampling: bool | None) -> bool:
    """A DSM weighting name checked, and whether it samples t by importance: None means yes for
    "likelihood" (its importance sampling is uniform in the log-SNR), no otherwise; only
    "likelihood" supports it."""
    check_choice("weighting", weighting, WEIGHTINGS)
    if importance_sampling is None:
        importance_sampling = weighting == "likelihood"
    if importance_sampling and weighting != "likelihood":
        raise ValueError(
            f"importance_sampling applies to weighting='likelihood' only, "
            f"got weighting={weighting!r}"
        )
    return importance_sampling


def check_likelihood_times(weighting: str, time_sampling: str) -> None:
    """Refuse weighting "likelihood" with times that are not continuous: its weight is that of
    the continuous-time bound under uniform (or log-SNR-uniform) times."""
    if weighting == "likelihood" and time_sampling != "continuous":
        other = (
            "train on DDPM's discrete bound (sdegen.training.vlb, objective 'vlb') instead"
            if time_sampling == "discrete"
            else "use time_sampling='continuous' (importance sampling is its own)"
        )
        raise ValueError(
            "weighting='likelihood' weights the continuous-time bound; with "
            f"time_sampling={time_sampling!r} {other}"
        )


def loss_sigma_data(model, sigma_data: float | None = None) -> float:
    """The data std of weighting "edm": `sigma_data` when given, else the model's own
    `sigma_data` (a ScoreModel's) when it is a number, else EDM's SIGMA_DATA = 0.5."""
    if sigma_data is not None:
        return check_finite_number("sigma_data", sigma_data, positive=True)
    own = getattr(model, "sigma_data", None)
    return float(own) if isinstance(own, (int, float)) else SIGMA_DATA


def dsm_loss(
    model: ScoreModelWithSDE,
    x0: Tensor,
    *,
    weighting: str = "simple",
    importance_sampling: bool | None = None,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    reduce: bool = True,
    y: Tensor | None = None,
    time_sampling: str = "continuous",
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
    sigma_data: float | None = None,
) -> Tensor:
    """Denoising score-matching loss of a score model on clean data x0.

    Args:
        model: a score model with `.sde` and `eps(x, t)` (e.g. ScoreModel); whatever its
            parametrization, the loss is taken on its noise prediction.
        x0: clean data, shape (B, *D).
        weighting: "simple", "sigma2", "likelihood" or "edm" (see the module docstring).
        importance_sampling: draw t uniformly in log-SNR and weight accordingly; default True
            for "likelihood", False otherwise (only "likelihood" supports it).
        generator: random source for t and the noise.
        t, noise: fix the times (B,) and the noise (B, *D) instead of drawing them.
        reduce: mean over the batch; otherwise per-example losses of shape (B,).
        y: class labels (B,) of x0 for a conditional model (NULL_LABEL entries: unconditional).
        time_sampling: "continuous" (t uniform on [t_min, T]) or "discrete" (DDPM's integer
            steps: t = k/N, k uniform on {1..N}, for a from_betas SDE; weighting "simple" or
            "sigma2"; the discrete bound itself is `sdegen.training.vlb`), or "lognormal"
            (EDM's ln(sigma/alpha) ~ N(p_mean, p_std^2) truncated to [t_min, T]).
        p_mean, p_std: the log-normal's mean and std of ln(sigma/alpha) (EDM: -1.2, 1.2).
        sigma_data: the data std of weighting "edm"; None: the model's `sigma_data` when it
            has one (a ScoreModel's), else EDM's 0.5.
    Returns:
        the loss, a scalar (or shape (B,) if not reduce).
    """
    importance_sampling = check_weighting(weighting, importance_sampling)
    check_tensor_finite("x0", x0)
    sde = _model_sde(model)
    check_likelihood_times(weighting, time_sampling)
    check_time_sampling(time_sampling, sde, importance_sampling=importance_sampling)
    B = x0.shape[0]
    t, noise = _given_or_drawn_times_and_noise(
        sde, x0, t, noise, importance_sampling, generator, time_sampling, p_mean, p_std
    )
    x_t = sde.perturb(x0, t, noise)
    sq = ((model.eps(x_t, t) if y is None else model.eps(x_t, t, y)) - noise) ** 2
    if weighting == "simple":
        per_example = sq.reshape(B, -1).mean(dim=1)
    elif weighting == "sigma2":
        per_example = sum_except_batch(sq)
    elif weighting == "edm":
        sd = loss_sigma_data(model, sigma_data)
        s2 = (sde.sigma(t) / sde.alpha(t)) ** 2
        per_example = ((s2 + sd**2) / sd**2).to(sq.dtype) * sq.reshape(B, -1).mean(dim=1)
    elif importance_sampling:
        lo, hi = sde.half_log_snr_range()
        per_example = (hi - lo) * sum_except_batch(sq)
    else:
        w = 0.5 * (sde.T - sde.t_min) * sde.g2(t) / sde.sigma(t) ** 2
        per_example = append_dims(w, 1) * sum_except_batch(sq)
    return per_example.mean() if reduce else per_example


def classifier_loss(
    classifier,
    x0: Tensor,
    y: Tensor,
    *,
    importance_sampling: bool = False,
    generator: torch.Generator | None = None,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    reduce: bool = True,
) -> Tensor:
    """Cross-entropy of a noise-conditional classifier on perturbed data x_t = alpha x0 + sigma eps.

    Times are drawn as for `dsm_loss` (uniform in t, or uniform in log-SNR with
    importance_sampling), so the classifier learns p(y | x_t) at every noise level it will guide.

    Args:
        classifier: (x_t (B, *D), t (B,)) -> logits (B, K), with `.sde`
            (e.g. NoiseConditionalClassifier).
        x0: clean data, shape (B, *D).
        y: their labels, int64 of shape (B,) in [0, K).
        importance_sampling, generator, t, noise: as for `dsm_loss`.
        reduce: mean over the batch; otherwise per-example losses (B,).
    Returns:
        the loss in nats, a scalar (or shape (B,)).
    """
    check_tensor_finite("x0", x0)
    if not torch.is_tensor(y) or y.shape != (x0.shape[0],) or y.is_floating_point():
        got = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"y must be integer labels of shape ({x0.shape[0]},), got {got}")
    sde = classifier.sde
    t, noise = _given_or_drawn_times_and_noise(sde, x0, t, noise, importance_sampling, generator)
    logits = classifier(sde.perturb(x0, t, noise), t)
    if bool(((y < 0) | (y >= logits.shape[1])).any()):
        raise ValueError(f"labels must be in 0..{logits.shape[1] - 1}, got {y.tolist()[:8]}...")
    loss = torch.nn.functional.cross_entropy(logits, y.long(), reduction="none")
    return loss.mean() if reduce else loss
