"""Image autoencoders for latent diffusion: a KL-regularised autoencoder (Rombach et al. 2022,
LDM) and a VQ-VAE (van den Oord et al. 2017) with EMA codebook updates (Razavi et al. 2019).

Both map images (B, C, H, W) to a spatial latent (B, C_z, h, w) and back, and share the
interface `sdegen.models.latent.LatentDiffusion` builds on:

    latent_shape               (C_z, h, w)
    encode_latents(x, noise)   x -> z (B, *latent_shape): a posterior draw mean + std * noise
                               (KL) or the encoder output z_e before quantization (VQ)
    decode_latents(z)          z -> the decoder's mean image (B, *event_shape); the VQ-VAE
                               quantizes z first (LDM's "VQ-reg" decoder)
    latent_scale               a buffer, 1 / std of the latents over the data (LDM rescales
                               latents to unit std before diffusion), set by `fit_latent_scale`
    evaluate(x)                reconstruction error (MSE, PSNR) and rate (KL in bits per image,
                               or code length and codebook usage for the VQ-VAE)

Images are the package's bin centres in [-1, 1] (`sdegen.data.images`), so the PSNR's peak-to-
peak range is 2: PSNR = 10 log10(2^2 / MSE).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import check_choice, check_finite_number, check_int, check_tensor_finite
from ..data.quantize import to_centres, to_levels
from .vae import VAE

UPDATES = ("ema", "loss")
PEAK_TO_PEAK = 2.0  # images live in [-1, 1]


def psnr(mse: float, peak_to_peak: float = PEAK_TO_PEAK) -> float:
    """Peak signal-to-noise ratio 10 log10(peak_to_peak^2 / mse) in dB (inf for mse = 0).

    Example:
        >>> from sdegen.models.autoencoder import psnr
        >>> round(psnr(0.04), 6)  # an rms error of 0.2 on [-1, 1] images: 10 log10(100)
        20.0
    """
    mse = check_finite_number("mse", mse, nonnegative=True)
    peak = check_finite_number("peak_to_peak", peak_to_peak, positive=True)
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def _check_image_shape(shape: Sequence[int], downsample: int) -> tuple[int, int, int]:
    shape = tuple(shape)
    ok = len(shape) == 3 and all(type(s) is int and s > 0 for s in shape)
    f = 2**downsample
    if not ok or shape[1] % f or shape[2] % f:
        raise ValueError(
            f"shape must be (C, H, W) with H and W divisible by 2^downsample = {f}, got {shape!r}"
        )
    return shape  # type: ignore[return-value]


def conv_codec(
    shape: Sequence[int], latent_channels: int, out_channels: int, hidden: int, downsample: int
) -> tuple[nn.Sequential, nn.Sequential, tuple[int, int, int]]:
    """A small conv encoder/decoder pair between images (B, C, H, W) and latents (B, C_z, h, w),
    h = H / 2^downsample: conv3x3, `downsample` stride-2 4x4 convs doubling the width from
    `hidden`, conv3x3 and a 1x1 conv to `out_channels` (flattened to (B, out_channels * h * w),
    the form `VAE` expects); the decoder is the mirror image with transposed convs, from
    (B, C_z * h * w). Returns (encoder, decoder, latent_shape)."""
    downsample = check_int("downsample", downsample, 0)
    c, h, w = _check_image_shape(shape, downsample)
    latent_channels = check_int("latent_channels", latent_channels, 1)
    hidden = check_int("hidden", hidden, 1)
    latent = (latent_channels, h // 2**downsample, w // 2**downsample)
    widths = [hidden * 2**i for i in range(downsample + 1)]
    enc: list[nn.Module] = [nn.Conv2d(c, widths[0], 3, padding=1)]
    for a, b in zip(widths, widths[1:]):
        enc += [nn.SiLU(), nn.Conv2d(a, b, 4, 2, 1)]
    enc += [nn.SiLU(), nn.Conv2d(widths[-1], widths[-1], 3, padding=1), nn.SiLU()]
    enc += [nn.Conv2d(widths[-1], out_channels, 1), nn.Flatten()]
    dec: list[nn.Module] = [
        nn.Unflatten(1, latent),
        nn.Conv2d(latent_channels, widths[-1], 3, 1, 1),
    ]
    dec += [nn.SiLU(), nn.Conv2d(widths[-1], widths[-1], 3, padding=1)]
    for a, b in zip(widths[::-1], widths[-2::-1]):
        dec += [nn.SiLU(), nn.ConvTranspose2d(a, b, 4, 2, 1)]
    dec += [nn.SiLU(), nn.Conv2d(widths[0], c, 3, padding=1)]
    return nn.Sequential(*enc), nn.Sequential(*dec), latent


class _LatentCodec:
    """`fit_latent_scale` and `check_latents` for autoencoders with `encode_latents`."""

    latent_shape: tuple[int, ...]
    latent_scale: Tensor
    encode_latents: Callable[..., Tensor]  # (x, noise) -> z, defined by each autoencoder

    def check_latents(self, z: Tensor) -> None:
        """Raise ValueError unless z is a finite tensor of shape (B, *latent_shape)."""
        if not torch.is_tensor(z) or tuple(z.shape[1:]) != self.latent_shape or z.ndim < 2:
            got = tuple(z.shape) if torch.is_tensor(z) else type(z).__name__
            raise ValueError(
                f"z must have shape (batch, *latent_shape {self.latent_shape}), got {got}"
            )
        check_tensor_finite("z", z)

    @torch.no_grad()
    def fit_latent_scale(
        self, x: Tensor, *, generator: torch.Generator | None = None, batch: int = 512
    ) -> float:
        """Set `latent_scale` to 1 / std of the latents of x (B, *event_shape), as LDM rescales
        latents to unit std before diffusion (Rombach et al. 2022, Sec. 4.3.2 / App. G): the std
        over every element of encode_latents(x, noise), noise ~ N(0, I) drawn with `generator`
        (a posterior draw for the KL autoencoder). Returns the scale."""
        check_int("batch", batch, 1)
        zs = []
        for chunk in x.split(batch):
            noise = torch.randn(
                (chunk.shape[0], *self.latent_shape),
                generator=generator,
                dtype=chunk.dtype,
                device=chunk.device,
            )
            zs.append(self.encode_latents(chunk, noise))
        std = float(torch.cat(zs).std())
        if not math.isfinite(std) or std <= 0:
            raise ValueError(f"the latents of x have std {std}; cannot rescale them to unit std")
        self.latent_scale.fill_(1.0 / std)
        return 1.0 / std


class KLAutoencoder(VAE, _LatentCodec):
    """KL-regularised autoencoder of latent diffusion (Rombach et al. 2022, "KL-reg"): a VAE
    with a spatial latent (C_z, h, w), a diagonal Gaussian posterior q(z|x), prior N(0, I) and a
    small KL weight, so the latent keeps the image's detail and stays near unit scale.

    loss(x) = -(E_q log p(x|z) - beta KL(q(z|x) || N(0, I))), the `VAE` objective (a beta-VAE,
    Higgins et al. 2017, with beta << 1); with beta = 1 it is the negative ELBO. The decoder
    likelihoods ("gaussian" with a learned or fixed scale, "bernoulli", "discretized") and the
    ELBO / importance-weighted log_prob are the VAE's, on the flattened latent.

    Args:
        encoder: x (B, *event_shape) -> (B, 2 * prod(latent_shape)), the posterior mean and
            log-std, each a flattened (C_z, h, w) block (first and second half).
        decoder: z (N, prod(latent_shape)) -> (N, *event_shape).
        event_shape: image shape (C, H, W) (any shape works).
        latent_shape: latent shape, e.g. (2, 4, 4) for 8x8 digits.
        likelihood, decoder_scale, levels: as in `VAE`.
        beta: KL weight, a finite number >= 0 (LDM: 1e-6 with an L1/perceptual loss).

    Example:
        >>> import torch
        >>> from sdegen.models import KLAutoencoder
        >>> _ = torch.manual_seed(0)
        >>> ae = KLAutoencoder.conv((1, 8, 8), latent_channels=2, hidden=8)
        >>> ae.latent_shape
        (2, 4, 4)
        >>> x = torch.rand(5, 1, 8, 8) * 2 - 1
        >>> mean, std = ae.posterior(x)
        >>> mean.shape, ae.decode_latents(mean).shape
        (torch.Size([5, 2, 4, 4]), torch.Size([5, 1, 8, 8]))
        >>> sorted(ae.evaluate(x))
        ['elbo', 'mse', 'psnr', 'rate_bits', 'rate_nats']
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        event_shape: tuple[int, ...],
        latent_shape: tuple[int, ...],
        likelihood: str = "gaussian",
        *,
        beta: float = 1e-3,
        decoder_scale: float | None = None,
        levels: int | None = None,
    ) -> None:
        latent = tuple(latent_shape)
        if not latent or any(type(s) is not int or s < 1 for s in latent):
            raise ValueError(
                f"latent_shape must be a non-empty tuple of positive ints, got {latent}"
            )
        super().__init__(
            encoder,
            decoder,
            event_shape,
            math.prod(latent),
            likelihood,
            beta=beta,
            decoder_scale=decoder_scale,
            levels=levels,
        )
        self.latent_shape = latent
        self.register_buffer("latent_scale", torch.tensor(1.0))

    @classmethod
    def conv(  # type: ignore[override]  # a spatial latent: latent_channels, downsample
        cls,
        shape: Sequence[int],
        latent_channels: int = 2,
        hidden: int = 32,
        downsample: int = 1,
        likelihood: str = "gaussian",
        **kwargs,
    ) -> KLAutoencoder:
        """A small conv KL autoencoder (see `conv_codec`) for images (C, H, W) to latents
        (latent_channels, H / 2^downsample, W / 2^downsample); keyword arguments go to
        `KLAutoencoder`. E.g. 8x8 digits -> (2, 4, 4); 28x28 MNIST with downsample=2 -> 7x7."""
        check_int("latent_channels", latent_channels, 1)
        enc, dec, latent = conv_codec(
            shape, latent_channels, 2 * latent_channels, hidden, downsample
        )
        return cls(enc, dec, tuple(shape), latent, likelihood, **kwargs)

    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x) = N(mean, diag std^2): x (B, *event_shape) -> mean and std, each
        (B, *latent_shape), unscaled (multiply by `latent_scale` for the diffusion's latents).
        x is checked, and snapped to its bin centre for the "discretized" decoder."""
        mu, log_sigma = self.encode(self._prepare(x))
        return mu.reshape(-1, *self.latent_shape), torch.exp(log_sigma).reshape(
            mu.shape[0], *self.latent_shape
        )

    def encode_latents(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """A posterior draw z = mean + std * noise (B, *latent_shape); noise None: the mean."""
        mean, std = self.posterior(x)
        if noise is None:
            return mean
        if not torch.is_tensor(noise) or noise.shape != mean.shape:
            got = tuple(noise.shape) if torch.is_tensor(noise) else type(noise).__name__
            raise ValueError(f"noise must have shape {tuple(mean.shape)}, got {got}")
        return mean + std * noise

    def image_mean(self, out: Tensor) -> Tensor:
        """The decoder's mean image from its output (N, *event_shape): the Gaussian mean, the
        Bernoulli probabilities, or the logistic location snapped to its bin centre."""
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out)
        if self.likelihood == "discretized":
            return to_centres(to_levels(out, self._levels), self._levels, dtype=out.dtype)
        return out

    def draw(self, out: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A draw x ~ p(x|z) (N, *event_shape) from the decoder output `out` (as `sample` of
        the VAE draws): Gaussian mean + scale * eps, a Bernoulli draw, or a logistic draw
        snapped to its bin centre ("discretized"); noise from `generator`."""
        if self.likelihood == "bernoulli":
            return torch.bernoulli(torch.sigmoid(out), generator=generator)
        if self.likelihood == "gaussian":
            noise = torch.randn(out.shape, generator=generator, dtype=out.dtype, device=out.device)
        else:  # logistic noise log(u) - log(1 - u)
            u = torch.rand(out.shape, generator=generator, dtype=out.dtype, device=out.device)
            u = u.clamp(1e-12, 1 - 1e-12)
            noise = torch.log(u) - torch.log1p(-u)
        x = out + torch.exp(self.log_scale) * noise
        return self.image_mean(x) if self.likelihood == "discretized" else x

    def decode_latents(self, z: Tensor) -> Tensor:
        """The decoder's mean image (N, *event_shape) for unscaled latents z (N, *latent_shape)."""
        self.check_latents(z)
        return self.image_mean(self.decode(z.reshape(z.shape[0], -1)))

    @torch.no_grad()
    def evaluate(self, x: Tensor, generator: torch.Generator | None = None) -> dict[str, float]:
        """Reconstruction and rate on x (B, *event_shape), means over the batch: `mse` per pixel
        and `psnr` (dB) of the decoded posterior mean against x (its bin centres for the
        "discretized" decoder), the rate KL(q(z|x) || N(0, I)) per image in nats (`rate_nats`)
        and bits (`rate_bits`), and the one-sample `elbo` (nats per image; a bound on log p)."""
        xp = self._prepare(x)
        mse = float((self.decode_latents(self.encode_latents(xp)) - xp).square().mean())
        rec, kl = self.elbo_terms(xp, generator)
        rate = float(kl.mean())
        return {
            "mse": mse,
            "psnr": psnr(mse),
            "rate_nats": rate,
            "rate_bits": rate / math.log(2),
            "elbo": float((rec - kl).mean()),
        }


@dataclass(frozen=True)
class Quantized:
    """The output of `VectorQuantizer` on z_e (B, D, *S) (D the code width, S spatial dims).

    z_q: the nearest codes with the straight-through gradient, z_e + sg(e - z_e), (B, D, *S):
        its value is the codes' (up to rounding), its gradient w.r.t. z_e the identity.
    indices: the chosen code per position, int64 (B, *S).
    commitment: mean over elements of (z_e - sg(e))^2, a scalar (weight it by beta).
    codebook_loss: mean over elements of (sg(z_e) - e)^2, a scalar; zero-gradient for the EMA
        codebook (a buffer), whose update replaces this loss.
    perplexity: exp of the entropy of the batch's code frequencies (1 to K), a scalar.
    usage: fraction of the K codes used at least once in the batch, a scalar.
    """

    z_q: Tensor
    indices: Tensor
    commitment: Tensor
    codebook_loss: Tensor
    perplexity: Tensor
    usage: Tensor


def codebook_usage(indices: Tensor, num_codes: int) -> tuple[Tensor, Tensor]:
    """Perplexity exp(-sum_k p_k log p_k) of the code frequencies p_k in `indices` (any shape,
    int64 in 0..num_codes-1) and the fraction of the num_codes codes that occur. A uniform
    assignment over k codes has perplexity k; perplexity K means all codes equally used.

    Example:
        >>> import torch
        >>> from sdegen.models.autoencoder import codebook_usage
        >>> perplexity, usage = codebook_usage(torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), 16)
        >>> round(float(perplexity), 6), float(usage)
        (4.0, 0.25)
    """
    num_codes = check_int("num_codes", num_codes, 1)
    if not torch.is_tensor(indices) or indices.is_floating_point() or indices.numel() == 0:
        raise ValueError(f"indices must be a nonempty integer tensor, got {indices!r}")
    if int(indices.min()) < 0 or int(indices.max()) >= num_codes:
        raise ValueError(
            f"indices must lie in 0..{num_codes - 1}, "
            f"got values in {int(indices.min())}..{int(indices.max())}"
        )
    counts = torch.bincount(indices.reshape(-1), minlength=num_codes).to(torch.float64)
    p = counts / counts.sum()
    entropy = -torch.special.xlogy(p, p).sum()  # 0 log 0 = 0
    return torch.exp(entropy), (counts > 0).to(torch.float64).mean()


class VectorQuantizer(nn.Module):
    """Nearest-neighbour vector quantization with a straight-through gradient (van den Oord et
    al. 2017, VQ-VAE), the codebook learned by its loss or by exponential moving averages
    (Razavi et al. 2019, VQ-VAE-2, App. A.1; van den Oord et al. 2017, App. A.1).

    EMA update in training mode, for a batch with n_k vectors z_j assigned to code k:
        N_k <- decay N_k + (1 - decay) n_k,     m_k <- decay m_k + (1 - decay) sum_j z_j,
        e_k = m_k / N~_k,   N~_k = (N_k + epsilon) / (n + K epsilon) * n,   n = sum_k N_k,
    the Laplace smoothing N~ keeping unused codes from dividing by zero. N starts at 1 and m at
    the initial codebook, so an unused code keeps its vector. With `restart_threshold`, codes
    whose N_k falls below it are restarted at random encoder outputs of the batch (dead-code
    restart), their N_k reset to 1. EMA statistics are per process (not synchronised by DDP).

    Args:
        num_codes: K, an integer >= 1.
        dim: code width D, an integer >= 1.
        update: "ema" (codebook a buffer, updated in training-mode forward) or "loss" (codebook
            a parameter trained by `codebook_loss`).
        decay: EMA decay in [0, 1).
        epsilon: Laplace smoothing, > 0.
        restart_threshold: None (off) or a number > 0, in units of N_k.
    """

    codebook: Tensor  # (K, D): a parameter ("loss") or a buffer ("ema")
    ema_count: Tensor  # (K,) N_k, "ema" only
    ema_sum: Tensor  # (K, D) m_k, "ema" only

    def __init__(
        self,
        num_codes: int,
        dim: int,
        *,
        update: str = "ema",
        decay: float = 0.99,
        epsilon: float = 1e-5,
        restart_threshold: float | None = None,
    ) -> None:
        super().__init__()
        self.num_codes = check_int("num_codes", num_codes, 1)
        self.dim = check_int("dim", dim, 1)
        self.update = check_choice("update", update, UPDATES)
        decay = check_finite_number("decay", decay, nonnegative=True)
        if decay >= 1:
            raise ValueError(f"decay must be in [0, 1), got {decay!r}")
        self.decay = decay
        self.epsilon = check_finite_number("epsilon", epsilon, positive=True)
        self.restart_threshold = (
            None
            if restart_threshold is None
            else check_finite_number("restart_threshold", restart_threshold, positive=True)
        )
        init = torch.randn(num_codes, dim)
        if update == "loss":
            self.codebook = nn.Parameter(init)
        else:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", init.clone())

    def nearest(self, flat: Tensor) -> Tensor:
        """Index of the nearest code (Euclidean) for each row of flat (M, D) -> int64 (M,)."""
        e = self.codebook.to(flat.dtype)
        d2 = flat.square().sum(1, keepdim=True) - 2 * flat @ e.T + e.square().sum(1)[None]
        return d2.argmin(dim=1)

    def forward(self, z_e: Tensor, generator: torch.Generator | None = None) -> Quantized:
        """Quantize z_e (B, D, *S) to its nearest codes; see `Quantized`. In training mode with
        update="ema" the codebook is updated from this batch after the codes are chosen;
        `generator` draws the restart vectors."""
        if not torch.is_tensor(z_e) or z_e.ndim < 2 or z_e.shape[1] != self.dim:
            got = tuple(z_e.shape) if torch.is_tensor(z_e) else type(z_e).__name__
            raise ValueError(f"z_e must have shape (batch, {self.dim}, ...), got {got}")
        check_tensor_finite("z_e", z_e)
        moved = z_e.movedim(1, -1)  # (B, *S, D)
        flat = moved.reshape(-1, self.dim)
        idx = self.nearest(flat.detach())
        e = self.codebook.to(z_e.dtype)[idx].reshape(moved.shape).movedim(-1, 1)
        commitment = F.mse_loss(z_e, e.detach())
        codebook_loss = F.mse_loss(z_e.detach(), e)
        perplexity, usage = codebook_usage(idx, self.num_codes)
        if self.training and self.update == "ema":
            self._ema_update(flat.detach(), idx, generator)
        return Quantized(
            z_q=z_e + (e - z_e).detach(),
            indices=idx.reshape(moved.shape[:-1]),
            commitment=commitment,
            codebook_loss=codebook_loss,
            perplexity=perplexity.to(z_e.dtype),
            usage=usage.to(z_e.dtype),
        )

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, idx: Tensor, generator: torch.Generator | None) -> None:
        onehot = F.one_hot(idx, self.num_codes).to(self.ema_count.dtype)
        flat = flat.to(self.ema_count.dtype)
        self.ema_count.mul_(self.decay).add_(onehot.sum(0), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(onehot.T @ flat, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.epsilon) / (n + self.num_codes * self.epsilon) * n
        self.codebook.copy_(self.ema_sum / smoothed[:, None])
        if self.restart_threshold is not None:
            dead = torch.nonzero(self.ema_count < self.restart_threshold).reshape(-1)
            if dead.numel():
                pick = torch.randint(
                    flat.shape[0], (dead.numel(),), generator=generator, device=flat.device
                )
                self.codebook[dead] = flat[pick]
                self.ema_sum[dead] = flat[pick]
                self.ema_count[dead] = 1.0

    def lookup(self, indices: Tensor) -> Tensor:
        """Codes for integer indices (B, *S) -> (B, D, *S)."""
        if not torch.is_tensor(indices) or indices.is_floating_point() or indices.ndim < 1:
            raise ValueError(f"indices must be an integer tensor (batch, ...), got {indices!r}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_codes):
            raise ValueError(f"indices must lie in 0..{self.num_codes - 1}")
        return self.codebook[indices].movedim(-1, 1)


class VQVAE(nn.Module, _LatentCodec):
    """VQ-VAE (van den Oord et al. 2017): encoder -> nearest-code quantization -> decoder.

    loss(x) = mean (decoder(z_q) - x)^2 + codebook_loss ("loss" update only) + beta commitment,
    the paper's objective with a fixed-variance Gaussian decoder (Eq. 3), gradients reaching the
    encoder through the straight-through estimator. The latent z_e (B, D, h, w) is continuous;
    `decode_latents` quantizes before decoding, so a diffusion model may run on z_e (LDM's
    "VQ-reg" autoencoder, Rombach et al. 2022).

    Args:
        encoder: x (B, *event_shape) -> (B, prod(latent_shape)) or (B, *latent_shape).
        decoder: z (N, prod(latent_shape)) -> (N, *event_shape).
        event_shape: image shape (C, H, W).
        latent_shape: (D, h, w), D the code width.
        num_codes: codebook size K.
        beta: commitment weight (paper: 0.25), >= 0.
        update, decay, epsilon, restart_threshold: as in `VectorQuantizer`.

    Example:
        >>> import torch
        >>> from sdegen.models import VQVAE
        >>> _ = torch.manual_seed(0)
        >>> vq = VQVAE.conv((1, 8, 8), num_codes=16, code_dim=4, hidden=8)
        >>> x = torch.rand(6, 1, 8, 8) * 2 - 1
        >>> q = vq.quantize(vq.encode_latents(x))
        >>> q.indices.shape, vq.decode_indices(q.indices).shape
        (torch.Size([6, 4, 4]), torch.Size([6, 1, 8, 8]))
        >>> sorted(vq.evaluate(x))
        ['code_bits', 'mse', 'perplexity', 'psnr', 'usage']
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        event_shape: tuple[int, ...],
        latent_shape: tuple[int, ...],
        num_codes: int,
        *,
        beta: float = 0.25,
        update: str = "ema",
        decay: float = 0.99,
        epsilon: float = 1e-5,
        restart_threshold: float | None = None,
    ) -> None:
        super().__init__()
        for name, net in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(net, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(net).__name__}")
        shape, latent = tuple(event_shape), tuple(latent_shape)
        for name, s in (("event_shape", shape), ("latent_shape", latent)):
            if not s or any(type(v) is not int or v < 1 for v in s):
                raise ValueError(f"{name} must be a non-empty tuple of positive ints, got {s}")
        self.encoder, self.decoder = encoder, decoder
        self.event_shape, self.latent_shape = shape, latent
        self.beta = check_finite_number("beta", beta, nonnegative=True)
        self.quantizer = VectorQuantizer(
            num_codes,
            latent[0],
            update=update,
            decay=decay,
            epsilon=epsilon,
            restart_threshold=restart_threshold,
        )
        self.register_buffer("latent_scale", torch.tensor(1.0))

    @classmethod
    def conv(
        cls,
        shape: Sequence[int],
        num_codes: int = 64,
        code_dim: int = 4,
        hidden: int = 32,
        downsample: int = 1,
        **kwargs,
    ) -> VQVAE:
        """A small conv VQ-VAE (see `conv_codec`) for images (C, H, W) with latents
        (code_dim, H / 2^downsample, W / 2^downsample); keyword arguments go to `VQVAE`."""
        check_int("code_dim", code_dim, 1)
        enc, dec, latent = conv_codec(shape, code_dim, code_dim, hidden, downsample)
        return cls(enc, dec, tuple(shape), latent, num_codes, **kwargs)

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    def _check_x(self, x: Tensor) -> None:
        if not torch.is_tensor(x) or tuple(x.shape[1:]) != self.event_shape or x.shape[0] == 0:
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must have shape (batch >= 1, *{self.event_shape}), got {got}")
        check_tensor_finite("x", x)

    def encode_latents(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """The encoder output z_e (B, *latent_shape) before quantization (deterministic: `noise`
        is ignored; it is accepted for the interface shared with `KLAutoencoder`)."""
        self._check_x(x)
        return self.encoder(x).reshape(x.shape[0], *self.latent_shape)

    def quantize(self, z_e: Tensor, generator: torch.Generator | None = None) -> Quantized:
        """`VectorQuantizer` on z_e (B, *latent_shape)."""
        self.check_latents(z_e)
        return self.quantizer(z_e, generator)

    def decode(self, z_q: Tensor) -> Tensor:
        """Decoder output (N, *event_shape) for quantized latents z_q (N, *latent_shape)."""
        out = self.decoder(z_q.reshape(z_q.shape[0], -1))
        return out.reshape(z_q.shape[0], *self.event_shape)

    def decode_latents(self, z: Tensor) -> Tensor:
        """Images (N, *event_shape) from continuous latents z (N, *latent_shape), quantized to
        their nearest codes first (no codebook update)."""
        self.check_latents(z)
        idx = self.quantizer.nearest(z.movedim(1, -1).reshape(-1, self.latent_shape[0]))
        return self.decode_indices(idx.reshape(z.shape[0], *self.latent_shape[1:]))

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Images (N, *event_shape) from code indices (N, h, w)."""
        return self.decode(self.quantizer.lookup(indices))

    def forward(
        self, x: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Quantized]:
        """Reconstruction (B, *event_shape) and the `Quantized` of x (B, *event_shape)."""
        q = self.quantize(self.encode_latents(x), generator)
        return self.decode(q.z_q), q

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The VQ-VAE objective on x (B, *event_shape), a scalar: reconstruction MSE
        + codebook loss ("loss" update) + beta * commitment. Trains by
        `sdegen.training.density_loss` like the density models."""
        x_hat, q = self(x, generator)
        loss = F.mse_loss(x_hat, x) + self.beta * q.commitment
        return loss + q.codebook_loss if self.quantizer.update == "loss" else loss

    @torch.no_grad()
    def evaluate(self, x: Tensor) -> dict[str, float]:
        """Reconstruction and codebook usage on x (B, *event_shape) (no codebook update):
        `mse` per pixel, `psnr` (dB), `perplexity` and `usage` of the codes over the whole batch,
        and `code_bits`, the bits per image of the codes under their empirical frequencies
        (h w log2 perplexity; at most h w log2 K)."""
        was = self.training
        self.eval()
        try:
            x_hat, q = self(x)
        finally:
            self.train(was)
        mse = float((x_hat - x).square().mean())
        positions = math.prod(self.latent_shape[1:])
        return {
            "mse": mse,
            "psnr": psnr(mse),
            "perplexity": float(q.perplexity),
            "usage": float(q.usage),
            "code_bits": positions * math.log2(float(q.perplexity)),
        }
