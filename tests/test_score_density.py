"""Score SDE density: PF-ODE log-prob, one-solve sample_and_log_prob, and the reverse-SDE bound."""

from __future__ import annotations

import math

import pytest
import torch

from sdegen.models import GaussianMixtureScore
from sdegen.score_density import ScoreSDEDensity
from sdegen.sde import VESDE, VPSDE


def _mixture(sde):
    return GaussianMixtureScore(
        [0.4, 0.6],
        [[-1.0, 0.0], [1.5, 0.5]],
        [[[0.3, 0.1], [0.1, 0.2]], [[0.2, 0.0], [0.0, 0.4]]],
        sde,
    )


def test_log_prob_is_the_true_density_and_reports_its_cost():
    sde = VPSDE()
    m = _mixture(sde)
    dens = ScoreSDEDensity(m, sde, (2,))
    x = m.sample(6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    truth = m.log_prob(x, torch.full((6,), sde.t_min))
    assert float((dens.log_prob(x) - truth).abs().max()) < 0.01
    stats = dens.log_prob_with_stats(
        x, trace="hutchinson", probes=4, generator=torch.Generator().manual_seed(0)
    )
    assert stats.trace == "hutchinson" and stats.nfe_backward == 4 * stats.nfe > 0
    assert dens.log_prob_kind == "ode"


def test_sample_and_log_prob_is_one_consistent_solve():
    sde = VESDE()
    m = _mixture(sde)
    dens = ScoreSDEDensity(m, sde, (2,))
    x, logp = dens.sample_and_log_prob(5, generator=torch.Generator().manual_seed(1))
    assert x.shape == (5, 2)
    torch.testing.assert_close(logp, dens.log_prob(x), rtol=0, atol=2e-3)


def test_sde_bound_is_tight_for_the_exact_score_and_not_below():
    # With the exact score and prior close to p_T the reverse-SDE model is the data process, so
    # Song et al.'s bound equals -log p: its Monte-Carlo mean must sit on -log p, within error.
    sde = VPSDE()
    m = _mixture(sde)
    dens = ScoreSDEDensity(m, sde, (2,))
    x = m.sample(2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i in range(2):
        xi = x[i : i + 1].repeat(48, 1)  # independent estimates at one point
        b = dens.sde_bound(xi, time_points=256, generator=torch.Generator().manual_seed(i))
        nll = -float(m.log_prob(x[i : i + 1], torch.full((1,), sde.t_min)))
        se = float(b.std()) / 48**0.5
        assert abs(float(b.mean()) - nll) < 4 * se + 0.01
        assert se < 0.15


def test_sde_bound_exceeds_minus_log_p_for_a_wrong_score():
    # Halving the score makes a different model; its bound must then sit above the truth's
    # negative log-density on average over data (the bound of a worse model of the data).
    sde = VPSDE()
    m = _mixture(sde)

    class Half:
        def score(self, x, t):
            return 0.5 * m.score(x, t)

        def denoise(self, x, t):
            return m.denoise(x, t)

        def eps(self, x, t):
            return 0.5 * m.eps(x, t)

    x = m.sample(64, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    nll = -m.log_prob(x, torch.full((64,), sde.t_min))
    b = ScoreSDEDensity(Half(), sde, (2,)).sde_bound(
        x, time_points=128, generator=torch.Generator().manual_seed(4)
    )
    gap = b - nll
    assert float(gap.mean()) > 5 * float(gap.std()) / 8


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rtol=math.nan), ValueError, "rtol must be finite, got nan"),
        (dict(atol=-1.0), ValueError, "atol must be > 0, got -1.0"),
        (dict(method="rk45"), ValueError, "unknown method 'rk45'; expected one of: dopri8"),
        (dict(trace="approx"), ValueError, "unknown trace 'approx'"),
        (dict(probes=0), ValueError, "probes must be an integer >= 1, got 0"),
        (dict(sampler="dpm"), ValueError, "unknown sampler 'dpm'; expected one of: .*dpmpp_2m"),
        (dict(nfe=0), ValueError, "nfe must be an integer >= 1, got 0"),
        (dict(event_shape=(0,)), ValueError, r"event_shape must be a tuple .*got \(0,\)"),
        (dict(event_shape=2), ValueError, "event_shape must be a tuple .*got 2"),
        (dict(sde="vp"), TypeError, "sde must be an SDE object .*got str 'vp'"),
        (dict(model=None), TypeError, "model must be a score model with score"),
    ],
)
def test_constructor_checks_its_settings(kwargs, error, match):
    # rtol=nan used to be kept and surface later as "t must lie in [t_min, T] ... got nan".
    sde = VPSDE()
    args = {"model": _mixture(sde), "sde": sde, "event_shape": (2,), **kwargs}
    with pytest.raises(error, match=match):
        ScoreSDEDensity(args.pop("model"), args.pop("sde"), args.pop("event_shape"), **args)


def test_calls_check_their_arguments():
    sde = VPSDE()
    dens = ScoreSDEDensity(_mixture(sde), sde, (2,))
    x = torch.zeros(3, 2)
    for n in (0, -1, 1.5):
        with pytest.raises(ValueError, match=f"n must be an integer >= 1, got {n}"):
            dens.sample_and_log_prob(n)
    with pytest.raises(ValueError, match="time_points must be an integer >= 1, got 0"):
        dens.sde_bound(x, time_points=0)
    with pytest.raises(ValueError, match="unknown trace 'approx'; expected one of: exact"):
        dens.sde_bound(x, time_points=2, trace="approx")
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got torch.int64"):
        dens.sde_bound(torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="x must be a floating-point tensor, got torch.int64"):
        dens.log_prob(torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"at least one example \(batch >= 1\)"):
        dens.log_prob(torch.zeros(0, 2))
    with pytest.raises(ValueError, match="rtol must be finite, got nan"):
        dens.log_prob(x, rtol=math.nan)
