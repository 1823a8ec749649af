"""The entry point for sampling: `sample(model, sde, shape, method=..., steps=... | nfe=...)`.

It checks its arguments, chooses the time grid, wraps the model for guidance and NFE counting,
draws the prior and hands the rest to `grid.solve`, which runs the method picked by name from
`METHODS` (methods.py) and the final denoising step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._utils import (
    batch_times,
    check_bool,
    check_finite_number,
    check_int,
    check_tensor_finite,
    resolve_device,
)
from ..models.base import check_model_sde, check_sde, data_std
from ..random import RandomSource, randn
from .counting import CountingModel
from .grid import Recorder, solve
from .guidance import guided_model
from .inverse import LinearOperator, Observed, observed_model
from .methods import (
    DEFAULT_METHOD,
    METHODS,
    Method,
    available,
    check_options,
    fit_steps,
    steps_for_nfe,
)
from .results import SolveResult
from .schedules import check_grid, get_schedule

__all__ = ["sample", "METHODS", "Method", "available", "steps_for_nfe"]


@torch.no_grad()
def sample(
    model,
    sde,
    shape: tuple[int, ...],
    *,
    method: str = DEFAULT_METHOD,
    steps: int | None = None,
    nfe: int | None = None,
    schedule: str | Tensor | None = None,
    generator: RandomSource = None,
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
    inpaint: str | None = None,
    operator: LinearOperator | None = None,
    y_obs: Tensor | None = None,
    sigma_y: float = 0.0,
    inverse: str | None = None,
    inverse_scale: float | None = None,
    x_init: Tensor | None = None,
    t_start: float | None = None,
    callback: Callable[[dict], None] | None = None,
    **options,
) -> SolveResult:
    """Draw samples by integrating the reverse SDE or the probability-flow ODE from T to t_min
    (or from `t_start`, for editing).

    Args:
        model: any object with score(x, t), denoise(x, t), eps(x, t), t of shape (B,).
        sde: the SDE the model belongs to.
        shape: (B, *D) of the samples.
        method: a name from `available()`; default "unipc" (`DEFAULT_METHOD`, chosen by
            benchmarks/defaults.py).
        steps: number of grid steps; or give `nfe`, the budget of network evaluations, and the
            largest number of steps that fits is used (the result reports the counted NFE).
            Neither: 50 steps. Adaptive methods ("dopri5") take rtol/atol instead.
        schedule: "uniform", "log_snr", "log_snr_jump" or "karras" (default per method;
            "log_snr_jump" places its levels by the model's data std, `models.data_std`), or
            the grid itself: a strictly decreasing tensor of times from T (or t_start) to t_min,
            or, with `denoise_final`, to the time where the final denoising step jumps to zero
            noise (t_min or above), e.g. `optimise_schedule(...).ts`.
        generator: the random source for the prior draw and every noise increment: a
            torch.Generator (one stream for the batch), or a `sdegen.random.PerExampleGenerator`
            of B seeds, one per example, whose draws for example i come from seed i only, so
            that each example comes out the same in any batch (given a model that treats
            examples independently) and sampling can be split over processes
            (`sdegen.assembly.harness.sample_batches`). Not so for the methods whose examples
            share something: the adaptive ones (dopri5, dpm_adaptive) choose steps by an error
            norm over the batch, and pc its step size from batch-mean norms.
        noise: the prior draw x(T) itself, shape `shape` (then `generator` drives only the
            increments of stochastic methods).
        dtype, device: of the samples (default: noise's; else float32 on the model's device
            if it is an nn.Module, else on the CPU).
        denoise_final: end with x0 = E[x0 | x(t_last)] at the grid's last time t_last (one more
            evaluation, counted: the jump to zero noise that DDPM's last step and EDM's and
            k-diffusion's step to sigma = 0 make; it is the lower-order final step, so
            `lower_order_final` does not also lower the step before it); otherwise the grid
            ends at t_min and stochastic methods add no noise on their last step.
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
            `shape`); the output holds them exactly. The same as operator=Inpaint(mask) with
            y_obs = the known entries, and `inverse` "replace" by default.
        inpaint: the older name of `inverse`.
        operator, y_obs, sigma_y: a linear inverse problem y_obs = A x + sigma_y n (n ~ N(0, I)):
            sample p(x | y_obs) for a `sdegen.solvers.inverse.LinearOperator` A (Inpaint,
            Downsample, Grayscale, Blur, Matrix); y_obs of A's output shape (B, *M), or one
            observation broadcast to the batch. With sigma_y = 0 and A A^T = c I (Inpaint,
            Downsample, Grayscale) the output satisfies A x = y_obs exactly (it is projected).
        inverse: how: "moment" (default with an operator: Tweedie posterior-moment guidance,
            exact for Gaussian data, one VJP per observed value per evaluation), "pigdm" (Song
            et al. 2023) or "dps" (Chung et al. 2023), one VJP per evaluation each, or "replace"
            (inpainting only; the default for known/mask). VJPs are counted in `nfe_backward`.
            See `sdegen.solvers.inverse`.
        inverse_scale: the guidance weight (default 1; DPS's zeta).
        x_init, t_start: SDEdit (Meng et al. 2022): start from x_init (shape `shape`, or one
            example (1, *D) for the whole batch) perturbed to t_start in (t_min, T] by the SDE's
            kernel, alpha(t_start) x_init + sigma(t_start) z with z drawn first from `generator`,
            and integrate from t_start only; the grid (steps, nfe, schedule) covers
            [t_min, t_start]. t_start = T is ordinary sampling from the perturbed x_init; a
            small t_start keeps the output close to x_init.
        callback: called after every step with a dict (as k-diffusion's samplers do): "i" the
            step index (0-based), "t" the time reached (float; None for adaptive steps), "x" the
            state there, and "denoised" the step's x0 estimate where it started (after pc's
            corrections and edm_sde's churn; for unipc at the point before its correction;
            None for methods that a library integrates in one call, dopri5 and torchsde_*,
            whose callbacks all come after the solve).
        **options: method options, e.g. eta (ddim), snr and corrector_steps (pc), rtol and
            atol (dopri5), variance (ancestral).
    Returns:
        SolveResult with samples `x` of shape `shape` and the counted `nfe`.

    Example:
        >>> import torch, sdegen
        >>> sde = sdegen.VPSDE()
        >>> covs = [[[0.1]], [[0.1]]]
        >>> truth = sdegen.GaussianMixtureScore([0.5, 0.5], [[-2.0], [2.0]], covs, sde)
        >>> res = sdegen.sample(truth, sde, (500, 1), method="dpmpp_2m", nfe=10,
        ...                     generator=torch.Generator().manual_seed(0))
        >>> res.x.shape, res.nfe            # 9 steps and the final denoise, all counted
        (torch.Size([500, 1]), 10)
        >>> bool((res.x.abs() - 2).abs().mean() < 0.3)    # near the two modes at -2 and 2
        True
    """
    m = check_options(method, options)
    denoise_final = check_bool("denoise_final", denoise_final)
    return_trajectory = check_bool("return_trajectory", return_trajectory)
    shape, dtype, device = _check_inputs(
        model, sde, shape, steps, nfe, noise, dtype, device, callback
    )
    window = sde if t_start is None else _Window(sde, t_start)
    ts = _time_grid(method, window, steps, nfe, schedule, denoise_final, options, data_std(model))
    guided = guided_model(
        model, sde, shape[0], y=y, guidance=guidance, classifier=classifier,
        classifier_scale=classifier_scale, device=device,
    )  # fmt: skip
    guided = observed_model(
        guided, sde, shape, known=known, mask=mask, inpaint=inpaint, operator=operator,
        y_obs=y_obs, sigma_y=sigma_y, inverse=inverse, inverse_scale=inverse_scale,
        generator=generator,
    )  # fmt: skip
    counted = CountingModel(guided)
    if x_init is not None and t_start is None:
        raise ValueError("x_init needs t_start, the time in (t_min, T] to start the edit from")
    if x_init is not None or t_start is not None:
        x = _edit_start(sde, shape, x_init, ts, noise, generator, dtype, device)
    elif noise is None:
        x = sde.prior_sample(shape, generator=generator, dtype=dtype, device=device)
    else:
        x = noise.to(dtype=dtype, device=device)
    record = Recorder(
        x, None if m.adaptive else ts, trajectory=return_trajectory, callback=callback
    )
    # With a final denoising step, stochastic methods' last step adds noise like every other
    # step (the denoiser then removes it); without one they end on the mean.
    x = solve(
        m, counted, sde, x, ts, generator=generator, add_noise_last=denoise_final,
        denoise_final=denoise_final, record=record, **options,
    )  # fmt: skip
    if isinstance(guided, Observed):
        x = guided.finish(x)  # A x = y exactly, where sigma_y = 0 and A A^T = c I
        if record.states is not None:
            record.states[-1] = x
    if not bool(torch.isfinite(x).all()):  # one host sync per solve, after the loop
        scale = classifier_scale if classifier is not None else None
        given = {"guidance": guidance, "classifier_scale": scale, **options}
        settings = "".join(f", {k}={v!r}" for k, v in given.items() if v is not None)
        raise ValueError(
            f"sampling produced {int((~torch.isfinite(x)).sum())} non-finite values (NaN or "
            f"inf) of {x.numel()} (method={method!r}, {counted.nfe} evaluations{settings}): a "
            f"guidance or classifier scale this large, or an option out of its useful range, "
            f"overflows the state"
        )
    return SolveResult(
        x=x,
        nfe=counted.nfe,
        nfe_backward=getattr(guided, "nfe_backward", 0),
        ts=ts,
        trajectory=None if record.states is None else torch.stack(record.states),
        method=method,
        batch_factor=getattr(guided, "batch_factor", 1),
        nfe_classifier=getattr(guided, "nfe_classifier", 0),
    )


def _check_inputs(model, sde, shape, steps, nfe, noise, dtype, device, callback):
    """`sample`'s arguments checked: (shape as a tuple, dtype, device) of the samples."""
    if steps is not None and nfe is not None:
        raise ValueError("give steps or nfe, not both")
    if steps is not None:
        check_int("steps", steps, 1)
    if nfe is not None:
        check_int("nfe", nfe, 1)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable, dict -> None, got {callback!r}")
    check_sde(sde, ("alpha", "sigma", "prior_sample", "t_min", "T"))
    check_model_sde(model, sde)
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
    if device is None and isinstance(model, torch.nn.Module):
        # default to where the model lives, so a CUDA model gets a CUDA prior draw
        tensor: Tensor | None = next(iter(model.parameters()), None)
        tensor = tensor if tensor is not None else next(iter(model.buffers()), None)
        device = tensor.device if tensor is not None else None
    return shape, dtype or torch.float32, device


class _Window:
    """The SDE seen on [t_min, t_start] by the time grids: T is t_start, and the log-SNR range
    and its inverse are the SDE's own, restricted (so every named schedule places its steps on
    [t_min, t_start] as it would on [t_min, T])."""

    def __init__(self, sde, t_start: float) -> None:
        t_start = check_finite_number("t_start", t_start)
        if not sde.t_min < t_start <= sde.T:
            raise ValueError(
                f"t_start must lie in (t_min, T] = ({sde.t_min:g}, {sde.T:g}], got {t_start!r}"
            )
        self.sde, self.T, self.t_min = sde, t_start, sde.t_min

    def half_log_snr_range(self) -> tuple[float, float]:
        ends = torch.tensor([self.T, self.t_min], dtype=torch.float64)
        lam = self.sde.half_log_snr(ends)
        return float(lam[0]), float(lam[1])

    def t_of_half_log_snr(self, lam: Tensor) -> Tensor:
        return self.sde.t_of_half_log_snr(lam).clamp(self.t_min, self.T)


def _edit_start(sde, shape, x_init, ts, noise, generator, dtype, device) -> Tensor:
    """SDEdit's starting state alpha(t0) x_init + sigma(t0) z at t0 = ts[0], z ~ N(0, I) drawn
    from `generator`; (B, *D)."""
    if x_init is None:
        raise ValueError("t_start needs x_init, the input to edit")
    if noise is not None:
        raise ValueError("give noise (a prior draw at T) or x_init (an input to edit), not both")
    if not torch.is_tensor(x_init) or not x_init.is_floating_point():
        got = x_init.dtype if torch.is_tensor(x_init) else type(x_init).__name__
        raise ValueError(f"x_init must be a floating-point tensor, got {got}")
    check_tensor_finite("x_init", x_init)
    if tuple(x_init.shape) not in (shape, (1, *shape[1:])):
        raise ValueError(
            f"x_init must have shape {shape} or (1, {', '.join(map(str, shape[1:]))}), got "
            f"{tuple(x_init.shape)}"
        )
    x0 = x_init.to(dtype=dtype, device=device).expand(shape)
    z = randn(shape, generator, dtype=dtype, device=device)
    return sde.perturb(x0, batch_times(float(ts[0]), shape[0], x0), z)


def _time_grid(method, sde, steps, nfe, schedule, denoise_final, options, sd) -> Tensor:
    """The grid, float64 (steps + 1,) from T to t_min (with `denoise_final`, to the time where
    the final denoising step jumps to zero noise, t_min or above): given, named with `steps`, or
    the most steps whose cost fits `nfe`; 50 steps by default; a named grid for data of RMS std
    `sd`. Adaptive methods get [T, t_min], the ends of their solve."""
    m = METHODS[method]
    if isinstance(schedule, (list, tuple)) or type(schedule).__module__ == "numpy":
        schedule = torch.as_tensor(schedule, dtype=torch.float64)  # a grid as numbers
    if m.adaptive:
        if steps is not None or nfe is not None or torch.is_tensor(schedule):
            raise ValueError(
                f"method {method!r} is adaptive: set rtol/atol, not steps, nfe or a grid "
                "(it chooses its own steps)"
            )
        return get_schedule(sde, "uniform", 1)
    if torch.is_tensor(schedule):
        ts = check_grid(sde, schedule, denoise_final=denoise_final)
        if steps is not None or nfe is not None:
            raise ValueError("a schedule given as a grid sets the steps; give no steps or nfe")
        return ts
    if nfe is not None:
        steps = fit_steps(method, nfe, 1 if denoise_final else 0, options)
    steps = 50 if steps is None else steps
    return m.grid(sde, steps, schedule=schedule, denoise_final=denoise_final, data_std=sd)
