"""Reverse-time SDE steps (Song et al. 2021, Appendix E and G), for any linear SDE:
Euler-Maruyama, the reverse diffusion predictor, ancestral sampling and predictor-corrector.

The reverse SDE is dx = [f(t) x - g(t)^2 score(x, t)] dt + g(t) dW_bar, integrated from T to t_min.
Each step draws its noise z first (none on an un-denoised last step, Song et al.'s convention
when no denoising step follows) and moves x from t to s < t with one score evaluation.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from torch import Tensor

from .._utils import append_dims, check_choice, check_finite_number
from .counting import CountingModel
from .exp_quadrature import TimeRows
from .grid import GridMethod, Record, batch_t, randn_like, score_to_x0

__all__ = ["EulerMaruyama", "ReverseDiffusion", "Ancestral", "PC", "PREDICTORS", "Record"]


def _coef(v: Tensor, x: Tensor) -> Tensor:
    return append_dims(v.to(x.dtype), x.ndim)


class _Predictor(GridMethod):
    """A reverse-SDE step from t to s given fresh noise z (None: the mean step). The grid's
    times are read from the CPU float64 grid once per solve (no device involved) and reach the
    model as rows of one tensor (`TimeRows`), not as a tensor made per step."""

    def grid_times(self, i: int, x: Tensor) -> tuple[float, float, Tensor, Tensor]:
        """t = ts[i] and s = ts[i + 1], as floats and as (B,) tensors for x."""
        rows = getattr(self, "_rows", None)
        if rows is None:
            rows = self._rows = TimeRows(self.ts.tolist())
        return rows.times[i], rows.times[i + 1], rows(i, x), rows(i + 1, x)

    def step(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        z = randn_like(x, self.generator) if self.adds_noise(i) else None
        t, s, tb, sb = self.grid_times(i, x)
        return self.predict(x, t, s, z, tb=tb, sb=sb)

    def predict(
        self, x: Tensor, t: float, s: float, z: Tensor | None, *, tb=None, sb=None
    ) -> tuple[Tensor, Tensor]:
        """x at s, and the x0 estimate at (x, t); tb, sb: t and s as (B,) tensors for x, when
        the caller has them."""
        raise NotImplementedError


class EulerMaruyama(_Predictor):
    """Euler-Maruyama on the reverse SDE; one evaluation per step."""

    def predict(
        self, x: Tensor, t: float, s: float, z: Tensor | None, *, tb=None, sb=None
    ) -> tuple[Tensor, Tensor]:
        tb, dt = batch_t(t, x) if tb is None else tb, s - t
        score = self.model.score(x, tb)
        drift = self.sde.drift(x, tb) - _coef(self.sde.g2(tb), x) * score
        x_s = x + drift * dt
        if z is not None:
            x_s = x_s + _coef(self.sde.diffusion(tb), x) * (-dt) ** 0.5 * z
        return x_s, score_to_x0(self.sde, score, x, tb)


class ReverseDiffusion(_Predictor):
    """Song et al.'s reverse diffusion predictor: reverse the forward discretization s -> t.

    With the exact transition x_t = a x_s + G eps (a = alpha_t/alpha_s), the step is
    x_s = x_t - (a - 1) x_t + G^2 score + G z (their eq. 46; DDPM-style for VP, SMLD for VE).
    One evaluation per step.
    """

    def predict(
        self, x: Tensor, t: float, s: float, z: Tensor | None, *, tb=None, sb=None
    ) -> tuple[Tensor, Tensor]:
        tb = batch_t(t, x) if tb is None else tb
        a, G = self.sde.transition(batch_t(s, x) if sb is None else sb, tb)
        score = self.model.score(x, tb)
        x_s = (2 - _coef(a, x)) * x + _coef(G**2, x) * score
        if z is not None:
            x_s = x_s + _coef(G, x) * z
        return x_s, score_to_x0(self.sde, score, x, tb)


class Ancestral(_Predictor):
    """Ancestral sampling with the DDPM posterior q(x_s | x_t, x0 = E[x0 | x_t]) (DDPM for VP,
    SMLD for VE); one evaluation per step.

    Mean (x_t + G^2 score) / a, which is Ho et al.'s 1/sqrt(alpha_t) (x_t - beta_t/sqrt(1 -
    alpha_bar_t) eps) for VP and SMLD's x_t + (sigma_t^2 - sigma_s^2) score for VE. Noise
    variance `variance`: "posterior" G^2 sigma_s^2 / sigma_t^2 (DDPM's beta-tilde; SMLD's
    choice), "forward" G^2 (beta), "learned" the model's own Sigma_theta(x_t, t) for the step
    t -> s (Nichol & Dhariwal 2021, eq. 15; a `LearnedVarianceModel`, whose mean and variance
    come from the same evaluation), or a callable (x, t, s) -> variance of shape (B,) or
    (B, *D), e.g. Analytic-DPM's (`sdegen.models.AnalyticDPMVariance`).
    """

    def __init__(self, model, sde, ts: Tensor, *, variance, **noise) -> None:
        super().__init__(model, sde, ts, **noise)
        self.variance = variance
        if callable(variance):
            self._variance_fn = variance
        else:
            check_choice("variance", variance, VARIANCES)
            self._variance_fn = _learned_variance(model) if variance == "learned" else None

    def predict(
        self, x: Tensor, t: float, s: float, z: Tensor | None, *, tb=None, sb=None
    ) -> tuple[Tensor, Tensor]:
        tb = batch_t(t, x) if tb is None else tb
        sb = batch_t(s, x) if sb is None else sb
        a, G = self.sde.transition(sb, tb)
        score = self.model.score(x, tb)
        x_s = (x + _coef(G**2, x) * score) / _coef(a, x)
        if z is not None:
            if self._variance_fn is not None:
                var = self._variance_fn(x, tb, sb)
                std = (var if var.ndim == x.ndim else _coef(var, x)).clamp_min(0).sqrt()
            elif self.variance == "posterior":
                std = _coef(G * self.sde.sigma(sb) / self.sde.sigma(tb), x)
            else:
                std = _coef(G, x)
            x_s = x_s + std.to(x.dtype) * z
        return x_s, score_to_x0(self.sde, score, x, tb)


VARIANCES = ("posterior", "forward", "learned")


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
    g_norm = grad.reshape(x.shape[0], -1).norm(dim=1).mean()
    z_norm = z.reshape(x.shape[0], -1).norm(dim=1).mean()
    step = 2 * a.to(x.dtype) ** 2 * (snr * z_norm / g_norm.clamp_min(1e-12)) ** 2
    return x + _coef(step, x) * grad + _coef((2 * step).sqrt(), x) * z


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

    def step(self, i: int, x: Tensor) -> tuple[Tensor, Tensor]:
        z = randn_like(x, self.generator) if self.adds_noise(i) else None
        t, s, tb, sb = self.grid_times(i, x)
        for _ in range(self.corrector_steps):
            z_c = randn_like(x, self.generator)
            x = langevin_correct(self.model, self.sde, x, t, s, z_c, self.snr, tb=tb, sb=sb)
        return self.predictor.predict(x, t, s, z, tb=tb, sb=sb)


def __getattr__(name: str):
    # the function forms these steps had before the one loop (deprecated)
    from ._deprecated import legacy

    return legacy(__name__, name)
