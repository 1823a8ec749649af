"""Networks, the score-model wrapper and analytic score models."""

from ..protocols import ScoreModelLike
from . import adapters
from .adapters import *  # noqa: F403  (adapters.__all__: the foreign-model adapters)
from .analytic import GaussianMixtureScore, GaussianScore, ring_mixture
from .autoencoder import VQVAE, KLAutoencoder, VectorQuantizer
from .base import (
    GRID_PARAMETRIZATIONS,
    MODEL_PARAMETRIZATIONS,
    PARAMETRIZATIONS,
    PRECONDITIONED_PARAMETRIZATIONS,
    ParametrizedModel,
    data_std,
    edm_scalings,
    from_x0_eps,
    to_x0_eps,
)
from .classifier import ConvClassifier, NoiseConditionalClassifier
from .distribution import ModelDistribution
from .dit import DiT, patchify, unpatchify
from .flows import FFJORD, RealNVP, RealNVPImage
from .gan import GAN
from .labels import NULL_LABEL, LabelEmbedding, check_labels
from .latent import LatentDiffusion
from .learned_variance import LearnedVarianceModel
from .networks import MLP, GaussianFourierEmbedding, SinusoidalEmbedding
from .score_model import ScoreModel
from .unet import UNet
from .vae import VAE, KLSchedule, free_bits_kl

__all__ = [
    "data_std",
    "FFJORD",
    "RealNVP",
    "RealNVPImage",
    "VAE",
    "KLAutoencoder",
    "VQVAE",
    "VectorQuantizer",
    "LatentDiffusion",
    "KLSchedule",
    "free_bits_kl",
    "GAN",
    "MLP",
    "UNet",
    "DiT",
    "patchify",
    "unpatchify",
    "SinusoidalEmbedding",
    "GaussianFourierEmbedding",
    "ScoreModel",
    "LearnedVarianceModel",
    "GaussianScore",
    "GaussianMixtureScore",
    "ParametrizedModel",
    "ScoreModelLike",
    "PARAMETRIZATIONS",
    "GRID_PARAMETRIZATIONS",
    "MODEL_PARAMETRIZATIONS",
    "to_x0_eps",
    "from_x0_eps",
    "edm_scalings",
    "PRECONDITIONED_PARAMETRIZATIONS",
    "ring_mixture",
    "NoiseConditionalClassifier",
    "ConvClassifier",
    "NULL_LABEL",
    "LabelEmbedding",
    "check_labels",
    "ModelDistribution",
    *adapters.__all__,
]
