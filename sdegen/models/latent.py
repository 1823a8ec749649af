"""Latent diffusion (Rombach et al. 2022, LDM): a density model over the latents of a frozen
autoencoder, decoded to images, with a variational bound on the pixel log-likelihood.

`LatentDiffusion(autoencoder, prior)` holds a frozen `KLAutoencoder` or `VQVAE`
(`sdegen.models.autoencoder`) and any density model over its rescaled latents z_s = s z
(s = `autoencoder.latent_scale`, shape `latent_shape`), typically
`sdegen.score_density.ScoreSDEDensity(ScoreModel(UNet(...), sde), sde, latent_shape)`. So every
SDE and every sampler works unchanged on latents: `sample(n, method=..., nfe=...)` draws latents
with the prior's sampler and decodes them, and the score model itself is `prior.model`, usable
with `sdegen.sample(prior.model, sde, (n, *latent_shape))` followed by `decode`.

Likelihood, of kind "bound" (Kingma & Welling 2014; Vahdat et al. 2021, LSGM, Eq. 1): for the
KL autoencoder's Gaussian posterior q(z_s|x),

    log p(x) >= E_q[ log p(x|z) + log p_prior(z_s) - log q(z_s|x) ]
             =  reconstruction  +  prior  +  entropy,

estimated with `samples` reparametrised draws z_s ~ q, log p_prior from the prior's own
log_prob (the latent PF-ODE log-likelihood for a score model: exact up to its ODE tolerance, or
a Hutchinson estimate), log p(x|z) the autoencoder's decoder likelihood. In bits/dim of the
pixels it follows the package's convention (`sdegen.models.density.bits_per_dim` with the
data's bin_width): with the "discretized" decoder it bounds the discrete -log2 P(x) / D. It is
equal to log p(x) when q is the exact posterior of the model prior x decoder; the VQ-VAE has no
posterior density, so it has no bound (log_prob raises).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._utils import check_int
from ..random import randn
from .autoencoder import VQVAE, KLAutoencoder
from .density import DensityModel
from .density import bits_per_dim as _bits_per_dim


def encode_scaled(
    autoencoder: KLAutoencoder | VQVAE, x: Tensor, noise: Tensor | None = None
) -> Tensor:
    """Rescaled latents z_s = s z (N, *latent_shape) of images x (N, *event_shape), in x's
    dtype, without gradients: z is the KL autoencoder's posterior draw mean + std * noise (noise
    None: the mean) or the VQ-VAE's encoder output before quantization. What a latent run
    diffuses (`training.latent_score_matching`) and where an edit of an image starts."""
    scale = autoencoder.latent_scale
    with torch.no_grad():
        return (autoencoder.encode_latents(x.to(scale.dtype), noise) * scale).to(x.dtype)


def decode_scaled(autoencoder: KLAutoencoder | VQVAE, z_s: Tensor) -> Tensor:
    """Images (N, *event_shape), the decoder's mean, of rescaled latents z_s = s z (N,
    *latent_shape) of `autoencoder` (s its latent_scale), in the autoencoder's dtype, without
    gradients."""
    scale = autoencoder.latent_scale
    with torch.no_grad():
        return autoencoder.decode_latents(z_s.to(scale.dtype) / scale)


@dataclass(frozen=True)
class LatentBound:
    """The latent-diffusion bound on log p(x) and its three parts, each (B,) in nats, means
    over `samples` posterior draws: log_prob = reconstruction + prior + entropy <= log p(x).

    reconstruction: E_q log p(x|z), the decoder term.
    prior: E_q log p_prior(z_s), the latent model's log-density of the rescaled latents.
    entropy: E_q[-log q(z_s|x)], the encoder's entropy (sampled, in the rescaled coordinates).
    kind: "bound". prior_kind: the prior's `log_prob_kind` ("ode" for the PF-ODE).
    nfe, nfe_backward: the prior's counted network evaluations and VJPs over all draws, where
    the prior reports them (`log_prob_with_stats`, as ScoreSDEDensity does); else 0.
    """

    log_prob: Tensor
    reconstruction: Tensor
    prior: Tensor
    entropy: Tensor
    kind: str
    prior_kind: str
    samples: int
    nfe: int = 0
    nfe_backward: int = 0


class LatentDiffusion(DensityModel):
    """A density model `prior` over the rescaled latents of a frozen `autoencoder` (LDM).

    Args:
        autoencoder: a trained `KLAutoencoder` or `VQVAE` with its `latent_scale` fitted
            (`fit_latent_scale`); frozen here: kept in eval mode, and `loss` (training) encodes
            without gradients, so training through `loss` or `latent_score_matching` never
            changes it. The bound (`log_prob`) is differentiable in every parameter and in x.
        prior: a `DensityModel` with event_shape == autoencoder.latent_shape, e.g. a
            `ScoreSDEDensity` of a score model on latents. Its `loss` trains it (`loss` here
            encodes first) and its `sample` keyword arguments (method, nfe, ...) pass through.

    `event_shape` is the image shape. log_prob is a bound (`log_prob_kind = "bound"`); see the
    module docstring and `bound`.

    Example:
        >>> import torch
        >>> import sdegen
        >>> from sdegen.models import KLAutoencoder, LatentDiffusion, UNet
        >>> from sdegen.score_density import ScoreSDEDensity
        >>> _ = torch.manual_seed(0)
        >>> ae = KLAutoencoder.conv((1, 8, 8), latent_channels=2, hidden=8)
        >>> sde = sdegen.VPSDE()
        >>> net = UNet(in_channels=2, channels=8, channel_mult=(1,), attention_levels=())
        >>> prior = ScoreSDEDensity(sdegen.ScoreModel(net, sde), sde, ae.latent_shape)
        >>> ldm = LatentDiffusion(ae, prior)
        >>> ldm.sample(3, method="ddim", nfe=4).shape
        torch.Size([3, 1, 8, 8])
        >>> ldm.log_prob_kind, ldm.prior.log_prob_kind  # a bound built on the PF-ODE's
        ('bound', 'ode')
    """

    log_prob_kind = "bound"

    def __init__(self, autoencoder: KLAutoencoder | VQVAE, prior: DensityModel) -> None:
        super().__init__()
        if not isinstance(autoencoder, (KLAutoencoder, VQVAE)):
            raise TypeError(
                f"autoencoder must be a KLAutoencoder or VQVAE, got {type(autoencoder).__name__}"
            )
        if not isinstance(prior, DensityModel):
            raise TypeError(f"prior must be a DensityModel, got {type(prior).__name__}")
        if tuple(prior.event_shape) != autoencoder.latent_shape:
            raise ValueError(
                f"prior.event_shape must be the autoencoder's latent_shape "
                f"{autoencoder.latent_shape}, got {tuple(prior.event_shape)}"
            )
        self.autoencoder = autoencoder.eval()
        self.prior = prior
        self.event_shape = autoencoder.event_shape

    def train(self, mode: bool = True) -> LatentDiffusion:
        """Set the prior's training mode; the frozen autoencoder stays in eval mode."""
        super().train(mode)
        self.autoencoder.eval()
        return self

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """Shape (C_z, h, w) of one latent."""
        return self.autoencoder.latent_shape

    @property
    def scale(self) -> float:
        """The latent scale s: the prior sees z_s = s z."""
        return float(self.autoencoder.latent_scale)

    def encode(self, x: Tensor, noise: Tensor | None = None) -> Tensor:
        """Rescaled latents s z (B, *latent_shape) of images x (B, *event_shape): z a posterior
        draw mean + std * noise (KL; noise None: the mean) or z_e (VQ), without gradients."""
        with torch.no_grad():
            return self.autoencoder.encode_latents(x, noise) * self.autoencoder.latent_scale

    def decode(self, z_s: Tensor) -> Tensor:
        """Images (N, *event_shape), the decoder's mean, of rescaled latents z_s (N,
        *latent_shape), computed in the autoencoder's dtype (samplers default to float32)."""
        return decode_scaled(self.autoencoder, z_s)

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The prior's training loss on the rescaled latents of x (B, *event_shape): one
        posterior draw (noise from `generator`) per image for the KL autoencoder, as LDM
        trains on sampled latents."""
        self.check_x(x)
        noise = torch.randn(
            (x.shape[0], *self.latent_shape), generator=generator, dtype=x.dtype, device=x.device
        )
        return self.prior.loss(self.encode(x, noise), generator=generator)

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Refused: the latents come from the prior's sampler (a discretised reverse process of
        any kind), so the draws are not reparametrizable (`has_rsample` is False)."""
        raise NotImplementedError(
            "LatentDiffusion's latents come from the prior's sampler, so its draws are not "
            "reparametrizable (has_rsample is False); use sample()"
        )

    @torch.no_grad()
    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        *,
        mean: bool = False,
        **kwargs,
    ) -> Tensor:
        """n images (n, *event_shape): latents drawn by `prior.sample(n, generator, **kwargs)`
        (e.g. method="dpmpp_2m", nfe=20 for a `ScoreSDEDensity`), then x ~ p(x|z) (the model
        whose log_prob is bounded; noise from `generator`) or, with mean=True, the decoder's
        mean image, as LDM shows its samples (`decode`). A VQ-VAE's decoder has no noise model:
        its samples are always the decoded images."""
        check_int("n", n)
        z_s = self.prior.sample(n, generator=generator, **kwargs)
        ae = self.autoencoder
        if mean or not isinstance(ae, KLAutoencoder):
            return self.decode(z_s)
        z = z_s.to(ae.latent_scale.dtype) / ae.latent_scale
        ae.check_latents(z)
        return ae.draw(ae.decode(z.reshape(n, -1)), generator)

    def bound(
        self,
        x: Tensor,
        *,
        samples: int = 1,
        generator: torch.Generator | None = None,
        **prior_kwargs,
    ) -> LatentBound:
        """The bound E_q[log p(x|z) + log p_prior(z_s) - log q(z_s|x)] <= log p(x) and its parts
        for images x (B, *event_shape), in nats, averaged over `samples` draws z_s ~ q(z_s|x)
        (noise from `generator`). prior_kwargs go to `prior.log_prob` (e.g. trace="hutchinson",
        rtol, atol for a `ScoreSDEDensity`, and differentiable=True for gradients through its
        PF-ODE; the decoder and encoder terms are always differentiable). Only for the KL
        autoencoder (a VQ-VAE has no posterior density): TypeError otherwise."""
        ae = self.autoencoder
        if not isinstance(ae, KLAutoencoder):
            raise TypeError(
                f"the likelihood bound needs a Gaussian posterior q(z|x) (KLAutoencoder); "
                f"{type(ae).__name__} has a deterministic encoder"
            )
        check_int("samples", samples)
        x = ae._prepare(x)
        mean, std = ae.posterior(x)
        s = ae.latent_scale.to(x.dtype)
        dims = tuple(range(1, mean.ndim))
        rec = prior = entropy = x.new_zeros(x.shape[0])
        stats = getattr(self.prior, "log_prob_with_stats", None)
        nfe = nfe_backward = 0
        for _ in range(samples):
            eps = randn(mean.shape, generator, dtype=mean.dtype, device=mean.device)
            z = mean + std * eps
            out = ae.decode(z.reshape(z.shape[0], -1))
            rec = rec + ae.log_likelihood(x, out)
            if stats is not None:  # the prior's evaluations, counted
                res = stats(s * z, generator=generator, **prior_kwargs)  # its probes too
                prior = prior + res.log_prob
                nfe, nfe_backward = nfe + res.nfe, nfe_backward + res.nfe_backward
            else:
                prior = prior + self.prior.log_prob(s * z, **prior_kwargs)
            # -log N(s z; s mean, (s std)^2) at z = mean + std eps
            log_q = -(0.5 * eps.square() + torch.log(s * std) + 0.5 * math.log(2 * math.pi))
            entropy = entropy - log_q.sum(dim=dims)
        rec, prior, entropy = rec / samples, prior / samples, entropy / samples
        return LatentBound(
            log_prob=rec + prior + entropy,
            reconstruction=rec,
            prior=prior,
            entropy=entropy,
            kind="bound",
            prior_kind=self.prior.log_prob_kind,
            samples=samples,
            nfe=nfe,
            nfe_backward=nfe_backward,
        )

    def log_prob(
        self,
        x: Tensor,
        *,
        samples: int = 1,
        generator: torch.Generator | None = None,
        **prior_kwargs,
    ) -> Tensor:
        """The bound on log p(x) in nats, x (B, *event_shape) -> (B,); see `bound`."""
        return self.bound(x, samples=samples, generator=generator, **prior_kwargs).log_prob

    def bits_per_dim(self, x: Tensor, bin_width: float, **kwargs) -> Tensor:
        """Bits per pixel dimension of x (B, *event_shape) -> (B,) from the bound: an upper
        bound on the model's bits/dim. With the "discretized" decoder bin_width must be its
        2 / levels. kwargs go to `bound`."""
        ae = self.autoencoder
        if isinstance(ae, KLAutoencoder) and ae.likelihood == "discretized":
            if not math.isclose(bin_width, 2.0 / ae._levels):
                raise ValueError(
                    f"bin_width must be 2 / levels = {2.0 / ae._levels!r} for the "
                    f"'discretized' decoder with levels={ae.levels}, got {bin_width!r}"
                )
        return _bits_per_dim(self.log_prob(x, **kwargs), math.prod(self.event_shape), bin_width)

    def extra_repr(self) -> str:
        return f"latent_shape={self.latent_shape}, scale={self.scale:.4g}"
