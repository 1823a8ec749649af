"""A run config -> the score model, its Trainer, and a trained run loaded back from its folder."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..models import VQVAE, KLAutoencoder, LearnedVarianceModel, ScoreModel
from ..sde.discrete import grid_size
from ..training import (
    Trainer,
    held_out_loss,
    latent_score_matching,
    latest_checkpoint,
    load_checkpoint,
    score_matching,
)
from ..training.hybrid import hybrid_objective
from ..training.losses import check_time_sampling
from ..training.sliced import sliced_score_matching
from ..training.vlb import vlb_objective
from .config import TrainConfig, read_run_config, run_sigma_data, save_config
from .latent import load_autoencoder
from .tables import Data, build_network, build_sde, learned_variance_params, load_data
from .text import TextSetup, text_setup


def run_classes(cfg: TrainConfig, data: Data) -> int | None:
    """The number of classes a run's network is conditioned on: None unless cfg.conditional."""
    if not cfg.conditional:
        return None
    if data.num_classes is None:
        raise ValueError(
            f"conditional: true needs labelled data; {cfg.data!r} has no class labels "
            "(use digits, mnist:FOLDER or cifar10:FOLDER)"
        )
    return data.num_classes


def run_text(cfg: TrainConfig, data: Data) -> TextSetup | None:
    """The captions and tokenizer of a text-conditional run (cfg.text); None otherwise."""
    return text_setup(data, cfg.seed) if cfg.text else None


def build_model(
    cfg: TrainConfig,
    event_shape: tuple[int, ...],
    num_classes: int | None = None,
    text: TextSetup | None = None,
) -> ScoreModel:
    """The run's score model; class-conditional on num_classes classes when given, or
    text-conditional on a run's captions (`run_text`)."""
    torch.manual_seed(cfg.seed)  # the initial weights belong to the run's seed
    sde = build_sde(cfg)
    if cfg.learned_variance:  # the network outputs the prediction and the weights v
        cfg = replace(cfg, network_params=learned_variance_params(cfg, event_shape))
    # Built in float32 whatever torch's default dtype is (the data are float32): initialising
    # in float64 and casting would draw different random numbers, hence different weights.
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    try:
        conditioner = text.conditioner() if text is not None else None
        net = build_network(cfg, event_shape, num_classes, text=conditioner)
    finally:
        torch.set_default_dtype(default)
    if cfg.learned_variance:
        return LearnedVarianceModel(net, sde, cfg.parametrization, sigma_data=run_sigma_data(cfg))
    return ScoreModel(net, sde, cfg.parametrization, sigma_data=run_sigma_data(cfg))


def set_data_std(model, cfg: TrainConfig, data: Data) -> None:
    """Give a run's model the RMS std of its training split, sqrt(mean over coordinates of the
    variance), which samplers place their default grid by (`sdegen.models.data_std`); a latent
    run's model, whose data are the autoencoder's latents, keeps its sigma_data instead."""
    if cfg.latent == "none":
        x = data.train.flatten(1).double()
        model.data_std = float(x.var(0).mean().sqrt())


# Keys that fix the network's shape and meaning: a checkpoint trained with other values cannot
# be loaded under this config, or would load and be used with the wrong SDE without a word.
MODEL_KEYS = (
    "data",
    "sde",
    "sde_params",
    "parametrization",
    "sigma_data",
    "network",
    "network_params",
    "text",
    "learned_variance",
    "latent",
    "latent_params",
)


def _check_compatible(path: Path, cfg: TrainConfig, num_classes: int | None) -> None:
    """Refuse a checkpoint whose recorded config differs from the run config in MODEL_KEYS."""
    state = path / "state.json"
    try:
        meta = json.loads(state.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt checkpoint {path}: state.json is not JSON ({e})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("extra", {}), dict):
        raise ValueError(f"corrupt checkpoint {path}: state.json must hold a JSON object")
    saved = meta.get("extra", {}).get("config", {})
    if not isinstance(saved, dict):
        raise ValueError(f"corrupt checkpoint {path}: its recorded config is not a JSON object")
    now = {**{k: getattr(cfg, k) for k in MODEL_KEYS}, "num_classes": num_classes}
    differ = [k for k in now if k in saved and saved[k] != now[k]]
    if differ:
        what = "; ".join(f"{k}: checkpoint {saved[k]!r}, config {now[k]!r}" for k in differ)
        raise ValueError(
            f"checkpoint {path} was trained with another model than its run config "
            f"describes ({what}); restore the run's config.json or train a new run"
        )


@dataclass
class LoadedRun:
    """A trained run: its config, data, model (in eval mode), the step it was saved at, for a
    text-conditional run its captions and tokenizer (`text.prompt_ids(...)`), and for a latent
    run its autoencoder (the model is a score model on its rescaled latents)."""

    cfg: TrainConfig
    data: Data
    model: ScoreModel
    step: int
    text: TextSetup | None = None
    autoencoder: KLAutoencoder | VQVAE | None = None  # a latent run's: the model is on its latents


def load_run(run_dir: str | Path, *, ema: bool = True) -> LoadedRun:
    """Rebuild a run's model from its folder and load its latest checkpoint (EMA weights)."""
    cfg = read_run_config(run_dir)
    path = latest_checkpoint(run_dir)
    if path is None:
        raise FileNotFoundError(f"run folder {run_dir} has no checkpoint yet (no 'latest')")
    data = load_data(cfg.data, n_train=cfg.n_train, seed=cfg.seed)
    num_classes = run_classes(cfg, data)
    _check_compatible(path, cfg, num_classes)
    text = run_text(cfg, data)
    autoencoder = load_autoencoder(cfg, data, run_dir) if cfg.latent != "none" else None
    shape = autoencoder.latent_shape if autoencoder is not None else data.event_shape
    model = build_model(cfg, shape, num_classes, text)
    set_data_std(model, cfg, data)
    if ema and (path / "ema.safetensors").is_file():
        from torch.optim.swa_utils import AveragedModel

        holder = AveragedModel(model)
        meta = load_checkpoint(path, model, None, holder)
        model.load_state_dict(holder.module.state_dict())
    else:
        meta = load_checkpoint(path, model)
    model.eval()
    return LoadedRun(cfg, data, model, int(meta["step"]), text, autoencoder)


def load_foreign(spec: str):
    """A score model of one's own from "MODULE:FACTORY" (or "path/to/file.py:FACTORY"), for
    `sdegen sample/likelihood --model`. FACTORY() returns (model, sde), or a model with an
    `.sde` attribute (ScoreModel, the adapters of sdegen.models.adapters). Returns (model, sde).
    """
    import importlib
    import importlib.util
    import sys

    from ..models.base import check_sde
    from ..solvers.counting import check_model

    where, sep, name = str(spec).rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise ValueError(f"--model must look like MODULE:FACTORY or FILE.py:FACTORY, got {spec!r}")
    if where.endswith(".py"):
        path = Path(where)
        if not path.is_file():
            raise FileNotFoundError(f"--model {spec}: no file {path}")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"--model {spec}: {path} cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules.setdefault(path.stem, module)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ModuleNotFoundError as e:
            raise ValueError(f"--model {spec}: cannot import module {where!r} ({e})") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"--model {spec}: {where} has no callable {name!r}")
    made = factory()
    model, sde = made if isinstance(made, tuple) and len(made) == 2 else (made, None)
    sde = sde if sde is not None else getattr(model, "sde", None)
    check_model(model)
    if sde is None:
        raise TypeError(
            f"--model {spec}: {name}() must return (model, sde) or a model with an .sde attribute"
        )
    check_sde(sde)
    if isinstance(model, torch.nn.Module):
        model.eval()
    return model, sde


def _hybrid(cfg: TrainConfig, data: Data, model, *, conditional: bool):
    """L_hybrid for a run with learned_variance: true (Improved DDPM), after checking the
    config keys it needs: a from_betas SDE, the "simple" weighting and the dsm objective (which
    L_hybrid replaces), no conditioning."""
    try:
        grid_size(model.sde)
    except ValueError:
        raise ValueError(
            f"config key learned_variance: true needs an SDE on DDPM's grid (sde: ddpm), "
            f"got sde {cfg.sde!r}"
        ) from None
    for key, value, want in (
        ("weighting", cfg.weighting, "simple"),
        ("objective", cfg.objective, "dsm"),
    ):
        if value != want:
            raise ValueError(
                "config key learned_variance: true trains L_hybrid = L_simple + 0.001 L_vlb; "
                f"{key} must be {want!r}, got {value!r}"
            )
    if conditional:
        raise ValueError("config key learned_variance: true is not supported on conditional runs")
    return hybrid_objective(bin_width=data.bin_width)


def _discrete_objective(cfg: TrainConfig, data: Data, model, dsm_objective):
    """The objective of a run on DDPM's grid: the bound (objective vlb, bits/dim) or DSM on
    integer steps (time_sampling discrete, `dsm_objective`); both need a from_betas SDE."""
    key = "objective: vlb" if cfg.objective == "vlb" else "time_sampling: discrete"
    try:
        check_time_sampling("discrete", model.sde)
    except ValueError:
        raise ValueError(
            f"config key {key} needs an SDE on DDPM's grid (sde: ddpm), got sde {cfg.sde!r}"
        ) from None
    if cfg.objective == "vlb":
        return vlb_objective(bin_width=data.bin_width)
    return dsm_objective


def _sliced(cfg: TrainConfig, data: Data, *, conditional: bool, text: bool):
    """Sliced score matching (objective ssm; ssm_vr: its variance-reduced form) with the run's
    weighting on continuous times; a class-conditional run drops labels as DSM does."""
    if text:
        raise ValueError(
            f"config key objective: {cfg.objective} does not support text-conditional runs"
        )
    return sliced_score_matching(
        cfg.weighting,
        variance_reduction=cfg.objective == "ssm_vr",
        bin_width=data.bin_width,
        p_uncond=cfg.p_uncond if conditional else 0.0,
    )


def _latent(cfg: TrainConfig, autoencoder, *, p_uncond: float):
    """DSM on the latents of a latent run's trained autoencoder, after checking the config keys
    it cannot be combined with."""
    if autoencoder is None:
        raise ValueError(
            f"latent: {cfg.latent} trains on a trained autoencoder; pass autoencoder= "
            "(sdegen.assembly.latent.train_autoencoder)"
        )
    for key, plain in (("objective", "dsm"), ("time_sampling", "continuous")):
        if getattr(cfg, key) != plain:
            raise ValueError(
                f"config key latent: {cfg.latent} trains by DSM on latents; {key} must be "
                f"{plain!r}, got {getattr(cfg, key)!r}"
            )
    if cfg.learned_variance:
        raise ValueError(f"config key latent: {cfg.latent} does not take learned_variance: true")
    return latent_score_matching(autoencoder, cfg.weighting, p_uncond=p_uncond)


def make_trainer(
    cfg: TrainConfig,
    data: Data,
    model: ScoreModel,
    run_dir: Path,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
    autoencoder: KLAutoencoder | VQVAE | None = None,
) -> Trainer:
    """The Trainer a run config describes: DSM with its weighting, dequantizing discrete data,
    and the held-out loss every `eval_every` steps; a conditional run trains on the labels with
    label dropout p_uncond, and its checkpoints record num_classes. A latent run (cfg.latent)
    trains on the latents of its trained `autoencoder` (`sdegen.assembly.latent`)."""
    num_classes = run_classes(cfg, data)
    text = run_text(cfg, data)
    if cfg.batch_size > len(data.train):
        raise ValueError(
            f"config key batch_size ({cfg.batch_size}) exceeds the {len(data.train)} training "
            f"examples of {cfg.data!r}"
            + (f" (n_train = {cfg.n_train})" if cfg.data.startswith("toy:") else "")
        )
    conditional = num_classes is not None or text is not None
    objective = score_matching(
        cfg.weighting,
        bin_width=data.bin_width,
        p_uncond=cfg.p_uncond if conditional else 0.0,
        time_sampling=cfg.time_sampling,
        p_mean=cfg.p_mean,
        p_std=cfg.p_std,
        sigma_data=run_sigma_data(cfg),
    )
    if cfg.objective == "vlb" or cfg.time_sampling == "discrete":
        objective = _discrete_objective(cfg, data, model, objective)
    if cfg.objective in ("ssm", "ssm_vr"):
        objective = _sliced(cfg, data, conditional=num_classes is not None, text=text is not None)
    if cfg.learned_variance:
        objective = _hybrid(cfg, data, model, conditional=conditional)
    if cfg.latent != "none":
        objective = _latent(cfg, autoencoder, p_uncond=cfg.p_uncond if conditional else 0.0)
    labels, test_labels = None, None
    if text is not None:  # captions as token ids, one row per image
        labels, test_labels = text.train_ids, text.test_ids[:2000]
    elif num_classes:
        labels = data.train_labels
        test_labels = data.test_labels[:2000] if data.test_labels is not None else None
    return Trainer(
        model,
        objective,
        data.train,
        labels=labels,
        batch_size=cfg.batch_size,
        lr=cfg.lr,
        warmup=cfg.warmup,
        grad_clip=cfg.grad_clip,
        ema_decay=cfg.ema_decay,
        seed=cfg.seed,
        device=device,
        run_dir=run_dir,
        ckpt_every=cfg.ckpt_every,
        log_every=cfg.log_every,
        eval_fn=held_out_loss(objective, data.test[:2000], labels=test_labels),
        eval_every=cfg.eval_every,
        config={**cfg.to_dict(), "num_classes": num_classes},
        progress=progress,
    )


@dataclass
class RunSetup:
    """Everything a run config builds before it trains: its data, a latent run's untrained
    autoencoder, a text run's captions, the score model and its Trainer (`setup_run`)."""

    cfg: TrainConfig
    run_dir: Path
    data: Data
    model: ScoreModel
    trainer: Trainer
    autoencoder: KLAutoencoder | VQVAE | None = None
    text: TextSetup | None = None

    def fit(self) -> list[dict]:
        """Train: save the config (rank 0), a latent run's autoencoder stage (trained once, then
        loaded), then the score model to cfg.steps. Returns the score model's step metrics."""
        from .latent import train_autoencoder

        trainer = self.trainer
        if trainer.rank == 0:
            save_config(self.cfg, self.run_dir)
        if self.autoencoder is not None:
            train_autoencoder(self.cfg, self.data, self.run_dir, ae=self.autoencoder,
                              device=trainer.device, progress=trainer.progress)  # fmt: skip
        return trainer.fit(self.cfg.steps)


def setup_run(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> RunSetup:
    """Build a run from its config without training anything, so that every config key is
    checked first: the data, a latent run's untrained autoencoder (it gives the score model its
    shape, and `RunSetup.fit` trains it in place), the score model and its Trainer."""
    from .latent import build_autoencoder

    run_dir = Path(run_dir)
    data = load_data(cfg.data, n_train=cfg.n_train, seed=cfg.seed)
    autoencoder = build_autoencoder(cfg, data) if cfg.latent != "none" else None
    shape = autoencoder.latent_shape if autoencoder is not None else data.event_shape
    text = run_text(cfg, data)
    model = build_model(cfg, shape, run_classes(cfg, data), text)
    set_data_std(model, cfg, data)
    trainer = make_trainer(
        cfg, data, model, run_dir, device=device, progress=progress, autoencoder=autoencoder
    )
    return RunSetup(cfg, run_dir, data, model, trainer, autoencoder, text)
