"""Samplers for the reverse SDE and the probability-flow ODE, time grids, NFE accounting and
likelihoods."""

from .counting import CountingModel, LikelihoodResult, SolveResult
from .likelihood import bits_per_dim, exact_divergence, hutchinson_divergence, log_likelihood
from .pf_ode import ode_drift
from .sample import METHODS, available, sample, steps_for_nfe
from .schedules import SCHEDULES, get_schedule
from .tuning import optimise_schedule, tune_schedule

__all__ = [
    "sample",
    "available",
    "steps_for_nfe",
    "METHODS",
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
]
