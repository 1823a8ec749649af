"""Noise-conditional classifiers p(y | x_t, t) for classifier guidance (Dhariwal & Nichol 2021;
Song et al. 2021, sec. 5), for any linear SDE.

A classifier network maps (x_in, c_noise) to logits (B, K); `NoiseConditionalClassifier` feeds
it the same preconditioned input and noise level a `ScoreModel` gives its network, so it is
trained (`sdegen.training.classifier_loss`) and used at any time t of any SDE. Vectors use the
`MLP` with K outputs; images a small convolutional encoder of the U-Net's residual blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import batch_times, check_finite_number, check_int
from ..protocols import SDE
from .base import WORK_DTYPES, check_model_input, check_network, check_sde
from .networks import SinusoidalEmbedding, check_noise_levels, time_mlp
from .score_model import check_time_input, noise_level, parameter_dtype, scale_input
from .unet import AttentionBlock, ResBlock


class ConvClassifier(nn.Module):
    """A noise-conditional image classifier: the U-Net's down path, pooled to logits.

    (B, C, H, W) and c_noise (B,) -> logits (B, num_classes). Level i of `channel_mult` has
    `num_res_blocks` residual blocks at resolution H / 2^i with channels * channel_mult[i]
    channels (self-attention after the last level), then GroupNorm, SiLU, global average pooling
    and a linear layer, as in ADM's classifier (Dhariwal & Nichol 2021) in miniature.

    Args:
        in_channels: image channels C.
        num_classes: classes K.
        channels: base width; divisible by `groups`.
        channel_mult: width multiplier per level.
        num_res_blocks: residual blocks per level.
        groups: GroupNorm groups.
        dropout: dropout probability inside residual blocks, in [0, 1).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 32,
        channel_mult: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        groups: int = 8,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.num_outputs = check_int("num_classes", num_classes, 1)
        check_int("channels", channels, 1)
        check_int("num_res_blocks", num_res_blocks, 1)
        if channels % groups:
            raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
        channel_mult = tuple(channel_mult)
        if not channel_mult or any(not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult must be integers >= 1, got {channel_mult}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        embed_dim = 4 * channels
        self.embed = SinusoidalEmbedding(channels + channels % 2)
        self.time_mlp = time_mlp(self.embed.dim, embed_dim)
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.blocks = nn.ModuleList()
        ch = channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.blocks.append(ResBlock(ch, channels * mult, embed_dim, groups, dropout))
                ch = channels * mult
            if level < len(channel_mult) - 1:
                self.blocks.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
        self.attn = AttentionBlock(ch, groups)
        self.norm_out = nn.GroupNorm(groups, ch)
        self.out = nn.Linear(ch, num_classes)

    def forward(self, x: Tensor, c_noise: Tensor) -> Tensor:
        """Logits (B, num_classes) for x (B, in_channels, H, W) and c_noise (B,)."""
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(
                f"x must have shape (batch, {self.in_channels}, height, width), got {got}"
            )
        check_noise_levels(c_noise, x.shape[0])
        emb = self.time_mlp(self.embed(c_noise.to(x.dtype)))
        h = self.conv_in(x)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        h = F.silu(self.norm_out(self.attn(h)))
        return self.out(h.mean(dim=(2, 3)))


class NoiseConditionalClassifier(nn.Module):
    """p(y | x_t = x, t) from a network `net(x_in, c_noise) -> logits (B, K)`, for `sde`.

    The network sees c_in(t) x and c_noise(t) exactly as a `ScoreModel`'s does (see there for
    `time_input` and `sigma_data`). Calling it gives logits; `log_prob` the log-probabilities.
    Pass it as `sample(..., classifier=clf)` for classifier guidance.

    Args:
        net: e.g. `MLP(dim, out_dim=K)` for vectors or `ConvClassifier(C, K)` for images.
        sde: the SDE whose perturbed data it classifies.
        num_classes: K; default the network's `out_dim` / `num_outputs`.
    """

    def __init__(
        self,
        net: nn.Module,
        sde: SDE,
        *,
        num_classes: int | None = None,
        time_input: str | Callable[[Tensor], Tensor] = "log_snr",
        sigma_data: float | None = 1.0,
    ) -> None:
        super().__init__()
        self.net, self.sde = check_network("net", net), check_sde(sde)
        if num_classes is None:
            num_classes = getattr(net, "num_outputs", None) or getattr(net, "out_dim", None)
        self.num_classes = check_int("num_classes", num_classes, 1)
        self.time_input = check_time_input(time_input)
        self.sigma_data = (
            None
            if sigma_data is None
            else check_finite_number("sigma_data", sigma_data, positive=True)
        )

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Logits (B, K) at x (B, *D), t () or (B,), in x's dtype; the network runs in the dtype
        of its parameters (as a `ScoreModel`'s does)."""
        check_model_input(x, t)
        xw = x if x.dtype in WORK_DTYPES else x.to(torch.float32)
        t = batch_times(t, x.shape[0], xw)
        x_in = scale_input(xw, self.sde.alpha(t), self.sde.sigma(t), self.sigma_data)
        c_noise = noise_level(self.sde, t, self.time_input)
        dtype = parameter_dtype(self.net)
        if dtype is not None and dtype != xw.dtype:
            x_in = x_in.to(dtype)
            c_noise = c_noise.to(dtype) if c_noise.is_floating_point() else c_noise
        logits = self.net(x_in, c_noise)
        if not torch.is_tensor(logits):
            raise TypeError(f"net must return a tensor, got {type(logits).__name__}")
        logits = logits.to(x.dtype)
        if tuple(logits.shape) != (x.shape[0], self.num_classes):
            raise ValueError(
                f"net must return logits of shape ({x.shape[0]}, {self.num_classes}), "
                f"got {tuple(logits.shape)}"
            )
        return logits

    def log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        """log p(y = k | x_t = x, t), shape (B, K)."""
        return torch.log_softmax(self(x, t), dim=-1)
