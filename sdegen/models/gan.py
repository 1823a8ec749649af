"""Generative adversarial networks (Goodfellow et al. 2014) behind the DensityModel API.

A generator G maps z ~ N(0, I) to samples; a discriminator (critic) D scores them. Objectives
(D outputs a logit for the two logistic ones, a real critic value for the two WGANs):

    "nonsaturating"  D minimises -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))); G minimises
                     -log sigmoid(D(G(z))) (Goodfellow et al. 2014, section 3).
    "saturating"     the same D; G minimises log(1 - sigmoid(D(G(z)))), the minimax game of
                     Goodfellow et al. 2014 (eq. 1), whose gradient vanishes when D rejects
                     the fakes confidently (sigmoid(D(G(z))) -> 0).
    "wgan-gp"        the critic minimises D(G(z)) - D(x) + lambda (|grad D(x_hat)| - 1)^2 on
                     random interpolates x_hat; G minimises -D(G(z)) (Gulrajani et al. 2017).
    "wgan-clip"      the critic minimises D(G(z)) - D(x) and every critic parameter is clipped
                     to [-c, c] after each critic step (`after_step`; Arjovsky et al. 2017,
                     Algorithm 1, c = 0.01); G minimises -D(G(z)).

Options: one-sided label smoothing (`label_smoothing` s: the real examples' target is 1 - s,
fakes keep 0; Salimans et al. 2016, section 3.4), and spectral normalisation of the
discriminator's layers in the builders (`spectral_norm=True`; Miyato et al. 2018, through
torch.nn.utils.parametrizations.spectral_norm).

A GAN defines no density (`log_prob_kind = "none"`): `log_prob` raises TypeError; compare GANs
on samples. Two ways to train it:

    alternating updates, as in the papers: the Trainer's `players=` option steps each player in
        turn on its own loss (`players`, `player_parameters`, `player_loss`, `after_step`),
        e.g. n_critic discriminator steps per generator step, each player with its own learning
        rate and betas (the two-time-scale rule of Heusel et al. 2017).
    `loss`: the one objective the shared Trainer minimises with ONE optimizer. Its gradient gives
        each player the gradient of its own loss only, so one step is *simultaneous* gradient
        descent on the game (both players move from the same point), not alternating updates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from .._utils import check_choice, check_finite_number, check_int
from .density import DensityModel
from .networks import mlp

OBJECTIVES = ("nonsaturating", "saturating", "wgan-gp", "wgan-clip")
LOGISTIC = ("nonsaturating", "saturating")  # D outputs a logit; label smoothing applies
PLAYERS = ("discriminator", "generator")
NO_DENSITY = "a GAN defines no density; compare it on samples (FID, sliced Wasserstein)"


def _image_shape(shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(shape)
    ok = len(shape) == 3 and all(type(s) is int and s > 0 for s in shape)
    if not ok or shape[1] % 4 or shape[2] % 4:
        raise ValueError(f"shape must be (C, H, W) with H and W divisible by 4, got {shape!r}")
    return shape


class _LeakyReLU(nn.LeakyReLU):
    def __init__(self) -> None:
        super().__init__(0.2)


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def spectral_normalize(net: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) of every Linear and Conv layer of `net`, in
    place: each weight W is used as W / sigma(W), sigma estimated by one step of power
    iteration per training-mode forward (torch.nn.utils.parametrizations.spectral_norm); a conv
    weight is normalised as the matrix (out_channels, in_channels * kh * kw). Returns `net`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> net = spectral_normalize(nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1)))
        >>> net.train()(torch.randn(4, 3)).shape  # each training forward: one power iteration
        torch.Size([4, 1])
        >>> round(float(torch.linalg.matrix_norm(net[0].weight.detach(), ord=2)), 3)
        1.0
    """
    layers = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]
    if not layers:
        raise ValueError(f"spectral_norm found no Linear or Conv layer in {type(net).__name__}")
    for layer in layers:
        _spectral_norm(layer)
    return net


class GAN(DensityModel):
    """GAN (Goodfellow et al. 2014) with the non-saturating, saturating (minimax), WGAN-GP
    (Gulrajani et al. 2017) or weight-clipped WGAN (Arjovsky et al. 2017) objective; a
    sample-only model.

    Args:
        generator_net: z (n, latent_dim) -> samples (n, *event_shape).
        discriminator_net: x (B, *event_shape) -> logits or critic values, (B,) or (B, 1). For
            "wgan-gp" it must treat examples independently (no batch norm): the penalty is a
            per-example gradient.
        event_shape: shape of one example, e.g. (dim,) or (C, H, W).
        latent_dim: dimension of z; an integer >= 1.
        objective: one of OBJECTIVES: "nonsaturating", "saturating", "wgan-gp", "wgan-clip".
        gp_weight: lambda, the weight of the gradient penalty ("wgan-gp" only); >= 0.
        clip_value: c, the critic's weight bound ("wgan-clip" only); > 0.
        label_smoothing: s in [0, 0.5), one-sided: the target of real examples is 1 - s, that
            of fakes stays 0 ("nonsaturating"/"saturating" only; a WGAN has no labels).

    Example:
        >>> import torch
        >>> from sdegen.models import GAN
        >>> gan = GAN.mlp(2, latent_dim=4, hidden=32)
        >>> gan.sample(3, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 2])
        >>> gan.log_prob(torch.zeros(3, 2))
        Traceback (most recent call last):
            ...
        TypeError: a GAN defines no density; compare it on samples (FID, sliced Wasserstein)
    """

    log_prob_kind = "none"
    has_rsample = True  # G(z) is differentiable in the generator's parameters
    needs_parameter_dtype = True

    def __init__(
        self,
        generator_net: nn.Module,
        discriminator_net: nn.Module,
        event_shape: tuple[int, ...],
        latent_dim: int,
        objective: str = "nonsaturating",
        *,
        gp_weight: float = 10.0,
        clip_value: float = 0.01,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        for name, net in (
            ("generator_net", generator_net),
            ("discriminator_net", discriminator_net),
        ):
            if not isinstance(net, nn.Module):
                raise TypeError(f"{name} must be an nn.Module, got {type(net).__name__}")
        self.generator_net, self.discriminator_net = generator_net, discriminator_net
        shape = tuple(event_shape)
        if not shape or any(type(s) is not int or s < 1 for s in shape):
            raise ValueError(f"event_shape must be a non-empty tuple of positive ints, got {shape}")
        self.event_shape = shape
        self.latent_dim = check_int("latent_dim", latent_dim, 1)
        self.objective = check_choice("objective", objective, OBJECTIVES)
        self.gp_weight = check_finite_number("gp_weight", gp_weight, nonnegative=True)
        self.clip_value = check_finite_number("clip_value", clip_value, positive=True)
        s = check_finite_number("label_smoothing", label_smoothing, nonnegative=True)
        if s >= 0.5:
            raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
        if s and objective not in LOGISTIC:
            raise ValueError(
                f"label_smoothing={label_smoothing!r} needs a logistic objective "
                f"({' or '.join(LOGISTIC)}); a {objective!r} critic has no labels"
            )
        self.label_smoothing = s

    @classmethod
    def mlp(
        cls,
        dim: int,
        latent_dim: int = 8,
        hidden: int = 128,
        depth: int = 2,
        objective: str = "nonsaturating",
        *,
        spectral_norm: bool = False,
        **kwargs,
    ) -> GAN:
        """A GAN for vectors (B, dim): MLP generator (SiLU, linear output) and discriminator
        (LeakyReLU 0.2), each with `depth` hidden layers of width `hidden`; `spectral_norm`
        normalises every discriminator layer (`spectral_normalize`). Other keyword arguments go
        to `GAN`."""
        for name, value in (("dim", dim), ("latent_dim", latent_dim), ("hidden", hidden)):
            check_int(name, value, 1)
        check_int("depth", depth, 1)
        _check_bool("spectral_norm", spectral_norm)
        generator_net = mlp(latent_dim, hidden, depth, dim, nn.SiLU)
        discriminator_net = mlp(dim, hidden, depth, 1, _LeakyReLU)
        if spectral_norm:
            spectral_normalize(discriminator_net)
        return cls(generator_net, discriminator_net, (dim,), latent_dim, objective, **kwargs)

    @classmethod
    def dcgan(
        cls,
        shape: tuple[int, int, int],
        latent_dim: int = 64,
        hidden: int = 64,
        objective: str = "nonsaturating",
        *,
        batch_norm: bool = True,
        spectral_norm: bool = False,
        **kwargs,
    ) -> GAN:
        """A DCGAN-style pair (Radford et al. 2016) for images (B, C, H, W) in [-1, 1], H and W
        divisible by 4 (8x8 to 32x32).

        Generator: linear to (2 hidden, H/4, W/4), two stride-2 4x4 transposed convs, ReLU,
        batch norm if `batch_norm`, tanh output. Discriminator: two stride-2 4x4 convs with
        LeakyReLU 0.2 and a linear layer, without batch normalisation (so it also serves as a
        WGAN-GP critic); `spectral_norm` normalises its three layers (`spectral_normalize`).
        Keyword arguments go to `GAN`."""
        c, h, w = _image_shape(shape)
        check_int("latent_dim", latent_dim, 1)
        inner = (2 * check_int("hidden", hidden, 1), h // 4, w // 4)
        _check_bool("batch_norm", batch_norm)
        _check_bool("spectral_norm", spectral_norm)

        def norm(channels: int) -> nn.Module:
            return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()

        generator_net = nn.Sequential(
            nn.Linear(latent_dim, math.prod(inner)),
            nn.Unflatten(1, inner),
            norm(inner[0]),
            nn.ReLU(),
            nn.ConvTranspose2d(inner[0], hidden, 4, 2, 1),
            norm(hidden),
            nn.ReLU(),
            nn.ConvTranspose2d(hidden, c, 4, 2, 1),
            nn.Tanh(),
        )
        discriminator_net = nn.Sequential(
            nn.Conv2d(c, hidden, 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Conv2d(hidden, inner[0], 4, 2, 1),
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(math.prod(inner), 1),
        )
        if spectral_norm:
            spectral_normalize(discriminator_net)
        return cls(generator_net, discriminator_net, (c, h, w), latent_dim, objective, **kwargs)

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """z ~ N(0, I) of shape (n, latent_dim), drawn with `generator`."""
        check_int("n", n, 1)
        ref = next(self.generator_net.parameters(), None)
        ref = ref if ref is not None else next(self.parameters())
        shape = (n, self.latent_dim)
        return torch.randn(shape, generator=generator, dtype=ref.dtype, device=ref.device)

    def generate(self, z: Tensor) -> Tensor:
        """G(z): z (n, latent_dim) -> (n, *event_shape), in the generator's current mode."""
        out = self.generator_net(z)
        want = (z.shape[0], *self.event_shape)
        if not torch.is_tensor(out) or tuple(out.shape) != want:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(f"generator_net must return shape {want}, got {got}")
        return out

    def critic(self, x: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        """D(x): x (B, *event_shape) -> (B,) logits or critic values; `params` replaces the
        discriminator's parameters (by name) for this call."""
        if params is None:
            out = self.discriminator_net(x)
        else:
            out = functional_call(self.discriminator_net, params, (x,))
        if not torch.is_tensor(out) or out.numel() != x.shape[0]:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            b = x.shape[0]
            raise ValueError(f"discriminator_net must return shape ({b},) or ({b}, 1), got {got}")
        return out.reshape(x.shape[0])

    def gradient_penalty(
        self, real: Tensor, fake: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """WGAN-GP penalty (Gulrajani et al. 2017): mean over the batch of (|grad_x D(x_hat)| - 1)^2
        at x_hat = u real + (1 - u) fake, u ~ U(0, 1) per example drawn with `generator`.

        real, fake: (B, *event_shape), treated as constants. Returns an unweighted scalar,
        differentiable in the discriminator's parameters."""
        u = torch.rand(real.shape[0], generator=generator, dtype=real.dtype, device=real.device)
        u = u.reshape(-1, *([1] * len(self.event_shape)))
        x_hat = (u * real + (1 - u) * fake).detach().requires_grad_(True)
        with torch.enable_grad():  # also when a loss is evaluated under no_grad
            (grad,) = torch.autograd.grad(self.critic(x_hat).sum(), x_hat, create_graph=True)
            return (grad.reshape(grad.shape[0], -1).norm(dim=1) - 1).square().mean()

    def _discriminator_term(
        self, x: Tensor, fake: Tensor, generator: torch.Generator | None
    ) -> Tensor:
        fake = fake.detach()
        d_real, d_fake = self.critic(x), self.critic(fake)
        if self.objective in LOGISTIC:
            # binary cross-entropy with targets 1 - s (real) and 0 (fake):
            # -log sigmoid(d) = softplus(-d), -log(1 - sigmoid(d)) = softplus(d)
            s = self.label_smoothing
            real = F.softplus(-d_real) if not s else (1 - s) * F.softplus(-d_real)
            if s:
                real = real + s * F.softplus(d_real)
            return real.mean() + F.softplus(d_fake).mean()
        if self.objective == "wgan-clip":
            return d_fake.mean() - d_real.mean()
        penalty = self.gradient_penalty(x, fake, generator) if self.gp_weight else 0.0
        return d_fake.mean() - d_real.mean() + self.gp_weight * penalty

    def _generator_term(self, fake: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
        d_fake = self.critic(fake, params)
        if self.objective == "nonsaturating":
            return F.softplus(-d_fake).mean()  # -log sigmoid(d)
        if self.objective == "saturating":
            return -F.softplus(d_fake).mean()  # log(1 - sigmoid(d))
        return -d_fake.mean()

    def discriminator_loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """The discriminator's (critic's) loss on real x (B, *event_shape) and B fakes -> scalar.

        Draws z (B, latent_dim) then, for "wgan-gp", the interpolation weights (B,), both with
        `generator`. The fakes are detached: only the discriminator gets gradients."""
        self.check_x(x)
        with torch.no_grad():
            fake = self.generate(self.noise(x.shape[0], generator))
        return self._discriminator_term(x, fake, generator)

    def generator_loss(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """The generator's loss on n fakes (z (n, latent_dim) drawn with `generator`) -> scalar.

        Its gradient also reaches the discriminator's parameters; with two optimizers, zero
        them before the discriminator's step."""
        return self._generator_term(self.generate(self.noise(n, generator)))

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """discriminator_loss + generator_loss on one set of B fakes, for ONE optimizer: x
        (B, *event_shape) -> scalar.

        The discriminator term sees detached fakes, and the generator term calls the
        discriminator with detached copies of its parameters (`torch.func.functional_call`,
        no requires_grad toggling, so DDP is unaffected). So the discriminator's parameters get
        exactly the gradient of `discriminator_loss` and the generator's exactly that of
        `generator_loss` (same noise for the same `generator` state): a step is simultaneous
        gradient descent on the game, not alternating updates. The value itself (a sum of the
        two players' losses) is not a measure of progress."""
        self.check_x(x)
        fake = self.generate(self.noise(x.shape[0], generator))
        d_loss = self._discriminator_term(x, fake, generator)
        frozen = {name: p.detach() for name, p in self.discriminator_net.named_parameters()}
        return d_loss + self._generator_term(fake, frozen)

    # ---- alternating updates: the protocol of Trainer(players=...) ---------------------------

    players = PLAYERS
    """The players, in the order the papers update them: the discriminator, then the generator."""

    def player_parameters(self, player: str) -> list[nn.Parameter]:
        """The parameters `player` ("discriminator" or "generator") updates."""
        check_choice("player", player, PLAYERS)
        net = self.discriminator_net if player == "discriminator" else self.generator_net
        return list(net.parameters())

    def player_loss(
        self, player: str, x: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """`player`'s own loss on the real batch x (B, *event_shape) -> scalar:
        `discriminator_loss(x, generator)` or `generator_loss(B, generator)` (x only sets B)."""
        check_choice("player", player, PLAYERS)
        if player == "discriminator":
            return self.discriminator_loss(x, generator)
        self.check_x(x)
        return self.generator_loss(x.shape[0], generator)

    @torch.no_grad()
    def after_step(self, player: str | None = None) -> None:
        """Called by the Trainer after each optimizer step of `player` (None: a simultaneous
        step of both). For "wgan-clip", after a discriminator step, clips every critic
        parameter to [-clip_value, clip_value] (Arjovsky et al. 2017, Algorithm 1); otherwise
        does nothing."""
        if player is not None:
            check_choice("player", player, PLAYERS)
        if self.objective == "wgan-clip" and player in (None, "discriminator"):
            for p in self.discriminator_net.parameters():
                p.clamp_(-self.clip_value, self.clip_value)

    def log_prob(self, x: Tensor) -> Tensor:
        """Always raises TypeError: a GAN defines no density (log_prob_kind = "none")."""
        raise TypeError(NO_DENSITY)

    def sample_and_log_prob(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Always raises TypeError: a GAN defines no density; use `sample`."""
        raise TypeError(NO_DENSITY)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples G(z) (n, *event_shape), z ~ N(0, I) drawn with `generator`; the generator
        runs in eval mode (batch norm uses its running statistics), so the same generator seed
        gives the same samples. The module's train/eval mode is restored afterwards."""
        return self.rsample(n, generator)

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n reparametrized samples G(z) (n, *event_shape), z ~ N(0, I) drawn with
        `generator`, differentiable in the generator's parameters. Like `sample` (same values
        for one seed) the generator runs in eval mode; for training use `generator_loss`."""
        was_training = self.generator_net.training
        self.generator_net.eval()
        try:
            return self.generate(self.noise(n, generator))
        finally:
            self.generator_net.train(was_training)
