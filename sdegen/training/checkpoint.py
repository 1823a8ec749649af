"""Checkpoints as safetensors plus JSON, written atomically, loaded without unpickling.

A checkpoint is a folder `ckpt-{step:08d}/` (`-K` appended when a step is saved again) holding
    model.safetensors      the model's state dict
    ema.safetensors        the EMA weights (if any)
    optim.safetensors      the optimizer's tensors (Adam moments, step counts)
    state.json             step, the optimizer's param groups and tensor layout, extra metadata
and the file `latest` names the newest one. Each checkpoint is written into a temporary folder
that is renamed into place, and `latest` is replaced with os.replace, so a process killed at any
moment leaves the previous checkpoint intact and `latest` pointing to a complete one.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._utils import check_int

LATEST = "latest"
# ckpt-SSSSSSSS or ckpt-SSSSSSSS-K (a step saved again); anything else is not ours
_NAME = re.compile(r"ckpt-([0-9]{8,})(?:-([0-9]+))?")


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, layout = {}, {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            name = f"state.{pid}.{key}"
            if torch.is_tensor(value):
                tensors[name] = value.detach().contiguous().cpu()
                layout[name] = "tensor"
            else:
                layout[name] = value
    return tensors, {"param_groups": state["param_groups"], "layout": layout}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, kind in meta["layout"].items():
        _, pid, key = name.split(".", 2)
        value = tensors[name] if kind == "tensor" else kind
        state.setdefault(int(pid), {})[key] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    ema: torch.nn.Module | None = None,
    extra: dict | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` (an int >= 0) into run_dir atomically and point `latest` at it.

    Keeps the newest `keep` checkpoints. Returns the checkpoint folder.
    """
    check_int("step", step, 0)
    check_int("keep", keep, 1)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # Never overwrite: a second save of the same step gets a new name, so the folder `latest`
    # names is not touched until the pointer has moved to a complete replacement.
    final = run_dir / f"ckpt-{step:08d}"
    k = 0
    while final.exists():
        k += 1
        final = run_dir / f"ckpt-{step:08d}-{k}"
    tmp = _make_temporary_folder(run_dir, f".ckpt-{step:08d}-")
    try:
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()},
            tmp / "model.safetensors",
        )
        meta: dict[str, Any] = {"step": step, "extra": extra or {}}
        if ema is not None:
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in ema.state_dict().items()},
                tmp / "ema.safetensors",
            )
        if optimizer is not None:
            tensors, meta["optimizer"] = _flatten_optimizer(optimizer.state_dict())
            save_file(tensors, tmp / "optim.safetensors")
        (tmp / "state.json").write_text(json.dumps(meta, indent=1))
        for f in tmp.iterdir():  # data on disk before the rename makes it visible
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer = run_dir / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, run_dir / LATEST)
    ours = {p: o for p in run_dir.glob("ckpt-*") if (o := _order(p)) is not None and p.is_dir()}
    for old in sorted(ours, key=ours.__getitem__)[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    for stale in run_dir.glob(".ckpt-*"):  # temporaries of a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _make_temporary_folder(run_dir: Path, prefix: str) -> Path:
    # A plain mkdir, not tempfile.mkdtemp: mkdtemp's mode 0700 would survive the rename, and a
    # checkpoint folder should get the mode (umask, default ACLs) of any folder the user makes.
    while True:
        tmp = run_dir / f"{prefix}{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def _order(path: Path) -> tuple[int, int] | None:
    """(step, re-save index) of a checkpoint folder name ckpt-SSSSSSSS[-K]; None for any other
    name (a user's file or folder that happens to start with ckpt-)."""
    m = _NAME.fullmatch(path.name)
    if m is None:
        return None
    return int(m[1]), int(m[2] or 0)


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The folder `latest` points to, or None if the run has no checkpoint yet."""
    pointer = Path(run_dir) / LATEST
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace").strip()
    # Only a checkpoint name inside the run folder: never follow ../, absolute paths or links out.
    if _NAME.fullmatch(name) is None:
        raise ValueError(
            f"checkpoint pointer {pointer} holds {name!r}; expected the name of a checkpoint "
            "folder inside the run folder, ckpt-NNNNNNNN or ckpt-NNNNNNNN-K"
        )
    path = Path(run_dir) / name
    if not (path / "state.json").is_file():
        raise ValueError(
            f"checkpoint pointer {pointer} names {path}, which is not a complete "
            "checkpoint (no state.json)"
        )
    return path


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    ema: torch.nn.Module | None = None,
) -> dict:
    """Load a checkpoint folder into model (and optimizer, ema); returns its state.json dict."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a checkpoint folder (str or Path), got {path!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be the torch.nn.Module to load into, got {model!r}")
    path = Path(path)
    for name in ("state.json", "model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"checkpoint file missing: {path / name}")
    try:
        meta = _read_state(path)
        model.load_state_dict(load_file(path / "model.safetensors"))
        if ema is not None and (path / "ema.safetensors").is_file():
            ema.load_state_dict(load_file(path / "ema.safetensors"))
        if optimizer is not None and "optimizer" in meta:
            tensors = load_file(path / "optim.safetensors")
            optimizer.load_state_dict(_unflatten_optimizer(tensors, meta["optimizer"]))
    except (SafetensorError, RuntimeError, KeyError, OSError, ValueError, TypeError) as e:
        # ValueError and TypeError: optimizer metadata in state.json of the wrong form
        if isinstance(e, FileNotFoundError):
            raise
        raise ValueError(f"corrupt or incompatible checkpoint {path}: {e}") from e
    return meta


def _read_state(path: Path) -> dict:
    """state.json of checkpoint folder `path`, checked before any weights are touched."""
    try:
        meta = json.loads((path / "state.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt checkpoint {path}: state.json is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(
            f"corrupt checkpoint {path}: state.json must hold a JSON object, "
            f"got {type(meta).__name__}"
        )
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(
            f"corrupt checkpoint {path}: state.json must hold an integer 'step' >= 0, got {step!r}"
        )
    return meta
