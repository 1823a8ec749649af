"""Linear inverse problems y = A x + sigma_y n: the operators A and the posterior guidance.

An operator maps a batch of examples x (B, *D) to observations A x (B, *M); every one has its
adjoint A^T (B, *M) -> (B, *D) and solves with its Gram matrix A A^T, which give the
pseudo-inverse A^+ = A^T (A A^T)^+ and PiGDM's (r^2 A A^T + sigma_y^2 I)^-1. Built in:
`Inpaint` (observe some entries), `Downsample` (average pooling: super-resolution),
`Grayscale` (the channel mean: colourisation), `Blur` (a 2-D convolution: deblurring) and
`Matrix` (any dense A on flat vectors).

`Observed` makes a score model sample p(x | y) with any sampler (`sample(..., operator=A,
y_obs=y, sigma_y=..., inverse=...)`): a guidance term g ~ grad_x log p(y | x_t = x) is added to
the score, as classifier guidance is (x0 += (sigma^2 / alpha) g, eps -= sigma g). With
D(x) = E[x0 | x_t = x] the model's denoiser, J = dD/dx its Jacobian and r = y - A D(x):

- "moment" (Boys et al. 2023, Tweedie moment projection): p(x0 | x_t) ~ N(D, Sigma_t) with
  Tweedie's Sigma_t = (sigma^2 / alpha) J, so p(y | x_t) ~ N(A D, A Sigma_t A^T + sigma_y^2 I)
  and g = J^T A^T (A Sigma_t A^T + sigma_y^2 I)^-1 r. Exact for Gaussian data with the exact
  score (x0 | x_t is then Gaussian with a covariance that does not depend on x). Costs one VJP
  per observed value per evaluation.
- "pigdm" (Song et al. 2023, Pseudoinverse-Guided Diffusion Models, eq. 7): the same with
  Sigma_t replaced by r_t^2 I, g = J^T A^T (r_t^2 A A^T + sigma_y^2 I)^-1 r. r_t^2 is the
  posterior variance of x0 given x_t for data x0 ~ N(0, I): sigma^2 / (alpha^2 + sigma^2) for
  any linear SDE (x_t / alpha = x0 + (sigma / alpha) z); that is sigma_t^2 for VP, as in the
  paper, and sigma^2 / (1 + sigma^2) for VE and EDM. One VJP per evaluation.
- "dps" (Chung et al. 2023, Diffusion Posterior Sampling, eq. 16 and Alg. 1): the likelihood of
  the point estimate, grad log p(y | x_t) ~ -zeta_t grad_x ||y - A D(x)||^2 with the step size
  zeta_t = zeta / ||y - A D(x)|| (per example), i.e. g = 2 zeta J^T A^T r / ||r||; zeta is
  `scale` and sigma_y is not used. One VJP per evaluation. The paper adds its gradient as a
  displacement of x after each of 1000 ancestral steps; here it enters the score, so each
  sampler weighs it by its own step (g^2 dt on the reverse SDE), and the same zeta means a
  step-size-independent amount of guidance.
- "replace" (`Inpaint` only, sigma_y = 0): Song et al. 2021, App. I.2: before each evaluation
  the observed entries of x are replaced by a fresh draw alpha_t y + sigma_t z of their
  forward-perturbed value; the model is evaluated there, and the observed entries get x0 = y and
  the matching eps. One evaluation, no VJP. It conditions on a *noisy* copy of y, so it is
  biased wherever observed and unobserved entries are correlated (tests/test_conditional.py
  measures it).

With sigma_y = 0 and A A^T = c I (Inpaint, Downsample, Grayscale) the output is projected onto
{x : A x = y}, x + A^+ (y - A x) (for `Inpaint` the observed entries are set exactly), so an
observation without noise is held exactly.

Example:
    2x super-resolution of a 4x4 "image" with correlated pixels, by PiGDM at 10 evaluations
    (one VJP each); the 2x2 observation is held exactly:

    >>> import torch, sdegen
    >>> from sdegen.solvers import Downsample
    >>> sde = sdegen.VPSDE()
    >>> cov = 0.5 * torch.eye(16) + 0.5
    >>> model = sdegen.GaussianScore(torch.zeros(16), cov, sde, event_shape=(1, 4, 4))
    >>> y = torch.full((1, 1, 2, 2), 0.8)
    >>> r = sdegen.sample(model, sde, (200, 1, 4, 4), nfe=10, operator=Downsample(2), y_obs=y,
    ...                   inverse="pigdm", generator=torch.Generator().manual_seed(0))
    >>> r.x.shape, r.nfe, r.nfe_backward
    (torch.Size([200, 1, 4, 4]), 10, 10)
    >>> bool((Downsample(2)(r.x) - y).abs().max() < 1e-5)
    True
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
from torch import Tensor
from torch.nn import functional as F

from .._utils import append_dims, check_choice, check_finite_number, check_int, check_tensor_finite
from ..random import RandomSource, randn
from .guidance import _Wrapper, model_x0_eps

__all__ = [
    "LinearOperator",
    "Inpaint",
    "Downsample",
    "Grayscale",
    "Blur",
    "Matrix",
    "Observed",
    "INVERSE_METHODS",
    "posterior_guidance_variance",
]

INVERSE_METHODS = ("moment", "dps", "pigdm", "replace")
# the inverse method `sample` uses when none is given: replacement for known=/mask= inpainting
# (as before the operators existed), Tweedie moment guidance for an operator
DEFAULT_INVERSE = {"inpaint": "replace", "operator": "moment"}

# A dense Gram matrix is built for operators without a closed form only up to this many
# observed values (an m x m eigendecomposition).
_MAX_DENSE = 4096


class LinearOperator(ABC):
    """A linear map A from examples x (B, *D) to observations (B, *M), the same for every
    example (Inpaint allows a per-example mask with equal counts).

    Subclasses write `forward` and `adjoint`; `gram_solve` and `pinv` then work through a dense
    eigendecomposition of A A^T (built once per observation shape, dtype and device, from m
    applications of A A^T to the unit vectors), which operators with A A^T = c I override with
    the closed form.
    """

    @abstractmethod
    def forward(self, x: Tensor) -> Tensor:
        """A x: (B, *D) -> (B, *M)."""

    @abstractmethod
    def adjoint(self, y: Tensor) -> Tensor:
        """A^T y: (B, *M) -> (B, *D)."""

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def _gram_eig(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """Eigenvalues (m,) and eigenvectors (m, m) of A A^T for observations shaped like y."""
        key = (tuple(y.shape[1:]), y.dtype, y.device)
        cache = self.__dict__.setdefault("_eig_cache", {})
        if key not in cache:
            m = math.prod(y.shape[1:])
            if m > _MAX_DENSE:
                raise ValueError(
                    f"{type(self).__name__} has no closed-form Gram matrix and {m} observed "
                    f"values (a dense one is built only up to {_MAX_DENSE})"
                )
            basis = torch.eye(m, dtype=y.dtype, device=y.device).reshape(m, *y.shape[1:])
            gram = self.forward(self.adjoint(basis)).reshape(m, m)
            lam, U = torch.linalg.eigh(0.5 * (gram + gram.T))
            cache[key] = (lam.clamp_min(0), U)
        return cache[key]

    def gram_solve(self, y: Tensor, r2: Tensor | float, s2: float) -> Tensor:
        """(r2 A A^T + s2 I)^+ y for y (B, *M) and r2 a float or (B,): the solve of PiGDM and the
        pseudo-inverse (r2 = 1, s2 = 0). Directions where r2 lambda + s2 vanishes (A without full
        row rank and s2 = 0) get 0, as a pseudo-inverse does."""
        lam, U = self._gram_eig(y)
        r2 = torch.as_tensor(r2, dtype=y.dtype, device=y.device).reshape(-1, 1)
        d = r2 * lam + s2  # (B or 1, m)
        tiny = 1e-10 * (float(lam.max()) * float(r2.abs().max()) + s2)
        inv = torch.where(d > tiny, 1 / d.clamp_min(1e-300), torch.zeros((), dtype=d.dtype))
        yf = y.reshape(y.shape[0], -1)
        return (((yf @ U) * inv) @ U.T).reshape(y.shape)

    def pinv(self, y: Tensor) -> Tensor:
        """The pseudo-inverse A^+ y = A^T (A A^T)^+ y: the least-norm x with A x = y (for y in
        A's range); (B, *M) -> (B, *D)."""
        return self.adjoint(self.gram_solve(y, 1.0, 0.0))

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """The nearest x' to x (B, *D) with A x' = y: x + A^+ (y - A x)."""
        return x + self.pinv(y - self.forward(x))


class _ScaledIsometry(LinearOperator):
    """An operator with A A^T = c I: every solve is a division."""

    gram_scale = 1.0

    def gram_solve(self, y: Tensor, r2: Tensor | float, s2: float) -> Tensor:
        r2 = torch.as_tensor(r2, dtype=y.dtype, device=y.device)
        return y / append_dims(r2.reshape(-1) * self.gram_scale + s2, y.ndim)


class Inpaint(_ScaledIsometry):
    """Observe the entries of x where `mask` is True: A x = the selected entries, (B, m), in
    row-major order. A A^T = I and A^+ = A^T (zeros at the unobserved entries).

    Args:
        mask: bool of one example's shape D (the same entries observed in every example), or,
            with `per_example`, of the batch's shape (B, *D), each example observing the same
            number m of entries.
    """

    def __init__(self, mask: Tensor, *, per_example: bool = False) -> None:
        if not torch.is_tensor(mask) or mask.dtype != torch.bool:
            got = mask.dtype if torch.is_tensor(mask) else type(mask).__name__
            raise ValueError(f"mask must be a bool tensor (True where observed), got {got}")
        if mask.ndim < (2 if per_example else 1):
            raise ValueError(f"mask must have the shape of an example, got {tuple(mask.shape)}")
        counts = mask.reshape(mask.shape[0], -1).sum(1) if per_example else mask.sum()[None]
        if bool((counts == 0).any()):
            raise ValueError("mask must observe at least one entry (of every example)")
        if bool((counts != counts[0]).any()):
            raise ValueError(
                "a per-example mask must observe the same number of entries in every example, "
                f"got {sorted(set(counts.tolist()))}"
            )
        self.mask, self.per_example = mask, per_example

    def batch_mask(self, x: Tensor) -> Tensor:
        """The mask as x's shape (B, *D), on x's device."""
        want = tuple(self.mask.shape)
        got = tuple(x.shape) if self.per_example else tuple(x.shape[1:])
        if got != want:
            what = "x" if self.per_example else "an example of x"
            raise ValueError(
                f"Inpaint's mask has shape {want}, but {what} has shape {got} (x: {tuple(x.shape)})"
            )
        return self.mask.to(x.device).expand(x.shape)

    def shared(self) -> bool:
        """Whether every example has the same mask."""
        if not self.per_example:
            return True
        m = self.mask.reshape(self.mask.shape[0], -1)
        return bool((m == m[:1]).all())

    def forward(self, x: Tensor) -> Tensor:
        return x[self.batch_mask(x)].reshape(x.shape[0], -1)

    def adjoint(self, y: Tensor) -> Tensor:
        shape = self.mask.shape if self.per_example else (y.shape[0], *self.mask.shape)
        x = torch.zeros(shape, dtype=y.dtype, device=y.device)
        return x.masked_scatter(self.batch_mask(x), y)

    def project(self, x: Tensor, y: Tensor) -> Tensor:
        """x with its observed entries set to y exactly."""
        return torch.where(self.batch_mask(x), self.adjoint(y.to(x.dtype)), x)


def _check_image(name: str, x: Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"{name} acts on images (B, C, H, W), got x of shape {tuple(x.shape)}")


class Downsample(_ScaledIsometry):
    """Super-resolution's forward model: the mean of each factor x factor block of an image,
    (B, C, H, W) -> (B, C, H / factor, W / factor). A A^T = I / factor^2, and A^+ repeats each
    observed value over its block (nearest-neighbour upsampling).

    Args:
        factor: the block size, an integer >= 2 dividing H and W.
    """

    def __init__(self, factor: int) -> None:
        self.factor = check_int("factor", factor, 2)
        self.gram_scale = 1.0 / self.factor**2

    def forward(self, x: Tensor) -> Tensor:
        _check_image("Downsample", x)
        f = self.factor
        if x.shape[-1] % f or x.shape[-2] % f:
            raise ValueError(
                f"Downsample(factor={f}) needs H and W divisible by {f}, got {tuple(x.shape)}"
            )
        return F.avg_pool2d(x, f)

    def adjoint(self, y: Tensor) -> Tensor:
        _check_image("Downsample", y)
        f = self.factor
        return y.repeat_interleave(f, -2).repeat_interleave(f, -1) / f**2


class Grayscale(_ScaledIsometry):
    """Colourisation's forward model: the mean over the channels, (B, C, H, W) -> (B, 1, H, W).
    A A^T = I / C, and A^+ copies the grey value into every channel.

    Args:
        channels: C, the number of channels of x (3 for RGB).
    """

    def __init__(self, channels: int = 3) -> None:
        self.channels = check_int("channels", channels, 2)
        self.gram_scale = 1.0 / self.channels

    def forward(self, x: Tensor) -> Tensor:
        _check_image("Grayscale", x)
        if x.shape[1] != self.channels:
            raise ValueError(
                f"Grayscale(channels={self.channels}) got x with {x.shape[1]} channels"
            )
        return x.mean(1, keepdim=True)

    def adjoint(self, y: Tensor) -> Tensor:
        _check_image("Grayscale", y)
        return y.expand(-1, self.channels, -1, -1) / self.channels


class Blur(LinearOperator):
    """Deblurring's forward model: every channel convolved with one 2-D kernel, zero padding,
    the output the size of the input, (B, C, H, W) -> (B, C, H, W). Its adjoint is the
    transposed convolution; the Gram solves go through a dense A A^T (at most 4096 values).

    Args:
        kernel: (k, k) with k odd, finite; e.g. `Blur.gaussian(5, 1.0)`.
    """

    def __init__(self, kernel: Tensor) -> None:
        if not torch.is_tensor(kernel) or kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1]:
            got = tuple(kernel.shape) if torch.is_tensor(kernel) else type(kernel).__name__
            raise ValueError(f"kernel must be a square (k, k) tensor, got {got}")
        if kernel.shape[0] % 2 == 0:
            raise ValueError(f"kernel size must be odd, got {kernel.shape[0]}")
        check_tensor_finite("kernel", kernel)
        self.kernel = kernel

    @classmethod
    def gaussian(cls, size: int, std: float) -> Blur:
        """A normalised Gaussian blur of odd `size` and standard deviation `std` (pixels)."""
        size = check_int("size", size, 1)
        if size % 2 == 0:
            raise ValueError(f"size must be odd, got {size}")
        std = check_finite_number("std", std, positive=True)
        r = torch.arange(size, dtype=torch.float64) - size // 2
        g = torch.exp(-0.5 * (r / std) ** 2)
        k = g[:, None] * g[None, :]
        return cls(k / k.sum())

    def _weight(self, x: Tensor) -> Tensor:
        k = self.kernel.to(dtype=x.dtype, device=x.device)
        return k.expand(x.shape[1], 1, *k.shape)

    def forward(self, x: Tensor) -> Tensor:
        _check_image("Blur", x)
        return F.conv2d(x, self._weight(x), padding=self.kernel.shape[0] // 2, groups=x.shape[1])

    def adjoint(self, y: Tensor) -> Tensor:
        _check_image("Blur", y)
        pad = self.kernel.shape[0] // 2
        return F.conv_transpose2d(y, self._weight(y), padding=pad, groups=y.shape[1])


class Matrix(LinearOperator):
    """A dense matrix on flat examples: A x for x (B, n), A of shape (m, n), giving (B, m).

    Args:
        A: (m, n), finite.
    """

    def __init__(self, A: Tensor) -> None:
        if not torch.is_tensor(A) or A.ndim != 2:
            got = tuple(A.shape) if torch.is_tensor(A) else type(A).__name__
            raise ValueError(f"A must be a matrix (m, n), got {got}")
        check_tensor_finite("A", A)
        self.A = A

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.A.shape[1]:
            raise ValueError(
                f"Matrix {tuple(self.A.shape)} needs x of shape (B, {self.A.shape[1]})"
                f", got {tuple(x.shape)}"
            )
        return x @ self.A.to(dtype=x.dtype, device=x.device).T

    def adjoint(self, y: Tensor) -> Tensor:
        return y @ self.A.to(dtype=y.dtype, device=y.device)


def posterior_guidance_variance(sde, t: Tensor) -> Tensor:
    """PiGDM's r_t^2 = sigma^2 / (alpha^2 + sigma^2): Var[x0 | x_t] for data x0 ~ N(0, I) under
    any linear SDE (sigma_t^2 for VP, as in Song et al. 2023; sigma^2 / (1 + sigma^2) for VE);
    t (B,) -> (B,)."""
    a, s = sde.alpha(t), sde.sigma(t)
    return s**2 / (a**2 + s**2)


class Observed(_Wrapper):
    """A score model of p(x | y) for the observation y = A x + sigma_y n: the model's score plus
    `scale` times the guidance term of `method` (see the module docstring).

    Args:
        model, sde: the score model and its SDE.
        operator: a `LinearOperator` A.
        y: the observation, (B, *M) or broadcastable to it (e.g. one observation (*M) for the
            whole batch), finite.
        sigma_y: the observation noise's standard deviation (>= 0; "replace" needs 0).
        method: "moment", "pigdm", "dps" or "replace" (an `Inpaint` operator only).
        scale: the guidance weight (default 1: the exact weight for "moment", the paper's for
            "pigdm", DPS's zeta).
        generator: the random source of "replace"'s noise.
        shape: (B, *D) of the samples, to check y against A's output shape up front.

    Counts one vector-Jacobian product of the model per evaluation ("pigdm", "dps"), one per
    observed value ("moment"), none ("replace"), in `nfe_backward`.
    """

    def __init__(
        self,
        model,
        sde,
        operator: LinearOperator,
        y: Tensor,
        *,
        sigma_y: float = 0.0,
        method: str = "moment",
        scale: float | None = None,
        generator: RandomSource = None,
        shape: tuple[int, ...] | None = None,
        method_name: str = "inverse method",
    ) -> None:
        super().__init__(model, sde)
        if not isinstance(operator, LinearOperator):
            raise TypeError(
                f"operator must be a sdegen LinearOperator (Inpaint, Downsample, Grayscale, Blur, "
                f"Matrix or a subclass), got {type(operator).__name__}"
            )
        self.method = check_choice(method_name, method, INVERSE_METHODS)
        self.operator = operator
        self.sigma_y = check_finite_number("sigma_y", sigma_y, nonnegative=True)
        self.scale = 1.0 if scale is None else check_finite_number("inverse_scale", scale)
        if self.scale < 0:
            raise ValueError(
                f"inverse_scale must be >= 0 (0: no pull towards the observation), got {scale!r}"
            )
        if not torch.is_tensor(y) or not y.is_floating_point():
            got = y.dtype if torch.is_tensor(y) else type(y).__name__
            raise ValueError(f"y_obs must be a floating-point tensor, got {got}")
        check_tensor_finite("y_obs", y)
        if self.method == "replace" and (not isinstance(operator, Inpaint) or self.sigma_y > 0):
            raise ValueError(
                "inverse method 'replace' works for an Inpaint operator with sigma_y = 0 only, "
                f"got {type(operator).__name__} with sigma_y = {self.sigma_y:g}"
            )
        if self.method == "moment" and isinstance(operator, Inpaint) and not operator.shared():
            raise ValueError("inpainting method 'moment' needs the same mask for every example")
        if shape is not None:
            with torch.no_grad():
                out = operator.forward(torch.zeros(shape, dtype=y.dtype, device=y.device))
            try:
                y = y.expand(out.shape)
            except RuntimeError:
                raise ValueError(
                    f"y_obs has shape {tuple(y.shape)}, but {type(operator).__name__} observes "
                    f"{tuple(out.shape)} for samples of shape {tuple(shape)}"
                ) from None
        self.y, self.generator = y, generator
        self.own_nfe_backward = 0

    def _obs(self, x: Tensor) -> Tensor:
        return self.y.to(dtype=x.dtype, device=x.device)

    def finish(self, x: Tensor) -> Tensor:
        """The sampler's output x (B, *D), projected onto A x = y when sigma_y = 0 and A A^T is
        a multiple of I (Inpaint: the observed entries set exactly; Downsample, Grayscale); else
        x itself (a projection through an ill-conditioned A A^T, a blur's, would amplify the
        sampler's error)."""
        if self.sigma_y > 0 or not isinstance(self.operator, _ScaledIsometry):
            return x
        return self.operator.project(x, self._obs(x))

    def _x0_eps(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        a = append_dims(self.sde.alpha(t), x.ndim).to(x.dtype)
        s = append_dims(self.sde.sigma(t), x.ndim).to(x.dtype)
        if self.method == "replace":
            return self._replace(x, t, a, s)
        x0, eps, grad = self._guidance(x, t)
        if self.scale != 1.0:
            grad = self.scale * grad
        return x0 + (s**2 / a) * grad, eps - s * grad

    def _replace(self, x: Tensor, t: Tensor, a: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
        """Song et al.'s replacement: the model at x with its observed entries replaced by a
        fresh draw alpha_t y + sigma_t z; x0 = y there and the matching eps."""
        op = self.operator
        assert isinstance(op, Inpaint)  # checked at construction
        mask, known = op.batch_mask(x), op.adjoint(self._obs(x))
        z = randn(x.shape, self.generator, dtype=x.dtype, device=x.device)
        x_rep = torch.where(mask, a * known + s * z, x)
        x0, eps = model_x0_eps(self.model, self.sde, x_rep, t, None)
        x0 = torch.where(mask, known, x0)
        return x0, torch.where(mask, (x - a * x0) / s, eps)

    def _guidance(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The model's (x0, eps) at x and the guidance term g (unscaled), each (B, *D)."""
        b, op = x.shape[0], self.operator
        y = self._obs(x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            x0, eps = model_x0_eps(self.model, self.sde, xg, t, None)
            Ax0 = op.forward(x0)
            resid = y - Ax0.detach()  # (B, *M)
            if self.method == "moment":
                grad = self._moment(x, t, xg, Ax0.reshape(b, -1), resid.reshape(b, -1))
            else:
                if self.method == "pigdm":
                    r2 = posterior_guidance_variance(self.sde, t).to(x.dtype)
                    v = op.gram_solve(resid, r2, self.sigma_y**2)
                else:  # dps: -zeta / ||r|| grad ||r||^2 = 2 zeta J^T A^T r / ||r||
                    norm = resid.reshape(b, -1).norm(dim=1).clamp_min(1e-30)
                    v = resid * append_dims(2 / norm, resid.ndim)
                (grad,) = torch.autograd.grad(x0, xg, op.adjoint(v))
                self.own_nfe_backward += 1
        return x0.detach(), eps.detach(), grad

    def _moment(self, x: Tensor, t: Tensor, xg: Tensor, Ax0: Tensor, resid: Tensor) -> Tensor:
        """J^T A^T (A Sigma_t A^T + sigma_y^2 I)^-1 r, Sigma_t = (sigma^2 / alpha) J: the rows
        of A J by one VJP per observed value (examples are independent, so one VJP of the batch
        sum gives every example's row)."""
        b, op = x.shape[0], self.operator
        rows = [
            torch.autograd.grad(Ax0[:, i].sum(), xg, retain_graph=True)[0].reshape(b, -1)
            for i in range(Ax0.shape[1])
        ]
        self.own_nfe_backward += len(rows)
        J = torch.stack(rows, dim=1)  # A J: (B, m, D)
        AJAt = torch.stack([op.forward(r.reshape(x.shape)).reshape(b, -1) for r in rows], dim=1)
        alpha, sigma = self.sde.alpha(t).to(x.dtype), self.sde.sigma(t).to(x.dtype)
        cov = (sigma**2 / alpha)[:, None, None] * AJAt
        cov = 0.5 * (cov + cov.transpose(1, 2))
        if self.sigma_y > 0:
            cov = cov + self.sigma_y**2 * torch.eye(cov.shape[1], dtype=x.dtype, device=x.device)
        try:
            v = torch.linalg.solve(cov, resid[:, :, None])[:, :, 0]
        except torch.linalg.LinAlgError as e:
            raise ValueError(
                f"the observation's covariance A J A^T is singular at t = {float(t[0]):g}: "
                f"{type(self.operator).__name__} maps some directions to zero (a rank-deficient "
                "operator, such as a blur that cancels a frequency); give sigma_y > 0, the "
                "observation noise, which regularises it"
            ) from e
        return torch.einsum("bm,bmd->bd", v, J).reshape(x.shape)


def inpainting(known: Tensor, mask: Tensor, shape: tuple[int, ...]) -> tuple[Inpaint, Tensor]:
    """`sample`'s known=/mask= as the operator and observation: (Inpaint, y (B, m)).

    known: observed values, broadcastable to `shape` (B, *D), where `mask` (bool, broadcastable
    to `shape`) is True; its other entries are ignored (they may be NaN). A mask the same for
    every example becomes one mask of the example's shape, else a per-example one.
    """
    if not torch.is_tensor(mask) or mask.dtype != torch.bool:
        got = mask.dtype if torch.is_tensor(mask) else type(mask).__name__
        raise ValueError(f"mask must be a bool tensor (True where observed), got {got}")
    if not torch.is_tensor(known):
        raise ValueError(f"known must be a tensor of observed values, got {type(known).__name__}")
    try:
        known = torch.where(mask, known, torch.zeros((), dtype=known.dtype))
    except RuntimeError:
        raise ValueError(
            f"known {tuple(known.shape)} and mask {tuple(mask.shape)} do not broadcast"
        ) from None
    check_tensor_finite("known (observed entries)", known)
    try:
        mask, known = mask.expand(shape), known.expand(shape)
    except RuntimeError:
        raise ValueError(
            f"known and mask (broadcast: {tuple(known.shape)}) do not broadcast to the samples' "
            f"shape {tuple(shape)}"
        ) from None
    flat = mask.reshape(shape[0], -1)
    op = Inpaint(mask[0]) if bool((flat == flat[:1]).all()) else Inpaint(mask, per_example=True)
    return op, op.forward(known)


def observed_model(
    model,
    sde,
    shape: tuple[int, ...],
    *,
    known: Tensor | None = None,
    mask: Tensor | None = None,
    inpaint: str | None = None,
    operator: LinearOperator | None = None,
    y_obs: Tensor | None = None,
    sigma_y: float = 0.0,
    inverse: str | None = None,
    inverse_scale: float | None = None,
    generator: RandomSource = None,
):
    """`model` conditioned on an observation for `sample`: itself when none is given, else
    `Observed`. known=/mask= is the Inpaint operator with y = the known entries (method
    "replace" by default, as before); `inpaint` is the older name of `inverse`."""
    if (known is None) != (mask is None):
        raise ValueError("inpainting needs both known (the observed values) and mask")
    if (operator is None) != (y_obs is None):
        raise ValueError("an inverse problem needs both operator (A) and y_obs (the observation)")
    if inpaint is not None and inverse is not None:
        raise ValueError(f"give inverse={inverse!r} or its old name inpaint={inpaint!r}, not both")
    name = "inpaint method" if inpaint is not None else "inverse method"
    method = inverse if inverse is not None else inpaint
    if method is not None:
        check_choice(name, method, INVERSE_METHODS)
    if known is not None and mask is not None:
        if operator is not None:
            raise ValueError("give known/mask (inpainting) or operator/y_obs, not both")
        operator, y_obs = inpainting(known, mask, shape)
        method = method or DEFAULT_INVERSE["inpaint"]
    elif operator is None:
        unused = {"sigma_y": sigma_y or None, "inverse": method, "inverse_scale": inverse_scale}
        given = [k for k, v in unused.items() if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} given without an observation (operator, y_obs)")
        return model
    assert y_obs is not None
    return Observed(
        model, sde, operator, y_obs, sigma_y=sigma_y, method=method or DEFAULT_INVERSE["operator"],
        scale=inverse_scale, generator=generator, shape=shape, method_name=name,
    )  # fmt: skip
