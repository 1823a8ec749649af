"""A Diffusion Transformer (DiT, Peebles & Xie 2023) for noise-conditional score models of images.

The image is cut into p x p patches, each patch linearly embedded as one token, a 2-D
positional embedding added, and the tokens pass N transformer blocks conditioned on the noise
level (and class label) by adaLN-Zero; a final adaptive LayerNorm and a linear layer map every
token back to a p x p patch. Same call as the U-Net, ``net(x, c_noise, y=None)`` with x
(B, C, H, W), so it drops into `ScoreModel` and every sampler.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._utils import check_choice, check_finite_number, check_int
from .labels import LabelEmbedding
from .networks import (
    SinusoidalEmbedding,
    add_label_embedding,
    check_noise_levels,
    dot_product_attention,
    time_mlp,
)
from .text import CrossAttention, check_text_conditioner, network_condition

POS_EMBEDDINGS = ("sincos", "learned")


def _check_image(x: Tensor, channels: int, patch_size: int) -> None:
    if not torch.is_tensor(x) or x.ndim != 4 or x.shape[1] != channels:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must have shape (batch, {channels}, height, width), got {got}")
    if x.shape[2] % patch_size or x.shape[3] % patch_size:
        raise ValueError(
            f"x height and width must be divisible by patch_size {patch_size}, got shape "
            f"{tuple(x.shape)} (height {x.shape[2]}, width {x.shape[3]})"
        )


def patchify(x: Tensor, patch_size: int) -> Tensor:
    """Cut images into non-overlapping patches: x (B, C, H, W) -> tokens (B, N, p * p * C).

    N = (H / p) (W / p) patches in row-major order of the patch grid; each token lists its
    patch's values in (row, column, channel) order. H and W must be divisible by p. The inverse
    is `unpatchify`.
    """
    p = check_int("patch_size", patch_size, 1)
    if not torch.is_tensor(x) or x.ndim != 4:
        got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
        raise ValueError(f"x must have shape (batch, channels, height, width), got {got}")
    _check_image(x, x.shape[1], p)
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(tokens: Tensor, patch_size: int, height: int, width: int) -> Tensor:
    """Reassemble patches into images: tokens (B, N, p * p * C) -> (B, C, height, width).

    The inverse of `patchify`: N must be (height / p) (width / p), the token width a multiple
    of p * p (C = width / p^2).
    """
    p = check_int("patch_size", patch_size, 1)
    height, width = check_int("height", height, 1), check_int("width", width, 1)
    if height % p or width % p:
        raise ValueError(f"height {height} and width {width} must be divisible by patch_size {p}")
    gh, gw = height // p, width // p
    if (
        not torch.is_tensor(tokens)
        or tokens.ndim != 3
        or tokens.shape[1] != gh * gw
        or tokens.shape[2] % (p * p)
    ):
        got = tuple(tokens.shape) if torch.is_tensor(tokens) else type(tokens).__name__
        raise ValueError(
            f"tokens must have shape (batch, {gh * gw}, p * p * channels) with p = {p} for "
            f"{height}x{width} images, got {got}"
        )
    b, c = tokens.shape[0], tokens.shape[2] // (p * p)
    x = tokens.reshape(b, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, height, width)


def sincos_pos_embed(dim: int, grid_h: int, grid_w: int) -> Tensor:
    """Fixed 2-D sine-cosine positional embedding of a grid_h x grid_w patch grid: (N, dim).

    As in ViT/MAE and DiT: the first dim / 2 features are the 1-D sinusoidal embedding
    (`SinusoidalEmbedding`, max period 10000) of the patch's row index, the last dim / 2 that of
    its column index; rows of the result in `patchify`'s row-major patch order. dim must be a
    multiple of 4.
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 4 or dim % 4:
        raise ValueError(f"dim must be a multiple of 4 (>= 4) for the 2-D sin-cos, got {dim!r}")
    grid_h, grid_w = check_int("grid_h", grid_h, 1), check_int("grid_w", grid_w, 1)
    embed = SinusoidalEmbedding(dim // 2)
    rows = torch.arange(grid_h).repeat_interleave(grid_w)
    cols = torch.arange(grid_w).repeat(grid_h)
    dtype = torch.get_default_dtype()
    return torch.cat([embed(rows.to(dtype)), embed(cols.to(dtype))], dim=1)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """Adaptive LayerNorm's affine step: x (B, N, D) * (1 + scale) + shift, scale/shift (B, D)."""
    return x * (1 + scale[:, None]) + shift[:, None]


class DiTBlock(nn.Module):
    """Transformer block with adaLN-Zero conditioning (Peebles & Xie 2023, Fig. 3).

    From the conditioning c (B, cond_dim) a linear map gives six (B, hidden) vectors
    (shift, scale, gate) for the attention and the MLP branch; each branch sees
    modulate(LayerNorm(h), shift, scale) and is added back multiplied by its gate:
    h + gate * branch(...). The map is zero-initialised, so every gate starts at 0 and the block
    starts as the identity. Maps tokens (B, N, hidden) to (B, N, hidden).
    """

    def __init__(self, hidden: int, heads: int, mlp_ratio: float, cond_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        width = max(1, round(hidden * mlp_ratio))
        self.mlp = nn.Sequential(
            nn.Linear(hidden, width), nn.GELU(approximate="tanh"), nn.Linear(width, hidden)
        )
        self.ada = nn.Linear(cond_dim, 6 * hidden)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def attention(self, h: Tensor) -> Tensor:
        """Multi-head self-attention over the N tokens of each example: (B, N, D) -> (B, N, D)."""
        b, n, d = h.shape
        # (B, N, 3D) -> three (B, heads, N, D / heads)
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(c).chunk(6, dim=1)
        h = h + gate1[:, None] * self.attention(modulate(self.norm1(h), shift1, scale1))
        return h + gate2[:, None] * self.mlp(modulate(self.norm2(h), shift2, scale2))


class DiT(nn.Module):
    """Diffusion Transformer (Peebles & Xie 2023): (B, C, H, W), (B,) -> (B, out_channels, H, W).

    x is cut into patch_size x patch_size patches (`patchify`), each embedded by one Linear as
    a token of width `hidden`, plus a positional embedding: the fixed 2-D sin-cos one
    (`sincos_pos_embed`, any H and W) or a learned one (for `input_size` only). The noise
    level c_noise is embedded as in the package's U-Net (`SinusoidalEmbedding` of width
    `hidden` and the 2-layer `time_mlp` of width `embed_dim`, whose trailing SiLU is the SiLU
    DiT applies before its modulation maps), and, on a class-conditional network, a learned
    label embedding with a null row for `NULL_LABEL` is added: the conditioning c. `depth`
    `DiTBlock`s with adaLN-Zero follow, then a final adaptive LayerNorm (shift and scale from
    c) and a Linear to p * p * out_channels per token, reassembled by `unpatchify`.

    adaLN-Zero: every modulation map and the final Linear are zero-initialised, so each block
    starts as the identity and the untrained network outputs exactly zero (as in DiT; with the
    "eps" parametrization an untrained model's score is then exactly 0).

    Args:
        in_channels: image channels C.
        patch_size: patch side p; H and W must be divisible by it.
        hidden: token width; divisible by `heads`, and by 4 for the sin-cos embedding.
        depth: number of transformer blocks.
        heads: attention heads.
        mlp_ratio: MLP width / hidden; finite and > 0.
        pos_embed: "sincos" (fixed; default, as DiT) or "learned" (needs `input_size`).
        input_size: (H, W), or an int for square images: the one image size a learned
            positional embedding is made for; ignored by "sincos".
        embed_dim: width of the conditioning c; default `hidden`.
        out_channels: output channels; default `in_channels`.
        num_classes: class-conditional on this many classes (label dropout to `NULL_LABEL`
            gives classifier-free guidance); None: unconditional.
        text: text-conditional through a conditioner of `sdegen.models.text` (token ids, or
            another encoder's embeddings): after every block the tokens read the context by
            a `CrossAttention` (zero-initialised, so the untrained output stays 0). Not
            together with num_classes.

    Example:
        >>> import torch
        >>> from sdegen.models import DiT
        >>> net = DiT(in_channels=1, patch_size=2, hidden=32, depth=2, heads=2)
        >>> out = net(torch.randn(3, 1, 8, 8), torch.zeros(3))
        >>> out.shape, bool((out == 0).all())   # adaLN-Zero: exactly zero before training
        (torch.Size([3, 1, 8, 8]), True)
    """

    def __init__(
        self,
        in_channels: int = 1,
        patch_size: int = 2,
        hidden: int = 64,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        pos_embed: str = "sincos",
        input_size: int | tuple[int, int] | None = None,
        embed_dim: int | None = None,
        out_channels: int | None = None,
        num_classes: int | None = None,
        text: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, 1)
        self.out_channels = check_int(
            "out_channels", in_channels if out_channels is None else out_channels, 1
        )
        self.patch_size = p = check_int("patch_size", patch_size, 1)
        self.hidden = check_int("hidden", hidden, 2)
        self.depth = check_int("depth", depth, 1)
        self.heads = check_int("heads", heads, 1)
        if hidden % heads:
            raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")
        mlp_ratio = check_finite_number("mlp_ratio", mlp_ratio, positive=True)
        self.pos_embed_kind = check_choice("pos_embed", pos_embed, POS_EMBEDDINGS)
        if pos_embed == "sincos" and hidden % 4:
            raise ValueError(
                f"hidden ({hidden}) must be a multiple of 4 for pos_embed='sincos' (half the "
                "features for rows, half for columns, each cosines and sines)"
            )
        embed_dim = hidden if embed_dim is None else embed_dim
        check_int("embed_dim", embed_dim, 1)

        self.input_size: tuple[int, int] | None = None
        if pos_embed == "learned":
            if input_size is None:
                raise ValueError(
                    "pos_embed='learned' needs input_size, the (height, width) of the images"
                )
            size = (input_size, input_size) if isinstance(input_size, int) else input_size
            if len(tuple(size)) != 2:
                raise ValueError(
                    f"input_size must be an int or (height, width), got {input_size!r}"
                )
            ih, iw = (check_int("input_size", s, 1) for s in size)
            if ih % p or iw % p:
                raise ValueError(
                    f"input_size {(ih, iw)} must be divisible by patch_size {p} in both sides"
                )
            self.input_size = (ih, iw)
            # ViT's initialisation: small random positions, so patches differ from the start
            self.pos = nn.Parameter(torch.randn((ih // p) * (iw // p), hidden) * 0.02)

        self.patch_embed = nn.Linear(p * p * self.in_channels, hidden)
        self.embed = SinusoidalEmbedding(hidden + hidden % 2)
        self.time_mlp = time_mlp(self.embed.dim, embed_dim)
        self.num_classes = num_classes
        self.label_embed = (
            LabelEmbedding(num_classes, embed_dim) if num_classes is not None else None
        )
        self.blocks = nn.ModuleList(
            DiTBlock(hidden, heads, mlp_ratio, embed_dim) for _ in range(depth)
        )
        check_text_conditioner(text)
        if text is not None and num_classes is not None:
            raise ValueError("give num_classes or text, not both")
        self.text = text
        self.cross = (
            nn.ModuleList(
                CrossAttention(hidden, int(text.width), heads, tokens=True)  # type: ignore[arg-type]
                for _ in range(depth)
            )
            if text is not None
            else None
        )
        self.norm_out = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(embed_dim, 2 * hidden)
        self.out = nn.Linear(hidden, p * p * self.out_channels)
        for layer in (self.ada_out, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def positions(self, grid_h: int, grid_w: int, like: Tensor) -> Tensor:
        """The positional embedding of a grid_h x grid_w patch grid, (N, hidden), like's dtype."""
        if self.pos_embed_kind == "learned":
            return self.pos.to(like.dtype)
        return sincos_pos_embed(self.hidden, grid_h, grid_w).to(like.device, like.dtype)

    def check_condition(self, y, batch: int) -> Tensor:
        """The condition y checked for this network: class labels (batch,), or what its text
        conditioner takes."""
        return network_condition(self.text, self.num_classes, y, batch)

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        """Output (B, out_channels, H, W) for x (B, in_channels, H, W), c_noise (B,) and
        the optional condition y: labels (B,), or what a text conditioner takes; y = None on a
        conditional network is the null condition throughout."""
        p = self.patch_size
        _check_image(x, self.in_channels, p)
        h_img, w_img = x.shape[2], x.shape[3]
        if self.input_size is not None and (h_img, w_img) != self.input_size:
            raise ValueError(
                f"this DiT's learned positional embedding is for {self.input_size[0]}x"
                f"{self.input_size[1]} images, got shape {tuple(x.shape)}; use "
                "pos_embed='sincos' for other sizes"
            )
        check_noise_levels(c_noise, x.shape[0])
        c = self.time_mlp(self.embed(c_noise.to(x.dtype)))
        if self.text is None:
            c = add_label_embedding(self.label_embed, c, y)
        else:
            emb, mask = self.text(y, x.shape[0], x.device)
            context = (emb.to(x.dtype), mask)
        h = self.patch_embed(patchify(x, p)) + self.positions(h_img // p, w_img // p, x)
        for i, block in enumerate(self.blocks):
            h = block(h, c)
            if self.cross is not None:
                h = self.cross[i](h, *context)
        shift, scale = self.ada_out(c).chunk(2, dim=1)
        return unpatchify(self.out(modulate(self.norm_out(h), shift, scale)), p, h_img, w_img)
