"""Exact score models for Gaussian and Gaussian-mixture data, for any linear SDE.

With data sum_k w_k N(mu_k, C_k) and kernel N(alpha x0, sigma^2 I), the marginal at time t is
sum_k w_k N(alpha mu_k, alpha^2 C_k + sigma^2 I). Writing C_k = U_k diag(l_k) U_k^T, the
component covariance is U_k diag(alpha^2 l_k + sigma^2) U_k^T, so log-densities and scores need
no matrix inverse and stay accurate for near-singular C_k. Everything inside runs in float64.

The component index is a class label: p_t(x | y = k) is the k-th diffused component exactly,
NULL_LABEL (-1) is the whole mixture, and the responsibilities p(k | x_t) are the exact
noise-conditional classifier. This gives closed forms for every kind of guided sampling.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._utils import batch_times, check_int
from ..protocols import SDE
from .base import ParametrizedModel, as_float64, check_event_shape, check_model_input, to_x0_eps
from .labels import NULL_LABEL, check_labels


class GaussianMixtureScore(ParametrizedModel):
    """The exact score of sum_k w_k N(mu_k, C_k) diffused by `sde`, with full covariances.

    Args:
        weights: mixture weights, shape (K,), positive (normalised here).
        means: shape (K, D).
        covs: symmetric positive semi-definite, shape (K, D, D).
        sde: any object with alpha(t), sigma(t).
        event_shape: shape of one example, with prod(event_shape) = D (default (D,)), so the
            model can stand in for an image model.

    weights, means and covs may each be a tensor, a NumPy array, or (nested) lists and tuples
    of numbers, arrays or tensors, e.g. covs=[torch.eye(2) * 0.3, torch.eye(2) * 0.5].

    Labels y (B,) in score/denoise/eps/log_prob select component y (NULL_LABEL: the mixture);
    `num_classes` is K.

    Example:
        Two components, weights 0.3 and 0.7; 2000 samples by Heun's method on the PF-ODE land in
        the right proportion:

        >>> import torch
        >>> import sdegen
        >>> sde = sdegen.VPSDE()
        >>> covs = [0.1 * torch.eye(2), 0.2 * torch.eye(2)]
        >>> gmm = sdegen.GaussianMixtureScore([0.3, 0.7], [[-2.0, 0.0], [2.0, 0.0]], covs, sde)
        >>> gmm.num_classes
        2
        >>> r = sdegen.sample(gmm, sde, (2000, 2), method="heun", nfe=40,
        ...                   generator=torch.Generator().manual_seed(0))
        >>> r.nfe, round(float((r.x[:, 0] > 0).double().mean()), 1)
        (40, 0.7)
        >>> gmm.log_prob(r.x[:3], sde.t_min).shape  # the exact log p_t(x), float64
        torch.Size([3])
    """

    # buffers (float64): log w_k (K,), mu_k (K, D), and C_k = U_k diag(l_k) U_k^T as l (K, D),
    # U (K, D, D)
    log_weights: Tensor
    means: Tensor
    evals: Tensor
    evecs: Tensor

    def __init__(
        self, weights, means, covs, sde: SDE, *, event_shape: tuple[int, ...] | None = None
    ) -> None:
        super().__init__(sde)
        w = as_float64("weights", weights)
        mu = as_float64("means", means)
        C = as_float64("covs", covs)
        if w.ndim != 1 or w.numel() < 1:
            raise ValueError(f"weights must have shape (K,), got {tuple(w.shape)}")
        K = w.numel()
        if mu.ndim != 2 or mu.shape[0] != K:
            raise ValueError(f"means must have shape ({K}, D), got {tuple(mu.shape)}")
        D = mu.shape[1]
        if C.shape != (K, D, D):
            raise ValueError(f"covs must have shape ({K}, {D}, {D}), got {tuple(C.shape)}")
        for name, v in (("weights", w), ("means", mu), ("covs", C)):
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"{name} must be finite, got NaN or inf")
        if bool((w <= 0).any()):
            raise ValueError(f"weights must be > 0, got {w.tolist()}")
        if not torch.allclose(C, C.transpose(-1, -2), atol=1e-10 * (1 + float(C.abs().max()))):
            raise ValueError("covs must be symmetric")
        evals, evecs = torch.linalg.eigh(C)
        if bool((evals < -1e-9 * (1 + evals.abs().max())).any()):
            raise ValueError(
                f"covs must be positive semi-definite; smallest eigenvalue {float(evals.min()):.3g}"
            )
        self.event_shape = check_event_shape(event_shape) if event_shape is not None else (D,)
        if math.prod(self.event_shape) != D:
            raise ValueError(f"event_shape {self.event_shape} does not hold D = {D} values")
        self.register_buffer("log_weights", torch.log(w / w.sum()))
        self.register_buffer("means", mu)
        self.register_buffer("evals", evals.clamp_min(0))
        self.register_buffer("evecs", evecs)

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def num_classes(self) -> int:  # type: ignore[override]  # read-only here
        """K: the component index is the class label."""
        return self.means.shape[0]

    def _log_joint(self, logn: Tensor, y: Tensor | None) -> Tensor:
        """log w_k + log N_k (B, K); where y_i is a class, every other component is masked out."""
        logits = self.log_weights + logn
        if y is None:
            return logits
        y = check_labels(y, logn.shape[0], self.num_classes).to(logn.device)
        k = torch.arange(self.num_classes, device=logn.device)
        keep = (y[:, None] == NULL_LABEL) | (k[None, :] == y[:, None])
        return logits.masked_fill(~keep, -math.inf)

    def _flat(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, self.event_shape))})"
                f", got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], self.dim).to(torch.float64)

    def _components(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component log N, rotated residual and variances; shapes (B,K), (B,K,D), (B,K,D)."""
        xf = self._flat(x)
        a = self.sde.alpha(t).to(torch.float64)[:, None, None]
        s = self.sde.sigma(t).to(torch.float64)[:, None, None]
        var = a**2 * self.evals + s**2  # (B, K, D)
        resid = xf[:, None, :] - a * self.means  # (B, K, D)
        y = torch.einsum("kde,bkd->bke", self.evecs, resid)
        logn = -0.5 * (
            (y**2 / var).sum(-1) + torch.log(var).sum(-1) + self.dim * math.log(2 * math.pi)
        )
        return logn, y, var

    def log_prob(self, x: Tensor, t: Tensor | float, y: Tensor | None = None) -> Tensor:
        """log p_t(x) (or log p_t(x | y) given labels y (B,)) in nats; x (B, *D), t (B,) -> (B,),
        float64."""
        check_model_input(x, t)
        t = batch_times(t, x.shape[0], x.to(torch.float64))
        logn, _, _ = self._components(x, t)
        logits = self._log_joint(logn, y)
        if y is not None:  # p(x | y = k) = N_k: drop the prior weight of the kept component
            logits = logits - torch.where(y[:, None] == NULL_LABEL, 0.0, self.log_weights)
        return torch.logsumexp(logits, dim=-1)

    def posterior(self, x: Tensor, t: Tensor | float) -> Tensor:
        """Responsibilities p(k | x_t = x), shape (B, K), float64."""
        return self.classifier_log_prob(x, t).exp()

    def classifier_log_prob(self, x: Tensor, t: Tensor | float) -> Tensor:
        """The exact noise-conditional classifier log p(y = k | x_t = x): log responsibilities of
        shape (B, K), float64, differentiable in x (for classifier guidance)."""
        check_model_input(x, t)
        t = batch_times(t, x.shape[0], x.to(torch.float64))
        logn, _, _ = self._components(x, t)
        return torch.log_softmax(self.log_weights + logn, dim=-1)

    def x0_eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        t64 = t.to(torch.float64)
        logn, resid, var = self._components(x, t64)
        r = torch.softmax(self._log_joint(logn, y), dim=-1)
        # grad log N_k = -U_k (resid_k / var_k), resid_k rotated into U_k's basis; the score is
        # their responsibility-weighted mean (one-hot on y_i where a label is given). One batched
        # matmul per component (torch.einsum of the three operands built a (B, K, D, D)
        # intermediate: 37x slower at B = 1000, D = 64).
        w = (r[:, :, None] * (resid / var)).transpose(0, 1)  # (K, B, D)
        score = -torch.bmm(w, self.evecs.transpose(1, 2)).sum(0)
        x0, eps = to_x0_eps("score", score, self._flat(x), self.sde.alpha(t64), self.sde.sigma(t64))
        return x0.reshape(x.shape).to(x.dtype), eps.reshape(x.shape).to(x.dtype)

    def data_log_prob(self, x: Tensor) -> Tensor:
        """log-density of the undiffused data mixture (needs full-rank covs); (B, *D) -> (B,)."""
        check_model_input(x, 0.0)
        if bool((self.evals <= 0).any()):
            raise ValueError("data_log_prob needs positive definite covs")
        xf = self._flat(x)
        y = torch.einsum("kde,bkd->bke", self.evecs, xf[:, None, :] - self.means)
        logn = -0.5 * (
            (y**2 / self.evals).sum(-1)
            + torch.log(self.evals).sum(-1)
            + self.dim * math.log(2 * math.pi)
        )
        return torch.logsumexp(self.log_weights + logn, dim=-1)

    def sample(
        self,
        n: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
        y: Tensor | None = None,
    ) -> Tensor:
        """Draw n samples of the (undiffused) data mixture, shape (n, *event_shape); given labels
        y (n,), sample i comes from component y_i (from the mixture where y_i = NULL_LABEL)."""
        check_int("n", n)
        dev = self.means.device
        k = torch.multinomial(self.log_weights.exp(), n, replacement=True, generator=generator)
        if y is not None:
            y = check_labels(y, n, self.num_classes).to(dev)
            k = torch.where(y == NULL_LABEL, k, y)
        z = torch.randn(n, self.dim, generator=generator, dtype=torch.float64, device=dev)
        x = self.means[k] + torch.einsum("nde,ne->nd", self.evecs[k], self.evals[k].sqrt() * z)
        return x.reshape(n, *self.event_shape).to(dtype)

    def mean(self) -> Tensor:
        """Mean of the data mixture, shape (D,), float64."""
        return (self.log_weights.exp()[:, None] * self.means).sum(0)

    def cov(self) -> Tensor:
        """Covariance of the data mixture, shape (D, D), float64 (law of total covariance)."""
        w = self.log_weights.exp()
        C = self.evecs @ torch.diag_embed(self.evals) @ self.evecs.transpose(-1, -2)
        d = self.means - self.mean()
        return (w[:, None, None] * (C + d[:, :, None] * d[:, None, :])).sum(0)

    @property
    def data_std(self) -> float | None:  # type: ignore[override]  # read-only here
        """The data's RMS standard deviation sqrt(tr Cov / D), exact: the scale samplers place
        their default grid by (`sdegen.models.data_std`); None for a point mass (no scale)."""
        w = self.log_weights.exp()
        d = self.means - self.mean()
        total = float((w * (self.evals.sum(-1) + (d * d).sum(-1))).sum())
        return math.sqrt(total / self.dim) if total > 0 else None


class GaussianScore(GaussianMixtureScore):
    """The exact score of N(mean, cov) diffused by `sde` (a one-component mixture)."""

    def __init__(self, mean, cov, sde: SDE, *, event_shape: tuple[int, ...] | None = None) -> None:
        mean = as_float64("mean", mean)
        cov = as_float64("cov", cov)
        if mean.ndim != 1:
            raise ValueError(f"mean must have shape (D,), got {tuple(mean.shape)}")
        D = mean.shape[0]
        if cov.shape != (D, D):
            raise ValueError(f"cov must have shape ({D}, {D}), got {tuple(cov.shape)}")
        super().__init__(torch.ones(1), mean[None], cov[None], sde, event_shape=event_shape)


def ring_mixture(
    sde: SDE,
    components: int = 8,
    radius: float = 2.0,
    tangent_var: float = 0.06,
    normal_var: float = 0.01,
) -> GaussianMixtureScore:
    """A 2-D solver test bed: equal-weight Gaussians on a ring, each elongated along the ring.

    The classic "8 gaussians" toy density with anisotropic components, so that a sampler's
    errors in both mode placement and shape show up in the metrics.
    """
    check_int("components", components)
    angle = 2 * math.pi * torch.arange(components, dtype=torch.float64) / components
    normal = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    tangent = torch.stack([-torch.sin(angle), torch.cos(angle)], dim=1)
    covs = (
        tangent_var * tangent[:, :, None] * tangent[:, None, :]
        + normal_var * normal[:, :, None] * normal[:, None, :]
    )
    return GaussianMixtureScore(
        torch.full((components,), 1 / components), radius * normal, covs, sde
    )
