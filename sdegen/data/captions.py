"""Captions for labelled digit images, built from the label and from attributes measured on
each image, and the small word-level tokenizer that reads them.

A caption such as "a thick small right-slanted 3" is checkable: every word comes from a
function of the pixels (`measure`) or from the label, so a generated image can be measured
with the same functions and compared with what its prompt asked for.

The attributes, measured on grey levels mapped to ink in [0, 1] (-1 is white, 1 full ink):

- thickness: the ink mass, the mean ink per pixel;
- size: the radius of gyration of the ink, sqrt(var_row + var_col) in pixels, the ink being
  read as a distribution over pixel positions;
- slant: the shear of the ink's second moments, -cov(col, row) / var(row) (columns moved per
  row; positive when the top of the glyph leans right, as rows count downwards).

Words are tertiles within each digit class (`AttributeBins.fit` on a training split): "a
small 1" is small among the ones, so every (digit, word) pair has about a third of the class.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._utils import check_int, check_tensor_finite

__all__ = [
    "ATTRIBUTES",
    "AttributeBins",
    "Prompt",
    "Tokenizer",
    "caption",
    "make_captions",
    "measure",
    "parse_prompt",
]

# attribute -> its words, low to high
ATTRIBUTES: dict[str, tuple[str, str, str]] = {
    "thickness": ("thin", "medium", "thick"),
    "size": ("small", "medium-sized", "large"),
    "slant": ("left-slanted", "upright", "right-slanted"),
}
DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# words a user may type for an attribute word
SYNONYMS: dict[str, str] = {
    "bold": "thick",
    "heavy": "thick",
    "fat": "thick",
    "light": "thin",
    "slim": "thin",
    "big": "large",
    "tiny": "small",
    "little": "small",
    "medium-size": "medium-sized",
    "italic": "right-slanted",
    "straight": "upright",
    "vertical": "upright",
}
FILLER = ("a", "an", "the", "digit", "number")


def _check_images(x: Tensor) -> Tensor:
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != 1:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"images must be a tensor of shape (N, 1, H, W), got {got}")
    check_tensor_finite("images", x)
    return x


def measure(x: Tensor) -> dict[str, Tensor]:
    """The attributes of grey images x (N, 1, H, W) in [-1, 1]: a dict of float64 (N,)
    tensors "thickness", "size" and "slant" (see the module docstring). An image without ink
    has size and slant 0."""
    x = _check_images(x).double()
    ink = ((x[:, 0] + 1) / 2).clamp(0, 1)  # (N, H, W)
    n, h, w = ink.shape
    mass = ink.sum((1, 2))
    p = ink / mass.clamp_min(1e-12)[:, None, None]
    rows = torch.arange(h, dtype=x.dtype)[None, :, None]
    cols = torch.arange(w, dtype=x.dtype)[None, None, :]
    mr, mc = (p * rows).sum((1, 2)), (p * cols).sum((1, 2))
    dr, dc = rows - mr[:, None, None], cols - mc[:, None, None]
    var_r, var_c = (p * dr**2).sum((1, 2)), (p * dc**2).sum((1, 2))
    cov = (p * dr * dc).sum((1, 2))
    slant = torch.where(var_r > 1e-12, -cov / var_r.clamp_min(1e-12), torch.zeros_like(cov))
    return {"thickness": mass / (h * w), "size": (var_r + var_c).sqrt(), "slant": slant}


@dataclass(frozen=True)
class AttributeBins:
    """Per-class tertile edges of each attribute: edges[name] is (num_classes, 2) float64, the
    1/3 and 2/3 quantiles of the attribute within each class of the data it was fitted on."""

    edges: dict[str, Tensor]

    @classmethod
    def fit(cls, x: Tensor, y: Tensor, num_classes: int = 10) -> AttributeBins:
        """Tertiles of `measure(x)` within each class of the labels y (N,)."""
        check_int("num_classes", num_classes, 1)
        y = _check_labels(y, x.shape[0], num_classes)
        values = measure(x)
        q = torch.tensor([1 / 3, 2 / 3], dtype=torch.float64)
        edges = {}
        for name, v in values.items():
            e = torch.zeros(num_classes, 2, dtype=torch.float64)
            for k in range(num_classes):
                vk = v[y == k]
                if vk.numel() < 3:
                    raise ValueError(
                        f"class {k} has {vk.numel()} examples; tertiles need at least 3"
                    )
                e[k] = torch.quantile(vk, q)
            edges[name] = e
        return cls(edges)

    @property
    def num_classes(self) -> int:
        return next(iter(self.edges.values())).shape[0]

    def levels(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        """Each attribute of images x as its level 0, 1 or 2 (low, middle, high tertile of its
        class y): a dict of int64 (N,) tensors."""
        y = _check_labels(y, x.shape[0], self.num_classes)
        out = {}
        for name, v in measure(x).items():
            e = self.edges[name][y]
            out[name] = (v > e[:, 0]).long() + (v > e[:, 1]).long()
        return out


def _check_labels(y: Tensor, n: int, num_classes: int) -> Tensor:
    if not torch.is_tensor(y) or y.dtype != torch.long or tuple(y.shape) != (n,):
        got = f"{y.dtype} {tuple(y.shape)}" if torch.is_tensor(y) else type(y).__name__
        raise ValueError(f"labels must be an int64 tensor of shape ({n},), got {got}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}")
    return y


@dataclass(frozen=True)
class Prompt:
    """What a caption asks for: the digit (0-9) and the level (0, 1, 2) of each attribute; None
    where it does not say."""

    digit: int | None = None
    thickness: int | None = None
    size: int | None = None
    slant: int | None = None

    def attributes(self) -> dict[str, int]:
        """The attributes it names, name -> level."""
        return {k: v for k in ATTRIBUTES if (v := getattr(self, k)) is not None}


def caption(prompt: Prompt) -> str:
    """The caption of a Prompt: "a" then its attribute words in the order of ATTRIBUTES, then
    the digit ("a thick small 3"); "" (the null caption) for an empty prompt."""
    words = [ATTRIBUTES[k][v] for k, v in prompt.attributes().items()]
    if prompt.digit is not None:
        words.append(str(prompt.digit))
    if not words:
        return ""
    return " ".join(["a", *words])


def make_captions(
    x: Tensor,
    y: Tensor,
    bins: AttributeBins,
    *,
    p_drop: float = 0.0,
    generator: torch.Generator | None = None,
) -> list[str]:
    """A caption per image of x (N, 1, H, W) with labels y: its digit and its measured
    attribute levels. With p_drop > 0 each attribute word is left out with that probability
    (drawn with `generator`), so a model trained on them also reads partial prompts."""
    if not (isinstance(p_drop, (int, float)) and 0.0 <= float(p_drop) <= 1.0):
        raise ValueError(f"p_drop must be a number in [0, 1], got {p_drop!r}")
    levels = bins.levels(x, y)
    keep = {k: torch.ones(x.shape[0], dtype=torch.bool) for k in ATTRIBUTES}
    if p_drop > 0:
        u = torch.rand(x.shape[0], len(ATTRIBUTES), generator=generator, dtype=torch.float64)
        keep = {k: u[:, j] >= p_drop for j, k in enumerate(ATTRIBUTES)}
    out = []
    for i in range(x.shape[0]):
        attrs = {k: int(levels[k][i]) for k in ATTRIBUTES if bool(keep[k][i])}
        out.append(caption(Prompt(digit=int(y[i]), **attrs)))
    return out


def _words(text: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"a prompt must be a string, got {type(text).__name__}")
    return re.findall(r"[a-z0-9]+(?:-[a-z]+)*", text.lower())


_WORD_LEVEL = {w: (k, i) for k, ws in ATTRIBUTES.items() for i, w in enumerate(ws)}
_DIGIT_WORD = {**{str(d): d for d in range(10)}, **{w: d for d, w in enumerate(DIGIT_NAMES)}}


def parse_prompt(text: str) -> Prompt:
    """Read a prompt such as "a thick small 3" or "a bold seven" into a Prompt.

    Known words: the attribute words of ATTRIBUTES and their SYNONYMS ("bold", "big",
    "italic"...), a digit as a numeral or a name, and the fillers "a", "an", "the", "digit",
    "number". An unknown word, two digits or two words for one attribute are errors naming
    the word; "" is the null (unconditional) prompt."""
    found: dict[str, int] = {}
    for word in _words(text):
        if word in FILLER:
            continue
        word = SYNONYMS.get(word, word)
        if word in _DIGIT_WORD:
            key, value = "digit", _DIGIT_WORD[word]
        elif word in _WORD_LEVEL:
            key, value = _WORD_LEVEL[word]
        else:
            known = sorted({*_WORD_LEVEL, *SYNONYMS, *DIGIT_NAMES})
            raise ValueError(
                f"unknown word {word!r} in prompt {text!r}; known words: digits 0-9 or "
                f"{', '.join(known)}"
            )
        if key in found and found[key] != value:
            raise ValueError(f"prompt {text!r} asks for two different {key}s")
        found[key] = value
    return Prompt(**found)


class Tokenizer:
    """A word-level tokenizer over the caption vocabulary: "<pad>" (id 0), "<s>" (1, starts
    every sequence, so even the null caption "" has one token to attend to), the fillers,
    numerals and digit names, and the attribute words. Synonyms map to their attribute word."""

    PAD, START = 0, 1

    def __init__(self, max_len: int = 8) -> None:
        check_int("max_len", max_len, 2)
        self.max_len = max_len
        words = [*FILLER, *map(str, range(10)), *DIGIT_NAMES, *_WORD_LEVEL]
        self.vocab = ["<pad>", "<s>", *dict.fromkeys(words)]
        self.index = {w: i for i, w in enumerate(self.vocab)}

    def __len__(self) -> int:
        return len(self.vocab)

    def __call__(self, texts: str | Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token ids (N, max_len) int64 and the mask (N, max_len) bool (True: a real token) of
        the texts. Unknown words and texts longer than max_len - 1 words are errors."""
        if isinstance(texts, str):
            texts = [texts]
        ids = torch.zeros(len(texts), self.max_len, dtype=torch.long)
        for i, text in enumerate(texts):
            toks = [self.START, *self._encode(text)]
            if len(toks) > self.max_len:
                raise ValueError(
                    f"text {text!r} has {len(toks) - 1} words; this tokenizer takes at most "
                    f"{self.max_len - 1} (max_len={self.max_len})"
                )
            ids[i, : len(toks)] = torch.tensor(toks)
        return ids, ids != self.PAD

    def _encode(self, text: str) -> Iterable[int]:
        for word in _words(text):
            word = SYNONYMS.get(word, word)
            if word not in self.index:
                raise ValueError(f"unknown word {word!r} in {text!r}; see Tokenizer().vocab")
            yield self.index[word]
