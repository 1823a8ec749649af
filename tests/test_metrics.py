"""Tests for sdegen.metrics: Fréchet distance against closed forms, sliced Wasserstein in 1-D."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sdegen.metrics import (
    frechet_distance,
    frechet_distance_from_samples,
    frechet_distance_to_moments,
    gaussian_moments,
    sliced_wasserstein,
)

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fid_reference(m1, c1, m2, c2) -> float:
    """The usual FID formula with scipy.linalg.sqrtm (real part), float64."""
    covmean = np.real(scipy.linalg.sqrtm(c1 @ c2))
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean))


# ---------------------------------------------------------------- Fréchet distance


def test_gaussian_moments_match_numpy():
    x = torch.randn(50, 2, 3, generator=_gen(0))
    mean, cov = gaussian_moments(x)
    flat = x.reshape(50, 6).double().numpy()
    assert mean.dtype == F64 and mean.shape == (6,) and cov.shape == (6, 6)
    np.testing.assert_allclose(mean.numpy(), flat.mean(0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(cov.numpy(), np.cov(flat, rowvar=False), rtol=1e-12, atol=1e-14)


def test_gaussian_moments_needs_two_samples():
    with pytest.raises(ValueError, match="N=1"):
        gaussian_moments(torch.randn(1, 4))


def test_commuting_covariances_closed_form():
    a = torch.tensor([0.5, 2.0, 0.0, 3.0], dtype=F64)
    b = torch.tensor([1.5, 0.1, 4.0, 0.0], dtype=F64)
    m1 = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=F64)
    m2 = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=F64)
    expected = float(((a.sqrt() - b.sqrt()) ** 2).sum() + ((m1 - m2) ** 2).sum())
    got = frechet_distance(m1, torch.diag(a), m2, torch.diag(b))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-12)


spd_case = st.integers(1, 6).flatmap(
    lambda d: st.tuples(
        *(arrays(np.float64, s, elements=st.floats(-3, 3)) for s in [(d, d), (d, d), (d,), (d,)])
    )
)


@settings(max_examples=30, deadline=None)
@given(spd_case, st.floats(1e-3, 1.0))
def test_matches_scipy_sqrtm_on_random_spd(case, ridge):
    a1, a2, m1, m2 = case
    eye = np.eye(a1.shape[0])
    c1, c2 = a1 @ a1.T + ridge * eye, a2 @ a2.T + ridge * eye
    ref = _fid_reference(m1, c1, m2, c2)
    got = frechet_distance(m1, c1, m2, c2)
    scale = 1.0 + np.trace(c1) + np.trace(c2)
    assert got == pytest.approx(ref, rel=1e-6, abs=1e-9 * scale)


@pytest.mark.parametrize(
    "m1,s1,m2,s2",
    [(0.0, 1.0, 0.0, 1.0), (1.0, 2.0, -0.5, 0.3), (3.0, 0.0, 1.0, 5.0), (-2.0, 1e-4, -2.0, 1e3)],
)
def test_one_dimensional_exact(m1, s1, m2, s2):
    got = frechet_distance([m1], [[s1**2]], [m2], [[s2**2]])
    assert got == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-12, abs=1e-12)


def test_identical_rank_deficient_is_zero():
    v = torch.tensor([[1.0], [-2.0], [0.5]], dtype=F64)
    cov = v @ v.T  # rank 1 in 3-D
    mean = torch.tensor([0.3, 0.1, -1.0], dtype=F64)
    d = frechet_distance(mean, cov, mean, cov)
    assert 0.0 <= d < 1e-8
    # sample covariance with fewer samples than dimensions: rank 4 in 20-D
    x = torch.randn(5, 20, generator=_gen(1))
    d = frechet_distance(*gaussian_moments(x), *gaussian_moments(x))
    assert 0.0 <= d < 1e-8
    assert 0.0 <= frechet_distance_from_samples(x, x.clone()) < 1e-8


def test_symmetric_in_its_arguments():
    g = np.random.default_rng(3)
    a1, a2 = g.normal(size=(5, 3)), g.normal(size=(5, 5))
    c1, c2 = a1 @ a1.T, a2 @ a2.T  # c1 singular
    m1, m2 = g.normal(size=5), g.normal(size=5)
    d12, d21 = frechet_distance(m1, c1, m2, c2), frechet_distance(m2, c2, m1, c1)
    assert d12 == pytest.approx(d21, rel=1e-10)
    assert d12 == pytest.approx(_fid_reference(m1, c1, m2, c2), rel=1e-6)


def test_sample_helpers_agree():
    x, y = torch.randn(40, 3, generator=_gen(4)), torch.randn(30, 3, generator=_gen(5)) + 1
    mx, cx = gaussian_moments(x)
    my, cy = gaussian_moments(y)
    expected = frechet_distance(mx, cx, my, cy)
    assert frechet_distance_from_samples(x, y) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance_to_moments(x, my.numpy(), cy.numpy()) == pytest.approx(expected)


def test_frechet_bad_input_names_argument():
    m, c = torch.zeros(3), torch.eye(3)
    with pytest.raises(ValueError, match=r"cov2.*\(3, 4\)"):
        frechet_distance(m, c, m, torch.zeros(3, 4))
    with pytest.raises(ValueError, match=r"mean1.*\(3, 1\)"):
        frechet_distance(torch.zeros(3, 1), c, m, c)
    with pytest.raises(ValueError, match=r"mean2.*\(2,\)"):
        frechet_distance(m, c, torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="cov1.*non-finite"):
        frechet_distance(m, torch.full((3, 3), math.nan), m, c)
    with pytest.raises(ValueError, match="not symmetric"):
        frechet_distance(m, torch.triu(torch.ones(3, 3)), m, c)
    with pytest.raises(ValueError, match=r"x and y.*\(4, 3\).*\(4, 2\)"):
        frechet_distance_from_samples(torch.randn(4, 3), torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"mean must have shape \(3,\)"):
        frechet_distance_to_moments(torch.randn(4, 3), torch.zeros(2), torch.eye(2))


# ---------------------------------------------------------------- sliced Wasserstein


def test_sliced_zero_for_identical_sets():
    x = torch.randn(100, 4, 2, generator=_gen(6))
    assert sliced_wasserstein(x, x.clone(), generator=_gen(0)) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("p", [1, 2, 3])
def test_sliced_one_dimensional_equals_sorted_wasserstein(p):
    x = torch.randn(200, 1, generator=_gen(7), dtype=F64)
    y = 0.5 * torch.randn(200, 1, generator=_gen(8), dtype=F64) + 1.0
    exact = float(((x.sort(0).values - y.sort(0).values).abs() ** p).mean() ** (1 / p))
    got = sliced_wasserstein(x, y, projections=3, p=p, generator=_gen(0))
    assert got == pytest.approx(exact, rel=1e-10)


@pytest.mark.parametrize("p", [1, 2])
def test_sliced_unequal_sizes_one_dimensional_exact(p):
    x = torch.randn(7, generator=_gen(9), dtype=F64)
    y = torch.randn(5, generator=_gen(10), dtype=F64) * 2
    # replicate each set to N*M points so the empirical measures are unchanged, then sort-pair
    xr, yr = x.repeat_interleave(5).sort().values, y.repeat_interleave(7).sort().values
    exact = float(((xr - yr).abs() ** p).mean() ** (1 / p))
    got = sliced_wasserstein(x, y, projections=2, p=p, generator=_gen(0))
    assert got == pytest.approx(exact, rel=1e-10)
    if p == 1:
        ref = scipy.stats.wasserstein_distance(x.numpy(), y.numpy())
        assert got == pytest.approx(ref, rel=1e-10)


def test_sliced_pure_shift_approaches_norm_over_sqrt_dim():
    d, n = 4, 4000
    shift = torch.tensor([2.0, 1.0, 0.0, -1.0])
    x = torch.randn(n, d, generator=_gen(11))
    y = torch.randn(n, d, generator=_gen(12)) + shift
    got = sliced_wasserstein(x, y, projections=1000, generator=_gen(13))
    assert got == pytest.approx(float(shift.norm()) / math.sqrt(d), rel=0.1)


def test_sliced_seeded_calls_are_reproducible():
    x, y = torch.randn(64, 5, generator=_gen(14)), torch.randn(80, 5, generator=_gen(15))
    a = sliced_wasserstein(x, y, projections=16, generator=_gen(42))
    b = sliced_wasserstein(x, y, projections=16, generator=_gen(42))
    c = sliced_wasserstein(x, y, projections=16, generator=_gen(43))
    assert a == b and a != c


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"projections": 0}, "projections.*0"),
        ({"projections": 2.5}, "projections.*2.5"),
        ({"p": 0}, "p must.*0"),
        ({"p": True}, "p must.*True"),
    ],
)
def test_sliced_bad_arguments(kwargs, match):
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=match):
        sliced_wasserstein(x, x, **kwargs)


def test_sliced_bad_samples():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"\(10, 3\).*\(10, 2\)"):
        sliced_wasserstein(x, torch.randn(10, 2))
    with pytest.raises(ValueError, match="y holds 1 non-finite"):
        y = x.clone()
        y[2, 1] = math.inf
        sliced_wasserstein(x, y)
    with pytest.raises(ValueError, match=r"N=0"):
        sliced_wasserstein(torch.zeros(0, 3), x)
