"""Networks, the score-model wrapper and analytic score models."""

from .analytic import GaussianMixtureScore, GaussianScore, ring_mixture
from .base import PARAMETRIZATIONS, ParametrizedModel, ScoreModelLike, from_x0_eps, to_x0_eps
from .score_model import ScoreModel

__all__ = [
    "ScoreModel",
    "GaussianScore",
    "GaussianMixtureScore",
    "ParametrizedModel",
    "ScoreModelLike",
    "PARAMETRIZATIONS",
    "to_x0_eps",
    "from_x0_eps",
    "ring_mixture",
]
