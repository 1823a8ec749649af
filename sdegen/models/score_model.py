"""A network plus an SDE and a parametrization name: the learned score model."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .._utils import append_dims, check_choice, check_finite_number
from ..protocols import SDE
from .base import ParametrizedModel, check_network, check_parametrization, to_x0_eps
from .labels import check_condition

TIME_INPUTS = ("log_snr", "t")


def check_time_input(time_input: str | Callable[[Tensor], Tensor]):
    """A time-input name from TIME_INPUTS or a callable t -> c_noise; else an error."""
    if isinstance(time_input, str):
        return check_choice("time_input", time_input, TIME_INPUTS)
    if not callable(time_input):
        raise TypeError(f"time_input must be a name or a callable, got {time_input!r}")
    return time_input


def noise_level(sde: SDE, t: Tensor, time_input: str | Callable[[Tensor], Tensor]) -> Tensor:
    """The network's noise-level input c_noise at times t (B,): log-SNR, t, or time_input(t)."""
    if isinstance(time_input, str):
        kind = check_choice("time_input", time_input, TIME_INPUTS)
        return sde.half_log_snr(t) if kind == "log_snr" else sde.check_t(t)
    return time_input(t)


def parameter_dtype(net: nn.Module) -> torch.dtype | None:
    """The dtype of `net`'s first floating-point parameter; None for a parameter-free network."""
    for p in net.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def scale_input(x: Tensor, alpha: Tensor, sigma: Tensor, sigma_data: float | None) -> Tensor:
    """c_in x with c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2) (EDM); x itself if None."""
    if sigma_data is None:
        return x
    return append_dims(torch.rsqrt(alpha**2 * sigma_data**2 + sigma**2), x.ndim) * x


class ScoreModel(ParametrizedModel):
    """Wrap `net(x_in, c_noise[, y]) -> out` as a score model for `sde`.

    The network sees c_in(t) * x with c_in = 1 / sqrt(alpha^2 sigma_data^2 + sigma^2), the inverse
    std of x_t for data of std sigma_data (EDM's input preconditioning; it is exactly 1 for VP with
    sigma_data = 1, and keeps VE/EDM inputs of std up to 80 at unit scale), and the noise level
    c_noise = time_input(t). Class labels y, when given, are passed to the network as its third
    argument; `num_classes` is the network's (None: unconditional).

    Dtypes: the network runs in the dtype of its parameters and the SDE arithmetic in x's
    (float32 for half-precision x); score, denoise, eps and forward return x's dtype. So float64
    x works with a float32 network: its input and c_noise are cast to float32 and its output
    back to float64, the conversions between parametrizations staying in float64. A network
    without parameters gets x's dtype.

    Args:
        net: an nn.Module mapping (B, *D) and (B,) to (B, *D).
        sde: the SDE object whose alpha, sigma define the conversions, e.g. `VPSDE()`.
        parametrization: what `net` predicts: "eps", "x0", "v" or "score"; on a from_betas SDE
            also "mu", DDPM's mean of the previous step; or "edm", EDM's preconditioned
            target F with x0 = c_skip x / alpha + c_out F (Karras et al. 2022, Table 1, in the
            SDE's own variables; it needs sigma_data, which also sets c_in as above; the
            network's noise input stays time_input). See `sdegen.models.base`.
        time_input: "log_snr" (the network sees lambda(t) = half_log_snr(t) = log(alpha/sigma),
            the same scale for every SDE; default; the name is kept so saved models load), "t", or a
            callable t -> c_noise, e.g. `sde.timestep` for a DDPM network trained on indices.
        sigma_data: data std for input scaling; None feeds x unscaled.

    Example:
        >>> import torch
        >>> import sdegen
        >>> from sdegen.models import MLP
        >>> _ = torch.manual_seed(0)
        >>> sde = sdegen.VPSDE()
        >>> model = sdegen.ScoreModel(MLP(2, hidden=32, depth=2), sde, "eps")
        >>> x, t = torch.randn(4, 2), torch.full((4,), 0.5)
        >>> model.score(x, t).shape
        torch.Size([4, 2])
        >>> a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
        >>> torch.allclose(a * model.denoise(x, t) + s * model.eps(x, t), x, atol=1e-6)
        True
        >>> sdegen.sample(model, sde, (8, 2), method="dpmpp_2m", nfe=10).nfe
        10
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
        super().__init__(sde)
        self.net = check_network("net", net)
        self.parametrization = check_parametrization(parametrization, sde)
        self.time_input = check_time_input(time_input)
        self.sigma_data = (
            None
            if sigma_data is None
            else check_finite_number("sigma_data", sigma_data, positive=True)
        )
        if self.parametrization == "edm" and self.sigma_data is None:
            raise ValueError(
                "parametrization 'edm' (EDM's preconditioning) needs sigma_data, got None; "
                "EDM uses 0.5 for data in [-1, 1]"
            )

    def c_noise(self, t: Tensor) -> Tensor:
        """The noise-level input of the network at times t of shape (B,)."""
        return noise_level(self.sde, t, self.time_input)

    @property
    def num_classes(self) -> int | None:  # type: ignore[override]  # read-only here
        """The network's number of classes; None for an unconditional network."""
        return getattr(self.net, "num_classes", None)

    def check_condition(self, y, batch: int) -> Tensor:
        """The condition y checked for the network: class labels (batch,), or what a
        text-conditional network takes (see `sdegen.models.labels.check_condition`)."""
        return check_condition(self.net, y, batch)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        """The raw network prediction in this model's parametrization; shape (B, *D), x's
        dtype; t of shape (B,)."""
        return self._predict(x, t, self.sde.alpha(t), self.sde.sigma(t), y)

    def _predict(
        self, x: Tensor, t: Tensor, alpha: Tensor, sigma: Tensor, y: Tensor | None = None
    ) -> Tensor:
        x_in = scale_input(x, alpha, sigma, self.sigma_data)
        if y is not None and self.num_classes is None:
            # raises for an unconditional network; checks a text network's condition
            check_condition(self.net, y, x.shape[0])
        c_noise = self.c_noise(t)
        dtype = parameter_dtype(self.net)
        if dtype is not None and dtype != x.dtype:  # run the network in its own dtype
            x_in = x_in.to(dtype)
            c_noise = c_noise.to(dtype) if c_noise.is_floating_point() else c_noise
        # Unconditional networks are called without y, so any net(x, c_noise) still works.
        out = self.net(x_in, c_noise) if y is None else self.net(x_in, c_noise, y)
        if not torch.is_tensor(out):
            raise TypeError(f"net must return a tensor, got {type(out).__name__}")
        if out.shape != x.shape:
            raise ValueError(
                f"net must return the shape of x {tuple(x.shape)}, got {tuple(out.shape)}"
            )
        return out.to(x.dtype)

    def x0_eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        out = self._predict(x, t, alpha, sigma, y)
        return to_x0_eps(
            self.parametrization,
            out,
            x,
            alpha,
            sigma,
            sde=self.sde,
            t=t,
            sigma_data=self.sigma_data,
        )
