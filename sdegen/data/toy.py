"""The classic 2-D toy densities of the FFJORD / RealNVP papers, as seeded torch samplers.

Shapes and scales follow the well-known FFJORD definitions (Grathwohl et al. 2019), everything
roughly inside [-4, 4]^2. Every sampler draws only from torch's RNG through `generator`, so one
seed gives the same samples on every run, and the mixture components are drawn at random per
sample (not in fixed proportions), so each sample is an exact i.i.d. draw from the density:

    8gaussians    equal mixture of 8 isotropic Gaussians, centres on the circle of radius 2*sqrt(2),
                  std sqrt(2)/4                                       (closed-form log_prob)
    checkerboard  uniform on the 8 black 2x2 squares of [-4, 4]^2       (closed-form log_prob)
    circles       equal mixture of circles of radius 3 and 1.5, uniform angle, Gaussian noise
                  with std 0.24 (sklearn make_circles(factor=0.5, noise=0.08) times 3)
                                                                      (closed-form log_prob)
    rings         equal mixture of circles of radius 3, 2.25, 1.5, 0.75, uniform angle, noise
                  std 0.08                                            (closed-form log_prob)
    moons         two interleaved half circles (make_moons, noise 0.1) times 2, shifted
                                                      (log_prob by quadrature over the arcs)
    swissroll     (t cos t, t sin t) + N(0, I), t ~ U(1.5 pi, 4.5 pi), divided by 5
    pinwheel      5 arms: radial N(1, 0.3^2), tangential N(0, 0.1^2), bent by 0.25 e^radial, x2
    2spirals      two opposite spirals of 1.5 turns, uniform jitter, N(0, 0.1^2) noise

A noisy circle has density (1 / 2 pi s^2) exp(-(r^2 + R^2) / 2 s^2) I0(r R / s^2), which is why
circles and rings have closed forms. moons is a uniform angle on two half circles convolved with
N(0, 0.2^2 I), a 1-D integral over the angle that `toy_log_prob` takes by composite
Gauss-Legendre quadrature (error below 1e-4 nats); swissroll, pinwheel and 2spirals have no
density here.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .._utils import check_choice, check_int

__all__ = ["TOY_DATASETS", "TOY_LOG_PROB_DATASETS", "toy_sample", "toy_log_prob"]

TOY_DATASETS: tuple[str, ...] = (
    "8gaussians",
    "checkerboard",
    "moons",
    "swissroll",
    "pinwheel",
    "2spirals",
    "circles",
    "rings",
)
"""Names accepted by `toy_sample`."""

TOY_LOG_PROB_DATASETS: tuple[str, ...] = ("8gaussians", "checkerboard", "circles", "rings", "moons")
"""Names whose density `toy_log_prob` evaluates exactly (moons by quadrature, to 1e-4 nats)."""

_F64 = torch.float64

# 8gaussians: centres at angles k pi / 4 on a circle of radius 4 / sqrt(2), std 0.5 / sqrt(2).
_EIGHT_RADIUS = 2.0 * math.sqrt(2.0)
_EIGHT_STD = math.sqrt(2.0) / 4.0
# circles: make_circles(factor=0.5, noise=0.08) scaled by 3; rings: four radii, noise 0.08.
_CIRCLES = ((3.0, 1.5), 0.24)
_RINGS = ((3.0, 2.25, 1.5, 0.75), 0.08)


def _eight_centres() -> Tensor:
    """Centres (8, 2) of the 8gaussians mixture, float64."""
    angles = torch.arange(8, dtype=_F64) * (math.pi / 4)
    return _EIGHT_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def _randn(n: int, g: torch.Generator | None, *cols: int) -> Tensor:
    return torch.randn(n, *cols, generator=g, dtype=_F64)


def _rand(n: int, g: torch.Generator | None, *cols: int) -> Tensor:
    return torch.rand(n, *cols, generator=g, dtype=_F64)


def _sample_8gaussians(n: int, g: torch.Generator | None) -> Tensor:
    idx = torch.randint(0, 8, (n,), generator=g)
    return _eight_centres()[idx] + _EIGHT_STD * _randn(n, g, 2)


def _sample_checkerboard(n: int, g: torch.Generator | None) -> Tensor:
    # Unit squares of [-2, 2]^2 with (column + row) even are black; pick a column uniformly,
    # then one of its two black rows, then a uniform point in the square; scale by 2.
    x1 = 4.0 * _rand(n, g) - 2.0
    parity = torch.remainder(torch.floor(x1), 2.0)
    row = 2.0 * torch.randint(0, 2, (n,), generator=g).to(_F64) - 2.0 + parity
    x2 = row + _rand(n, g)
    return 2.0 * torch.stack([x1, x2], dim=1)


def _sample_noisy_circles(
    n: int, g: torch.Generator | None, radii: tuple[float, ...], std: float
) -> Tensor:
    idx = torch.randint(0, len(radii), (n,), generator=g)
    r = torch.tensor(radii, dtype=_F64)[idx]
    theta = 2.0 * math.pi * _rand(n, g)
    circle = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    return circle + std * _randn(n, g, 2)


def _sample_moons(n: int, g: torch.Generator | None) -> Tensor:
    upper = torch.randint(0, 2, (n,), generator=g).to(torch.bool)
    theta = math.pi * _rand(n, g)
    c, s = torch.cos(theta), torch.sin(theta)
    x = torch.where(upper, c, 1.0 - c)
    y = torch.where(upper, s, 0.5 - s)
    pts = torch.stack([x, y], dim=1) + 0.1 * _randn(n, g, 2)
    return 2.0 * pts + torch.tensor([-1.0, -0.2], dtype=_F64)


def _sample_swissroll(n: int, g: torch.Generator | None) -> Tensor:
    t = 1.5 * math.pi * (1.0 + 2.0 * _rand(n, g))
    pts = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) + _randn(n, g, 2)
    return pts / 5.0


def _sample_pinwheel(n: int, g: torch.Generator | None) -> Tensor:
    arms, rate = 5, 0.25
    arm = torch.randint(0, arms, (n,), generator=g).to(_F64)
    feats = _randn(n, g, 2) * torch.tensor([0.3, 0.1], dtype=_F64)
    feats[:, 0] += 1.0
    angle = arm * (2.0 * math.pi / arms) + rate * torch.exp(feats[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    # Row vector times the rotation matrix [[c, -s], [s, c]].
    x = feats[:, 0] * c + feats[:, 1] * s
    y = -feats[:, 0] * s + feats[:, 1] * c
    return 2.0 * torch.stack([x, y], dim=1)


def _sample_2spirals(n: int, g: torch.Generator | None) -> Tensor:
    t = torch.sqrt(_rand(n, g)) * (3.0 * math.pi)  # 540 degrees
    jitter = 0.5 * _rand(n, g, 2)
    arm = torch.stack([-torch.cos(t) * t, torch.sin(t) * t], dim=1) + jitter
    sign = 2.0 * torch.randint(0, 2, (n, 1), generator=g).to(_F64) - 1.0
    return sign * arm / 3.0 + 0.1 * _randn(n, g, 2)


_SAMPLERS = {
    "8gaussians": _sample_8gaussians,
    "checkerboard": _sample_checkerboard,
    "moons": _sample_moons,
    "swissroll": _sample_swissroll,
    "pinwheel": _sample_pinwheel,
    "2spirals": _sample_2spirals,
    "circles": lambda n, g: _sample_noisy_circles(n, g, *_CIRCLES),
    "rings": lambda n, g: _sample_noisy_circles(n, g, *_RINGS),
}


def toy_sample(
    name: str,
    n: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """n i.i.d. samples (n, 2) of the toy density `name` (one of `TOY_DATASETS`).

    Randomness comes only from torch's RNG: `generator` when given, else torch's global RNG.
    Samples are drawn in float64 and rounded once to `dtype`, so a seed gives the same points
    (up to rounding) whatever the dtype.
    """
    check_choice("toy dataset", name, TOY_DATASETS)
    n = check_int("n (the number of samples)", n)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    return _SAMPLERS[name](n, generator).to(dtype)


def _log_prob_8gaussians(x: Tensor) -> Tensor:
    centres = _eight_centres().to(x.dtype)
    sq = ((x[:, None, :] - centres) ** 2).sum(-1)  # (B, 8)
    log_norm = -math.log(2.0 * math.pi * _EIGHT_STD**2) - math.log(8.0)
    return torch.logsumexp(-sq / (2.0 * _EIGHT_STD**2), dim=1) + log_norm


def _log_prob_checkerboard(x: Tensor) -> Tensor:
    # Density 1/32 on the closed black squares (the boundary has measure zero; closing it keeps
    # samples rounded onto an edge, e.g. to float32, inside the support).
    s = x / 2.0
    inside = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    cols = (torch.floor(s[:, 0]), torch.ceil(s[:, 0]) - 1.0)
    rows = (torch.floor(s[:, 1]), torch.ceil(s[:, 1]) - 1.0)
    for i in cols:
        for j in rows:
            valid = (i >= -2) & (i <= 1) & (j >= -2) & (j <= 1)
            inside |= valid & (torch.remainder(i + j, 2.0) == 0)
    out = torch.full((x.shape[0],), -math.log(32.0), dtype=x.dtype, device=x.device)
    return out.masked_fill(~inside, -math.inf)


def _log_prob_noisy_circles(x: Tensor, radii: tuple[float, ...], std: float) -> Tensor:
    # log N-convolved circle: -log(2 pi s^2) - (r - R)^2 / 2s^2 + log i0e(r R / s^2).
    r = torch.linalg.vector_norm(x, dim=1, keepdim=True)  # (B, 1)
    big_r = torch.tensor(radii, dtype=x.dtype, device=x.device)  # (K,)
    var = std**2
    comp = (
        -math.log(2.0 * math.pi * var)
        - (r - big_r) ** 2 / (2.0 * var)
        + torch.log(torch.special.i0e(r * big_r / var))
    )
    return torch.logsumexp(comp, dim=1) - math.log(len(radii))


def _log_prob_moons(x: Tensor, panels: int = 32, order: int = 8) -> Tensor:
    # p(x) = 1/2 sum_arcs (1/pi) int_0^pi N(x; 2 c(theta) + shift, 0.2^2 I) dtheta by composite
    # Gauss-Legendre in theta: `panels` panels of pi / panels (0.1 rad: the integrand's width in
    # theta is about 0.2 / 2 rad on the arcs and no narrower within [-6, 6]^2) x `order` nodes.
    # Against a 32768-node midpoint rule: 2e-7 nats on samples, 5e-5 out to the corners.
    u, w = (torch.from_numpy(a).to(x.dtype) for a in np.polynomial.legendre.leggauss(order))
    h = math.pi / panels
    theta = ((torch.arange(panels, dtype=x.dtype)[:, None] + (u + 1.0) / 2.0) * h).reshape(-1)
    log_w = torch.log(w / 2.0 * h).repeat(panels)  # weights of int_0^pi, summing to pi
    c, s = torch.cos(theta), torch.sin(theta)
    arcs = torch.cat([torch.stack([c, s], 1), torch.stack([1.0 - c, 0.5 - s], 1)])
    centres = (2.0 * arcs + torch.tensor([-1.0, -0.2], dtype=x.dtype)).to(x.device)
    log_w = (torch.cat([log_w, log_w]) - math.log(2.0 * math.pi)).to(x.device)  # 1/2 * 1/pi
    var = 0.2**2
    out = []
    for xb in x.split(4096):  # (b, 2 panels order) at a time; |x - c|^2 by one product
        sq = xb.pow(2).sum(1, keepdim=True) + centres.pow(2).sum(1) - 2.0 * xb @ centres.T
        out.append(torch.logsumexp(-sq / (2.0 * var) + log_w, dim=1))
    return torch.cat(out) - math.log(2.0 * math.pi * var) if out else x.new_zeros(0)


_LOG_PROBS = {
    "8gaussians": _log_prob_8gaussians,
    "checkerboard": _log_prob_checkerboard,
    "circles": lambda x: _log_prob_noisy_circles(x, *_CIRCLES),
    "rings": lambda x: _log_prob_noisy_circles(x, *_RINGS),
    "moons": _log_prob_moons,
}


def toy_log_prob(name: str, x: Tensor) -> Tensor:
    """Exact log-density in nats of the toy density `name` at x (B, 2) -> (B,).

    Available for the names in `TOY_LOG_PROB_DATASETS` ("8gaussians", "checkerboard",
    "circles", "rings", and "moons" by quadrature over the angle, error < 1e-4 nats on the
    support); -inf off the support (checkerboard's white squares and outside [-4, 4]^2).
    Other names raise ValueError. Computed in x's dtype (integers -> default dtype).
    """
    check_choice("toy dataset", name, TOY_DATASETS)
    if name not in _LOG_PROBS:
        raise ValueError(
            f"toy dataset {name!r} has no closed-form density; "
            f"ones that do: {', '.join(TOY_LOG_PROB_DATASETS)}"
        )
    if not torch.is_tensor(x):
        raise TypeError(f"x must be a torch.Tensor of shape (batch, 2), got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x must have shape (batch, 2), got {tuple(x.shape)}")
    if not x.is_floating_point():
        x = x.to(torch.get_default_dtype())
    if bool(torch.isnan(x).any()):
        raise ValueError("x holds NaN; toy_log_prob needs points (inf gives -inf)")
    return _LOG_PROBS[name](x)
