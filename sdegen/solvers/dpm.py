"""Deprecated: this module's contents moved, one family per file.

DPM-Solver++ (3M, 2S, 3S), SDE-DPM-Solver++ and UniPC are in exponential.py (classes DPMpp3M,
DPMpp2S, DPMpp3S, UniPC; run them by name with `sdegen.sample` or `grid.solve`), the
quadrature `exp_weights` and `exp_step` and the schedule `LogSNRSchedule` (formerly `_Path`) in
exp_quadrature.py, `dpm_adaptive` in adaptive.py and EDM's stochastic sampler (`edm_sde`,
class EDMStochastic) in edm.py. Old names still resolve here, with a DeprecationWarning.
"""

from __future__ import annotations

import warnings

_MOVED = {
    "exp_weights": "exp_quadrature",
    "exp_step": "exp_quadrature",
    "_phi_moments": "exp_quadrature",
    "_combine": "exp_quadrature",
    "_Path": "exp_quadrature.LogSNRSchedule",
    "_rms_error": "adaptive",
}


def __getattr__(name: str):
    if name in _MOVED:
        import importlib

        module, _, attr = _MOVED[name].partition(".")
        new = f"sdegen.solvers.{module}.{attr or name}"
        warnings.warn(f"{__name__}.{name} is deprecated; use {new}", DeprecationWarning, 2)
        return getattr(importlib.import_module(f"sdegen.solvers.{module}"), attr or name)
    from ._deprecated import legacy

    return legacy(__name__, name)
