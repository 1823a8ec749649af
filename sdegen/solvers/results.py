"""The result types of the solvers: samples (`SolveResult`) and likelihoods (`LikelihoodResult`),
each with the exact cost of producing it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


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
