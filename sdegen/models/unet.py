"""A small DDPM-style U-Net (Ho et al. 2020) for noise-conditional score models of images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import check_int
from .labels import LabelEmbedding
from .networks import (
    SinusoidalEmbedding,
    add_label_embedding,
    check_noise_levels,
    time_mlp,
)
from .text import CrossAttention, check_text_conditioner, network_condition


class ResBlock(nn.Module):
    """Residual block of DDPM (Ho et al. 2020): two GroupNorm-SiLU-conv3x3 stages.

    The time embedding (B, embed_dim) is projected to a per-channel shift added between the two
    convolutions. Maps (B, in_ch, H, W) to (B, out_ch, H, W).
    """

    def __init__(self, in_ch: int, out_ch: int, embed_dim: int, groups: int, dropout: float):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(embed_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.drop = nn.Dropout(dropout)
        # Not zero-initialised (unlike DDPM's conv2): every parameter then gets a gradient and the
        # output depends on the input at initialisation.
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None, None]
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each image (Ho et al. 2020).

    GroupNorm, 1x1 qkv projection, scaled dot-product attention and a 1x1 output projection added
    back to the input. Positions attend only within their own image, never across the batch.
    Maps (B, C, H, W) to (B, C, H, W).
    """

    def __init__(self, ch: int, groups: int):
        super().__init__()
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = nn.Conv2d(ch, ch, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # (B, 3C, H, W) -> three (B, 1, H*W, C): a head axis of 1 for the attention kernel.
        qkv = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(2, 3)
        q, k, v = qkv.unbind(dim=1)
        out = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        return x + self.proj(out.transpose(1, 2).reshape(b, c, h, w))


class UNet(nn.Module):
    """Small DDPM U-Net (Ho et al. 2020) for 8x8 to 32x32 images: (B, C, H, W), (B,) -> image.

    Level i of `channel_mult` works at resolution H / 2^i with channels * channel_mult[i]
    channels and `num_res_blocks` residual blocks; levels in `attention_levels` add self-attention
    after each block. Levels are joined by stride-2 convs going down and nearest-neighbour
    upsampling + conv going up, with every down-path activation concatenated into the up path. The
    middle block is ResBlock-Attention-ResBlock at the lowest resolution. c_noise is embedded by a
    `SinusoidalEmbedding` of width `channels` (rounded up to even) and a 2-layer MLP of width
    `embed_dim`; like DDPM's, the embedding wants c_noise on a scale of 1 to 1000 (log-SNR or
    timestep indices), not t in [0, 1].

    Args:
        in_channels: image channels C.
        channels: base width; divisible by `groups`.
        channel_mult: width multiplier per resolution level; H and W must be divisible by
            2^(len(channel_mult) - 1).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: indices into `channel_mult` of the levels with self-attention.
        groups: GroupNorm groups.
        embed_dim: width of the time embedding MLP; default 4 * channels.
        dropout: dropout probability inside residual blocks, in [0, 1).
        out_channels: output channels; default `in_channels`.
        num_classes: make it class-conditional: a learned label embedding (with a null row for
            `NULL_LABEL`) is added to the time embedding, as in ADM; None: unconditional.
        text: make it text-conditional (Rombach et al. 2022): a conditioner from
            `sdegen.models.text` (`TokenConditioner` for token ids, `EmbeddingTable` for
            another encoder's embeddings) turns the condition y into a context (B, L, W) with
            its mask, which a `CrossAttention` block reads after every attention block (the
            levels in `attention_levels` and the middle). Not together with num_classes.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        channel_mult: tuple[int, ...] = (1, 2),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (1,),
        groups: int = 8,
        embed_dim: int | None = None,
        dropout: float = 0.0,
        out_channels: int | None = None,
        num_classes: int | None = None,
        text: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.out_channels = check_int(
            "out_channels", in_channels if out_channels is None else out_channels, 1
        )
        check_int("channels", channels, 1)
        check_int("groups", groups, 1)
        check_int("num_res_blocks", num_res_blocks, 1)
        if channels % groups:
            raise ValueError(f"channels ({channels}) must be divisible by groups ({groups})")
        channel_mult = tuple(channel_mult)
        if not channel_mult:
            raise ValueError("channel_mult must name at least one level, got ()")
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in channel_mult):
            raise ValueError(f"channel_mult entries must be integers >= 1, got {channel_mult}")
        attention_levels = tuple(attention_levels)
        bad = [i for i in attention_levels if not 0 <= i < len(channel_mult)]
        if bad:
            raise ValueError(
                f"attention_levels {attention_levels} must index channel_mult {channel_mult} "
                f"(0 to {len(channel_mult) - 1}); out of range: {bad}"
            )
        embed_dim = 4 * channels if embed_dim is None else embed_dim
        check_int("embed_dim", embed_dim, 1)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.factor = 2 ** (len(channel_mult) - 1)

        # The sinusoidal width must be even; channels + channels % 2 rounds it up.
        self.embed = SinusoidalEmbedding(channels + channels % 2)
        self.time_mlp = time_mlp(self.embed.dim, embed_dim)

        self.num_classes = num_classes
        self.label_embed = (
            LabelEmbedding(num_classes, embed_dim) if num_classes is not None else None
        )

        if text is not None:
            if num_classes is not None:
                raise ValueError("give num_classes or text, not both")
            check_text_conditioner(text)
        self.text = text

        def cross(ch: int) -> list[nn.Module]:
            return [] if text is None else [CrossAttention(ch, int(text.width), 4, groups)]  # type: ignore[arg-type]

        def res(a: int, b: int) -> ResBlock:
            return ResBlock(a, b, embed_dim, groups, dropout)

        def attn(level: int, ch: int) -> list[nn.Module]:
            if level not in attention_levels:
                return [nn.Identity()]
            return [AttentionBlock(ch, groups), *cross(ch)]

        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.down = nn.ModuleList()
        skips, ch = [channels], channels
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(
                    nn.ModuleList([res(ch, channels * mult), *attn(level, channels * mult)])
                )
                ch = channels * mult
                skips.append(ch)
            if level < len(channel_mult) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)

        self.mid = nn.ModuleList([res(ch, ch), AttentionBlock(ch, groups), res(ch, ch)])
        self.mid_cross = cross(ch)[0] if text is not None else None

        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                block = res(ch + skips.pop(), channels * mult)
                self.up.append(nn.ModuleList([block, *attn(level, channels * mult)]))
                ch = channels * mult
            if level > 0:
                self.up.append(
                    nn.Sequential(
                        nn.Upsample(scale_factor=2.0, mode="nearest"),
                        nn.Conv2d(ch, ch, 3, padding=1),
                    )
                )

        self.norm_out = nn.GroupNorm(groups, ch)
        # Default init rather than DDPM's zero init, so the untrained output depends on (x, t).
        self.conv_out = nn.Conv2d(ch, self.out_channels, 3, padding=1)

    def check_condition(self, y, batch: int) -> Tensor:
        """The condition y checked for this network: class labels (batch,), or what its text
        conditioner takes (token ids (batch, L) or table indices (batch,))."""
        return network_condition(self.text, self.num_classes, y, batch)

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        """Output (B, out_channels, H, W) for x (B, in_channels, H, W), c_noise (B,) and
        the optional condition y: labels (B,), or token ids / table indices of a text
        conditioner; y = None on a conditional network is NULL_LABEL throughout."""
        if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != self.in_channels:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(
                f"x must have shape (batch, {self.in_channels}, height, width), got {got}"
            )
        if x.shape[2] % self.factor or x.shape[3] % self.factor:
            raise ValueError(
                f"x height and width must be divisible by {self.factor} "
                f"(2 ** (len(channel_mult) - 1)), got shape {tuple(x.shape)}"
            )
        check_noise_levels(c_noise, x.shape[0])
        emb = self.time_mlp(self.embed(c_noise.to(x.dtype)))
        context: tuple[Tensor, Tensor] = (x, x)  # replaced below when read
        if self.text is not None:
            ctx_emb, ctx_mask = self.text(y, x.shape[0], x.device)
            context = (ctx_emb.to(x.dtype), ctx_mask)
        else:
            emb = add_label_embedding(self.label_embed, emb, y)

        def attend(blocks, h: Tensor) -> Tensor:  # self-attention, then cross-attention
            h = blocks[1](h)
            return blocks[2](h, *context) if len(blocks) > 2 else h

        h = self.conv_in(x)
        hs = [h]
        for module in self.down:
            if isinstance(module, nn.ModuleList):
                h = attend(module, module[0](h, emb))
            else:
                h = module(h)
            hs.append(h)
        h = self.mid[1](self.mid[0](h, emb))
        if self.mid_cross is not None:
            h = self.mid_cross(h, *context)
        h = self.mid[2](h, emb)
        for module in self.up:
            if isinstance(module, nn.ModuleList):
                h = attend(module, module[0](torch.cat([h, hs.pop()], dim=1), emb))
            else:
                h = module(h)
        return self.conv_out(F.silu(self.norm_out(h)))
