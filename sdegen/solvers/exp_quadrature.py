"""The arithmetic shared by the exponential integrators (exponential.py, adaptive.py): the SDE's
schedule in log-SNR at the grid times, and one step with the denoiser replaced by an
interpolating polynomial integrated exactly against the exponential kernel.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


class LogSNRSchedule:
    """alpha, sigma and lambda = log(alpha/sigma) at the grid times ts, as Python floats, and
    at any lambda through the SDE's inverse log-SNR."""

    def __init__(self, sde, ts: Tensor) -> None:
        self.sde = sde
        self.ts = ts
        self.alpha = sde.alpha(ts).tolist()
        self.sigma = sde.sigma(ts).tolist()
        self.lam = sde.half_log_snr(ts).tolist()

    def at_lambda(self, lam: float) -> tuple[float, float, float]:
        """(t, alpha, sigma) at log-SNR lam."""
        t = self.sde.t_of_half_log_snr(torch.tensor([lam], dtype=torch.float64))
        return float(t[0]), float(self.sde.alpha(t)[0]), float(self.sde.sigma(t)[0])


def _phi_moments(y: float, m: int) -> list[float]:
    """I_k(y) = int_0^y e^{v - y} v^k dv for k < m, without cancellation for small y.

    For y <= 1, I_k(y) = k! sum_{j >= 0} (-1)^j y^(k+1+j) / (k+1+j)!, an alternating series whose
    first term dominates; for larger y the recurrence I_0 = 1 - e^{-y}, I_k = y^k - k I_{k-1}
    loses nothing.
    """
    if y <= 1.0:
        out = []
        for k in range(m):
            term = y ** (k + 1) / math.factorial(k + 1)
            total, n = 0.0, k + 1
            while term != 0.0 and (total == 0.0 or abs(term) > 1e-18 * abs(total)):
                total += term
                n += 1
                term *= -y / n
            out.append(math.factorial(k) * total)
        return out
    out = [-math.expm1(-y)]
    for k in range(1, m):
        out.append(y**k - k * out[-1])
    return out


def exp_weights(nodes: list[float], h: float, c: float = 1.0) -> list[float]:
    """Quadrature weights w with int_0^h c e^{-c(h-u)} P(u) du = sum_j w_j P(nodes_j).

    Exact for every polynomial P of degree < len(nodes); nodes are offsets u from lambda_t (0 for
    the current point, negative for history, in (0, h] for stages or the new point).
    """
    m = len(nodes)
    if m == 0 or h <= 0 or c <= 0:
        raise ValueError(f"need nodes, h > 0 and c > 0; got {m} nodes, h={h!r}, c={c!r}")
    # Moments in the scaled variable v = u / h keep the Vandermonde system well conditioned.
    moments = _phi_moments(c * h, m)
    rhs = torch.tensor([moments[k] / (c * h) ** k for k in range(m)], dtype=torch.float64)
    v = torch.tensor([u / h for u in nodes], dtype=torch.float64)
    vander = v[None, :] ** torch.arange(m, dtype=torch.float64)[:, None]  # (k, j) = v_j^k
    return torch.linalg.solve(vander, rhs).tolist()


def _combine(terms: list[tuple[float, Tensor]]) -> Tensor:
    out = terms[0][0] * terms[0][1]
    for w, v in terms[1:]:
        out = out + w * v
    return out


def exp_step(
    x: Tensor,
    x0s: list[Tensor],
    nodes: list[float],
    h: float,
    sigma_ratio: float,
    alpha_s: float,
    sigma_s: float,
    eta: float = 0.0,
    z: Tensor | None = None,
) -> Tensor:
    """One step from lambda_t to lambda_t + h with x0 interpolated through (nodes, x0s).

    x: (B, *D) at lambda_t; x0s: denoiser outputs (B, *D) at the offsets `nodes`;
    sigma_ratio = sigma_s / sigma_t; eta: the stochastic family's noise scale (0: PF-ODE);
    z: N(0, I) noise for eta > 0 (None: the mean step). Returns x (B, *D) at lambda_t + h.
    """
    c = 1.0 + eta**2
    w = exp_weights(nodes, h, c)
    decay = math.exp(-(eta**2) * h)
    x_new = _combine([(sigma_ratio * decay, x)] + [(alpha_s * wj, x0) for wj, x0 in zip(w, x0s)])
    if eta > 0 and z is not None:
        x_new = x_new + sigma_s * math.sqrt(-math.expm1(-2 * eta**2 * h)) * z
    return x_new
