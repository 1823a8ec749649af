"""Text conditioning: a small transformer text encoder and the cross-attention block through
which image features read a sequence of token embeddings (Rombach et al. 2022, Stable
Diffusion's conditioning; Vaswani et al. 2017 for the attention).

A context is a pair (emb, mask): emb (B, L, W) float token embeddings and mask (B, L) bool,
True for a real token. Padded positions are never attended to, so what they hold changes
nothing; every row must hold at least one real token (the tokenizer of
`sdegen.data.captions` starts every sequence with "<s>", so even the null caption "" has one).
The embeddings may come from `TextEncoder` or from any other encoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import check_int, check_tensor_finite

__all__ = ["CrossAttention", "TextEncoder", "check_context"]


def check_context(emb: Tensor, mask: Tensor, batch: int | None = None, width: int | None = None):
    """Validate a context (emb (B, L, W) float, mask (B, L) bool with a True in every row);
    raise ValueError naming what was expected."""
    if not torch.is_tensor(emb) or emb.ndim != 3 or not emb.is_floating_point():
        got = f"{emb.dtype} {tuple(emb.shape)}" if torch.is_tensor(emb) else type(emb).__name__
        raise ValueError(f"context embeddings must be a float tensor (B, L, W), got {got}")
    check_tensor_finite("context embeddings", emb)
    b, n, w = emb.shape
    if batch is not None and b != batch:
        raise ValueError(f"context has batch {b}, but x has batch {batch}")
    if width is not None and w != width:
        raise ValueError(f"context embeddings must have width {width}, got {w}")
    if not torch.is_tensor(mask) or mask.dtype != torch.bool or tuple(mask.shape) != (b, n):
        got = f"{mask.dtype} {tuple(mask.shape)}" if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"context mask must be a bool tensor of shape {(b, n)}, got {got}")
    if b and not bool(mask.any(dim=1).all()):
        raise ValueError("every row of the context mask needs at least one True (a real token)")


class TextEncoder(nn.Module):
    """Token ids (B, L) and their mask (B, L) -> embeddings (B, L, width), zero at padding.

    A token embedding plus a learned position embedding, then `depth` pre-norm transformer
    encoder layers whose self-attention skips padded tokens, and a final LayerNorm.
    """

    def __init__(
        self, vocab_size: int, width: int = 64, depth: int = 2, heads: int = 4, max_len: int = 8
    ) -> None:
        super().__init__()
        check_int("vocab_size", vocab_size, 2)
        check_int("width", width, 1)
        check_int("depth", depth, 1)
        check_int("heads", heads, 1)
        check_int("max_len", max_len, 1)
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.vocab_size, self.width, self.max_len = vocab_size, width, max_len
        self.tokens = nn.Embedding(vocab_size, width)
        self.positions = nn.Parameter(torch.randn(max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        if not torch.is_tensor(ids) or ids.dtype != torch.long or ids.ndim != 2:
            got = f"{ids.dtype} {tuple(ids.shape)}" if torch.is_tensor(ids) else type(ids)
            raise ValueError(f"token ids must be an int64 tensor (B, L), got {got}")
        b, n = ids.shape
        if n > self.max_len:
            raise ValueError(f"token ids have length {n}; the encoder takes at most {self.max_len}")
        if n and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise ValueError(f"token ids must be in 0..{self.vocab_size - 1}")
        check_context(torch.zeros(b, n, 1), mask)
        h = self.tokens(ids) + self.positions[:n]
        h = self.layers(h, src_key_padding_mask=~mask)
        return self.norm(h) * mask[..., None]


class CrossAttention(nn.Module):
    """Image features (B, C, H, W) attend to a context (B, L, context_dim) with its mask:
    multi-head attention, queries from the GroupNorm-ed features, keys and values from the
    context, added back to the input through an output projection. The projection starts at
    zero, so a fresh block is the identity and a network gains it without changing."""

    def __init__(self, channels: int, context_dim: int, heads: int = 4, groups: int = 8) -> None:
        super().__init__()
        check_int("channels", channels, 1)
        check_int("context_dim", context_dim, 1)
        check_int("heads", heads, 1)
        if channels % heads:
            raise ValueError(f"channels {channels} must be divisible by heads {heads}")
        self.heads, self.context_dim = heads, context_dim
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.q = nn.Linear(channels, channels, bias=False)
        self.kv = nn.Linear(context_dim, 2 * channels, bias=False)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, emb: Tensor, mask: Tensor) -> Tensor:
        b, c, h, w = x.shape
        check_context(emb, mask, batch=b, width=self.context_dim)
        hd = c // self.heads
        q = self.q(self.norm(x).flatten(2).transpose(1, 2))  # (B, HW, C)
        k, v = self.kv(emb.to(q.dtype)).chunk(2, dim=-1)  # (B, L, C) each

        def split(t: Tensor) -> Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
            return t.reshape(b, -1, self.heads, hd).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            split(q), split(k), split(v), attn_mask=mask[:, None, None, :]
        )
        out = self.proj(out.transpose(1, 2).reshape(b, h * w, c))
        return x + out.transpose(1, 2).reshape(b, c, h, w)
