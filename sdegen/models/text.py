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
from torch import Tensor, nn

from .._utils import check_int, check_tensor_finite
from .labels import NULL_LABEL, check_labels
from .networks import dot_product_attention

__all__ = [
    "CrossAttention",
    "EmbeddingTable",
    "TextEncoder",
    "TokenConditioner",
    "check_context",
]


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
    zero, so a fresh block is the identity and a network gains it without changing.

    tokens=True: the features are a token sequence (B, N, C) (a transformer's, e.g. the DiT's),
    normalised by a LayerNorm instead."""

    def __init__(
        self,
        channels: int,
        context_dim: int,
        heads: int = 4,
        groups: int = 8,
        *,
        tokens: bool = False,
    ) -> None:
        super().__init__()
        check_int("channels", channels, 1)
        check_int("context_dim", context_dim, 1)
        check_int("heads", heads, 1)
        if channels % heads:
            raise ValueError(f"channels {channels} must be divisible by heads {heads}")
        self.heads, self.context_dim, self.tokens = heads, context_dim, tokens
        self.norm: nn.Module = (
            nn.LayerNorm(channels) if tokens else nn.GroupNorm(min(groups, channels), channels)
        )
        self.q = nn.Linear(channels, channels, bias=False)
        self.kv = nn.Linear(context_dim, 2 * channels, bias=False)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, emb: Tensor, mask: Tensor) -> Tensor:
        b, c = x.shape[0], x.shape[-1 if self.tokens else 1]
        check_context(emb, mask, batch=b, width=self.context_dim)
        hd = c // self.heads
        seq = self.norm(x) if self.tokens else self.norm(x).flatten(2).transpose(1, 2)
        q = self.q(seq)  # (B, N, C), N tokens or H * W positions
        k, v = self.kv(emb.to(q.dtype)).chunk(2, dim=-1)  # (B, L, C) each

        def split(t: Tensor) -> Tensor:  # (B, N, C) -> (B, heads, N, C / heads)
            return t.reshape(b, -1, self.heads, hd).transpose(1, 2)

        out = dot_product_attention(split(q), split(k), split(v), mask[:, None, None, :])
        out = self.proj(out.transpose(1, 2).reshape(b, -1, c))
        return x + (out if self.tokens else out.transpose(1, 2).reshape(x.shape))


def check_text_conditioner(text) -> None:
    """A network's `text` argument checked: a conditioner of this module (or None)."""
    if text is not None and not (isinstance(text, nn.Module) and hasattr(text, "check_condition")):
        raise TypeError(
            "text must be a conditioner from sdegen.models.text (TokenConditioner or "
            f"EmbeddingTable), got {type(text).__name__}"
        )


def network_condition(text: nn.Module | None, num_classes: int | None, y, batch: int) -> Tensor:
    """The condition y of a network checked: by its text conditioner (token ids or table
    indices) when it has one, else as class labels of its num_classes."""
    if text is not None:
        return text.check_condition(y, batch)  # type: ignore[operator]
    return check_labels(y, batch, num_classes)


class TokenConditioner(nn.Module):
    """Token ids -> context, through a TextEncoder: the condition `y` of a text-conditional
    network. y is int64 (B, L) with L <= the encoder's max_len, as `Tokenizer` makes them; a row
    whose first entry is NULL_LABEL (-1) is the null caption (the start token alone), which is
    what label dropout and classifier-free guidance put in (`torch.full_like(y, NULL_LABEL)`).
    y = None is the null caption for the whole batch."""

    def __init__(self, encoder: TextEncoder, start_id: int = 1, pad_id: int = 0) -> None:
        super().__init__()
        if not isinstance(encoder, TextEncoder):
            raise TypeError(f"encoder must be a TextEncoder, got {type(encoder).__name__}")
        self.encoder, self.start_id, self.pad_id = encoder, start_id, pad_id
        self.width = encoder.width

    def check_condition(self, y, batch: int) -> Tensor:
        """y checked as token ids (batch, L) (null rows allowed); ValueError otherwise."""
        if not torch.is_tensor(y) or y.dtype != torch.long or y.ndim != 2 or y.shape[0] != batch:
            got = f"{y.dtype} {tuple(y.shape)}" if torch.is_tensor(y) else repr(y)
            raise ValueError(
                f"a text-conditional model takes token ids y, an int64 tensor (batch={batch}, "
                f"L) from sdegen.data.captions.Tokenizer; got {got}"
            )
        real = y[y[:, 0] != NULL_LABEL]
        if y.shape[1] > self.encoder.max_len:
            raise ValueError(
                f"token ids have length {y.shape[1]}; the encoder takes at most "
                f"{self.encoder.max_len}"
            )
        if real.numel() and (int(real.min()) < 0 or int(real.max()) >= self.encoder.vocab_size):
            raise ValueError(
                f"token ids must be in 0..{self.encoder.vocab_size - 1} (a row starting with "
                f"{NULL_LABEL} is the null caption)"
            )
        return y

    def forward(self, y: Tensor | None, batch: int, device) -> tuple[Tensor, Tensor]:
        if y is None:
            ids = torch.full((batch, 1), self.start_id, dtype=torch.long, device=device)
        else:
            ids = self.check_condition(y, batch).clone()
            null = ids[:, 0] == NULL_LABEL
            ids[null] = self.pad_id
            ids[null, 0] = self.start_id
        mask = ids != self.pad_id
        return self.encoder(ids, mask), mask


class EmbeddingTable(nn.Module):
    """Contexts computed by any text encoder, kept as a table: y (B,) int64 picks row y of
    `emb` (K, L, W) with `mask` (K, L) (NULL_LABEL: the null context). The null context is
    `null_emb` (L0, W) with `null_mask` (L0,) when given (e.g. the encoder's encoding of the
    empty prompt, as Stable Diffusion uses), else one learned token. So embeddings from a real
    encoder (CLIP, T5...) condition the network without it, and `add` appends new prompts."""

    emb: Tensor
    mask: Tensor
    null: Tensor
    null_mask: Tensor

    def __init__(
        self,
        emb: Tensor,
        mask: Tensor,
        null_emb: Tensor | None = None,
        null_mask: Tensor | None = None,
    ) -> None:
        super().__init__()
        check_context(emb, mask)
        self.width = emb.shape[-1]
        self.register_buffer("emb", emb.detach().clone())
        self.register_buffer("mask", mask.clone())
        if (null_emb is None) != (null_mask is None):
            raise ValueError("give both null_emb and null_mask, or neither")
        if null_emb is None:
            self.null = nn.Parameter(torch.zeros(1, 1, self.width, dtype=emb.dtype))
            self.register_buffer("null_mask", torch.ones(1, 1, dtype=torch.bool))
        else:
            check_context(null_emb[None], null_mask[None], width=self.width)  # type: ignore[index]
            self.register_buffer("null", null_emb[None].detach().clone())
            self.register_buffer("null_mask", null_mask[None].clone())  # type: ignore[index]

    def __len__(self) -> int:
        return self.emb.shape[0]

    def add(self, emb: Tensor, mask: Tensor) -> Tensor:
        """Append contexts emb (K', L', W) with mask (K', L'); returns their indices (K',)."""
        check_context(emb, mask, width=self.width)
        n = max(self.emb.shape[1], emb.shape[1])
        old = len(self)
        self.emb = torch.cat([_pad(self.emb, n), _pad(emb.to(self.emb), n)])
        self.mask = torch.cat([_pad(self.mask, n), _pad(mask.to(self.mask.device), n)])
        return torch.arange(old, len(self))

    def check_condition(self, y, batch: int) -> Tensor:
        """y checked as indices (batch,) into the table (NULL_LABEL allowed)."""
        if not torch.is_tensor(y) or y.dtype != torch.long or tuple(y.shape) != (batch,):
            got = f"{y.dtype} {tuple(y.shape)}" if torch.is_tensor(y) else repr(y)
            raise ValueError(
                f"this model takes y as int64 indices ({batch},) into its table of {len(self)} "
                f"contexts; got {got}"
            )
        if batch and (int(y.min()) < NULL_LABEL or int(y.max()) >= len(self)):
            raise ValueError(f"context index out of range; expected 0..{len(self) - 1} or -1")
        return y

    def forward(self, y: Tensor | None, batch: int, device) -> tuple[Tensor, Tensor]:
        n = max(self.emb.shape[1], self.null.shape[1])
        emb = torch.cat([_pad(self.emb, n), _pad(self.null, n)])  # the null context last
        mask = torch.cat([_pad(self.mask, n), _pad(self.null_mask, n)])
        if y is None:
            idx = torch.full((batch,), len(self), dtype=torch.long, device=device)
        else:
            y = self.check_condition(y, batch)
            idx = torch.where(y == NULL_LABEL, len(self), y)
        return emb[idx], mask[idx]


def _pad(t: Tensor, n: int) -> Tensor:
    """t (K, L, ...) zero-padded (False for bool) along dim 1 to length n."""
    if t.shape[1] == n:
        return t
    pad = torch.zeros(t.shape[0], n - t.shape[1], *t.shape[2:], dtype=t.dtype, device=t.device)
    return torch.cat([t, pad], dim=1)
