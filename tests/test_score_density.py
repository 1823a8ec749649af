"""Score SDE density: PF-ODE log-prob, one-solve sample_and_log_prob, and the reverse-SDE bound."""

from __future__ import annotations

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
