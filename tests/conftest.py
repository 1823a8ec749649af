"""Shared fixtures: every SDE in the library, and an analytic Gaussian mixture on each."""

from __future__ import annotations

import pytest
import torch
from hypothesis import settings

from sdegen import GaussianMixtureScore
from sdegen.assembly import SDES
from sdegen.sde import VPSDE, LinearSDE, ddpm_betas, rectified_flow

# Hypothesis draws the same examples on every run: a test that fails, fails every time (a
# flaky test blocks every submission), and no local example database is needed in CI.
settings.register_profile("sdegen", derandomize=True, database=None)
settings.load_profile("sdegen")

torch.set_default_dtype(torch.float64)
# Tests run in parallel processes (pytest -n 2 on 2 cores); intra-op threads on top of that
# contend for the same cores and slow small ops tens of times.
torch.set_num_threads(1)


def _exp_vp() -> LinearSDE:
    # A user-defined SDE from alpha and sigma only (f, g^2 by autograd): VP with beta = 2.
    return LinearSDE(
        lambda t: torch.exp(-t),
        lambda t: torch.sqrt(-torch.expm1(-2 * t)),
        t_min=1e-3,
        T=5.0,
        prior_std=1.0,
    )


# The named SDEs are the library's table (sdegen.assembly.SDES), so one added there is tested
# here too ("vp" is "vp_linear" here); on top of them, SDEs the tests alone build: DDPM's
# discrete betas, the rectified-flow interpolant and one a user defines from alpha and sigma.
_TESTS_NAME = {"vp": "vp_linear"}
SDE_FACTORIES = {
    **{_TESTS_NAME.get(name, name): make for name, make in SDES.items()},
    "vp_ddpm": lambda: VPSDE.from_betas(ddpm_betas(1000)),
    "rectified_flow": lambda: rectified_flow(),
    "linear_user": _exp_vp,
}


@pytest.fixture(params=list(SDE_FACTORIES))
def sde(request):
    return SDE_FACTORIES[request.param]()


def mixture(sde, dim: int = 2) -> GaussianMixtureScore:
    """Two well-separated, correlated components in `dim` dimensions."""
    g = torch.Generator().manual_seed(123)
    means = torch.stack([-1.5 * torch.ones(dim), 1.0 * torch.ones(dim)])
    means[1, 0] = 2.0
    A = torch.randn(2, dim, dim, generator=g)
    covs = 0.1 * A @ A.transpose(1, 2) / dim + 0.15 * torch.eye(dim)
    return GaussianMixtureScore(torch.tensor([0.35, 0.65]), means, covs, sde)


@pytest.fixture(autouse=True)
def _restore_grad_mode():
    """A test (or a benchmark script run in-process) that switches autograd off must not
    leave it off for the tests after it in the same worker."""
    enabled = torch.is_grad_enabled()
    yield
    torch.set_grad_enabled(enabled)
