"""Latent runs (config key `latent: kl | vq`): the autoencoder a run's score model lives in.

`sdegen train` with a latent run trains in two stages, both in the run folder: the autoencoder
(`RUN/autoencoder/`, `latent_steps` steps of its own loss, then its latent scale fitted and
saved with it), and the score model on the autoencoder's rescaled latents
(`latent_score_matching`, the autoencoder frozen). Sampling draws latents with any sampler and
decodes them; the likelihood of a latent run is a bound (`LatentDiffusion.bound`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..models import VQVAE, KLAutoencoder, LatentDiffusion
from ..models.latent import decode_scaled
from ..score_density import ScoreSDEDensity
from ..training import Trainer, density_loss, latest_checkpoint, load_checkpoint
from .config import TrainConfig
from .tables import AUTOENCODERS, Data, _call_with_params


def autoencoder_dir(run_dir: str | Path) -> Path:
    """Where a latent run keeps its autoencoder's checkpoints."""
    return Path(run_dir) / "autoencoder"


def build_autoencoder(cfg: TrainConfig, data: Data) -> KLAutoencoder | VQVAE:
    """The untrained autoencoder of a latent run (weights from the run's seed, float32). The KL
    autoencoder decodes with the discretized likelihood of the data's grey levels."""
    factory, defaults = AUTOENCODERS[cfg.latent]
    if not data.is_image:
        raise ValueError(
            f"latent: {cfg.latent} encodes images (C, H, W); {data.name!r} has examples of shape "
            f"{data.event_shape}"
        )
    params = dict(defaults)
    if cfg.latent == "kl" and data.bin_width is not None:
        params.update(likelihood="discretized", levels=round(2 / data.bin_width))
    params.update(cfg.latent_params)
    torch.manual_seed(cfg.seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        return _call_with_params("latent_params", factory, params, shape=data.event_shape)
    finally:
        torch.set_default_dtype(default)


def train_autoencoder(
    cfg: TrainConfig,
    data: Data,
    run_dir: str | Path,
    *,
    ae: KLAutoencoder | VQVAE | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> KLAutoencoder | VQVAE:
    """Stage 1 of a latent run: train the autoencoder for cfg.latent_steps steps (resuming its
    checkpoint if one is there), fit its latent scale on the training split, and save it. An
    autoencoder already trained to latent_steps is loaded, not trained again. `ae`: the run's
    untrained autoencoder (`build_autoencoder`), trained in place (so an objective built on it
    sees the trained one); None builds it."""
    ae = build_autoencoder(cfg, data) if ae is None else ae
    folder = autoencoder_dir(run_dir)
    path = latest_checkpoint(folder)
    if path is not None:
        meta = load_checkpoint(path, ae)
        if int(meta["step"]) >= cfg.latent_steps and _finished(meta):
            return ae.to(device).eval()
    trainer = Trainer(
        ae,
        density_loss(),
        data.train,
        batch_size=min(cfg.batch_size, len(data.train)),
        lr=cfg.lr,
        warmup=cfg.warmup,
        grad_clip=cfg.grad_clip,
        ema_decay=None,  # the scale is fitted on, and the score model trained on, these weights
        seed=cfg.seed,
        device=device,
        run_dir=folder,
        ckpt_every=cfg.ckpt_every,
        log_every=cfg.log_every,
        config={"latent": cfg.latent, "latent_params": cfg.latent_params},
        progress=progress,
    )
    trainer.resume()
    trainer.fit(cfg.latent_steps)
    ae.eval()
    ae.fit_latent_scale(
        data.train.to(trainer.device), generator=torch.Generator(trainer.device).manual_seed(0)
    )
    trainer.config[FINISHED] = True
    trainer.save()  # once more, with the fitted scale
    return ae


# recorded in the autoencoder's last checkpoint once its latent scale is fitted
FINISHED = "latent_scale_fitted"


def _finished(meta: dict) -> bool:
    extra = meta.get("extra", {})
    return isinstance(extra, dict) and bool(extra.get("config", {}).get(FINISHED))


def load_autoencoder(cfg: TrainConfig, data: Data, run_dir: str | Path) -> KLAutoencoder | VQVAE:
    """A latent run's trained autoencoder (eval mode), or an error saying what is missing."""
    ae = build_autoencoder(cfg, data)
    path = latest_checkpoint(autoencoder_dir(run_dir))
    if path is None:
        raise FileNotFoundError(
            f"latent run {run_dir} has no trained autoencoder ({autoencoder_dir(run_dir)} holds "
            "no checkpoint); train the run first"
        )
    if not _finished(load_checkpoint(path, ae)):
        raise ValueError(
            f"the autoencoder of latent run {run_dir} was not finished (its latent scale was "
            "never fitted); resume the run to finish it"
        )
    return ae.eval()


def latent_density(ae: KLAutoencoder | VQVAE, model, sde) -> LatentDiffusion:
    """The latent run as a density over images: the frozen autoencoder and the score model's
    PF-ODE density on its latents (log_prob is a bound, see LatentDiffusion)."""
    return LatentDiffusion(ae, ScoreSDEDensity(model, sde, ae.latent_shape))


def decode(ae: KLAutoencoder | VQVAE, z_s: Tensor) -> Tensor:
    """Images of rescaled latents z_s (N, *latent_shape) (what a sampler draws in a latent run):
    the decoder's mean image, in the autoencoder's dtype."""
    return decode_scaled(ae, z_s)
