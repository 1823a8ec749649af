"""Trainer: resume after kill repeats the run, DDP matches one process, checkpoints are safe."""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import sdegen
from sdegen import ScoreModel
from sdegen.models import MLP, ring_mixture
from sdegen.sde import VPSDE
from sdegen.training import (
    StepRandom,
    Trainer,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    score_matching,
)

from ._ddp import run_torchrun

WORKER = Path(__file__).parent / "scripts" / "train_worker.py"


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def _run(*args: str, timeout: float = 120) -> None:
    subprocess.run([sys.executable, str(WORKER), *args], check=True, timeout=timeout)


@pytest.mark.parametrize("dropout", [False, True])
def test_resume_after_kill_repeats_the_uninterrupted_run(tmp_path, dropout):
    extra = ["--dropout"] if dropout else []
    _run("--run-dir", str(tmp_path / "a"), "--steps", "30", *extra)

    b = tmp_path / "b"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(WORKER),
            "--run-dir",
            str(b),
            "--steps",
            "30",
            "--sleep",
            "0.05",
            *extra,
        ]
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        ckpt = latest_checkpoint(b) if (b / "latest").exists() else None
        if ckpt is not None and int(ckpt.name.split("-")[1]) >= 10:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_losses(b))
    assert killed_at < 30, "the run finished before it was killed"
    _run("--run-dir", str(b), "--steps", "30", "--resume", *extra)

    la, lb = _losses(tmp_path / "a"), _losses(b)
    assert sorted(lb) == list(range(1, 31))
    assert la == lb  # bit for bit, step for step
    wa = load_file(tmp_path / "a" / "final-rank0.safetensors")
    wb = load_file(b / "final-rank0.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.xdist_group("ddp")
@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    run_torchrun(str(WORKER), "--run-dir", str(tmp_path / "ddp"), "--steps", "12", "--batch", "64")
    _run("--run-dir", str(tmp_path / "one"), "--steps", "12", "--batch", "64")
    r0 = load_file(tmp_path / "ddp" / "final-rank0.safetensors")
    r1 = load_file(tmp_path / "ddp" / "final-rank1.safetensors")
    one = load_file(tmp_path / "one" / "final-rank0.safetensors")
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k  # DDP keeps the replicas identical
        torch.testing.assert_close(r0[k], one[k], rtol=1e-5, atol=1e-6)  # same global batch
    ld, lo = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert sorted(ld) == sorted(lo)
    for step in lo:
        assert abs(ld[step] - lo[step]) < 1e-5


def test_step_random_is_the_same_per_example_however_split():
    full = StepRandom(7, 3, 0, 1, 8).randn(2)
    parts = [StepRandom(7, 3, r, 4, 8).randn(2) for r in range(4)]
    for r in range(4):
        torch.testing.assert_close(parts[r], full[r::4])


def _trainer(tmp_path, **kw):
    sde = VPSDE()
    data = ring_mixture(sde).sample(256, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = ScoreModel(MLP(2, hidden=16, depth=1), sde).float()
    return Trainer(
        model, score_matching(), data.float(), batch_size=32, run_dir=tmp_path, progress=False, **kw
    )


def test_checkpoint_round_trip_gives_identical_samples(tmp_path):
    tr = _trainer(tmp_path, ckpt_every=0)
    tr.fit(5)
    sde = tr.model.sde
    fresh = ScoreModel(MLP(2, hidden=16, depth=1), sde).float()
    meta = load_checkpoint(latest_checkpoint(tmp_path), fresh)
    assert meta["step"] == 5
    kw = dict(method="dpmpp_2m", steps=5, generator=torch.Generator().manual_seed(0))
    a = sdegen.sample(tr.model, sde, (16, 2), **kw).x
    kw["generator"] = torch.Generator().manual_seed(0)
    b = sdegen.sample(fresh, sde, (16, 2), **kw).x
    assert torch.equal(a, b)


def test_optimizer_and_ema_state_survive_a_checkpoint(tmp_path):
    tr = _trainer(tmp_path, ckpt_every=0, ema_decay=0.9)
    tr.fit(4)
    tr2 = _trainer(tmp_path, ema_decay=0.9)
    assert tr2.resume() and tr2.step == 4
    for (k, v), (_, w) in zip(
        tr.optimizer.state_dict()["state"].items(), tr2.optimizer.state_dict()["state"].items()
    ):
        assert all(torch.equal(v[n], w[n]) for n in v), k
    for p, q in zip(tr.ema.parameters(), tr2.ema.parameters()):
        assert torch.equal(p, q)
    assert not all(torch.equal(p, q) for p, q in zip(tr.ema.parameters(), tr.model.parameters()))


def test_warmup_and_log(tmp_path):
    tr = _trainer(tmp_path, warmup=4, log_every=1, lr=1e-3)
    hist = tr.fit(6)
    assert [round(h["lr"], 8) for h in hist] == [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    assert all({"loss", "lr", "grad_norm"} <= set(r) for r in records)


def test_a_killed_writer_never_breaks_the_latest_checkpoint(tmp_path):
    tr = _trainer(tmp_path, ckpt_every=0)
    tr.fit(2)
    good = latest_checkpoint(tmp_path)
    # a writer killed mid-way leaves only a hidden temporary folder behind
    (tmp_path / ".ckpt-00000003-dead").mkdir()
    (tmp_path / ".ckpt-00000003-dead" / "model.safetensors").write_bytes(b"half a file")
    assert latest_checkpoint(tmp_path) == good
    save_checkpoint(tmp_path, 3, tr.model)
    assert not (tmp_path / ".ckpt-00000003-dead").exists()


def test_corrupt_and_missing_checkpoints_give_clear_errors(tmp_path):
    tr = _trainer(tmp_path, ckpt_every=0)
    tr.fit(1)
    path = latest_checkpoint(tmp_path)
    (path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="corrupt or incompatible checkpoint"):
        load_checkpoint(path, tr.model)
    with pytest.raises(FileNotFoundError, match="checkpoint file missing"):
        load_checkpoint(tmp_path / "nowhere", tr.model)


def test_trainer_rejects_bad_input(tmp_path):
    sde = VPSDE()
    model = ScoreModel(MLP(2, hidden=8, depth=1), sde)
    data = torch.zeros(16, 2)
    with pytest.raises(ValueError, match="batch_size 32 exceeds the 16 examples"):
        Trainer(model, score_matching(), data, batch_size=32)
    with pytest.raises(ValueError, match="training data hold NaN"):
        Trainer(model, score_matching(), torch.full((64, 2), float("nan")), batch_size=8)
    with pytest.raises(ValueError, match="lr must be finite, got nan"):
        Trainer(model, score_matching(), data, batch_size=8, lr=float("nan"))


def _short(value) -> str:
    if torch.is_tensor(value):
        return f"tensor{tuple(value.shape)}-{str(value.dtype).removeprefix('torch.')}"
    return f"{type(value).__name__}-len{len(value)}" if isinstance(value, list) else repr(value)


NAN = float("nan")
BAD_ARGUMENTS = [
    ("warmup", -10, ValueError, "warmup must be an integer >= 0, got -10"),
    ("warmup", 2.5, ValueError, "warmup must be an integer >= 0, got 2.5"),
    ("grad_clip", -1.0, ValueError, "grad_clip must be a finite number > 0 or None, got -1.0"),
    ("grad_clip", 0, ValueError, "grad_clip must be a finite number > 0 or None, got 0"),
    ("grad_clip", NAN, ValueError, "grad_clip must be a finite number > 0 or None, got nan"),
    ("grad_clip", math.inf, ValueError, "grad_clip must be a finite number > 0 or None, got inf"),
    ("ema_decay", NAN, ValueError, "ema_decay must be None or a number in [0, 1), got nan"),
    ("ema_decay", 1.0, ValueError, "ema_decay must be None or a number in [0, 1), got 1.0"),
    ("ema_decay", -0.1, ValueError, "ema_decay must be None or a number in [0, 1), got -0.1"),
    ("batch_size", -4, ValueError, "batch_size must be an integer >= 1, got -4"),
    ("batch_size", 16.0, ValueError, "batch_size must be an integer >= 1, got 16.0"),
    ("batch_size", True, ValueError, "batch_size must be an integer >= 1, got True"),
    ("log_every", 0, ValueError, "log_every must be an integer >= 1, got 0"),
    ("log_every", 2.0, ValueError, "log_every must be an integer >= 1, got 2.0"),
    ("ckpt_every", -1, ValueError, "ckpt_every must be an integer >= 0, got -1"),
    ("ckpt_every", 1.5, ValueError, "ckpt_every must be an integer >= 0, got 1.5"),
    ("eval_every", -5, ValueError, "eval_every must be an integer >= 0, got -5"),
    ("eval_every", "10", ValueError, "eval_every must be an integer >= 0, got '10'"),
    ("seed", 1.5, ValueError, "seed must be an integer in"),
    ("seed", None, ValueError, "seed must be an integer in"),
    ("data", torch.zeros(64), ValueError, "data must have shape (N, *D)"),
    ("data", torch.zeros(0, 2), ValueError, "data must hold at least one example, got shape (0,"),
    ("data", torch.zeros(64, 2, dtype=torch.int64), TypeError, "floating-point tensor, got dtype"),
    ("data", [[0.0, 0.0]] * 64, TypeError, "data must be a torch.Tensor of shape (N, *D), got"),
]


@pytest.mark.parametrize(
    "name, value, error, message",
    BAD_ARGUMENTS,
    ids=[f"{a[0]}={_short(a[1])}" for a in BAD_ARGUMENTS],
)
def test_trainer_refuses_each_bad_argument_at_construction(name, value, error, message):
    model = ScoreModel(MLP(2, hidden=8, depth=1), VPSDE())
    kw = {"data": torch.zeros(64, 2), "batch_size": 8, **{name: value}}
    with pytest.raises(error, match=re.escape(message)):
        Trainer(model, score_matching(), progress=False, **kw)


def test_one_dimensional_data_are_told_to_reshape():
    model = ScoreModel(MLP(1, hidden=8, depth=1), VPSDE())
    with pytest.raises(ValueError, match=re.escape("got shape (64,); reshape N scalars to (N, 1)")):
        Trainer(model, score_matching(), torch.zeros(64), batch_size=8)
    Trainer(model, score_matching(), torch.zeros(64, 1), batch_size=8, progress=False)


def test_an_unusable_run_dir_is_refused_before_training(tmp_path, monkeypatch):
    model = ScoreModel(MLP(2, hidden=8, depth=1), VPSDE())

    def make(run_dir):
        return Trainer(model, score_matching(), torch.zeros(64, 2), batch_size=8, run_dir=run_dir)

    a_file = tmp_path / "a_file"
    a_file.write_text("the user's")
    with pytest.raises(ValueError, match=re.escape(f"run_dir {a_file} is not a folder")):
        make(a_file)
    assert a_file.read_text() == "the user's"  # left as it was
    with pytest.raises(ValueError, match=re.escape(f"run_dir {a_file / 'run'} cannot be created")):
        make(a_file / "run")

    read_only = tmp_path / "read_only"
    read_only.mkdir()
    real_access = os.access
    # root writes through permission bits, so the refusal is driven through os.access itself
    monkeypatch.setattr(
        os, "access", lambda p, mode, **kw: Path(p) != read_only and real_access(p, mode, **kw)
    )
    with pytest.raises(ValueError, match=re.escape(f"run_dir {read_only} is not writable")):
        make(read_only)
    monkeypatch.undo()
    make(tmp_path / "new" / "run")  # a missing folder is made
    assert (tmp_path / "new" / "run").is_dir()


@pytest.mark.skipif(
    os.name != "posix" or os.geteuid() == 0, reason="POSIX permissions; root ignores them"
)
def test_a_read_only_run_dir_is_refused(tmp_path):
    model = ScoreModel(MLP(2, hidden=8, depth=1), VPSDE())
    read_only = tmp_path / "read_only"
    read_only.mkdir(mode=0o500)
    data = torch.zeros(64, 2)
    try:
        with pytest.raises(ValueError, match=re.escape(f"run_dir {read_only} is not writable")):
            Trainer(model, score_matching(), data, batch_size=8, run_dir=read_only)
        with pytest.raises(ValueError, match=re.escape(f"run_dir {read_only / 'x'} cannot be")):
            Trainer(model, score_matching(), data, batch_size=8, run_dir=read_only / "x")
    finally:
        read_only.chmod(0o700)


def test_resume_survives_a_half_written_metrics_line(tmp_path):
    tr = _trainer(tmp_path, ckpt_every=2, log_every=1)
    tr.fit(4)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 0.5}\n')  # logged after the last checkpoint: redone
        f.write('{"note": "no step"}\n[1, 2]\n{"step": "3"}\n')  # not records of ours
        f.write('{"step": 6, "lo')  # a writer killed mid-line
    tr2 = _trainer(tmp_path, ckpt_every=2, log_every=1)
    assert tr2.resume() and tr2.step == 4
    tr2.fit(6)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]


def test_ema_copy_takes_the_model_buffers(tmp_path):
    tr = _trainer(tmp_path, ckpt_every=0, ema_decay=0.9)
    tr.model.register_buffer("counter", torch.zeros(()))
    tr.ema.module.register_buffer("counter", torch.zeros(()))
    tr.model.counter += 5
    tr.fit(1)
    assert float(tr.ema.module.counter) == 5.0


def test_saving_the_same_step_twice_never_breaks_latest(tmp_path):
    tr = _trainer(tmp_path, ckpt_every=0)
    tr.fit(2)
    first = latest_checkpoint(tmp_path)
    second = save_checkpoint(tmp_path, 2, tr.model)  # e.g. a final save after a periodic one
    assert second != first and latest_checkpoint(tmp_path) == second
    assert (second / "state.json").is_file()
    save_checkpoint(tmp_path, 3, tr.model)
    save_checkpoint(tmp_path, 4, tr.model)
    names = sorted(p.name for p in tmp_path.glob("ckpt-*"))
    assert names == ["ckpt-00000003", "ckpt-00000004"]  # keep=2, newest by (step, index)
