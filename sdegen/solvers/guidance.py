"""Guided and conditional sampling as model wrappers, so every sampler works unchanged.

Solvers call score/denoise/eps(x, t) and know nothing of labels. Each wrapper here binds a
condition and is itself a two-argument score model; `sample(..., y=, guidance=, classifier=,
known=, mask=, operator=)` builds them, and each wrapper call is one (batched) network evaluation.

- `Conditioned`: p_t(x | y), the model called with fixed labels.
- `ClassifierFree`: classifier-free guidance (Ho & Salimans 2022),
  eps = eps_uncond + w (eps_cond - eps_uncond), from one network call on the doubled batch.
- `ClassifierGuided`: classifier guidance (Dhariwal & Nichol 2021; Song et al. 2021, sec. 5),
  score = score + s grad_x log p(y | x_t, t).
- Observations y = A x + sigma_y n (inpainting, super-resolution, ...): `Observed` in
  inverse.py, on this module's `_Wrapper`, by replacement or posterior guidance.

Guidance is applied to the pair (x0, eps). At fixed (x, t) both are affine in each other
(x = alpha x0 + sigma eps), and the score is -eps/sigma, so one affine combination with weights
summing to 1 gives the same guided model in every parametrization and for every SDE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import cast

import torch
from torch import Tensor

from .._utils import append_dims, check_finite_number
from ..models.base import ParametrizedModel
from ..models.labels import NULL_LABEL, check_condition, check_labels, labels_like


def model_x0_eps(model, sde, x: Tensor, t: Tensor, y: Tensor | None) -> tuple[Tensor, Tensor]:
    """(x0, eps) of any score model in one evaluation: its `x0_eps` if it has one, else its
    denoiser and eps = (x - alpha x0) / sigma."""
    if callable(getattr(model, "x0_eps", None)):
        return model.x0_eps(x, t) if y is None else model.x0_eps(x, t, y)
    x0 = model.denoise(x, t) if y is None else model.denoise(x, t, y)
    a, s = append_dims(sde.alpha(t), x.ndim), append_dims(sde.sigma(t), x.ndim)
    return x0, (x - a.to(x.dtype) * x0) / s.to(x.dtype)


class _Wrapper(ParametrizedModel):
    """A score model that wraps `model` and binds its condition: it takes no labels itself."""

    own_batch_factor = 1

    def __init__(self, model, sde) -> None:
        super().__init__(sde)
        self.model = model

    own_nfe_classifier = 0
    own_nfe_backward = 0

    @property
    def batch_factor(self) -> int:
        """Examples passed through the network per example sampled, per evaluation."""
        return self.own_batch_factor * getattr(self.model, "batch_factor", 1)

    @property
    def nfe_classifier(self) -> int:
        """Classifier forward-and-backward passes made by this wrapper and those inside it."""
        return self.own_nfe_classifier + getattr(self.model, "nfe_classifier", 0)

    @property
    def nfe_backward(self) -> int:
        """Vector-Jacobian products of the model taken by this wrapper and those inside it."""
        return self.own_nfe_backward + getattr(self.model, "nfe_backward", 0)

    def x0_eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if y is not None:
            raise ValueError(f"{type(self).__name__} has its labels bound; call it without y")
        return self._x0_eps(x, t)

    def _x0_eps(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


def _bind_labels(y: Tensor, x: Tensor) -> Tensor:
    if y.shape[0] != x.shape[0]:
        raise ValueError(f"labels y have batch {y.shape[0]}, but x has batch {x.shape[0]}")
    return y.to(x.device)


class Conditioned(_Wrapper):
    """The conditional model p_t(x | y): `model` evaluated with the labels y (B,) bound."""

    def __init__(self, model, sde, y: Tensor) -> None:
        super().__init__(model, sde)
        self.y = y

    def _x0_eps(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        return model_x0_eps(self.model, self.sde, x, t, _bind_labels(self.y, x))


class ClassifierFree(_Wrapper):
    """Classifier-free guidance (Ho & Salimans 2022) with weight w, labels y (B,).

    eps = w eps(x, t, y) + (1 - w) eps(x, t, null), and x0 alike: w = 0 is the unconditional
    model, w = 1 the conditional one, w > 1 sharpens towards p(y | x)^(w - 1) p(x | y). The two
    predictions come from one network call on cat([x, x]) with labels cat([y, null]): one NFE on
    a doubled batch (`batch_factor` 2).
    """

    own_batch_factor = 2

    def __init__(self, model, sde, y: Tensor, w: float) -> None:
        super().__init__(model, sde)
        self.y = y
        self.w = check_finite_number("guidance", w)

    def _x0_eps(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        y = _bind_labels(self.y, x)
        b = x.shape[0]
        x0, eps = model_x0_eps(
            self.model,
            self.sde,
            torch.cat([x, x]),
            torch.cat([t, t]),
            torch.cat([y, torch.full_like(y, NULL_LABEL)]),
        )
        w = self.w
        # w c + (1 - w) u rather than u + w (c - u): exactly c at w = 1 and u at w = 0.
        return w * x0[:b] + (1 - w) * x0[b:], w * eps[:b] + (1 - w) * eps[b:]


class ClassifierGuided(_Wrapper):
    """Classifier guidance: score(x, t) + scale * grad_x log p(y | x_t = x, t).

    Args:
        model: the score model (unconditional, or a wrapper that conditions it).
        sde: its SDE.
        classifier: callable (x (B, *D), t (B,)) -> logits or log-probabilities (B, K) of a
            noise-conditional classifier, e.g. `NoiseConditionalClassifier` or the exact
            `GaussianMixtureScore.classifier_log_prob`; a log_softmax is applied either way.
        y: target classes (B,), in [0, K).
        scale: the guidance scale s; s = 1 with an exact classifier and an exact unconditional
            score gives the exact conditional score grad log p_t(x | y).

    In (x0, eps): eps -= s sigma grad and x0 += s (sigma^2 / alpha) grad. The gradient is taken
    with autograd enabled even inside the samplers' no_grad; `nfe_classifier` counts the
    classifier's forward-and-backward passes (`nfe_classifier`).
    """

    def __init__(self, model, sde, classifier: Callable, y: Tensor, scale: float = 1.0) -> None:
        super().__init__(model, sde)
        if not callable(classifier):
            raise TypeError(f"classifier must be callable (x, t) -> logits, got {classifier!r}")
        self.classifier = classifier
        self.y = y
        self.scale = check_finite_number("classifier_scale", scale)
        self.own_nfe_classifier = 0

    def log_prob_grad(self, x: Tensor, t: Tensor) -> Tensor:
        """grad_x log p(y | x_t = x, t), shape (B, *D)."""
        y = _bind_labels(self.y, x)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logits = self.classifier(xg, t)
            if not torch.is_tensor(logits) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                got = tuple(logits.shape) if torch.is_tensor(logits) else type(logits).__name__
                raise ValueError(
                    f"classifier must return logits of shape ({x.shape[0]}, K), got {got}"
                )
            if not logits.requires_grad:
                raise ValueError(
                    "classifier's logits do not depend on x (no gradient): classifier guidance "
                    "needs a classifier differentiable in x"
                )
            check_labels(y, x.shape[0], logits.shape[1], allow_null=False)
            logp = torch.log_softmax(logits, dim=-1).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(logp, xg)
        self.own_nfe_classifier += 1
        return grad.to(x.dtype)

    def _x0_eps(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        x0, eps = model_x0_eps(self.model, self.sde, x, t, None)
        if self.scale == 0:
            return x0, eps
        grad = self.scale * self.log_prob_grad(x, t)
        a = append_dims(self.sde.alpha(t), x.ndim).to(x.dtype)
        s = append_dims(self.sde.sigma(t), x.ndim).to(x.dtype)
        return x0 + (s**2 / a) * grad, eps - s * grad


def guided_model(
    model,
    sde,
    batch: int,
    *,
    y=None,
    guidance: float | None = None,
    classifier: Callable | None = None,
    classifier_scale: float = 1.0,
    device=None,
):
    """The label-conditioned model `sample` integrates: `model` itself when nothing is asked
    for, else the conditioning and guidance wrappers composed in that order (`sample` puts an
    observation's `inverse.Observed` outermost, so the guided model sees a replaced x).

    Labels y (an int for the whole batch, or an int tensor (batch,)) condition a model that has
    `num_classes`. `guidance` = w turns that into classifier-free guidance. A `classifier` adds
    classifier guidance for y at `classifier_scale`; the model is then evaluated unconditionally
    unless `guidance` is also given (to guide a conditional model with a classifier, compose
    `ClassifierGuided(Conditioned(model, sde, y), ...)` directly).
    """
    if y is None:
        if guidance is not None or classifier is not None:
            what = "guidance" if guidance is not None else "classifier"
            raise ValueError(f"{what} needs target labels y")
    else:
        labels = cast(Tensor, labels_like(y, batch, device))  # not None: y is not None
        uses_model_labels = classifier is None or guidance is not None
        classes = getattr(classifier, "num_classes", None)
        if uses_model_labels:
            labels = check_condition(model, labels, batch)
        elif classes is not None:
            labels = check_labels(labels, batch, classes, allow_null=False)
        else:  # the classifier's output width is known at its first call: checked fully there
            if tuple(labels.shape) != (batch,):
                raise ValueError(f"labels y must have shape ({batch},), got {tuple(labels.shape)}")
            if bool((labels < 0).any()):
                raise ValueError(
                    f"classifier guidance needs labels >= 0 (no null label), got {y!r}"
                )
        if guidance is not None:
            if check_finite_number("guidance", guidance) < 0:
                raise ValueError(f"guidance must be >= 0, got {guidance!r}")
            model = ClassifierFree(model, sde, labels, guidance)
        elif classifier is None:
            model = Conditioned(model, sde, labels)
        if classifier is not None:
            model = ClassifierGuided(model, sde, classifier, labels, classifier_scale)
    return model
