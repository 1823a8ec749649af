"""Linear SDEs dx = f(t) x dt + g(t) dW, described entirely by the schedules alpha(t), sigma(t).

The perturbation kernel of every SDE here is p_t(x | x0) = N(alpha(t) x0, sigma(t)^2 I), and

    f(t)   = d log alpha / dt,
    g^2(t) = d sigma^2 / dt - 2 f(t) sigma^2(t),

so a new SDE needs only alpha and sigma. Subclasses override the underscore methods with closed
forms; the base class derives f, g^2 by autograd and inverts the log-SNR by bisection.
"""

from __future__ import annotations

import contextlib
import math
import threading
import warnings
from collections.abc import Callable, Iterator
from numbers import Real

import torch
from torch import Tensor

from .._utils import append_dims, check_finite_number
from ..random import RandomSource, randn

ScheduleFn = Callable[[Tensor], Tensor]

# Relative slack when checking t against [t_min, T]: grids built in float64 and cast to float32
# may land one ulp outside the interval.
_T_RTOL = 1e-6
# Set inside `times_checked()`: a solver that validated its whole time grid once tells
# check_t not to check every step again (a check costs as much as a small network's call).
_CHECKED = threading.local()


@contextlib.contextmanager
def times_checked() -> Iterator[None]:
    """Within this context `LinearSDE.check_t` trusts its argument: for a solver's step loop
    whose grid was checked once (`sample` checks it before integrating), so that per-step work
    is the step's own. Not for user code: times outside [t_min, T] then go unreported."""
    before = getattr(_CHECKED, "on", False)
    _CHECKED.on = True
    try:
        yield
    finally:
        _CHECKED.on = before


def _deprecated(old: str, new: str) -> None:
    warnings.warn(
        f"SDE.{old} is deprecated: it names lambda = log(alpha / sigma), which is half the "
        f"log-SNR; use SDE.{new} (the same values), or SDE.snr for alpha^2 / sigma^2",
        DeprecationWarning,
        stacklevel=3,
    )


class LinearSDE:
    """A linear (Gaussian-kernel) diffusion SDE defined by alpha(t) and sigma(t).

    Args:
        alpha: t -> alpha(t), elementwise and differentiable in torch, positive on [t_min, T].
        sigma: t -> sigma(t), elementwise and differentiable, positive on [t_min, T].
        t_min: smallest time used by samplers and likelihoods (> 0 when sigma(0) = 0).
        T: terminal time, where the prior N(0, prior_std^2 I) replaces p_T.
        prior_std: std of the prior; defaults to sigma(T).

    Rectified flow, for instance, is
    ``LinearSDE(lambda t: 1 - t, lambda t: t, t_min=1e-3, T=1 - 1e-3, prior_std=1.0)``.
    The log-SNR lambda(t) = log(alpha/sigma) must decrease strictly on [t_min, T].

    Example:
        Rectified flow from its two schedules; f and g^2 follow by autograd
        (here f = -1/(1 - t) and g^2 = 2t/(1 - t)):

        >>> import torch
        >>> from sdegen.sde import LinearSDE
        >>> sde = LinearSDE(lambda t: 1 - t, lambda t: t, t_min=1e-3, T=1 - 1e-3, prior_std=1.0)
        >>> t = torch.tensor([0.25, 0.5])
        >>> [round(g2, 4) for g2 in sde.g2(t).tolist()]
        [0.6667, 2.0]
        >>> mean, std = sde.marginal(torch.ones(2, 3), t)  # N(alpha x0, sigma^2 I)
        >>> mean.shape, std.tolist()
        (torch.Size([2, 3]), [0.25, 0.5])
        >>> torch.allclose(sde.t_of_half_log_snr(sde.half_log_snr(t)), t)
        True
    """

    def __init__(
        self,
        alpha: ScheduleFn | None = None,
        sigma: ScheduleFn | None = None,
        *,
        t_min: float,
        T: float,
        prior_std: float | None = None,
    ) -> None:
        self._alpha_fn = alpha
        self._sigma_fn = sigma
        if type(self)._alpha is LinearSDE._alpha and not callable(alpha):
            raise TypeError(f"alpha must be a callable t -> alpha(t), got {alpha!r}")
        if type(self)._sigma is LinearSDE._sigma and not callable(sigma):
            raise TypeError(f"sigma must be a callable t -> sigma(t), got {sigma!r}")
        self.t_min = check_finite_number("t_min", t_min, nonnegative=True)
        self.T = check_finite_number("T", T, positive=True)
        if self.t_min >= self.T:
            raise ValueError(f"t_min must be < T, got t_min={t_min!r}, T={T!r}")
        self._validate_schedule()
        if prior_std is None:
            prior_std = float(self._sigma(torch.tensor(self.T, dtype=torch.float64)))
        self.prior_std = check_finite_number("prior_std", prior_std, positive=True)

    # ---- closed forms (overridden by subclasses) -------------------------------------------

    def _alpha(self, t: Tensor) -> Tensor:
        return self._alpha_fn(t)  # type: ignore[misc]

    def _sigma(self, t: Tensor) -> Tensor:
        return self._sigma_fn(t)  # type: ignore[misc]

    def _f(self, t: Tensor) -> Tensor:
        return _time_derivative(lambda s: torch.log(self._alpha(s)), t)

    def _g2(self, t: Tensor) -> Tensor:
        dsigma2 = _time_derivative(lambda s: self._sigma(s) ** 2, t)
        return dsigma2 - 2 * self._f(t) * self._sigma(t) ** 2

    def _half_log_snr(self, t: Tensor) -> Tensor:
        return torch.log(self._alpha(t)) - torch.log(self._sigma(t))

    def _t_of_half_log_snr(self, lam: Tensor) -> Tensor:
        # lambda(t) decreases on [t_min, T] (checked at construction), so bisection converges;
        # 64 halvings reach float64 resolution on any interval.
        lam64 = lam.to(torch.float64)
        lo = torch.full_like(lam64, self.t_min)
        hi = torch.full_like(lam64, self.T)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            above = self._half_log_snr(mid) > lam64
            lo = torch.where(above, mid, lo)
            hi = torch.where(above, hi, mid)
        return (0.5 * (lo + hi)).to(lam.dtype)

    # ---- public protocol -------------------------------------------------------------------

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale alpha(t) of the kernel N(alpha x0, sigma^2 I); t of shape (B,) -> (B,)."""
        return self._alpha(self.check_t(t))

    def sigma(self, t: Tensor) -> Tensor:
        """Noise std sigma(t) of the kernel N(alpha x0, sigma^2 I); t of shape (B,) -> (B,)."""
        return self._sigma(self.check_t(t))

    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient f(t) = d log alpha/dt of dx = f x dt + g dW; shape (B,)."""
        return self._f(self.check_t(t))

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion g(t)^2 = d sigma^2/dt - 2 f sigma^2; shape (B,)."""
        return self._g2(self.check_t(t))

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Forward drift f(t) x; x of shape (B, *D), t of shape (B,) -> (B, *D)."""
        return append_dims(self.f(t), x.ndim) * x

    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient g(t) (a scalar per example); t of shape (B,) -> (B,)."""
        return self.g2(t).clamp_min(0).sqrt()

    def half_log_snr(self, t: Tensor) -> Tensor:
        """Half the log signal-to-noise ratio, lambda(t) = log(alpha(t) / sigma(t)), the time
        variable of DDIM and DPM-Solver (Lu et al. 2022 call it the half-logSNR); shape (B,).
        The log-SNR itself is 2 lambda(t) = log snr(t)."""
        return self._half_log_snr(self.check_t(t))

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio alpha(t)^2 / sigma(t)^2 = exp(2 lambda(t)); shape (B,)."""
        return torch.exp(2 * self.half_log_snr(t))

    def log_snr(self, t: Tensor) -> Tensor:
        """Deprecated: returns lambda(t) = log(alpha / sigma), which is half the log-SNR; call
        `half_log_snr` (the same values) or `snr`."""
        _deprecated("log_snr", "half_log_snr")
        return self.half_log_snr(t)

    def t_of_log_snr(self, lam: Tensor) -> Tensor:
        """Deprecated name of `t_of_half_log_snr` (lam is lambda = log(alpha / sigma))."""
        _deprecated("t_of_log_snr", "t_of_half_log_snr")
        return self.t_of_half_log_snr(lam)

    def log_snr_range(self) -> tuple[float, float]:
        """Deprecated name of `half_log_snr_range`."""
        _deprecated("log_snr_range", "half_log_snr_range")
        return self.half_log_snr_range()

    def t_of_half_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of half_log_snr: the t in [t_min, T] with lambda(t) = lam; shape preserved."""
        if not torch.is_tensor(lam) and (isinstance(lam, bool) or not isinstance(lam, Real)):
            raise TypeError(f"lam must be a real number or tensor, got {type(lam).__name__}")
        lam = torch.as_tensor(lam)
        if lam.is_complex() or lam.dtype == torch.bool:
            raise TypeError(f"lam must be a real tensor, got {lam.dtype}")
        if not bool(torch.isfinite(lam).all()):
            raise ValueError("lam must be finite, got a value that is NaN or infinite")
        lo, hi = self.half_log_snr_range()
        slack = 1e-6 * max(1.0, abs(lo), abs(hi))
        if bool(((lam < lo - slack) | (lam > hi + slack)).any()):
            raise ValueError(
                f"lam must lie in [half_log_snr(T), half_log_snr(t_min)] = [{lo:.6g}, {hi:.6g}], "
                f"got values in [{float(lam.min()):.6g}, {float(lam.max()):.6g}]"
            )
        return self._t_of_half_log_snr(lam).clamp(self.t_min, self.T)

    def half_log_snr_range(self) -> tuple[float, float]:
        """(lambda(T), lambda(t_min)): the log-SNR interval that samplers traverse."""
        ends = torch.tensor([self.T, self.t_min], dtype=torch.float64)
        lam = self._half_log_snr(ends)
        return float(lam[0]), float(lam[1])

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and std of the perturbation kernel p_t(x | x0) = N(alpha(t) x0, sigma(t)^2 I).

        Args:
            x0: clean data, shape (B, *D).
            t: times in [t_min, T], shape (B,).
        Returns:
            mean of shape (B, *D) and std of shape (B,).
        """
        _check_batch("x0", x0, t)
        return append_dims(self.alpha(t), x0.ndim) * x0, self.sigma(t)

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Draw x_t = alpha(t) x0 + sigma(t) noise; x0, noise of shape (B, *D), t of shape (B,)."""
        if noise.shape != x0.shape:
            raise ValueError(
                f"noise must have the shape of x0 {tuple(x0.shape)}, got {tuple(noise.shape)}"
            )
        mean, std = self.marginal(x0, t)
        return mean + append_dims(std, x0.ndim) * noise

    def transition(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Scale and std of the forward transition p(x_t | x_s) = N(a x_s, std^2 I), s <= t.

        a = alpha(t)/alpha(s) and std^2 = sigma(t)^2 - a^2 sigma(s)^2 (both of shape (B,)).
        DDPM's beta_t is 1 - a^2 for adjacent steps of the VP SDE.
        """
        a = self.alpha(t) / self.alpha(s)
        var = self.sigma(t) ** 2 - (a * self.sigma(s)) ** 2
        return a, var.clamp_min(0).sqrt()

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: RandomSource = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """Sample the prior N(0, prior_std^2 I) of shape `shape` = (B, *D), from `generator` (a
        torch.Generator, or a PerExampleGenerator of B seeds: row i from seed i)."""
        if not isinstance(shape, (tuple, list, torch.Size)) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape
        ):
            raise ValueError(f"shape must be a tuple of integers >= 0, got {shape!r}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
        z = randn(shape, generator, dtype=dtype, device=device)
        return self.prior_std * z

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I) in nats for z of shape (B, *D); shape (B,)."""
        d = math.prod(z.shape[1:])
        quad = (z**2).reshape(z.shape[0], d).sum(dim=1) / self.prior_std**2
        return -0.5 * quad - d * (math.log(self.prior_std) + 0.5 * math.log(2 * math.pi))

    def check_t(self, t: Tensor) -> Tensor:
        """Return t unchanged, or raise ValueError if it is NaN or outside [t_min, T]; inside
        `times_checked()` (a solver's checked grid) t is returned as it is."""
        if getattr(_CHECKED, "on", False):
            return t
        if not torch.is_tensor(t):
            raise TypeError(f"t must be a torch.Tensor, got {type(t).__name__}")
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"t must be a real tensor, got {t.dtype}")
        if t.requires_grad or t.numel() == 0:
            # Values are checked on the detached copy; autograd callers (Fokker-Planck, training)
            # still get the error.
            tv = t.detach()
        else:
            tv = t
        lo = self.t_min * (1 - _T_RTOL) - 1e-12
        hi = self.T * (1 + _T_RTOL)
        bad = torch.isnan(tv) | (tv < lo) | (tv > hi)
        if tv.device.type != "cpu":
            # On an accelerator, bool() would wait for the device at every solver step; the
            # assertion runs on the device instead and fails the next synchronising call.
            torch._assert_async(
                ~bad.any(), f"t must lie in [t_min, T] = [{self.t_min:g}, {self.T:g}]"
            )
            return t
        if bool(bad.any()):
            v = tv[bad].flatten()[0].item()
            raise ValueError(f"t must lie in [t_min, T] = [{self.t_min:g}, {self.T:g}], got {v!r}")
        return t

    def _validate_schedule(self) -> None:
        """Check alpha, sigma > 0 and a strictly decreasing log-SNR on a grid over [t_min, T]."""
        ts = torch.linspace(self.t_min, self.T, 257, dtype=torch.float64)
        a, s = self._alpha(ts), self._sigma(ts)
        for name, v in (("alpha", a), ("sigma", s)):
            if not torch.is_tensor(v):
                raise TypeError(
                    f"{name}(t) must return a tensor of t's shape, written with torch ops "
                    f"(torch.ones_like(t) for a constant), got {type(v).__name__}"
                )
            if v.shape != ts.shape:
                raise ValueError(
                    f"{name}(t) must be elementwise: shape {tuple(ts.shape)} in, "
                    f"{tuple(v.shape)} out"
                )
            if not bool(torch.isfinite(v).all()) or bool((v <= 0).any()):
                i = int(torch.nonzero(~(torch.isfinite(v) & (v > 0)))[0])
                raise ValueError(
                    f"{name}(t) must be finite and > 0 on [t_min, T]; {name}({float(ts[i]):g}) = "
                    f"{float(v[i]):g} (choose t_min/T inside the support)"
                )
        lam = torch.log(a) - torch.log(s)
        if not bool((lam[1:] < lam[:-1]).all()):
            raise ValueError("log-SNR log(alpha/sigma) must decrease strictly on [t_min, T]")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min:g}, T={self.T:g})"


def _time_derivative(fn: ScheduleFn, t: Tensor) -> Tensor:
    """Elementwise d fn(t)/dt by autograd (fn acts elementwise, so grad of the sum is exact)."""
    with torch.enable_grad():
        tt = t.detach().requires_grad_(True)
        y = fn(tt)
        if not y.requires_grad:  # a constant schedule
            return torch.zeros_like(t)
        (d,) = torch.autograd.grad(y.sum(), tt, create_graph=t.requires_grad)
    return d


def _check_batch(name: str, x: Tensor, t: Tensor) -> None:
    if t.ndim != 1 or x.ndim < 1 or t.shape[0] != x.shape[0]:
        raise ValueError(
            f"t must have shape (batch,) matching {name} of shape {tuple(x.shape)}, "
            f"got {tuple(t.shape)}"
        )
