"""One density API for every model family, and bits per dimension.

Every density model has `log_prob(x) -> (B,)` in nats, `sample(n, generator=None)`,
`rsample(n, generator=None)` where `has_rsample`, `sample_and_log_prob(n, generator=None)`,
`event_shape`, `bits_per_dim(x, bin_width)`, `distribution()` (the model as a
`torch.distributions.Distribution`, `sdegen.models.distribution.ModelDistribution`) and
`log_prob_kind`, which says what kind of number `log_prob` is:

    "exact"     exact (RealNVP, Glow)
    "ode"       exact up to an ODE tolerance, with an exact or Hutchinson trace (FFJORD, score SDE)
    "bound"     a lower bound on log p (VAE's ELBO)
    "estimate"  a stochastic estimate (importance-weighted)
    "none"      no density (GAN): log_prob raises
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .._utils import check_finite_number, check_int

if TYPE_CHECKING:
    from .distribution import ModelDistribution

LOG_PROB_KINDS = ("exact", "ode", "bound", "estimate", "none")


def bits_per_dim(log_prob: Tensor, num_dims: int, bin_width: float) -> Tensor:
    """Bits per dimension of discrete data from a continuous log-density under uniform
    dequantization.

    For data quantized into bins of width `bin_width` (2/256 for 8-bit data scaled to [-1, 1];
    2/2^b for b bits; 2/17 for the 8x8 digits, 17 grey levels in [-1, 1]) and x + u with u
    uniform in a bin, the discrete log-probability is at least log p(x + u) + D log(bin_width)
    (Theis et al. 2016). So bpd = -(log_prob + D log bin_width) / (D log 2).
    log_prob: (B,) in nats -> (B,).

    Example:
        The uniform density on [-1, 1]^3, log p = -3 log 2, costs 8 bits per dimension of
        8-bit data:

        >>> import math, torch
        >>> from sdegen.models.density import bits_per_dim
        >>> round(float(bits_per_dim(torch.tensor([-3 * math.log(2)]), 3, 2 / 256)), 6)
        8.0
    """
    num_dims = check_int("num_dims", num_dims)
    bin_width = check_finite_number("bin_width", bin_width, positive=True)
    return -(log_prob + num_dims * math.log(bin_width)) / (num_dims * math.log(2))


class DensityModel(nn.Module):
    """Base class of the density models. Subclasses set `event_shape` and `log_prob_kind` and
    implement `log_prob`, `sample` and `loss` (the training objective on a batch); those whose
    samples are a differentiable function of the parameters and of noise also implement
    `rsample` and set `has_rsample`."""

    event_shape: tuple[int, ...] = ()
    log_prob_kind: str = "exact"
    # True where `rsample` gives reparametrized samples (gradients reach the parameters).
    has_rsample: bool = False
    # True for models whose layers do not cast their input: x must then have the dtype of the
    # parameters, and check_x says so instead of torch's "mat1 and mat2 must have the same dtype".
    needs_parameter_dtype: bool = False

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) in nats, x of shape (B, *event_shape) -> (B,)."""
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples of shape (n, *event_shape)."""
        raise NotImplementedError

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n reparametrized samples (n, *event_shape): a differentiable function of the
        model's parameters and of noise drawn with `generator`. NotImplementedError where the
        model has none (`has_rsample` False)."""
        raise NotImplementedError(
            f"{type(self).__name__} draws no reparametrized samples (has_rsample is False); "
            "use sample(), which has no gradients"
        )

    def distribution(
        self, *, validate_args: bool | None = None, **log_prob_options: Any
    ) -> ModelDistribution:
        """The model as a torch Distribution (batch_shape (), event_shape the model's), a view
        that follows the model: see `sdegen.models.distribution.ModelDistribution`. Keyword
        arguments are passed to every `log_prob` call (e.g. k=100 for the VAE)."""
        from .distribution import ModelDistribution  # it imports this module

        return ModelDistribution(
            self, log_prob_options=log_prob_options, validate_args=validate_args
        )

    def sample_and_log_prob(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Samples and their log-density; models that can do both in one pass override this."""
        x = self.sample(n, generator=generator)
        return x, self.log_prob(x)

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The scalar training objective on a batch x (negative log-likelihood by default)."""
        return -self.log_prob(x).mean()

    def bits_per_dim(self, x: Tensor, bin_width: float) -> Tensor:
        """Bits per dimension of x (B, *event_shape) -> (B,); see `bits_per_dim`."""
        return bits_per_dim(self.log_prob(x), math.prod(self.event_shape), bin_width)

    def check_x(self, x: Tensor) -> None:
        """Raise ValueError unless x is a finite tensor of shape (B, *event_shape) with B >= 1;
        TypeError unless it is floating-point (of the parameters' dtype where the model needs
        it, `needs_parameter_dtype`)."""
        if not torch.is_tensor(x) or tuple(x.shape[1:]) != tuple(self.event_shape):
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, self.event_shape))}), got {got}"
            )
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        if x.shape[0] == 0:
            raise ValueError(f"x must hold at least one example (batch >= 1), got {tuple(x.shape)}")
        if self.needs_parameter_dtype:
            dtype = next((p.dtype for p in self.parameters() if p.is_floating_point()), x.dtype)
            if x.dtype != dtype:
                raise TypeError(
                    f"x must have the dtype of the model's parameters, {dtype}, got {x.dtype}; "
                    f"convert x with x.to({dtype}) or the model with model.to({x.dtype})"
                )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("x holds NaN or inf")
