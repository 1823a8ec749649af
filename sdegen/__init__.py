"""sdegen: continuous-time score-based generative modelling with SDEs."""

import os

# OpenMP threads that spin while waiting make two torch processes sharing the cores run up to
# 20x slower each (measured: 2 threads each on 2 cores, 0.37 -> 8 s per U-Net training step);
# sleeping waits keep both near full speed. It takes effect only when sdegen is imported before
# torch starts its thread pool (always for the command line); a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# the subpackages, so that `import sdegen` is enough for sdegen.training.dsm_loss and the like
from . import data, metrics, models, sde, solvers, training  # noqa: E402, F401
from .models import GaussianMixtureScore, GaussianScore, ScoreModel  # noqa: E402
from .sde import EDMSDE, VESDE, VPSDE, LinearSDE, SubVPSDE, rectified_flow  # noqa: E402
from .solvers import available, bits_per_dim, log_likelihood, sample  # noqa: E402

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
