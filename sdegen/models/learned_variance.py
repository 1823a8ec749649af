"""A score model that also learns the variance of DDPM's reverse step (Improved DDPM).

Nichol & Dhariwal 2021 ("Improved denoising diffusion probabilistic models", section 3.1)
let the network output, beside its usual prediction, one number v per element and set the
reverse variance to Sigma_theta(x_t, t) = exp(v log beta_t + (1 - v) log beta_tilde_t) (eq. 15).
`LearnedVarianceModel` is a `ScoreModel` whose network returns 2C channels: the first C go
through the usual parametrization (so score, denoise, eps and every sampler work unchanged), the
other C are v, turned into the variance of a step t -> s by `variance(x, t, s)`.

One network evaluation gives both halves. Under `torch.no_grad()` (sampling) the model keeps
the v of its latest evaluation, so a sampler that asks for the mean and then for the variance at
the same (x, t) pays one evaluation, as Improved DDPM's sampler does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor, nn

from .._utils import batch_times
from ..protocols import SDE
from ..sde.discrete import previous_grid_time
from ..sde.reverse_variance import interpolated_variance
from .base import check_model_input, check_network, to_x0_eps
from .score_model import ScoreModel


class _SplitOutput(nn.Module):
    """A network with 2C output channels seen as one with C: forward returns the first half and
    leaves the second in `extra` for the model to take."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.extra: Tensor | None = None

    @property
    def num_classes(self) -> int | None:
        return getattr(self.net, "num_classes", None)

    def take_extra(self) -> Tensor:
        """The second half of the latest output, let go of here (nor is its graph kept)."""
        extra, self.extra = self.extra, None
        if extra is None:
            raise RuntimeError("no network output to take the variance weights from")
        return extra

    def forward(self, x: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        out = self.net(x, c_noise) if y is None else self.net(x, c_noise, y)
        want = (x.shape[0], 2 * x.shape[1], *x.shape[2:])
        if not torch.is_tensor(out) or tuple(out.shape) != want:
            got = tuple(out.shape) if torch.is_tensor(out) else type(out).__name__
            raise ValueError(
                f"net of a LearnedVarianceModel must return twice the channels of x, shape "
                f"{want} (prediction, then variance weights v), got {got}"
            )
        mean, self.extra = out.chunk(2, dim=1)
        return mean


class LearnedVarianceModel(ScoreModel):
    """A score model with Improved DDPM's learned reverse variance.

    Args:
        net: an nn.Module mapping x (B, C, *S) and c_noise (B,) to (B, 2C, *S): channels [0, C)
            are the prediction in `parametrization`, [C, 2C) the interpolation weights v. The
            package networks do this with `MLP(dim, out_dim=2 * dim)` and
            `UNet(in_channels=C, out_channels=2 * C)`.
        sde: the SDE; `variance` without s needs one on DDPM's grid (`VPSDE.from_betas`).
        parametrization, time_input, sigma_data: as for `ScoreModel`.

    Example:
        An output layer set to zero predicts eps = 0 and v = 0, i.e. beta_tilde:

        >>> import torch, sdegen
        >>> from sdegen.models import MLP, LearnedVarianceModel
        >>> from sdegen.sde import VPSDE, beta_schedule, grid_times
        >>> from sdegen.sde.reverse_variance import variance_bounds
        >>> from sdegen.solvers.ancestral_learned import respaced_grid
        >>> sde = VPSDE.from_betas(beta_schedule("linear", 100))
        >>> net = MLP(2, hidden=32, depth=2, out_dim=4)  # 2 prediction + 2 variance outputs
        >>> _ = torch.nn.init.zeros_(net.out.weight), torch.nn.init.zeros_(net.out.bias)
        >>> model = LearnedVarianceModel(net, sde)
        >>> x, t = torch.randn(5, 2), grid_times(sde)[[49] * 5]
        >>> var = model.variance(x, t)  # of the step 50 -> 49, per element
        >>> var.shape, torch.allclose(var, variance_bounds(sde, t - 0.01, t)[0][:, None].float())
        (torch.Size([5, 2]), True)
        >>> r = sdegen.sample(model, sde, (8, 2), method="ancestral", variance="learned",
        ...                   schedule=respaced_grid(sde, 20))  # timesteps 100, 95, ..., 1
        >>> r.nfe  # one evaluation per step for mean and variance, and the final denoise
        21
    """

    def __init__(
        self,
        net: nn.Module,
        sde: SDE,
        parametrization: str = "eps",
        *,
        time_input: str | Callable[[Tensor], Tensor] = "log_snr",
        sigma_data: float | None = 1.0,
    ) -> None:
        super().__init__(
            _SplitOutput(check_network("net", net)),
            sde,
            parametrization,
            time_input=time_input,
            sigma_data=sigma_data,
        )
        # (x, t, y, v) of the latest evaluation under no_grad
        self._last: tuple[Tensor, Tensor, Tensor | None, Tensor] | None = None

    def predict(
        self, x: Tensor, t: Tensor, y: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """One network evaluation: the x0 and eps estimates and the variance weights v.

        Args:
            x: (B, *D) in a float dtype; t: times (B,) or a number; y: labels (B,) or None.
        Returns:
            x0, eps, v, each (B, *D) in the working dtype (x's; float32 for half x).
        """
        check_model_input(x, t)
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)
        t = batch_times(t, x.shape[0], x)
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        out = self._predict(x, t, alpha, sigma, y)
        v = cast(_SplitOutput, self.net).take_extra().to(x.dtype)
        x0, eps = to_x0_eps(self.parametrization, out, x, alpha, sigma, sde=self.sde, t=t)
        return x0, eps, v

    def x0_eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x0, eps, v = self.predict(x, t, y)
        self._last = None if torch.is_grad_enabled() else (x, t.detach().clone(), y, v)
        return x0, eps

    def _weights(self, x: Tensor, t: Tensor, y: Tensor | None) -> Tensor:
        """v at (x, t, y): the latest evaluation's if it was this very x (under no_grad), else a
        new evaluation."""
        last = self._last
        if (
            last is not None
            and not torch.is_grad_enabled()
            and last[0] is x
            and last[2] is y
            and last[1].shape == t.shape
            and torch.equal(last[1], t.to(last[1].dtype))
        ):
            return last[3]
        return self.predict(x, t, y)[2]

    def variance(
        self, x: Tensor, t: Tensor | float, s: Tensor | float | None = None, y: Tensor | None = None
    ) -> Tensor:
        """Sigma_theta(x_t, t) of the reverse step t -> s (Improved DDPM, eq. 15), per element.

        Args:
            x: x_t, shape (B, *D).
            t: times (B,) or a number.
            s: the time stepped to, (B,) or a number, 0 <= s < t; default the previous grid
                time t - 1/N of a from_betas SDE. On a strided grid the bounds beta, beta_tilde
                are those of the step t -> s (the respaced betas of Nichol & Dhariwal, sec. 4).
            y: labels (B,) of a conditional model, or None.
        Returns:
            the variance, shape (B, *D), x's dtype (differentiable in the network's weights
            when gradients are enabled).
        """
        check_model_input(x, t)
        tb = batch_times(t, x.shape[0], x)
        sb = previous_grid_time(self.sde, tb) if s is None else batch_times(s, x.shape[0], x)
        v = self._weights(x, tb, y)
        return interpolated_variance(self.sde, v, sb, tb).to(x.dtype)
