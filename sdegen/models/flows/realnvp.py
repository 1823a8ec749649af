"""RealNVP (Dinh et al. 2017) flows for vectors and images, with optional Glow layers.

Both models are exact-likelihood `DensityModel`s with a standard normal base:
log p(x) = log N(z; 0, I) + log|det dz/dx| with (z, logdet) = model(x), and sampling runs the
layers backwards from z ~ N(0, I).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import cast

import torch
from torch import Tensor, nn

from ..._utils import check_int
from ..density import DensityModel
from .layers import (
    ActNorm,
    AffineCoupling,
    Chain,
    FactorOut,
    InvConv1x1,
    Invert,
    Squeeze,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
)


def _zero_last(net: nn.Sequential, zero_init: bool) -> nn.Sequential:
    # A zero last layer makes every coupling the identity at init (Dinh et al. 2017).
    last = cast(nn.Linear | nn.Conv2d, net[-1])
    if zero_init:
        nn.init.zeros_(last.weight)
        if last.bias is not None:
            nn.init.zeros_(last.bias)
    return net


def coupling_mlp(dim: int, hidden: int, zero_init: bool = True) -> nn.Sequential:
    """The RealNVP vector conditioner: an MLP (B, dim) -> (B, 2 dim) with two SiLU hidden layers."""
    net = nn.Sequential(
        nn.Linear(dim, hidden),
        nn.SiLU(),
        nn.Linear(hidden, hidden),
        nn.SiLU(),
        nn.Linear(hidden, 2 * dim),
    )
    return _zero_last(net, zero_init)


def coupling_convnet(channels: int, hidden: int, zero_init: bool = True) -> nn.Sequential:
    """The RealNVP image conditioner: 3x3, 1x1 and 3x3 convs with SiLU in between,
    (B, C, H, W) -> (B, 2C, H, W)."""
    net = nn.Sequential(
        nn.Conv2d(channels, hidden, 3, padding=1),
        nn.SiLU(),
        nn.Conv2d(hidden, hidden, 1),
        nn.SiLU(),
        nn.Conv2d(hidden, 2 * channels, 3, padding=1),
    )
    return _zero_last(net, zero_init)


def _check_bool(name: str, value: bool) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


class _Flow(DensityModel):
    """A stack of invertible layers over a standard normal base; subclasses fill `layers`."""

    log_prob_kind = "exact"
    has_rsample = True
    layers: Chain

    def _check_z(self, z: Tensor) -> None:
        if not torch.is_tensor(z) or tuple(z.shape[1:]) != tuple(self.event_shape):
            got = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            shape = ", ".join(map(str, self.event_shape))
            raise ValueError(f"z must have shape (batch, {shape}), got {got}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Data to latent: x (B, *event_shape) -> z of the same shape and log|det dz/dx| (B,)."""
        self.check_x(x)
        return self.layers(x)

    def inverse_and_logdet(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Latent to data: z (B, *event_shape) -> x of the same shape and log|det dx/dz| (B,)."""
        self._check_z(z)
        return self.layers.inverse(z)

    def inverse(self, z: Tensor) -> Tensor:
        """Latent to data: z (B, *event_shape) -> x of the same shape."""
        return self.inverse_and_logdet(z)[0]

    @staticmethod
    def base_log_prob(z: Tensor) -> Tensor:
        """log N(z; 0, I) of z (B, *event) -> (B,)."""
        d = math.prod(z.shape[1:])
        return -0.5 * z.reshape(z.shape[0], -1).pow(2).sum(dim=1) - 0.5 * d * math.log(2 * math.pi)

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log p(x) in nats, x (B, *event_shape) -> (B,); ValueError on a bad shape or NaN."""
        z, logdet = self(x)
        return self.base_log_prob(z) + logdet

    def _base_sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        p = next(self.parameters())
        shape = (n, *self.event_shape)
        return torch.randn(shape, generator=generator, dtype=p.dtype, device=p.device)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples (n, *event_shape): z ~ N(0, I) drawn with `generator`, then the inverse."""
        return self.rsample(n, generator)

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n reparametrized samples (n, *event_shape): the inverse of z ~ N(0, I) (drawn with
        `generator`), differentiable in every parameter; `sample`'s values for one seed."""
        return self.inverse(self._base_sample(n, generator))

    def sample_and_log_prob(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """n samples (n, *event_shape) and their exact log p (n,) in one inverse pass:
        log p(x) = log N(z) - log|det dx/dz|. Differentiable (e.g. for reverse-KL training)."""
        z = self._base_sample(n, generator)
        x, logdet_inverse = self.inverse_and_logdet(z)
        return x, self.base_log_prob(z) - logdet_inverse


class RealNVP(_Flow):
    """RealNVP (Dinh et al. 2017) for vectors (B, dim), with optional Glow layers.

    `num_layers` affine couplings with alternating masks and MLP conditioners; before each
    coupling an optional ActNorm and an optional invertible linear map (Kingma & Dhariwal 2018).

    Args:
        dim: data dimension; an integer >= 2.
        num_layers: number of couplings; an integer >= 1.
        hidden: width of the conditioner MLPs; an integer >= 1.
        actnorm: put an ActNorm before each coupling.
        inv_conv: put an LU-parametrised invertible linear map before each coupling.
        zero_init: zero the conditioners' last layers, so the flow starts as the identity
            (ActNorm aside). False keeps PyTorch's random init (used by the tests).
        scale_bound: bound on each coupling's log-scale.

    Example:
        >>> import torch
        >>> from sdegen.models import RealNVP
        >>> _ = torch.manual_seed(0)
        >>> flow = RealNVP(2, num_layers=4, hidden=32, zero_init=False)
        >>> x = flow.sample(5, generator=torch.Generator().manual_seed(0))
        >>> flow.log_prob(x).shape, flow.log_prob_kind
        (torch.Size([5]), 'exact')
        >>> z, logdet = flow(x)  # data to latent and log|det dz/dx|
        >>> torch.allclose(flow.inverse(z), x, atol=1e-5)
        True
        >>> flow.loss(x).backward()  # the negative log-likelihood, for an optimizer
    """

    def __init__(
        self,
        dim: int,
        num_layers: int = 8,
        hidden: int = 128,
        actnorm: bool = False,
        inv_conv: bool = False,
        *,
        zero_init: bool = True,
        scale_bound: float = 3.0,
    ) -> None:
        super().__init__()
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 2:
            raise ValueError(f"dim must be an integer >= 2, got {dim!r}")
        check_int("num_layers", num_layers, 1)
        check_int("hidden", hidden, 1)
        _check_bool("actnorm", actnorm)
        _check_bool("inv_conv", inv_conv)
        self.event_shape = (dim,)
        layers: list[nn.Module] = []
        for i in range(num_layers):
            if actnorm:
                layers.append(ActNorm(dim))
            if inv_conv:
                layers.append(InvConv1x1(dim))
            net = coupling_mlp(dim, hidden, zero_init)
            layers.append(AffineCoupling(alternating_mask(dim, i % 2), net, scale_bound))
        self.layers = Chain(layers)


class RealNVPImage(_Flow):
    """RealNVP (Dinh et al. 2017) for images (B, C, H, W), with optional Glow layers.

    Each of `num_scales` scales applies `blocks_per_scale` checkerboard couplings (alternating
    parity), a squeeze (C, H, W) -> (4C, H/2, W/2), then `blocks_per_scale` channel-wise
    couplings; each coupling is preceded by an optional ActNorm and an optional invertible 1x1
    convolution (Kingma & Dhariwal 2018). By default no factoring-out: every scale works on all
    the dimensions, and the latent is un-squeezed at the end, so z has the shape of x.

    split=True is the multi-scale architecture (Dinh et al. 2017, Sec. 3.6; Glow): after each
    scale but the last, half of the channels (2C of the 4C after the squeeze) are factored out
    to the base density (`FactorOut`), so scale i + 1 works on half the dimensions of scale i.
    The base stays N(0, I) over the whole latent, so log p(x) sums every level's base term
    log N(z_i; 0, I) plus the log-det, and sampling draws every level and inverts. With
    split_prior=True each factored-out half z_i gets Glow's learned prior
    N(mu(h_i), diag sigma(h_i)^2) given the kept half h_i at that split, as an affine coupling
    eps_i = (z_i - mu) / sigma (conv conditioner, zero-initialised, so the prior starts at
    N(0, I); log sigma soft-clamped to +-scale_bound like every coupling's log-scale) whose
    log-det -sum log sigma turns log N(eps_i; 0, I) into log N(z_i; mu, sigma^2).
    z keeps the shape of x either way: each level's factored-out channels are un-squeezed back
    in place, and `latent_levels(z)` takes them apart again.

    Args:
        shape: (C, H, W), with H and W divisible by 2 ** num_scales.
        num_scales: number of squeezes; an integer >= 1.
        blocks_per_scale: couplings of each kind per scale; an integer >= 1.
        hidden: channels of the conv conditioners; an integer >= 1.
        actnorm: put an ActNorm before each coupling.
        inv_conv: put an invertible 1x1 convolution before each coupling.
        zero_init: zero the conditioners' last convs (identity flow at init, ActNorm aside).
        scale_bound: bound on each coupling's log-scale.
        split: factor out half the channels after each scale but the last; needs
            num_scales >= 2.
        split_prior: Glow's learned conditional Gaussian prior for each factored-out half
            (only with split=True); False: N(0, I) as in RealNVP.

    Example:
        >>> import torch
        >>> from sdegen.models import RealNVPImage
        >>> _ = torch.manual_seed(0)
        >>> flow = RealNVPImage((1, 8, 8), num_scales=2, hidden=8, split=True, split_prior=True)
        >>> flow.level_shapes  # 32 dims factored out after scale 0, 32 left for the last scale
        [(2, 4, 4), (8, 2, 2)]
        >>> x = torch.randn(3, 1, 8, 8)
        >>> z, logdet = flow(x)
        >>> [tuple(level.shape) for level in flow.latent_levels(z)]
        [(3, 2, 4, 4), (3, 8, 2, 2)]
        >>> torch.allclose(flow.inverse(z), x, atol=1e-5)
        True
    """

    def __init__(
        self,
        shape: Sequence[int],
        num_scales: int = 2,
        blocks_per_scale: int = 2,
        hidden: int = 64,
        actnorm: bool = True,
        inv_conv: bool = True,
        *,
        zero_init: bool = True,
        scale_bound: float = 3.0,
        split: bool = False,
        split_prior: bool = False,
    ) -> None:
        super().__init__()
        shape = tuple(shape)
        if len(shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) for s in shape):
            raise ValueError(f"shape must be (C, H, W) of integers, got {shape!r}")
        if min(shape) < 1:
            raise ValueError(f"shape must be positive, got {shape!r}")
        check_int("num_scales", num_scales, 1)
        check_int("blocks_per_scale", blocks_per_scale, 1)
        check_int("hidden", hidden, 1)
        _check_bool("actnorm", actnorm)
        _check_bool("inv_conv", inv_conv)
        _check_bool("split", split)
        _check_bool("split_prior", split_prior)
        if split and num_scales < 2:
            raise ValueError(
                "split needs num_scales >= 2 (nothing is factored out after the last scale), "
                f"got num_scales={num_scales}"
            )
        if split_prior and not split:
            raise ValueError("split_prior=True needs split=True")
        c, h, w = shape
        factor = 2**num_scales
        if h % factor or w % factor:
            raise ValueError(
                f"H and W of shape {shape} must be divisible by 2 ** num_scales = {factor}"
            )
        self.event_shape = shape

        def block(mask: Tensor, channels: int) -> list[nn.Module]:
            net = coupling_convnet(channels, hidden, zero_init)
            pre: list[nn.Module] = [ActNorm(channels)] if actnorm else []
            pre += [InvConv1x1(channels)] if inv_conv else []
            return [*pre, AffineCoupling(mask, net, scale_bound)]

        def scale(c: int, h: int, w: int) -> list[nn.Module]:
            layers: list[nn.Module] = []
            for b in range(blocks_per_scale):
                layers += block(checkerboard_mask((c, h, w), b % 2), c)
            layers.append(Squeeze())
            c, h, w = 4 * c, h // 2, w // 2
            for b in range(blocks_per_scale):
                layers += block(channel_mask((c, h, w), b % 2), c)
            return layers

        self.split = split
        # the shape of each level of the latent: what each split factors out, then the rest
        self.level_shapes: list[tuple[int, ...]] = [shape]
        if not split:
            layers: list[nn.Module] = []
            for _ in range(num_scales):
                layers += scale(c, h, w)
                c, h, w = 4 * c, h // 2, w // 2
            layers += [Invert(Squeeze()) for _ in range(num_scales)]
            self.layers = Chain(layers)
            return

        def multiscale(i: int, c: int, h: int, w: int) -> list[nn.Module]:
            layers = scale(c, h, w)
            c, h, w = 4 * c, h // 2, w // 2
            if i < num_scales - 1:
                if split_prior:  # eps = (z_out - mu(z_kept)) / sigma(z_kept)
                    net = coupling_convnet(c, hidden, zero_init)
                    layers.append(AffineCoupling(channel_mask((c, h, w)), net, scale_bound))
                self.level_shapes.append((c // 2, h, w))
                inner = Chain(multiscale(i + 1, c // 2, h, w))
                layers.append(FactorOut(c // 2, inner))
            else:
                self.level_shapes.append((c, h, w))
            return [*layers, Invert(Squeeze())]

        self.level_shapes = []  # filled by multiscale, the first split first
        self.layers = Chain(multiscale(0, c, h, w))

    def latent_levels(self, z: Tensor) -> list[Tensor]:
        """The latent z (B, C, H, W) = forward(x)[0] taken apart into its levels, one tensor
        (B, *level_shapes[i]) per level: what each split factored out, then what the last
        scale produced. Without split, [z]."""
        self._check_z(z)
        if not self.split:
            return [z]
        squeeze, levels = Squeeze(), []
        for c_out, _, _ in self.level_shapes[:-1]:
            z = squeeze(z)[0]
            keep = z.shape[1] - c_out
            levels.append(z[:, keep:])
            z = z[:, :keep]
        return [*levels, squeeze(z)[0]]
