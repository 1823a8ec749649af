"""torchdiffeq details shared by the PF-ODE solvers and FFJORD: method names and landing on the
end time."""

from __future__ import annotations

import sys

from torch import Tensor
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

from ._utils import check_choice

# torchdiffeq's method table; `torchdiffeq._impl.odeint` is shadowed by the function of that name
SOLVERS = sys.modules["torchdiffeq._impl.odeint"].SOLVERS


def check_method(method: str) -> str:
    """`method` if torchdiffeq knows it, else ValueError listing the methods it knows."""
    return check_choice("torchdiffeq method", method, SOLVERS)


def landing_options(method: str, ts: Tensor, options: dict | None = None) -> dict:
    """torchdiffeq options that make an adaptive solve land on its final time ts[-1].

    torchdiffeq's adaptive solvers step past the final time and interpolate back; with step_t
    the last step ends exactly there, so no stage is evaluated beyond it.
    """
    options = dict(options or {})
    if issubclass(SOLVERS[check_method(method)], RKAdaptiveStepsizeODESolver):
        options.setdefault("step_t", ts[-1:])
    return options
