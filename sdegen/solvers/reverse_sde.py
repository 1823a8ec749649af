"""Reverse-time SDE steps (Song et al. 2021, Appendix E and G), for any linear SDE:
Euler-Maruyama, the reverse diffusion predictor, ancestral sampling and predictor-corrector.

The reverse SDE is dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dW_bar, integrated from T to t_min.
Each step draws its noise z first (none on an un-denoised last step, Song et al.'s convention
when no denoising step follows) and moves x from t to s < t with one score evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import Tensor

from .._utils import append_dims, check_choice, check_finite_number
from .counting import CountingModel
from .exp_quadrature import TimeRows
from .grid import X0, GridMethod, Record, batch_t, deferred_x0, randn_like

__all__ = ["EulerMaruyama", "ReverseDiffusion", "Ancestral", "PC", "PREDICTORS", "Record"]


def _coef(v: Tensor, x: Tensor) -> Tensor:
    return append_dims(v.to(x.dtype), x.ndim)


class _Predictor(GridMethod):
    """A reverse-SDE step from t = ts[i] to s = ts[i + 1] given fresh noise z (None: the mean
    step). Its SDE coefficients depend on the grid alone: they are computed once per solve,
    vectorised over the grid in x's dtype (`coefficients`), so a step is the model's call and
    a few tensor operations on the state. The grid's times reach the model as rows of one
    tensor (`TimeRows`), not as a tensor made per step."""

    def times(self, i: int, x: Tensor) -> Tensor:
        """t = ts[i] as a (B,) tensor for x."""
        rows = getattr(self, "_rows", None)
        if rows is None:
            rows = self._rows = TimeRows(self.ts.tolist())
        return rows(i, x)

    def step(self, i: int, x: Tensor) -> tuple[Tensor, X0]:
        z = randn_like(x, self.generator) if self.adds_noise(i) else None
        return self.move(i, x, z)

    def move(
        self, i: int, x: Tensor, z: Tensor | None, tb: Tensor | None = None
    ) -> tuple[Tensor, X0]:
        """x at ts[i + 1] from x (B, *D) at ts[i] with noise z (None: the mean step), and the
        x0 estimate at (x, ts[i]); tb: ts[i] as a (B,) tensor for x, when the caller has it."""
        raise NotImplementedError

    def predict(
        self, x: Tensor, t: float, s: float, z: Tensor | None, *, tb=None, sb=None
    ) -> tuple[Tensor, X0]:
        """`move` over the grid's step from t to s (tb, sb: unused, kept for old callers)."""
        times = self.ts.tolist()
        for i in range(self.n):
            if (times[i], times[i + 1]) == (t, s):
                return self.move(i, x, z)
        raise ValueError(f"({t!r}, {s!r}) is not a step of this method's grid")


def _step_sizes(t: Tensor, ts: Tensor) -> tuple[Tensor, Tensor]:
    """dt = s - t of each step (< 0) and sqrt(-dt), as Python computes them from the float64
    grid, in t's dtype; (n,) each."""
    grid = ts.tolist()
    dt = [s - u for u, s in zip(grid[:-1], grid[1:])]
    root = [(-d) ** 0.5 for d in dt]
    as_t = lambda v: torch.tensor(v, dtype=torch.float64).to(t.dtype)  # noqa: E731
    return as_t(dt), as_t(root)


class EulerMaruyama(_Predictor):
    """Euler-Maruyama on the reverse SDE; one evaluation per step."""

    def coefficients(self, t: Tensor) -> dict[str, Tensor]:
        sde = self.sde
        dt, root = _step_sizes(t, self.ts)
        f = sde.f(t)
        # f = 0 (VE, EDM): the drift f x adds nothing, and is skipped
        self.f_zero = not bool((f != 0).any())
        out = {"g2": sde.g2(t), "dt": dt, "noise": sde.diffusion(t)[:-1] * root}
        return out if self.f_zero else {**out, "f": f}

    def move(
        self, i: int, x: Tensor, z: Tensor | None, tb: Tensor | None = None
    ) -> tuple[Tensor, X0]:
        c, tb = self.coefs(x), self.times(i, x) if tb is None else tb
        score = self.model.score(x, tb)
        # x + (f x - g^2 score) dt + g sqrt(-dt) z
        if self.f_zero:
            x_s = x - c["g2"][i] * score * c["dt"][i]
        else:
            x_s = x + (c["f"][i] * x - c["g2"][i] * score) * c["dt"][i]
        if z is not None:
            x_s = x_s + c["noise"][i] * z
        return x_s, deferred_x0(self.sde, score, x, tb)


def _transitions(sde, t: Tensor) -> tuple[Tensor, Tensor]:
    """a = alpha(t_i)/alpha(t_{i+1}) and the std G of each step's forward transition; (n,)."""
    return sde.transition(t[1:], t[:-1])


class ReverseDiffusion(_Predictor):
    """Song et al.'s reverse diffusion predictor: reverse the forward discretization s -> t.

    With the exact transition x_t = a x_s + G eps (a = alpha_t/alpha_s), the step is
    x_s = x_t - (a - 1) x_t + G^2 score + G z (their eq. 46; DDPM-style for VP, SMLD for VE).
    One evaluation per step.
    """

    def coefficients(self, t: Tensor) -> dict[str, Tensor]:
        a, G = _transitions(self.sde, t)
        self.unit = not bool((a != 1).any())  # (2 - 1) x is x exactly: skipped
        return {"two_minus_a": 2 - a, "G2": G**2, "G": G}

    def move(
        self, i: int, x: Tensor, z: Tensor | None, tb: Tensor | None = None
    ) -> tuple[Tensor, X0]:
        c, tb = self.coefs(x), self.times(i, x) if tb is None else tb
        score = self.model.score(x, tb)
        x_s = (x if self.unit else c["two_minus_a"][i] * x) + c["G2"][i] * score
        if z is not None:
            x_s = x_s + c["G"][i] * z
        return x_s, deferred_x0(self.sde, score, x, tb)


class Ancestral(_Predictor):
    """Ancestral sampling with the DDPM posterior q(x_s | x_t, x0 = E[x0 | x_t]) (DDPM for VP,
    SMLD for VE); one evaluation per step.

    Mean (x_t + G^2 score) / a, which is Ho et al.'s 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1 -
    alpha_bar_t) eps) for VP and SMLD's x_t + (sigma_t^2 - sigma_s^2) score for VE. Noise
    variance `variance`: "posterior" G^2 sigma_s^2 / sigma_t^2 (DDPM's beta-tilde; SMLD's
    choice), "forward" G^2 (beta), "learned" the model's own Sigma_theta(x_t, t) for the step
    t -> s (Nichol & Dhariwal 2021, eq. 15; a `LearnedVarianceModel`, whose mean and variance
    come from the same evaluation), or a callable (x, t, s) -> variance of shape (B,) or
    (B, *D), e.g. Analytic-DPM's (`sdegen.solvers.AnalyticDPMVariance`).
    """

    def __init__(self, model, sde, ts: Tensor, *, variance, **noise) -> None:
        super().__init__(model, sde, ts, **noise)
        self.variance = variance
        if callable(variance):
            self._variance_fn = variance
        else:
            check_choice("variance", variance, VARIANCES)
            self._variance_fn = _learned_variance(model) if variance == "learned" else None

    def coefficients(self, t: Tensor) -> dict[str, Tensor]:
        a, G = _transitions(self.sde, t)
        self.unit = not bool((a != 1).any())  # x / 1 is x exactly: skipped
        sigma = self.sde.sigma(t)
        posterior = G * sigma[1:] / sigma[:-1]
        return {"a": a, "G2": G**2, "std": posterior if self.variance == "posterior" else G}

    def move(
        self, i: int, x: Tensor, z: Tensor | None, tb: Tensor | None = None
    ) -> tuple[Tensor, X0]:
        c, tb = self.coefs(x), self.times(i, x) if tb is None else tb
        score = self.model.score(x, tb)
        x_s = x + c["G2"][i] * score
        if not self.unit:
            x_s = x_s / c["a"][i]
        if z is not None:
            if self._variance_fn is not None:
                var = _check_variance(self._variance_fn(x, tb, self.times(i + 1, x)), x, i)
                std = (var if var.ndim == x.ndim else _coef(var, x)).sqrt()
                x_s = x_s + std.to(x.dtype) * z
            else:
                x_s = x_s + c["std"][i] * z
        return x_s, deferred_x0(self.sde, score, x, tb)


VARIANCES = ("posterior", "forward", "learned")


def _check_variance(var, x: Tensor, i: int) -> Tensor:
    """`var`, the variance a variance callable returned at step i, when it is a float tensor of
    shape (B,) or x's with no negative or NaN entry; else ValueError (on a GPU the value check is
    an asynchronous assertion, so the step loop does not wait for the device)."""
    if not torch.is_tensor(var) or not var.is_floating_point():
        raise TypeError(f"variance(x, t, s) must return a float tensor, got {var!r}")
    if tuple(var.shape) not in ((x.shape[0],), tuple(x.shape)):
        raise ValueError(
            f"variance(x, t, s) must return shape ({x.shape[0]},) or {tuple(x.shape)}, got "
            f"{tuple(var.shape)}"
        )
    message = f"variance(x, t, s) returned a negative or NaN variance at step {i}"
    ok = (var >= 0).all()
    if var.device.type != "cpu":
        torch._assert_async(ok, message)
    elif not bool(ok):
        raise ValueError(message)
    return var


def _learned_variance(model) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The variance (x, t, s) -> (B, *D) of the model being counted, for variance="learned";
    the counter is looked through, so the variance reuses the counted evaluation."""
    inner = model.model if isinstance(model, CountingModel) else model
    fn = getattr(inner, "variance", None)
    if not callable(fn):
        raise TypeError(
            "variance='learned' needs a model with its own variance(x, t, s), such as "
            f"sdegen.models.LearnedVarianceModel (guidance wrappers do not carry one), got "
            f"{type(inner).__name__}"
        )
    return fn


def _norms(v: Tensor) -> Tensor:
    """The Euclidean norm of each example of v (B, *D): (B,) (Tensor.norm's kernel, called
    directly; a (B, D) state needs no reshape)."""
    return torch.linalg.vector_norm(v if v.ndim == 2 else v.reshape(v.shape[0], -1), dim=1)


def _langevin_update(x: Tensor, grad: Tensor, z: Tensor, two_a2, snr) -> Tensor:
    """x + e grad + sqrt(2 e) z with e = 2 a^2 (snr ||z|| / ||grad||)^2 (two_a2 = 2 a^2, of
    shape (B,) or a 0-dim tensor; snr a float or a 0-dim tensor in x's dtype), the norms
    averaged over the batch."""
    g_norm = _norms(grad).mean()
    z_norm = _norms(z).mean()
    step = two_a2 * (snr * z_norm / g_norm.clamp_min(1e-12)) ** 2
    if step.ndim:
        step = _coef(step, x)
    return x + step * grad + (step + step).sqrt() * z  # step + step is 2 step exactly


def langevin_correct(
    model, sde, x: Tensor, t: float, s: float, z: Tensor, snr: float, *, tb=None, sb=None
) -> Tensor:
    """One annealed Langevin corrector step at time t (Song et al. 2021, Algorithm 5).

    Step size 2 a^2 (snr ||z|| / ||score||)^2, a^2 = (alpha_t/alpha_s)^2 (1 - beta_i for VP, 1 for
    VE), with the norms averaged over the batch as in Song et al.'s code: per-example norms make
    the step explode wherever the score vanishes (at a mode), which low-dimensional data hit.
    """
    tb = batch_t(t, x) if tb is None else tb
    grad = model.score(x, tb)
    a, _ = sde.transition(batch_t(s, x) if sb is None else sb, tb)
    return _langevin_update(x, grad, z, 2 * a.to(x.dtype) ** 2, snr)


PREDICTORS: dict[str, Callable[..., _Predictor]] = {
    "reverse_diffusion": ReverseDiffusion,
    "euler_maruyama": EulerMaruyama,
    "ancestral": partial(Ancestral, variance="posterior"),
}


class PC(_Predictor):
    """Predictor-corrector sampling (Song et al. 2021, Algorithm 1 style): at each grid time,
    `corrector_steps` Langevin corrections (signal-to-noise ratio `snr`; 0.16 is their CIFAR-10
    VE setting) then one `predictor` step; (1 + corrector_steps) evaluations per step. The
    x0 estimate passed on is the predictor's, at the corrected point.
    """

    def __init__(
        self, model, sde, ts: Tensor, *, snr: float, corrector_steps: int, predictor: str, **noise
    ) -> None:
        super().__init__(model, sde, ts, **noise)
        self.snr = check_finite_number("snr", snr, positive=True)
        if not isinstance(corrector_steps, int) or corrector_steps < 0:
            raise ValueError(f"corrector_steps must be an integer >= 0, got {corrector_steps!r}")
        self.corrector_steps = corrector_steps
        self.predictor = PREDICTORS[check_choice("predictor", predictor, PREDICTORS)](
            model, sde, ts, **noise
        )
        self._rows = self.predictor._rows = TimeRows(ts.tolist())  # one copy of the times

    def coefficients(self, t: Tensor) -> dict[str, Tensor]:
        a, _ = _transitions(self.sde, t)
        # langevin_correct's 2 a^2, and snr in x's dtype
        return {"two_a2": 2 * a**2, "snr": torch.full_like(a, self.snr)}

    def step(self, i: int, x: Tensor) -> tuple[Tensor, X0]:
        z = randn_like(x, self.generator) if self.adds_noise(i) else None
        if self.corrector_steps:
            c, tb = self.coefs(x), self.times(i, x)
            for _ in range(self.corrector_steps):
                z_c = randn_like(x, self.generator)
                x = _langevin_update(x, self.model.score(x, tb), z_c, c["two_a2"][i], c["snr"][i])
            return self.predictor.move(i, x, z, tb)
        return self.predictor.move(i, x, z)


def __getattr__(name: str):
    # the function forms these steps had before the one loop (deprecated)
    from ._deprecated import legacy

    return legacy(__name__, name)
