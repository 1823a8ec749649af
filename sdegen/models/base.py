"""The score-model protocol and the one place where parametrizations are converted.

A model predicts one of: noise eps, clean data x0, velocity v, or the score grad log p_t(x).
With x_t = alpha x0 + sigma eps, each determines the others through alpha(t) and sigma(t) alone,
so solvers never need to know which one a network was trained in:

    score = -eps / sigma,     x0 = (x - sigma eps) / alpha,     eps = (x - alpha x0) / sigma,
    v = (alpha eps - sigma x0) / n,   n = sqrt(alpha^2 + sigma^2),
    from v:  x0 = (alpha x - sigma n v) / n^2,   eps = (sigma x + alpha n v) / n^2.

v is Salimans & Ho's velocity (2022) for VP, where n = 1. The normalisation by n keeps it at unit
scale for every SDE: it is EDM's preconditioned network target F (Karras et al. 2022, eq. 8,
sigma_data = 1), negated, in any linear SDE. Unlike eps it determines x0 without dividing by a
small alpha(T), so data-prediction samplers (DDIM, DPM-Solver++) do not amplify its errors.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from .._utils import append_dims, batch_times, check_choice

PARAMETRIZATIONS = ("eps", "x0", "v", "score")


@runtime_checkable
class ScoreModelLike(Protocol):
    """What every solver needs: score, x0-estimate and noise-estimate at (x, t), t of shape (B,).

    Conditional models also take labels y of shape (B,) as a third argument; solvers never pass
    them: `sdegen.solvers.guidance` binds them in a wrapper that has this two-argument form.
    """

    def score(self, x: Tensor, t: Tensor) -> Tensor: ...

    def denoise(self, x: Tensor, t: Tensor) -> Tensor: ...

    def eps(self, x: Tensor, t: Tensor) -> Tensor: ...


def to_x0_eps(
    kind: str, out: Tensor, x: Tensor, alpha: Tensor, sigma: Tensor
) -> tuple[Tensor, Tensor]:
    """Convert a prediction `out` in parametrization `kind` to (x0, eps).

    Args:
        kind: one of "eps", "x0", "v", "score".
        out, x: shape (B, *D).
        alpha, sigma: shape (B,).
    Returns:
        x0 and eps, each of shape (B, *D).
    """
    a, s = append_dims(alpha, x.ndim), append_dims(sigma, x.ndim)
    if kind == "eps":
        return (x - s * out) / a, out
    if kind == "x0":
        return out, (x - a * out) / s
    if kind == "v":
        n2 = a**2 + s**2
        n = n2.sqrt()
        return (a * x - s * n * out) / n2, (s * x + a * n * out) / n2
    if kind == "score":
        eps = -s * out
        return (x - s * eps) / a, eps
    check_choice("parametrization", kind, PARAMETRIZATIONS)
    raise AssertionError("unreachable")


def from_x0_eps(kind: str, x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The training target for parametrization `kind` given the true (x0, eps); shape (B, *D)."""
    a, s = append_dims(alpha, x0.ndim), append_dims(sigma, x0.ndim)
    targets = {
        "eps": lambda: eps,
        "x0": lambda: x0,
        "v": lambda: (a * eps - s * x0) / (a**2 + s**2).sqrt(),
        "score": lambda: -eps / s,
    }
    return targets[check_choice("parametrization", kind, PARAMETRIZATIONS)]()


class ParametrizedModel(torch.nn.Module):
    """Base for models that predict (x0, eps) at (x, t); derives score, denoise and eps.

    Subclasses implement `x0_eps(x, t, y=None)`, y being optional class labels of shape (B,)
    (`sdegen.models.labels`); `num_classes` is None for an unconditional model. Each public call
    is one model evaluation.
    """

    num_classes: int | None = None

    def __init__(self, sde) -> None:
        super().__init__()
        self.sde = sde

    def x0_eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def _call(
        self, x: Tensor, t: Tensor | float, y: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        if not torch.is_tensor(x) or x.ndim < 2:
            raise ValueError(
                f"x must be a tensor of shape (batch, *event_shape), got "
                f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}"
            )
        t = batch_times(t, x.shape[0], x)
        x0, eps = self.x0_eps(x, t) if y is None else self.x0_eps(x, t, y)
        return x0, eps, t

    def score(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """Score grad_x log p_t(x | y) = -eps / sigma(t); x (B, *D), t (B,), labels y (B,)."""
        _, eps, t = self._call(x, t, y)
        return -eps / append_dims(self.sde.sigma(t), x.ndim)

    def denoise(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """Estimate of E[x0 | x_t = x, y]; shape (B, *D)."""
        return self._call(x, t, y)[0]

    def eps(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """Estimate of the noise E[eps | x_t = x, y]; shape (B, *D)."""
        return self._call(x, t, y)[1]
