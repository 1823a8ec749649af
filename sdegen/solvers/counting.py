"""NFE accounting in one place: a wrapper that counts every call to a score model.

The first call of each method is checked the way torchsde checks a user's drift: the output must
have the input's shape and be finite, and the error names the method and the shapes seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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


@dataclass(frozen=True)
class SolveResult:
    """Samples and the exact cost of producing them.

    Attributes:
        x: samples, shape (B, *D).
        nfe: network evaluations made (every call counted, rejected adaptive steps included).
        nfe_backward: vector-Jacobian products taken (0 for sampling).
        ts: the time grid used, float64, shape (steps + 1,), from T down to t_min
            (for adaptive methods, the accepted endpoints only).
        trajectory: if requested, the states at the grid times, then the denoised output when
            denoise_final: shape (len(ts) [+ 1], B, *D).
        method: the method name.
        batch_factor: examples passed through the network per sample per evaluation: 2 under
            classifier-free guidance (conditional and unconditional in one doubled batch), else
            1. The network saw nfe * batch_factor * B examples in all.
        nfe_classifier: classifier forward-and-backward passes (classifier guidance), not
            counted in nfe.
    """

    x: Tensor
    nfe: int
    nfe_backward: int
    ts: Tensor
    trajectory: Tensor | None
    method: str
    batch_factor: int = 1
    nfe_classifier: int = 0


@dataclass(frozen=True)
class LikelihoodResult:
    """Per-example log-likelihood from the probability-flow ODE, and its cost.

    Attributes:
        log_prob: log p_{t_min}(x) in nats, shape (B,). Exact up to the ODE tolerance with
            trace="exact"; an unbiased estimate of it with trace="hutchinson".
        prior_log_prob: log p_T(z) under the prior, shape (B,).
        delta_log_prob: integral of the divergence from t_min to T, shape (B,).
        z: the latent x(T), shape (B, *D).
        nfe: forward network evaluations (every ODE right-hand-side call).
        nfe_backward: vector-Jacobian products (D per evaluation for the exact trace, `probes`
            per evaluation for Hutchinson), batched through autograd.
        trace: "exact" or "hutchinson".
    """

    log_prob: Tensor
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    z: Tensor
    nfe: int
    nfe_backward: int
    trace: str
