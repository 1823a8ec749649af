"""The arithmetic shared by the exponential integrators (exponential.py, adaptive.py): the SDE's
schedule in log-SNR at the grid times, and one step with the denoiser replaced by an
interpolating polynomial integrated exactly against the exponential kernel.
"""

from __future__ import annotations

import math
import platform

import torch
from torch import Tensor

from ..sde.base import LinearSDE, times_checked

# How many float64 values an elementwise torch kernel takes through its scalar code alone (fewer
# than twice the SIMD width): 7 on x86 (AVX2, AVX512 and the default build hold >= 4 doubles a
# vector); elsewhere (NEON holds 2) one at a time.
SCALAR_RUN = 7 if platform.machine().lower() in ("x86_64", "amd64") else 1


class LogSNRSchedule:
    """alpha, sigma and lambda = log(alpha/sigma) at the grid times ts (float64, (n + 1,)), as
    Python floats, and at any lambda through the SDE's inverse log-SNR; built once per solve.

    The grid is a CPU float64 tensor, so reading it into floats here costs no device
    synchronisation; the per-step work of the methods is then float arithmetic and tensor
    operations on the state alone.
    """

    def __init__(self, sde, ts: Tensor) -> None:
        self.sde = sde
        self.ts = ts
        self.t = ts.tolist()
        self.alpha = sde.alpha(ts).tolist()
        self.sigma = sde.sigma(ts).tolist()
        self.lam = sde.half_log_snr(ts).tolist()
        self.t_rows = TimeRows(self.t)

    def at_lambda(self, lam: float) -> tuple[float, float, float]:
        """(t, alpha, sigma) at log-SNR lam, checked against the SDE's range."""
        t = self.sde.t_of_half_log_snr(torch.tensor([lam], dtype=torch.float64))
        return float(t[0]), float(self.sde.alpha(t)[0]), float(self.sde.sigma(t)[0])

    def at_lambdas(self, lams: list[float]) -> list[tuple[float, float, float]]:
        """`at_lambda` of each of `lams`, levels a method derives from the grid (midpoints,
        stages), computed once per solve: the range is checked once for all of them, then the
        values are computed exactly as `at_lambda` computes each alone. A vectorised inverse of
        a VP SDE rounds some last bits differently, because torch's elementwise kernels run
        SIMD code on a tensor's first 2 V elements and beyond (V: the vector width) and scalar
        code on one element; a tensor of fewer than 2 V elements takes the scalar code only,
        so the values are computed `SCALAR_RUN` at a time, to the bit."""
        if not lams:
            return []
        sde = self.sde
        lam_all = torch.tensor(lams, dtype=torch.float64)
        if not isinstance(sde, LinearSDE):
            return [self.at_lambda(lam) for lam in lams]
        sde.t_of_half_log_snr(lam_all)  # the checks of at_lambda, once
        out: list[tuple[float, float, float]] = []
        with times_checked():  # alpha and sigma at times just checked
            for lam in lam_all.split(SCALAR_RUN):
                # LinearSDE.t_of_half_log_snr after its checks, to the bit
                t = sde._t_of_half_log_snr(lam.clone()).clamp(sde.t_min, sde.T)
                out += zip(t.tolist(), sde.alpha(t).tolist(), sde.sigma(t).tolist())
        return out

    def t_batch(self, i: int, x: Tensor) -> Tensor:
        """The grid time ts[i] as a (B,) tensor in x's dtype and device (see `TimeRows`)."""
        return self.t_rows(i, x)


class TimeRows:
    """Times known once per solve (the grid, a method's midpoints or stages), as Python floats,
    handed to the model as (B,) tensors in x's dtype and device: row i holds the values of
    `grid.batch_t(times[i], x)`. The rows are made in one transfer at the first call (again
    only if x's dtype, device or batch size change), so a step makes no tensor of its own for
    its time and never reads one back to the host. The rows are views of one tensor: a model
    must not write into t."""

    def __init__(self, times: list[float]) -> None:
        self.times = times
        self._rows: Tensor | None = None

    def __call__(self, i: int, x: Tensor) -> Tensor:
        rows = self._rows
        if (
            rows is None
            or rows.dtype != x.dtype
            or rows.shape[1] != x.shape[0]
            or rows.device != x.device
        ):
            rows = torch.tensor(self.times, dtype=torch.float64)
            rows = rows.to(device=x.device, dtype=x.dtype)[:, None].repeat(1, x.shape[0])
            self._rows = rows
        return rows[i]


def scale(c: float, x: Tensor) -> Tensor:
    """c x, or x itself when c is 1 (as alpha is on VE and EDM SDEs): 1 * x is x exactly, so
    skipping the multiplication changes no bit and saves a tensor operation."""
    return x if c == 1.0 else c * x


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
    return exp_weights_many([(nodes, h, c)])[0]


def exp_weights_many(cases: list[tuple[list[float], float, float]]) -> list[list[float]]:
    """`exp_weights(nodes, h, c)` of each case, with one batched solve per number of nodes: a
    method computes all its steps' weights once per solve this way (a solve per step costs
    more than the step). The batched solve gives each system's weights to the bit, and equal
    cases (a grid uniform in lambda repeats its steps' nodes) are solved once and share one
    list of weights."""
    keys = []
    unique: dict[tuple, int] = {}
    for nodes, h, c in cases:
        m = len(nodes)
        if m == 0 or h <= 0 or c <= 0:
            raise ValueError(f"need nodes, h > 0 and c > 0; got {m} nodes, h={h!r}, c={c!r}")
        key = (tuple(nodes), h, c)
        keys.append(key)
        unique.setdefault(key, len(unique))
    solved = _solve_weights(list(unique))
    return [solved[unique[key]] for key in keys]


def _solve_weights(cases: list[tuple[tuple[float, ...], float, float]]) -> list[list[float]]:
    """`exp_weights_many` of distinct, checked cases."""
    out: list[list[float]] = [[] for _ in cases]
    by_size: dict[int, list[int]] = {}
    for j, (nodes, _, _) in enumerate(cases):
        by_size.setdefault(len(nodes), []).append(j)
    # I_k(y) does not depend on how many moments are asked for: compute each y's once, as many
    # as its largest case needs (a corrector's case shares y with its predictor's)
    most: dict[float, int] = {}
    for nodes, h, c in cases:
        most[c * h] = max(most.get(c * h, 0), len(nodes))
    moments_of = {y: _phi_moments(y, m) for y, m in most.items()}
    for m, idx in by_size.items():
        # Moments in the scaled variable v = u / h keep the Vandermonde system well conditioned.
        rhs, vs = [], []
        for j in idx:
            nodes, h, c = cases[j]
            moments = moments_of[c * h]
            rhs.append([moments[k] / (c * h) ** k for k in range(m)])
            vs.append([u / h for u in nodes])
        if m == 1:
            # the system is [1] w = rhs: the solve returns rhs itself, to the bit
            for j, r in zip(idx, rhs):
                out[j] = r
            continue
        v = torch.tensor(vs, dtype=torch.float64)
        vander = v[:, None, :] ** torch.arange(m, dtype=torch.float64)[None, :, None]  # v_j^k
        w = torch.linalg.solve(vander, torch.tensor(rhs, dtype=torch.float64))
        for j, wj in zip(idx, w.tolist()):
            out[j] = wj
    return out


def _combine(terms: list[tuple[float | Tensor, Tensor]]) -> Tensor:
    out = terms[0][0] * terms[0][1]
    for w, v in terms[1:]:
        out = out + w * v
    return out


def combine(first: Tensor, coefs: list, x0s: list[Tensor]) -> Tensor:
    """first + sum_j coefs[j] x0s[j], summed in that order: `exp_step`'s sum after its first
    term (first = its x coefficient times x), for a caller that reuses that term (a predictor
    and its corrector share it)."""
    out = first
    for w, v in zip(coefs, x0s):
        out = out + w * v
    return out


def step_coefficients(
    weights: list[float],
    h: float,
    sigma_ratio: float,
    alpha_s: float,
    sigma_s: float,
    eta: float = 0.0,
) -> tuple[list[float], float]:
    """`exp_step`'s factors: ([x's, then each x0's], the noise z's; 0.0 when eta = 0), as it
    computes them, so that a method can compute every step's once per solve."""
    decay = math.exp(-(eta**2) * h)
    coefs = [sigma_ratio * decay] + [alpha_s * wj for wj in weights]
    noise = sigma_s * math.sqrt(-math.expm1(-2 * eta**2 * h)) if eta > 0 else 0.0
    return coefs, noise


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
    *,
    weights: list[float] | None = None,
) -> Tensor:
    """One step from lambda_t to lambda_t + h with x0 interpolated through (nodes, x0s).

    x: (B, *D) at lambda_t; x0s: denoiser outputs (B, *D) at the offsets `nodes`;
    sigma_ratio = sigma_s / sigma_t; eta: the stochastic family's noise scale (0: PF-ODE);
    z: N(0, I) noise for eta > 0 (None: the mean step); weights: exp_weights(nodes, h,
    1 + eta^2) when the caller computed them already. Returns x (B, *D) at lambda_t + h.
    """
    w = exp_weights(nodes, h, 1.0 + eta**2) if weights is None else weights
    coefs, noise = step_coefficients(w, h, sigma_ratio, alpha_s, sigma_s, eta)
    x_new = _combine(list(zip(coefs, [x, *x0s])))
    if eta > 0 and z is not None:
        x_new = x_new + noise * z
    return x_new
