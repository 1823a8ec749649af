"""Captions from labels and measured attributes, the prompt parser and the tokenizer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sdegen.data import load_digits
from sdegen.data.captions import (
    ATTRIBUTES,
    AttributeBins,
    Prompt,
    Tokenizer,
    caption,
    make_captions,
    measure,
    parse_prompt,
)


def _image(pixels: dict[tuple[int, int], float], size: int = 8) -> torch.Tensor:
    """An image (1, 1, size, size) in [-1, 1] with ink (in [0, 1]) at the given pixels."""
    ink = torch.zeros(size, size)
    for (r, c), v in pixels.items():
        ink[r, c] = v
    return (2 * ink - 1)[None, None]


def test_measure_closed_forms():
    # one pixel: no spread, no slant; ink mass 1/64
    m = measure(_image({(3, 3): 1.0}))
    assert m["thickness"].item() == pytest.approx(1 / 64)
    assert m["size"].item() == pytest.approx(0.0, abs=1e-12)
    # two pixels 4 apart on a row: var_col = 2^2, size 2
    assert measure(_image({(2, 1): 1.0, (2, 5): 1.0}))["size"].item() == pytest.approx(2.0)
    # a line col = 4 - row / 2: the top leans right, shear 1/2
    line = {(0, 4): 1.0, (2, 3): 1.0, (4, 2): 1.0, (6, 1): 1.0}
    assert measure(_image(line))["slant"].item() == pytest.approx(0.5)
    mirrored = {(r, 7 - c): v for (r, c), v in line.items()}
    assert measure(_image(mirrored))["slant"].item() == pytest.approx(-0.5)
    # an empty image: all zero, no NaN
    empty = measure(-torch.ones(1, 1, 8, 8))
    assert all(float(v) == 0.0 for v in empty.values())


def test_measure_matches_numpy_brute_force():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(5, 1, 6, 7, generator=g) * 2 - 1
    got = measure(x)
    for i in range(5):
        ink = (x[i, 0].numpy().astype(np.float64) + 1) / 2
        pts = [(r, c, ink[r, c]) for r in range(6) for c in range(7)]
        w = np.array([p[2] for p in pts])
        rc = np.array([[p[0], p[1]] for p in pts], dtype=np.float64)
        cov = np.cov(rc.T, aweights=w, bias=True)
        assert got["thickness"][i].item() == pytest.approx(w.mean())
        assert got["size"][i].item() == pytest.approx(np.sqrt(cov[0, 0] + cov[1, 1]))
        assert got["slant"][i].item() == pytest.approx(-cov[0, 1] / cov[0, 0])


@pytest.fixture(scope="module")
def digits():
    return load_digits("train")


def test_bins_are_tertiles_within_each_class(digits):
    bins = AttributeBins.fit(digits.x, digits.y)
    levels = bins.levels(digits.x, digits.y)
    for name in ATTRIBUTES:
        for k in range(10):
            counts = torch.bincount(levels[name][digits.y == k], minlength=3)
            n = int((digits.y == k).sum())
            assert (counts - n / 3).abs().max() <= 2, (name, k, counts)


def test_captions_parse_back_to_the_measured_attributes(digits):
    bins = AttributeBins.fit(digits.x, digits.y)
    x, y = digits.x[:200], digits.y[:200]
    levels = bins.levels(x, y)
    for i, text in enumerate(make_captions(x, y, bins)):
        p = parse_prompt(text)
        assert p.digit == int(y[i])
        assert p.attributes() == {k: int(levels[k][i]) for k in ATTRIBUTES}
    dropped = make_captions(x, y, bins, p_drop=0.5, generator=torch.Generator().manual_seed(1))
    n_attrs = [len(parse_prompt(t).attributes()) for t in dropped]
    assert 1.2 < np.mean(n_attrs) < 1.8  # 3 words kept with probability 1/2 each
    for i, text in enumerate(dropped):  # what is said is still true
        for k, v in parse_prompt(text).attributes().items():
            assert v == int(levels[k][i])


def test_every_prompt_round_trips():
    choices = [None, 0, 1, 2]
    for digit in [None, *range(10)]:
        for t, s, sl in itertools.product(choices, choices, choices):
            p = Prompt(digit, t, s, sl)
            assert parse_prompt(caption(p)) == p
    assert caption(Prompt()) == ""
    assert parse_prompt("") == Prompt()


def test_prompt_words_synonyms_and_errors():
    assert parse_prompt("A bold, tiny Seven") == Prompt(7, thickness=2, size=0)
    assert parse_prompt("an italic digit 4") == Prompt(4, slant=2)
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        parse_prompt("a purple 3")
    with pytest.raises(ValueError, match="two different digits"):
        parse_prompt("a 3 7")
    with pytest.raises(ValueError, match="two different thickness"):
        parse_prompt("a thick thin 3")
    with pytest.raises(TypeError, match="string"):
        parse_prompt(3)  # type: ignore[arg-type]


def test_tokenizer():
    tok = Tokenizer(max_len=6)
    ids, mask = tok(["a thick 3", "", "a bold 3"])
    assert ids.shape == mask.shape == (3, 6)
    assert mask.sum(1).tolist() == [4, 1, 4]  # <s> a thick 3 | <s> | <s> a thick 3
    assert torch.equal(ids[0], ids[2])  # a synonym is its word
    assert (ids[~mask] == Tokenizer.PAD).all() and (ids[:, 0] == Tokenizer.START).all()
    assert len(set(tok.vocab)) == len(tok)
    with pytest.raises(ValueError, match="unknown word 'purple'"):
        tok("a purple 3")
    with pytest.raises(ValueError, match="at most 5"):
        tok("a thick small right-slanted digit 3")
    with pytest.raises(ValueError, match="max_len"):
        Tokenizer(max_len=1)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"shape \(N, 1, H, W\)"):
        measure(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="NaN"):
        measure(torch.full((1, 1, 8, 8), float("nan")))
    x = torch.zeros(6, 1, 8, 8)
    with pytest.raises(ValueError, match="labels must be in 0..9"):
        AttributeBins.fit(x, torch.tensor([0, 1, 2, 3, 4, 10]))
    with pytest.raises(ValueError, match="int64"):
        AttributeBins.fit(x, torch.zeros(6))
    with pytest.raises(ValueError, match="class 1 has 0 examples"):
        AttributeBins.fit(x, torch.zeros(6, dtype=torch.long), num_classes=2)
    bins = AttributeBins.fit(x, torch.zeros(6, dtype=torch.long), num_classes=1)
    with pytest.raises(ValueError, match="p_drop"):
        make_captions(x, torch.zeros(6, dtype=torch.long), bins, p_drop=1.5)
