"""One entry point for sampling: `sample(model, sde, shape, method=..., steps=... | nfe=...)`.

Methods are plain functions `fn(model, sde, x, ts, **options) -> x`, picked by name from the
`METHODS` dict below, so configs and the command line can swap them.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._utils import check_choice, check_int, check_tensor_finite, resolve_device
from ..models.base import check_sde, to_x0_eps
from . import dpm, exponential, pf_ode, reverse_sde, torchsde_methods
from .counting import CountingModel, SolveResult
from .guidance import Inpainted, guided_model
from .schedules import check_grid, get_schedule


@dataclass(frozen=True)
class Method:
    """A sampler: its function, what it integrates, its cost and its default grid.

    `nfe(steps, options)` is used only to choose `steps` for a requested NFE budget; the NFE
    reported is always the counted one.
    """

    fn: Callable[..., Tensor]
    kind: str  # "sde" (stochastic) or "ode" (deterministic)
    schedule: str
    nfe: Callable[[int, dict], int] | None  # None: adaptive, cost not set by steps
    summary: str
    # False where a library (torchdiffeq, torchsde) integrates the whole grid in one call, so
    # the states reach `record` only after the solve: callbacks then get no denoised estimate.
    live: bool = True

    @property
    def adaptive(self) -> bool:
        """True when the step count is chosen by error control (rtol, atol), not by the user."""
        return self.nfe is None


def _per_step(k: int) -> Callable[[int, dict], int]:
    return lambda n, _: k * n


# Default grids were chosen by measurement (benchmarks/schedules.py): uniform t fails badly on
# EDM and VE at low NFE; Karras and log-SNR grids never do. torchsde steps a fixed dt: uniform.
# fmt: off
METHODS: dict[str, Method] = {
    "euler_maruyama": Method(reverse_sde.euler_maruyama, "sde", "karras", _per_step(1),
                             "Euler-Maruyama on the reverse SDE"),
    "reverse_diffusion": Method(reverse_sde.reverse_diffusion, "sde", "karras", _per_step(1),
                                "reverse diffusion predictor (Song et al. 2021)"),
    "ancestral": Method(reverse_sde.ancestral, "sde", "karras", _per_step(1),
                        "ancestral sampling: DDPM for VP, SMLD for VE"),
    "pc": Method(reverse_sde.pc, "sde", "karras",
                 lambda n, o: n * (1 + check_int("corrector_steps",
                                                 o.get("corrector_steps", 1), 0)),
                 "predictor-corrector with a Langevin corrector (snr)"),
    # torchsde calls the drift once more, to check its shape, before integrating.
    "torchsde_euler": Method(torchsde_methods.torchsde_euler, "sde", "uniform",
                             lambda n, _: n + 1, "torchsde euler on the reverse SDE", False),
    "torchsde_milstein": Method(torchsde_methods.torchsde_milstein, "sde", "uniform",
                                lambda n, _: n + 1, "torchsde milstein on the reverse SDE", False),
    "torchsde_srk": Method(torchsde_methods.torchsde_srk, "sde", "uniform",
                           lambda n, _: 10 * n + 1,
                           "torchsde stochastic Runge-Kutta (strong order 1.5)", False),
    "torchsde_reversible_heun": Method(torchsde_methods.torchsde_reversible_heun, "sde",
                                       "uniform", lambda n, _: n + 2,
                                       "torchsde reversible Heun (unstable at few steps)", False),
    "dopri5": Method(pf_ode.dopri5, "ode", "uniform", None,
                     "adaptive Dormand-Prince 5(4) on the PF-ODE (rtol, atol)", False),
    "euler": Method(pf_ode.euler, "ode", "karras", _per_step(1), "Euler on the PF-ODE",
                   False),
    "rk4": Method(pf_ode.rk4, "ode", "karras", _per_step(4), "classical RK4 on the PF-ODE",
                 False),
    "heun": Method(pf_ode.heun, "ode", "karras", lambda n, _: 2 * n - 1,
                   "Heun on the PF-ODE, last step Euler (EDM)"),
    "ddim": Method(exponential.ddim, "ode", "log_snr", _per_step(1),
                   "DDIM: first-order exponential integrator (eta > 0: stochastic)"),
    "dpmpp_2m": Method(exponential.dpmpp_2m, "ode", "log_snr", _per_step(1),
                       "DPM-Solver++(2M) multistep exponential integrator"),
    "dpmpp_3m": Method(dpm.dpmpp_3m, "ode", "log_snr", _per_step(1),
                       "DPM-Solver++(3M) multistep (order 1-4; eta > 0: stochastic)"),
    "dpmpp_sde": Method(dpm.dpmpp_sde, "sde", "log_snr", _per_step(1),
                        "SDE-DPM-Solver++(2M) on the reverse SDE"),
    "unipc": Method(dpm.unipc, "ode", "log_snr", _per_step(1),
                    "UniPC-style multistep predictor-corrector, corrector free"),
    "dpmpp_2s": Method(dpm.dpmpp_2s, "ode", "log_snr", _per_step(2),
                       "DPM-Solver++(2S) singlestep"),
    "dpmpp_3s": Method(dpm.dpmpp_3s, "ode", "log_snr", _per_step(3),
                       "DPM-Solver++(3S) singlestep"),
    "dpm_adaptive": Method(dpm.dpm_adaptive, "ode", "uniform", None,
                           "adaptive DPM-Solver-23 in log-SNR (rtol, atol)"),
    "edm_sde": Method(dpm.edm_sde, "sde", "karras", lambda n, _: 2 * n - 1,
                      "EDM stochastic sampler (churn) with Heun steps"),
}
# fmt: on


def available() -> dict[str, str]:
    """Sampler names and a one-line summary of each."""
    return {name: m.summary for name, m in METHODS.items()}


def _steps_for_nfe(name: str, m: Method, nfe: int, extra: int, options: dict) -> int:
    """The most steps whose cost, plus `extra` evaluations, fits in `nfe` (costs grow with the
    step count, so a bisection finds it in O(log nfe) cost evaluations)."""
    if m.adaptive:
        raise ValueError(f"method {name!r} is adaptive: set rtol/atol, not steps or nfe")
    check_int("nfe", nfe, 1)
    if m.nfe(1, options) + extra > nfe:
        raise ValueError(
            f"nfe={nfe} is too small for {name!r}: one step costs "
            f"{m.nfe(1, options) + extra} evaluations"
        )
    lo, hi = 1, nfe  # every step costs at least one evaluation: at most nfe steps fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if m.nfe(mid, options) + extra <= nfe:
            lo = mid
        else:
            hi = mid - 1
    return lo


def steps_for_nfe(method: str, nfe: int, *, denoise_final: bool = True, **options) -> int:
    """The number of steps `sample(..., method=method, nfe=nfe)` uses: the most that fit."""
    check_choice("method", method, METHODS)
    _check_options(method, METHODS[method].fn, options)
    return _steps_for_nfe(method, METHODS[method], nfe, 1 if denoise_final else 0, options)


def _check_options(name: str, fn: Callable, options: dict) -> None:
    params = inspect.signature(fn).parameters
    accepted = [p for p, v in params.items() if v.kind == v.KEYWORD_ONLY and p != "record"]
    for key in options:
        if key not in accepted:
            raise ValueError(
                f"method {name!r} takes no option {key!r}; it takes: "
                f"{', '.join(accepted) or 'none'}"
            )


def _recorder(traj: list[Tensor] | None, callback, counted: CountingModel, sde, ts: Tensor | None):
    """The `record(x)` hook samplers call after each step: appends to the trajectory and calls
    the user's callback with the step index, time (None for adaptive steps, whose times the grid
    does not hold), state and the last x0 estimate."""
    if traj is None and callback is None:
        return None
    step = 0

    def record(x: Tensor) -> None:
        nonlocal step
        if traj is not None:
            traj.append(x)
        if callback is not None:
            denoised = None
            if counted.last is not None:
                name, x_in, t_in, out = counted.last
                counted.last = None  # one estimate per step: stale ones are not passed on
                if name == "denoise":
                    denoised = out
                else:
                    alpha, sigma = sde.alpha(t_in), sde.sigma(t_in)
                    kind = "score" if name == "score" else "eps"
                    denoised = to_x0_eps(kind, out, x_in, alpha, sigma)[0]
            t = float(ts[step + 1]) if ts is not None and step + 1 < len(ts) else None
            callback({"i": step, "t": t, "x": x, "denoised": denoised})
        step += 1

    return record


@torch.no_grad()
def sample(
    model,
    sde,
    shape: tuple[int, ...],
    *,
    method: str = "dpmpp_2m",
    steps: int | None = None,
    nfe: int | None = None,
    schedule: str | Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    denoise_final: bool = True,
    return_trajectory: bool = False,
    y: Tensor | int | None = None,
    guidance: float | None = None,
    classifier: Callable | None = None,
    classifier_scale: float = 1.0,
    known: Tensor | None = None,
    mask: Tensor | None = None,
    inpaint: str = "replace",
    callback: Callable[[dict], None] | None = None,
    **options,
) -> SolveResult:
    """Draw samples by integrating the reverse SDE or the probability-flow ODE from T to t_min.

    Args:
        model: any object with score(x, t), denoise(x, t), eps(x, t), t of shape (B,).
        sde: the SDE the model belongs to.
        shape: (B, *D) of the samples.
        method: a name from `available()`.
        steps: number of grid steps; or give `nfe`, the budget of network evaluations, and the
            largest number of steps that fits is used (the result reports the counted NFE).
            Neither: 50 steps. Adaptive methods ("dopri5") take rtol/atol instead.
        schedule: "uniform", "log_snr" or "karras" (default per method), or the grid itself:
            a strictly decreasing tensor of times from T to t_min, e.g. `tune_schedule(...).ts`.
        generator: the random source for the prior draw and every noise increment.
        noise: the prior draw x(T) itself, shape `shape` (then `generator` drives only the
            increments of stochastic methods).
        dtype, device: of the samples (default: noise's; else float32 on the model's device
            if it is an nn.Module, else on the CPU).
        denoise_final: end with x0 = E[x0 | x(t_min)] (one more evaluation, counted), as DDPM's
            last step and EDM's step to sigma = 0 do; otherwise stochastic methods add no noise
            on their last step.
        return_trajectory: also return the states at every grid time.
        y: class labels for a conditional model (one with `num_classes`): an int for the whole
            batch or an int tensor (B,); NULL_LABEL (-1) entries sample unconditionally.
        guidance: classifier-free guidance weight w (Ho & Salimans 2022): w = 0 unconditional,
            1 conditional, > 1 guided; each evaluation is one network call on a doubled batch
            (the result's `batch_factor` is 2).
        classifier: a noise-conditional classifier (x, t) -> logits (B, K) for classifier
            guidance towards y (Dhariwal & Nichol 2021), at `classifier_scale`; the model is
            then used unconditionally unless `guidance` is also set.
        known, mask: inpainting / imputation (Song et al. 2021, App. I.2): the entries where the
            bool `mask` is True are observed with values `known` (both broadcastable to
            `shape`); the output holds them exactly.
        inpaint: "replace" (Song et al.'s replacement; biased where known and unknown entries
            are correlated) or "moment" (Gaussian posterior-moment guidance: exact for Gaussian
            data, one VJP per known entry per evaluation, counted in `nfe_backward`). See
            `sdegen.solvers.guidance.Inpainted`.
        callback: called after every step with a dict (as k-diffusion's samplers do): "i" the
            step index (0-based), "t" the time reached (float), "x" the state there, and
            "denoised" the x0 estimate of the step's last network evaluation (None for methods
            that a library integrates in one call: euler, rk4, dopri5, torchsde_*; their
            callbacks all come after the solve).
        **options: method options, e.g. eta (ddim), snr and corrector_steps (pc), rtol and
            atol (dopri5), variance (ancestral).
    Returns:
        SolveResult with samples `x` of shape `shape` and the counted `nfe`.
    """
    check_choice("method", method, METHODS)
    m = METHODS[method]
    _check_options(method, m.fn, options)
    if steps is not None and nfe is not None:
        raise ValueError("give steps or nfe, not both")
    if steps is not None:
        check_int("steps", steps, 1)
    if nfe is not None:
        check_int("nfe", nfe, 1)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, dict -> None, got {callback!r}")
    check_sde(sde, ("alpha", "sigma", "prior_sample", "t_min", "T"))
    if not isinstance(shape, (tuple, list, torch.Size)):
        raise ValueError(f"shape must be a tuple (batch, *event_shape), got {shape!r}")
    shape = tuple(shape)
    if len(shape) < 2 or not all(
        isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape
    ):
        raise ValueError(f"shape must be (batch, *event_shape) of positive ints, got {shape}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    device = resolve_device(device)
    if noise is not None:
        if torch.is_tensor(noise) and not noise.is_floating_point():
            raise ValueError(f"noise must be a floating-point tensor, got {noise.dtype}")
        check_tensor_finite("noise", noise)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {shape}, got {tuple(noise.shape)}")
        dtype = dtype or noise.dtype
        device = device or noise.device
    dtype = dtype or torch.float32
    if device is None and isinstance(model, torch.nn.Module):
        # default to where the model lives, so a CUDA model gets a CUDA prior draw
        tensor = next(iter(model.parameters()), None)
        tensor = tensor if tensor is not None else next(iter(model.buffers()), None)
        device = tensor.device if tensor is not None else None
    extra = 1 if denoise_final else 0
    if m.adaptive:
        if steps is not None or nfe is not None or torch.is_tensor(schedule):
            raise ValueError(
                f"method {method!r} is adaptive: set rtol/atol, not steps, nfe or a grid "
                "(it chooses its own steps)"
            )
        ts = get_schedule(sde, "uniform", 1)
    elif torch.is_tensor(schedule):
        ts = check_grid(sde, schedule)
        if steps is not None or nfe is not None:
            raise ValueError("a schedule given as a grid sets the steps; give no steps or nfe")
    else:
        if nfe is not None:
            steps = _steps_for_nfe(method, m, nfe, extra, options)
        ts = get_schedule(sde, schedule or m.schedule, 50 if steps is None else steps)

    guided = guided_model(
        model,
        sde,
        shape[0],
        y=y,
        guidance=guidance,
        classifier=classifier,
        classifier_scale=classifier_scale,
        known=known,
        mask=mask,
        inpaint=inpaint,
        generator=generator,
        device=device,
    )
    counted = CountingModel(guided, keep_last=callback is not None and m.live)
    if noise is None:
        x = sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    else:
        x = noise.to(dtype=dtype, device=device)
    traj: list[Tensor] | None = [x] if return_trajectory else None
    record = _recorder(traj, callback, counted, sde, None if m.adaptive else ts)
    kwargs = dict(options)
    params = inspect.signature(m.fn).parameters
    if "generator" in params:
        kwargs["generator"] = generator
    if "noise_final" in params:
        kwargs["noise_final"] = denoise_final
    x = m.fn(counted, sde, x, ts, record=record, **kwargs)
    if denoise_final:
        x = counted.denoise(x, torch.full((shape[0],), sde.t_min, dtype=x.dtype, device=x.device))
        if traj is not None:
            traj.append(x)
    if isinstance(guided, Inpainted):
        x = guided.fill(x)
        if traj is not None:
            traj[-1] = x
    trajectory = torch.stack(traj) if traj is not None else None
    return SolveResult(
        x=x,
        nfe=counted.nfe,
        nfe_backward=getattr(guided, "nfe_backward", 0),
        ts=ts,
        trajectory=trajectory,
        method=method,
        batch_factor=getattr(guided, "batch_factor", 1),
        nfe_classifier=getattr(guided, "nfe_classifier", 0),
    )
