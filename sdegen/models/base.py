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

On the discrete grid of a `from_betas` SDE a model may also predict "mu": DDPM's mean
mu_theta(x_t, t) of the previous step x_{t-1} (Ho et al. 2020, eq. 11), the posterior mean
c0 x0 + ct x of `sdegen.sde.previous_step_coefficients`; so x0 = (mu - ct x) / c0.

"edm" is EDM's preconditioning (Karras et al. 2022, Table 1) in any linear SDE: with the noise
level s = sigma / alpha of x / alpha = x0 + s eps and the data std sigma_data = sd, the network
output F gives x0 = c_skip x / alpha + c_out F, c_skip = sd^2 / (s^2 + sd^2),
c_out = s sd / sqrt(s^2 + sd^2) (`edm_scalings`); its target (x0 - c_skip x / alpha) / c_out and
its input c_in x / alpha, c_in = 1 / sqrt(s^2 + sd^2), have unit variance for data of std sd.
With sd = 1 it is "v" negated.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import torch
from torch import Tensor, nn

from .._utils import append_dims, batch_times, check_choice
from ..protocols import SDE
from ..sde.discrete import grid_size, previous_step_coefficients

PARAMETRIZATIONS = ("eps", "x0", "v", "score")
# Parametrizations that need the SDE's discrete grid (VPSDE.from_betas) besides alpha and sigma.
GRID_PARAMETRIZATIONS = ("mu",)
# Parametrizations that need the data std sigma_data besides alpha and sigma.
PRECONDITIONED_PARAMETRIZATIONS = ("edm",)
# Everything a ScoreModel may predict.
MODEL_PARAMETRIZATIONS = PARAMETRIZATIONS + GRID_PARAMETRIZATIONS + PRECONDITIONED_PARAMETRIZATIONS

# Dtypes the SDE arithmetic runs in; half-precision inputs are computed in float32.
WORK_DTYPES = (torch.float32, torch.float64)


def as_float64(name: str, value) -> Tensor:
    """`value` as a float64 tensor: a tensor, a NumPy array, a number, or (nested) lists and
    tuples of these, e.g. a list of (D, D) covariance tensors, which are stacked.

    Raises:
        TypeError naming `name` for anything else (strings, None, complex values, objects).
        ValueError naming `name` when nested entries have different shapes.
    """
    if torch.is_tensor(value):
        if value.is_complex():
            raise TypeError(f"{name} must be real, got a tensor of dtype {value.dtype}")
        return value.to(torch.float64)
    if isinstance(value, (list, tuple)) and any(
        torch.is_tensor(v) or isinstance(v, (list, tuple)) or hasattr(v, "__array__") for v in value
    ):
        parts = [as_float64(name, v) for v in value]
        shapes = sorted({tuple(p.shape) for p in parts})
        if len(shapes) > 1:
            raise ValueError(
                f"{name} must be a rectangular array; its entries have shapes "
                f"{', '.join(map(str, shapes))}"
            )
        return torch.stack(parts)
    if isinstance(value, (str, bytes)) or value is None or isinstance(value, complex):
        raise TypeError(
            f"{name} must be a tensor, an array, a number or nested lists of them, got {value!r}"
        )
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"{name} must be a tensor, an array, a number or nested lists of them, got "
            f"{type(value).__name__} ({err})"
        ) from None


def check_event_shape(event_shape) -> tuple[int, ...]:
    """`event_shape` as a tuple of integers >= 1, else ValueError naming it."""
    try:
        shape = tuple(event_shape)
    except TypeError:
        shape = None
    if shape is None or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in shape):
        raise ValueError(f"event_shape must be a tuple of integers >= 1, got {event_shape!r}")
    return shape


def check_sde(sde: SDE, needs: tuple[str, ...] = ("alpha", "sigma")) -> SDE:
    """`sde` when it has every attribute in `needs` (an SDE object), else TypeError."""
    missing = [m for m in needs if not hasattr(sde, m)]
    if missing or not all(callable(getattr(sde, m)) for m in ("alpha", "sigma") if m in needs):
        got = f"{type(sde).__name__} {sde!r}" if isinstance(sde, str) else type(sde).__name__
        what = ", ".join(f"{m}(t)" if m in ("alpha", "sigma") else m for m in needs)
        raise TypeError(
            f"sde must be an SDE object with {what}, got {got}; build one with "
            "sdegen.sde.VPSDE() (or VESDE(), SubVPSDE(), EDMSDE(), LinearSDE())"
        )
    return sde


def model_sde(model) -> SDE | None:
    """The SDE `model` was built for: its `sde`, looked up through wrappers that hold the model
    they wrap as `.model` (guidance, counting, observation); None when there is none."""
    found = (layer.sde for layer in wrapped(model) if getattr(layer, "sde", None) is not None)
    return next(found, None)


def check_model_sde(model, sde: SDE) -> None:
    """Raise ValueError when `model` was built for an SDE (`model_sde`) whose alpha(t) and
    sigma(t) differ from `sde`'s on the times both cover (9 points, relative 1e-6): the model
    would read x and t by one SDE while the solver moves them by another, which gives wrong
    samples and densities without any error. The same SDE object, or an equal one built anew,
    passes; so does a model that names no SDE."""
    own = model_sde(model)
    if own is None or own is sde or not all(hasattr(own, m) for m in ("alpha", "sigma")):
        return
    try:
        lo = max(float(own.t_min), float(sde.t_min))
        hi = min(float(own.T), float(sde.T))
    except (AttributeError, TypeError, ValueError):
        return
    if not lo < hi:
        raise ValueError(
            f"the model was built for {type(own).__name__} on t in [{own.t_min:g}, {own.T:g}], "
            f"but the sde given, {type(sde).__name__}, covers [{sde.t_min:g}, {sde.T:g}]: pass "
            f"the model's own SDE (model.sde)"
        )
    t = torch.linspace(lo, hi, 9, dtype=torch.float64)
    with torch.no_grad():
        mine = torch.stack([own.alpha(t), own.sigma(t)]).to(torch.float64)
        given = torch.stack([sde.alpha(t), sde.sigma(t)]).to(torch.float64)
    close = torch.isclose(mine, given, rtol=1e-6, atol=1e-12).all(0)
    if not bool(close.all()):
        i = int((~close).nonzero()[0])
        raise ValueError(
            f"the model was built for {type(own).__name__}, but the sde given is "
            f"{type(sde).__name__} with another alpha(t), sigma(t) (at t = {float(t[i]):g}, "
            f"alpha, sigma = {float(mine[0, i]):.6g}, {float(mine[1, i]):.6g} for the model's "
            f"against {float(given[0, i]):.6g}, {float(given[1, i]):.6g}): pass the model's own "
            f"SDE (model.sde)"
        )


def check_network(name: str, net) -> nn.Module:
    """`net` when it is a torch.nn.Module (callable as net(x_in, c_noise)), else TypeError."""
    if not isinstance(net, nn.Module):
        raise TypeError(
            f"{name} must be a torch.nn.Module called as {name}(x_in, c_noise), got "
            f"{type(net).__name__}"
            + ("; wrap a function in an nn.Module subclass" if callable(net) else "")
        )
    return net


def check_model_input(x, t) -> None:
    """Raise unless x is a floating-point tensor of shape (batch, *event_shape), batch >= 0, and
    t a real number or a real tensor (its shape is checked when it is broadcast to the batch).
    Dtypes and shapes only: no host synchronisation."""
    if not torch.is_tensor(x) or x.ndim < 2:
        raise ValueError(
            f"x must be a tensor of shape (batch, *event_shape), got "
            f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}"
        )
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    batch = x.shape[0]
    if torch.is_tensor(t):
        if t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"t must be a real tensor of shape () or ({batch},), got {t.dtype}")
    elif isinstance(t, bool) or not isinstance(t, numbers.Real):
        raise TypeError(
            f"t must be a real number or a tensor of shape () or ({batch},), got {type(t).__name__}"
        )


def check_parametrization(kind: str, sde: SDE) -> str:
    """`kind` when it is one of MODEL_PARAMETRIZATIONS that `sde` supports ("mu" needs a
    from_betas SDE), else ValueError naming it."""
    check_choice("parametrization", kind, MODEL_PARAMETRIZATIONS)
    if kind in GRID_PARAMETRIZATIONS:
        try:
            grid_size(sde)
        except ValueError:
            raise ValueError(
                f"parametrization {kind!r} (DDPM's mean of the previous step) needs an SDE on a "
                f"discrete grid, built with VPSDE.from_betas(betas), got {sde!r}"
            ) from None
    return kind


def _positive(value) -> float | None:
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        if 0 < float(value) < float("inf"):
            return float(value)
    return None


def data_std(model) -> float:
    """The data scale of `model`, the RMS standard deviation sqrt(tr Cov / D) of the data it
    generates: its `data_std` (exact for the analytic mixtures; measured on the training split
    for a run's model, `assembly.load_run`; settable on any ParametrizedModel), else its
    `sigma_data` (the data std a ScoreModel's input scaling was built with), looked up through
    wrappers that hold the model they wrap as `.model` (guidance, counting) or the network they
    call as `.net` (the adapters: a k-diffusion `Denoiser` or EDM's `EDMPrecond` carries the
    `sigma_data` it was trained with); 1 (unit-variance data, the convention of VP's input
    scaling) when none is a positive finite number. Samplers place their default grid by it
    (`solvers.schedules.log_snr_jump`)."""
    for layer in wrapped(model, nets=True):
        own = getattr(layer, "data_std", None)
        if own is not None and _positive(own) is None:
            raise ValueError(
                f"{type(layer).__name__}.data_std must be a positive finite number or None, "
                f"got {own!r}"
            )
        for name in ("data_std", "sigma_data"):
            value = _positive(getattr(layer, name, None))
            if value is not None:
                return value
    return 1.0


def wrapped(model, *, nets: bool = False) -> Iterator:
    """`model`, then what it wraps, outermost first: the model a wrapper holds as `.model`
    (guidance, counting, observation) and, with `nets`, else the network an adapter calls as
    `.net`; at most 32 layers (a chain, never a cycle in practice)."""
    for _ in range(32):
        if model is None:
            return
        yield model
        inner = getattr(model, "model", None)
        model = getattr(model, "net", None) if inner is None and nets else inner


def edm_scalings(
    alpha: Tensor, sigma: Tensor, sigma_data: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """EDM's preconditioning (Karras et al. 2022, Table 1) at alpha, sigma of shape (B,), in the
    variables of x / alpha (noise level s = sigma / alpha, the EDM/VE sigma):
    c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2),
    with sd = sigma_data; returns (s, c_skip, c_out, c_in), each (B,).

    Example:
        >>> import torch
        >>> s, c_skip, c_out, c_in = edm_scalings(torch.ones(1), torch.ones(1), 1.0)
        >>> [round(float(c), 4) for c in (s, c_skip, c_out, c_in)]
        [1.0, 0.5, 0.7071, 0.7071]
    """
    s = sigma / alpha
    n2 = s**2 + sigma_data**2
    return s, sigma_data**2 / n2, s * sigma_data / n2.sqrt(), n2.rsqrt()


def _sigma_data(kind: str, sigma_data: float | None) -> float:
    if sigma_data is None:
        raise ValueError(f"parametrization {kind!r} (EDM's preconditioning) needs sigma_data=")
    return sigma_data


def _grid_coefficients(kind: str, sde: SDE | None, t: Tensor | None, x: Tensor):
    if sde is None or t is None:
        raise ValueError(
            f"parametrization {kind!r} needs sde= and t= (a from_betas SDE and the times (B,))"
        )
    c0, ct, _ = previous_step_coefficients(sde, t)
    return append_dims(c0.to(x.dtype), x.ndim), append_dims(ct.to(x.dtype), x.ndim)


def to_x0_eps(
    kind: str,
    out: Tensor,
    x: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    *,
    sde: SDE | None = None,
    t: Tensor | None = None,
    sigma_data: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Convert a prediction `out` in parametrization `kind` to (x0, eps).

    Args:
        kind: one of "eps", "x0", "v", "score", "mu" (with sde and t) or "edm" (with sigma_data).
        out, x: shape (B, *D).
        alpha, sigma: shape (B,).
        sde, t: the from_betas SDE and the times (B,); needed by "mu" only.
        sigma_data: the data std of EDM's preconditioning; needed by "edm" only.
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
    if kind == "mu":
        c0, ct = _grid_coefficients(kind, sde, t, x)
        x0 = (out - ct * x) / c0
        return x0, (x - a * x0) / s
    if kind == "edm":
        _, c_skip, c_out, _ = edm_scalings(alpha, sigma, _sigma_data(kind, sigma_data))
        x0 = append_dims(c_skip, x.ndim) * x / a + append_dims(c_out, x.ndim) * out
        return x0, (x - a * x0) / s
    check_choice("parametrization", kind, MODEL_PARAMETRIZATIONS)
    raise AssertionError("unreachable")


def from_x0_eps(
    kind: str,
    x0: Tensor,
    eps: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    *,
    sde: SDE | None = None,
    t: Tensor | None = None,
    sigma_data: float | None = None,
) -> Tensor:
    """The training target for parametrization `kind` given the true (x0, eps); shape (B, *D).
    sde and t (B,) are needed by "mu" only, sigma_data by "edm" only."""
    a, s = append_dims(alpha, x0.ndim), append_dims(sigma, x0.ndim)

    def mu() -> Tensor:
        c0, ct = _grid_coefficients(kind, sde, t, x0)
        return c0 * x0 + ct * (a * x0 + s * eps)

    def edm() -> Tensor:  # (x0 - c_skip x / alpha) / c_out
        ve, c_skip, c_out, _ = edm_scalings(alpha, sigma, _sigma_data(kind, sigma_data))
        ve, c_skip, c_out = (append_dims(c, x0.ndim) for c in (ve, c_skip, c_out))
        return (x0 - c_skip * (x0 + ve * eps)) / c_out

    targets = {
        "eps": lambda: eps,
        "x0": lambda: x0,
        "v": lambda: (a * eps - s * x0) / (a**2 + s**2).sqrt(),
        "score": lambda: -eps / s,
        "mu": mu,
        "edm": edm,
    }
    return targets[check_choice("parametrization", kind, MODEL_PARAMETRIZATIONS)]()


class ParametrizedModel(torch.nn.Module):
    """Base for models that predict (x0, eps) at (x, t); derives score, denoise and eps.

    Subclasses implement `x0_eps(x, t, y=None)`, y being optional class labels of shape (B,)
    (`sdegen.models.labels`); `num_classes` is None for an unconditional model. Each public call
    is one model evaluation.

    score, denoise and eps take x of any floating dtype and return x's dtype. The SDE arithmetic
    runs in x's dtype for float32 and float64, in float32 for half-precision x; an empty batch
    (B = 0) gives an empty result. Integer, boolean or complex x is refused with a TypeError.
    """

    # A plain attribute, so a subclass may set it in __init__; ScoreModel and the analytic
    # scores derive it in a read-only property instead.
    num_classes: int | None = None
    # The RMS std of the data the model generates, when known (`data_std(model)`, which the
    # default sampling grid is placed by): a run sets it from its training split; the analytic
    # mixtures compute it exactly.
    data_std: float | None = None

    def __init__(self, sde: SDE) -> None:
        super().__init__()
        self.sde = check_sde(sde)

    def x0_eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def x0_only(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The x0 prediction alone, x (B, *D) and t (B,) in the working dtype: `denoise`'s path.
        By default x0_eps(x, t, y)[0]; a model whose network predicts x0 overrides it to skip
        computing eps (two broadcasts and three tensor operations per call, which cost as much
        as a small network; the values are the same)."""
        return (self.x0_eps(x, t) if y is None else self.x0_eps(x, t, y))[0]

    def _inputs(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """x in the working dtype (x's, or float32 for half-precision x) and t as (B,) in it."""
        check_model_input(x, t)
        if x.dtype not in WORK_DTYPES:
            x = x.to(torch.float32)
        return x, batch_times(t, x.shape[0], x)

    def _call(
        self, x: Tensor, t: Tensor | float, y: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(x0, eps, t) in the working dtype (x's, or float32 for half-precision x)."""
        x, t = self._inputs(x, t)
        x0, eps = self.x0_eps(x, t) if y is None else self.x0_eps(x, t, y)
        return x0, eps, t

    def score(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """Score grad_x log p_t(x | y) = -eps / sigma(t); x (B, *D), t (B,), labels y (B,);
        in x's dtype."""
        _, eps, t = self._call(x, t, y)
        score = -eps / append_dims(self.sde.sigma(t), x.ndim)
        return score if score.dtype == x.dtype else score.to(x.dtype)

    def denoise(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """Estimate of E[x0 | x_t = x, y]; shape (B, *D), x's dtype."""
        xw, tw = self._inputs(x, t)
        x0 = self.x0_only(xw, tw) if y is None else self.x0_only(xw, tw, y)
        return x0 if x0.dtype == x.dtype else x0.to(x.dtype)

    def eps(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """Estimate of the noise E[eps | x_t = x, y]; shape (B, *D), x's dtype."""
        return self._call(x, t, y)[1].to(x.dtype)
