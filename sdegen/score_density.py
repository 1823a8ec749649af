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
from .solvers.grid import batch_t
from .solvers.likelihood import SDE_NEEDS, check_likelihood_x, log_likelihood
from .solvers.pf_ode import integrate, ode_drift
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
        trace, probes, noise, rtol, atol, method: default PF-ODE settings, checked here as in
            `log_likelihood`; each call may override.
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
        method: str = "dopri5",
        sampler: str = DEFAULT_METHOD,
        nfe: int = 50,
    ) -> None:
        super().__init__()
        if not callable(getattr(model, "score", None)):
            raise TypeError(
                f"model must be a score model with score(x, t), got {type(model).__name__}"
            )
        self.model, self.sde = model, check_sde(sde, SDE_NEEDS)
        self.event_shape = check_event_shape(event_shape)
        self.defaults = check_ode_settings(
            trace=trace, probes=probes, noise=noise, rtol=rtol, atol=atol, method=method
        )
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
        `generator`) carried from T to t_min by the PF-ODE with the default method, rtol and
        atol, differentiable in the score model's parameters by backpropagation through the
        solver. These are draws of the density `log_prob` reports (the x of
        `sample_and_log_prob`, up to the tolerance); `sample` runs the configured `sampler`
        instead, so for one seed the two differ by its discretisation error."""
        check_int("n", n)
        d = self.defaults
        z = self.sde.prior_sample(
            (n, *self.event_shape), generator=generator, dtype=torch.get_default_dtype()
        )

        def func(t: Tensor, x: Tensor) -> Tensor:
            # an adaptive step's time depends on x; the model reads it as a number
            return ode_drift(self.model, self.sde, x, batch_t(float(t.detach()), x))

        ts = torch.tensor([self.sde.T, self.sde.t_min], dtype=z.dtype)
        xs = integrate(func, z, ts, self.sde, method=d["method"], rtol=d["rtol"], atol=d["atol"])
        return xs[-1]

    def sample_and_log_prob(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples and their log-density in ONE PF-ODE solve from the prior to t_min.

        Along the flow d log p_t(x_t)/dt = -div v, so carrying the divergence backwards from
        log pi(z) gives log p_{t_min}(x) without a second solve. Exact trace.
        """
        check_int("n", n)
        d = self.defaults
        z = self.sde.prior_sample(
            (n, *self.event_shape), generator=generator, dtype=torch.get_default_dtype()
        )

        def func(t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
            with torch.enable_grad():
                y = state[0].detach().requires_grad_(True)
                v = ode_drift(self.model, self.sde, y, batch_t(float(t), y))
                div = exact_divergence(v, y)
            return v.detach(), -div.detach()

        ts = torch.tensor([self.sde.T, self.sde.t_min], dtype=z.dtype)
        with torch.no_grad():
            xs, logps = integrate(
                func,
                (z, self.sde.prior_log_prob(z)),
                ts,
                self.sde,
                method=d["method"],
                rtol=d["rtol"],
                atol=d["atol"],
            )
        return xs[-1], logps[-1]

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
