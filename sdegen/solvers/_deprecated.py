"""Names the solvers had before the one fixed-grid loop, kept working with a DeprecationWarning.

Methods used to be functions fn(model, sde, x, ts, *, generator=None, noise_final=False,
record=None, **options) -> x; they are now specs in METHODS run by `grid.solve`, and
`noise_final` is `add_noise_last`. The reverse-SDE step functions became the `predict` of the
classes in reverse_sde.py, and dpm.py's contents moved to exponential.py, exp_quadrature.py,
edm.py and adaptive.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

# module -> {old function name: METHODS name}
FUNCTIONS = {
    "sdegen.solvers.reverse_sde": {
        "euler_maruyama": "euler_maruyama",
        "reverse_diffusion": "reverse_diffusion",
        "ancestral": "ancestral",
        "pc": "pc",
    },
    "sdegen.solvers.exponential": {"ddim": "ddim", "dpmpp_2m": "dpmpp_2m"},
    "sdegen.solvers.pf_ode": {"euler": "euler", "rk4": "rk4", "heun": "heun"},
    "sdegen.solvers.dpm": {
        "dpmpp_3m": "dpmpp_3m",
        "dpmpp_sde": "dpmpp_sde",
        "unipc": "unipc",
        "dpmpp_2s": "dpmpp_2s",
        "dpmpp_3s": "dpmpp_3s",
        "dpm_adaptive": "dpm_adaptive",
        "edm_sde": "edm_sde",
    },
}
# reverse_sde's step functions step(model, sde, x, t, s, z) -> x: the class whose predict it was
STEPS = {
    "euler_maruyama_step": "EulerMaruyama",
    "reverse_diffusion_step": "ReverseDiffusion",
    "ancestral_step": "Ancestral",
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=4)


def method_function(m, name: str = "") -> Callable[..., Tensor]:
    """The old function form of the method spec `m`."""

    def fn(model, sde, x: Tensor, ts: Tensor, *, record=None, noise_final=False, **options):
        from .grid import Recorder, solve

        generator = options.pop("generator", None)
        report = None
        if record is not None:  # the old hook took the state alone
            report = Recorder(x, None, trajectory=False, callback=lambda d: record(d["x"]))
        return solve(
            m, model, sde, x, ts, generator=generator, add_noise_last=noise_final, record=report,
            **options,
        )  # fmt: skip

    fn.__name__ = name or "fn"
    fn.__doc__ = f"Deprecated function form of a sampler: {m.summary}."
    return fn


def _step_function(cls_name: str) -> Callable[..., Tensor]:
    def step(model, sde, x: Tensor, t: float, s: float, z, variance="posterior") -> Tensor:
        from . import reverse_sde

        cls = getattr(reverse_sde, cls_name)
        ts = torch.tensor([t, s], dtype=torch.float64)
        kwargs = {"variance": variance} if cls_name == "Ancestral" else {}
        return cls(model, sde, ts, **kwargs).predict(x, t, s, z)[0]

    return step


def legacy(module: str, name: str):
    """A module's `__getattr__`: the deprecated `name` of `module`, or AttributeError."""
    from .methods import METHODS

    if name in FUNCTIONS.get(module, {}):
        method = FUNCTIONS[module][name]
        _warn(f"{module}.{name}", f"sdegen.sample(..., method={method!r}) or grid.solve")
        return method_function(METHODS[method], name)
    if module == "sdegen.solvers.reverse_sde" and name in STEPS:
        _warn(f"{module}.{name}", f"{module}.{STEPS[name]}(...).predict")
        return _step_function(STEPS[name])
    raise AttributeError(f"module {module!r} has no attribute {name!r}")
