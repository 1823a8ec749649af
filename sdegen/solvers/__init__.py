"""Samplers for the reverse SDE and the probability-flow ODE, time grids, NFE accounting and
likelihoods.

Layout: sampling.py holds the entry point `sample`; methods.py the spec of every method
(`METHODS`); grid.py the one fixed-grid loop that runs them; one file per family of methods
(reverse_sde.py, exponential.py with exp_quadrature.py, edm.py, pf_ode.py, adaptive.py,
torchsde_methods.py); schedules.py and tuning.py the time grids; guidance.py conditioning;
inverse.py linear inverse problems (operators and posterior guidance);
likelihood.py the PF-ODE likelihood (integrated by rk.py, sdegen's own adaptive Runge-Kutta
pairs); counting.py and results.py the NFE count and result types.
"""

import sys as _sys

from . import sampling as _sampling
from .ancestral_learned import AnalyticDPMVariance, respaced_grid
from .counting import CountingModel
from .inverse import Blur, Downsample, Grayscale, Inpaint, LinearOperator, Matrix
from .langevin import LangevinResult, langevin, langevin_step
from .likelihood import bits_per_dim, exact_divergence, hutchinson_divergence, log_likelihood
from .methods import DEFAULT_METHOD, METHODS, Method, available, steps_for_nfe
from .pf_ode import ode_drift
from .results import LikelihoodResult, SolveResult
from .sampling import sample
from .schedules import SCHEDULES, get_schedule
from .tuning import optimise_schedule, tune_schedule

# Deprecated: the module sampling.py was sample.py, whose name the function `sample` shadowed
# here. `from sdegen.solvers.sample import METHODS, sample` keeps working through this alias.
_sys.modules.setdefault(__name__ + ".sample", _sampling)

__all__ = [
    "sample",
    "available",
    "steps_for_nfe",
    "METHODS",
    "DEFAULT_METHOD",
    "Method",
    "log_likelihood",
    "bits_per_dim",
    "exact_divergence",
    "hutchinson_divergence",
    "ode_drift",
    "get_schedule",
    "tune_schedule",
    "optimise_schedule",
    "SCHEDULES",
    "SolveResult",
    "LikelihoodResult",
    "CountingModel",
    "langevin",
    "langevin_step",
    "LangevinResult",
    "LinearOperator",
    "Inpaint",
    "Downsample",
    "Grayscale",
    "Blur",
    "Matrix",
    "respaced_grid",
    "AnalyticDPMVariance",
]
