"""Bad input is refused, everywhere, the same way (STYLE.md, "Errors").

The contract, table-driven:

- Command line (`sdegen.cli.main(argv)`, in-process): exit code 2; stderr is one non-empty line
  `sdegen: error: ...` (or `sdegen SUB: error: ...`, the one-line form of an argument error);
  rows of kind "parse" (argparse's own choices and types) may instead use argparse's usage form
  ending in `...: error: ...`; never a traceback; the message names the offending parameter or
  value; and no file that existed before (a run's config.json, latest, checkpoints,
  metrics.jsonl, config files) changes, and no new file appears beside them.
- Library: the call raises ValueError or TypeError (FileNotFoundError where a path is missing)
  whose message names the parameter; never RuntimeError, ZeroDivisionError, KeyError,
  AttributeError, IndexError or torch's internal errors; never hangs; never returns.

Values that used to be accepted silently (negative warm-up, NaN EMA decay, an adaptive method
with an NFE budget, a negative sample count...) are in the tables and must be refused.
Every row is tiny: an accepted bad value must still finish in a second or two.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import sdegen
from sdegen.assembly import TrainConfig
from sdegen.cli import main

CUDA = torch.cuda.is_available()
MPS = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()

# --------------------------------------------------------------------------- helpers


class Hung(BaseException):
    """Raised by `deadline` in the code under test (a BaseException, so `except Exception` in
    the library cannot swallow it)."""


@contextlib.contextmanager
def deadline(seconds: float):
    """Interrupt the block after `seconds` (a guard against endless loops, not a speed test)."""
    if not hasattr(signal, "SIGALRM") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise Hung(f"no answer within {seconds:g} s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


API_DEADLINE = 20.0
CLI_DEADLINE = 40.0


def _first_line(text: str, limit: int = 200) -> str:
    line = next((s for s in str(text).splitlines() if s.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _names(message: str, match) -> bool:
    """Does `message` name what `match` asks for: a substring, any of a tuple of substrings
    (case-insensitive), or a predicate."""
    if callable(match):
        return bool(match(message))
    alternatives = (match,) if isinstance(match, str) else tuple(match)
    low = message.lower()
    return any(a.lower() in low for a in alternatives)


def _about_x_dtype(message: str) -> bool:
    """The message is about x and its dtype (not about t, which an integer x turns into 0)."""
    low = message.lower()
    return re.search(r"\bx\b", low) is not None and any(
        k in low for k in ("dtype", "int64", "floating", "integer")
    )


def _snapshot(root: Path, exclude: tuple[Path, ...] = ()) -> dict[str, str]:
    """Relative path -> sha256 of every file under root (links: their target), minus the
    `exclude` subtrees. Folders are not listed: an empty folder made on the way is harmless."""
    out: dict[str, str] = {}
    if not root.exists():
        return out
    for p in sorted(root.rglob("*")):
        if any(p == e or e in p.parents for e in exclude):
            continue
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _diff(before: dict[str, str], after: dict[str, str]) -> list[str]:
    changed = [k for k in before if k in after and before[k] != after[k]]
    gone = [k for k in before if k not in after]
    new = [k for k in after if k not in before]
    return (
        [f"changed {k}" for k in changed]
        + [f"removed {k}" for k in gone]
        + [f"new {k}" for k in new]
    )


# --------------------------------------------------------------------------- fixtures

TINY = [
    "--set", "data=toy:moons",
    "--set", "steps=3",
    "--set", "n_train=256",
    "--set", "batch_size=64",
    "--set", "network_params={hidden: 16}",
]  # fmt: skip


def _shared(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A run folder made once per test session: under xdist the workers share it (built by the
    first, behind a file lock), so there is one tiny training run however many workers."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.getbasetemp().parent  # this session's folder, shared by workers
    else:
        root = tmp_path_factory.getbasetemp()
    from filelock import FileLock

    run = root / f"bad_inputs_{name}" / "run"
    with FileLock(str(root / f"bad_inputs_{name}.lock")):
        if not (run / "latest").is_file():
            shutil.rmtree(run.parent, ignore_errors=True)
            build(run)
    return run


def _train_toy(run: Path) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        code = main(["train", "--run", str(run), "--quiet", *TINY])
    assert code == 0, f"the tiny training run failed: {out.getvalue()[-2000:]}"
    assert (run / "latest").is_file() and (run / "config.json").is_file()


def _build_conditional(run: Path) -> None:
    from sdegen.assembly import build_model, load_config, load_data, run_classes, save_config
    from sdegen.training import save_checkpoint

    cfg = load_config(
        None,
        [
            "data=digits",
            "conditional=true",
            "steps=1",
            "batch_size=64",
            "network_params={channels: 8, groups: 4, channel_mult: [1], attention_levels: []}",
        ],
    )
    data = load_data(cfg.data, n_train=cfg.n_train, seed=cfg.seed)
    k = run_classes(cfg, data)
    model = build_model(cfg, data.event_shape, k)
    save_config(cfg, run)
    save_checkpoint(run, 1, model, extra={"config": {**cfg.to_dict(), "num_classes": k}})


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory) -> Path:
    """The one tiny trained run of the session (3 steps on moons); rows work on copies."""
    return _shared(tmp_path_factory, "toy", _train_toy)


@pytest.fixture(scope="session")
def cond_run(tmp_path_factory) -> Path:
    """A class-conditional digits run folder (config.json + one checkpoint of an untrained,
    randomly initialised tiny U-Net), built through the library without training, for the
    guidance rows. Its conditional and unconditional predictions differ."""
    return _shared(tmp_path_factory, "cond", _build_conditional)


# --------------------------------------------------------------------------- CLI table


@dataclasses.dataclass(frozen=True)
class Row:
    argv: tuple[str, ...]
    match: object  # substring, tuple of alternatives, or predicate; {placeholders} allowed
    kind: str = "run"  # "run": sdegen's own one-line error; "parse": argparse may answer
    setup: Callable | None = None  # setup(env) before the call: damage the run copy, write files


def _skip_if(cond: bool):
    return (pytest.mark.skip(reason="that device exists on this machine"),) if cond else ()


def cli(id_: str, argv, match, kind: str = "run", setup=None, marks=()):
    return pytest.param(Row(tuple(argv), match, kind, setup), id=id_, marks=marks)


TRAIN = ("train", "--run", "{new}", "--quiet", *TINY)


def train(*extra: str) -> tuple[str, ...]:
    return (*TRAIN, *extra)


def setk(key_value: str) -> tuple[str, ...]:
    """A tiny train call with one bad --set override (applied after the tiny settings)."""
    return train("--set", key_value)


def train_without(key: str, *extra: str) -> tuple[str, ...]:
    """The tiny train call minus the --set of `key`, so a config file's value of it counts."""
    keep: list[str] = []
    items = list(TINY)
    for flag, kv in zip(items[::2], items[1::2]):
        if kv.split("=")[0] != key:
            keep += [flag, kv]
    return ("train", "--run", "{new}", "--quiet", *keep, *extra)


# --quiet: no progress lines on stderr, so an error after sampling is the only line there
SAMPLE = ("sample", "--quiet", "--run", "{run}")
SAMPLE_C = ("sample", "--quiet", "--run", "{cond}", "--n", "4", "--nfe", "5")
LIK0 = ("likelihood", "--quiet", "--run", "{run}")
LIK = (*LIK0, "--rtol", "1e-3", "--atol", "1e-3")


def _write(name: str, text: str | bytes):
    def setup(env):
        p = env.tmp / name
        p.write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def _damage(relpath: str, text: str | bytes | None):
    """Overwrite (or with None delete) a file of the run copy."""

    def setup(env):
        p = env.run / relpath
        if text is None:
            p.unlink()
        else:
            p.write_bytes(text if isinstance(text, bytes) else text.encode())

    return setup


def _damage_state(text: str):
    def setup(env):
        (env.run / (env.run / "latest").read_text().strip() / "state.json").write_text(text)

    return setup


def _damage_model(text: bytes | None):
    def setup(env):
        p = env.run / (env.run / "latest").read_text().strip() / "model.safetensors"
        if text is None:
            p.unlink()
        else:
            p.write_bytes(text)

    return setup


def _latest_outside(env):
    """`latest` names ../other/ckpt-x, a complete checkpoint outside the run folder."""
    ckpt = env.run / (env.run / "latest").read_text().strip()
    other = env.tmp / "other"
    shutil.copytree(ckpt, other / "ckpt-x")
    (env.run / "latest").write_text("../other/ckpt-x")


def _latest_absolute(env):
    ckpt = env.run / (env.run / "latest").read_text().strip()
    other = env.tmp / "other"
    shutil.copytree(ckpt, other / "ckpt-00000003")
    (env.run / "latest").write_text(str(other / "ckpt-00000003"))


def _config_edit(**changes):
    def setup(env):
        cfg = json.loads((env.run / "config.json").read_text())
        cfg.update(changes)
        (env.run / "config.json").write_text(json.dumps(cfg))

    return setup


def _no_checkpoint(env):
    """A run folder with config.json but no checkpoint."""
    for p in env.run.iterdir():
        if p.name != "config.json":
            shutil.rmtree(p) if p.is_dir() else p.unlink()


CLI_ROWS = [
    # ---- train: every config key with a bad value ------------------------------------------
    cli("train:log_every=0", setk("log_every=0"), "log_every"),
    cli("train:log_every=-1", setk("log_every=-1"), "log_every"),
    cli("train:log_every=abc", setk("log_every=abc"), "log_every"),
    cli("train:warmup=-10", setk("warmup=-10"), "warmup"),
    cli("train:warmup=1.5", setk("warmup=1.5"), "warmup"),
    cli("train:grad_clip=-1", setk("grad_clip=-1"), "grad_clip"),
    cli("train:grad_clip=0", setk("grad_clip=0"), "grad_clip"),
    cli("train:grad_clip=nan", setk("grad_clip=nan"), "grad_clip"),
    cli("train:grad_clip=abc", setk("grad_clip=abc"), "grad_clip"),
    cli("train:ema_decay=nan", setk("ema_decay=nan"), "ema_decay"),
    cli("train:ema_decay=1.5", setk("ema_decay=1.5"), "ema_decay"),
    cli("train:ema_decay=-0.1", setk("ema_decay=-0.1"), "ema_decay"),
    cli("train:ema_decay=inf", setk("ema_decay=inf"), "ema_decay"),
    cli("train:batch_size=-4", setk("batch_size=-4"), "batch_size"),
    cli("train:batch_size=0", setk("batch_size=0"), "batch_size"),
    cli("train:batch_size=16.0", setk("batch_size=16.0"), "batch_size"),
    cli("train:batch_size>n_train", setk("batch_size=100000"), ("batch_size", "n_train")),
    cli("train:n_train<batch_size", setk("n_train=8"), ("batch_size", "n_train")),
    cli("train:steps=0", setk("steps=0"), "steps"),
    cli("train:steps=-5", setk("steps=-5"), "steps"),
    cli("train:steps=1.5", setk("steps=1.5"), "steps"),
    cli("train:steps=[3]", setk("steps=[3]"), "steps"),
    cli("train:lr=nan", setk("lr=nan"), "lr"),
    cli("train:lr=-1", setk("lr=-1"), "lr"),
    cli("train:lr=0", setk("lr=0"), "lr"),
    cli("train:lr=inf", setk("lr=inf"), "lr"),
    cli("train:lr=abc", setk("lr=abc"), "lr"),
    cli("train:p_uncond=2", setk("p_uncond=2"), "p_uncond"),
    cli("train:p_uncond=-0.5", setk("p_uncond=-0.5"), "p_uncond"),
    cli("train:p_uncond=nan", setk("p_uncond=nan"), "p_uncond"),
    cli("train:n_train=0", setk("n_train=0"), "n_train"),
    cli("train:n_train=-1", setk("n_train=-1"), "n_train"),
    cli("train:ckpt_every=-1", setk("ckpt_every=-1"), "ckpt_every"),
    cli("train:ckpt_every=1.5", setk("ckpt_every=1.5"), "ckpt_every"),
    cli("train:eval_every=-1", setk("eval_every=-1"), "eval_every"),
    cli("train:seed=abc", setk("seed=abc"), "seed"),
    cli("train:seed=1.5", setk("seed=1.5"), "seed"),
    cli("train:seed=1e30-as-int", setk("seed=1000000000000000000000000000000"), "seed"),
    cli("train:sde=nope", setk("sde=nope"), "nope"),
    cli("train:sde=5", setk("sde=5"), "sde"),
    cli("train:parametrization=nope", setk("parametrization=nope"), "nope"),
    cli("train:network=nope", setk("network=nope"), "nope"),
    cli("train:network=unet-on-vectors", setk("network=unet"), "unet"),
    cli("train:weighting=nope", setk("weighting=nope"), "nope"),
    cli("train:data=nope", setk("data=nope"), "nope"),
    cli("train:data=toy:nope", setk("data=toy:nope"), "nope"),
    cli("train:data=toy:", setk("data=toy:"), "toy"),
    cli("train:data=mnist:/no/such/dir", setk("data=mnist:/no/such/dir"), "/no/such/dir"),
    cli("train:data=cifar10:/no/such/dir", setk("data=cifar10:/no/such/dir"), "/no/such/dir"),
    cli("train:data=mnist:", setk("data=mnist:"), "mnist"),
    cli("train:data=[list]", setk("data=[1, 2]"), "data"),
    cli("train:network_params=yaml-error", setk("network_params={hidden: [}"), "network_params"),
    cli("train:network_params-unknown-key", setk("network_params={nope: 1}"), "nope"),
    cli("train:network_params-hidden=-3", setk("network_params={hidden: -3}"), "hidden"),
    cli("train:network_params-hidden=abc", setk("network_params={hidden: abc}"), "hidden"),
    cli("train:network_params=5", setk("network_params=5"), "network_params"),
    cli("train:sde_params-unknown-key", setk("sde_params={nope: 1}"), "nope"),
    cli("train:sde_params-beta_min=-1", setk("sde_params={beta_min: -1}"), "beta_min"),
    cli("train:sde_params-beta_max=nan", setk("sde_params={beta_max: nan}"), "beta_max"),
    cli(
        "train:sde_params-ve-sigma_min>max",
        train("--set", "sde=ve", "--set", "sde_params={sigma_min: 10, sigma_max: 1}"),
        "sigma_min",
    ),
    cli("train:sde_params=[list]", setk("sde_params=[1, 2]"), "sde_params"),
    cli("train:unknown-key", setk("stepz=3"), "stepz"),
    cli("train:set-without-equals", train("--set", "steps"), "steps"),
    cli("train:conditional=maybe", setk("conditional=maybe"), "conditional"),
    cli("train:conditional-on-unlabelled-toy", train("--conditional"), "conditional"),
    cli("train:set-device=tpu", setk("device=tpu"), "tpu"),
    # ---- train: config files -----------------------------------------------------------------
    cli("train:config-missing", train("--config", "{tmp}/nowhere.yaml"), "nowhere.yaml"),
    cli(
        "train:config-.txt",
        train("--config", "{tmp}/run.txt"),
        "run.txt",
        setup=_write("run.txt", "sde: ve\n"),
    ),
    cli(
        "train:config-malformed-yaml",
        train("--config", "{tmp}/bad.yaml"),
        "bad.yaml",
        setup=_write("bad.yaml", "sde: [ve\nsteps: {\n"),
    ),
    cli(
        "train:config-malformed-toml",
        train("--config", "{tmp}/bad.toml"),
        "bad.toml",
        setup=_write("bad.toml", 'sde = "ve\nsteps = = 3\n'),
    ),
    cli(
        "train:config-yaml-list",
        train("--config", "{tmp}/list.yaml"),
        "list.yaml",
        setup=_write("list.yaml", "- sde\n- ve\n"),
    ),
    cli(
        "train:config-not-utf8",
        train("--config", "{tmp}/binary.yaml"),
        "binary.yaml",
        setup=_write("binary.yaml", b"\xff\xfe\x00sde: \x80\x81\n"),
    ),
    cli(
        "train:config-is-a-folder",
        train("--config", "{tmp}"),
        "{tmp}",
    ),
    cli(
        "train:config-unknown-key",
        train("--config", "{tmp}/unk.yaml"),
        "stepz",
        setup=_write("unk.yaml", "stepz: 3\n"),
    ),
    cli(
        "train:config-log_every=0",
        train_without("log_every", "--config", "{tmp}/le.yaml"),
        "log_every",
        setup=_write("le.yaml", "log_every: 0\n"),
    ),
    cli(
        "train:config-toml-bad-type",
        train_without("steps", "--config", "{tmp}/t.toml"),
        "steps",
        setup=_write("t.toml", 'steps = "many"\n'),
    ),
    # ---- train: devices -----------------------------------------------------------------------
    cli("train:device=mps", train("--device", "mps"), "mps", marks=_skip_if(MPS)),
    cli("train:device=meta", train("--device", "meta"), "meta"),
    cli("train:device=tpu", train("--device", "tpu"), "tpu"),
    cli("train:device=cuda", train("--device", "cuda"), "cuda", marks=_skip_if(CUDA)),
    cli("train:device=cuda:99", train("--device", "cuda:99"), "cuda:99"),
    cli("train:device=cuda:-1", train("--device", "cuda:-1"), "cuda:-1"),
    cli("train:device=empty", train("--device", ""), "device"),
    # ---- train: run folders ------------------------------------------------------------------
    cli(
        "train:run-is-a-file",
        ("train", "--run", "{file}", "--quiet", *TINY),
        "{file}",
    ),
    cli(
        "train:run-under-a-file",
        ("train", "--run", "{file}/x", "--quiet", *TINY),
        "{file}",
    ),
    cli(
        "train:run-read-only",
        ("train", "--run", "{readonly}", "--quiet", *TINY),
        "{readonly_parent}",
    ),
    cli(
        "train:resume-fresh-folder",
        ("train", "--run", "{new}", "--resume", "--quiet"),
        "{new}",
    ),
    cli(
        "train:resume-no-checkpoint",
        ("train", "--run", "{run}", "--resume", "--quiet"),
        ("checkpoint", "{run}"),
        setup=_no_checkpoint,
    ),
    cli(
        "train:resume-changed-sde",
        ("train", "--run", "{run}", "--resume", "--quiet", "--set", "sde=ve"),
        "sde",
    ),
    cli(
        "train:resume-changed-lr",
        ("train", "--run", "{run}", "--resume", "--quiet", "--set", "lr=0.1"),
        "lr",
    ),
    cli(
        "train:resume-fewer-steps",
        ("train", "--run", "{run}", "--resume", "--quiet", "--set", "steps=2"),
        "steps",
    ),
    cli(
        "train:resume-steps=0",
        ("train", "--run", "{run}", "--resume", "--quiet", "--set", "steps=0"),
        "steps",
    ),
    cli(
        "train:resume-steps=abc",
        ("train", "--run", "{run}", "--resume", "--quiet", "--set", "steps=abc"),
        "steps",
    ),
    cli(
        "train:resume-with-config",
        ("train", "--run", "{run}", "--resume", "--quiet", "--config", "{tmp}/c.yaml"),
        "--config",
        setup=_write("c.yaml", "sde: ve\n"),
    ),
    cli(
        "train:resume-conditional",
        ("train", "--run", "{run}", "--resume", "--quiet", "--conditional"),
        "conditional",
    ),
    cli(
        "train:resume-device=tpu",
        ("train", "--run", "{run}", "--resume", "--quiet", "--device", "tpu"),
        "tpu",
    ),
    cli(
        "train:into-existing-checkpoint",
        ("train", "--run", "{run}", "--quiet", *TINY),
        "--resume",
    ),
    cli("train:no-run", ("train", "--quiet", *TINY), "--run", kind="parse"),
    # ---- sample ------------------------------------------------------------------------------
    cli("sample:n=0", (*SAMPLE, "--n", "0"), ("--n", "n must", "n=0")),
    cli("sample:n=-5", (*SAMPLE, "--n", "-5"), ("--n", "-5")),
    cli("sample:n=abc", (*SAMPLE, "--n", "abc"), ("--n", "abc"), kind="parse"),
    cli("sample:nfe=0", (*SAMPLE, "--n", "4", "--nfe", "0"), "nfe"),
    cli("sample:nfe=-1", (*SAMPLE, "--n", "4", "--nfe", "-1"), "nfe"),
    cli("sample:nfe=1", (*SAMPLE, "--n", "4", "--nfe", "1"), "nfe"),
    cli("sample:steps=0", (*SAMPLE, "--n", "4", "--steps", "0"), "steps"),
    cli("sample:steps=-3", (*SAMPLE, "--n", "4", "--steps", "-3"), "steps"),
    cli("sample:method=nope", (*SAMPLE, "--method", "nope"), "nope", kind="parse"),
    cli(
        "sample:dopri5-with-nfe",
        (*SAMPLE, "--n", "4", "--method", "dopri5", "--nfe", "10"),
        ("nfe", "dopri5"),
    ),
    cli(
        "sample:dpm_adaptive-with-nfe",
        (*SAMPLE, "--n", "4", "--method", "dpm_adaptive", "--nfe", "10"),
        ("nfe", "dpm_adaptive"),
    ),
    cli(
        "sample:guidance-without-class",
        (*SAMPLE_C, "--guidance", "2"),
        "--class",
    ),
    cli("sample:guidance=nan", (*SAMPLE_C, "--class", "3", "--guidance", "nan"), "guidance"),
    cli("sample:guidance=inf", (*SAMPLE_C, "--class", "3", "--guidance", "inf"), "guidance"),
    cli("sample:guidance=-1", (*SAMPLE_C, "--class", "3", "--guidance", "-1"), "guidance"),
    cli(
        "sample:guidance=1e30",
        (*SAMPLE_C, "--class", "3", "--guidance", "1e30"),
        ("guidance", "1e+30", "1e30", "nan", "non-finite", "inf"),
    ),
    cli("sample:class=99-conditional", (*SAMPLE_C, "--class", "99"), "99"),
    cli("sample:class=-2-conditional", (*SAMPLE_C, "--class", "-2"), "-2"),
    cli(
        "sample:class-on-unconditional-run",
        (*SAMPLE, "--n", "4", "--class", "99"),
        ("--class", "unconditional"),
    ),
    cli(
        "sample:guidance-on-unconditional-run",
        (*SAMPLE, "--n", "4", "--class", "0", "--guidance", "2"),
        ("--class", "unconditional", "guidance"),
    ),
    cli("sample:seed=-1", (*SAMPLE, "--n", "4", "--seed", "-1"), "seed"),
    cli("sample:seed=2**70", (*SAMPLE, "--n", "4", "--seed", str(2**70)), "seed"),
    cli("sample:out-under-a-file", (*SAMPLE, "--n", "4", "--out", "{file}/x"), "{file}"),
    cli(
        "sample:out-is-a-folder",
        (*SAMPLE, "--n", "4", "--out", "{tmp}/outdir/"),
        "outdir",
        setup=lambda env: (env.tmp / "outdir.npz").mkdir(),
    ),
    cli("sample:run-missing", ("sample", "--run", "{new}"), "{new}"),
    cli("sample:run-is-a-file", ("sample", "--run", "{file}"), "{file}"),
    cli(
        "sample:run-without-config.json",
        (*SAMPLE, "--n", "4"),
        "config.json",
        setup=_damage("config.json", None),
    ),
    cli(
        "sample:run-corrupt-config.json",
        (*SAMPLE, "--n", "4"),
        "config.json",
        setup=_damage("config.json", "{not json"),
    ),
    cli(
        "sample:run-config.json-is-a-list",
        (*SAMPLE, "--n", "4"),
        "config.json",
        setup=_damage("config.json", "[]"),
    ),
    cli(
        "sample:run-config.json-not-utf8",
        (*SAMPLE, "--n", "4"),
        "config.json",
        setup=_damage("config.json", b"\xff\xfe{\x80}"),
    ),
    cli(
        "sample:run-config.json-unknown-key",
        (*SAMPLE, "--n", "4"),
        "stepz",
        setup=_config_edit(stepz=3),
    ),
    cli(
        "sample:run-config.json-other-network",
        (*SAMPLE, "--n", "4"),
        "checkpoint",
        setup=_config_edit(network_params={"hidden": 32}),
    ),
    cli(
        "sample:run-config.json-bad-sde",
        (*SAMPLE, "--n", "4"),
        "nope",
        setup=_config_edit(sde="nope"),
    ),
    cli("sample:run-state.json={}", (*SAMPLE, "--n", "4"), "state.json", setup=_damage_state("{}")),
    cli("sample:run-state.json=[]", (*SAMPLE, "--n", "4"), "state.json", setup=_damage_state("[]")),
    cli(
        "sample:run-state.json-corrupt",
        (*SAMPLE, "--n", "4"),
        "state.json",
        setup=_damage_state("{oops"),
    ),
    cli(
        "sample:run-state.json-step=abc",
        (*SAMPLE, "--n", "4"),
        "step",
        setup=_damage_state('{"step": "abc", "extra": {}}'),
    ),
    cli(
        "sample:run-model.safetensors-corrupt",
        (*SAMPLE, "--n", "4"),
        ("model.safetensors", "ckpt-00000003"),
        setup=_damage_model(b"not a safetensors file"),
    ),
    cli(
        "sample:run-model.safetensors-missing",
        (*SAMPLE, "--n", "4"),
        "model.safetensors",
        setup=_damage_model(None),
    ),
    cli(
        "sample:run-latest-outside",
        (*SAMPLE, "--n", "4"),
        ("latest", "../other"),
        setup=_latest_outside,
    ),
    cli(
        "sample:run-latest-absolute",
        (*SAMPLE, "--n", "4"),
        ("latest", "{tmp}/other"),
        setup=_latest_absolute,
    ),
    cli(
        "sample:run-latest-dangling",
        (*SAMPLE, "--n", "4"),
        ("latest", "ckpt-00000099"),
        setup=_damage("latest", "ckpt-00000099"),
    ),
    cli(
        "sample:run-latest-empty",
        (*SAMPLE, "--n", "4"),
        "latest",
        setup=_damage("latest", ""),
    ),
    cli("sample:run-no-checkpoint", (*SAMPLE, "--n", "4"), "checkpoint", setup=_no_checkpoint),
    cli("sample:device=mps", (*SAMPLE, "--n", "4", "--device", "mps"), "mps", marks=_skip_if(MPS)),
    cli("sample:device=meta", (*SAMPLE, "--n", "4", "--device", "meta"), "meta"),
    cli("sample:device=tpu", (*SAMPLE, "--n", "4", "--device", "tpu"), "tpu"),
    cli("sample:device=cuda:99", (*SAMPLE, "--n", "4", "--device", "cuda:99"), "cuda:99"),
    # ---- likelihood --------------------------------------------------------------------------
    cli("likelihood:batch=0", (*LIK, "--n", "4", "--batch", "0"), "batch"),
    cli("likelihood:batch=-1", (*LIK, "--n", "4", "--batch", "-1"), "batch"),
    cli("likelihood:n=-1995", (*LIK, "--n", "-1995"), ("--n", "-1995")),
    cli("likelihood:n=-1", (*LIK, "--n", "-1"), ("--n", "n must")),
    cli("likelihood:rtol=-1", (*LIK0, "--n", "4", "--rtol", "-1"), "rtol"),
    cli("likelihood:rtol=0", (*LIK0, "--n", "4", "--rtol", "0"), "rtol"),
    cli("likelihood:rtol=nan", (*LIK0, "--n", "4", "--rtol", "nan"), "rtol"),
    cli("likelihood:atol=inf", (*LIK0, "--n", "4", "--atol", "inf"), "atol"),
    cli("likelihood:atol=-1", (*LIK0, "--n", "4", "--atol", "-1"), "atol"),
    cli("likelihood:rtol=10", (*LIK0, "--n", "4", "--rtol", "10"), "rtol"),
    cli("likelihood:n-above-the-split", (*LIK, "--n", "100000000"), "--n 100000000"),
    cli("likelihood:probes-with-exact-trace", (*LIK, "--n", "4", "--probes", "3"), "--probes"),
    cli("likelihood:trace=nope", (*LIK, "--n", "4", "--trace", "nope"), "nope", kind="parse"),
    cli("sample:out=''", (*SAMPLE, "--n", "4", "--out", ""), "--out", kind="parse"),
    cli("train:run=''", ("train", "--run", "", "--quiet", *TINY), "--run", kind="parse"),
    cli("train:set-empty-key", setk("=5"), "=5"),
    cli("demo:nfe=1", ("demo", "--nfe", "1", "--n", "100"), "nfe"),
    cli(
        "quickstart:out-under-a-file",
        ("quickstart", "--fast", "--out", "{tmp}/afile/q"),
        "--out",
        setup=_write("afile", "an ordinary file\n"),
    ),
    cli("quickstart:out-is-a-run", ("quickstart", "--fast", "--out", "{run}"), "--out"),
    cli("quickstart:out=/proc/x", ("quickstart", "--fast", "--out", "/proc/x"), "--out"),
    cli("likelihood:split=nope", (*LIK, "--n", "4", "--split", "nope"), "nope", kind="parse"),
    cli("likelihood:seed=-1", (*LIK, "--n", "4", "--seed", "-1"), "seed"),
    cli("likelihood:seed=2**70", (*LIK, "--n", "4", "--seed", str(2**70)), "seed"),
    cli("likelihood:device=meta", (*LIK, "--n", "4", "--device", "meta"), "meta"),
    cli("likelihood:device=cuda:99", (*LIK, "--n", "4", "--device", "cuda:99"), "cuda:99"),
    cli(
        "likelihood:run-state.json={}",
        (*LIK, "--n", "4"),
        "state.json",
        setup=_damage_state("{}"),
    ),
    cli(
        "likelihood:run-config.json-is-a-list",
        (*LIK, "--n", "4"),
        "config.json",
        setup=_damage("config.json", "[]"),
    ),
    cli("likelihood:run-missing", ("likelihood", "--run", "{new}"), "{new}"),
    # ---- bench -------------------------------------------------------------------------------
    cli("bench:unknown-name", ("bench", "nope"), "nope"),
    cli("bench:path-traversal", ("bench", "../sdegen/cli/commands"), "../sdegen/cli/commands"),
    cli("bench:empty-name", ("bench", ""), ("benchmark", "name")),
]


def _make_env(tmp: Path, row: Row, request) -> SimpleNamespace:
    text = " ".join(row.argv)
    env = SimpleNamespace(tmp=tmp, new=tmp / "new", file=tmp / "afile")
    env.file.write_text("an ordinary file\n")
    env.run = tmp / "run"
    env.cond = tmp / "cond"
    if "{run}" in text:
        shutil.copytree(request.getfixturevalue("toy_run"), env.run)
    if "{cond}" in text:
        shutil.copytree(request.getfixturevalue("cond_run"), env.cond)
    env.readonly = env.readonly_parent = None
    if "{readonly}" in text:
        ro = tmp / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        if os.access(ro, os.W_OK):  # root ignores modes: a path under a file is unwritable too
            env.readonly, env.readonly_parent = env.file / "x", env.file
        else:
            env.readonly, env.readonly_parent = ro / "run", ro
    return env


def _fmt(s: str, env: SimpleNamespace) -> str:
    """Fill the {placeholders} (str.format would trip over YAML braces such as {hidden: 16})."""
    for name in ("tmp", "new", "file", "run", "cond", "readonly_parent", "readonly"):
        s = s.replace("{" + name + "}", str(getattr(env, name)))
    return s


_ERROR_LINE = re.compile(r"^sdegen(?: [a-z_]+)?: error: \S")
_ERROR_LINE_PREFIX = re.compile(r"^sdegen(?: [a-z_]+)?: error: ")


def cli_problems(code, err: str, match, kind: str) -> list[str]:
    """What is wrong with a CLI answer (empty: it keeps the contract)."""
    lines = [s for s in err.splitlines() if s.strip()]
    problems = []
    if code != 2:
        problems.append(f"exit {code}" + (" (accepted silently)" if code == 0 else ""))
    if "Traceback" in err:
        problems.append("traceback in stderr")
    one_line = len(lines) == 1 and _ERROR_LINE.match(lines[0]) is not None
    usage_form = (
        kind == "parse"
        and len(lines) >= 2
        and lines[0].startswith("usage:")
        and re.match(r"^sdegen(?: [a-z_]+)?: error: \S", lines[-1]) is not None
    )
    if not (one_line or usage_form):
        problems.append(f"stderr is {len(lines)} line(s), not one 'sdegen: error: ...' line")
    # match in the error line alone, without the "sdegen: error:" prefix ("sdegen" holds "sde")
    # and without argparse's usage lines (they list every option)
    message = _ERROR_LINE_PREFIX.sub("", lines[-1]) if lines else ""
    if lines and not _names(message, match):
        problems.append(f"message does not name {match!r}")
    return problems


@pytest.mark.parametrize("row", CLI_ROWS)
def test_cli_refuses(row: Row, tmp_path, capsys, request):
    env = _make_env(tmp_path, row, request)
    try:
        if row.setup is not None:
            row.setup(env)
        argv = [_fmt(a, env) for a in row.argv]
        match = (
            row.match
            if callable(row.match)
            else (
                _fmt(row.match, env)
                if isinstance(row.match, str)
                else tuple(_fmt(m, env) for m in row.match)
            )
        )
        before = _snapshot(tmp_path, exclude=(env.new,))
        capsys.readouterr()
        raised = None
        try:
            with deadline(CLI_DEADLINE):
                code = main(argv)
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Hung as e:
            pytest.fail(f"OUTCOME: hung ({e})")
        except Exception as e:  # in a real process: a traceback and exit 1
            code, raised = 1, e
        _, err = capsys.readouterr()
        if raised is not None:
            pytest.fail(f"OUTCOME: traceback {type(raised).__name__}: {_first_line(str(raised))}")
        problems = cli_problems(code, err, match, row.kind)
        changed = _diff(before, _snapshot(tmp_path, exclude=(env.new,)))
        if changed:
            problems.append("files touched: " + ", ".join(changed[:4]))
        if env.new.is_dir() and (env.new / "latest").exists():
            problems.append("a failed run left a checkpoint in its folder")
        if problems:
            pytest.fail(
                f"OUTCOME: exit {code}; stderr {_first_line(err)!r}; " + "; ".join(problems)
            )
    finally:
        ro = tmp_path / "ro"
        if ro.exists():
            ro.chmod(0o755)


def test_likelihood_of_one_example_writes_no_nan(toy_run, tmp_path, capsys):
    """--n 1 has no standard error: refuse it, or write valid JSON (null, not NaN)."""
    run = tmp_path / "run"
    shutil.copytree(toy_run, run)
    code = main(["likelihood", "--run", str(run), "--n", "1", "--rtol", "1e-3", "--atol", "1e-3"])
    err = capsys.readouterr().err
    if code == 2:
        assert not cli_problems(code, err, ("--n", "n must", "2"), "run"), err
        assert not (run / "likelihood-test-n1.json").exists()
        return
    assert code == 0, f"OUTCOME: exit {code}; stderr {_first_line(err)!r}"
    text = (run / "likelihood-test-n1.json").read_text()

    def no_constant(name):
        raise ValueError(f"likelihood-test-n1.json holds {name}, which is not JSON")

    try:
        result = json.loads(text, parse_constant=no_constant)
    except ValueError as e:
        pytest.fail(f"OUTCOME: exit 0 but {e}")
    bad = [k for k, v in result.items() if isinstance(v, float) and not math.isfinite(v)]
    assert not bad, f"OUTCOME: non-finite values for {bad}"


# --------------------------------------------------------------------------- library table


def _sde():
    return sdegen.VPSDE()


def _mix(sde=None):
    sde = sde or _sde()
    covs = torch.stack([torch.eye(2) * 0.3, torch.eye(2) * 0.5])
    return sdegen.GaussianMixtureScore([0.3, 0.7], [[-2.0, 0.0], [2.0, 1.0]], covs, sde)


def _net(dim: int = 2, **kw):
    from sdegen.models import MLP

    return MLP(dim, **{"hidden": 8, "depth": 1, "embed_dim": 8, **kw})


def _model(parametrization: str = "eps"):
    return sdegen.ScoreModel(_net(), _sde(), parametrization)


def _sample(**kw):
    mix = _mix()
    shape = kw.pop("shape", (4, 2))
    return sdegen.sample(mix, mix.sde, shape, **kw)


def _ll(**kw):
    mix = _mix()
    x = kw.pop("x", torch.randn(4, 2, dtype=torch.float64))
    kw = {"rtol": 1e-3, "atol": 1e-3, **kw}
    return sdegen.log_likelihood(mix, mix.sde, x, **kw)


def _optimise(**kw):
    """optimise_schedule of 3 ddim steps on the mixture, with the keywords given."""
    return _imp("sdegen.solvers.optimise_schedule")(_mix(), _sde(), (8, 2), "ddim", 3, **kw)


def _x(*shape, dtype=torch.float64):
    return torch.randn(*(shape or (4, 2)), dtype=dtype)


def _nan_x():
    x = _x()
    x[1, 0] = float("nan")
    return x


def _trainer(data=None, fit=2, objective=None, **kw):
    from sdegen.training import Trainer, score_matching

    data = torch.randn(64, 2) if data is None else data
    kw = {"batch_size": 16, "progress": False, **kw}
    objective = score_matching("simple") if objective is None else objective
    trainer = Trainer(_model(), objective, data, **kw)
    return trainer.fit(fit)


def _checkpoint(tmp: Path, state=None) -> Path:
    from sdegen.training import save_checkpoint

    torch.manual_seed(0)
    path = save_checkpoint(tmp / "r", 3, _net())
    if state is not None:
        (path / "state.json").write_text(state)
    return path


def _load(tmp: Path, state: str):
    from sdegen.training import load_checkpoint

    torch.manual_seed(0)
    return load_checkpoint(_checkpoint(tmp, state), _net())


def _latest(tmp: Path, pointer: str):
    from sdegen.training import latest_checkpoint

    path = _checkpoint(tmp)
    other = tmp / "other"
    shutil.copytree(path, other / "ckpt-x")
    (tmp / "r" / "latest").write_text(pointer.format(other=other))
    return latest_checkpoint(tmp / "r")


def _load_bad_optimizer(tmp: Path, layout: dict):
    """A checkpoint saved with an Adam state, its state.json's optimizer layout replaced, loaded
    with an optimizer."""
    from sdegen.training import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    net(torch.zeros(2, 2), torch.zeros(2)).sum().backward()
    opt.step()
    path = save_checkpoint(tmp / "r", 1, net, opt)
    meta = json.loads((path / "state.json").read_text())
    meta["optimizer"]["layout"] = layout
    (path / "state.json").write_text(json.dumps(meta))
    return load_checkpoint(path, _net(), torch.optim.Adam(_net().parameters()))


def _fake_mnist(tmp: Path) -> Path:
    folder = tmp / "mnist"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"):
        (folder / name).write_bytes(b"\x00\x00\x08\x03garbage")
    return folder


E = (ValueError, TypeError)
F = (FileNotFoundError, ValueError)


def api(id_: str, call: Callable, match, allowed=E, marks=()):
    """A library row: call(tmp_path) must raise one of `allowed` naming `match`."""
    return pytest.param(call, match, allowed, id=id_, marks=marks)


def _imp(path: str):
    module, _, name = path.rpartition(".")
    return getattr(__import__(module, fromlist=[name]), name)


API_ROWS = [
    # ---- sdegen.sample -------------------------------------------------------------------------
    api("sample:nfe=0", lambda _: _sample(nfe=0), "nfe"),
    api("sample:nfe=5.5", lambda _: _sample(nfe=5.5), "nfe"),
    api("sample:nfe=inf", lambda _: _sample(nfe=float("inf")), "nfe"),
    api("sample:nfe=nan", lambda _: _sample(nfe=float("nan")), "nfe"),
    api("sample:nfe=-3", lambda _: _sample(nfe=-3), "nfe"),
    api("sample:nfe='10'", lambda _: _sample(nfe="10"), "nfe"),
    api("sample:nfe=True", lambda _: _sample(nfe=True), "nfe"),
    api("sample:steps=0", lambda _: _sample(steps=0), "steps"),
    api("sample:steps=2.5", lambda _: _sample(steps=2.5), "steps"),
    api("sample:steps=-1", lambda _: _sample(steps=-1), "steps"),
    api("sample:steps='5'", lambda _: _sample(steps="5"), "steps"),
    api("sample:steps-and-nfe", lambda _: _sample(steps=3, nfe=5), ("steps", "nfe")),
    api("sample:shape=(0,2)", lambda _: _sample(shape=(0, 2)), "shape"),
    api("sample:shape=(4,)", lambda _: _sample(shape=(4,)), "shape"),
    api("sample:shape=(4,-2)", lambda _: _sample(shape=(4, -2)), "shape"),
    api("sample:shape=(4,2.0)", lambda _: _sample(shape=(4, 2.0)), "shape"),
    api("sample:shape=4", lambda _: _sample(shape=4), "shape"),
    api("sample:shape=(4,3)-vs-2-D-model", lambda _: _sample(shape=(4, 3), steps=3), "shape"),
    api("sample:method=nope", lambda _: _sample(method="nope"), "nope"),
    api("sample:method=None", lambda _: _sample(method=None), "method"),
    api("sample:guidance=nan", lambda _: _sample(y=0, guidance=float("nan")), "guidance"),
    api("sample:guidance=inf", lambda _: _sample(y=0, guidance=float("inf")), "guidance"),
    api("sample:guidance=-1", lambda _: _sample(y=0, guidance=-1.0), "guidance"),
    api("sample:guidance-without-y", lambda _: _sample(guidance=2.0), "guidance"),
    api("sample:y=5-of-2-classes", lambda _: _sample(y=5), "5"),
    api("sample:y=1.5", lambda _: _sample(y=1.5), ("y", "label")),
    api(
        "sample:y-on-unconditional-model",
        lambda _: sdegen.sample(_model(), _sde(), (4, 2), y=0, steps=3),
        ("y", "label", "unconditional"),
    ),
    api(
        "sample:device=cuda",
        lambda _: _sample(device="cuda", steps=3),
        "cuda",
        marks=_skip_if(CUDA),
    ),
    api("sample:device=nope", lambda _: _sample(device="nope", steps=3), "nope"),
    api("sample:device=mps", lambda _: _sample(device="mps", steps=3), "mps", marks=_skip_if(MPS)),
    api(
        "sample:noise-with-nan",
        lambda _: _sample(noise=_nan_x().float(), steps=3),
        "noise",
    ),
    api("sample:noise-wrong-shape", lambda _: _sample(noise=torch.randn(4, 3), steps=3), "noise"),
    api(
        "sample:noise-int64",
        lambda _: _sample(noise=torch.zeros(4, 2, dtype=torch.long), steps=3),
        ("noise", "dtype"),
    ),
    api("sample:noise-list", lambda _: _sample(noise=[[0.0, 0.0]] * 4, steps=3), "noise"),
    api("sample:dtype=int64", lambda _: _sample(dtype=torch.int64, steps=3), "dtype"),
    api("sample:dopri5-rtol=-1", lambda _: _sample(method="dopri5", rtol=-1.0), "rtol"),
    api(
        "sample:dopri5-atol=inf",
        lambda _: _sample(method="dopri5", atol=float("inf")),
        "atol",
    ),
    api(
        "sample:dopri5-rtol=nan",
        lambda _: _sample(method="dopri5", rtol=float("nan")),
        "rtol",
    ),
    api("sample:dopri5-rtol='abc'", lambda _: _sample(method="dopri5", rtol="abc"), "rtol"),
    api("sample:dopri5-with-nfe", lambda _: _sample(method="dopri5", nfe=10), ("nfe", "adaptive")),
    api("sample:unknown-option", lambda _: _sample(steps=3, foo=1), "foo"),
    api("sample:euler-rtol-option", lambda _: _sample(method="euler", rtol=1e-3), "rtol"),
    api("sample:schedule=nope", lambda _: _sample(steps=3, schedule="nope"), "nope"),
    api(
        "sample:schedule-increasing-grid",
        lambda _: _sample(schedule=torch.linspace(1e-3, 1.0, 5, dtype=torch.float64)),
        "grid",
    ),
    api("sample:ddim-eta=-1", lambda _: _sample(method="ddim", steps=3, eta=-1.0), "eta"),
    api("sample:ddim-eta=nan", lambda _: _sample(method="ddim", steps=3, eta=float("nan")), "eta"),
    api("sample:dpmpp_3m-order=7", lambda _: _sample(method="dpmpp_3m", steps=3, order=7), "order"),
    api("sample:pc-snr=-1", lambda _: _sample(method="pc", steps=3, snr=-1.0), "snr"),
    api(
        "sample:pc-corrector_steps=-1",
        lambda _: _sample(method="pc", steps=3, corrector_steps=-1),
        "corrector_steps",
    ),
    api(
        "sample:pc-corrector_steps=-1-with-nfe",
        lambda _: _sample(method="pc", nfe=10, corrector_steps=-1),
        "corrector_steps",
    ),
    api(
        "sample:ancestral-variance=nope",
        lambda _: _sample(method="ancestral", steps=3, variance="nope"),
        "nope",
    ),
    api(
        "sample:edm_sde-churn=-1", lambda _: _sample(method="edm_sde", steps=3, churn=-1.0), "churn"
    ),
    api("sample:dpmpp_2s-r=1.5", lambda _: _sample(method="dpmpp_2s", steps=3, r=1.5), "r"),
    api(
        "sample:dpm_adaptive-rtol=0",
        lambda _: _sample(method="dpm_adaptive", rtol=0.0),
        "rtol",
    ),
    api(
        "sample:classifier_scale=nan",
        lambda _: _sample(
            y=0,
            steps=3,
            classifier=lambda x, t: torch.zeros(x.shape[0], 2, dtype=x.dtype),
            classifier_scale=float("nan"),
        ),
        "classifier_scale",
    ),
    api(
        "sample:known-without-mask",
        lambda _: _sample(steps=3, known=torch.zeros(4, 2)),
        "mask",
    ),
    api(
        "sample:mask-not-bool",
        lambda _: _sample(steps=3, known=torch.zeros(4, 2), mask=torch.ones(4, 2)),
        "mask",
    ),
    api(
        "sample:inpaint=nope",
        lambda _: _sample(
            steps=3,
            known=torch.zeros(4, 2),
            mask=torch.ones(4, 2, dtype=torch.bool),
            inpaint="nope",
        ),
        "nope",
    ),
    api("sample:model-without-score", lambda _: sdegen.sample(object(), _sde(), (4, 2)), "model"),
    api("sample:sde=None", lambda _: sdegen.sample(_mix(), None, (4, 2), steps=3), "sde"),
    # ---- steps_for_nfe -------------------------------------------------------------------------
    api("steps_for_nfe:nfe=0", lambda _: _imp("sdegen.solvers.steps_for_nfe")("euler", 0), "nfe"),
    api(
        "steps_for_nfe:nfe=1.5",
        lambda _: _imp("sdegen.solvers.steps_for_nfe")("euler", 1.5),
        "nfe",
    ),
    api(
        "steps_for_nfe:nfe=7.5",
        lambda _: _imp("sdegen.solvers.steps_for_nfe")("euler", 7.5),
        "nfe",
    ),
    api(
        "steps_for_nfe:nfe=inf",
        lambda _: _imp("sdegen.solvers.steps_for_nfe")("euler", float("inf")),
        "nfe",
    ),
    api(
        "steps_for_nfe:method=nope",
        lambda _: _imp("sdegen.solvers.steps_for_nfe")("nope", 10),
        "nope",
    ),
    api(
        "steps_for_nfe:dopri5",
        lambda _: _imp("sdegen.solvers.steps_for_nfe")("dopri5", 10),
        "dopri5",
    ),
    api(
        "steps_for_nfe:pc-corrector_steps=-1",
        lambda _: _imp("sdegen.solvers.steps_for_nfe")("pc", 10, corrector_steps=-1),
        "corrector_steps",
    ),
    api(
        "steps_for_nfe:pc-corrector_steps='a'",
        lambda _: _imp("sdegen.solvers.steps_for_nfe")("pc", 10, corrector_steps="a"),
        "corrector_steps",
    ),
    api(
        "steps_for_nfe:unknown-option",
        lambda _: _imp("sdegen.solvers.steps_for_nfe")("euler", 10, bogus=1),
        "bogus",
    ),
    # ---- sdegen.log_likelihood -----------------------------------------------------------------
    api("log_likelihood:chunk=-1", lambda _: _ll(chunk=-1), "chunk"),
    api("log_likelihood:chunk=1.5", lambda _: _ll(chunk=1.5), "chunk"),
    api("log_likelihood:rtol=nan", lambda _: _ll(rtol=float("nan")), "rtol"),
    api("log_likelihood:rtol=-1", lambda _: _ll(rtol=-1.0), "rtol"),
    api("log_likelihood:atol=inf", lambda _: _ll(atol=float("inf")), "atol"),
    api("log_likelihood:probes=0", lambda _: _ll(trace="hutchinson", probes=0), "probes"),
    api("log_likelihood:probes=1.5", lambda _: _ll(trace="hutchinson", probes=1.5), "probes"),
    api("log_likelihood:trace=nope", lambda _: _ll(trace="nope"), "nope"),
    api("log_likelihood:noise=nope", lambda _: _ll(trace="hutchinson", noise="nope"), "nope"),
    api("log_likelihood:method=nope", lambda _: _ll(method="nope"), "nope"),
    api("log_likelihood:x-int64", lambda _: _ll(x=torch.zeros(4, 2, dtype=torch.long)), "x"),
    api("log_likelihood:x-empty", lambda _: _ll(x=torch.zeros(0, 2, dtype=torch.float64)), "x"),
    api("log_likelihood:x-nan", lambda _: _ll(x=_nan_x()), "x"),
    api("log_likelihood:x-1-D", lambda _: _ll(x=torch.zeros(4, dtype=torch.float64)), "x"),
    api("log_likelihood:x-list", lambda _: _ll(x=[[0.0, 0.0]]), "x"),
    api("log_likelihood:x-wrong-dim", lambda _: _ll(x=_x(4, 3)), ("x", "shape")),
    # ---- ScoreModel ----------------------------------------------------------------------------
    api("ScoreModel:net=None", lambda _: sdegen.ScoreModel(None, _sde(), "eps"), "net"),
    api("ScoreModel:net='abc'", lambda _: sdegen.ScoreModel("abc", _sde(), "eps"), "net"),
    api("ScoreModel:sde='vp'", lambda _: sdegen.ScoreModel(_net(), "vp"), "sde"),
    api("ScoreModel:sde=None", lambda _: sdegen.ScoreModel(_net(), None), "sde"),
    api(
        "ScoreModel:parametrization=nope",
        lambda _: sdegen.ScoreModel(_net(), _sde(), "nope"),
        "nope",
    ),
    api(
        "ScoreModel:sigma_data=-1",
        lambda _: sdegen.ScoreModel(_net(), _sde(), sigma_data=-1.0),
        "sigma_data",
    ),
    api(
        "ScoreModel:sigma_data=nan",
        lambda _: sdegen.ScoreModel(_net(), _sde(), sigma_data=float("nan")),
        "sigma_data",
    ),
    api(
        "ScoreModel:time_input=nope",
        lambda _: sdegen.ScoreModel(_net(), _sde(), time_input="nope"),
        "nope",
    ),
    api(
        "ScoreModel:time_input=5",
        lambda _: sdegen.ScoreModel(_net(), _sde(), time_input=5),
        "time_input",
    ),
    # ---- score / denoise / eps -----------------------------------------------------------------
    api(
        "ScoreModel.score:x-int64",
        lambda _: _model().score(torch.zeros(4, 2, dtype=torch.long), 0.5),
        _about_x_dtype,
    ),
    api(
        "ScoreModel.denoise:x-int64",
        lambda _: _model().denoise(torch.zeros(4, 2, dtype=torch.long), torch.full((4,), 0.5)),
        _about_x_dtype,
    ),
    api(
        "mixture.eps:x-int64",
        lambda _: _mix().eps(torch.zeros(4, 2, dtype=torch.long), torch.full((4,), 0.5)),
        _about_x_dtype,
    ),
    api(
        "mixture.score:x-int64",
        lambda _: _mix().score(torch.ones(4, 2, dtype=torch.int32), 0.5),
        _about_x_dtype,
    ),
    api(
        "ScoreModel.score:t-shape-(3,)", lambda _: _model().score(_x(), torch.full((3,), 0.5)), "t"
    ),
    api(
        "ScoreModel.score:t-shape-(4,1)",
        lambda _: _model().score(_x(), torch.full((4, 1), 0.5)),
        "t",
    ),
    api("ScoreModel.score:t=2>T", lambda _: _model().score(_x(), torch.full((4,), 2.0)), "t"),
    api("ScoreModel.eps:t=0<t_min", lambda _: _model().eps(_x(), torch.zeros(4)), "t"),
    api("mixture.score:t=nan", lambda _: _mix().score(_x(), float("nan")), "t"),
    api("mixture.denoise:t=-1", lambda _: _mix().denoise(_x(), -1.0), "t"),
    api("mixture.score:t='0.5'", lambda _: _mix().score(_x(), "0.5"), "t"),
    api("ScoreModel.score:x-1-D", lambda _: _model().score(torch.zeros(4), 0.5), "x"),
    api("ScoreModel.score:x-wrong-dim", lambda _: _model().score(_x(4, 3), 0.5), "x"),
    api(
        "ScoreModel.score:y-on-unconditional",
        lambda _: _model().score(_x(), 0.5, torch.zeros(4, dtype=torch.long)),
        ("y", "label"),
    ),
    api(
        "mixture.score:y=5-of-2",
        lambda _: _mix().score(_x(), 0.5, torch.full((4,), 5)),
        "5",
    ),
    api(
        "mixture.score:y-float",
        lambda _: _mix().score(_x(), 0.5, torch.zeros(4)),
        ("y", "label"),
    ),
    # ---- GaussianMixtureScore / GaussianScore --------------------------------------------------
    api(
        "GaussianMixtureScore:negative-weight",
        lambda _: sdegen.GaussianMixtureScore(
            [-0.3, 1.3], [[0.0, 0.0], [1.0, 1.0]], torch.stack([torch.eye(2)] * 2), _sde()
        ),
        "weights",
    ),
    api(
        "GaussianMixtureScore:non-PSD-cov",
        lambda _: sdegen.GaussianMixtureScore(
            [0.5, 0.5],
            [[0.0, 0.0], [1.0, 1.0]],
            torch.stack([torch.eye(2), -torch.eye(2)]),
            _sde(),
        ),
        "covs",
    ),
    api(
        "GaussianMixtureScore:non-symmetric-cov",
        lambda _: sdegen.GaussianMixtureScore(
            [1.0], [[0.0, 0.0]], torch.tensor([[[1.0, 0.5], [0.0, 1.0]]]), _sde()
        ),
        "covs",
    ),
    api(
        "GaussianMixtureScore:means-3-for-2-weights",
        lambda _: sdegen.GaussianMixtureScore(
            [0.5, 0.5], torch.zeros(3, 2), torch.stack([torch.eye(2)] * 2), _sde()
        ),
        "means",
    ),
    api(
        "GaussianMixtureScore:covs-3x3-for-2-D-means",
        lambda _: sdegen.GaussianMixtureScore(
            [0.5, 0.5], torch.zeros(2, 2), torch.stack([torch.eye(3)] * 2), _sde()
        ),
        "covs",
    ),
    api(
        "GaussianMixtureScore:weights-nan",
        lambda _: sdegen.GaussianMixtureScore(
            [float("nan"), 1.0], torch.zeros(2, 2), torch.stack([torch.eye(2)] * 2), _sde()
        ),
        "weights",
    ),
    api(
        "GaussianMixtureScore:weights-strings",
        lambda _: sdegen.GaussianMixtureScore(
            ["a", "b"], torch.zeros(2, 2), torch.stack([torch.eye(2)] * 2), _sde()
        ),
        "weights",
    ),
    api(
        "GaussianMixtureScore:sde=None",
        lambda _: sdegen.GaussianMixtureScore([1.0], torch.zeros(1, 2), torch.eye(2)[None], None),
        "sde",
    ),
    api(
        "GaussianMixtureScore:event_shape-mismatch",
        lambda _: sdegen.GaussianMixtureScore(
            [1.0], torch.zeros(1, 2), torch.eye(2)[None], _sde(), event_shape=(3,)
        ),
        "event_shape",
    ),
    api(
        "GaussianScore:cov-shape",
        lambda _: sdegen.GaussianScore(torch.zeros(2), torch.eye(3), _sde()),
        "cov",
    ),
    # ---- SDEs ----------------------------------------------------------------------------------
    api("VPSDE:beta_min=-1", lambda _: sdegen.VPSDE(beta_min=-1.0), "beta_min"),
    api("VPSDE:beta_min=nan", lambda _: sdegen.VPSDE(beta_min=float("nan")), "beta_min"),
    api("VPSDE:beta_max=inf", lambda _: sdegen.VPSDE(beta_max=float("inf")), "beta_max"),
    api("VPSDE:beta_min>beta_max", lambda _: sdegen.VPSDE(beta_min=5.0, beta_max=1.0), "beta_min"),
    api("VPSDE:beta_min='a'", lambda _: sdegen.VPSDE(beta_min="a"), "beta_min"),
    api("VPSDE:schedule=nope", lambda _: sdegen.VPSDE("nope"), "nope"),
    api("VPSDE:t_min=-1", lambda _: sdegen.VPSDE(t_min=-1.0), "t_min"),
    api("VPSDE:T=0", lambda _: sdegen.VPSDE(T=0.0), "T"),
    api("VPSDE:t_min>T", lambda _: sdegen.VPSDE(t_min=0.5, T=0.1), "t_min"),
    api("VPSDE:t_min=nan", lambda _: sdegen.VPSDE(t_min=float("nan")), "t_min"),
    api("VPSDE:cosine-s=-1", lambda _: sdegen.VPSDE("cosine", cosine_s=-1.0), ("s", "cosine_s")),
    api("VPSDE:cosine-T=1.5", lambda _: sdegen.VPSDE("cosine", T=1.5), "T"),
    api("SubVPSDE:beta_max=nan", lambda _: sdegen.SubVPSDE(beta_max=float("nan")), "beta_max"),
    api(
        "VESDE:sigma_min>sigma_max",
        lambda _: sdegen.VESDE(sigma_min=10.0, sigma_max=1.0),
        "sigma_min",
    ),
    api("VESDE:sigma_min=0", lambda _: sdegen.VESDE(sigma_min=0.0), "sigma_min"),
    api("VESDE:sigma_max=nan", lambda _: sdegen.VESDE(sigma_max=float("nan")), "sigma_max"),
    api("EDMSDE:sigma_min=-1", lambda _: sdegen.EDMSDE(sigma_min=-1.0), "sigma_min"),
    api("VPSDE.from_betas:beta>1", lambda _: sdegen.VPSDE.from_betas([0.1, 1.5]), "betas"),
    api("VPSDE.from_betas:one-beta", lambda _: sdegen.VPSDE.from_betas([0.1]), "betas"),
    api("ddpm_betas:n=1", lambda _: _imp("sdegen.sde.ddpm_betas")(1), "n"),
    api("ddpm_betas:n=2.5", lambda _: _imp("sdegen.sde.ddpm_betas")(2.5), "n"),
    api(
        "ddpm_betas:beta_start=-0.1",
        lambda _: _imp("sdegen.sde.ddpm_betas")(10, beta_start=-0.1),
        "beta_start",
    ),
    api(
        "LinearSDE:alpha=None",
        lambda _: sdegen.LinearSDE(None, lambda t: t, t_min=1e-3, T=1.0),
        "alpha",
    ),
    api(
        "LinearSDE:prior_std=-1",
        lambda _: sdegen.LinearSDE(
            lambda t: 1 - t, lambda t: t, t_min=1e-3, T=0.999, prior_std=-1.0
        ),
        "prior_std",
    ),
    api(
        "LinearSDE:increasing-log-SNR",
        lambda _: sdegen.LinearSDE(lambda t: t, lambda t: 1 - t, t_min=1e-3, T=0.999),
        "log-SNR",
    ),
    api("rectified_flow:T=1", lambda _: sdegen.rectified_flow(T=1.0), ("T", "alpha")),
    api("sde.alpha:t=2", lambda _: _sde().alpha(torch.full((4,), 2.0)), "t"),
    api("sde.alpha:t-float", lambda _: _sde().alpha(0.5), "t"),
    api(
        "sde.t_of_half_log_snr:nan",
        lambda _: _sde().t_of_half_log_snr(torch.tensor([float("nan")])),
        "lam",
    ),
    api(
        "sde.marginal:t-batch-mismatch",
        lambda _: _sde().marginal(_x(), torch.full((3,), 0.5)),
        "t",
    ),
    api(
        "sde.perturb:noise-shape",
        lambda _: _sde().perturb(_x(), torch.full((4,), 0.5), _x(4, 3)),
        "noise",
    ),
    api("sde.prior_sample:shape=(4,-2)", lambda _: _sde().prior_sample((4, -2)), "shape"),
    # ---- networks ------------------------------------------------------------------------------
    api("MLP:dim=0", lambda _: _net(0), "dim"),
    api("MLP:hidden=-3", lambda _: _net(hidden=-3), "hidden"),
    api("MLP:embed_dim=3", lambda _: _net(embed_dim=3), "embed_dim"),
    api("MLP:embedding=nope", lambda _: _net(embedding="nope"), "nope"),
    api("MLP:num_classes=0", lambda _: _net(num_classes=0), "num_classes"),
    api(
        "UNet:channels=0",
        lambda _: _imp("sdegen.models.UNet")(in_channels=1, channels=0),
        "channels",
    ),
    api(
        "UNet:groups-not-dividing",
        lambda _: _imp("sdegen.models.UNet")(in_channels=1, channels=8, groups=3),
        "groups",
    ),
    # ---- losses and objectives -----------------------------------------------------------------
    api(
        "dsm_loss:weighting=nope",
        lambda _: _imp("sdegen.training.dsm_loss")(_model(), _x(), weighting="nope"),
        "nope",
    ),
    api(
        "dsm_loss:x0-nan",
        lambda _: _imp("sdegen.training.dsm_loss")(_model(), _nan_x()),
        "x0",
    ),
    api(
        "dsm_loss:t-shape",
        lambda _: _imp("sdegen.training.dsm_loss")(_model(), _x(), t=torch.full((3,), 0.5)),
        "t",
    ),
    api(
        "dsm_loss:importance-sampling-simple",
        lambda _: _imp("sdegen.training.dsm_loss")(_model(), _x(), importance_sampling=True),
        "importance_sampling",
    ),
    api(
        "score_matching:weighting=nope",
        lambda _: _imp("sdegen.training.score_matching")("nope"),
        "nope",
    ),
    api(
        "score_matching:p_uncond=2",
        lambda _: _imp("sdegen.training.score_matching")(p_uncond=2.0),
        "p_uncond",
    ),
    api(
        "score_matching:bin_width=-1",
        lambda _: _imp("sdegen.training.score_matching")(bin_width=-1.0),
        "bin_width",
    ),
    # ---- Trainer -------------------------------------------------------------------------------
    api("Trainer:data-1-D", lambda _: _trainer(data=torch.randn(64)), "data"),
    api("Trainer:data-list", lambda _: _trainer(data=[[0.0, 0.0]] * 64), "data"),
    api(
        "Trainer:data-int64", lambda _: _trainer(data=torch.zeros(64, 2, dtype=torch.long)), "data"
    ),
    api("Trainer:data-nan", lambda _: _trainer(data=torch.full((64, 2), float("nan"))), "data"),
    api("Trainer:batch_size=-4", lambda _: _trainer(batch_size=-4), "batch_size"),
    api("Trainer:batch_size=0", lambda _: _trainer(batch_size=0), "batch_size"),
    api("Trainer:batch_size=16.0", lambda _: _trainer(batch_size=16.0), "batch_size"),
    api("Trainer:batch_size>data", lambda _: _trainer(batch_size=128), "batch_size"),
    api("Trainer:warmup=-1", lambda _: _trainer(warmup=-1), "warmup"),
    api("Trainer:warmup=1.5", lambda _: _trainer(warmup=1.5), "warmup"),
    api("Trainer:grad_clip=-1", lambda _: _trainer(grad_clip=-1.0), "grad_clip"),
    api("Trainer:grad_clip=0", lambda _: _trainer(grad_clip=0.0), "grad_clip"),
    api("Trainer:grad_clip=nan", lambda _: _trainer(grad_clip=float("nan")), "grad_clip"),
    api("Trainer:ema_decay=nan", lambda _: _trainer(ema_decay=float("nan")), "ema_decay"),
    api("Trainer:ema_decay=1.5", lambda _: _trainer(ema_decay=1.5), "ema_decay"),
    api("Trainer:ema_decay=-0.5", lambda _: _trainer(ema_decay=-0.5), "ema_decay"),
    api("Trainer:log_every=0", lambda _: _trainer(log_every=0), "log_every"),
    api("Trainer:log_every=-1", lambda _: _trainer(log_every=-1), "log_every"),
    api("Trainer:ckpt_every=-1", lambda t: _trainer(ckpt_every=-1, run_dir=t / "r"), "ckpt_every"),
    api("Trainer:eval_every=-1", lambda _: _trainer(eval_every=-1), "eval_every"),
    api("Trainer:lr=nan", lambda _: _trainer(lr=float("nan")), "lr"),
    api("Trainer:lr=0", lambda _: _trainer(lr=0.0), "lr"),
    api("Trainer:weight_decay=-1", lambda _: _trainer(weight_decay=-1.0), "weight_decay"),
    api("Trainer:seed='abc'", lambda _: _trainer(seed="abc"), "seed"),
    api("Trainer:device=nope", lambda _: _trainer(device="nope"), "nope"),
    api("Trainer:objective-not-callable", lambda _: _trainer(objective="dsm"), "objective"),
    api(
        "Trainer:labels-wrong-shape",
        lambda _: _trainer(labels=torch.zeros(10, dtype=torch.long)),
        "labels",
    ),
    api("Trainer:run_dir-under-a-file", lambda t: _trainer(run_dir=_afile(t) / "x"), "run_dir"),
    api("Trainer.fit:steps=-1", lambda _: _trainer(fit=-1), "steps"),
    api("Trainer.fit:steps=2.5", lambda _: _trainer(fit=2.5), "steps"),
    api("Trainer.fit:steps='3'", lambda _: _trainer(fit="3"), "steps"),
    # ---- checkpoints ---------------------------------------------------------------------------
    api(
        "save_checkpoint:step=-1",
        lambda t: _imp("sdegen.training.save_checkpoint")(t / "r", -1, _net()),
        "step",
    ),
    api(
        "save_checkpoint:step=1.5",
        lambda t: _imp("sdegen.training.save_checkpoint")(t / "r", 1.5, _net()),
        "step",
    ),
    api(
        "save_checkpoint:step='3'",
        lambda t: _imp("sdegen.training.save_checkpoint")(t / "r", "3", _net()),
        "step",
    ),
    api(
        "save_checkpoint:keep=0",
        lambda t: _imp("sdegen.training.save_checkpoint")(t / "r", 1, _net(), keep=0),
        "keep",
    ),
    api(
        "save_checkpoint:model='abc'",
        lambda t: _imp("sdegen.training.save_checkpoint")(t / "r", 1, "abc"),
        "model",
    ),
    api(
        "save_checkpoint:run_dir-under-a-file",
        lambda t: _imp("sdegen.training.save_checkpoint")(_afile(t) / "x", 1, _net()),
        "afile",
        allowed=E + (NotADirectoryError, FileExistsError),
    ),
    api("load_checkpoint:state.json={}", lambda t: _load(t, "{}"), ("state.json", "step")),
    api("load_checkpoint:state.json=[]", lambda t: _load(t, "[]"), "state.json"),
    api(
        "load_checkpoint:state.json-step='x'",
        lambda t: _load(t, '{"step": "x"}'),
        "step",
    ),
    api(
        "load_checkpoint:state.json-step=-5",
        lambda t: _load(t, '{"step": -5}'),
        "step",
    ),
    api("load_checkpoint:state.json-corrupt", lambda t: _load(t, "{oops"), "state.json"),
    api(
        "load_checkpoint:missing-folder",
        lambda t: _imp("sdegen.training.load_checkpoint")(t / "none", _net()),
        "none",
        allowed=F,
    ),
    api(
        "load_checkpoint:other-architecture",
        lambda t: _imp("sdegen.training.load_checkpoint")(_checkpoint(t), _net(hidden=16)),
        "checkpoint",
    ),
    api(
        "latest_checkpoint:pointer-../other",
        lambda t: _latest(t, "../other/ckpt-x"),
        ("latest", "../other"),
    ),
    api(
        "latest_checkpoint:pointer-absolute",
        lambda t: _latest(t, "{other}/ckpt-x"),
        ("latest", "other"),
    ),
    # ---- metrics -------------------------------------------------------------------------------
    api(
        "frechet_distance:dim-mismatch",
        lambda _: _imp("sdegen.metrics.frechet_distance")(
            torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(3)
        ),
        "mean2",
    ),
    api(
        "frechet_distance:cov-not-PSD",
        lambda _: _imp("sdegen.metrics.frechet_distance")(
            torch.zeros(2), -torch.eye(2), torch.zeros(2), torch.eye(2)
        ),
        "cov1",
    ),
    api(
        "frechet_distance:nan",
        lambda _: _imp("sdegen.metrics.frechet_distance")(
            torch.full((2,), float("nan")), torch.eye(2), torch.zeros(2), torch.eye(2)
        ),
        "mean1",
    ),
    api(
        "frechet_distance_from_samples:one-sample",
        lambda _: _imp("sdegen.metrics.frechet_distance_from_samples")(_x(1, 2), _x(10, 2)),
        "x",
    ),
    api("fid:dim-mismatch", lambda _: _imp("sdegen.metrics.fid")(_x(10, 2), _x(10, 3)), "shape"),
    api("fid:one-sample", lambda _: _imp("sdegen.metrics.fid")(_x(1, 2), _x(10, 2)), "x"),
    api("fid:nan", lambda _: _imp("sdegen.metrics.fid")(_nan_x(), _x(10, 2)), "x"),
    api(
        "fid:features=nope",
        lambda _: _imp("sdegen.metrics.fid")(_x(), _x(), features="nope"),
        "nope",
    ),
    api(
        "kid:dim-mismatch",
        lambda _: _imp("sdegen.metrics.kid")(_x(10, 2), _x(10, 3)),
        ("shape", "features"),
    ),
    api(
        "kid:one-sample",
        lambda _: _imp("sdegen.metrics.kid")(_x(1, 2), _x(10, 2)),
        ("subset_size", "x"),
    ),
    api("kid:nan", lambda _: _imp("sdegen.metrics.kid")(_nan_x(), _x(10, 2)), "x"),
    api(
        "kid:subsets=0",
        lambda _: _imp("sdegen.metrics.kid")(_x(10, 2), _x(10, 2), subsets=0),
        "subsets",
    ),
    api(
        "sliced_wasserstein:dim-mismatch",
        lambda _: _imp("sdegen.metrics.sliced_wasserstein")(_x(10, 2), _x(10, 3)),
        "shape",
    ),
    api(
        "sliced_wasserstein:empty",
        lambda _: _imp("sdegen.metrics.sliced_wasserstein")(_x(0, 2), _x(10, 2)),
        "x",
    ),
    api(
        "sliced_wasserstein:nan",
        lambda _: _imp("sdegen.metrics.sliced_wasserstein")(_nan_x(), _x(10, 2)),
        "x",
    ),
    api(
        "sliced_wasserstein:projections=0",
        lambda _: _imp("sdegen.metrics.sliced_wasserstein")(_x(), _x(), projections=0),
        "projections",
    ),
    api(
        "sliced_wasserstein:p=0",
        lambda _: _imp("sdegen.metrics.sliced_wasserstein")(_x(), _x(), p=0),
        "p",
    ),
    api(
        "gaussian_moments:one-sample",
        lambda _: _imp("sdegen.metrics.gaussian_moments")(_x(1, 2)),
        "x",
    ),
    # ---- data ----------------------------------------------------------------------------------
    api("toy_sample:name=nope", lambda _: _imp("sdegen.data.toy_sample")("nope", 10), "nope"),
    api("toy_sample:n=-1", lambda _: _imp("sdegen.data.toy_sample")("moons", -1), "n"),
    api("toy_sample:n=0", lambda _: _imp("sdegen.data.toy_sample")("moons", 0), "n"),
    api("toy_sample:n=2.5", lambda _: _imp("sdegen.data.toy_sample")("moons", 2.5), "n"),
    api(
        "toy_sample:dtype=int64",
        lambda _: _imp("sdegen.data.toy_sample")("moons", 10, dtype=torch.int64),
        "dtype",
    ),
    api(
        "toy_log_prob:x-(4,3)",
        lambda _: _imp("sdegen.data.toy_log_prob")("8gaussians", _x(4, 3)),
        "x",
    ),
    api(
        "load_mnist:missing-folder",
        lambda t: _imp("sdegen.data.load_mnist")(t / "no-such-dir"),
        "no-such-dir",
        allowed=F,
    ),
    api(
        "load_mnist:split=nope",
        lambda t: _imp("sdegen.data.load_mnist")(t, "nope"),
        "nope",
    ),
    api(
        "load_mnist:corrupt-idx",
        lambda t: _imp("sdegen.data.load_mnist")(_fake_mnist(t)),
        "train-images-idx3-ubyte",
        allowed=F,
    ),
    api(
        "load_cifar10:missing-folder",
        lambda t: _imp("sdegen.data.load_cifar10")(t / "no-such-dir"),
        "no-such-dir",
        allowed=F,
    ),
    api("load_digits:split=nope", lambda _: _imp("sdegen.data.load_digits")("nope"), "nope"),
    api("dequantize:bin_width=0", lambda _: _imp("sdegen.data.dequantize")(_x(), 0.0), "bin_width"),
    api(
        "dequantize:bin_width=-1", lambda _: _imp("sdegen.data.dequantize")(_x(), -1.0), "bin_width"
    ),
    api(
        "dequantize:bin_width=nan",
        lambda _: _imp("sdegen.data.dequantize")(_x(), float("nan")),
        "bin_width",
    ),
    api(
        "dequantize:x-int64",
        lambda _: _imp("sdegen.data.dequantize")(torch.zeros(4, 2, dtype=torch.long), 0.1),
        "x",
    ),
    api("bin_width:levels=1", lambda _: _imp("sdegen.data.bin_width")(1), "levels"),
    api(
        "to_centres:float-levels",
        lambda _: _imp("sdegen.data.to_centres")(torch.zeros(3), 4),
        "k",
    ),
    api(
        "bits_per_dim:num_dims=0",
        lambda _: sdegen.bits_per_dim(torch.zeros(3), 0, 0.1),
        "num_dims",
    ),
    api(
        "bits_per_dim:bin_width=-1",
        lambda _: sdegen.bits_per_dim(torch.zeros(3), 2, -1.0),
        "bin_width",
    ),
    # ---- grid tuning ---------------------------------------------------------------------------
    api(
        "tune_schedule:steps=0",
        lambda _: _imp("sdegen.solvers.tune_schedule")(_mix(), _sde(), (8, 2), 0),
        "steps",
    ),
    api(
        "tune_schedule:order=0",
        lambda _: _imp("sdegen.solvers.tune_schedule")(_mix(), _sde(), (8, 2), 5, order=0),
        "order",
    ),
    api(
        "tune_schedule:floor=-1",
        lambda _: _imp("sdegen.solvers.tune_schedule")(_mix(), _sde(), (8, 2), 5, floor=-1.0),
        "floor",
    ),
    api(
        "optimise_schedule:method=dopri5",
        lambda _: _imp("sdegen.solvers.optimise_schedule")(_mix(), _sde(), (8, 2), "dopri5", 5),
        "method",
    ),
    api(
        "get_schedule:steps=0",
        lambda _: _imp("sdegen.solvers.get_schedule")(_sde(), "karras", 0),
        "steps",
    ),
    api("optimise_schedule:max_trials=0", lambda _: _optimise(max_trials=0), "max_trials"),
    api(
        "optimise_schedule:start-of-1-step-for-3",
        lambda _: _optimise(start=torch.tensor([1.0, 1e-3])),
        "start",
    ),
    api(
        "optimise_schedule:reference_tol=0",
        lambda _: _optimise(reference_tol=0.0),
        "reference_tol",
    ),
    # ---- found by a fuzz of the Python API (these hung, failed deep inside, or were accepted) --
    api(
        "sample:sde-not-the-model's",
        lambda _: sdegen.sample(_mix(), sdegen.VESDE(), (4, 2), steps=3),
        "model.sde",
    ),
    api(
        "log_likelihood:sde-not-the-model's",
        lambda _: sdegen.log_likelihood(_mix(), sdegen.EDMSDE(), _x()),
        "model.sde",
    ),
    api(
        "sample:dpm_adaptive-safety=5",
        lambda _: _sample(method="dpm_adaptive", safety=5.0),
        "safety",
    ),
    api(
        "sample:dpm_adaptive-rtol=1e-12-float32",
        lambda _: _sample(method="dpm_adaptive", rtol=1e-12, atol=1e-12),
        "rtol",
    ),
    api(
        "sample:dopri5-rtol=1e-12-float32",
        lambda _: _sample(method="dopri5", rtol=1e-12, atol=1e-12),
        "rtol",
    ),
    api("log_likelihood:safety=5", lambda _: _ll(options={"safety": 5.0}), "safety"),
    api(
        "log_likelihood:fac_min>fac_max",
        lambda _: _ll(options={"fac_min": 5.0, "fac_max": 0.1}),
        "fac_min",
    ),
    api("log_likelihood:beta=nan", lambda _: _ll(options={"beta": float("nan")}), "beta"),
    api(
        "log_likelihood:differentiable='yes'", lambda _: _ll(differentiable="yes"), "differentiable"
    ),
    api("sample:eta='0'", lambda _: _sample(method="ddim", eta="0", steps=3), "eta"),
    api("sample:eta=True", lambda _: _sample(method="ddim", eta=True, steps=3), "eta"),
    api("sample:guidance=True", lambda _: _sample(y=0, guidance=True, steps=3), "guidance"),
    api(
        "sample:t_start='0.5'",
        lambda _: _sample(x_init=_x().float(), t_start="0.5", steps=3),
        "t_start",
    ),
    api(
        "sample:denoise_final='no'", lambda _: _sample(denoise_final="no", steps=3), "denoise_final"
    ),
    api(
        "sample:return_trajectory='yes'",
        lambda _: _sample(return_trajectory="yes", steps=3),
        "return_trajectory",
    ),
    api(
        "sample:lower_order_final='x'",
        lambda _: _sample(method="dpmpp_2m", lower_order_final="x", steps=3),
        "lower_order_final",
    ),
    api("VPSDE:beta_min=True", lambda _: sdegen.VPSDE(beta_min=True), "beta_min"),
    api("EDMSDE:sigma_min='0.002'", lambda _: sdegen.EDMSDE("0.002", 80.0), "sigma_min"),
    api("Trainer:progress='no'", lambda _: _trainer(progress="no"), "progress"),
    api(
        "sample:dpm_2_ancestral-eta=1.5",
        lambda _: _sample(method="dpm_2_ancestral", eta=1.5, steps=3),
        "eta",
    ),
    api(
        "sample:dpmpp_2s_ancestral-eta=5",
        lambda _: _sample(method="dpmpp_2s_ancestral", eta=5.0, steps=3),
        "eta",
    ),
    api(
        "sample:edm_sde-s_tmin>s_tmax",
        lambda _: _sample(method="edm_sde", s_tmin=10.0, s_tmax=1.0, steps=3),
        "s_tmin",
    ),
    api(
        "sample:ancestral-negative-variance",
        lambda _: _sample(
            method="ancestral", variance=lambda x, t, s: -torch.ones_like(x), steps=3
        ),
        "variance",
    ),
    api(
        "sample:ancestral-variance-of-wrong-shape",
        lambda _: _sample(method="ancestral", variance=lambda x, t, s: torch.ones(3), steps=3),
        "variance",
    ),
    api("sample:guidance=1e9-overflows", lambda _: _sample(y=0, guidance=1e9, steps=5), "guidance"),
    api(
        "sample:classifier-of-1-D-output",
        lambda _: _sample(y=0, classifier=lambda x, t: x.sum(1), steps=3),
        "classifier",
    ),
    api(
        "sample:classifier-without-gradient",
        lambda _: _sample(y=0, classifier=lambda x, t: torch.zeros(x.shape[0], 2), steps=3),
        "classifier",
    ),
    api(
        "sample:singular-operator",
        lambda _: _sample(
            operator=_imp("sdegen.solvers.inverse.Matrix")(torch.zeros(1, 2)),
            y_obs=torch.ones(1, 1),
            steps=3,
        ),
        "sigma_y",
    ),
    api(
        "KDiffusionModel:null_label>num_classes",
        lambda _: _imp("sdegen.models.adapters.KDiffusionModel")(
            torch.nn.Linear(2, 2), sdegen.EDMSDE(), num_classes=3, null_label=100
        ),
        "null_label",
    ),
    api(
        "dsm_loss:x0-int64",
        lambda _: _imp("sdegen.training.dsm_loss")(_model(), torch.zeros(16, 2, dtype=torch.long)),
        "x0",
    ),
    api(
        "dsm_loss:x0-empty",
        lambda _: _imp("sdegen.training.dsm_loss")(_model(), torch.zeros(0, 2)),
        "x0",
    ),
    api("dsm_loss:model=None", lambda _: _imp("sdegen.training.dsm_loss")(None, _x()), "model"),
    api(
        "dsm_loss:noise-nan",
        lambda _: _imp("sdegen.training.dsm_loss")(
            _model(), _x().float(), noise=torch.full((4, 2), float("nan"))
        ),
        "noise",
    ),
    api("sample_times:n=-1", lambda _: _imp("sdegen.training.sample_times")(_sde(), -1), "n"),
    api(
        "prior_sample:dtype=long", lambda _: _sde().prior_sample((4, 2), dtype=torch.long), "dtype"
    ),
    api("Trainer:eval_every-without-eval_fn", lambda _: _trainer(eval_every=1), "eval_fn"),
    api("Trainer:eval_fn=5", lambda _: _trainer(eval_fn=5, eval_every=1), "eval_fn"),
    api("Trainer:run_dir=5", lambda _: _trainer(run_dir=5), "run_dir"),
    api("Trainer:config-not-json", lambda _: _trainer(config={"a": object()}), "config"),
    api(
        "VPSDE.from_betas:T=2",
        lambda _: sdegen.VPSDE.from_betas(_imp("sdegen.sde.ddpm_betas")(20), T=2.0),
        "T must be <= 1",
    ),
    api(
        "FFJORD:options-bogus",
        lambda _: _imp("sdegen.models.flows.FFJORD")(2, options={"bogus": 1}),
        "bogus",
    ),
    api(
        "log_likelihood:torchdiffeq-options-bogus",
        lambda _: _ll(method="torchdiffeq:dopri5", options={"bogus": 1}),
        "bogus",
    ),
    api(
        "load_checkpoint:path=None",
        lambda _: _imp("sdegen.training.load_checkpoint")(None, _net()),
        "path",
    ),
    api(
        "load_checkpoint:model=None",
        lambda tmp: _imp("sdegen.training.load_checkpoint")(_checkpoint(tmp), None),
        "model",
    ),
    api(
        "load_checkpoint:optimizer-layout-x",
        lambda tmp: _load_bad_optimizer(tmp, {"x": "tensor"}),
        "corrupt",
    ),
    api(
        "load_checkpoint:optimizer-layout-a.b",
        lambda tmp: _load_bad_optimizer(tmp, {"state.a.b": "tensor"}),
        "corrupt",
    ),
    api(
        "fid:complex",
        lambda _: _imp("sdegen.metrics.fid")(
            torch.randn(8, 2, dtype=torch.complex64), torch.randn(8, 2)
        ),
        "x",
    ),
    api(
        "polynomial_mmd2:one-sample",
        lambda _: _imp("sdegen.metrics.polynomial_mmd2")(torch.randn(1, 3), torch.randn(1, 3)),
        "2 samples",
    ),
    api(
        "dequantize:uniform-outside-[0,1)",
        lambda _: _imp("sdegen.data.dequantize")(
            _x(3, 2), 0.1, uniform=torch.full((3, 2), 5.0, dtype=torch.float64)
        ),
        "uniform",
    ),
    api(
        "langevin:nan-score",
        lambda _: _imp("sdegen.solvers.langevin")(
            lambda x: x * float("nan"), torch.zeros(4, 1), 0.1, 2
        ),
        "NaN",
    ),
    api(
        "langevin:mala-nan-log_prob",
        lambda _: _imp("sdegen.solvers.langevin")(
            lambda x: -x,
            torch.zeros(4, 1),
            0.1,
            2,
            metropolis=True,
            log_prob=lambda x: x.sum(1) * float("nan"),
        ),
        "log_prob",
    ),
    api(
        "ScoreSDEModel:time_input-of-wrong-shape",
        lambda _: sdegen.sample(
            _imp("sdegen.models.adapters.ScoreSDEModel")(
                _net(), _sde(), "eps", time_input=lambda t: t[:2]
            ),
            _sde(),
            (4, 2),
            steps=2,
        ),
        "time_input",
    ),
    api(
        "AnalyticDPMVariance.fit:increasing-ts",
        lambda _: _imp("sdegen.solvers.AnalyticDPMVariance").fit(
            _model(), _sde(), _x().float(), torch.tensor([0.1, 0.5, 1.0])
        ),
        "ts",
    ),
    api(
        "Trainer:objective-returns-a-float",
        lambda _: _trainer(objective=lambda m, x, r: 1.0),
        "objective",
    ),
    api(
        "Trainer:objective-returns-per-example",
        lambda _: _trainer(
            objective=lambda m, x, r: m.eps(x, torch.full((x.shape[0],), 0.5)).sum(1)
        ),
        "objective",
    ),
    api(
        "Trainer:objective-without-gradient",
        lambda _: _trainer(objective=lambda m, x, r: torch.zeros(())),
        "gradient",
    ),
    api(
        "LinearSDE:alpha-returns-a-float",
        lambda _: sdegen.LinearSDE(lambda t: 1.0, lambda t: t, t_min=1e-3, T=0.9),
        "alpha",
    ),
]


def _afile(tmp: Path) -> Path:
    p = tmp / "afile"
    p.write_text("an ordinary file\n")
    return p


@pytest.mark.parametrize("call, match, allowed", API_ROWS)
def test_api_refuses(call, match, allowed, tmp_path):
    try:
        with deadline(API_DEADLINE):
            result = call(tmp_path)
    except Hung as e:
        pytest.fail(f"OUTCOME: hung ({e})")
    except allowed as e:
        message = str(e)
        if not message.strip() or not _names(message, match):
            pytest.fail(
                f"OUTCOME: {type(e).__name__}: {_first_line(message)!r} does not name {match!r}"
            )
        return
    except Exception as e:
        pytest.fail(f"OUTCOME: {type(e).__name__}: {_first_line(str(e))}")
    shown = repr(result)
    pytest.fail(f"OUTCOME: accepted silently (returned {shown[:80]})")


def test_steps_for_nfe_is_not_linear_in_the_budget():
    """A budget of 10^8 evaluations is answered at once (the old loop took 10 s), and right:
    Euler with the final denoising step counted fits 10^8 - 1 steps."""
    from sdegen.solvers import steps_for_nfe

    assert steps_for_nfe("euler", 10**8) == 10**8 - 1
    assert steps_for_nfe("heun", 10**8) == 10**8 // 2  # (2 N - 1) + 1 <= 10^8


# --------------------------------------------------------------------------- fuzzing train configs

# Base values of the tiny run: n_train 256, batch_size 64. Every value below is invalid for its
# key whatever the other keys hold (by construction: no filtering by catching errors).
_WRONG_TYPE_FOR_INT = ["abc", "1.5", "[1, 2]", "{a: 1}", "nan", "inf", "true", "null", "-2.5"]
_WRONG_TYPE_FOR_FLOAT = ["abc", "[1, 2]", "{a: 1}", "true"]
_WRONG_TYPE_FOR_STR = ["5", "1.5", "[vp]", "{a: 1}", "true", "null"]
_WRONG_TYPE_FOR_DICT = ["5", "abc", "[1, 2]", "true", "1.5"]

_INVALID: dict[str, list[str]] = {
    "data": [
        "nope",
        "toy:nope",
        "toy:",
        "mnist:/no/such/dir",
        "cifar10:/no/such/dir",
        "mnist:",
        *_WRONG_TYPE_FOR_STR,
    ],
    "n_train": ["0", "-1", "-100", "8", *_WRONG_TYPE_FOR_INT],  # 8 < batch_size 64
    "sde": ["nope", "VP", "", *_WRONG_TYPE_FOR_STR],
    "sde_params": [
        "{nope: 1}",
        "{beta_min: -1}",
        "{beta_max: nan}",
        "{beta_min: abc}",
        *_WRONG_TYPE_FOR_DICT,
    ],
    "parametrization": ["nope", "EPS", "", *_WRONG_TYPE_FOR_STR],
    "network": ["nope", "unet", "", *_WRONG_TYPE_FOR_STR],  # unet: the data are vectors
    "network_params": [
        "{nope: 1}",
        "{hidden: -3}",
        "{hidden: abc}",
        "{hidden: [}",
        "{depth: 0}",
        *_WRONG_TYPE_FOR_DICT,
    ],
    "weighting": ["nope", "", *_WRONG_TYPE_FOR_STR],
    "objective": ["nope", "", "DSM", "vlb", *_WRONG_TYPE_FOR_STR],  # vlb: the run's sde is vp
    "time_sampling": ["nope", "", "grid", "discrete", *_WRONG_TYPE_FOR_STR],  # idem
    "recipe": ["nope", "", "AUTO", "edm", *_WRONG_TYPE_FOR_STR],
    "sigma_data": ["0", "-0.5", "nan", "inf", "-inf", *_WRONG_TYPE_FOR_FLOAT],
    "p_mean": ["nan", "inf", "-inf", "null", *_WRONG_TYPE_FOR_FLOAT],
    "p_std": ["0", "-1.2", "nan", "inf", "null", *_WRONG_TYPE_FOR_FLOAT],
    "conditional": ["maybe", "2", "[true]", "null", "abc", "1.5"],
    # true: the run's sde is vp, not on DDPM's grid
    "learned_variance": ["maybe", "2", "[true]", "null", "abc", "1.5", "true"],
    # true: the run's data are toy points, which have no labels to caption
    "text": ["maybe", "2", "[true]", "null", "abc", "1.5", "true"],
    # kl: the run's data are toy points, not images
    "latent": ["nope", "", "KL", "kl", *_WRONG_TYPE_FOR_STR],
    "latent_params": ["{nope: 1}", "{hidden: abc}", *_WRONG_TYPE_FOR_DICT],
    "latent_steps": ["0", "-1", *_WRONG_TYPE_FOR_INT],
    "p_uncond": ["-0.5", "2", "1.5", "nan", "inf", "-inf", "1e30", "null", *_WRONG_TYPE_FOR_FLOAT],
    "steps": ["0", "-1", "-5", *_WRONG_TYPE_FOR_INT],
    "batch_size": ["0", "-4", "16.0", "1000000", *_WRONG_TYPE_FOR_INT],
    "lr": ["-1", "0", "nan", "inf", "-inf", "-1e-3", "null", *_WRONG_TYPE_FOR_FLOAT],
    "warmup": ["-1", "-10", *_WRONG_TYPE_FOR_INT],
    "grad_clip": ["-1", "0", "nan", "-inf", *_WRONG_TYPE_FOR_FLOAT],
    "ema_decay": ["nan", "1.5", "-0.1", "inf", "2", "1e30", *_WRONG_TYPE_FOR_FLOAT],
    "seed": ["1000000000000000000000000000000", *_WRONG_TYPE_FOR_INT],
    "device": [
        "nope",
        "tpu",
        "cuda:99",
        "cuda:-1",
        "",
        "5",
        "[cpu]",
        "null",
        *([] if MPS else ["mps"]),
        *([] if CUDA else ["cuda"]),
    ],
    "ckpt_every": ["-1", "-100", *_WRONG_TYPE_FOR_INT],
    "log_every": ["0", "-1", *_WRONG_TYPE_FOR_INT],
    "eval_every": ["-1", "-7", *_WRONG_TYPE_FOR_INT],
}
_KEYS = [f.name for f in dataclasses.fields(TrainConfig)]


def test_fuzz_table_covers_every_config_key():
    assert set(_INVALID) == set(_KEYS), "a TrainConfig key has no invalid values to fuzz"


_unknown_key = st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True).filter(lambda k: k not in _KEYS)
_bad_item = st.one_of(
    st.sampled_from(sorted(_INVALID)).flatmap(
        lambda k: st.tuples(st.just(k), st.sampled_from(_INVALID[k]))
    ),
    st.tuples(_unknown_key, st.sampled_from(["1", "abc", "{a: 1}"])),
)


def _mentions(message: str, key: str, text: str) -> bool:
    """The message names the key, a key inside a mapping value, or the value itself when that
    is more than a bare number (a message saying only "got 0" does not say which key)."""
    low = message.lower()
    names = [key, *re.findall(r"([A-Za-z_]+)\s*:", text)]
    value = text.strip()
    try:
        float(value)
    except ValueError:
        if len(value) >= 3:
            names.append(value)
    return any(n.lower() in low for n in names)


@settings(
    max_examples=40,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # no shrinking: bounded time
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(items=st.lists(_bad_item, min_size=1, max_size=2, unique_by=lambda kv: kv[0]))
def test_invalid_train_configs_are_refused_in_one_line(items):
    overrides = [a for key, text in items for a in ("--set", f"{key}={text}")]
    err, out = io.StringIO(), io.StringIO()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        raised = None
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                with deadline(CLI_DEADLINE):
                    code = main(["train", "--run", str(run), "--quiet", *TINY, *overrides])
            except SystemExit as e:
                code = e.code
            except Exception as e:
                code, raised = 1, e
        left_checkpoint = (run / "latest").exists()
    settings_ = " ".join(f"{k}={v}" for k, v in items)
    assert raised is None, (
        f"--set {settings_}: traceback {type(raised).__name__}: {_first_line(str(raised))}"
    )
    problems = cli_problems(code, err.getvalue(), lambda m: True, "run")
    lines = [s for s in err.getvalue().splitlines() if s.strip()]
    message = _ERROR_LINE_PREFIX.sub("", lines[-1]) if lines else ""
    if message and not any(_mentions(message, k, v) for k, v in items):
        problems.append("message names none of the keys or values")
    if left_checkpoint:
        problems.append("left a checkpoint")
    assert not problems, (
        f"--set {settings_}: exit {code}; stderr {_first_line(err.getvalue())!r}; "
        + "; ".join(problems)
    )


def test_numpy_grids_and_integers_are_taken_as_their_torch_and_python_values():
    """A grid as a NumPy array or a list, and a budget as a NumPy integer, give exactly the
    samples of the tensor grid and the int (the fuzz found both refused with a deep error)."""
    import numpy as np

    mix = _mix()
    grid = torch.tensor([mix.sde.T, 0.5, 0.1, mix.sde.t_min], dtype=torch.float64)

    def draw(**kw):
        return sdegen.sample(mix, mix.sde, (6, 2), generator=torch.Generator().manual_seed(0), **kw)

    want = draw(schedule=grid).x
    assert torch.equal(draw(schedule=grid.numpy()).x, want)
    assert torch.equal(draw(schedule=grid.tolist()).x, want)
    assert torch.equal(draw(nfe=np.int64(5)).x, draw(nfe=5).x)


def test_a_model_samples_with_its_sde_built_anew_or_on_a_shorter_range():
    """The model/SDE check compares alpha(t) and sigma(t), not objects: an equal SDE built anew,
    or the same SDE on another [t_min, T], samples as the model's own; another SDE, or guidance
    wrapped around the model, is compared through the wrapper."""
    mix = _mix()

    def draw(sde, **kw):
        g = torch.Generator().manual_seed(0)
        return sdegen.sample(mix, sde, (6, 2), steps=4, generator=g, **kw).x

    assert torch.equal(draw(sdegen.VPSDE()), draw(mix.sde))
    assert torch.isfinite(draw(sdegen.VPSDE(t_min=1e-4))).all()
    for other in (sdegen.VPSDE(beta_max=10.0), sdegen.SubVPSDE(), sdegen.VESDE()):
        with pytest.raises(
            ValueError, match=f"built for VPSDE, but the sde given is {type(other).__name__}"
        ):
            draw(other)
    with pytest.raises(ValueError, match="model.sde"):
        draw(sdegen.VESDE(), y=0, guidance=2.0)
