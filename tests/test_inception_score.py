"""Tests for the Inception Score: closed forms, a brute-force reference, and its classifiers."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sdegen.data import load_digits, to_levels
from sdegen.metrics import (
    CLASSIFIERS,
    DigitsClassifier,
    DigitsTraining,
    get_features,
    inception_score,
    inception_score_from_probs,
    save_digits_classifier,
)
from sdegen.metrics.inception_score import get_classifier

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def dirichlet(n: int, k: int, seed: int, concentration: float = 0.5) -> torch.Tensor:
    g = torch.distributions.Gamma(torch.full((k,), concentration, dtype=F64), torch.tensor(1.0))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        w = g.sample((n,))
    return w / w.sum(dim=1, keepdim=True)


def brute_force(probs: torch.Tensor, splits: int) -> tuple[float, float, list[float]]:
    """Salimans et al.'s formula in plain Python loops over rows and classes."""
    rows = probs.tolist()
    n, k = len(rows), len(rows[0])
    scores = []
    for i in range(splits):
        part = rows[i * n // splits : (i + 1) * n // splits]
        py = [sum(r[j] for r in part) / len(part) for j in range(k)]
        kl = [sum(r[j] * math.log(r[j] / py[j]) for j in range(k) if r[j] > 0) for r in part]
        scores.append(math.exp(sum(kl) / len(kl)))
    mean = sum(scores) / splits
    std = math.sqrt(sum((s - mean) ** 2 for s in scores) / splits)
    return mean, std, scores


# ---------------------------------------------------------------- closed forms


@pytest.mark.parametrize("n, k, splits", [(10, 3, 1), (100, 1008, 10), (7, 2, 7)])
def test_uniform_predictions_score_one(n, k, splits):
    res = inception_score_from_probs(torch.full((n, k), 1.0 / k, dtype=F64), splits=splits)
    assert res.mean == pytest.approx(1.0, abs=1e-12) and res.std == pytest.approx(0, abs=1e-12)
    assert (res.n, res.classes, len(res.split_scores)) == (n, k, splits)


@pytest.mark.parametrize("used, total, splits", [(3, 5, 4), (10, 10, 10), (1, 4, 2), (7, 1008, 3)])
def test_confident_predictions_spread_evenly_score_the_number_of_classes(used, total, splits):
    # each split holds every used class equally often, each sample one-hot
    labels = torch.arange(used).repeat(splits * 5)
    probs = torch.nn.functional.one_hot(labels, total).to(F64)
    res = inception_score_from_probs(probs, splits=splits)
    assert res.mean == pytest.approx(used, rel=1e-12) and res.std == pytest.approx(0, abs=1e-9)


def test_confident_but_unevenly_used_classes_score_exp_entropy():
    # one-hot samples: IS = exp(H(p(y))); class frequencies 1/2, 1/4, 1/4 give exp(1.5 log 2)
    probs = torch.nn.functional.one_hot(torch.tensor([0, 0, 1, 2] * 6), 3).to(F64)
    res = inception_score_from_probs(probs, splits=3)
    assert res.mean == pytest.approx(2**1.5, rel=1e-12)


@pytest.mark.parametrize("n, k, splits, seed", [(50, 10, 5, 0), (37, 4, 3, 1), (20, 1008, 2, 2)])
def test_matches_brute_force_on_random_probabilities(n, k, splits, seed):
    probs = dirichlet(n, k, seed)
    res = inception_score_from_probs(probs, splits=splits)
    mean, std, scores = brute_force(probs, splits)
    assert res.split_scores == pytest.approx(scores, rel=1e-10)
    assert res.mean == pytest.approx(mean, rel=1e-10) and res.std == pytest.approx(std, rel=1e-8)


@given(
    n=st.integers(4, 40),
    k=st.integers(2, 12),
    splits=st.integers(1, 4),
    seed=st.integers(0, 10_000),
    concentration=st.sampled_from([0.05, 0.5, 5.0]),
)
def test_bounds_and_class_relabelling(n, k, splits, seed, concentration):
    probs = dirichlet(n, k, seed, concentration)
    res = inception_score_from_probs(probs, splits=splits)
    assert all(1 - 1e-12 <= s <= k + 1e-9 for s in res.split_scores)
    perm = torch.randperm(k, generator=_gen(seed))
    again = inception_score_from_probs(probs[:, perm], splits=splits)
    assert again.split_scores == pytest.approx(res.split_scores, rel=1e-12)
    # float32 probabilities (rows off 1 by rounding) are accepted and renormalised
    f32 = inception_score_from_probs(probs.float(), splits=splits)
    assert f32.mean == pytest.approx(res.mean, rel=1e-4)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "probs, kw, error, pattern",
    [
        (torch.tensor([[0.5, 0.4], [0.5, 0.5]]), {}, ValueError, r"sum to 1.*row 0 sums to 0\.9"),
        (torch.tensor([[1.2, -0.2], [0.5, 0.5]]), {}, ValueError, r"nonnegative.*-0\.2 in row 0"),
        (torch.tensor([[float("nan"), 1.0]]), {}, ValueError, "probs holds 1 non-finite"),
        (torch.tensor([[float("inf"), 0.0]]), {}, ValueError, "probs holds 1 non-finite"),
        (torch.tensor([0.5, 0.5]), {}, ValueError, r"shape \(N, K\).*got \(2,\)"),
        (torch.zeros(0, 3), {}, ValueError, r"shape \(N, K\).*got \(0, 3\)"),
        (torch.tensor([[1, 0]]), {}, ValueError, "floating point.*torch.int64"),
        ([[0.5, 0.5]], {}, TypeError, "probs must be a torch.Tensor.*list"),
        (torch.full((4, 2), 0.5), {"splits": 5}, ValueError, r"splits must be in 1..N = 4.*5"),
        (torch.full((4, 2), 0.5), {"splits": 0}, ValueError, "splits must be an integer >= 1"),
        (torch.full((4, 2), 0.5), {"atol": -1.0}, ValueError, "atol must be > 0"),
    ],
)
def test_bad_probabilities_are_refused(probs, kw, error, pattern):
    with pytest.raises(error, match=pattern):
        inception_score_from_probs(probs, **kw)


def test_bad_classifier_arguments():
    x = torch.zeros(4, 1, 8, 8)
    with pytest.raises(ValueError, match="unknown classifier 'vgg'; expected one of: digits, "):
        inception_score(x, classifier="vgg")
    with pytest.raises(TypeError, match=r"classifier options \['path'\] need a classifier name"):
        inception_score(x, classifier=lambda u: torch.full((4, 2), 0.5), path="x")
    with pytest.raises(TypeError, match="classifier must be a name or a callable, got int"):
        inception_score(x, classifier=3)
    assert set(CLASSIFIERS) == {"digits", "inception"}


# ---------------------------------------------------------------- the digits classifier


@pytest.fixture(scope="module")
def random_digits_classifier(tmp_path_factory):
    """An untrained digits CNN saved as the package saves a trained one (its numbers do not
    matter here: the probabilities are checked against the network's own logits)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DigitsClassifier()
    record = DigitsTraining(0, 0, 1, 0.0, 0.0, 297, 0.0)
    return model, save_digits_classifier(model, record, tmp_path_factory.mktemp("clf") / "c.st")


def test_digits_score_is_the_softmax_of_the_cnn(random_digits_classifier):
    model, path = random_digits_classifier
    x = torch.rand(60, 1, 8, 8, generator=_gen(7), dtype=F64) * 2 - 1
    probs = get_classifier("digits", path=path, batch_size=7)(x)
    with torch.no_grad():
        expected = torch.softmax(model(x).double(), dim=1)
    assert probs.shape == (60, 10) and probs.dtype == F64
    torch.testing.assert_close(probs, expected, rtol=1e-5, atol=1e-6)  # float32 batches
    res = inception_score(x, path=path, splits=3)
    assert res.split_scores == pytest.approx(brute_force(expected, 3)[2], rel=1e-6)
    with pytest.raises(ValueError, match=r"\(B, 1, 8, 8\)"):
        inception_score(torch.zeros(10, 3, 8, 8), path=path)


@pytest.mark.slow
def test_real_digits_score_near_ten_and_noise_far_below():
    from sdegen.metrics.digits import train_digits_classifier

    model, _ = train_digits_classifier()
    test = load_digits("test")
    noise = torch.rand(297, 1, 8, 8, generator=_gen(3)) * 2 - 1

    def probs(x):
        with torch.no_grad():
            return torch.softmax(model(x).double(), dim=1)

    real = inception_score(test.x, classifier=probs, splits=1).mean
    assert real > 9.0 and inception_score(noise, classifier=probs, splits=1).mean < real / 2


# ---------------------------------------------------------------- the Inception file


class _StandIn(torch.nn.Module):
    """Stands in for inception-2015-12-05.pt: its forward signature, uint8 3-channel input;
    'features' are the mean pixel per channel, the output a softmax over 5 classes of a fixed
    linear map of them, with or without the bias."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]] * 2, dtype=torch.float32)[:5]
        self.weight = torch.nn.Parameter(w)
        self.bias = torch.nn.Parameter(torch.tensor([0.0, 1, -1, 2, 0.5], dtype=torch.float32))

    def forward(
        self,
        img: torch.Tensor,
        return_features: bool = False,
        use_fp16: bool = False,
        no_output_bias: bool = False,
    ) -> torch.Tensor:
        if img.dtype != torch.uint8 or img.shape[1] != 3:
            raise RuntimeError("expected uint8 (B, 3, H, W)")
        features = img.float().mean(dim=(2, 3)) / 64.0
        if return_features:
            return features
        logits = features @ self.weight.T
        if not no_output_bias:
            logits = logits + self.bias
        return torch.softmax(logits, dim=1)


class _FeaturesOnly(torch.nn.Module):
    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return img.float().mean(dim=(2, 3))


class _Logits(torch.nn.Module):
    def forward(self, img: torch.Tensor, no_output_bias: bool = False) -> torch.Tensor:
        return img.float().mean(dim=(2, 3))


def _script(module: torch.nn.Module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.script's deprecation
        torch.jit.script(module).save(str(path))
    return path


def test_inception_probabilities_from_the_torchscript_file(tmp_path):
    path = _script(_StandIn(), tmp_path / "inception-2015-12-05.pt")
    x = torch.rand(5, 1, 6, 6, generator=_gen(1)) * 2 - 1
    probs = get_classifier("inception", path=path, trusted=True, batch_size=2)(x)
    pixels = to_levels(x, 256).double().mean(dim=(2, 3)).expand(5, 3) / 64  # grey -> 3 channels
    w = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0]], dtype=F64)
    torch.testing.assert_close(probs, torch.softmax(pixels @ w.T, dim=1), rtol=1e-6, atol=1e-7)
    bias = torch.tensor([0.0, 1.0, -1.0, 2.0, 0.5], dtype=F64)
    with_bias = get_classifier("inception", path=path, trusted=True, output_bias=True)(x)
    torch.testing.assert_close(with_bias, torch.softmax(pixels @ w.T + bias, dim=1), rtol=1e-6,
                               atol=1e-7)  # fmt: skip
    # the same pixels reach the network as for the FID features
    feats = get_features("inception", path=path, trusted=True)(x)
    torch.testing.assert_close(feats, pixels)
    res = inception_score(x, classifier="inception", path=path, trusted=True, splits=1)
    assert res.classes == 5 and res.mean == pytest.approx(brute_force(probs, 1)[0], rel=1e-10)


def test_inception_file_without_probabilities_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv("SDEGEN_INCEPTION_SHA256", raising=False)
    x = torch.zeros(2, 3, 4, 4)
    features_only = _script(_FeaturesOnly(), tmp_path / "features.pt")
    with pytest.raises(ValueError, match=r"features\.pt gives no class probabilities: its "
                       r"forward takes \(img, return_features\)"):  # fmt: skip
        get_classifier("inception", path=features_only, trusted=True)
    logits = _script(_Logits(), tmp_path / "logits.pt")
    with pytest.raises(ValueError, match=r"logits\.pt gives no class probabilities.*rows sum"):
        inception_score(x, classifier="inception", path=logits, trusted=True, splits=1)
    with pytest.raises(ValueError, match="refusing to load"):  # the digest check still applies
        get_classifier("inception", path=logits)
    monkeypatch.delenv("SDEGEN_INCEPTION", raising=False)
    with pytest.raises(FileNotFoundError, match="SDEGEN_INCEPTION.*inception-2015-12-05.pt"):
        get_classifier("inception")
    with pytest.raises(ValueError, match=r"C in \(1, 3\), got \(2, 2, 4, 4\)"):
        get_classifier("inception", path=logits, trusted=True)(torch.zeros(2, 2, 4, 4))
