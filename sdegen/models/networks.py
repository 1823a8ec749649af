"""Noise-level embeddings and an MLP score network for vector data.

Every network here maps (x, c_noise) with x of shape (B, *D) and c_noise of shape (B,) to an
output of the shape of x, the interface `ScoreModel` expects. They avoid in-place updates of their
inputs and host synchronisation (`.item()`), so `torch.func` transforms and
`torch.autograd.grad(..., is_grads_batched=True)` work through them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .._utils import check_choice, check_finite_number, check_int
from .labels import LabelEmbedding, check_labels

EMBEDDINGS = ("sinusoidal", "fourier")


def dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over the last two dims: q (..., N, d), k and v
    (..., L, d), mask (..., N or 1, L) bool (True: attend; a False key gets weight exactly 0).

    Written out rather than `F.scaled_dot_product_attention`, whose CPU kernel's backward has no
    vmap rule: the exact-trace likelihood vmaps VJPs through the network, and fell back to a
    slow loop (with a warning) on it."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def check_even_dim(name: str, value: int) -> int:
    """Return `value` when it is an even integer >= 2, else raise ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 2 or value % 2:
        raise ValueError(f"{name} must be an even integer >= 2, got {value!r}")
    return value


def check_noise_levels(c_noise: Tensor, batch: int) -> None:
    """Raise ValueError unless `c_noise` is a tensor of shape (batch,)."""
    if not torch.is_tensor(c_noise) or tuple(c_noise.shape) != (batch,):
        got = tuple(c_noise.shape) if torch.is_tensor(c_noise) else type(c_noise).__name__
        raise ValueError(f"c_noise must have shape ({batch},), got {got}")


def _as_float(t: Tensor) -> Tensor:
    # Integer inputs (DDPM timestep indices) are accepted as the default float dtype.
    return t if t.is_floating_point() else t.to(torch.get_default_dtype())


class SinusoidalEmbedding(nn.Module):
    """Sinusoidal noise-level embedding (Vaswani et al. 2017; Ho et al. 2020, DDPM).

    Maps t of shape (B,) to (B, dim): [cos(t f_0), ..., cos(t f_{h-1}), sin(t f_0), ...,
    sin(t f_{h-1})] with h = dim // 2 and f_k = max_period^(-k / h), so the periods range
    geometrically from 2 pi to about 2 pi max_period. Inputs should vary on a scale of order 1 to
    max_period (log-SNR, log sigma or timestep indices); times in [0, 1] barely move the low
    frequencies and are better multiplied by ~1000 first.

    Args:
        dim: output width; even and >= 2.
        max_period: the longest period over 2 pi; finite and > 0.
    """

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        self.dim = check_even_dim("dim", dim)
        self.max_period = check_finite_number("max_period", max_period, positive=True)

    def forward(self, t: Tensor) -> Tensor:
        """Embed t of shape (B,) as (B, dim), in t's floating dtype."""
        if not torch.is_tensor(t) or t.ndim != 1:
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"t must have shape (batch,), got {got}")
        t = _as_float(t)
        # Half-precision phases t * f lose all accuracy for t in the hundreds; compute in >= fp32.
        work = torch.promote_types(t.dtype, torch.float32)
        half = self.dim // 2
        k = torch.arange(half, dtype=work, device=t.device)
        freqs = torch.exp(k * (-math.log(self.max_period) / half))
        args = t.to(work)[:, None] * freqs[None, :]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=1).to(t.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, max_period={self.max_period}"


class GaussianFourierEmbedding(nn.Module):
    """Random Fourier-feature embedding (Tancik et al. 2020; Song et al. 2021, NCSN++).

    Maps t of shape (B,) to (B, dim): [sin(2 pi t W), cos(2 pi t W)] with a fixed W ~ N(0, scale^2)
    of shape (dim // 2,). W is a buffer, not a parameter: it is saved in the state dict and moved
    by `.to()` / `.double()`, but never trained (training it hurts, per Song et al.). Seed with
    `torch.manual_seed` before construction for reproducible features.

    Args:
        dim: output width; even and >= 2.
        scale: standard deviation of the frequencies; finite and > 0. Song et al. use 16 with
            c_noise = log sigma.
    """

    W: Tensor

    def __init__(self, dim: int, scale: float = 16.0) -> None:
        super().__init__()
        self.dim = check_even_dim("dim", dim)
        self.scale = check_finite_number("scale", scale, positive=True)
        self.register_buffer("W", torch.randn(dim // 2) * self.scale)

    def forward(self, t: Tensor) -> Tensor:
        """Embed t of shape (B,) as (B, dim), in t's floating dtype."""
        if not torch.is_tensor(t) or t.ndim != 1:
            got = tuple(t.shape) if torch.is_tensor(t) else type(t).__name__
            raise ValueError(f"t must have shape (batch,), got {got}")
        t = _as_float(t)
        work = torch.promote_types(t.dtype, torch.float32)
        args = (2 * math.pi) * t.to(work)[:, None] * self.W.to(work)[None, :]
        return torch.cat([torch.sin(args), torch.cos(args)], dim=1).to(t.dtype)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, scale={self.scale}"


def add_label_embedding(embed: LabelEmbedding | None, emb: Tensor, y: Tensor | None) -> Tensor:
    """emb (B, W) plus the embedding of labels y (B,); an unconditional network refuses labels."""
    if embed is None:
        if y is not None:
            check_labels(y, emb.shape[0], None)  # raises: the network takes no labels
        return emb
    return emb + embed(y, emb.shape[0], emb.device).to(emb.dtype)


def make_embedding(name: str, dim: int) -> nn.Module:
    """The noise-level embedding called `name` ("sinusoidal" or "fourier") of width `dim`."""
    check_choice("embedding", name, EMBEDDINGS)
    return SinusoidalEmbedding(dim) if name == "sinusoidal" else GaussianFourierEmbedding(dim)


def time_mlp(in_dim: int, embed_dim: int) -> nn.Sequential:
    """DDPM's time-embedding MLP: Linear-SiLU-Linear-SiLU from the sinusoidal features (width
    `in_dim`) to `embed_dim`. The trailing SiLU is the nonlinearity before each residual block's
    projection, applied once (U-Net and the noise-conditional classifier share it)."""
    return nn.Sequential(
        nn.Linear(in_dim, embed_dim),
        nn.SiLU(),
        nn.Linear(embed_dim, embed_dim),
        nn.SiLU(),
    )


def mlp(
    d_in: int, hidden: int, depth: int, d_out: int, act: type[nn.Module] = nn.SiLU
) -> nn.Sequential:
    """A plain MLP without time input: `depth` hidden layers of width `hidden`, activation
    `act` after each, then a linear layer to `d_out` (the VAE's and the GAN's networks)."""
    widths = [d_in] + [hidden] * depth
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers, nn.Linear(widths[-1], d_out))


class MLP(nn.Module):
    """Noise-conditional MLP score/denoiser network for vectors (DDPM-style time conditioning).

    x (B, dim) goes through `depth` hidden Linear + SiLU layers of width `hidden` and a final
    Linear back to (B, dim). c_noise (B,) is embedded, passed through a 2-layer MLP and a separate
    linear projection of it is added to the pre-activation of every hidden layer.

    Args:
        dim: data dimension.
        hidden: hidden width.
        depth: number of hidden layers (>= 1).
        embed_dim: width of the noise-level embedding; even and >= 2.
        embedding: "sinusoidal" (`SinusoidalEmbedding`) or "fourier" (`GaussianFourierEmbedding`).
        num_classes: make it class-conditional: a learned label embedding (with a null row for
            `NULL_LABEL`) is added to the time features; None (default): unconditional.
        out_dim: output width; default `dim` (a noise-conditional classifier sets its classes).
    """

    def __init__(
        self,
        dim: int,
        hidden: int = 256,
        depth: int = 3,
        embed_dim: int = 64,
        embedding: str = "sinusoidal",
        num_classes: int | None = None,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, 1)
        self.hidden = check_int("hidden", hidden, 1)
        self.depth = check_int("depth", depth, 1)
        self.embed_dim = check_even_dim("embed_dim", embed_dim)
        self.embed = make_embedding(embedding, embed_dim)
        self.time_mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU()
        )
        # Adding a projection of the time features equals concatenating them to the layer's input
        # (W [h; e] = W_h h + W_e e) at a lower cost, and a fresh projection per layer keeps the
        # conditioning as strong in deep layers as in the first. One Linear makes all of them.
        self.time_proj = nn.Linear(hidden, depth * hidden)
        widths = [dim] + [hidden] * depth
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.act = nn.SiLU()
        self.out_dim = check_int("out_dim", dim if out_dim is None else out_dim, 1)
        self.out = nn.Linear(hidden, self.out_dim)
        self.num_classes = num_classes
        self.label_embed = LabelEmbedding(num_classes, hidden) if num_classes is not None else None

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        """Output (B, out_dim) for x (B, dim), c_noise (B,) and optional labels y (B,).

        y = None on a conditional network means every example is unconditional (NULL_LABEL).
        """
        if not torch.is_tensor(x) or x.ndim != 2 or x.shape[1] != self.dim:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must have shape (batch, {self.dim}), got {got}")
        check_noise_levels(c_noise, x.shape[0])
        temb = self.time_mlp(self.embed(c_noise.to(x.dtype)))
        temb = add_label_embedding(self.label_embed, temb, y)
        shifts = self.time_proj(temb).chunk(self.depth, dim=1)
        h = x
        for layer, shift in zip(self.layers, shifts, strict=True):
            h = self.act(layer(h) + shift)
        return self.out(h)
