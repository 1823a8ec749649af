"""Invertible layers of RealNVP (Dinh et al. 2017) and Glow (Kingma & Dhariwal 2018).

Every layer maps data to latent in `forward(x) -> (y, logdet)` and back in
`inverse(y) -> (x, logdet_inverse)`; the two are exact inverses, logdet has shape (B,) and each
example's log-determinant depends on that example only (ActNorm's one-off data-dependent init
aside). x is a vector batch (B, D) or an image batch (B, C, H, W); channels are dim 1.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor, nn

from ..._utils import check_int, sum_except_batch


class Bijection(Protocol):
    """What the flows compose: layer(x) -> (y, log|det dy/dx|) and layer.inverse(y) ->
    (x, log|det dx/dy|), logdets of shape (B,)."""

    def __call__(self, x: Tensor) -> tuple[Tensor, Tensor]: ...

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]: ...


def alternating_mask(dim: int, parity: int = 0) -> Tensor:
    """RealNVP's alternating mask for vectors: shape (dim,), 1 where (i + parity) is even."""
    check_int("dim", dim, 1)
    return ((torch.arange(dim) + parity) % 2 == 0).to(torch.get_default_dtype())


def checkerboard_mask(shape: tuple[int, int, int], parity: int = 0) -> Tensor:
    """RealNVP's spatial checkerboard mask: shape (1, H, W), 1 where (h + w + parity) is even."""
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be (C, H, W) of positive integers, got {shape!r}")
    _, h, w = shape
    grid = torch.arange(h)[:, None] + torch.arange(w)[None, :] + parity
    return (grid % 2 == 0).to(torch.get_default_dtype())[None]


def channel_mask(shape: tuple[int, int, int], parity: int = 0) -> Tensor:
    """RealNVP's channel-wise mask: shape (C, 1, 1), 1 on the first C // 2 channels (parity 0) or
    on the others (parity 1). Needs C >= 2."""
    c = shape[0]
    if c < 2:
        raise ValueError(f"a channel-wise mask needs at least 2 channels, got shape {shape}")
    first = (torch.arange(c) < c // 2).to(torch.get_default_dtype())
    return (first if parity % 2 == 0 else 1 - first)[:, None, None]


def _check_channels(name: str, x: Tensor, channels: int) -> None:
    if x.ndim < 2 or x.shape[1] != channels:
        raise ValueError(
            f"{name} expects input of shape (batch, {channels}, ...), got {tuple(x.shape)}"
        )


class AffineCoupling(nn.Module):
    """Affine coupling layer (Dinh et al. 2017, RealNVP), for vectors and images alike.

    With m the binary mask and (s, t) = net(m * x) split in two along dim 1,
    y = m * x + (1 - m) * (x * exp(s) + t), logdet = sum((1 - m) * s). The log-scale is
    soft-clamped to (-scale_bound, scale_bound) by scale_bound * tanh(s / scale_bound).

    Args:
        mask: binary tensor broadcastable to the event shape: (D,) for vectors, (1, H, W)
            (checkerboard) or (C, 1, 1) (channel-wise) for images.
        net: maps m * x of shape (B, *event) to shape (B, 2 C, ...) (C = D for vectors).
        scale_bound: the bound on |s|; finite and > 0.
    """

    mask: Tensor

    def __init__(self, mask: Tensor, net: nn.Module, scale_bound: float = 3.0) -> None:
        super().__init__()
        if not torch.is_tensor(mask) or not bool(((mask == 0) | (mask == 1)).all()):
            got = torch.unique(mask).tolist() if torch.is_tensor(mask) else type(mask).__name__
            raise ValueError(f"mask must be a tensor of zeros and ones, got values {got}")
        if not (math.isfinite(scale_bound) and scale_bound > 0):
            raise ValueError(f"scale_bound must be finite and > 0, got {scale_bound!r}")
        self.register_buffer("mask", mask.to(torch.get_default_dtype()), persistent=False)
        self.net = net
        self.scale_bound = float(scale_bound)

    def _scale_shift(self, x_masked: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(x_masked)
        if out.shape[0] != x_masked.shape[0] or out.shape[1] != 2 * x_masked.shape[1]:
            raise ValueError(
                f"net must map shape {tuple(x_masked.shape)} to (batch, "
                f"{2 * x_masked.shape[1]}, ...), got {tuple(out.shape)}"
            )
        s, t = out.chunk(2, dim=1)
        free = 1 - self.mask
        s = self.scale_bound * torch.tanh(s / self.scale_bound) * free
        return s, t * free

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, *event) -> y of the same shape and logdet (B,)."""
        x_masked = x * self.mask
        s, t = self._scale_shift(x_masked)
        y = x_masked + (1 - self.mask) * (x * torch.exp(s) + t)
        return y, sum_except_batch(s)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y (B, *event) -> x of the same shape and logdet of the inverse map (B,)."""
        y_masked = y * self.mask
        s, t = self._scale_shift(y_masked)
        x = y_masked + (1 - self.mask) * ((y - t) * torch.exp(-s))
        return x, -sum_except_batch(s)


class Squeeze(nn.Module):
    """Squeeze (Dinh et al. 2017, RealNVP): space-to-depth, (B, C, H, W) -> (B, 4C, H/2, W/2).

    Each 2x2 block of a channel becomes 4 channels; a permutation, so logdet is 0.
    """

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, H, W) with H, W even -> y (B, 4C, H/2, W/2) and logdet zeros (B,)."""
        if x.ndim != 4 or x.shape[2] % 2 or x.shape[3] % 2:
            raise ValueError(
                f"Squeeze expects (batch, C, H, W) with H, W even, got {tuple(x.shape)}"
            )
        b, c, h, w = x.shape
        y = x.reshape(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return y.reshape(b, 4 * c, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y (B, 4C, H, W) -> x (B, C, 2H, 2W) and logdet zeros (B,)."""
        if y.ndim != 4 or y.shape[1] % 4:
            raise ValueError(f"Squeeze.inverse expects (batch, 4C, H, W), got {tuple(y.shape)}")
        b, c4, h, w = y.shape
        x = y.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return x.reshape(b, c4 // 4, 2 * h, 2 * w), y.new_zeros(b)


class Invert(nn.Module):
    """The inverse of an invertible layer: forward and inverse swapped (e.g. an unsqueeze)."""

    layer: Bijection

    def __init__(self, layer: Bijection) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The wrapped layer's inverse: x -> (y, logdet) with logdet (B,)."""
        return self.layer.inverse(x)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """The wrapped layer's forward: y -> (x, logdet_inverse) with logdet (B,)."""
        return self.layer(y)


class Chain(nn.ModuleList):
    """A composition of invertible layers, applied in order by `forward` and backwards by
    `inverse`; log-determinants add up. An nn.ModuleList, so its layers' state-dict keys are
    "0.", "1.", ...

    Args:
        layers: the Bijection modules, data side first.
    """

    def _bijections(self) -> list[Bijection]:
        # nn.ModuleList holds them as plain Modules; each is a Bijection
        return list(self)  # type: ignore[arg-type]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, *event) -> y and log|det dy/dx| (B,) of the composition."""
        logdet = x.new_zeros(x.shape[0])
        for layer in self._bijections():
            x, ld = layer(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y -> x and log|det dx/dy| (B,): each layer's inverse, last layer first."""
        logdet = y.new_zeros(y.shape[0])
        for layer in reversed(self._bijections()):
            y, ld = layer.inverse(y)
            logdet = logdet + ld
        return y, logdet


class FactorOut(nn.Module):
    """The multi-scale split (Dinh et al. 2017, RealNVP Sec. 3.6; Kingma & Dhariwal 2018, Glow):
    the first `keep` channels of x (B, C, ...) go on through `inner`, the other C - keep are
    factored out, left as they are for the base density:

        y = cat(inner(x[:, :keep]), x[:, keep:]) along dim 1,  logdet = inner's logdet.

    So every layer in `inner` works on keep / C of the dimensions. Glow's learned prior for the
    factored-out half, N(mu(x_keep), sigma(x_keep)^2), is an affine coupling placed before this
    layer (see `RealNVPImage(split_prior=True)`).

    Args:
        keep: channels kept; an integer >= 1.
        inner: a Bijection on (B, keep, ...) that keeps that shape.
    """

    inner: Bijection

    def __init__(self, keep: int, inner: nn.Module) -> None:
        super().__init__()
        self.keep = check_int("keep", keep, 1)
        self.inner = inner  # type: ignore[assignment]

    def _parts(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.ndim < 2 or x.shape[1] <= self.keep:
            raise ValueError(
                f"FactorOut keeps {self.keep} channels, so it expects (batch, C, ...) with "
                f"C > {self.keep}, got {tuple(x.shape)}"
            )
        return x[:, : self.keep], x[:, self.keep :]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, ...) -> y of the same shape and logdet (B,)."""
        kept, out = self._parts(x)
        kept, logdet = self.inner(kept)
        return torch.cat([kept, out], dim=1), logdet

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y (B, C, ...) -> x of the same shape and logdet of the inverse map (B,)."""
        kept, out = self._parts(y)
        kept, logdet = self.inner.inverse(kept)
        return torch.cat([kept, out], dim=1), logdet


class ActNorm(nn.Module):
    """Activation normalisation (Kingma & Dhariwal 2018, Glow): y = (x + bias) * exp(log_scale).

    Per-channel bias and log-scale of shape (C,). The first forward call in training mode sets
    them from that batch so each output channel has zero mean and unit (population) variance;
    afterwards they are ordinary parameters. logdet = (H * W) * sum(log_scale), or
    sum(log_scale) for vectors (B, C).

    Args:
        num_channels: C (D for vectors); an integer >= 1.
        eps: floor on the initial per-channel std, so constant channels stay finite.
    """

    initialized: Tensor  # bool, 0-dim: set by the first forward call in training mode

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_channels = check_int("num_channels", num_channels, 1)
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(False))

    def _view(self, v: Tensor, ndim: int) -> Tensor:
        return v.reshape(1, self.num_channels, *([1] * (ndim - 2)))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set bias and log-scale from a batch x (B, C, ...) (Glow's data-dependent init)."""
        _check_channels("ActNorm", x, self.num_channels)
        flat = x.transpose(0, 1).reshape(self.num_channels, -1)
        if flat.shape[1] < 2:
            raise ValueError(
                "ActNorm's data-dependent init needs at least 2 values per channel, got a batch "
                f"of shape {tuple(x.shape)}; initialise it on a larger batch first"
            )
        mean = flat.mean(dim=1)
        std = flat.std(dim=1, unbiased=False).clamp_min(self.eps)
        self.bias.copy_(-mean)
        self.log_scale.copy_(-torch.log(std))
        self.initialized.fill_(True)

    def _logdet(self, x: Tensor) -> Tensor:
        return (self.log_scale.sum() * math.prod(x.shape[2:])).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, ...) -> y of the same shape and logdet (B,)."""
        _check_channels("ActNorm", x, self.num_channels)
        if self.training and not bool(self.initialized):
            self.initialize(x)
        y = (x + self._view(self.bias, x.ndim)) * self._view(self.log_scale, x.ndim).exp()
        return y, self._logdet(x)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y (B, C, ...) -> x of the same shape and logdet of the inverse map (B,)."""
        _check_channels("ActNorm", y, self.num_channels)
        x = y * torch.exp(-self._view(self.log_scale, y.ndim)) - self._view(self.bias, y.ndim)
        return x, -self._logdet(y)


class InvConv1x1(nn.Module):
    """Invertible 1x1 convolution (Kingma & Dhariwal 2018, Glow), LU-decomposed.

    W = P L (U + diag(sign * exp(log_s))) with P a fixed permutation, L unit lower triangular and
    U strictly upper triangular; initialised at a random rotation. Mixes the channels of
    (B, C, H, W) at every pixel, or is the invertible linear map y = W x on vectors (B, C).
    logdet = (H * W) * sum(log_s), O(C).

    Args:
        num_channels: C (D for vectors); an integer >= 1.
        generator: random source of the initial rotation.
    """

    # buffers: the permutation P (C, C), sign(diag U) (C,), and the (2, C(C-1)/2) row and
    # column indices of the strictly lower triangle
    permutation: Tensor
    sign: Tensor
    _tril: Tensor

    def __init__(self, num_channels: int, generator: torch.Generator | None = None) -> None:
        super().__init__()
        c = self.num_channels = check_int("num_channels", num_channels, 1)
        q, _ = torch.linalg.qr(torch.randn(c, c, generator=generator))
        p, lower, upper = torch.linalg.lu(q)
        diag = torch.diagonal(upper)
        rows, cols = torch.tril_indices(c, c, offset=-1)
        self.register_buffer("permutation", p)
        self.register_buffer("sign", torch.sign(diag))
        self.register_buffer("_tril", torch.stack([rows, cols]), persistent=False)
        self.lower = nn.Parameter(lower[rows, cols].clone())
        self.upper = nn.Parameter(upper[cols, rows].clone())
        self.log_s = nn.Parameter(torch.log(diag.abs()))

    def factors(self) -> tuple[Tensor, Tensor, Tensor]:
        """P, L and U' = U + diag(sign * exp(log_s)), each (C, C), with W = P L U'."""
        c = self.num_channels
        rows, cols = self._tril
        eye = torch.eye(c, dtype=self.log_s.dtype, device=self.log_s.device)
        lower = eye + torch.zeros_like(eye).index_put((rows, cols), self.lower)
        diag = torch.diag(self.sign * torch.exp(self.log_s))
        upper = diag + torch.zeros_like(eye).index_put((cols, rows), self.upper)
        return self.permutation, lower, upper

    def weight(self) -> Tensor:
        """The (C, C) channel-mixing matrix W."""
        p, lower, upper = self.factors()
        return p @ lower @ upper

    def _logdet(self, x: Tensor) -> Tensor:
        return (self.log_s.sum() * math.prod(x.shape[2:])).expand(x.shape[0])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (B, C, ...) -> y = W x per pixel, same shape, and logdet (B,)."""
        _check_channels("InvConv1x1", x, self.num_channels)
        return torch.einsum("ij,bj...->bi...", self.weight(), x), self._logdet(x)

    def inverse(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """y (B, C, ...) -> x = W^-1 y by two triangular solves, and logdet of the inverse (B,)."""
        _check_channels("InvConv1x1", y, self.num_channels)
        p, lower, upper = self.factors()
        cols = y.movedim(1, -1).reshape(-1, self.num_channels).T  # (C, N)
        a = torch.linalg.solve_triangular(lower, p.T @ cols, upper=False, unitriangular=True)
        x = torch.linalg.solve_triangular(upper, a, upper=True)
        x = x.T.reshape(*y.shape[:1], *y.shape[2:], self.num_channels).movedim(-1, 1)
        return x, -self._logdet(y)
