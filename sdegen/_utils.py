"""Small shared helpers: broadcasting, reductions and argument checks used by every layer."""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from typing import overload

import numpy as np
import torch
from torch import Tensor


def append_dims(v: Tensor, ndim: int) -> Tensor:
    """Append trailing singleton dims so a (B,) tensor broadcasts against ndim dims."""
    if v.ndim > ndim:
        raise ValueError(f"cannot broadcast a tensor of shape {tuple(v.shape)} to {ndim} dims")
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def sum_except_batch(x: Tensor) -> Tensor:
    """Sum over every dim but the first: (B, *D) -> (B,)."""
    return x.reshape(x.shape[0], -1).sum(dim=1)


def check_finite_number(
    name: str, value: float, *, positive: bool = False, nonnegative: bool = False
) -> float:
    """`value` as a float; TypeError naming `name` when it is not a real number (a bool or a string
    is not one, though float() takes both), ValueError when it is NaN, inf or out of range."""
    if isinstance(value, (bool, str, bytes)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if positive and v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if nonnegative and v < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")
    return v


def check_bool(name: str, value: object) -> bool:
    """`value` when it is a bool (Python or NumPy), else TypeError naming `name`: a string such
    as "no" would otherwise read as True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_rtol(rtol: float) -> float:
    """A relative tolerance as a float: finite and in (0, 1) (at 1 an error as large as the
    state passes the test), else ValueError/TypeError naming rtol."""
    rtol = check_finite_number("rtol", rtol, positive=True)
    if rtol >= 1:
        raise ValueError(f"rtol must be < 1 (a relative error), got {rtol!r}")
    return rtol


def check_tolerances(
    rtol: float, atol: float, dtype: torch.dtype, *, zero_atol: bool = False
) -> tuple[float, float]:
    """(rtol, atol) of an adaptive solve in `dtype`, as floats: finite, 0 < rtol < 1, atol > 0
    (>= 0 with `zero_atol`), and not both below 4 machine epsilons of `dtype`, where rounding
    alone fails the error test and the solver would shrink its steps forever."""
    rtol = check_rtol(rtol)
    atol = check_finite_number("atol", atol, positive=not zero_atol, nonnegative=zero_atol)
    floor = 4 * torch.finfo(dtype).eps
    if max(rtol, atol) < floor:
        raise ValueError(
            f"rtol={rtol:g} and atol={atol:g} are below what {dtype} resolves ({floor:.1e}): "
            f"raise one of them, or solve in float64"
        )
    return rtol, atol


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """Raise ValueError listing the valid names when `value` is not one of `choices`."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; expected one of: {', '.join(choices)}")
    return value


def check_tensor_finite(name: str, x: Tensor) -> None:
    """Raise ValueError when a tensor holds NaN or infinity."""
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} holds {bad} non-finite value(s) (NaN or inf)")


def batch_times(t: Tensor | float, batch: int, like: Tensor) -> Tensor:
    """A time of shape () or (B,) as a tensor of shape (B,) with `like`'s dtype and device."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must have shape () or ({batch},), got {tuple(t.shape)}")
    return t


def check_int(name: str, value: object, low: int = 1, high: int | None = None) -> int:
    """`value` as an int when it is an integer (Python or NumPy, not bool) in [low, high] (high
    None: no bound), else raise ValueError naming `name`. The one integer check of the package."""
    n = int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else None
    if n is None or n < low or (high is not None and n > high):
        rng = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be an integer {rng}, got {value!r}")
    return n


@overload
def resolve_device(device: None) -> None: ...


@overload
def resolve_device(device: str | torch.device) -> torch.device: ...


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """`device` as a torch.device that exists on this machine ("auto": cuda if available, else
    cpu; None stays None). ValueError naming the device and the accepted ones otherwise."""
    if device is None or isinstance(device, torch.device) and device.type == "cpu":
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    accepted = "auto, cpu, cuda or cuda:N"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; expected {accepted}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {str(device)!r} asked for, but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ValueError(f"device {str(device)!r} is not supported; expected {accepted}")
    return dev
