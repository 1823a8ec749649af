"""Tests for sdegen.metrics: Fréchet distance and FID against closed forms, KID against a double
loop, sliced Wasserstein in 1-D, the digits classifier and the InceptionV3 file loader."""

from __future__ import annotations

import hashlib
import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sdegen.data import load_digits, to_levels
from sdegen.metrics import (
    KIDResult,
    default_digits_classifier_path,
    ensure_digits_classifier,
    fid,
    fid_to_moments,
    frechet_distance,
    frechet_distance_from_samples,
    frechet_distance_to_moments,
    gaussian_moments,
    get_features,
    inception_features,
    kid,
    load_digits_classifier,
    load_inception,
    polynomial_mmd2,
    save_digits_classifier,
    sliced_wasserstein,
    train_digits_classifier,
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


def test_moments_may_be_lists_of_tensors():
    # torch.as_tensor cannot convert a list of multi-element tensors; the rows are stacked.
    c1 = [torch.tensor([2.0, 0.5]), torch.tensor([0.5, 1.0])]
    m1 = [torch.tensor(1.0), 0.0]
    want = frechet_distance(torch.tensor([1.0, 0.0]), torch.stack(c1), [0.0, 0.0], np.eye(2))
    assert frechet_distance(m1, c1, (0.0, 0.0), [torch.eye(2)[0], torch.eye(2)[1]]) == want
    with pytest.raises(ValueError, match="cov1 must be a rectangular array"):
        frechet_distance(m1, [torch.ones(2), torch.ones(3)], [0.0, 0.0], np.eye(2))


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


# ---------------------------------------------------------------- FID closed forms


def _trace_sqrt_2x2(m: np.ndarray) -> float:
    """tr sqrt(M) for a 2x2 matrix similar to a PSD one: sqrt(tr M + 2 sqrt(det M))."""
    return math.sqrt(np.trace(m) + 2 * math.sqrt(max(np.linalg.det(m), 0.0)))


@pytest.mark.parametrize("singular", [False, True])
def test_two_dimensional_non_commuting_closed_form(singular):
    # in 2-D, (C1^1/2 C2 C1^1/2)^1/2 has trace sqrt(tr(C1 C2) + 2 sqrt(det C1 det C2))
    c1 = np.array([[2.0, 0.0], [0.0, 0.0 if singular else 0.5]])
    rot = np.array([[math.cos(0.7), -math.sin(0.7)], [math.sin(0.7), math.cos(0.7)]])
    c2 = rot @ np.diag([3.0, 0.2]) @ rot.T
    m1, m2 = np.array([0.5, -1.0]), np.array([2.0, 0.0])
    expected = ((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * _trace_sqrt_2x2(c1 @ c2)
    assert frechet_distance(m1, c1, m2, c2) == pytest.approx(expected, rel=1e-12)


def test_near_singular_rotated_commuting_closed_form():
    # C1 = Q diag(a) Q^T, C2 = Q diag(b) Q^T share eigenvectors: FID = |dm|^2 + sum (va - vb)^2,
    # with eigenvalues spanning 1 .. 1e-14 and exact zeros, in 40-D
    d = 40
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=_gen(20), dtype=F64))
    a = torch.logspace(0, -14, d, dtype=F64)
    b = a.flip(0).clone()
    a[::5], b[1::7] = 0.0, 0.0
    m1, m2 = torch.zeros(d, dtype=F64), torch.full((d,), 0.1, dtype=F64)
    c1, c2 = (q * a) @ q.T, (q * b) @ q.T
    expected = float(((m1 - m2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    got = frechet_distance(m1, 0.5 * (c1 + c1.T), m2, 0.5 * (c2 + c2.T))
    # forming C rounds its entries (~1e-16), which moves the zero eigenvalues by ~1e-16 and
    # their roots by ~1e-8: that is the conditioning of the problem, whatever the method
    # (scipy.linalg.sqrtm is off by ~1e-8 here too); the error stays at that level
    assert got == pytest.approx(expected, rel=0, abs=2e-8)


def test_fid_raw_on_samples_converges_to_closed_form():
    # samples of two known 2-D Gaussians: the fitted FID approaches the closed form as N grows
    c1 = np.array([[1.0, 0.6], [0.6, 0.8]])
    c2 = np.array([[0.3, -0.1], [-0.1, 2.0]])
    m1, m2 = np.array([0.0, 1.0]), np.array([1.0, -0.5])
    exact = ((m1 - m2) ** 2).sum() + np.trace(c1) + np.trace(c2) - 2 * _trace_sqrt_2x2(c1 @ c2)
    n = 200_000
    x = torch.randn(n, 2, generator=_gen(21), dtype=F64) @ torch.linalg.cholesky(
        torch.as_tensor(c1)
    ).T + torch.as_tensor(m1)
    y = torch.randn(n, 2, generator=_gen(22), dtype=F64) @ torch.linalg.cholesky(
        torch.as_tensor(c2)
    ).T + torch.as_tensor(m2)
    got = fid(x, y)  # features="raw"
    assert got == pytest.approx(exact, rel=0.01)
    assert got == frechet_distance(*gaussian_moments(x), *gaussian_moments(y))
    mean, cov = gaussian_moments(y)
    assert fid_to_moments(x, mean, cov) == pytest.approx(got, rel=1e-12)


def test_fid_takes_a_callable_feature_map():
    # FID is invariant under an orthogonal map and scales by c^2 under x -> c x
    x, y = torch.randn(300, 5, generator=_gen(23)), torch.randn(300, 5, generator=_gen(24)) + 0.3
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=_gen(25)))
    base = fid(x, y)
    assert fid(x, y, features=lambda v: v @ q) == pytest.approx(base, rel=1e-9)
    assert fid(x, y, features=lambda v: 3 * v) == pytest.approx(9 * base, rel=1e-9)


def test_feature_registry_errors():
    with pytest.raises(ValueError, match="unknown features 'pixels'.*raw, digits, inception"):
        fid(torch.randn(4, 2), torch.randn(4, 2), features="pixels")
    with pytest.raises(TypeError, match=r"feature options \['path'\]"):
        fid(torch.randn(4, 2), torch.randn(4, 2), features=lambda v: v, path="x")
    with pytest.raises(ValueError, match=r"x must have shape \(B, \*D\).*\(0, 3\)"):
        get_features("raw")(torch.zeros(0, 3))
    f = get_features("raw")(torch.ones(3, 2, 4, dtype=torch.float32))
    assert f.shape == (3, 8) and f.dtype == F64


# ---------------------------------------------------------------- KID


def _kid_brute_force(x: np.ndarray, y: np.ndarray) -> float:
    d = x.shape[1]

    def k(a, b):
        return (float(a @ b) / d + 1.0) ** 3

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return sxx + syy - 2 * sxy


def test_polynomial_mmd2_matches_double_loop():
    x = torch.randn(9, 4, generator=_gen(30), dtype=F64)
    y = 0.7 * torch.randn(6, 4, generator=_gen(31), dtype=F64) + 0.2
    expected = _kid_brute_force(x.numpy(), y.numpy())
    assert float(polynomial_mmd2(x, y)) == pytest.approx(expected, rel=1e-12)


def test_kid_whole_set_subsets_equal_brute_force():
    # subsets of the full size are permutations of the sets: every round gives the same MMD^2
    x = torch.randn(8, 3, generator=_gen(32), dtype=F64)
    y = torch.randn(8, 3, generator=_gen(33), dtype=F64) * 1.5
    res = kid(x, y, subsets=4, subset_size=8, generator=_gen(0))
    assert isinstance(res, KIDResult) and (res.subsets, res.subset_size) == (4, 8)
    assert res.mean == pytest.approx(_kid_brute_force(x.numpy(), y.numpy()), rel=1e-12)
    assert res.std < 1e-12


def test_kid_near_zero_for_same_distribution_and_positive_otherwise():
    x = torch.randn(600, 8, generator=_gen(34))
    y = torch.randn(600, 8, generator=_gen(35))
    z = torch.randn(600, 8, generator=_gen(36)) * 1.2 + 0.3
    same = kid(x, y, subsets=50, subset_size=200, generator=_gen(1))
    diff = kid(x, z, subsets=50, subset_size=200, generator=_gen(1))
    assert abs(same.mean) < same.std
    assert diff.mean > 3 * diff.std > 0 and diff.mean > 10 * same.std
    again = kid(x, z, subsets=50, subset_size=200, generator=_gen(1))
    assert again == diff  # seeded subsets are reproducible


def test_kid_bad_arguments():
    x = torch.randn(10, 3)
    with pytest.raises(ValueError, match=r"subset_size must be in 2\.\.min\(N, M\) = 6.*got 8"):
        kid(x, torch.randn(6, 3), subset_size=8)
    with pytest.raises(ValueError, match="subsets must be an integer >= 1, got 0"):
        kid(x, x, subsets=0)
    with pytest.raises(ValueError, match=r"\(10, 3\) and \(10, 2\)"):
        kid(x, torch.randn(10, 2))
    assert math.isnan(kid(x, x, subsets=1).std)


# ---------------------------------------------------------------- digits classifier


@pytest.fixture(scope="module")
def short_classifier():
    """A classifier trained for 40 steps (seconds), with its training record."""
    return train_digits_classifier(seed=3, steps=40)


def test_digits_classifier_round_trip(tmp_path, short_classifier):
    model, record = short_classifier
    assert record.seed == 3 and record.steps == 40 and record.test_count == 297
    assert 0.0 <= record.test_accuracy <= 1.0
    path = save_digits_classifier(model, record, tmp_path / "sub" / "clf.safetensors")
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["clf.safetensors"]
    loaded = load_digits_classifier(path)
    assert loaded.metadata["training"]["seed"] == 3
    assert loaded.metadata["training"]["test_accuracy"] == record.test_accuracy
    assert loaded.metadata["config"] == {"channels": 32, "hidden": 64}
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    test = load_digits("test")
    logits = loaded(test.x)
    assert logits.shape == (297, 10)
    acc = float((logits.argmax(1) == test.y).double().mean())
    assert acc == record.test_accuracy
    feats = get_features("digits", path=path)(test.x.double())
    assert feats.shape == (297, 64) and feats.dtype == F64
    torch.testing.assert_close(feats, loaded.features(test.x).double())
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\).*\(2, 64\)"):
        loaded.features(torch.zeros(2, 64))


def test_digits_training_is_deterministic_given_seed(short_classifier):
    model, record = short_classifier
    again, record2 = train_digits_classifier(seed=3, steps=40)
    other, _ = train_digits_classifier(seed=4, steps=40)
    assert record2.test_accuracy == record.test_accuracy
    w, w2, w3 = (m.state_dict()["fc.weight"] for m in (model, again, other))
    assert torch.equal(w, w2) and not torch.equal(w, w3)


def test_digits_fid_separates_data_from_noise(tmp_path, short_classifier):
    path = save_digits_classifier(*short_classifier, tmp_path / "clf.safetensors")
    train, test = load_digits("train"), load_digits("test")
    noise = torch.rand(297, 1, 8, 8, generator=_gen(40)) * 2 - 1
    real = fid(test.x, train.x, features="digits", path=path)
    assert fid(noise, train.x, features="digits", path=path) > 10 * real
    assert fid(train.x, train.x, features="digits", path=path) < 1e-8


def test_digits_classifier_missing_file_says_how_to_make_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SDEGEN_CACHE", str(tmp_path / "cache"))
    expected = tmp_path / "cache" / "digits_classifier.safetensors"
    assert default_digits_classifier_path() == expected
    with pytest.raises(FileNotFoundError, match="python benchmarks/digits_classifier.py`") as err:
        get_features("digits")
    assert str(expected) in str(err.value)
    other = tmp_path / "elsewhere.safetensors"
    with pytest.raises(FileNotFoundError, match=r"digits_classifier.py --out .*elsewhere"):
        load_digits_classifier(other)
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="bad.safetensors is not a digits classifier"):
        load_digits_classifier(tmp_path / "bad.safetensors")


def test_ensure_trains_only_when_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("SDEGEN_CACHE", str(tmp_path))
    path = ensure_digits_classifier(steps=5, verbose=False)
    assert path == tmp_path / "digits_classifier.safetensors" and path.is_file()
    assert load_digits_classifier().metadata["training"]["steps"] == 5
    stamp = path.stat().st_mtime_ns
    assert ensure_digits_classifier(steps=7, verbose=False) == path
    assert path.stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_full_digits_classifier_accuracy():
    _, record = train_digits_classifier()
    assert record.test_accuracy > 0.97


# ---------------------------------------------------------------- InceptionV3 file loader


class _StandIn(torch.nn.Module):
    """Stands in for inception-2015-12-05.pt: insists on return_features=True, uint8 and 3
    channels, and returns (mean pixel per channel, H, W) so the caller's preprocessing shows."""

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        if not return_features or x.dtype != torch.uint8 or x.shape[1] != 3:
            raise RuntimeError("expected return_features=True on uint8 (B, 3, H, W)")
        hw = torch.tensor([x.shape[2], x.shape[3]], dtype=torch.float32).expand(x.shape[0], 2)
        return torch.cat([x.float().mean(dim=(2, 3)), hw], dim=1)


@pytest.fixture
def stand_in(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script's deprecation
        torch.jit.script(_StandIn()).save(str(path))
    return path


def test_inception_features_preprocess_for_the_torchscript_file(stand_in, monkeypatch):
    monkeypatch.delenv("SDEGEN_INCEPTION_SHA256", raising=False)
    x = torch.rand(5, 1, 8, 8, generator=_gen(50)) * 2.2 - 1.1  # a little outside [-1, 1]
    f = get_features("inception", path=stand_in, batch_size=2, trusted=True)(x)
    assert f.shape == (5, 5) and f.dtype == F64
    pixels = to_levels(x, 256).double().mean(dim=(2, 3))  # grey level, repeated to 3 channels
    torch.testing.assert_close(f[:, :3], pixels.expand(5, 3))
    assert (f[:, 3:] == 8).all()  # native size: the real file resizes to 299 itself
    monkeypatch.setenv("SDEGEN_INCEPTION", str(stand_in))
    digest = hashlib.sha256(stand_in.read_bytes()).hexdigest()
    g = inception_features(resize=299, sha256=digest)(
        torch.rand(2, 3, 4, 4, generator=_gen(51)) * 2 - 1
    )
    assert g.shape == (2, 5) and (g[:, 3:] == 299).all()
    u = torch.randint(0, 256, (3, 3, 6, 6), generator=_gen(52), dtype=torch.uint8)
    monkeypatch.setenv("SDEGEN_INCEPTION_SHA256", digest.upper())
    torch.testing.assert_close(inception_features()(u)[:, :3], u.double().mean(dim=(2, 3)))


def test_inception_file_errors_name_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("SDEGEN_INCEPTION", raising=False)
    with pytest.raises(FileNotFoundError, match="SDEGEN_INCEPTION.*inception-2015-12-05.pt"):
        get_features("inception")
    with pytest.raises(FileNotFoundError, match="not found: .*nothing.pt.*stylegan2-ada"):
        load_inception(tmp_path / "nothing.pt")
    (tmp_path / "pt_inception.pth").write_bytes(b"\x80\x02}q\x00.")
    with pytest.raises(ValueError, match="not a TorchScript file.*pytorch-fid"):
        load_inception(tmp_path / "pt_inception.pth", trusted=True)


def test_load_inception_checks_the_sha256_before_running_the_file(stand_in, monkeypatch):
    # TorchScript runs code when loaded: without a matching digest the file is never loaded.
    monkeypatch.delenv("SDEGEN_INCEPTION_SHA256", raising=False)
    digest = hashlib.sha256(stand_in.read_bytes()).hexdigest()
    real_load = torch.jit.load

    def no_load(*args, **kwargs):
        raise AssertionError("torch.jit.load ran on a file that should have been refused")

    monkeypatch.setattr(torch.jit, "load", no_load)
    with pytest.raises(ValueError, match=f"refusing to load {stand_in}.*SHA-256 {digest}"):
        load_inception(stand_in)  # no digest given (and none pinned): refused by default
    with pytest.raises(ValueError, match=f"refusing to load {stand_in}.*SHA-256 {digest}"):
        get_features("inception", path=stand_in)
    wrong = "0" * 64
    with pytest.raises(
        ValueError, match=f"refusing to load {stand_in}: its SHA-256 is {digest}, expected {wrong}"
    ):
        load_inception(stand_in, sha256=wrong)
    monkeypatch.setenv("SDEGEN_INCEPTION_SHA256", wrong)
    with pytest.raises(ValueError, match=f"expected {wrong}"):
        load_inception(stand_in)
    monkeypatch.delenv("SDEGEN_INCEPTION_SHA256")
    with pytest.raises(ValueError, match="sha256 must be a SHA-256 hex digest of 64 characters"):
        load_inception(stand_in, sha256="abc")
    with pytest.raises(TypeError, match="trusted must be True or False, got 'yes'"):
        load_inception(stand_in, trusted="yes")
    monkeypatch.setattr(torch.jit, "load", real_load)
    for net in (load_inception(stand_in, sha256=digest), load_inception(stand_in, trusted=True)):
        out = net(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), return_features=True)
        assert out.shape == (1, 5) and not net.training
