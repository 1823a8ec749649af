"""Latent runs from the config and the command line: the autoencoder stage, the score model on
its latents, decoded samples, the likelihood bound, resuming, and bad configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sdegen.assembly import load_config, load_data, load_run
from sdegen.assembly.latent import autoencoder_dir, build_autoencoder, train_autoencoder
from sdegen.cli import main

TINY = ["--set", "data=digits", "--set", "latent=kl", "--set", "latent_steps=4",
        "--set", "steps=3", "--set", "batch_size=32", "--set", "ckpt_every=2",
        "--set", "latent_params={hidden: 8}",
        "--set", "network_params={channels: 8, channel_mult: [1, 2]}", "--quiet"]  # fmt: skip


def test_latent_text_run_trains_samples_and_bounds(tmp_path, capsys, monkeypatch):
    run = str(tmp_path / "run")
    assert main(["train", "--run", run, *TINY, "--set", "text=true"]) == 0
    loaded = load_run(run)
    ae = loaded.autoencoder
    assert ae is not None and ae.latent_shape == (2, 4, 4)
    assert float(ae.latent_scale) != 1.0  # fitted and saved
    assert loaded.model.net.in_channels == 2  # the score model lives on the latents
    out = tmp_path / "s"
    args = ["sample", "--run", run, "--nfe", "3", "--n", "5", "--quiet", "--out", str(out)]
    assert main([*args, "--prompt", "a thin 2", "--guidance", "1.5"]) == 0
    x = np.load(out.with_suffix(".npz"))["x"]
    assert x.shape == (5, 1, 8, 8) and np.isfinite(x).all()  # decoded images, not latents
    # SDEdit of an image: the run edits its latents, so the edit starts from the image's
    # rescaled latents (the tiny autoencoder decodes everything alike: check what goes in)
    from sdegen.cli import commands
    from sdegen.models.latent import encode_scaled

    image = load_data("digits").test[:1]
    torch.save(image[0], tmp_path / "img.pt")
    seen = {}
    original = commands.harness.sample_batches

    def spy(*a, **kw):
        seen.update(kw)
        return original(*a, **kw)

    monkeypatch.setattr(commands.harness, "sample_batches", spy)
    edit = [*args[:-2], "--out", str(tmp_path / "e"), "--init", str(tmp_path / "img.pt")]
    assert main([*edit, "--t-start", "0.5"]) == 0
    torch.testing.assert_close(seen["x_init"], encode_scaled(ae, image).to(seen["x_init"]))
    assert seen["x_init"].shape == (1, 2, 4, 4) and seen["t_start"] == 0.5
    capsys.readouterr()
    assert main([*args, "--observe", str(tmp_path / "img.pt"), "--operator", "downsample:2"]) == 2
    assert "samples latents of an autoencoder" in capsys.readouterr().err
    assert main(["likelihood", "--run", run, "--n", "4", "--rtol", "1e-3", "--atol", "1e-3",
                 "--quiet"]) == 0  # fmt: skip
    assert "latent-diffusion bound" in capsys.readouterr().out
    result = json.loads((tmp_path / "run" / "likelihood-test-n4.json").read_text())
    parts = result["bound_parts_nats"]
    assert result["kind"] == "bound" and result["nfe"] > 0
    # the bound is the sum of its parts (means over the same 4 images)
    assert -result["nll_nats"] == pytest.approx(sum(parts.values()), rel=1e-9)
    assert result["bits_per_dim"] > 0


def test_autoencoder_stage_resumes_and_is_not_retrained(tmp_path):
    cfg = load_config(None, [s for s in TINY if s.startswith(("data", "latent", "batch", "ckpt"))])
    data = load_data("digits")
    run = tmp_path / "run"
    first = train_autoencoder(cfg, data, run, progress=False)
    files = sorted(p.name for p in autoencoder_dir(run).iterdir())
    # a second call (e.g. `train --resume` after stage 2 was interrupted) loads it as it is
    again = train_autoencoder(cfg, data, run, progress=False)
    assert sorted(p.name for p in autoencoder_dir(run).iterdir()) == files
    for a, b in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    # more autoencoder steps resume it from its checkpoint
    cfg.latent_steps = 6
    longer = train_autoencoder(cfg, data, run, progress=False)
    assert float(longer.latent_scale) != 1.0


@pytest.mark.parametrize(
    "sets, message",
    [
        (["data=toy:8gaussians", "latent=kl"], "encodes images"),
        (["data=digits", "latent=nope"], "unknown config key latent 'nope'"),
        (["data=digits", "latent=kl", "latent_steps=0"], "latent_steps must be >= 1"),
        (["data=digits", "latent=kl", "latent_params={nope: 1}"], "latent_params has unknown"),
        (["data=digits", "latent_params={hidden: 8}"], "latent_params {'hidden': 8} is for a"),
        (["data=digits", "latent=kl", "objective=vlb", "sde=ddpm"], "objective must be 'dsm'"),
    ],
)
def test_bad_latent_configs(tmp_path, capsys, sets, message):
    args = ["train", "--run", str(tmp_path / "r")]
    for s in sets + ["latent_steps=1" if "latent_steps=0" not in sets else "steps=1", "steps=1"]:
        args += ["--set", s]
    assert main([*args, "--quiet"]) == 2
    assert message in capsys.readouterr().err


def test_vq_latent_run_samples(tmp_path):
    run = str(tmp_path / "vq")
    assert main(["train", "--run", run, *TINY, "--set", "latent=vq"]) == 0
    ae = load_run(run).autoencoder
    assert ae is not None and type(ae).__name__ == "VQVAE"
    out = tmp_path / "s"
    assert main(["sample", "--run", run, "--nfe", "2", "--n", "3", "--quiet", "--out",
                 str(out)]) == 0  # fmt: skip
    assert np.load(out.with_suffix(".npz"))["x"].shape == (3, 1, 8, 8)
    assert build_autoencoder(load_run(run).cfg, load_data("digits")).latent_shape == (4, 4, 4)


def test_interrupted_autoencoder_stage_resumes_from_the_command_line(tmp_path, capsys):
    from sdegen.assembly import save_config
    from sdegen.training import Trainer, density_loss

    run = tmp_path / "run"
    cfg = load_config(None, [s for s in TINY if "=" in s])
    data = load_data("digits")
    # what a run killed during its autoencoder stage leaves: the config and an unfinished
    # autoencoder checkpoint (no fitted latent scale), no score-model checkpoint
    save_config(cfg, run)
    ae = build_autoencoder(cfg, data)
    Trainer(ae, density_loss(), data.train, batch_size=32, run_dir=autoencoder_dir(run),
            ckpt_every=0, progress=False, ema_decay=None).fit(2)  # fmt: skip
    assert not (run / "latest").exists()
    assert main(["train", "--run", str(run), "--resume", "--quiet"]) == 0
    loaded = load_run(run)
    assert loaded.step == 3 and float(loaded.autoencoder.latent_scale) != 1.0
    metrics = (autoencoder_dir(run) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(m)["step"] for m in metrics][-1] == 4  # it went on from step 2 to 4


def test_a_bad_latent_config_trains_nothing_and_leaves_no_folder(tmp_path, capsys):
    run = tmp_path / "run"
    bad = [*TINY, "--set", "network_params={channels: 8, nope: 1}"]
    assert main(["train", "--run", str(run), *bad]) == 2
    assert "network_params has unknown" in capsys.readouterr().err
    assert not run.exists()  # refused before the autoencoder stage wrote anything
