"""The name tables: SDEs, networks and data sets by the names run configs use.

One table per kind of thing, and the only place each name is listed: a new SDE added to SDES
is at once a value of the config key `sde`, a choice of `sdegen demo --sde`, a choice of the
benchmarks' `--sdes` and an SDE of every contract test (tests/conftest.py takes the table).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from .. import data as datasets
from .._utils import check_choice
from ..models import MLP, VQVAE, KLAutoencoder, UNet
from ..models.dit import DiT
from ..sde import EDMSDE, VESDE, VPSDE, SubVPSDE, ddpm_sde

if TYPE_CHECKING:
    from .config import TrainConfig

# name -> factory; the factory's keyword arguments are the config's sde_params
SDES: dict[str, Callable] = {
    "vp": VPSDE,
    "vp_cosine": partial(VPSDE, "cosine"),
    "subvp": SubVPSDE,
    "ve": VESDE,
    "edm": EDMSDE,
    # DDPM's discrete grid (VPSDE.from_betas): sde_params {schedule, n, beta_start, ...}
    "ddpm": ddpm_sde,
}
TEST_SIZE_TOY = 2000


@dataclass(frozen=True)
class Data:
    """A data set split for training and evaluation.

    bin_width is the dequantization bin of discrete data (None for continuous toy data);
    true_log_prob is the closed-form density where one exists (toy sets); train_labels and
    test_labels the class labels of labelled sets (images), with num_classes.
    """

    name: str
    train: Tensor
    test: Tensor
    bin_width: float | None
    true_log_prob: Callable[[Tensor], Tensor] | None = None
    train_labels: Tensor | None = None
    test_labels: Tensor | None = None
    num_classes: int | None = None

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def is_image(self) -> bool:
        return len(self.event_shape) == 3


def _toy(arg: str, *, name: str, n_train: int, seed: int) -> Data:
    check_choice("toy data set", arg, datasets.TOY_DATASETS)
    train = datasets.toy_sample(arg, n_train, generator=torch.Generator().manual_seed(seed))
    test = datasets.toy_sample(
        arg, TEST_SIZE_TOY, generator=torch.Generator().manual_seed(seed + 1_000_003)
    )
    try:
        datasets.toy_log_prob(arg, test[:1].double())
        true = lambda x: datasets.toy_log_prob(arg, x)  # noqa: E731
    except ValueError:
        true = None
    return Data(name, train, test, None, true)


def _images(load: Callable) -> Callable[..., Data]:
    """A loader of a labelled image set from load(arg, split) (a sdegen.data.ImageData)."""

    def load_splits(arg: str, *, name: str, n_train: int, seed: int) -> Data:
        train, test = load(arg, "train"), load(arg, "test")
        return Data(
            name,
            train.x,
            test.x,
            train.bin_width,
            train_labels=train.y,
            test_labels=test.y,
            num_classes=train.num_classes,
        )

    return load_splits


class DataSource(NamedTuple):
    """How a data spec of one kind is written ("KIND:FOLDER" needs a folder) and its loader,
    load(arg, *, name, n_train, seed) -> Data, arg being the part after the colon."""

    spec: str
    load: Callable[..., Data]


DATA: dict[str, DataSource] = {
    "toy": DataSource("toy:NAME", _toy),
    "digits": DataSource("digits", _images(lambda arg, split: datasets.load_digits(split))),
    "mnist": DataSource("mnist:FOLDER", _images(lambda arg, s: datasets.load_mnist(arg, s))),
    "cifar10": DataSource("cifar10:FOLDER", _images(lambda arg, s: datasets.load_cifar10(arg, s))),
}
DATA_KINDS = tuple(source.spec for source in DATA.values())


def load_data(spec: str, *, n_train: int = 20000, seed: int = 0) -> Data:
    """Resolve a data spec: "toy:NAME", "digits", "mnist:FOLDER" or "cifar10:FOLDER".

    n_train and seed draw the toy sets (image sets are read as they are).
    """
    kind, _, arg = spec.partition(":")
    source = DATA.get(kind)
    if source is None or (source.spec.endswith(":FOLDER") and not arg):
        raise ValueError(f"unknown data {spec!r}; expected one of: {', '.join(DATA_KINDS)}")
    return source.load(arg, name=spec, n_train=n_train, seed=seed)


def _call_with_params(key: str, factory: Callable, params: dict, **fixed):
    """factory(**fixed, **params), with a parameter the factory does not take reported as a
    config error naming the key and the parameters it accepts."""
    accepted = [
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in fixed
    ]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"config key {key} has unknown parameter(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted)}"
        )
    return factory(**fixed, **params)


def build_sde(cfg: TrainConfig):
    """The SDE named by cfg.sde (a key of SDES) with keyword arguments cfg.sde_params."""
    check_choice("sde", cfg.sde, SDES)
    return _call_with_params("sde_params", SDES[cfg.sde], cfg.sde_params)


def _mlp(event_shape: tuple[int, ...], num_classes: int | None, params: dict) -> torch.nn.Module:
    if len(event_shape) != 1:
        raise ValueError(
            f"network 'mlp' needs vector data, got examples of shape "
            f"{event_shape}; use 'unet' for images"
        )
    return _call_with_params(
        "network_params", MLP, params, dim=event_shape[0], num_classes=num_classes
    )


def _unet(
    event_shape: tuple[int, ...],
    num_classes: int | None,
    params: dict,
    text: torch.nn.Module | None = None,
) -> torch.nn.Module:
    if len(event_shape) != 3:
        raise ValueError(f"network 'unet' needs images (C, H, W), got {event_shape}")
    params = {"channels": 32, "channel_mult": (1, 2), **params}
    return _call_with_params(
        "network_params",
        UNet,
        params,
        in_channels=event_shape[0],
        num_classes=num_classes,
        text=text,
    )


def _dit(
    event_shape: tuple[int, ...],
    num_classes: int | None,
    params: dict,
    text: torch.nn.Module | None = None,
) -> torch.nn.Module:
    if len(event_shape) != 3:
        raise ValueError(f"network 'dit' needs images (C, H, W), got {event_shape}")
    return _call_with_params(
        "network_params",
        DiT,
        params,
        in_channels=event_shape[0],
        num_classes=num_classes,
        text=text,
    )


# name -> builder(event_shape, num_classes, network_params); "auto" picks one by the data
NETWORKS: dict[str, Callable[..., torch.nn.Module]] = {"mlp": _mlp, "unet": _unet, "dit": _dit}
# the networks that read text through cross-attention (their builder takes text=)
TEXT_NETWORKS = ("unet", "dit")


# name -> the keyword of the network's output channels, set to twice the data's channels for a
# learned variance (config key learned_variance: prediction and variance weights v)
OUTPUT_CHANNELS = {"mlp": "out_dim", "unet": "out_channels", "dit": "out_channels"}


def learned_variance_params(cfg: TrainConfig, event_shape: tuple[int, ...]) -> dict:
    """cfg.network_params with the network's output channels doubled (`OUTPUT_CHANNELS`), for a
    `LearnedVarianceModel`; ValueError for a network without that option."""
    kind = cfg.network
    if kind == "auto":
        kind = "unet" if len(event_shape) == 3 else "mlp"
    if kind not in OUTPUT_CHANNELS:
        raise ValueError(
            f"learned_variance: true needs a network with an output-channels option "
            f"({', '.join(OUTPUT_CHANNELS)}), got network {kind!r}"
        )
    return {**cfg.network_params, OUTPUT_CHANNELS[kind]: 2 * event_shape[0]}


def _kl_autoencoder(
    shape: tuple[int, ...],
    latent_channels: int = 2,
    hidden: int = 32,
    downsample: int = 1,
    likelihood: str = "gaussian",
    beta: float = 1e-3,
    levels: int | None = None,
    decoder_scale: float | None = None,
) -> KLAutoencoder:
    return KLAutoencoder.conv(
        shape, latent_channels, hidden, downsample, likelihood,
        beta=beta, levels=levels, decoder_scale=decoder_scale,
    )  # fmt: skip


def _vq_autoencoder(
    shape: tuple[int, ...],
    num_codes: int = 64,
    code_dim: int = 4,
    hidden: int = 32,
    downsample: int = 1,
    beta: float = 0.25,
    update: str = "ema",
    decay: float = 0.99,
    restart_threshold: float | None = None,
) -> VQVAE:
    return VQVAE.conv(
        shape, num_codes, code_dim, hidden, downsample,
        beta=beta, update=update, decay=decay, restart_threshold=restart_threshold,
    )  # fmt: skip


# the autoencoders of latent runs (config key latent): name -> (builder, its defaults), the
# defaults overridden by config key latent_params (the builder's keywords)
AUTOENCODERS: dict[str, tuple[Callable[..., torch.nn.Module], dict]] = {
    "kl": (_kl_autoencoder, {}),
    "vq": (_vq_autoencoder, {}),
}
LATENT_KINDS = ("none", *AUTOENCODERS)


def build_network(
    cfg: TrainConfig,
    event_shape: tuple[int, ...],
    num_classes: int | None = None,
    text: torch.nn.Module | None = None,
) -> torch.nn.Module:
    """The network named by cfg.network for examples of `event_shape`, with keyword arguments
    cfg.network_params; "auto" is the U-Net for images (C, H, W) and the MLP otherwise. `text`
    (a conditioner of sdegen.models.text) makes it text-conditional."""
    check_choice("network", cfg.network, ("auto", *NETWORKS))
    kind = cfg.network
    if kind == "auto":
        kind = "unet" if len(event_shape) == 3 else "mlp"
    if text is None:
        return NETWORKS[kind](event_shape, num_classes, cfg.network_params)
    if kind not in TEXT_NETWORKS:
        raise ValueError(
            f"network {kind!r} cannot read text; text: true needs one of {', '.join(TEXT_NETWORKS)}"
        )
    return NETWORKS[kind](event_shape, num_classes, cfg.network_params, text=text)
