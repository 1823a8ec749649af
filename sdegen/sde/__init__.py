"""SDE definitions: pure math on tensors, no networks."""

from .base import LinearSDE
from .discrete import (
    BETA_SCHEDULES,
    beta_schedule,
    ddpm_sde,
    discretized_gaussian_log_likelihood,
    gaussian_kl,
    grid_index,
    grid_size,
    grid_times,
    posterior,
    posterior_coefficients,
    previous_grid_time,
    previous_step_coefficients,
)
from .reverse_variance import (
    analytic_dpm_variance,
    interpolated_variance,
    optimal_variance,
    variance_bounds,
)
from .ve import EDMSDE, VESDE
from .vp import VPSDE, CosineBeta, DiscreteBeta, LinearBeta, SubVPSDE, ddpm_betas


def rectified_flow(t_min: float = 1e-3, T: float = 1 - 1e-3) -> LinearSDE:
    """Rectified flow / linear interpolant x_t = (1 - t) x0 + t eps as a LinearSDE.

    Liu et al. 2023, "Flow straight and fast". T < 1 because alpha(1) = 0; prior N(0, I).
    """
    return LinearSDE(lambda t: 1 - t, lambda t: t, t_min=t_min, T=T, prior_std=1.0)


__all__ = [
    "LinearSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "EDMSDE",
    "LinearBeta",
    "CosineBeta",
    "DiscreteBeta",
    "ddpm_betas",
    "rectified_flow",
    "BETA_SCHEDULES",
    "beta_schedule",
    "ddpm_sde",
    "posterior",
    "posterior_coefficients",
    "gaussian_kl",
    "discretized_gaussian_log_likelihood",
    "grid_size",
    "grid_times",
    "grid_index",
    "previous_grid_time",
    "previous_step_coefficients",
    "variance_bounds",
    "interpolated_variance",
    "optimal_variance",
    "analytic_dpm_variance",
]
