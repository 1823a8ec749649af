"""sdegen: continuous-time score-based generative modelling with SDEs."""

from .models import GaussianMixtureScore, GaussianScore, ScoreModel
from .sde import EDMSDE, VESDE, VPSDE, LinearSDE, SubVPSDE, rectified_flow
from .solvers import available, bits_per_dim, log_likelihood, sample

__version__ = "0.1.0"

__all__ = [
    "sample",
    "log_likelihood",
    "available",
    "bits_per_dim",
    "ScoreModel",
    "GaussianScore",
    "GaussianMixtureScore",
    "LinearSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "EDMSDE",
    "rectified_flow",
]
