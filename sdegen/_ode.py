"""torchdiffeq details shared by the PF-ODE solvers and FFJORD: method names, landing on the end
time, and the one check of the likelihood-ODE settings (log_likelihood, ScoreSDEDensity, FFJORD)."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable

from torch import Tensor
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

from ._utils import check_choice, check_finite_number, check_int, check_rtol
from .divergence import PROBE_NOISES

# torchdiffeq's method table; `torchdiffeq._impl.odeint` is shadowed by the function of that name
SOLVERS = sys.modules["torchdiffeq._impl.odeint"].SOLVERS


def check_method(method: str, name: str = "torchdiffeq method") -> str:
    """`method` if torchdiffeq knows it, else ValueError naming `name` and listing the methods."""
    return check_choice(name, method, SOLVERS)


def check_solver_options(method: str, options: dict | None) -> dict:
    """`options` for torchdiffeq's `method` as a new dict; ValueError naming any that its solver
    does not take (torchdiffeq itself only warns, and ignores them)."""
    options = dict(options or {})
    params = inspect.signature(SOLVERS[check_method(method, "method")].__init__).parameters.values()
    known = [
        p.name
        for p in params
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        and p.name not in ("self", "func", "y0", "rtol", "atol")
    ]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ValueError(
            f"options {unknown} are not options of torchdiffeq's {method!r}; expected some of: "
            f"{', '.join(known) or '(none)'}"
        )
    return options


TRACES = ("exact", "hutchinson")


def check_ode_settings(
    *,
    trace: str,
    probes: int,
    noise: str,
    rtol: float,
    atol: float,
    method: str,
    options: dict | None = None,
    method_check: Callable[[str], object] | None = None,
) -> dict:
    """The settings of a likelihood ODE solve, checked, as a dict of the same names.

    trace: one of TRACES; probes: an integer >= 1; noise: one of PROBE_NOISES; rtol, atol:
    finite and > 0 (returned as floats); method: a torchdiffeq method name (SOLVERS), or, with
    `method_check`, what it accepts (it returns the checked method, or raises); options: a dict
    or None.
    Raises ValueError (TypeError for a non-number tolerance or a non-dict options) naming the
    setting, the value received and what is accepted.
    """
    if options is not None and not isinstance(options, dict):
        raise TypeError(f"options must be a dict of torchdiffeq options or None, got {options!r}")
    if method_check is None:
        check_solver_options(method, options)
    return dict(
        trace=check_choice("trace", trace, TRACES),
        probes=check_int("probes", probes),
        noise=check_choice("noise", noise, PROBE_NOISES),
        rtol=check_rtol(rtol),
        atol=check_finite_number("atol", atol, positive=True),
        method=check_method(method, "method") if method_check is None else method_check(method),
    )


def landing_options(method: str, ts: Tensor, options: dict | None = None) -> dict:
    """torchdiffeq options that make an adaptive solve land on its final time ts[-1].

    torchdiffeq's adaptive solvers step past the final time and interpolate back; with step_t
    the last step ends exactly there, so no stage is evaluated beyond it.
    """
    options = dict(options or {})
    if issubclass(SOLVERS[check_method(method)], RKAdaptiveStepsizeODESolver):
        options.setdefault("step_t", ts[-1:])
    return options
