"""Adapters that turn a foreign network into a score model: diffusers, k-diffusion, EDM, score_sde.

Each adapter is a `ParametrizedModel`: it maps (x, t) to the network's own inputs, calls the
network, and converts its output to (x0, eps) through `to_x0_eps`, the one conversion path of
sdegen. What comes out works with every sampler (`sdegen.sample`) and with
`sdegen.log_likelihood`; nothing below this module knows where the network came from.

    diffusers     net(x, timestep)            timestep = N t - 1 on the scheduler's index scale
    k-diffusion   D(x / alpha, sigma / alpha)  a denoiser in VE noise levels (any linear SDE)
    EDM           F(c_in x_ve, c_noise)       Karras et al. 2022, Table 1 preconditioning
    score_sde     s(x, c)                     c = time_scale t or sigma(t); output score or eps

Shared behaviour: the network runs in the dtype of its parameters (its inputs cast to it, its
output cast back), as `ScoreModel` does; class labels y go to the network as the keyword
`label_arg`; `cond` is a dict of keyword arguments bound once and passed to every call. A
per-example condition (a text embedding, as Stable Diffusion's `encoder_hidden_states`) is a
`ConditionTable` value in `cond`: y then holds row indices into it, and NULL_LABEL picks its null
row, so the rows follow the batch wherever it goes (classifier-free guidance's doubled batch,
sampling in batches with per-example y) and guidance needs no other mechanism.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._utils import append_dims, check_choice, check_finite_number, check_int
from ..protocols import SDE
from ..sde.base import LinearSDE
from ..sde.ve import EDMSDE, VESDE
from ..sde.vp import VPSDE, DiscreteBeta
from .base import ParametrizedModel, edm_scalings, to_x0_eps
from .labels import NULL_LABEL, check_labels
from .score_model import parameter_dtype

__all__ = [
    "ConditionTable",
    "ForeignModel",
    "DiffusersModel",
    "from_diffusers",
    "diffusers_betas",
    "KDiffusionModel",
    "EDMModel",
    "ScoreSDEModel",
    "PREDICTION_TYPES",
    "BETA_SCHEDULES",
]

# diffusers' prediction_type -> sdegen's parametrization (v is Salimans & Ho's, n = 1 for VP)
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SCORE_SDE_TIME_INPUTS = ("t", "sigma")


class ConditionTable(nn.Module):
    """Per-example keyword arguments of a foreign network, as a table indexed by the labels y.

    rows: a tensor (K, *S), one condition per row (e.g. K prompts' text embeddings (K, L, W)).
    null: the "no condition" row (*S) (e.g. the empty prompt's embedding, as Stable Diffusion
        guides with), read where y is NULL_LABEL (-1); None: such labels are refused.

    Put it in an adapter's `cond` under the keyword the network takes (`cond={
    "encoder_hidden_states": ConditionTable(emb, null=empty)}`), or one level down in a dict
    value (SDXL's `added_cond_kwargs={"text_embeds": ConditionTable(...), "time_ids": ...}`).
    The model then takes y (B,) in 0..K-1 or NULL_LABEL (y = None: the null row throughout),
    its `num_classes` is K, and each call passes rows[y] (B, *S). Every table of one model has
    the same K, and y is not passed as `label_arg` too. The rows are buffers: they follow the
    model's `.to(device)`; they reach the network in its dtype.
    """

    rows: Tensor
    null: Tensor | None

    def __init__(self, rows: Tensor, null: Tensor | None = None) -> None:
        super().__init__()
        if not torch.is_tensor(rows) or rows.ndim < 1 or rows.shape[0] < 1:
            got = f"shape {tuple(rows.shape)}" if torch.is_tensor(rows) else type(rows).__name__
            raise ValueError(f"rows must be a tensor (K >= 1, ...) of conditions, got {got}")
        if rows.is_floating_point() and not bool(torch.isfinite(rows).all()):
            raise ValueError("rows hold NaN or infinite values")
        if null is not None:
            if not torch.is_tensor(null) or tuple(null.shape) != tuple(rows.shape[1:]):
                got = f"shape {tuple(null.shape)}" if torch.is_tensor(null) else repr(null)
                raise ValueError(f"null must have the shape of one row {tuple(rows.shape[1:])}, "
                                 f"got {got}")  # fmt: skip
            if null.is_floating_point() and not bool(torch.isfinite(null).all()):
                raise ValueError("null holds NaN or infinite values")
        self.register_buffer("rows", rows.detach().clone())
        self.register_buffer("null", None if null is None else null.detach().clone().to(rows))

    def __len__(self) -> int:
        return self.rows.shape[0]

    def forward(self, y: Tensor, null: Tensor | None, dtype: torch.dtype | None) -> Tensor:
        """rows[y] (B, *S), the null row where `null` (B,) is True, in dtype if floating."""
        out = self.rows[y.clamp(min=0)]
        if null is not None:
            if self.null is None:
                raise ValueError("this ConditionTable has no null row (pass null=)")
            out = torch.where(append_dims(null, out.ndim), self.null, out)
        if dtype is not None and out.is_floating_point():
            out = out.to(dtype)
        return out


class ForeignModel(ParametrizedModel):
    """Base of the adapters: calls a foreign network in its own dtype and checks its output.

    Subclasses implement `x0_eps` with `self.call_net(x_in, c_noise, y)`.

    Args:
        net: the network, an nn.Module or any callable.
        sde: the SDE whose alpha, sigma define the conversions.
        cond: keyword arguments passed to every call of `net`: shared values as they are (a
            scale, one embedding for the whole batch), per-example ones as `ConditionTable`s
            indexed by y.
        label_arg: the keyword under which class labels y reach `net` (not used with tables).
        num_classes: the network's number of classes (None: unconditional; y is refused). With
            tables it is their K.
        null_label: the class index the network was trained to read as "no class" (label
            dropout; often num_classes), which sdegen's NULL_LABEL (-1) becomes on the way in,
            so classifier-free guidance works; None: a NULL_LABEL is refused with an error.
            With tables, the tables' null rows serve instead.
    """

    def __init__(
        self,
        net: Callable[..., Any],
        sde: SDE,
        *,
        cond: Mapping[str, Any] | None = None,
        label_arg: str = "class_labels",
        num_classes: int | None = None,
        null_label: int | None = None,
    ) -> None:
        super().__init__(sde)
        if not callable(net):
            raise TypeError(f"net must be callable (an nn.Module), got {type(net).__name__}")
        self.net = net
        if cond is not None and not isinstance(cond, Mapping):
            raise TypeError(f"cond must be a dict of keyword arguments, got {type(cond).__name__}")
        cond = dict(cond or {})
        bad = [k for k in cond if not (isinstance(k, str) and k.isidentifier())]
        if bad:
            raise ValueError(f"cond's keys must be keyword names, got {bad[0]!r}")
        tables: dict[str, ConditionTable] = {}  # "key", or "key/sub" inside a dict value
        for key, value in list(cond.items()):
            if isinstance(value, ConditionTable):
                tables[key] = cond.pop(key)
            elif isinstance(value, Mapping):  # e.g. SDXL's added_cond_kwargs
                inner = {s: v for s, v in value.items() if isinstance(v, ConditionTable)}
                tables.update({f"{key}/{s}": v for s, v in inner.items()})
                if inner:
                    cond[key] = {s: v for s, v in value.items() if s not in inner}
        self.cond = cond
        self.tables = nn.ModuleDict(tables)
        if not isinstance(label_arg, str) or not label_arg.isidentifier():
            raise ValueError(f"label_arg must be a keyword name, got {label_arg!r}")
        self.label_arg = label_arg
        self.num_classes = None if num_classes is None else check_int("num_classes", num_classes)
        self.null_label = None if null_label is None else check_int("null_label", null_label, 0)
        n, null = self.num_classes, self.null_label
        if n is not None and null is not None and null > n:
            raise ValueError(
                f"null_label must be in 0..num_classes = {self.num_classes} (the network's "
                f"index for no class, often num_classes itself), got {null_label!r}"
            )
        if tables:
            sizes = {k: len(v) for k, v in tables.items()}
            if len(set(sizes.values())) > 1:
                raise ValueError(
                    f"every ConditionTable in cond must have the same rows, got {sizes}"
                )
            k_rows = next(iter(sizes.values()))
            if self.num_classes not in (None, k_rows) or self.null_label is not None:
                raise ValueError(
                    f"with ConditionTables in cond, y indexes their {k_rows} rows and NULL_LABEL "
                    f"their null rows: leave num_classes and null_label unset, got "
                    f"num_classes={num_classes!r}, null_label={null_label!r}"
                )
            self.num_classes = k_rows

    def net_dtype(self) -> torch.dtype | None:
        """The dtype the network runs in: its parameters'; None (x's) without parameters."""
        return parameter_dtype(self.net) if isinstance(self.net, nn.Module) else None

    def call_net(self, x_in: Tensor, c_noise: Tensor, y: Tensor | None = None) -> Tensor:
        """net(x_in, c_noise, **cond[, label_arg=y]) in the network's dtype, as a tensor of
        x_in's shape and dtype. `.sample` of a returned object (diffusers) is taken."""
        dtype = self.net_dtype()
        kwargs = dict(self.cond)
        if self.tables and y is None:
            if not all(t.null is not None for t in self.tables.values()):
                raise ValueError(
                    f"this model takes y, indices ({x_in.shape[0]},) into its ConditionTables "
                    f"of {self.num_classes} rows (y = None, unconditional, needs their null rows)"
                )
            # y = None is the null condition throughout, as for sdegen's own networks
            y = torch.full((x_in.shape[0],), NULL_LABEL, dtype=torch.long, device=x_in.device)
        if y is not None:
            y = check_labels(y, x_in.shape[0], self.num_classes)
            null = y == NULL_LABEL
            if self.tables:
                has_null = all(t.null is not None for t in self.tables.values())
                fix = "give every ConditionTable a null row: ConditionTable(rows, null=...)"
            else:
                has_null = self.null_label is not None
                fix = "pass null_label=<the index it was trained with for no class>"
            message = (
                "labels hold NULL_LABEL (-1: unconditional, as classifier-free guidance "
                f"asks), but this adapter knows no null condition of the network: {fix}"
            )
            if not has_null:
                if y.device.type != "cpu":
                    # bool() would wait for the device at every call: assert there instead
                    torch._assert_async(~null.any(), message)
                elif bool(null.any()):
                    raise ValueError(message)
            if self.tables:
                for path, table in self.tables.items():
                    rows = table(y, null if has_null else None, dtype)
                    key, _, sub = path.partition("/")
                    kwargs[key] = {**kwargs[key], sub: rows} if sub else rows
            else:
                if self.null_label is not None:
                    y = torch.where(null, self.null_label, y)
                kwargs[self.label_arg] = y
        x_net = x_in if dtype is None else x_in.to(dtype)
        if dtype is not None and c_noise.is_floating_point():
            # half-precision noise levels lose the timestep (999.5 -> 1000): keep >= float32
            wide = dtype in (torch.float32, torch.float64)
            c_noise = c_noise.to(dtype if wide else torch.float32)
        try:
            out = self.net(x_net, c_noise, **kwargs)
        except Exception as e:
            flat = {
                f"{k}/{s}" if isinstance(v, Mapping) else k: w
                for k, v in self.cond.items()
                for s, w in (v.items() if isinstance(v, Mapping) else [("", v)])
            }
            sizes = {
                k: int(v.shape[0])
                for k, v in flat.items()
                if torch.is_tensor(v) and v.ndim and v.shape[0] not in (1, x_in.shape[0])
            }
            if not sizes:
                raise
            raise ValueError(
                f"the network failed on {x_in.shape[0]} examples, and cond holds tensors of "
                f"another batch size {sizes} (classifier-free guidance doubles the batch; a "
                f"cond value is passed unchanged to every call): pass per-example conditions "
                f"as cond={{key: ConditionTable(rows, null=...)}} and pick rows with y"
            ) from e
        out = getattr(out, "sample", out)
        if not torch.is_tensor(out):
            raise TypeError(
                f"net must return a tensor or an object with a .sample tensor, got "
                f"{type(out).__name__}"
            )
        out = self.check_output(out, x_in)
        return out if out.dtype == x_in.dtype else out.to(x_in.dtype)

    def check_output(self, out: Tensor, x: Tensor) -> Tensor:
        if out.shape != x.shape:
            raise ValueError(
                f"net must return the shape of x {tuple(x.shape)}, got {tuple(out.shape)}"
            )
        return out


class DiffusersModel(ForeignModel):
    """A diffusers noise-prediction network (e.g. `UNet2DModel`) on its discrete VP schedule.

    The SDE is `VPSDE.from_betas(betas)`: time t = (i + 1)/N carries DDPM's q(x_i | x0) for the
    0-based timestep i, so the network is called as net(x, timestep) with the continuous
    timestep = sde.timestep(t) = N t - 1 (x unscaled, as diffusers feeds it). Its output is
    read per `prediction_type`: "epsilon", "v_prediction" or "sample". A network with learned
    variance (2C output channels) has its variance half dropped. The scheduler's thresholding
    and clip_sample are sampler choices and are not applied.

    Build one with `from_diffusers(net, scheduler_config)`.
    """

    def __init__(
        self,
        net: Callable[..., Any],
        sde: VPSDE,
        prediction_type: str = "epsilon",
        *,
        learned_variance: bool = False,
        cond: Mapping[str, Any] | None = None,
        label_arg: str = "class_labels",
        num_classes: int | None = None,
        null_label: int | None = None,
    ) -> None:
        super().__init__(
            net,
            sde,
            cond=cond,
            label_arg=label_arg,
            num_classes=num_classes,
            null_label=null_label,
        )
        check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
        if not isinstance(getattr(sde, "schedule", None), DiscreteBeta):
            raise TypeError(
                f"sde must be a discrete VPSDE, VPSDE.from_betas(betas) (from_diffusers builds "
                f"it), got {sde!r}"
            )
        self.prediction_type = prediction_type
        self.parametrization = PREDICTION_TYPES[prediction_type]
        self.learned_variance = bool(learned_variance)

    @property
    def num_train_timesteps(self) -> int:
        return int(self.sde.schedule.N)  # type: ignore[attr-defined]

    def times(self, timesteps: Tensor | np.ndarray | list[int]) -> Tensor:
        """The SDE times t = (i + 1)/N of the scheduler's timesteps i; float64, same shape.

        `sample(..., schedule=model.times(scheduler.timesteps))` runs sdegen's solvers on the
        scheduler's grid (which must then run from sde.T to sde.t_min; see `from_diffusers`).
        """
        if torch.is_tensor(timesteps):
            i = timesteps.detach().to("cpu", torch.float64)
        else:
            i = torch.as_tensor(np.asarray(timesteps, dtype=np.float64))
        return (i + 1) / self.num_train_timesteps

    def check_output(self, out: Tensor, x: Tensor) -> Tensor:
        if self.learned_variance and out.ndim == x.ndim and out.shape[1] == 2 * x.shape[1]:
            out = out[:, : x.shape[1]]  # the mean half; diffusers' schedulers split it so
        return super().check_output(out, x)

    def x0_eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        out = self.call_net(x, self.sde.timestep(t), y)  # type: ignore[attr-defined]
        return to_x0_eps(self.parametrization, out, x, alpha, sigma)


def diffusers_betas(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
) -> Tensor:
    """The betas of a diffusers scheduler, float64, as diffusers makes them (in float32).

    "linear": linspace(beta_start, beta_end, N); "scaled_linear": linspace of the square
    roots, squared (Stable Diffusion); "squaredcos_cap_v2": Nichol & Dhariwal's cosine
    alpha_bar (s = 0.008), betas clipped at 0.999.
    """
    check_choice("beta_schedule", beta_schedule, BETA_SCHEDULES)
    n = check_int("num_train_timesteps", num_train_timesteps, 2)
    if beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, n, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float32) ** 2
    else:

        def alpha_bar(u: float) -> float:
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = torch.tensor(
            [min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
            dtype=torch.float32,
        )
    return betas.to(torch.float64)


def from_diffusers(
    net: Callable[..., Any],
    scheduler_config: Mapping[str, Any] | Any,
    *,
    t_min: float | None = None,
    T: float | None = None,
    cond: Mapping[str, Any] | None = None,
    label_arg: str = "class_labels",
    num_classes: int | None = None,
    null_label: int | None = None,
) -> tuple[DiffusersModel, VPSDE]:
    """A diffusers network and its scheduler config as (score model, SDE).

    Args:
        net: e.g. a `UNet2DModel`; any module called as net(x, timestep[, class_labels=y])
            returning a tensor or an object with `.sample`.
        scheduler_config: a dict, or a scheduler's `.config` (or the scheduler), with
            prediction_type ("epsilon", "v_prediction", "sample"), beta_schedule ("linear",
            "scaled_linear", "squaredcos_cap_v2"), beta_start, beta_end, num_train_timesteps,
            optionally trained_betas and variance_type.
        t_min, T: the SDE's interval (defaults: timestep 0 and N - 1, t = 1/N and 1);
            `model.times(timesteps)` gives the time of a timestep.
        cond, label_arg, num_classes: as `ForeignModel` (num_classes defaults to the
            network's config.num_class_embeds).
    Returns:
        (model, sde): a `DiffusersModel` and its `VPSDE.from_betas(betas)`.
    Raises:
        ValueError naming an unknown prediction_type or beta_schedule with the accepted ones,
        and rescale_betas_zero_snr (alpha_bar = 0 at the last step has no Gaussian prior).
    """
    config = getattr(scheduler_config, "config", scheduler_config)
    if not isinstance(config, Mapping):
        raise TypeError(
            "scheduler_config must be a dict or a diffusers scheduler's .config, got "
            f"{type(scheduler_config).__name__}"
        )
    prediction_type = config.get("prediction_type", "epsilon")
    check_choice("prediction_type", prediction_type, PREDICTION_TYPES)
    if config.get("rescale_betas_zero_snr", False):
        raise ValueError(
            "rescale_betas_zero_snr=True gives alpha_bar = 0 at the last timestep, which no "
            "VP SDE with a Gaussian prior reaches; use a config without it"
        )
    if config.get("trained_betas") is not None:
        betas = torch.as_tensor(np.asarray(config["trained_betas"], dtype=np.float64))
    else:
        betas = diffusers_betas(
            config.get("beta_schedule", "linear"),
            config.get("num_train_timesteps", 1000),
            config.get("beta_start", 1e-4),
            config.get("beta_end", 0.02),
        )
    sde = VPSDE.from_betas(betas, t_min=t_min, T=T)
    if num_classes is None:
        num_classes = getattr(getattr(net, "config", None), "num_class_embeds", None)
    learned = config.get("variance_type") in ("learned", "learned_range")
    model = DiffusersModel(
        net, sde, prediction_type, learned_variance=learned, cond=cond,
        label_arg=label_arg, num_classes=num_classes, null_label=null_label,
    )  # fmt: skip
    return model, sde


def unit_alpha(sde: SDE) -> bool:
    """Whether sde's alpha(t) is 1 by construction: a VESDE or EDMSDE whose alpha is the class's
    own. Dividing by alpha is then exact, so an adapter may skip it (and its broadcast)."""
    alpha = getattr(type(sde), "_alpha", None)
    return (
        isinstance(sde, (VESDE, EDMSDE))
        and alpha in (VESDE._alpha, EDMSDE._alpha)
        and type(sde).alpha is LinearSDE.alpha
    )


class KDiffusionModel(ForeignModel):
    """A k-diffusion-style denoiser D(x, sigma) -> x0 in VE noise levels, for any linear SDE.

    With x_t = alpha x0 + sigma eps, x_t / alpha = x0 + (sigma/alpha) eps is the VE process at
    noise level sigma/alpha, so denoise(x, t) = D(x / alpha(t), sigma(t) / alpha(t)). For
    VESDE and EDMSDE (alpha = 1) that is D(x, sigma(t)). sigma reaches D with shape (B,).

    Args:
        denoiser: D(x, sigma[, **cond]) -> x0 estimate, shape (B, *D); e.g. a k-diffusion
            `VDenoiser`/`Denoiser` or an EDM `EDMPrecond`.
        sde: the SDE to sample in; its sigma(t)/alpha(t) should cover the denoiser's range
            (e.g. `EDMSDE(0.002, 80)`).
        cond, label_arg, num_classes: as `ForeignModel`.
    """

    parametrization = "x0"

    def x0_only(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        sigma = self.sde.sigma(t)
        if unit_alpha(self.sde):  # x / 1 and sigma / 1 are x and sigma, bit for bit
            return self.call_net(x, sigma, y)
        alpha = self.sde.alpha(t)
        return self.call_net(x / append_dims(alpha, x.ndim), sigma / alpha, y)

    def x0_eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x0, sigma = self.x0_only(x, t, y), self.sde.sigma(t)
        if unit_alpha(self.sde):  # to_x0_eps's eps = (x - alpha x0) / sigma, and 1 x0 is x0
            return x0, (x - x0) / append_dims(sigma, x.ndim)
        return to_x0_eps(self.parametrization, x0, x, self.sde.alpha(t), sigma)


class EDMModel(ForeignModel):
    """An EDM raw network F with Karras et al.'s preconditioning (2022, Table 1), any linear SDE.

    In VE terms (x_ve = x / alpha, s = sigma / alpha):
        D(x_ve, s) = c_skip x_ve + c_out F(c_in x_ve, c_noise),
        c_skip = sd^2 / (s^2 + sd^2), c_out = s sd / sqrt(s^2 + sd^2),
        c_in = 1 / sqrt(s^2 + sd^2), c_noise = log(s) / 4, sd = sigma_data.
    The preconditioning runs in x's dtype, only F in its own.

    Args:
        net: F(x_in, c_noise[, **cond]) of shape (B, *D); c_noise of shape (B,).
        sde: the SDE to sample in, e.g. `EDMSDE()`.
        sigma_data: the data std of EDM's training (0.5 for their images).
        cond, label_arg, num_classes: as `ForeignModel`.
    """

    parametrization = "x0"

    def __init__(
        self,
        net: Callable[..., Any],
        sde: SDE,
        *,
        sigma_data: float = 0.5,
        cond: Mapping[str, Any] | None = None,
        label_arg: str = "class_labels",
        num_classes: int | None = None,
        null_label: int | None = None,
    ) -> None:
        super().__init__(
            net,
            sde,
            cond=cond,
            label_arg=label_arg,
            num_classes=num_classes,
            null_label=null_label,
        )
        self.sigma_data = check_finite_number("sigma_data", sigma_data, positive=True)

    def x0_only(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> Tensor:
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        s, c_skip, c_out, c_in = edm_scalings(alpha, sigma, self.sigma_data)
        x_ve = x / append_dims(alpha, x.ndim)
        f = self.call_net(append_dims(c_in, x.ndim) * x_ve, s.log() / 4, y)
        return append_dims(c_skip, x.ndim) * x_ve + append_dims(c_out, x.ndim) * f

    def x0_eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x0 = self.x0_only(x, t, y)
        return to_x0_eps(self.parametrization, x0, x, self.sde.alpha(t), self.sde.sigma(t))


class ScoreSDEModel(ForeignModel):
    """A score_sde-style network s(x, c) (Song et al. 2021, score_sde_pytorch).

    The network sees x unscaled and the noise-level input c = time_scale * t (time_input "t":
    score_sde's VP/sub-VP networks take t * 999, their DDPM-trained ones t * (N - 1); use
    time_scale=1 for t in [0, 1]) or c = sigma(t) (time_input "sigma": NCSN++ on VE, continuous
    training), or a callable t -> c. Its output is the score ("score", score_sde's VE models)
    or the noise ("eps": score_sde's VP and sub-VP models, whose score is -output/std).

    Args:
        net: s(x, c[, **cond]) of shape (B, *D); c of shape (B,).
        sde: the SDE it was trained with, e.g. `VPSDE()` (beta 0.1..20) or `VESDE(0.01, 50)`.
        parametrization: "score" or "eps" (any of PARAMETRIZATIONS).
        time_input, time_scale: as above.
        cond, label_arg, num_classes: as `ForeignModel`.
    """

    def __init__(
        self,
        net: Callable[..., Any],
        sde: SDE,
        parametrization: str = "score",
        *,
        time_input: str | Callable[[Tensor], Tensor] = "t",
        time_scale: float = 999.0,
        cond: Mapping[str, Any] | None = None,
        label_arg: str = "class_labels",
        num_classes: int | None = None,
        null_label: int | None = None,
    ) -> None:
        super().__init__(
            net,
            sde,
            cond=cond,
            label_arg=label_arg,
            num_classes=num_classes,
            null_label=null_label,
        )
        check_choice("parametrization", parametrization, ("eps", "x0", "v", "score"))
        self.parametrization = parametrization
        if isinstance(time_input, str):
            check_choice("time_input", time_input, SCORE_SDE_TIME_INPUTS)
        elif not callable(time_input):
            raise TypeError(f"time_input must be 't', 'sigma' or a callable, got {time_input!r}")
        self.time_input = time_input
        self.time_scale = check_finite_number("time_scale", time_scale, positive=True)

    def c_noise(self, t: Tensor) -> Tensor:
        """The network's noise-level input at times t (B,)."""
        if callable(self.time_input):
            c = self.time_input(t)
            if not torch.is_tensor(c) or c.shape != t.shape:
                got = tuple(c.shape) if torch.is_tensor(c) else type(c).__name__
                raise ValueError(
                    f"time_input(t) must return a tensor of t's shape {tuple(t.shape)}, got {got}"
                )
            return c
        if self.time_input == "sigma":
            return self.sde.sigma(t)
        return self.time_scale * t

    def x0_eps(self, x: Tensor, t: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor]:
        alpha, sigma = self.sde.alpha(t), self.sde.sigma(t)
        out = self.call_net(x, self.c_noise(t), y)
        return to_x0_eps(self.parametrization, out, x, alpha, sigma)
