"""The benchmark scripts run end to end on a tiny budget and write what they promise."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_solvers_mixture_benchmark_smoke(tmp_path):
    bench = _load("solvers_mixture")
    bench.main(
        [
            "--n",
            "200",
            "--nfe",
            "5",
            "--sdes",
            "vp",
            "--methods",
            "dpmpp_2m",
            "heun",
            "rk4",
            "torchsde_srk",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "results.json").read_text())
    recs = {r["method"]: r for r in result["records"]}
    # counted NFE, denoising step included: 4 + 1; Heun 2N - 1 + 1 <= 5 gives N = 2
    assert (recs["dpmpp_2m"]["nfe"], recs["rk4"]["nfe"], recs["heun"]["nfe"]) == (5, 5, 4)
    assert "skipped" in recs["torchsde_srk"]  # one srk step costs 11 evaluations
    assert result["noise_floor"]["vp"]["sliced_w2"] > 0
    assert "| dpmpp_2m |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "sw_vs_nfe.png").stat().st_size > 1000


def test_schedules_benchmark_smoke(tmp_path):
    bench = _load("schedules")
    bench.main(
        [
            "--n",
            "200",
            "--nfe",
            "5",
            "--seeds",
            "1",
            "--sdes",
            "vp",
            "--methods",
            "heun",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "results.json").read_text())
    assert {r["schedule"] for r in result["records"]} == {"uniform", "log_snr", "karras"}
    assert "**" in (tmp_path / "table.md").read_text()  # the default grid is marked
    assert (tmp_path / "grid_vs_method.png").stat().st_size > 1000


def test_likelihood_benchmark_smoke(tmp_path):
    bench = _load("likelihood")
    bench.main(
        [
            "--quick",
            "--toy",
            "moons",
            "--no-digits",
            "--families",
            "realnvp",
            "vae",
            "gan",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "results.json").read_text())
    kinds = {r["family"]: r["kind"] for r in result["records"]}
    assert kinds["realnvp"] == "exact" and kinds["gan"] == "none"
    assert kinds["vae"].startswith("estimate")
    assert "-ELBO" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "density_moons.png").stat().st_size > 1000


def test_digits_classifier_script(tmp_path):
    from sdegen.metrics import load_digits_classifier

    out = tmp_path / "clf.safetensors"
    report = _load("digits_classifier").main(["--out", str(out), "--steps", "10", "--seed", "2"])
    assert report["path"] == str(out) and report["steps"] == 10 and report["test_count"] == 297
    meta = load_digits_classifier(out).metadata["training"]
    assert (meta["seed"], meta["test_accuracy"]) == (2, report["test_accuracy"])
