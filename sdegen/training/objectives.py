"""Training objectives for the Trainer: (model, batch, StepRandom[, labels]) -> scalar loss.

All randomness is drawn through StepRandom, per example, so that resumed and multi-process runs
repeat single-process ones exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._utils import check_choice, check_finite_number
from ..data.quantize import dequantize
from ..models.density import DensityModel
from ..models.labels import drop_condition
from ..models.latent import encode_scaled
from ..models.vae import VAE, KLSchedule
from ..protocols import ScoreModelWithSDE
from .losses import (
    P_MEAN,
    P_STD,
    WEIGHTINGS,
    check_likelihood_times,
    check_lognormal,
    check_time_sampling,
    classifier_loss,
    dsm_loss,
    times_from_uniform,
)


def _dequantize(x: Tensor, rnd, bin_width: float | None) -> Tensor:
    if bin_width is None:
        return x
    return dequantize(x, bin_width, uniform=rnd.rand(*x.shape[1:], dtype=x.dtype))


def score_matching(
    weighting: str = "simple",
    importance_sampling: bool | None = None,
    bin_width: float | None = None,
    p_uncond: float = 0.0,
    time_sampling: str = "continuous",
    *,
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
    sigma_data: float | None = None,
):
    """Denoising score matching (see `dsm_loss`) with per-example times and noise.

    time_sampling: "continuous" (t uniform on [t_min, T], or in log-SNR with importance
        sampling), "discrete" (DDPM's steps k uniform on {1..N} of a from_betas SDE, t = k/N)
        or "lognormal" (EDM's ln(sigma/alpha) ~ N(p_mean, p_std^2), truncated to [t_min, T]).
    sigma_data: the data std of weighting "edm" (None: the model's, else 0.5).

    bin_width: dequantize discrete data by this bin width first (None: continuous data).
    p_uncond: label dropout for a conditional model (Ho & Salimans 2022): each example's label
        is replaced by NULL_LABEL with this probability, so one network learns both the
        conditional and the unconditional score. Labels reach the objective when the Trainer is
        given `labels`; without them the model is trained unconditionally.
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    if bin_width is not None:
        bin_width = check_finite_number("bin_width", bin_width, positive=True)
    p_uncond = check_p_uncond(p_uncond)
    p_mean, p_std = check_lognormal(p_mean, p_std)
    if importance_sampling is None:
        importance_sampling = weighting == "likelihood" and time_sampling == "continuous"
    check_likelihood_times(weighting, time_sampling)
    check_time_sampling(time_sampling, importance_sampling=importance_sampling)

    def objective(model: ScoreModelWithSDE, x: Tensor, rnd, y: Tensor | None = None) -> Tensor:
        x = _dequantize(x, rnd, bin_width)
        t, noise = _step_times_and_noise(
            model, x, rnd, importance_sampling, time_sampling, p_mean, p_std
        )
        y = label_dropout(y, rnd, p_uncond)  # after t and noise: unconditional runs unchanged
        return dsm_loss(
            model,
            x,
            weighting=weighting,
            importance_sampling=importance_sampling,
            t=t,
            noise=noise,
            y=y,
            time_sampling=time_sampling,
            sigma_data=sigma_data,
        )

    return objective


def check_p_uncond(p_uncond: float) -> float:
    """A label-dropout probability checked: a number in [0, 1]."""
    p_uncond = check_finite_number("p_uncond", p_uncond, nonnegative=True)
    if p_uncond > 1:
        raise ValueError(f"p_uncond must be in [0, 1], got {p_uncond!r}")
    return p_uncond


def label_dropout(y: Tensor | None, rnd, p_uncond: float) -> Tensor | None:
    """The condition y (labels (B,) or token ids (B, L)) with each example replaced by the null
    condition with probability p_uncond, drawn from the step's random source (label dropout,
    Ho & Salimans 2022); y itself when None or p_uncond is 0 (then nothing is drawn)."""
    if y is None or p_uncond == 0:
        return y
    return drop_condition(y, rnd.rand(dtype=torch.float64) < p_uncond)


def _step_times_and_noise(
    model,
    x: Tensor,
    rnd,
    importance_sampling: bool,
    time_sampling: str = "continuous",
    p_mean: float = P_MEAN,
    p_std: float = P_STD,
) -> tuple[Tensor, Tensor]:
    t = times_from_uniform(
        model.sde,
        rnd.rand(dtype=torch.float64),
        importance_sampling=importance_sampling,
        time_sampling=time_sampling,
        p_mean=p_mean,
        p_std=p_std,
    ).to(x.dtype)
    return t, rnd.randn(*x.shape[1:], dtype=x.dtype)


def classifier_training(importance_sampling: bool = False, bin_width: float | None = None):
    """Cross-entropy of a noise-conditional classifier on perturbed data (see
    `classifier_loss`), with per-example times and noise; the Trainer must be given labels."""

    def objective(model: nn.Module, x: Tensor, rnd, y: Tensor | None = None) -> Tensor:
        if y is None:
            raise ValueError("classifier training needs labels: pass labels= to the Trainer")
        x = _dequantize(x, rnd, bin_width)
        t, noise = _step_times_and_noise(model, x, rnd, importance_sampling)
        return classifier_loss(model, x, y, t=t, noise=noise)

    return objective


def density_loss(bin_width: float | None = None):
    """The density model's own objective `model.loss(x, generator)` (NLL, negative ELBO...)."""

    def objective(model: DensityModel, x: Tensor, rnd) -> Tensor:
        return model.loss(_dequantize(x, rnd, bin_width), generator=rnd.generator)

    return objective


def annealed_vae_loss(
    schedule: KLSchedule,
    bin_width: float | None = None,
    *,
    step: Callable[[], int] | None = None,
):
    """A VAE's `loss` with the KL weight of the training step, beta = schedule(step): KL
    annealing (Bowman et al. 2016) or its cyclical form (Fu et al. 2019), see `KLSchedule`.
    Free bits are the VAE's own (`VAE(free_bits=...)`).

    step: None (default): the step of the Trainer's random source (`StepRandom.step`, restored
        by `resume`, so a resumed run continues the schedule); or a callable () -> step for
        a loop of one's own.
    """
    if not isinstance(schedule, KLSchedule):
        raise TypeError(f"schedule must be a KLSchedule, got {type(schedule).__name__}")
    if step is not None and not callable(step):
        raise TypeError(f"step must be a callable () -> int or None, got {step!r}")

    def objective(model: VAE, x: Tensor, rnd) -> Tensor:
        if not isinstance(model, VAE):
            raise TypeError(f"annealed_vae_loss trains a VAE, got {type(model).__name__}")
        k = step() if step is not None else getattr(rnd, "step", None)
        if k is None:
            raise TypeError(
                "annealed_vae_loss needs the training step: pass step=lambda: trainer.step, "
                f"or a random source with .step (got {type(rnd).__name__} without it)"
            )
        x = _dequantize(x, rnd, bin_width)
        return model.loss(x, generator=rnd.generator, beta=schedule(k))

    return objective


def latent_score_matching(
    autoencoder,
    weighting: str = "simple",
    importance_sampling: bool | None = None,
    p_uncond: float = 0.0,
):
    """Denoising score matching of a score model on latents (Rombach et al. 2022, LDM): each
    image x (B, *event_shape) of the batch is encoded by the frozen `autoencoder`
    (`sdegen.models.KLAutoencoder` or `VQVAE`) to z_s = latent_scale * encode_latents(x, noise),
    a fresh posterior draw per example and step (noise from StepRandom, so runs repeat
    exactly), and `score_matching(weighting, importance_sampling, p_uncond=p_uncond)` is taken
    on z_s. The model is the score model on latent shapes (`LatentDiffusion.prior.model`).
    The encoder runs without gradients in its own dtype; z_s gets the batch's dtype."""
    for name in ("latent_shape", "latent_scale", "encode_latents"):
        if not hasattr(autoencoder, name):
            raise TypeError(
                f"autoencoder must be a KLAutoencoder or VQVAE (with {name}), "
                f"got {type(autoencoder).__name__}"
            )
    dsm = score_matching(weighting, importance_sampling, p_uncond=p_uncond)

    def objective(model: ScoreModelWithSDE, x: Tensor, rnd, y: Tensor | None = None) -> Tensor:
        scale = autoencoder.latent_scale
        noise = rnd.randn(*autoencoder.latent_shape, dtype=scale.dtype)
        z = encode_scaled(autoencoder, x, noise)
        return dsm(model, z, rnd) if y is None else dsm(model, z, rnd, y)

    return objective
