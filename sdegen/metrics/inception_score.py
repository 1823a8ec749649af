"""Inception Score (Salimans et al. 2016) from the class probabilities of a classifier.

IS = exp(E_x KL(p(y|x) || p(y))), with p(y) the mean of p(y|x) over the sample set; computed,
as in Salimans et al.'s code, on `splits` consecutive chunks of the samples and reported as
the mean and (population) standard deviation of the per-chunk scores. It lies in [1, K] for K
classes: 1 when every sample gets the same prediction, K when each sample is assigned one
class with certainty and the classes are used equally often.

Classifiers (`CLASSIFIERS`): "digits", the 8x8 digits CNN of `sdegen.metrics.digits` (10
classes), and "inception", the 1008-way softmax of the local TorchScript InceptionV3 file
(StyleGAN2-ADA's ``inception-2015-12-05.pt``, the same file as the "inception" FID features;
it is never downloaded).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._utils import check_choice, check_finite_number, check_int, check_tensor_finite
from .features import (
    _batches,
    _check_batch_size,
    _inception_path,
    inception_pixels,
    load_inception,
)

__all__ = [
    "InceptionScore",
    "ProbabilityFn",
    "CLASSIFIERS",
    "inception_score",
    "inception_score_from_probs",
    "digits_probabilities",
    "inception_probabilities",
    "get_classifier",
]

ProbabilityFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class InceptionScore:
    """An Inception Score: `mean` and `std` (population std, ddof 0, as Salimans et al.'s
    code) of the per-split scores `split_scores`, from `n` samples in `len(split_scores)`
    consecutive splits over `classes` classes."""

    mean: float
    std: float
    split_scores: tuple[float, ...]
    n: int
    classes: int


def _check_probs(probs: Any, atol: float) -> Tensor:
    if not torch.is_tensor(probs):
        raise TypeError(f"probs must be a torch.Tensor of shape (N, K), got {type(probs).__name__}")
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0:
        raise ValueError(f"probs must have shape (N, K) with N, K >= 1, got {tuple(probs.shape)}")
    if not probs.is_floating_point():
        raise ValueError(f"probs must be floating point class probabilities, got {probs.dtype}")
    check_tensor_finite("probs", probs)
    p = probs.detach().to(torch.float64)
    negative = p < 0
    if bool(negative.any()):
        row = int(negative.any(dim=1).nonzero()[0])
        raise ValueError(
            f"probs must be nonnegative; {int(negative.sum())} negative value(s), e.g. "
            f"{float(p[row].min()):.3g} in row {row}"
        )
    sums = p.sum(dim=1)
    off = (sums - 1).abs() > atol
    if bool(off.any()):
        row = int(off.nonzero()[0])
        raise ValueError(
            f"each row of probs must sum to 1 (within atol={atol:g}); {int(off.sum())} row(s) "
            f"do not, e.g. row {row} sums to {float(sums[row]):.6g}; pass probabilities "
            "(softmax of the logits), not logits"
        )
    return p / sums[:, None]


def inception_score_from_probs(
    probs: Tensor, *, splits: int = 10, atol: float = 1e-4
) -> InceptionScore:
    """Inception Score of class probabilities p(y|x) (Salimans et al. 2016).

    For each of `splits` consecutive chunks (chunk i holds rows i N // splits to
    (i + 1) N // splits - 1), IS_i = exp(mean_x sum_y p(y|x) (log p(y|x) - log p_i(y))) with
    p_i(y) the chunk's mean prediction; 0 log 0 = 0. Computed in float64.

    Args:
        probs: (N, K) probabilities, rows summing to 1 within `atol` (they are renormalised),
            nonnegative and finite; N >= splits.
        splits: number of chunks, 1 <= splits <= N.
        atol: tolerance on the row sums; finite and > 0.
    Returns:
        `InceptionScore` with the mean and std over the chunks.

    Example:
        >>> import torch
        >>> from sdegen.metrics import inception_score_from_probs
        >>> one_hot = torch.eye(4).repeat(25, 1)       # 100 samples, 4 classes used equally
        >>> inception_score_from_probs(one_hot, splits=5).mean
        4.0
        >>> inception_score_from_probs(torch.full((100, 4), 0.25)).mean
        1.0
    """
    atol = check_finite_number("atol", atol, positive=True)
    p = _check_probs(probs, atol)
    n = p.shape[0]
    splits = check_int("splits", splits, 1)
    if splits > n:
        raise ValueError(
            f"splits must be in 1..N = {n} (one sample at least per split), got {splits}"
        )
    scores = []
    for i in range(splits):
        part = p[i * n // splits : (i + 1) * n // splits]
        marginal = part.mean(dim=0, keepdim=True)
        kl = (torch.xlogy(part, part) - torch.xlogy(part, marginal)).sum(dim=1)
        scores.append(math.exp(float(kl.mean())))
    t = torch.tensor(scores, dtype=torch.float64)
    return InceptionScore(
        mean=float(t.mean()),
        std=float(t.std(unbiased=False)),
        split_scores=tuple(scores),
        n=n,
        classes=p.shape[1],
    )


def digits_probabilities(
    path: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 2048,
) -> ProbabilityFn:
    """Class probabilities of the 8x8 digits CNN (`sdegen.metrics.digits`): softmax of its 10
    logits, taken in float64.

    The weights are read once from `path` or the cache (a missing file raises
    FileNotFoundError naming the command that trains them). Returns ``x (B, 1, 8, 8) in
    [-1, 1] -> (B, 10)`` float64 on x's device, computed on `device` (default: x's device) in
    batches of `batch_size`, without gradients.
    """
    from .digits import load_digits_classifier

    batch_size = _check_batch_size(batch_size)
    model = load_digits_classifier(path)

    @torch.no_grad()
    def probabilities(x: Tensor) -> Tensor:
        check_tensor_finite("x", x)
        dev = torch.device(device) if device is not None else x.device
        net = model.to(dev)
        out = [
            torch.softmax(net(b.to(dev)).to(torch.float64), dim=1) for b in _batches(x, batch_size)
        ]
        return torch.cat(out).to(x.device)

    return probabilities


def inception_probabilities(
    path: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 64,
    resize: int | None = None,
    sha256: str | None = None,
    trusted: bool = False,
    output_bias: bool = False,
) -> ProbabilityFn:
    """The 1008-way ImageNet class probabilities of the local TorchScript InceptionV3.

    The file is the one the "inception" FID features read (`load_inception`: `path` or the env
    var SDEGEN_INCEPTION, its SHA-256 checked against `sha256` unless trusted=True); it is never
    downloaded. Images are prepared exactly as `inception_features` prepares them (values in
    [-1, 1] to 256 levels, grey repeated to 3 channels, optional bilinear `resize`) and the
    network is called as StyleGAN2-ADA's Inception Score calls it,
    ``net(images, no_output_bias=True)``, which returns the softmax of the logits computed
    without the output layer's bias, as in Salimans et al.'s original code; output_bias=True
    keeps the bias.

    A file that is not that network has no class probabilities: one whose forward does not
    take ``no_output_bias`` (pool3 features only) is refused here, one whose output rows are not
    probabilities on the first call, with a ValueError saying so.

    Returns:
        ``x (B, C, H, W), C in {1, 3} -> (B, 1008)`` float64 probabilities on x's device.
    """

    batch_size = _check_batch_size(batch_size)
    if resize is not None:
        check_int("resize", resize, 1)
    if not isinstance(output_bias, bool):
        raise TypeError(f"output_bias must be True or False, got {output_bias!r}")
    file = _inception_path(path)
    net = load_inception(file, sha256=sha256, trusted=trusted)

    def to_pixels(b: Tensor) -> Tensor:  # the preprocessing of inception_features
        return inception_pixels(b, resize)

    # StyleGAN2-ADA's file: forward(img, return_features, use_fp16, no_output_bias)
    schema = getattr(getattr(net, "forward", None), "schema", None)
    arguments = [a.name for a in schema.arguments] if schema is not None else []
    if "no_output_bias" not in arguments:
        raise ValueError(
            f"{file} gives no class probabilities: its forward takes ({', '.join(arguments[1:])}),"
            " not StyleGAN2-ADA's inception-2015-12-05.pt forward(img, return_features, "
            "use_fp16, no_output_bias), whose 1008-way softmax the Inception Score needs; a "
            "features-only network (enough for FID) does not give it"
        )

    def call(pixels: Tensor) -> Tensor:
        out = net(pixels, no_output_bias=not output_bias)
        if out.ndim != 2 or out.shape[0] != pixels.shape[0]:
            raise ValueError(
                f"{file} gives no class probabilities: its output for {pixels.shape[0]} images "
                f"has shape {tuple(out.shape)}, expected ({pixels.shape[0]}, classes)"
            )
        sums = out.to(torch.float64).sum(dim=1)
        if bool(((sums - 1).abs() > 1e-3).any()) or bool((out < 0).any()):
            raise ValueError(
                f"{file} gives no class probabilities: its output rows sum to "
                f"{float(sums.min()):.4g}..{float(sums.max()):.4g} or hold negative values "
                "(logits or features, not a softmax)"
            )
        return out.to(torch.float64)

    @torch.no_grad()
    def probabilities(x: Tensor) -> Tensor:
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must be images of shape (B, C, H, W) with C in (1, 3), got {got}")
        check_tensor_finite("x", x)
        dev = torch.device(device) if device is not None else x.device
        net.to(dev)  # in place, as every nn.Module
        out = [call(to_pixels(b.to(dev)).contiguous()) for b in _batches(x, batch_size)]
        return torch.cat(out).to(x.device)

    return probabilities


CLASSIFIERS: dict[str, Callable[..., ProbabilityFn]] = {
    "digits": digits_probabilities,
    "inception": inception_probabilities,
}


def get_classifier(name: str, **kwargs: Any) -> ProbabilityFn:
    """The class-probability function `name` of `CLASSIFIERS` built with `kwargs`:
    ``x (B, *D) -> (B, K)`` float64 probabilities."""
    check_choice("classifier", name, CLASSIFIERS)
    return CLASSIFIERS[name](**kwargs)


def inception_score(
    x: Tensor,
    *,
    classifier: str | ProbabilityFn = "digits",
    splits: int = 10,
    **classifier_kwargs: Any,
) -> InceptionScore:
    """Inception Score (Salimans et al. 2016) of samples x (N, *D) under a classifier.

    Args:
        x: samples, N >= splits.
        classifier: "digits" (the 8x8 digits CNN, 10 classes), "inception" (the local
            InceptionV3 file, 1008 classes; see `inception_probabilities`) or a callable
            ``(B, *D) -> (B, K)`` of probabilities; `classifier_kwargs` go to the named one
            (e.g. path=, trusted=).
        splits: consecutive chunks the score is averaged over (10 in Salimans et al.).
    Returns:
        `InceptionScore` (mean, std over the splits); see `inception_score_from_probs`.
    """
    if callable(classifier):
        if classifier_kwargs:
            raise TypeError(
                f"classifier options {sorted(classifier_kwargs)} need a classifier name, "
                "not a callable"
            )
        probabilities = classifier
    elif isinstance(classifier, str):
        probabilities = get_classifier(classifier, **classifier_kwargs)
    else:
        raise TypeError(f"classifier must be a name or a callable, got {type(classifier).__name__}")
    splits = check_int("splits", splits, 1)
    return inception_score_from_probs(probabilities(x), splits=splits)
