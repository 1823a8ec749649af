"""Every density model as a `torch.distributions.Distribution` (zuko's "a flow is a
Distribution"), so `sample(sample_shape)`, `rsample` and `log_prob` compose with the rest of
torch (`Independent`, `TransformedDistribution`, Monte Carlo KL and entropy estimates).

`ModelDistribution(model)`, or `model.distribution()`, is a view: it holds the model, not a
copy, so it follows the model's training. Its batch_shape is () and its event_shape the model's;
a value of shape (*sample_shape, *event_shape) is flattened to a batch of prod(sample_shape)
examples for the model and the result reshaped back.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution, constraints

from .density import DensityModel

_Shape = torch.Size | tuple[int, ...] | list[int]
_NO_SAMPLE_DIMS = torch.Size()


def _sample_shape(sample_shape: Any) -> torch.Size:
    try:
        shape = torch.Size(sample_shape)
    except TypeError:
        shape = None
    if shape is None or any(s < 0 for s in shape):
        raise TypeError(
            "sample_shape must be a sequence of non-negative ints, e.g. (3, 2) or torch.Size(), "
            f"got {sample_shape!r}"
        )
    return shape


class ModelDistribution(Distribution):
    """A density model as a torch Distribution with batch_shape () and the model's event_shape.

    Args:
        model: a `DensityModel`.
        log_prob_options: keyword arguments every `log_prob` call passes to `model.log_prob`
            (e.g. {"k": 100} for the VAE's estimate, {"differentiable": True} for a score
            model's PF-ODE); a call's own keywords override them.
        validate_args: as in torch; when on (torch's default under `__debug__`), `log_prob` also
            checks that the value lies in `support`. The event shape is always checked.

    What the numbers are is the model's `log_prob_kind`, exposed here: "exact" (flows),
    "ode" (exact up to the solver tolerance: FFJORD, the score model's PF-ODE), "estimate"
    (the VAE's importance-weighted estimate, biased low), "bound", or "none" (a GAN:
    `log_prob` raises TypeError). `has_rsample` is the model's: True where `rsample` is a
    differentiable function of the parameters (flows, FFJORD, the PF-ODE, the Gaussian VAE,
    the GAN's generator), False where draws are discrete (the VAE's Bernoulli and discretized
    decoders), and `rsample` then raises NotImplementedError.

    torch's `sample` and `rsample` take no random generator; these take an optional keyword
    `generator=` (a `torch.Generator`) so draws are reproducible; without it they use torch's
    global generator. `mean`, `variance` and `entropy` are not available in closed form and
    raise NotImplementedError, as torch's base class does; estimate them from samples, e.g.
    `-dist.log_prob(dist.rsample((n,))).mean()` for the entropy.

    Example:
        >>> import torch
        >>> from sdegen.models import RealNVP
        >>> dist = RealNVP(2, num_layers=2, hidden=8).distribution()
        >>> x = dist.rsample((3, 4), generator=torch.Generator().manual_seed(0))
        >>> x.shape, dist.log_prob(x).shape, dist.batch_shape, dist.event_shape
        (torch.Size([3, 4, 2]), torch.Size([3, 4]), torch.Size([]), torch.Size([2]))
        >>> shifted = torch.distributions.TransformedDistribution(
        ...     dist, [torch.distributions.AffineTransform(1.0, 2.0, event_dim=1)])
        >>> shifted.log_prob(1 + 2 * x).shape
        torch.Size([3, 4])
    """

    arg_constraints: dict[str, constraints.Constraint] = {}

    def __init__(
        self,
        model: DensityModel,
        *,
        log_prob_options: dict[str, Any] | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(model, DensityModel):
            raise TypeError(f"model must be a DensityModel, got {type(model).__name__}")
        self.model = model
        self.log_prob_options = dict(log_prob_options or {})
        self.has_rsample = bool(model.has_rsample)
        super().__init__(torch.Size(), torch.Size(model.event_shape), validate_args=validate_args)

    @property
    def log_prob_kind(self) -> str:
        """The model's `log_prob_kind`: "exact", "ode", "bound", "estimate" or "none"."""
        return self.model.log_prob_kind

    @property
    def support(self) -> constraints.Constraint:
        """Real vectors of the event shape, constraints.independent(real, len(event_shape)).
        The model's log_prob may check a narrower domain (the VAE's Bernoulli decoder takes
        [0, 1], its discretized one [-1, 1]) and raises ValueError outside it."""
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape: _Shape, _instance: Any = None) -> ModelDistribution:
        """Itself for batch_shape (); a model has no batch of parameters to expand."""
        if torch.Size(batch_shape) != torch.Size():
            raise NotImplementedError(
                f"a ModelDistribution has batch_shape () and cannot be expanded to "
                f"{tuple(batch_shape)}; wrap it, e.g. torch.distributions.Independent, or draw "
                f"sample_shape={tuple(batch_shape)} instead"
            )
        return self

    def _draw(self, sample_shape: Any, generator: torch.Generator | None, rsample: bool) -> Tensor:
        shape = _sample_shape(sample_shape)
        n = math.prod(shape)
        draw = self.model.rsample if rsample else self.model.sample
        # models draw at least one example: a size-0 request takes one and keeps none
        x = draw(max(n, 1), generator=generator)[:n]
        return x.reshape(*shape, *self.event_shape)

    def sample(
        self, sample_shape: _Shape = _NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draws of shape (*sample_shape, *event_shape), without gradients: the model's
        `sample(prod(sample_shape), generator)` reshaped. For a score model that is its
        configured sampler (ScoreSDEDensity's `sampler`, `nfe`), a discretisation of the
        PF-ODE whose density `log_prob` reports; `rsample` solves that ODE itself."""
        with torch.no_grad():
            return self._draw(sample_shape, generator, rsample=False)

    def rsample(
        self, sample_shape: _Shape = _NO_SAMPLE_DIMS, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Reparametrized draws of shape (*sample_shape, *event_shape): the model's
        `rsample(prod(sample_shape), generator)` reshaped, differentiable in the model's
        parameters. NotImplementedError (naming the reason) where `has_rsample` is False."""
        return self._draw(sample_shape, generator, rsample=True)

    def log_prob(self, value: Tensor, **options: Any) -> Tensor:
        """The model's log_prob of value (*sample_shape, *event_shape) -> (*sample_shape,), in
        nats; keywords (over `log_prob_options`) go to `model.log_prob`.

        It is what the model's log_prob is, `log_prob_kind`: exact for the flows, exact up to
        the ODE tolerance for FFJORD and the score model's PF-ODE, a stochastic
        importance-weighted estimate of log p (biased low; a lower bound in expectation) for
        the VAE, and for a GAN, which defines no density, it raises TypeError. ValueError when
        value's trailing dims are not event_shape (naming both)."""
        event = tuple(self.event_shape)
        if not torch.is_tensor(value):
            raise TypeError(f"value must be a tensor, got {type(value).__name__}")
        k = len(event)
        if value.ndim < k or tuple(value.shape[value.ndim - k :]) != event:
            raise ValueError(
                f"value must have shape (*sample_shape, {', '.join(map(str, event))}) for "
                f"event_shape {event}, got {tuple(value.shape)}"
            )
        sample_shape = value.shape[: value.ndim - k]
        if value.numel() == 0 and self.log_prob_kind != "none":
            return value.new_zeros(sample_shape)
        if self._validate_args:
            self._validate_sample(value)
        flat = value.reshape(-1, *event)
        lp = self.model.log_prob(flat, **{**self.log_prob_options, **options})
        return lp.reshape(sample_shape)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({type(self.model).__name__}, event_shape="
            f"{tuple(self.event_shape)}, log_prob_kind={self.log_prob_kind!r}, "
            f"has_rsample={self.has_rsample})"
        )
