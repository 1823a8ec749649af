"""FFJORD (Grathwohl et al. 2019): a continuous normalizing flow with a free-form ODE network.

dx/dt = f(x, t) carries data at t = 0 to a standard normal base at t = T, T learnable, and
d log p_t(x_t)/dt = -div f, so log p(x) = log N(z; 0, I) + int_0^T div f(x_t, t) dt, z = x(T).
The solve runs in normalised time s = t / T in [0, 1] with velocity v(x, s) = T f(x, s T), so T
is an ordinary parameter of the dynamics (its gradient comes from backprop or the adjoint alike).
Optional regularisers of Finlay et al. 2020 ("How to train your neural ODE"): the kinetic energy
int_0^1 ||v||^2 ds and the Jacobian Frobenius norm int_0^1 ||dv/dx||_F^2 ds (by probes
||eps^T dv/dx||^2, or exact where the Jacobian is at hand).

Speed: with the exact trace, the network's own Jacobian is propagated forward through its
layers (ODENet.forward_and_jacobian), so one evaluation is a plain forward pass of about dim
times the width, and training backpropagates through first-order operations only; a
replaced `dynamics` falls back to dim vector-Jacobian products (sdegen.divergence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import cast

import torch
import torchdiffeq
from torch import Tensor, nn
from torchdiffeq._impl.rk_common import RKAdaptiveStepsizeODESolver

from ..._ode import SOLVERS, check_ode_settings, landing_options
from ..._utils import batch_times, check_choice, check_finite_number, check_int
from ...divergence import VmapMemo, divergence, probes_like
from ..density import DensityModel

ACTIVATIONS = {"softplus": nn.Softplus, "tanh": nn.Tanh}


def _activation_and_slope(name: str, y: Tensor) -> tuple[Tensor, Tensor]:
    """(a(y), a'(y)) elementwise for an activation of ACTIVATIONS."""
    if name == "tanh":
        a = torch.tanh(y)
        return a, 1.0 - a * a
    return nn.functional.softplus(y), torch.sigmoid(y)  # softplus' = sigmoid


class ConcatSquashLinear(nn.Module):
    """FFJORD's concat-squash layer (Grathwohl et al. 2019): a linear map gated and shifted by
    time, y = (W x + b) * sigmoid(W_g t + b_g) + W_b t; x (B, in), t () or (B,) -> (B, out)."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.hyper_gate = nn.Linear(1, out_features)
        self.hyper_bias = nn.Linear(1, out_features, bias=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        t = batch_times(t, x.shape[0], x).unsqueeze(1)
        return self.linear(x) * torch.sigmoid(self.hyper_gate(t)) + self.hyper_bias(t)

    def forward_and_jacobian(
        self, t: Tensor, x: Tensor, jac: Tensor | None
    ) -> tuple[Tensor, Tensor]:
        """(y, dy/dx0) for x (B, in) with jac = dx/dx0 (B, in, D), or None when x is the input
        itself (jac = I, D = in); t () or (B,). The layer's Jacobian is diag(gate(t)) W, so
        dy/dx0 = gate * (W @ jac): (B, out, D)."""
        tt = t.reshape(1, 1) if t.ndim == 0 else batch_times(t, x.shape[0], x).unsqueeze(1)
        tt = tt.to(x.dtype)
        gate = torch.sigmoid(self.hyper_gate(tt))  # (1 or B, out)
        y = self.linear(x) * gate + self.hyper_bias(tt)
        weight = self.linear.weight  # (out, in)
        if jac is None:
            out = (gate.unsqueeze(-1) * weight).expand(x.shape[0], -1, -1)
        else:
            out = gate.unsqueeze(-1) * torch.matmul(weight, jac)
        return y, out


class ODENet(nn.Module):
    """FFJORD's dynamics network (Grathwohl et al. 2019): concat-squash layers
    dim -> hidden_dims -> dim with an activation between them; f(t, x): x (B, dim) -> (B, dim)."""

    def __init__(self, dim: int, hidden_dims: tuple[int, ...], activation: str) -> None:
        super().__init__()
        widths = (dim, *hidden_dims, dim)
        self.layers = nn.ModuleList(ConcatSquashLinear(a, b) for a, b in zip(widths, widths[1:]))
        self.activation = activation
        self.act = ACTIVATIONS[activation]()

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        for layer in self.layers[:-1]:
            x = self.act(layer(t, x))
        return self.layers[-1](t, x)

    def forward_and_jacobian(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(f(t, x), df/dx): x (B, dim) -> (B, dim), (B, dim, dim) with [b, i, j] = df_i/dx_j;
        t () or (B,).

        The Jacobian is carried through the layers by the chain rule in one forward pass
        (forward mode: diag(gate) W for a layer, diag(a'(y)) for the activation), with no
        autograd inside, so training backpropagates once through ordinary operations instead of
        through dim vector-Jacobian products. Cost per layer: one (out, in) x (in, dim) product
        per example, i.e. about dim times the forward pass.
        """
        layers = [cast(ConcatSquashLinear, layer) for layer in self.layers]
        jac = None
        for layer in layers[:-1]:
            y, jac = layer.forward_and_jacobian(t, x, jac)
            x, slope = _activation_and_slope(self.activation, y)
            jac = slope.unsqueeze(-1) * jac
        return layers[-1].forward_and_jacobian(t, x, jac)

    def forward_and_divergence(self, t: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """(f(t, x), tr df/dx): x (B, dim) -> (B, dim), (B,), exact, from
        `forward_and_jacobian`; t () or (B,)."""
        f, jac = self.forward_and_jacobian(t, x)
        return f, jac.diagonal(dim1=1, dim2=2).sum(-1)


@dataclass(frozen=True)
class FFJORDStats:
    """Cost and regularisers of one FFJORD solve.

    Attributes:
        nfe_forward: calls of the dynamics during the solve (each with its trace VJPs): every
            Runge-Kutta stage, the solver's initial-step probe and rejected steps included.
        kinetic: int_0^1 ||v(x_s, s)||^2 ds per example, shape (B,), v = T f the velocity in
            normalised time; None when not accumulated.
        jacobian_frobenius: int_0^1 ||dv/dx||_F^2 ds per example, shape (B,): exact with the
            exact trace on the model's own network (its forward-mode Jacobian), else
            int_0^1 mean_k ||eps_k^T dv/dx||^2 ds, an unbiased estimate from the probes;
            None when not accumulated.
        nfe_backward (property): calls of the dynamics in the backward pass, read live, so it
            grows when `.backward()` runs after the solve. With adjoint=True these are the
            adjoint solve's evaluations; without, backprop replays the recorded graph and never
            calls the dynamics, so it stays 0.
    """

    nfe_forward: int
    kinetic: Tensor | None
    jacobian_frobenius: Tensor | None
    _counts: dict[str, int] = field(repr=False, compare=False)

    @property
    def nfe_backward(self) -> int:
        return self._counts["backward"]


class FFJORD(DensityModel):
    """FFJORD (Grathwohl et al. 2019) for vectors (B, dim), with learnable integration time and
    the kinetic and Jacobian regularisers of Finlay et al. (2020).

    Args:
        dim: data dimension; an integer >= 1.
        hidden_dims: widths of the ConcatSquashLinear hidden layers; positive integers.
        activation: "softplus" or "tanh".
        T: initial integration time; > 0. Parametrised as softplus(raw_T).
        train_T: learn T (else it is a buffer).
        trace: default divergence: "exact" (dim VJPs per evaluation) or "hutchinson" (one VJP
            per probe, probes drawn once per solve); None = "exact" when dim <= 16.
        rtol, atol, method: default torchdiffeq tolerances and method.
        adjoint: integrate with torchdiffeq.odeint_adjoint (memory O(1) in the steps).
        kinetic_weight, jacobian_weight: weights of the regularisers in `loss`; >= 0.
        options: extra torchdiffeq options (e.g. {"step_size": 0.05} for fixed-grid methods).

    Example:
        >>> import torch
        >>> from sdegen.models import FFJORD
        >>> _ = torch.manual_seed(0)
        >>> flow = FFJORD(2, hidden_dims=(16,))
        >>> lp, stats = flow.log_prob_with_stats(torch.randn(3, 2))
        >>> lp.shape, flow.log_prob_kind  # exact up to the ODE tolerance
        (torch.Size([3]), 'ode')
        >>> stats.nfe_forward > 0
        True
        >>> flow.sample(4, generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4, 2])
    """

    log_prob_kind = "ode"
    has_rsample = True
    needs_parameter_dtype = True

    def __init__(
        self,
        dim: int,
        hidden_dims: tuple[int, ...] = (64, 64),
        activation: str = "softplus",
        *,
        T: float = 1.0,
        train_T: bool = True,
        trace: str | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        method: str = "dopri5",
        adjoint: bool = False,
        kinetic_weight: float = 0.0,
        jacobian_weight: float = 0.0,
        options: dict | None = None,
    ) -> None:
        super().__init__()
        check_int("dim", dim, 1)
        if not isinstance(hidden_dims, (tuple, list)) or not hidden_dims:
            raise ValueError(f"hidden_dims must be a non-empty tuple of ints, got {hidden_dims!r}")
        for h in hidden_dims:
            check_int("every entry of hidden_dims", h, 1)
        check_choice("activation", activation, ACTIVATIONS)
        T = check_finite_number("T", T, positive=True)
        if trace is None:
            trace = "exact" if dim <= 16 else "hutchinson"
        cfg = check_ode_settings(
            trace=trace,
            probes=1,
            noise="rademacher",
            rtol=rtol,
            atol=atol,
            method=method,
            options=options,
        )
        self.trace, self.rtol, self.atol = cfg["trace"], cfg["rtol"], cfg["atol"]
        self.method = cfg["method"]
        self.adjoint = bool(adjoint)
        self.kinetic_weight = check_finite_number(
            "kinetic_weight", kinetic_weight, nonnegative=True
        )
        self.jacobian_weight = check_finite_number(
            "jacobian_weight", jacobian_weight, nonnegative=True
        )
        self.options = dict(options or {})
        self.event_shape = (dim,)
        self.net = ODENet(dim, tuple(hidden_dims), activation)
        raw_T = torch.tensor(T + math.log(-math.expm1(-T)))  # softplus^-1(T)
        if train_T:
            self.raw_T = nn.Parameter(raw_T)
        else:
            self.register_buffer("raw_T", raw_T)
        self.last_stats: FFJORDStats | None = None

    @property
    def T(self) -> Tensor:
        """The integration time softplus(raw_T), a 0-dim tensor."""
        return nn.functional.softplus(self.raw_T)

    def dynamics(self, t: Tensor, x: Tensor) -> Tensor:
        """The velocity f(x, t), t in [0, T] of shape () or (B,), x (B, dim) -> (B, dim)."""
        return self.net(t, x)

    def _own_dynamics(self) -> bool:
        """Whether `dynamics` is this class's network (not replaced on the instance or in a
        subclass), so that its exact trace can come from ODENet.forward_and_divergence."""
        return "dynamics" not in vars(self) and type(self).dynamics is FFJORD.dynamics

    def _settings(
        self, trace=None, probes=1, noise="rademacher", rtol=None, atol=None, method=None
    ) -> dict:
        return check_ode_settings(
            trace=self.trace if trace is None else trace,
            probes=probes,
            noise=noise,
            rtol=self.rtol if rtol is None else rtol,
            atol=self.atol if atol is None else atol,
            method=self.method if method is None else method,
        )

    def _solve(
        self,
        x: Tensor,
        reverse: bool,
        cfg: dict,
        generator: torch.Generator | None,
        logdet: bool = True,
        kinetic: bool = False,
        frobenius: bool = False,
    ) -> tuple[list[Tensor], FFJORDStats]:
        """Integrate (x, [delta_logp, kinetic, frobenius]) over s from 0 to 1 (1 to 0 when
        `reverse`); each accumulator starts at 0 and integrates ds of its integrand. Returns the
        end states in that order, (B, dim) then (B,) each, and the solve's stats."""
        draw = (x, cfg["probes"], cfg["noise"], generator)
        eps = probes_like(*draw) if logdet and cfg["trace"] == "hutchinson" else None
        # The exact trace of the model's own network comes from its forward-mode Jacobian (no
        # autograd), and so does an exact Frobenius norm; replaced dynamics (a subclass, a
        # wrapper) go through `divergence` and the probe estimate.
        net_trace = logdet and eps is None and self._own_dynamics()
        # The Frobenius estimate reuses the trace probes; an exact trace draws its own.
        jac_eps = probes_like(*draw) if frobenius and eps is None and not net_trace else eps
        counts, phase = {"forward": 0, "backward": 0}, "forward"
        memo = VmapMemo()  # what torch.func can do with the dynamics, learned once per solve
        # An adaptive solver's clock runs in the flow's time t = s T, over [0, T] with T detached
        # (each integrand divided by T): the same ODE, but torchdiffeq's initial-step heuristic
        # is not invariant to rescaling time, and in s it picks a step too small (20 evaluations
        # instead of 14 for a fresh 64-64-64 net at T = 0.5). T keeps its gradient through v.
        # Fixed-grid methods keep s, where options such as step_size are given.
        adaptive = issubclass(SOLVERS[cfg["method"]], RKAdaptiveStepsizeODESolver)
        clock = float(self.T.detach()) if adaptive else 1.0

        def func(tau: Tensor, state: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
            counts[phase] += 1
            s = tau / clock
            # Keep the graph whenever gradients are wanted: backprop training, the adjoint's
            # backward pass, or a differentiable sample_and_log_prob.
            create_graph = torch.is_grad_enabled()
            autograd = (logdet or frobenius) and not net_trace
            with torch.set_grad_enabled(create_graph or autograd):
                y = state[0]
                if torch.is_grad_enabled() and not y.requires_grad:
                    y = y.detach().requires_grad_(True)
                T = self.T.to(y.dtype)

                def velocity(u: Tensor) -> Tensor:
                    return T * self.dynamics(s * T, u)

                if net_trace:
                    f, jac = self.net.forward_and_jacobian(s * T, y)
                    jac = T * jac  # dv/dx
                    out = [T * f, jac.diagonal(dim1=1, dim2=2).sum(-1)]
                elif logdet:  # exact trace, or Hutchinson's estimate with the probes eps
                    trace = "exact" if eps is None else "hutchinson"
                    v, div = divergence(
                        velocity, y, trace=trace, probes=eps, create_graph=create_graph, memo=memo
                    )
                    out = [v, div]
                else:
                    out = [velocity(y)]
                v = out[0]
                if kinetic:
                    out.append(v.pow(2).sum(1))
                if frobenius and net_trace:  # exact ||dv/dx||_F^2, the probes' expectation
                    out.append(jac.pow(2).sum((1, 2)))
                elif frobenius:
                    (rows,) = torch.autograd.grad(
                        v, y, jac_eps, is_grads_batched=True, create_graph=create_graph
                    )
                    out.append(rows.pow(2).sum(-1).mean(0))
                if clock != 1.0:  # d/dt = (1 / T) d/ds
                    out = [o / clock for o in out]
            return tuple(out) if create_graph else tuple(o.detach() for o in out)

        y0 = (x,) + (x.new_zeros(x.shape[0]),) * (logdet + kinetic + frobenius)
        ends_ = [clock, 0.0] if reverse else [0.0, clock]
        span = torch.tensor(ends_, dtype=x.dtype, device=x.device)
        # land on the end (and, for the adjoint's backward solve, on span[0])
        options, kwargs = landing_options(cfg["method"], span, self.options), {}
        if "step_t" in options:
            adjoint_options = {k: v for k, v in options.items() if k not in ("norm", "step_t")}
            kwargs = {"adjoint_options": landing_options(cfg["method"], span[:1], adjoint_options)}
        common = dict(rtol=cfg["rtol"], atol=cfg["atol"], method=cfg["method"], options=options)
        try:
            if self.adjoint:
                params = tuple(p for p in self.parameters() if p.requires_grad)
                ys = torchdiffeq.odeint_adjoint(
                    func, y0, span, adjoint_params=params, **common, **kwargs
                )
            else:
                ys = torchdiffeq.odeint(func, y0, span, **common)
        finally:
            phase = "backward"  # later calls come from the adjoint's backward pass
        ends = [y[-1] for y in ys]
        k = 1 + logdet
        stats = FFJORDStats(
            nfe_forward=counts["forward"],
            kinetic=ends[k] if kinetic else None,
            jacobian_frobenius=ends[k + kinetic] if frobenius else None,
            _counts=counts,
        )
        # detached, so that the model stays deep-copyable (EMA, evaluation copies) after a loss
        self.last_stats = replace(
            stats,
            kinetic=None if stats.kinetic is None else stats.kinetic.detach(),
            jacobian_frobenius=(
                None if stats.jacobian_frobenius is None else stats.jacobian_frobenius.detach()
            ),
        )
        return ends, stats

    @staticmethod
    def base_log_prob(z: Tensor) -> Tensor:
        """log N(z; 0, I) of z (B, dim) -> (B,)."""
        return -0.5 * z.pow(2).sum(1) - 0.5 * z.shape[1] * math.log(2 * math.pi)

    def log_prob_with_stats(
        self,
        x: Tensor,
        *,
        trace: str | None = None,
        probes: int = 1,
        noise: str = "rademacher",
        rtol: float | None = None,
        atol: float | None = None,
        method: str | None = None,
        generator: torch.Generator | None = None,
        regularize: bool = True,
    ) -> tuple[Tensor, FFJORDStats]:
        """log p(x) in nats (B,) of x (B, dim) and the solve's FFJORDStats.

        trace, rtol, atol, method: None = the model's defaults. probes, noise ("rademacher" or
        "gaussian"): Hutchinson probes per example, drawn once per solve from `generator` (also
        used for the Frobenius estimate). regularize: accumulate the kinetic energy and the
        Jacobian Frobenius norm (one more VJP per probe and evaluation, or exact and free with
        the exact trace of the model's own network); else they are None.
        Differentiable (in x and every parameter, T included) when grad is enabled.
        """
        self.check_x(x)
        cfg = self._settings(trace, probes, noise, rtol, atol, method)
        (z, delta, *_), stats = self._solve(x, False, cfg, generator, True, regularize, regularize)
        return self.base_log_prob(z) + delta, stats

    def log_prob(
        self,
        x: Tensor,
        *,
        trace: str | None = None,
        probes: int = 1,
        noise: str = "rademacher",
        rtol: float | None = None,
        atol: float | None = None,
        method: str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """log p(x) in nats of x (B, dim) -> (B,): exact up to the ODE tolerance with the exact
        trace, an unbiased estimate with Hutchinson's; see `log_prob_with_stats`."""
        self.check_x(x)
        cfg = self._settings(trace, probes, noise, rtol, atol, method)
        (z, delta), _ = self._solve(x, False, cfg, generator)
        return self.base_log_prob(z) + delta

    def loss(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """NLL + kinetic_weight * kinetic + jacobian_weight * Frobenius, means over the batch x
        (B, dim), with the model's default settings (Hutchinson probes from `generator`)."""
        self.check_x(x)
        kw, jw = self.kinetic_weight, self.jacobian_weight
        (z, delta, *_), stats = self._solve(
            x, False, self._settings(), generator, True, kw > 0, jw > 0
        )
        penalty: Tensor | float = 0.0
        for w, r in ((kw, stats.kinetic), (jw, stats.jacobian_frobenius)):
            if w > 0 and r is not None:  # r is accumulated exactly when its weight is > 0
                penalty = penalty + w * r.mean()
        return -(self.base_log_prob(z) + delta).mean() + penalty

    def _base_sample(self, n: int, generator: torch.Generator | None) -> Tensor:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        p = self.raw_T
        return torch.randn(
            (n, *self.event_shape), generator=generator, dtype=p.dtype, device=p.device
        )

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n samples (n, dim): z ~ N(0, I) drawn with `generator`, integrated from T back to 0."""
        z = self._base_sample(n, generator)
        return self._solve(z, True, self._settings(), None, logdet=False)[0][0]

    def rsample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n reparametrized samples (n, dim): z ~ N(0, I) drawn with `generator` integrated from
        T back to 0 as in `sample` (its values for one seed), differentiable in every parameter
        (T included) by backpropagation through the solver, or by the adjoint if `adjoint`."""
        z = self._base_sample(n, generator)
        return self._solve(z, True, self._settings(), None, logdet=False)[0][0]

    def sample_and_log_prob(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """n samples (n, dim) and their log p (n,) from one solve from T back to 0 carrying
        delta = int_1^0 div v ds = -int_0^1 div v ds, so log p(x) = log N(z) - delta. Model's
        default settings (Hutchinson probes from `generator`); differentiable."""
        z = self._base_sample(n, generator)
        (x, delta), _ = self._solve(z, True, self._settings(), generator)
        return x, self.base_log_prob(z) - delta
