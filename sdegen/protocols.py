"""The protocols the layers program against: an SDE and a score model.

They are structural (`typing.Protocol`): any object with these members is accepted, whatever its
class. A user's own SDE need not subclass `sdegen.sde.LinearSDE`, and an analytic score, an
adapter around a foreign network or a test spy works with every solver. The type checker reads
them in signatures; `isinstance(obj, SDE)` checks at run time that the members exist (not their
signatures). This module imports nothing from sdegen, so every layer may import it.

Density models share a base class instead, `sdegen.models.density.DensityModel` (an nn.Module
with `log_prob`, `sample`, `loss`, `bits_per_dim`, `event_shape`, `log_prob_kind`): they are
trained as modules, so nominal typing costs nothing there.

Tensors of times t have shape (B,); x has shape (B, *D).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["SDE", "ScoreModelLike", "ScoreModelWithSDE"]


@runtime_checkable
class SDE(Protocol):
    """A linear SDE dx = f(t) x dt + g(t) dW with kernel p_t(x | x0) = N(alpha(t) x0, sigma(t)^2 I).

    `sdegen.sde.LinearSDE` and its subclasses (VPSDE, SubVPSDE, VESDE, EDMSDE) implement it;
    f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2 tie the members together. Time is
    continuous in [t_min, T], where the prior N(0, prior_std^2 I) stands in for p_T.
    """

    @property
    def t_min(self) -> float:
        """Smallest time used by samplers and likelihoods."""
        ...

    @property
    def T(self) -> float:
        """Terminal time, where the prior replaces p_T."""
        ...

    @property
    def prior_std(self) -> float:
        """Std of the prior N(0, prior_std^2 I)."""
        ...

    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale alpha(t); (B,) -> (B,)."""
        ...

    def sigma(self, t: Tensor) -> Tensor:
        """Noise std sigma(t); (B,) -> (B,)."""
        ...

    def f(self, t: Tensor) -> Tensor:
        """Drift coefficient f(t) = d log alpha/dt; (B,) -> (B,)."""
        ...

    def g2(self, t: Tensor) -> Tensor:
        """Squared diffusion g(t)^2 = d sigma^2/dt - 2 f sigma^2; (B,) -> (B,)."""
        ...

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """Forward drift f(t) x; x (B, *D), t (B,) -> (B, *D)."""
        ...

    def diffusion(self, t: Tensor) -> Tensor:
        """Diffusion coefficient g(t); (B,) -> (B,)."""
        ...

    def half_log_snr(self, t: Tensor) -> Tensor:
        """Half log signal-to-noise ratio lambda(t) = log(alpha/sigma), decreasing; (B,) -> (B,)."""
        ...

    def t_of_half_log_snr(self, lam: Tensor) -> Tensor:
        """Inverse of half_log_snr; shape preserved."""
        ...

    def half_log_snr_range(self) -> tuple[float, float]:
        """(lambda(T), lambda(t_min))."""
        ...

    def marginal(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean (B, *D) and std (B,) of p_t(x | x0)."""
        ...

    def perturb(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = alpha(t) x0 + sigma(t) noise; (B, *D)."""
        ...

    def transition(self, s: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Scale and std, each (B,), of p(x_t | x_s) = N(a x_s, std^2 I), s <= t."""
        ...

    def prior_sample(
        self,
        shape: tuple[int, ...],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> Tensor:
        """A draw of the prior of shape `shape` = (B, *D)."""
        ...

    def prior_log_prob(self, z: Tensor) -> Tensor:
        """log N(z; 0, prior_std^2 I) in nats; (B, *D) -> (B,)."""
        ...

    def check_t(self, t: Tensor) -> Tensor:
        """t unchanged, or ValueError when it is NaN or outside [t_min, T]."""
        ...


@runtime_checkable
class ScoreModelLike(Protocol):
    """What every solver needs: score, x0-estimate and noise-estimate at (x, t), t of shape (B,).

    Each method maps x (B, *D) and t (B,) to (B, *D). `sdegen.ScoreModel`, the analytic
    `GaussianScore` and `GaussianMixtureScore` implement it. Conditional models also take
    labels y of shape (B,) as a third argument; solvers never pass them:
    `sdegen.solvers.guidance` binds them in a wrapper that has this two-argument form.
    """

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        """The score grad_x log p_t(x)."""
        ...

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        """The x0 estimate E[x0 | x_t = x]."""
        ...

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        """The noise estimate E[eps | x_t = x]."""
        ...


@runtime_checkable
class ScoreModelWithSDE(ScoreModelLike, Protocol):
    """A score model that carries the SDE it belongs to, as `.sde`, and takes optional class
    labels y of shape (B,) (None: unconditional): what the training losses read.

    `sdegen.ScoreModel` and the analytic scores implement it (every `ParametrizedModel`).
    """

    @property
    def sde(self) -> SDE:
        """The SDE whose alpha(t), sigma(t) relate score, x0 and eps."""
        ...

    def score(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The score grad_x log p_t(x | y)."""
        ...

    def denoise(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The x0 estimate E[x0 | x_t = x, y]."""
        ...

    def eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The noise estimate E[eps | x_t = x, y]."""
        ...
