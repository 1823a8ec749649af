"""The reverse SDE through torchsde.sdeint (euler, milstein, srk, reversible_heun).

torchsde integrates forward in time, so the reverse SDE is written in tau = T - t:
    dx = -[f(t) x - g(t)^2 score(x, t)] dtau + g(t) dW_tau.
The noise is additive (g depends on t only), so the Ito and Stratonovich forms coincide and every
torchsde method applies. The Brownian motion is a BrownianInterval seeded from `generator`; with
a PerExampleGenerator, example i's row is a BrownianInterval of its own, seeded from seed i.
"""

from __future__ import annotations

import torch
import torchsde
from torch import Tensor

from ..random import PerExampleGenerator, randint
from .grid import Record, batch_t

# torchsde method -> (sde_type, levy area approximation its Brownian motion must provide)
TORCHSDE_METHODS = {
    "euler": ("ito", "none"),
    "milstein": ("ito", "none"),
    "srk": ("ito", "space-time"),
    "reversible_heun": ("stratonovich", "none"),
}


class _ReverseSDE(torch.nn.Module):
    noise_type = "diagonal"

    def __init__(self, model, sde, t0: float, shape: torch.Size, sde_type: str) -> None:
        super().__init__()
        self.model, self.sde, self.t0, self.shape = model, sde, t0, shape
        self.sde_type = sde_type

    def _t(self, tau: Tensor, y: Tensor) -> Tensor:
        # Stages may fall a rounding error outside [t_min, T]; the model must not see that.
        t = min(max(self.t0 - float(tau), self.sde.t_min), self.sde.T)
        return batch_t(t, y)

    def f(self, tau: Tensor, y: Tensor) -> Tensor:
        x = y.reshape(self.shape)
        t = self._t(tau, y)
        g2 = self.sde.g2(t).to(y.dtype)[:, None]
        drift = self.sde.drift(x, t).reshape(y.shape) - g2 * self.model.score(x, t).reshape(y.shape)
        return -drift

    def g(self, tau: Tensor, y: Tensor) -> Tensor:
        # Depends on y only through a zero multiple, so torchsde's autograd-based Milstein
        # correction sees a state-independent diffusion (its correction is then exactly 0).
        return self.sde.diffusion(self._t(tau, y)).to(y.dtype)[:, None] + 0 * y


class _PerExampleBrownian(torchsde.BaseBrownian):
    """A Brownian motion of shape (B, d) whose row i is `rows[i]`, a BrownianInterval of shape
    (1, d) of its own: each example's path is the same in any batch."""

    def __init__(self, rows: list[torchsde.BrownianInterval]) -> None:
        self.rows = rows

    def __call__(self, ta, tb=None, return_U=False, return_A=False):
        parts = [bm(ta, tb, return_U=return_U, return_A=return_A) for bm in self.rows]
        if isinstance(parts[0], tuple):  # (W, U[, A]): each concatenated over the rows
            return tuple(torch.cat(p, dim=0) for p in zip(*parts))
        return torch.cat(parts, dim=0)

    def __repr__(self) -> str:
        return f"_PerExampleBrownian({len(self.rows)} rows of {self.rows[0]!r})"

    @property
    def dtype(self):
        return self.rows[0].dtype

    @property
    def device(self):
        return self.rows[0].device

    @property
    def shape(self):
        return torch.Size((len(self.rows), *self.rows[0].shape[1:]))

    @property
    def levy_area_approximation(self):
        return self.rows[0].levy_area_approximation


def _brownian(generator, y0: Tensor, taus: Tensor, levy: str):
    """The Brownian motion over [taus[0], taus[-1]] for states y0 (B, d): one BrownianInterval
    seeded from `generator`, or per example one from each example's seed."""
    per_example = isinstance(generator, PerExampleGenerator)
    seeds = randint(0, 2**62, (y0.shape[0] if per_example else 1,), generator).tolist()
    size = (1, *y0.shape[1:]) if per_example else y0.shape
    rows = [
        torchsde.BrownianInterval(
            t0=float(taus[0]),
            t1=float(taus[-1]),
            size=size,
            dtype=y0.dtype,
            device=y0.device,
            entropy=seed,
            levy_area_approximation=levy,
        )  # fmt: skip
        for seed in seeds
    ]
    return _PerExampleBrownian(rows) if per_example else rows[0]


def _make(method: str):
    sde_type, levy = TORCHSDE_METHODS[method]

    def run(model, sde, x: Tensor, ts: Tensor, *, generator=None, record: Record = None) -> Tensor:
        gaps = ts[:-1] - ts[1:]
        if not torch.allclose(gaps, gaps[0].expand_as(gaps), rtol=1e-9, atol=0):
            raise ValueError(f"torchsde_{method} steps a fixed dt and needs schedule='uniform'")
        taus = ts[0] - ts  # float64: float32 time sums would add a sliver step
        y0 = x.reshape(x.shape[0], -1)
        bm = _brownian(generator, y0, taus, levy)
        rsde = _ReverseSDE(model, sde, float(ts[0]), x.shape, sde_type)
        # dt a hair above the grid gap makes exactly one solver step per grid interval.
        dt = float(gaps[0]) * (1 + 1e-9)
        ys = torchsde.sdeint(rsde, y0, taus, bm=bm, method=method, dt=dt)
        if record is not None:
            for y in ys[1:]:
                record(y.reshape(x.shape))
        return ys[-1].reshape(x.shape)

    run.__name__ = f"torchsde_{method}"
    run.__doc__ = f"torchsde's {method!r} method on the reverse SDE (uniform grid only)."
    return run


torchsde_euler = _make("euler")
torchsde_milstein = _make("milstein")
torchsde_srk = _make("srk")
torchsde_reversible_heun = _make("reversible_heun")
