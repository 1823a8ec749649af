"""A score model and its SDE as a density model: PF-ODE likelihood and the reverse-SDE bound.

`ScoreSDEDensity` puts score-based models behind the same API as the flows, VAE and GAN
(`sdegen.models.density.DensityModel`), so one script can evaluate every family alike. It
composes models, solvers and the training loss, so it sits above all three layers.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._ode import TRACES, check_ode_settings
from ._utils import append_dims, check_choice, check_int, sum_except_batch
from .divergence import exact_divergence, hutchinson_divergence, probes_like
from .models.base import check_event_shape, check_sde
from .models.density import DensityModel
from .protocols import SDE, ScoreModelLike, ScoreModelWithSDE
from .solvers import DEFAULT_METHOD, METHODS
from .solvers import sample as _sample
from .solvers.likelihood import (
    ANGLE_NEEDS,
    SDE_NEEDS,
    TIMES,
    check_likelihood_x,
    log_likelihood,
    pf_ode_sample,
    resolve_method,
)
from .solvers.results import LikelihoodResult
from .training.losses import dsm_loss


class ScoreSDEDensity(DensityModel):
    """The density of a score-based model through its probability-flow ODE.

    log_prob is exact up to the ODE tolerance (trace="exact") or an unbiased estimate of that
    (trace="hutchinson"); `sde_bound` is Song et al.'s variational upper bound on -log p of the
    reverse-SDE model, so the two can be reported side by side.

    Args:
        model: a score model (score/denoise/eps), e.g. ScoreModel or an analytic one.
        sde: its SDE.
        event_shape: shape of one example.
        trace, probes, noise, rtol, atol, method, time: default PF-ODE settings, checked here
            by the same functions as in `log_likelihood` (method: "auto" (default), sdegen's own
            pairs "dopri5", "tsit5", "bs3", or "torchdiffeq:NAME"; time: "angle" or "t").
            log_prob, rsample and sample_and_log_prob all make that one solve
            (`sdegen.solvers.likelihood`), forwards for log_prob and backwards from the prior
            for the other two, so a sample and its log-density come from the same integrator at
            the same tolerance; log_prob's calls may override the settings.
        sampler, nfe: default sampler (a name in `sdegen.solvers.METHODS`) and NFE budget (an
            integer >= 1) of `sample`.

    Example:
        With the exact score of N(0, I) data, whose VP marginals are all N(0, I), the PF-ODE
        log-density is N(0, I)'s up to the ODE tolerance:

        >>> import torch
        >>> import sdegen
        >>> from sdegen.score_density import ScoreSDEDensity
        >>> sde = sdegen.VPSDE()
        >>> model = sdegen.GaussianScore([0.0, 0.0], torch.eye(2), sde)
        >>> density = ScoreSDEDensity(model, sde, (2,))
        >>> x = torch.tensor([[0.0, 0.0], [1.0, -1.0]], dtype=torch.float64)
        >>> normal = torch.distributions.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
        >>> torch.allclose(density.log_prob(x), normal.log_prob(x).sum(1), atol=1e-4)
        True
        >>> density.sample(5, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """

    log_prob_kind = "ode"
    has_rsample = True

    def __init__(
        self,
        model: ScoreModelLike,
        sde: SDE,
        event_shape: tuple[int, ...],
        *,
        trace: str = "exact",
        probes: int = 1,
        noise: str = "rademacher",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        method: str = "auto",
        time: str = "angle",
        sampler: str = DEFAULT_METHOD,
        nfe: int = 50,
    ) -> None:
        super().__init__()
        if not callable(getattr(model, "score", None)):
            raise TypeError(
                f"model must be a score model with score(x, t), got {type(model).__name__}"
            )
        time = check_choice("time", time, TIMES)
        self.model, self.sde = model, check_sde(sde, ANGLE_NEEDS if time == "angle" else SDE_NEEDS)
        self.event_shape = check_event_shape(event_shape)
        self.defaults = check_ode_settings(
            trace=trace,
            probes=probes,
            noise=noise,
            rtol=rtol,
            atol=atol,
            method=method,
            method_check=resolve_method,
        )
        # log_likelihood takes the name and resolves it itself
        self.defaults.update(method=method, time=time)
        self.sampler = check_choice("sampler", sampler, METHODS)
        self.nfe = check_int("nfe", nfe)

    def log_prob_with_stats(
        self, x: Tensor, *, generator: torch.Generator | None = None, **settings
    ) -> LikelihoodResult:
        """log p(x) and solver statistics (NFE, VJPs); settings as in log_likelihood."""
        self.check_x(x)
        return log_likelihood(
            self.model, self.sde, x, generator=generator, **{**self.defaults, **settings}
        )

    def log_prob(
        self, x: Tensor, *, generator: torch.Generator | None = None, **settings
    ) -> Tensor:
        """log p_{t_min}(x) in nats through the PF-ODE; x (B, *event_shape) -> (B,)."""
        return self.log_prob_with_stats(x, generator=generator, **settings).log_prob

    def sample(self, n: int, generator: torch.Generator | None = None, **kwargs) -> Tensor:
        """n samples with the default sampler and NFE (keyword arguments as sdegen.sample)."""
        kw = {"method": self.sampler, "nfe": self.nfe, **kwargs}
        if kw["method"] == "dopri5":
            kw.pop("nfe")
        return _sample(
            self.model,
            self.sde,
            (n, *self.event_shape),
            generator=generator,
            denoise_final=False,
            **kw,
        ).x

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n reparametrized samples (n, *event_shape): the prior draw z (drawn with
        `generator`) carried from T to t_min by the PF-ODE solve of `log_prob` (same variable,
        method, rtol and atol; the state alone, no divergence), differentiable in the score
        model's parameters by backpropagation through the solver. These are draws of the
        density `log_prob` reports (the x of `sample_and_log_prob`, up to the tolerance);
        `sample` runs the configured `sampler` instead, so for one seed the two differ by its
        discretisation error."""
        x, _ = pf_ode_sample(
            self.model,
            self.sde,
            self._prior_draw(n, generator),
            log_prob=False,
            differentiable=True,
            **self._solve_settings(),
        )
        return x

    def sample_and_log_prob(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples (n, *event_shape) and their log-density (n,) in ONE PF-ODE solve from the
        prior to t_min: the solve of `log_prob` run backwards, with the divergence carried
        along (along the flow d log p_t(x_t)/dt = -div v), so no second solve. The default
        trace (exact unless set otherwise; Hutchinson probes drawn from `generator` after z)."""
        x, res = pf_ode_sample(
            self.model,
            self.sde,
            self._prior_draw(n, generator),
            generator=generator,
            **self._solve_settings(),
            **{k: self.defaults[k] for k in ("trace", "probes", "noise")},
        )
        if res is None:  # unreachable: log_prob=True returns the log-density
            raise RuntimeError("sample_and_log_prob: the solve returned no log-density")
        return x, res.log_prob

    def _prior_draw(self, n: int, generator: torch.Generator | None) -> Tensor:
        """n draws (n, *event_shape) of the SDE's prior in the default dtype."""
        check_int("n", n)
        return self.sde.prior_sample(
            (n, *self.event_shape), generator=generator, dtype=torch.get_default_dtype()
        )

    def _solve_settings(self) -> dict:
        """The default solve's integrator settings (method, rtol, atol, time)."""
        return {k: self.defaults[k] for k in ("method", "rtol", "atol", "time")}

    def sde_bound(
        self,
        x: Tensor,
        *,
        time_points: int = 64,
        trace: str = "exact",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Song, Durkan et al. 2021 (Theorem 1): an upper bound on -log p of the reverse-SDE
        model at x, in nats, shape (B,).

        With the forward kernel from t_min, q_t(. | x) = N(a x, G^2 I) (a, G: sde.transition),
            B(x) = -E log pi(x_T) + 1/2 int_{t_min}^T E[ g^2 (||s||^2 + 2 div s) - 2 f D ] dt,
        the form that Stein's lemma gives their g^2 ||s - grad log q||^2 - g^2 ||grad log q||^2
        term (no 1/G singularity at t_min). The prior term is in closed form; the time integral
        is estimated with `time_points` stratified uniform times and one noise draw each,
        div s exactly or by one Hutchinson probe. With the exact score and prior p_T the bound
        equals -log p(x).
        """
        self.check_x(x)
        check_likelihood_x(x)
        check_int("time_points", time_points)
        check_choice("trace", trace, TRACES)
        sde, B, D = self.sde, x.shape[0], math.prod(self.event_shape)
        t0 = torch.full((B,), sde.t_min, dtype=x.dtype)
        # -E log pi(x_T) for x_T ~ N(a_T x, G_T^2 I) and pi = N(0, p^2 I)
        a_T, G_T = sde.transition(t0, torch.full((B,), sde.T, dtype=x.dtype))
        p2 = sde.prior_std**2
        prior = 0.5 * (a_T**2 * sum_except_batch(x**2) + D * G_T**2) / p2 + D * (
            0.5 * math.log(2 * math.pi * p2)
        )
        u = torch.rand(time_points, generator=generator, dtype=torch.float64)
        ts = sde.t_min + (torch.arange(time_points) + u) / time_points * (sde.T - sde.t_min)
        total = torch.zeros(B, dtype=x.dtype)
        for t in ts.tolist():
            tb = torch.full((B,), t, dtype=x.dtype)
            a, G = sde.transition(t0, tb)
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            with torch.enable_grad():
                xt = (append_dims(a, x.ndim) * x + append_dims(G, x.ndim) * eps).requires_grad_()
                s = self.model.score(xt, tb)
                if trace == "exact":
                    div = exact_divergence(s, xt)
                else:
                    div = hutchinson_divergence(s, xt, probes_like(xt, 1, generator=generator))
            integrand = sde.g2(tb) * (sum_except_batch(s.detach() ** 2) + 2 * div.detach())
            total = total + 0.5 * (integrand - 2 * sde.f(tb) * D)
        return prior + total * (sde.T - sde.t_min) / time_points

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Likelihood-weighted denoising score matching: the bound up to terms free of the model."""
        if not isinstance(self.model, ScoreModelWithSDE):
            raise TypeError(
                f"loss needs a score model that carries its SDE (.sde, e.g. ScoreModel), got "
                f"{type(self.model).__name__}"
            )
        return dsm_loss(self.model, x, weighting="likelihood", generator=generator)
