"""Run configuration: one dataclass, loaded from YAML or TOML, with KEY=VALUE overrides.

The resolved configuration is saved beside the checkpoints (config.json), so `sample` and
`likelihood` need only the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..models.base import MODEL_PARAMETRIZATIONS
from ..training.losses import P_MEAN, P_STD, SIGMA_DATA, TIME_SAMPLINGS, WEIGHTINGS
from .tables import DATA_KINDS, LATENT_KINDS, SDES

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]


# training objectives of a run: denoising score matching, or DDPM's variational bound, or
# sliced score matching (ssm_vr: its variance-reduced form)
OBJECTIVES = ("dsm", "vlb", "ssm", "ssm_vr")

# recipe: "auto" trains each SDE by its best-known recipe, "shared" every SDE by the same keys
RECIPES = ("auto", "shared")
# The keys a recipe decides (parametrization, weighting, time_sampling) where a config leaves
# them "auto": the shared defaults, and EDM's preconditioning, loss weighting and log-normal
# noise levels (Karras et al. 2022, Table 1).
SHARED_RECIPE = {"parametrization": "v", "weighting": "simple", "time_sampling": "continuous"}
EDM_RECIPE = {"parametrization": "edm", "weighting": "edm", "time_sampling": "lognormal"}
# Data kinds of images, where EDM's recipe is the best-known one for every SDE it was made for:
# Karras et al. 2022 (Table 2) improve VP and VE with it on CIFAR-10, and on the digits it gives
# vp, subvp, ve and edm FIDs of 15-17, within 1.04x of each other, against 17-23 for VP, sub-VP
# and VE with the shared keys and 67-71 for EDM, and 1.95-1.96 bits/dim against 2.04-2.35
# (benchmarks/results/recipe_3000). On 2-D toy data it is worse for VP (8 Gaussians: test NLL
# 3.25 against 3.10 nats, benchmarks/results/recipe_toy), so vectors keep the shared keys,
# except the EDM SDE, whose schedule is made for its recipe (there: NLL 3.25 against 3.35, but
# sliced W2 0.29 against 0.23).
IMAGE_DATA = ("digits", "mnist", "cifar10")
EDM_RECIPE_SDES_ON_IMAGES = ("vp", "subvp", "ve", "edm")


def recipe_keys(sde: Any, data: Any, objective: Any, latent: Any, recipe: Any) -> dict[str, str]:
    """The recipe keys of a run: EDM's (EDM_RECIPE) when recipe is "auto", the run is denoising
    score matching in data space (objective dsm, no latent) and the SDE is edm, or one of
    vp, subvp, ve on image data (IMAGE_DATA); the shared ones (SHARED_RECIPE) otherwise.

    >>> recipe_keys("vp", "toy:8gaussians", "dsm", "none", "auto")["parametrization"]
    'v'
    >>> recipe_keys("vp", "digits", "dsm", "none", "auto")["parametrization"]
    'edm'
    """
    if recipe == "auto" and objective == "dsm" and latent == "none" and isinstance(sde, str):
        image = isinstance(data, str) and data.partition(":")[0] in IMAGE_DATA
        if sde == "edm" or (image and sde in EDM_RECIPE_SDES_ON_IMAGES):
            return EDM_RECIPE
    return SHARED_RECIPE


def _key(default, help: str, **kw):
    """A config field with its one-line description (shown by `sdegen train --help`)."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class TrainConfig:
    """Everything that defines a training run. Names are resolved by the tables of
    sdegen.assembly (SDES, NETWORKS, DATA)."""

    data: str = _key("toy:8gaussians", " | ".join(DATA_KINDS))
    n_train: int = _key(20000, "examples drawn for toy data sets")
    sde: str = _key("vp", " | ".join(SDES))
    sde_params: dict = _key({}, "keyword arguments of the SDE, e.g. {beta_max: 10}")
    parametrization: str = _key(
        "auto",
        "auto | eps | x0 | v | score | mu | edm (auto: the recipe's, edm for sde edm and for "
        "vp/subvp/ve on images, else v; mu: sde ddpm; edm: EDM's preconditioning)",
    )
    network: str = _key("auto", "mlp | unet | dit | auto (mlp for vectors, unet for images)")
    network_params: dict = _key({}, "keyword arguments of the network, e.g. {hidden: 64}")
    weighting: str = _key(
        "auto",
        "auto | simple | sigma2 | likelihood | edm (DSM loss weighting; auto: the recipe's, "
        "edm where recipe auto picks EDM's, else simple)",
    )
    objective: str = _key(
        "dsm",
        "dsm | vlb | ssm | ssm_vr (vlb: DDPM's discrete bound in bits/dim, needs sde ddpm; "
        "ssm: sliced score matching)",
    )
    time_sampling: str = _key(
        "auto",
        "auto | continuous | discrete | lognormal (auto: the recipe's, lognormal where recipe "
        "auto picks EDM's, else continuous; discrete: DDPM's integer steps, needs sde ddpm; "
        "lognormal: EDM's noise levels)",
    )
    recipe: str = _key(
        "auto",
        "auto | shared (what the keys left auto become: auto: EDM's recipe for sde edm, and for "
        "vp/subvp/ve on image data, else v/simple/continuous; shared: v/simple/continuous)",
    )
    sigma_data: float | None = _key(
        None, "data std of EDM's preconditioning and weighting (> 0); null: 0.5 with edm, else 1"
    )
    p_mean: float = _key(P_MEAN, "mean of ln(sigma/alpha) of time_sampling lognormal")
    p_std: float = _key(P_STD, "std of ln(sigma/alpha) of time_sampling lognormal (> 0)")
    conditional: bool = _key(False, "class-conditional network (labelled data, e.g. digits)")
    p_uncond: float = _key(0.1, "label (caption) dropout of a conditional run, in [0, 1]")
    text: bool = _key(False, "text-conditional on generated captions (digits, mnist; unet)")
    latent: str = _key("none", "none | kl | vq: diffuse in a trained autoencoder's latents")
    latent_params: dict = _key({}, "keyword arguments of the autoencoder, e.g. {hidden: 16}")
    latent_steps: int = _key(1000, "training steps of the autoencoder of a latent run (>= 1)")
    learned_variance: bool = _key(
        False, "learn the reverse variance with L_hybrid (Improved DDPM); a from_betas sde"
    )
    steps: int = _key(2000, "optimisation steps in all (>= 1)")
    batch_size: int = _key(256, "global batch size (>= 1)")
    lr: float = _key(2e-3, "AdamW learning rate (> 0)")
    warmup: int = _key(100, "steps of linear learning-rate warm-up (>= 0)")
    grad_clip: float | None = _key(1.0, "max gradient norm (> 0), or null for none")
    ema_decay: float | None = _key(0.999, "EMA decay in [0, 1), or null for no EMA")
    seed: int = _key(0, "seed of weights, batches and noise")
    device: str = _key("auto", "auto (cuda if available, else cpu) | cpu | cuda | cuda:N")
    ckpt_every: int = _key(500, "steps between checkpoints (0: only at the end)")
    log_every: int = _key(50, "steps between lines of metrics.jsonl (>= 1)")
    eval_every: int = _key(0, "steps between held-out loss evaluations (0: none)")

    def __post_init__(self) -> None:
        # the keys left "auto" become the recipe's, so a TrainConfig built in Python, one from a
        # file and the config.json of its run folder all hold the resolved values
        keys = recipe_keys(self.sde, self.data, self.objective, self.latent, self.recipe)
        for name, value in keys.items():
            if getattr(self, name) == "auto":
                setattr(self, name, value)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def describe_keys() -> str:
    """One line per config key: name, type, default and meaning."""
    fields = dataclasses.fields(TrainConfig)
    width = max(len(f.name) for f in fields) + 2  # the longest name still has a space after it
    lines = []
    for f in fields:
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        lines.append(
            f"  {f.name:<{width}}{f.type!s:<14}{json.dumps(default):<18}"
            f"{f.metadata.get('help', '')}"
        )
    return "\n".join(lines)


def _parse_value(key: str, text: str) -> Any:
    # YAML scalars: 1e-3 -> float, true -> bool, null -> None, {a: 1} -> dict, else a string
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(
            f"--set {key}={text}: cannot parse the value as YAML ({problem})"
        ) from None


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = ()) -> TrainConfig:
    """A TrainConfig from a YAML/TOML file (optional) with KEY=VALUE overrides applied last."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            raise ValueError(f"config file {path} is not UTF-8 text") from None
        try:
            if path.suffix == ".toml":
                values = tomllib.loads(text)
            elif path.suffix in (".yaml", ".yml", ".json"):
                values = yaml.safe_load(text) or {}
            else:
                raise ValueError(f"config file {path} must end in .yaml, .yml, .toml or .json")
        except (yaml.YAMLError, tomllib.TOMLDecodeError) as e:
            raise ValueError(f"cannot parse config file {path}: {e}") from None
        if not isinstance(values, dict):
            raise ValueError(f"config file {path} must hold a mapping of keys to values")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override {item!r} must look like KEY=VALUE")
        values[key.strip()] = _parse_value(key.strip(), value)
    return from_dict(values)


def _as_number(value: Any, annotation: str) -> Any:
    """A numeric string as the number a numeric key expects (PyYAML reads 1e-4 as a string, per
    YAML 1.1); anything else unchanged, for the type check to report with the key's name."""
    if not isinstance(value, str) or annotation not in ("int", "float", "float | None"):
        return value
    convert = int if annotation == "int" else float
    try:
        return convert(value)
    except ValueError:
        return value


def run_sigma_data(cfg: TrainConfig) -> float:
    """The data std of a run's model and loss: cfg.sigma_data, or when null EDM's 0.5 if the
    parametrization or the weighting is "edm", else 1 (the input scaling of every other run)."""
    if cfg.sigma_data is not None:
        return float(cfg.sigma_data)
    return SIGMA_DATA if "edm" in (cfg.parametrization, cfg.weighting) else 1.0


def from_dict(values: dict) -> TrainConfig:
    """A TrainConfig from a mapping, rejecting unknown keys and values of the wrong type; the
    recipe keys not given are the recipe's (`recipe_keys`)."""
    known = {f.name: f for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(unknown)}; valid keys: {', '.join(known)}"
        )
    # the annotations are strings (from __future__ import annotations)
    values = {name: _as_number(v, str(known[name].type)) for name, v in values.items()}
    cfg = TrainConfig(**values)
    for name, f in known.items():
        v = getattr(cfg, name)
        expected = f.type if isinstance(f.type, str) else f.type.__name__
        ok = {
            "int": isinstance(v, int) and not isinstance(v, bool),
            "float": isinstance(v, (int, float)) and not isinstance(v, bool),
            "str": isinstance(v, str),
            "bool": isinstance(v, bool),
            "dict": isinstance(v, dict),
            "float | None": v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)),
        }[expected]
        if not ok:
            raise ValueError(f"config key {name} must be {expected}, got {v!r}")
    for name, choices in (
        ("objective", OBJECTIVES),
        ("time_sampling", ("auto", *TIME_SAMPLINGS)),
        ("parametrization", ("auto", *MODEL_PARAMETRIZATIONS)),
        ("weighting", ("auto", *WEIGHTINGS)),
        ("recipe", RECIPES),
    ):
        if getattr(cfg, name) not in choices:
            raise ValueError(
                f"config key {name} must be one of {', '.join(choices)}, got {getattr(cfg, name)!r}"
            )
    for name in ("sigma_data", "p_mean", "p_std"):
        v = getattr(cfg, name)
        if v is not None and (not math.isfinite(v) or (name != "p_mean" and v <= 0)):
            want = "a finite number" if name == "p_mean" else "a finite number > 0"
            raise ValueError(f"config key {name} must be {want}, got {v!r}")
    if not 0.0 <= cfg.p_uncond <= 1.0:
        raise ValueError(f"config key p_uncond must be in [0, 1], got {cfg.p_uncond!r}")
    if cfg.objective in ("ssm", "ssm_vr") and cfg.time_sampling != "continuous":
        raise ValueError(
            f"config key objective: {cfg.objective} draws continuous times; time_sampling "
            f"must be 'continuous', got {cfg.time_sampling!r}"
        )
    if cfg.latent not in LATENT_KINDS:
        raise ValueError(
            f"unknown config key latent {cfg.latent!r}; expected one of: {', '.join(LATENT_KINDS)}"
        )
    if cfg.latent_steps < 1:
        raise ValueError(f"config key latent_steps must be >= 1, got {cfg.latent_steps!r}")
    if cfg.latent_params and cfg.latent == "none":
        raise ValueError(
            f"config key latent_params {cfg.latent_params!r} is for a latent run: set latent "
            f"to one of {', '.join(k for k in LATENT_KINDS if k != 'none')}, or drop it"
        )
    if cfg.text and cfg.conditional:
        raise ValueError(
            "config keys conditional and text are exclusive: a run is conditioned on class "
            "labels or on captions (captions name the digit)"
        )
    for name in ("steps", "batch_size", "n_train", "log_every"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"config key {name} must be >= 1, got {getattr(cfg, name)!r}")
    for name in ("warmup", "ckpt_every", "eval_every"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"config key {name} must be >= 0, got {getattr(cfg, name)!r}")
    if not 0 <= cfg.seed < 2**63:
        raise ValueError(f"config key seed must be in [0, 2**63), got {cfg.seed!r}")
    return cfg


def save_config(cfg: TrainConfig, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.json.tmp"
    tmp.write_text(json.dumps(cfg.to_dict(), indent=1))
    tmp.replace(run_dir / "config.json")


def read_run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config saved in a run folder."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run folder not found: {run_dir}")
    if not path.is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder: no config.json (made by `sdegen train --run DIR`)"
        )
    try:
        values = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt run config {path}: {e}") from None
    if not isinstance(values, dict):
        raise ValueError(f"corrupt run config {path}: it must hold a JSON object of keys")
    return from_dict(values)
