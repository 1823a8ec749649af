"""Trainer: resume after kill repeats the run, DDP matches one process, checkpoints are safe."""

from __future__ import annotations

import json
import os
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


@pytest.mark.skipif(not torch.distributed.is_available(), reason="no torch.distributed")
def test_ddp_two_gloo_processes_match_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(WORKER),
            "--run-dir",
            str(tmp_path / "ddp"),
            "--steps",
            "12",
            "--batch",
            "64",
        ],
        check=True,
        timeout=300,
        env=env,
    )
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
