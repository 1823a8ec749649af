"""The one fixed-grid loop, as torchdiffeq's `FixedGridODESolver.integrate`: it owns the time
grid, the recording of states, the user's callback and the final denoising step; each method
writes only its step.

A fixed-grid method is a `GridMethod` subclass. It is built once per solve (options checked,
the grid's coefficients computed, history such as a multistep method's kept between steps) and
`step(i, x)` takes x from ts[i] to ts[i + 1], returning the new state and the x0 estimate the
step made at its start, which the callback receives as "denoised" (k-diffusion's convention).
Adaptive methods and the torchsde ones integrate with their own driver and report each state
to the same `Recorder`.

Per-step overhead (issue 13): a step's coefficients that depend on the grid alone are computed
once per solve, vectorised over the grid (`GridMethod.coefficients`), and reach the step as
0-dim CPU tensors in x's dtype (`scalars`); an x0 estimate that only the callback reads is
computed only when there is a callback (`Deferred`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .._utils import check_bool
from ..models.base import to_x0_eps
from ..random import RandomSource, randn
from ..sde.base import times_checked

if TYPE_CHECKING:
    from .methods import Method

# What a driver calls with each state it reaches (and its x0 estimate, where it has one).
Record = Callable[..., None] | None


def batch_t(t: float, x: Tensor) -> Tensor:
    """A grid time as a (B,) tensor in x's dtype and device."""
    return torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)


def randn_like(x: Tensor, generator: RandomSource) -> Tensor:
    """N(0, I) noise of x's shape, dtype and device, drawn from `generator` (a
    torch.Generator, or a PerExampleGenerator: row i from example i's own seed)."""
    return randn(x.shape, generator, dtype=x.dtype, device=x.device)


def _tweedie(sde, score: Tensor, x: Tensor, t: Tensor) -> Tensor:
    return to_x0_eps("score", score, x, sde.alpha(t), sde.sigma(t))[0]


class Deferred:
    """A step's x0 estimate, made only if read: `d()` computes it. A score-based step has the
    estimate only through a conversion (several tensor operations and SDE evaluations, as much
    as the step's own update) that nothing but the callback reads; the `Recorder` calls it only
    when there is a callback."""

    __slots__ = ("fn", "args")

    def __init__(self, fn: Callable[..., Tensor], *args) -> None:
        self.fn, self.args = fn, args

    def __call__(self) -> Tensor:
        return self.fn(*self.args)


def score_to_x0(sde, score: Tensor, x: Tensor, t: Tensor) -> Tensor:
    """Tweedie's x0 = (x + sigma^2 score) / alpha at time t (B,), for the callback; x, score
    (B, *D). `deferred_x0` makes it only if the callback reads it."""
    return _tweedie(sde, score, x, t)


def deferred_x0(sde, score: Tensor, x: Tensor, t: Tensor) -> Deferred:
    """`score_to_x0`, deferred: call the result for the (B, *D) estimate (`Deferred`)."""
    return Deferred(_tweedie, sde, score, x, t)


# What a step returns as its x0 estimate: a tensor (B, *D), one made on demand, or none.
X0 = Tensor | Deferred | None


def scalars(values: Tensor) -> list[Tensor]:
    """The entries of a 1-D CPU tensor as 0-dim tensors (views of it), for per-step
    coefficients: multiplying a state by a 0-dim CPU tensor in its dtype gives the bits of
    multiplying it by the same Python float, costs less (torch wraps a Python float into a new
    tensor at every operation), and works on any device without a transfer."""
    return list(values.unbind())


def float_rows(rows: list[list[float]], dtype: torch.dtype) -> list[list[Tensor]]:
    """Lists of Python floats as lists of 0-dim CPU tensors (`scalars`) for states of `dtype`,
    made in one conversion, one tensor per distinct value. A Python float multiplying a float32
    or float64 tensor is rounded to the tensor's dtype, and so is each float here: the products
    are the same to the bit. For half precision the floats are kept in float32 (the products
    then differ from a Python float's in rounding only)."""
    flat: list[float | str] = [v for r in rows for v in r]
    if 0.0 in flat:  # 0.0 == -0.0, but they multiply differently: key zeros by their text
        flat = [v if v else repr(v) for v in flat]
    index = {k: j for j, k in enumerate(dict.fromkeys(flat))}
    work = torch.promote_types(dtype, torch.float32)
    values = scalars(torch.tensor([float(k) for k in index], dtype=torch.float64).to(work))
    tensors = [values[index[k]] for k in flat]
    out, start = [], 0
    for r in rows:
        out.append(tensors[start : start + len(r)])
        start += len(r)
    return out


class GridMethod(ABC):
    """A method on a fixed grid ts (float64, decreasing, shape (n + 1,)): subclasses check their
    options in `__init__` and write `step`.

    Stochastic methods take `generator` and, where their last step would add noise,
    `add_noise_last`: True when a final denoising step follows (the noise is then denoised
    away), False to end on the mean (Song et al.'s convention without a denoising step).
    """

    def __init__(
        self, model, sde, ts: Tensor, *, generator=None, add_noise_last: bool = False
    ) -> None:
        self.model, self.sde, self.ts = model, sde, ts
        self.n = len(ts) - 1
        self.generator = generator
        self.add_noise_last = add_noise_last

    def adds_noise(self, i: int) -> bool:
        """Whether step i adds fresh noise: every step but an un-denoised last one."""
        return i < self.n - 1 or self.add_noise_last

    def coefficients(self, t: Tensor) -> Mapping[str, Tensor | list[list[float]]]:
        """The method's per-step coefficients on the grid t = ts in x's dtype (n + 1,), computed
        once per solve: 1-D tensors (vectorised over the grid) or, per step, lists of Python
        floats; `coefs` serves them. None by default."""
        return {}

    def coefs(self, x: Tensor) -> dict[str, list]:
        """`coefficients` on the grid in x's dtype, as 0-dim CPU tensors in x's dtype (a list per
        1-D tensor, `scalars`; a list of lists per list of float lists, `float_rows`), computed
        at the first step (again only if x's dtype changes). The grid is a CPU float64 tensor:
        nothing here reads from or waits for a device."""
        cache = getattr(self, "_coefs", None)
        if cache is None or cache[0] != x.dtype:
            values = self.coefficients(self.ts.to(x.dtype))
            tables = {
                k: scalars(v) if torch.is_tensor(v) else float_rows(v, x.dtype)
                for k, v in values.items()
            }
            cache = self._coefs = (x.dtype, tables)
        return cache[1]

    @abstractmethod
    def step(self, i: int, x: Tensor) -> tuple[Tensor, X0]:
        """x (B, *D) at ts[i + 1] from x at ts[i], and the step's x0 estimate at its start
        (a tensor, a `Deferred` one, or None)."""


class Recorder:
    """Where the loop and the drivers report each state: the trajectory, if kept, and the
    callback, called with {"i": step index, "t": time reached (None for adaptive steps, whose
    times the grid does not hold), "x": state, "denoised": x0 estimate or None}."""

    def __init__(
        self, x: Tensor, ts: Tensor | None, *, trajectory: bool, callback: Callable | None
    ) -> None:
        self.states: list[Tensor] | None = [x] if trajectory else None
        self.ts, self.callback, self.i = ts, callback, 0

    def __call__(self, x: Tensor, denoised: X0 = None) -> None:
        if self.states is not None:
            self.states.append(x)
        if self.callback is not None:
            t = None
            if self.ts is not None and self.i + 1 < len(self.ts):
                t = float(self.ts[self.i + 1])
            if isinstance(denoised, Deferred):
                denoised = denoised()
            self.callback({"i": self.i, "t": t, "x": x, "denoised": denoised})
        self.i += 1

    def final(self, x: Tensor) -> None:
        """The denoised output: kept in the trajectory, not a step, so no callback."""
        if self.states is not None:
            self.states.append(x)


def integrate_grid(method: GridMethod, x: Tensor, record: Record = None) -> Tensor:
    """The loop: every step of `method` from x at ts[0], each state reported to `record`. The
    grid was checked once (`sample`), so the SDE does not check its times at every step."""
    with times_checked():
        for i in range(method.n):
            x, denoised = method.step(i, x)
            if record is not None:
                record(x, denoised)
    return x


def solve(
    m: Method,
    model,
    sde,
    x: Tensor,
    ts: Tensor,
    *,
    generator: RandomSource = None,
    add_noise_last: bool = False,
    denoise_final: bool = False,
    record: Recorder | None = None,
    **options,
) -> Tensor:
    """Integrate x (B, *D) from ts[0] over the grid ts with the method `m` and `options` (its
    defaults fill the rest), then, if `denoise_final`, return x0 = E[x0 | x(ts[-1])] (one more
    evaluation: the jump from the grid's last time, t_min or above, to zero noise). No checks
    and no counting: that is `sample`'s work."""
    kwargs = {**m.options, **options}
    if "lower_order_final" in kwargs:
        # With denoise_final, the jump to zero noise is the lower-order final step (the
        # denoiser's output, first order), as in k-diffusion and diffusers; lowering the step
        # into the last level too wastes an evaluation's accuracy (Frechet distance x1.6 at NFE 5
        # on a 16-D mixture).
        lower = check_bool("lower_order_final", kwargs["lower_order_final"])
        kwargs["lower_order_final"] = lower and not denoise_final
    if m.stochastic:
        kwargs["generator"] = generator
    if m.last_step_noise:
        kwargs["add_noise_last"] = add_noise_last
    if m.step is not None:
        x = integrate_grid(m.step(model, sde, ts, **kwargs), x, record)
    elif m.driver is not None:  # a spec has one or the other
        x = m.driver(model, sde, x, ts, record=record, **kwargs)
    if denoise_final:
        # the grid's last time was checked in float64; in x's dtype it may round just below
        # t_min (bfloat16: 1e-3 -> 0.000999), as the steps' times do, so it is not checked again
        with times_checked():
            x = model.denoise(x, batch_t(float(ts[-1]), x))
        if record is not None:
            record.final(x)
    return x
