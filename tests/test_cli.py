"""The command line end to end on tiny budgets, and its handling of bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sdegen.assembly import load_config
from sdegen.cli import main

from ._ddp import run_torchrun
from .test_training import _losses

TINY = [
    "--set",
    "steps=20",
    "--set",
    "eval_every=10",
    "--set",
    "n_train=512",
    "--set",
    "batch_size=64",
    "--set",
    "ckpt_every=10",
    "--set",
    "log_every=5",
    "--set",
    "warmup=5",
    "--set",
    "network_params={hidden: 32, depth: 2}",
]


def _checkpoint_bytes(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_train_sample_likelihood_resume(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run", str(run), "--quiet", *TINY]) == 0
    assert (run / "config.json").is_file() and (run / "latest").is_file()
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "eval" in r]
    assert [r["step"] for r in evals] == [10, 20] and evals[1]["eval"]["test_loss"] > 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["steps"] == 20 and cfg["network_params"] == {"hidden": 32, "depth": 2}

    assert (
        main(
            [
                "sample",
                "--run",
                str(run),
                "--method",
                "heun",
                "--nfe",
                "10",
                "--n",
                "50",
                "--out",
                str(tmp_path / "s"),
            ]
        )
        == 0
    )
    npz = np.load(tmp_path / "s.npz")
    assert npz["x"].shape == (50, 2) and int(npz["nfe"]) == 10
    assert (tmp_path / "s.png").stat().st_size > 1000
    assert "NFE 10 (counted)" in capsys.readouterr().out

    assert (
        main(["likelihood", "--run", str(run), "--n", "20", "--rtol", "1e-4", "--atol", "1e-4"])
        == 0
    )
    result = json.loads((run / "likelihood-test-n20.json").read_text())
    assert result["n"] == 20 and result["nfe"] > 0 and np.isfinite(result["nll_nats"])
    assert "true_nll_nats" in result  # 8 Gaussians has a closed-form density

    assert main(["train", "--run", str(run), "--resume", "--quiet", "--set", "steps=30"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [5, 10, 15, 20, 25, 30]


def test_digits_run_writes_an_image_grid(tmp_path):
    run = tmp_path / "digits"
    assert (
        main(
            [
                "train",
                "--run",
                str(run),
                "--quiet",
                "--set",
                "data=digits",
                "--set",
                "steps=2",
                "--set",
                "batch_size=16",
                "--set",
                "network_params={channels: 8, groups: 4}",
            ]
        )
        == 0
    )
    assert (
        main(["sample", "--run", str(run), "--nfe", "3", "--n", "4", "--out", str(tmp_path / "g")])
        == 0
    )
    assert np.load(tmp_path / "g.npz")["x"].shape == (4, 1, 8, 8)


def test_conditional_digits_run_samples_a_class_with_guidance(tmp_path, capsys):
    run = tmp_path / "cond"
    tiny = ["--set", "data=digits", "--set", "steps=2", "--set", "batch_size=16"]
    net = ["--set", "network_params={channels: 8, groups: 4}"]
    assert main(["train", "--run", str(run), "--quiet", "--conditional", *tiny, *net]) == 0
    assert "trained conditional (p_uncond 0.1) digits" in capsys.readouterr().out
    ckpt = sorted(run.glob("ckpt-*"))[-1]
    assert json.loads((ckpt / "state.json").read_text())["extra"]["config"]["num_classes"] == 10
    out = tmp_path / "g"
    argv = ["sample", "--run", str(run), "--nfe", "3", "--n", "4", "--out", str(out)]
    assert main([*argv, "--class", "3", "--guidance", "2.0"]) == 0
    assert "class 3, guidance 2 with unipc: NFE 3 on a doubled batch" in capsys.readouterr().out
    saved = np.load(out.with_suffix(".npz"))
    assert saved["x"].shape == (4, 1, 8, 8) and int(saved["label"]) == 3
    assert main([*argv, "--class", "10"]) == 2
    assert "label 10 is out of range; expected 0..9" in capsys.readouterr().err
    assert main([*argv, "--guidance", "2"]) == 2
    assert "--guidance needs --class" in capsys.readouterr().err
    # an unconditional run refuses a class; toy data have no labels to condition on
    plain = tmp_path / "plain"
    assert main(["train", "--run", str(plain), "--quiet", *tiny, *net]) == 0
    assert main(["sample", "--run", str(plain), "--nfe", "3", "--n", "2", "--class", "1"]) == 2
    assert "unconditional model" in capsys.readouterr().err
    assert main(["train", "--run", str(tmp_path / "toy"), "--quiet", "--conditional"]) == 2
    assert "'toy:8gaussians' has no class labels" in capsys.readouterr().err


def test_train_help_lists_every_config_key_in_columns():
    import dataclasses

    from sdegen.assembly import TrainConfig, describe_keys

    lines = describe_keys().splitlines()
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    assert len(lines) == len(names)
    for line, name in zip(lines, names):
        assert line.split()[0] == name, line  # the name stands apart from its type
    assert len({line.index(line.split()[1]) for line in lines}) == 1  # types in one column


def test_config_files_and_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("sde: ve\nsteps: 7\nsde_params: {sigma_max: 10.0}\n")
    (tmp_path / "b.toml").write_text('sde = "edm"\nsteps = 9\n[network_params]\nhidden = 8\n')
    a = load_config(tmp_path / "a.yaml", ["lr=1e-4"])
    assert (a.sde, a.steps, a.sde_params, a.lr) == ("ve", 7, {"sigma_max": 10.0}, 1e-4)
    b = load_config(tmp_path / "b.toml")
    assert (b.sde, b.steps, b.network_params) == ("edm", 9, {"hidden": 8})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--set", "sde=vx"], "unknown sde 'vx'; expected one of: vp, vp_cosine, subvp, ve, edm"),
        (["--set", "data=toy:moon"], "unknown toy data set 'moon'; expected one of: 8gaussians"),
        (["--set", "data=imagenet"], "unknown data 'imagenet'; expected one of"),
        (["--set", "stepz=3"], "unknown config key(s) stepz; valid keys: data"),
        (["--set", "steps=many"], "config key steps must be int, got 'many'"),
        (
            ["--set", "parametrization=noise"],
            "parametrization must be one of auto, eps, x0, v, score, mu, edm, got 'noise'",
        ),
        (["--set", "data=mnist:/nowhere"], "/nowhere"),
        (["--config", "/nowhere.yaml"], "config file not found: /nowhere.yaml"),
    ],
)
def test_bad_train_input_is_a_one_line_error(tmp_path, capsys, argv, message):
    assert main(["train", "--run", str(tmp_path / "r"), "--quiet", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdegen: error: ") and message in err and "Traceback" not in err


def test_sample_and_likelihood_need_a_run_with_a_checkpoint(tmp_path, capsys):
    assert main(["sample", "--run", str(tmp_path / "none")]) == 2
    assert "run folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["likelihood", "--run", str(tmp_path / "empty")]) == 2
    assert "not a run folder: no config.json" in capsys.readouterr().err


def test_an_existing_checkpoint_is_never_overwritten(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run", str(run), "--quiet", *TINY]) == 0
    before = _checkpoint_bytes(run)
    assert main(["train", "--run", str(run), "--quiet", *TINY]) == 2
    assert "already holds a checkpoint; use --resume" in capsys.readouterr().err
    assert main(["train", "--run", str(run), "--resume", "--quiet", "--set", "sde=ve"]) == 2
    assert _checkpoint_bytes(run) == before


def test_errors_exit_2_without_traceback_in_a_real_process(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "sdegen", "sample", "--run", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "sdegen", "sample", "--run", str(tmp_path), "--method", "fast"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "invalid choice: 'fast'" in proc.stderr


def test_bench_lists_the_benchmarks(capsys):
    assert main(["bench", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown benchmark 'nope'; available:" in err and "solvers_mixture" in err


def test_demo_runs(capsys):
    assert main(["demo", "--n", "300", "--nfe", "10"]) == 0
    out = capsys.readouterr().out
    assert "dpmpp_2m" in out and "PF-ODE log-likelihood" in out


def test_quickstart_fast_writes_its_report(tmp_path):
    out = tmp_path / "qs"
    assert main(["quickstart", "--fast", "--out", str(out)]) == 0
    report = (out / "report.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert "bits/dim" in report and "nats" in report
    names = ("toy_density.png", "toy_nfe_vs_quality.png", "digits_dpmpp_2m.png", "loss.png")
    for name in (*names, "digits_classes_w1.png", "digits_classes_w3.png"):
        assert (out / name).stat().st_size > 1000, name
    assert {s["method"] for s in results["toy"]["samplers"]} == {
        "dpmpp_2m",
        "heun",
        "euler_maruyama",
    }
    assert results["toy"]["likelihood"]["nfe"] > 0


def test_unknown_or_missing_device_is_rejected(tmp_path, capsys):
    assert main(["train", "--run", str(tmp_path / "r"), "--quiet", "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        assert main(["train", "--run", str(tmp_path / "r"), "--quiet", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


@pytest.mark.xdist_group("ddp")
def test_train_under_torchrun_matches_one_process(tmp_path):
    # torchrun claims --run as an abbreviation of its own --run-path, hence --run-dir
    args = [
        "train",
        "--quiet",
        "--set",
        "steps=10",
        "--set",
        "n_train=512",
        "--set",
        "batch_size=64",
        "--set",
        "log_every=5",
        "--set",
        "network_params={hidden: 32}",
    ]
    run_torchrun("-m", "sdegen", *args[:1], "--run-dir", str(tmp_path / "ddp"), *args[1:])
    assert main([*args[:1], "--run", str(tmp_path / "one"), *args[1:]]) == 0

    ddp, one = _losses(tmp_path / "ddp"), _losses(tmp_path / "one")
    assert sorted(ddp) == sorted(one) == [5, 10]
    assert max(abs(ddp[k] - one[k]) for k in one) < 1e-5


_FACTORY = """
import torch
from sdegen.models import GaussianScore, KDiffusionModel
from sdegen.sde import EDMSDE, VPSDE


def gaussian():
    sde = VPSDE()
    return GaussianScore(torch.zeros(2), 0.5 * torch.eye(2), sde), sde


def denoiser():
    # a k-diffusion denoiser D(x, sigma) of N(0, 0.25 I), as a pretrained network would be
    sde = EDMSDE()
    return KDiffusionModel(lambda x, s: x * 0.25 / (0.25 + s.reshape(-1, 1) ** 2), sde), sde


def no_sde():
    return object()
"""


def test_sample_and_likelihood_of_a_model_of_ones_own(tmp_path, capsys, monkeypatch):
    import numpy as np
    import torch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text(_FACTORY)
    argv = ["sample", "--model", "mine.py:denoiser", "--shape", "2", "--n", "4000", "--quiet"]
    assert main([*argv, "--nfe", "20"]) == 0
    x = torch.from_numpy(np.load(tmp_path / "samples" / "unipc-nfe20-seed0.npz")["x"])
    assert x.shape == (4000, 2)
    assert abs(float(x.var()) - 0.25) < 0.02  # the denoiser's data variance
    # likelihood of the Gaussian's own model on the 2-D toy data: the closed form, exactly
    assert main(["likelihood", "--model", "mine.py:gaussian", "--data", "toy:moons", "--n", "8",
                 "--quiet"]) == 0  # fmt: skip
    result = json.loads((tmp_path / "likelihood-test-n8.json").read_text())
    from sdegen.assembly import load_data
    from sdegen.models import GaussianScore
    from sdegen.sde import VPSDE

    sde = VPSDE()
    truth = GaussianScore(torch.zeros(2), 0.5 * torch.eye(2), sde)
    x8 = load_data("toy:moons").test[:8].double()
    exact = -truth.log_prob(x8, torch.full((8,), sde.t_min)).mean()
    assert abs(result["nll_nats"] - float(exact)) < 1e-3
    capsys.readouterr()
    for bad, message in [
        (["sample", "--model", "mine.py:nope", "--shape", "2"], "has no callable 'nope'"),
        (["sample", "--model", "nomodule_x:f", "--shape", "2"], "cannot import module"),
        (["sample", "--model", "mine.py:no_sde", "--shape", "2"], "must have methods"),
        (["sample", "--model", "mine.py:gaussian"], "needs --shape"),
        (["sample", "--model", "mine.py:gaussian", "--shape", "2,x"], "--shape must be"),
        (["likelihood", "--model", "mine.py:gaussian"], "needs --data"),
        (["sample", "--model", "mine.py:gaussian", "--shape", "3"], "--shape 3 gives examples"),
        (
            ["likelihood", "--model", "mine.py:gaussian", "--data", "digits"],
            "--data digits gives examples of shape (1, 8, 8), but --model mine.py:gaussian takes",
        ),  # fmt: skip
        (["sample", "--run", "r", "--model", "mine.py:gaussian"], "give either --run"),
        (["sample", "--model", "justaname"], "MODULE:FACTORY"),
        (
            ["sample", "--model", "mine.py:gaussian", "--shape", "2", "--out", "mine.py/x"],
            "--out mine.py/x: mine.py is not a folder",
        ),  # fmt: skip
        (
            ["sample", "--model", "mine.py:gaussian", "--shape", "2", "--out", "/proc/none/x"],
            "--out /proc/none/x: cannot make the folder /proc/none",
        ),  # fmt: skip
    ]:
        assert main(bad) == 2, bad
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (bad, err)
