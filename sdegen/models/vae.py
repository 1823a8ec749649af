"""Variational autoencoders (Kingma & Welling 2014) with beta-VAE weighting (Higgins et al. 2017)
and importance-weighted log-likelihood estimates (Burda et al. 2016).

Encoder q(z|x) = N(mu(x), diag sigma(x)^2), prior p(z) = N(0, I), and a decoder p(x|z) whose
per-dimension scale s is learned (parameter `log_scale`, shape event_shape, initialised to 0) or
fixed (a buffer), never a function of z:

    "gaussian"     N(x; m(z), diag s^2).
    "bernoulli"    Bernoulli(x; sigmoid(l(z))), for data in [0, 1]; normalised for binary data
                   only (for grey values it is the usual unnormalised surrogate).
    "discretized"  the discretized logistic (Salimans et al. 2017) over the `levels` bins of
                   width w = 2 / levels of `sdegen.data.quantize`: P(bin k | z) = F(c_k + w/2) -
                   F(c_k - w/2), F the logistic CDF (location m(z), scale s), tails to end bins.
                   Its numbers are log-densities of P(bin of x) / w^D on [-1, 1]^D, so
                   `bits_per_dim(x, 2 / levels)` is exactly the discrete -log2 P(x) / D, on the
                   scale of continuous models on dequantized data; any point of a bin (the
                   encoder sees its centre) gives the same number.

`elbo(x)` is a lower bound on log p(x) (`elbo_kind = "bound"`); `log_prob(x, k)` the
importance-weighted estimate (`log_prob_kind = "estimate"`), consistent as k -> inf and biased
downwards for finite k (its expectation is a bound that rises with k).

Against posterior collapse (latent dimensions whose q(z_j|x) stays at the prior) the training
loss, and only it, can be changed in two ways; `elbo` and `log_prob` always stay the true ones:

    KL annealing   the KL weight beta rises from 0 over a warm-up (Bowman et al. 2016), once or
                   cyclically (Fu et al. 2019): `KLSchedule`, applied per training step by
                   `sdegen.training.vae_loss`.
    free bits      the KL of each latent dimension (or group of dimensions), averaged over the
                   batch, is clamped below at lambda nats (Kingma et al. 2016, IAF, Appendix C):
                   `VAE(free_bits=lambda)`, `free_bits_kl`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import check_choice, check_finite_number, check_int, sum_except_batch
from ..data.quantize import to_centres, to_levels
from .density import DensityModel
from .density import bits_per_dim as _bits_per_dim
from .networks import mlp

LIKELIHOODS = ("gaussian", "bernoulli", "discretized")
_CHUNK_ELEMENTS = 2**22  # decoder outputs per importance-sampling chunk, counted as max(D, 256)


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)


class KLSchedule:
    """KL weight beta(step) for VAE training: a linear warm-up from 0 to `beta` over `warmup`
    steps (Bowman et al. 2016), repeated every `period` steps for the cyclical schedule of
    Fu et al. (2019).

        beta(step) = beta * min(1, tau / warmup),  tau = step (period None) or step mod period,

    and beta(step) = beta when warmup is 0. Fu et al. use `period` = total steps / M for M = 4
    cycles and warmup = R * period with R = 0.5 (rise over half of each cycle, then hold).

    Args:
        beta: the target weight; a finite number >= 0 (1 gives the ELBO after the warm-up).
        warmup: steps of the linear rise; an integer >= 0.
        period: steps per cycle, an integer >= max(warmup, 1); None: one warm-up, then beta.

    Example:
        >>> from sdegen.models import KLSchedule
        >>> linear = KLSchedule(beta=1.0, warmup=100)
        >>> [linear(s) for s in (0, 50, 100, 5000)]
        [0.0, 0.5, 1.0, 1.0]
        >>> cyclical = KLSchedule(beta=1.0, warmup=50, period=100)
        >>> [cyclical(s) for s in (0, 25, 60, 100, 125)]
        [0.0, 0.5, 1.0, 0.0, 0.5]
    """

    def __init__(self, beta: float = 1.0, warmup: int = 0, period: int | None = None) -> None:
        self.beta = check_finite_number("beta", beta, nonnegative=True)
        self.warmup = check_int("warmup", warmup, 0)
        if period is not None:
            check_int("period", period, max(warmup, 1))
        self.period = period

    def __call__(self, step: int) -> float:
        """The KL weight at training step `step` (an integer >= 0; the first step is 0)."""
        tau = check_int("step", step, 0)
        if self.period is not None:
            tau %= self.period
        return self.beta * min(1.0, tau / self.warmup) if self.warmup else self.beta

    def __repr__(self) -> str:
        return f"KLSchedule(beta={self.beta!r}, warmup={self.warmup!r}, period={self.period!r})"


def free_bits_kl(kl: Tensor, free_bits: float, groups: int | None = None) -> Tensor:
    """The free-bits KL term (Kingma et al. 2016, IAF, Appendix C): kl (B, L), the KL of each
    latent dimension of each example in nats, -> scalar sum_k max(lambda, mean_B KL_k), KL_k the
    KL summed over the k-th of `groups` equal, contiguous groups of dimensions (None: L groups,
    one per dimension).

    A group whose batch-mean KL is below lambda = free_bits costs the constant lambda, so it
    gets no gradient; above lambda the gradient is that of the KL itself. With lambda = 0 it is
    the batch mean of the total KL.

    Example:
        >>> import torch
        >>> from sdegen.models.vae import free_bits_kl
        >>> kl = torch.tensor([[0.1, 2.0], [0.3, 4.0]])  # batch means 0.2 and 3.0 nats
        >>> float(free_bits_kl(kl, 0.5))  # max(0.5, 0.2) + max(0.5, 3.0)
        3.5
    """
    if not torch.is_tensor(kl) or kl.ndim != 2:
        got = tuple(kl.shape) if torch.is_tensor(kl) else type(kl).__name__
        raise ValueError(f"kl must be a (batch, latent_dim) tensor, got {got}")
    lam = check_finite_number("free_bits", free_bits, nonnegative=True)
    groups = kl.shape[1] if groups is None else check_int("groups", groups, 1)
    if kl.shape[1] % groups:
        raise ValueError(f"groups must divide latent_dim = {kl.shape[1]}, got {groups}")
    per_group = kl.mean(dim=0).reshape(groups, -1).sum(dim=1)
    return per_group.clamp_min(lam).sum()


def _check_output(name: str, out: Tensor, want: tuple[int, ...], what: str) -> Tensor:
    if not torch.is_tensor(out) or tuple(out.shape) != want:
        got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
        raise ValueError(f"{name} must return shape {what} = {want}, got {got}")
    return out


class VAE(DensityModel):
    """VAE (Kingma & Welling 2014) with a diagonal Gaussian encoder and a standard normal prior.

    Args:
        encoder: x (B, *event_shape) -> (B, 2 * latent_dim), the mean and log-std of q(z|x)
            (first and second half).
        decoder: z (N, latent_dim) -> (N, *event_shape): the Gaussian mean, Bernoulli logits or
            logistic location.
        event_shape: shape of one example, e.g. (dim,) or (C, H, W).
        latent_dim: dimension of z; an integer >= 1.
        likelihood: "gaussian", "bernoulli" or "discretized" (see the module docstring).
        beta: weight of the KL term in `loss` (beta-VAE); 1 gives the negative ELBO.
        decoder_scale: the per-dimension Gaussian std or logistic scale; None learns it.
        levels: number of bins of the "discretized" decoder (e.g. 256, or 17 for the digits).
        free_bits: lambda of free bits in `loss`, in nats per group of latent dimensions; 0
            (default) gives the plain KL. See `free_bits_kl`. The clamp applies to the mean
            over the batch `loss` sees: under DDP each process's share, so with free bits a
            multi-process run does not repeat the single-process one exactly.
        free_bits_groups: number of equal groups of latent dimensions for free bits; None: one
            per dimension.

    Example:
        >>> import torch
        >>> from sdegen.models import VAE
        >>> _ = torch.manual_seed(0)
        >>> vae = VAE.mlp(2, latent_dim=2, hidden=32)
        >>> x = torch.randn(8, 2)
        >>> vae.elbo(x).shape, vae.elbo_kind  # a lower bound on log p(x)
        (torch.Size([8]), 'bound')
        >>> vae.log_prob(x, k=100).shape, vae.log_prob_kind  # importance-weighted estimate
        (torch.Size([8]), 'estimate')
        >>> vae.sample(3).shape
        torch.Size([3, 2])
    """

    log_prob_kind = "estimate"
    needs_parameter_dtype = True
    elbo_kind = "bound"

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        event_shape: tuple[int, ...],
        latent_dim: int,
        likelihood: str = "gaussian",
        *,
        beta: float = 1.0,
        decoder_scale: float | None = None,
        levels: int | None = None,
        free_bits: float = 0.0,
        free_bits_groups: int | None = None,
    ) -> None:
        super().__init__()
        for name, net in (("encoder", encoder), ("decoder", decoder)):
            if not isinstance(net, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(net).__name__}")
        self.encoder, self.decoder = encoder, decoder
        shape = tuple(event_shape)
        if not shape or any(type(s) is not int or s < 1 for s in shape):
            raise ValueError(f"event_shape must be a non-empty tuple of positive ints, got {shape}")
        self.event_shape = shape
        self.latent_dim = check_int("latent_dim", latent_dim, 1)
        self.likelihood = check_choice("likelihood", likelihood, LIKELIHOODS)
        self.beta = beta
        self.free_bits = check_finite_number("free_bits", free_bits, nonnegative=True)
        if free_bits_groups is not None:
            check_int("free_bits_groups", free_bits_groups, 1)
            if latent_dim % free_bits_groups:
                raise ValueError(
                    f"free_bits_groups must divide latent_dim = {latent_dim}, "
                    f"got {free_bits_groups}"
                )
        self.free_bits_groups = free_bits_groups
        bad = levels is not None and (type(levels) is not int or levels < 2)
        if bad or (likelihood == "discretized") != (levels is not None):
            raise ValueError(
                f"levels must be an integer >= 2 with likelihood 'discretized' and None "
                f"otherwise, got levels={levels!r} with likelihood={likelihood!r}"
            )
        self.levels = levels
        # Gaussian draws are decoder(z) + scale * eps; Bernoulli and discretized ones are discrete
        self.has_rsample = likelihood == "gaussian"
        if likelihood == "bernoulli":
            if decoder_scale is not None:
                raise ValueError(f"'bernoulli' has no decoder_scale, got {decoder_scale!r}")
        elif decoder_scale is None:
            self.log_scale = nn.Parameter(torch.zeros(shape))
        else:
            scale = check_finite_number("decoder_scale", decoder_scale, positive=True)
            self.register_buffer("log_scale", torch.full(shape, math.log(scale)))

    @property
    def _levels(self) -> int:
        """`levels`, for the code of the "discretized" decoder, which always has them."""
        if self.levels is None:
            raise ValueError(f"the {self.likelihood!r} decoder has no levels")
        return self.levels

    @property
    def beta(self) -> float:
        """Weight of the KL term in `loss`; a finite number >= 0."""
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = check_finite_number("beta", value, nonnegative=True)

    @classmethod
    def mlp(
        cls,
        dim: int,
        latent_dim: int = 2,
        hidden: int = 128,
        depth: int = 2,
        likelihood: str = "gaussian",
        **kwargs,
    ) -> VAE:
        """A VAE for vectors (B, dim) with MLP encoder and decoder (`depth` SiLU layers of width
        `hidden`); keyword arguments go to `VAE`."""
        for name, value in (("dim", dim), ("latent_dim", latent_dim), ("hidden", hidden)):
            check_int(name, value, 1)
        check_int("depth", depth, 1)
        encoder = mlp(dim, hidden, depth, 2 * latent_dim)
        decoder = mlp(latent_dim, hidden, depth, dim)
        return cls(encoder, decoder, (dim,), latent_dim, likelihood, **kwargs)

    @classmethod
    def conv(
        cls,
        shape: Sequence[int],
        latent_dim: int = 16,
        hidden: int = 32,
        likelihood: str = "gaussian",
        **kwargs,
    ) -> VAE:
        """A small conv VAE for images (B, C, H, W) with H, W divisible by 4 (8x8, 28x28, 32x32).

        Encoder: two stride-2 4x4 convs (hidden, 2 hidden channels) and a linear layer; decoder
        the mirror image with transposed convs. Keyword arguments go to `VAE`."""
        shape = tuple(shape)
        ok = len(shape) == 3 and all(type(s) is int and s > 0 for s in shape)
        if not ok or shape[1] % 4 or shape[2] % 4:
            raise ValueError(f"shape must be (C, H, W) with H and W divisible by 4, got {shape!r}")
        check_int("latent_dim", latent_dim, 1)
        c, h, w = shape
        inner = (2 * check_int("hidden", hidden, 1), h // 4, w // 4)
        encoder = nn.Sequential(
            nn.Conv2d(c, hidden, 4, 2, 1),
            nn.SiLU(),
            nn.Conv2d(hidden, 2 * hidden, 4, 2, 1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(math.prod(inner), 2 * latent_dim),
        )
        decoder = nn.Sequential(
            nn.Linear(latent_dim, math.prod(inner)),
            nn.SiLU(),
            nn.Unflatten(1, inner),
            nn.ConvTranspose2d(2 * hidden, hidden, 4, 2, 1),
            nn.SiLU(),
            nn.ConvTranspose2d(hidden, c, 4, 2, 1),
        )
        return cls(encoder, decoder, shape, latent_dim, likelihood, **kwargs)

    @classmethod
    def linear_gaussian(
        cls, W: Tensor, b: Tensor, noise_std: float, encoder: nn.Module | None = None
    ) -> VAE:
        """Probabilistic PCA (Tipping & Bishop 1999) as a VAE: x = W z + b + N(0, noise_std^2 I),
        W (dim, latent_dim), b (dim,), with exact marginal N(b, W W^T + noise_std^2 I). encoder:
        (B, dim) -> (B, 2 latent_dim); None: a random nn.Linear. The exact posterior is Gaussian,
        diagonal (so a linear encoder can represent it) when W^T W is."""
        if not torch.is_tensor(W) or W.ndim != 2:
            raise ValueError(f"W must be a (dim, latent_dim) tensor, got {getattr(W, 'shape', W)}")
        dim, latent_dim = W.shape
        if not torch.is_tensor(b) or tuple(b.shape) != (dim,):
            raise ValueError(f"b must have shape ({dim},), got {getattr(b, 'shape', b)}")
        decoder = nn.Linear(latent_dim, dim)
        with torch.no_grad():
            decoder.weight.copy_(W)
            decoder.bias.copy_(b)
        encoder = nn.Linear(dim, 2 * latent_dim) if encoder is None else encoder
        model = cls(encoder, decoder, (dim,), latent_dim, "gaussian", decoder_scale=noise_std)
        return model.to(device=W.device, dtype=W.dtype)

    def _prepare(self, x: Tensor) -> Tensor:
        self.check_x(x)
        lo = {"bernoulli": 0.0, "discretized": -1.0}.get(self.likelihood)
        if lo is not None and x.numel() and (float(x.min()) < lo or float(x.max()) > 1.0):
            raise ValueError(
                f"x must lie in [{lo:g}, 1] for the {self.likelihood!r} decoder, got values in "
                f"[{float(x.min()):g}, {float(x.max()):g}]"
            )
        if self.likelihood == "discretized":
            return to_centres(to_levels(x, self._levels), self._levels, dtype=x.dtype)
        return x

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x): x (B, *event_shape) -> mean and log-std, each of shape (B, latent_dim)."""
        want = (x.shape[0], 2 * self.latent_dim)
        h = _check_output("encoder", self.encoder(x), want, "(batch, 2 * latent_dim)")
        return h[:, : self.latent_dim], h[:, self.latent_dim :]

    def decode(self, z: Tensor) -> Tensor:
        """Decoder output (N, *event_shape) for z (N, latent_dim): mean, logits or location."""
        want = (z.shape[0], *self.event_shape)
        return _check_output("decoder", self.decoder(z), want, "(batch, *event_shape)")

    def log_likelihood(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x|z) in nats from the decoder output: x (B, *event_shape) and out
        (*S, B, *event_shape) -> (*S, B), summed over the event dims."""
        if self.likelihood == "gaussian":
            s = self.log_scale
            lp = -0.5 * ((x - out) * torch.exp(-s)).square() - s - 0.5 * math.log(2 * math.pi)
        elif self.likelihood == "bernoulli":
            lp = -F.binary_cross_entropy_with_logits(out, x.expand_as(out), reduction="none")
        else:
            w = 2.0 / self._levels
            k = to_levels(x, self._levels)
            inv_s = torch.exp(-self.log_scale)
            a = (-1.0 + (k + 1).to(out.dtype) * w - out) * inv_s  # upper edge of x's bin
            b = a - w * inv_s  # lower edge
            # log(sigmoid(a) - sigmoid(b)) = log(e^a - e^b) - softplus(a) - softplus(b), stably
            mid = a + torch.log(-torch.expm1(-w * inv_s)) - F.softplus(a) - F.softplus(b)
            lp = torch.where(k == 0, F.logsigmoid(a), F.logsigmoid(-b))
            lp = torch.where((k > 0) & (k < self._levels - 1), mid, lp) - math.log(w)
        return lp.sum(dim=tuple(range(-len(self.event_shape), 0)))

    def elbo_terms(
        self, x: Tensor, generator: torch.Generator | None = None, *, per_dim: bool = False
    ) -> tuple[Tensor, Tensor]:
        """x (B, *event_shape) -> log p(x|z) (B,) at one reparameterised z = mu + sigma eps ~
        q(z|x) (eps drawn with `generator`) and the analytic KL(q(z|x) || N(0, I)), (B,), or
        per latent dimension, (B, latent_dim), with per_dim=True; in nats."""
        x = self._prepare(x)
        mu, log_sigma = self.encode(x)
        eps = _randn(mu.shape, mu, generator)
        rec = self.log_likelihood(x, self.decode(mu + torch.exp(log_sigma) * eps))
        kl = 0.5 * (mu.square() + torch.exp(2 * log_sigma) - 1 - 2 * log_sigma)
        return rec, kl if per_dim else sum_except_batch(kl)

    def elbo(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The evidence lower bound E_q[log p(x|z)] - KL(q(z|x) || p(z)) <= log p(x), one-sample
        estimate of the first term, analytic KL: x (B, *event_shape) -> (B,) in nats."""
        rec, kl = self.elbo_terms(x, generator)
        return rec - kl

    def loss(
        self, x: Tensor, generator: torch.Generator | None = None, *, beta: float | None = None
    ) -> Tensor:
        """The training loss on a batch x (B, *event_shape) -> scalar:
        -mean_B E_q[log p(x|z)] + beta * KL term, the KL term the batch-mean KL or, with
        free_bits > 0, `free_bits_kl`. beta: this call's KL weight (e.g. from a `KLSchedule`);
        None uses `self.beta`. Equal to -mean ELBO when beta = 1 and free_bits = 0; `elbo` is
        never changed by beta or free bits."""
        beta = self.beta if beta is None else check_finite_number("beta", beta, nonnegative=True)
        if self.free_bits == 0:
            rec, kl = self.elbo_terms(x, generator)
            return -(rec - beta * kl).mean()
        rec, kl_dims = self.elbo_terms(x, generator, per_dim=True)
        return -rec.mean() + beta * free_bits_kl(kl_dims, self.free_bits, self.free_bits_groups)

    @torch.no_grad()
    def latent_activity(self, x: Tensor) -> Tensor:
        """The activity of each latent unit (Burda et al. 2016), A_u = Var_x(E_q[z_u | x]) over
        the examples x (B, *event_shape), B >= 2 (population variance of the encoder means):
        (latent_dim,). Burda et al. count a unit as active when A_u > 0.01."""
        if torch.is_tensor(x) and x.shape[0] < 2:
            raise ValueError(f"x must hold at least 2 examples, got shape {tuple(x.shape)}")
        mu, _ = self.encode(self._prepare(x))
        return mu.var(dim=0, unbiased=False)

    def log_prob(
        self,
        x: Tensor,
        k: int = 1000,
        generator: torch.Generator | None = None,
        chunk: int | None = None,
    ) -> Tensor:
        """Importance-weighted estimate (Burda et al. 2016) log (1/k) sum_i p(x, z_i) / q(z_i|x),
        z_i ~ q(z|x): x (B, *event_shape) -> (B,) in nats.

        A stochastic estimate, biased downwards (k = 1 is a one-sample ELBO with a sampled KL),
        converging to log p(x) as k grows. The k samples are decoded `chunk` at a time and
        combined by a running logsumexp, so at most (chunk * B, *event_shape) decoder outputs
        exist at once; None picks the largest chunk with chunk * B * max(D, 256) <= 2^22. The
        noise is drawn one importance sample (B, latent_dim) at a time, so the estimate does not
        depend on `chunk`. Differentiable: under autograd the graph of every chunk is kept, so
        evaluate large k under torch.no_grad()."""
        check_int("k", k, 1)
        if chunk is not None:
            check_int("chunk", chunk, 1)
        x = self._prepare(x)
        mu, log_sigma = self.encode(x)
        sigma, batch = torch.exp(log_sigma), x.shape[0]
        if chunk is None:
            chunk = max(1, _CHUNK_ELEMENTS // (batch * max(math.prod(self.event_shape), 256)))
        total = mu.new_full((batch,), -math.inf)  # log 0: logaddexp(-inf, a) = a exactly
        for start in range(0, k, chunk):
            c = min(chunk, k - start)
            eps = torch.stack([_randn(mu.shape, mu, generator) for _ in range(c)])
            z = mu + sigma * eps  # (c, B, latent_dim)
            out = self.decode(z.reshape(c * batch, -1)).reshape(c, batch, *self.event_shape)
            # log p(z) - log q(z|x); the log(2 pi) terms cancel
            log_ratio = (0.5 * (eps.square() - z.square()) + log_sigma).sum(dim=2)
            log_w = torch.logsumexp(self.log_likelihood(x, out) + log_ratio, dim=0)
            total = torch.logaddexp(total, log_w)
        return total - math.log(k)

    def bits_per_dim(self, x: Tensor, bin_width: float, *, k: int = 1000) -> Tensor:
        """Bits per dimension of x (B, *event_shape) -> (B,) from `log_prob(x, k)`. For the
        "discretized" decoder bin_width must be 2 / levels, and the result is exactly the
        discrete -log2 P(x) / D (up to the estimate's bias)."""
        if self.likelihood == "discretized" and not math.isclose(bin_width, 2.0 / self._levels):
            raise ValueError(
                f"bin_width must be 2 / levels = {2.0 / self._levels!r} for the 'discretized' "
                f"decoder with levels={self.levels}, got {bin_width!r}"
            )
        return _bits_per_dim(self.log_prob(x, k=k), math.prod(self.event_shape), bin_width)

    def _prior_z(self, n: int, generator: torch.Generator | None) -> Tensor:
        """z ~ N(0, I) of shape (n, latent_dim) in the model's dtype, drawn with `generator`."""
        check_int("n", n, 1)
        ref: Tensor | None = next(self.parameters(), None)
        ref = ref if ref is not None else next(self.buffers())
        return _randn((n, self.latent_dim), ref, generator)

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n reparametrized draws (n, *event_shape) of the Gaussian decoder's model,
        x = decoder(z) + scale * eps with z, eps ~ N(0, I) drawn with `generator`: the model's
        own distribution (not the decoder's mean), `sample`'s values for one seed,
        differentiable in the decoder's parameters and the scale. NotImplementedError for the
        "bernoulli" and "discretized" decoders, whose draws are discrete (`has_rsample`)."""
        if not self.has_rsample:
            raise NotImplementedError(
                f"the {self.likelihood!r} decoder's draws are discrete, so they are not "
                "reparametrizable (has_rsample is False); use sample(), or sample(mean=True) "
                "for the decoder's mean"
            )
        out = self.decode(self._prior_z(n, generator))
        return out + torch.exp(self.log_scale) * _randn(out.shape, out, generator)

    @torch.no_grad()
    def sample(
        self, n: int, generator: torch.Generator | None = None, *, mean: bool = False
    ) -> Tensor:
        """n samples (n, *event_shape): z ~ N(0, I) decoded, then x ~ p(x|z) (default: the
        model's own distribution, the one its log_prob describes), all drawn with `generator`.

        mean=True returns the decoder's mean instead: the Gaussian mean, the Bernoulli
        probabilities, or the logistic location snapped to its bin centre ("discretized")."""
        out = self.decode(self._prior_z(n, generator))
        if self.likelihood == "bernoulli":
            p = torch.sigmoid(out)
            return p if mean else torch.bernoulli(p, generator=generator)
        if not mean:
            if self.likelihood == "gaussian":
                noise = _randn(out.shape, out, generator)
            else:  # logistic noise log(u) - log(1 - u)
                u = torch.rand(out.shape, generator=generator, dtype=out.dtype, device=out.device)
                u = u.clamp(1e-12, 1 - 1e-12)
                noise = torch.log(u) - torch.log1p(-u)
            out = out + torch.exp(self.log_scale) * noise
        if self.likelihood == "discretized":
            out = to_centres(to_levels(out, self._levels), self._levels, dtype=out.dtype)
        return out
