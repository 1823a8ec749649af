"""NFE accounting in one place: a wrapper that counts every call to a score model.

The first call of each method is checked the way torchsde checks a user's drift: the output must
have the input's shape and be finite, and the error names the method and the shapes seen.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .results import LikelihoodResult, SolveResult  # noqa: F401  (importable from here too)

_PROTOCOL = ("score", "denoise", "eps")


def check_model(model) -> None:
    """Raise TypeError unless `model` has callable score, denoise and eps methods."""
    missing = [m for m in _PROTOCOL if not callable(getattr(model, m, None))]
    if missing:
        raise TypeError(
            f"model must have methods score(x, t), denoise(x, t) and eps(x, t); "
            f"{type(model).__name__} lacks {', '.join(missing)}"
        )


class CountingModel:
    """Wrap a score model and count network evaluations: `nfe` is incremented once per call.

    A call on a batch counts as one evaluation, whatever the batch size, as in the literature.
    """

    def __init__(self, model, *, keep_last: bool = False) -> None:
        check_model(model)
        self.model = model
        self.nfe = 0
        self._checked: set[str] = set()
        self.keep_last = keep_last
        # (method name, x, t, output) of the latest call, when keep_last (sampling callbacks)
        self.last: tuple[str, Tensor, Tensor, Tensor] | None = None

    def _call(self, name: str, x: Tensor, t: Tensor) -> Tensor:
        self.nfe += 1
        out = getattr(self.model, name)(x, t)
        if self.keep_last:
            self.last = (name, x, t, out)
        if name not in self._checked:
            if not torch.is_tensor(out) or out.shape != x.shape:
                got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
                raise ValueError(
                    f"model.{name}(x, t) must return the shape of x {tuple(x.shape)}, but got {got}"
                )
            if not bool(torch.isfinite(out).all()):
                raise ValueError(
                    f"model.{name}(x, t) returned NaN or inf at t = {float(t.flatten()[0]):.6g}"
                )
            self._checked.add(name)
        return out

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        return self._call("score", x, t)

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        return self._call("denoise", x, t)

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        return self._call("eps", x, t)
