"""The benchmark scripts run end to end on a tiny budget and write what they promise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sdegen.assembly import harness

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    """benchmarks/NAME.py as a module, loaded once per process (as its siblings load it)."""
    return harness.load_script(ROOT / "benchmarks" / f"{name}.py")


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
    from sdegen.solvers import SCHEDULES

    assert {r["schedule"] for r in result["records"]} == set(SCHEDULES)
    assert "**" in (tmp_path / "table.md").read_text()  # the default grid is marked
    assert (tmp_path / "grid_vs_method.png").stat().st_size > 1000


def test_schedules_benchmark_beta_part(tmp_path):
    # the DDPM beta schedules: SNR curves and sampler cells; --parts betas keeps the grid part
    bench = _load("schedules")
    tiny = [
        "--n",
        "200",
        "--nfe",
        "4",
        "--seeds",
        "1",
        "--beta-steps",
        "50",
        "--out",
        str(tmp_path),
    ]
    bench.main([*tiny, "--sdes", "vp", "--methods", "euler", "--betas", "linear"])
    first = json.loads((tmp_path / "results.json").read_text())
    bench.main([*tiny, "--parts", "betas", "--betas", "cosine", "sigmoid"])
    result = json.loads((tmp_path / "results.json").read_text())
    assert result["records"] == first["records"]
    assert [c["schedule"] for c in result["beta_curves"]] == ["cosine", "sigmoid"]
    assert all(c["log_snr_first"] > 0 > c["log_snr_last"] for c in result["beta_curves"])
    assert len(result["beta_records"]) == 2 * 3 * 2  # schedules x methods x grids at one NFE
    table = (tmp_path / "table.md").read_text()
    assert "| sigmoid |" in table and "| euler |" in table
    assert (tmp_path / "snr_curves.png").stat().st_size > 1000


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


def test_ffjord_benchmark_smoke(tmp_path, monkeypatch):
    # without a reference checkout only sdegen's rows are filled, and the table says why
    monkeypatch.delenv("SDEGEN_FFJORD_REFERENCE", raising=False)
    bench = _load("ffjord")
    bench.main(["--quick", "--data", "moons", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "results.json").read_text())
    (rec,) = result["records"]
    assert rec["impl"] == "sdegen" and rec["iters"] == 3 and rec["nfe_forward_mean"] > 0
    assert rec["nll"] == rec["nll"] and result["floors"]["moons"]["entropy"] > 2
    table = (tmp_path / "table.md").read_text()
    assert "no reference checkout" in table and "| moons |" in table
    assert (tmp_path / "loss_curves.png").stat().st_size > 1000
    bench.main(["--replot", "--out", str(tmp_path)])


def test_vae_benchmark_smoke(tmp_path):
    bench = _load("vae")
    args = ["--quick", "--vaes", "plain", "annealed", "--flows", "split", "--out", str(tmp_path)]
    bench.main(args)
    result = json.loads((tmp_path / "results.json").read_text())
    recs = {r["variant"]: r for r in result["records"]}
    assert set(recs) == {"plain", "annealed", "split"}
    assert 0 <= recs["annealed"]["active_units"] <= 16 and len(recs["plain"]["activity"]) == 16
    assert recs["split"]["level_dims"] == [32, 32] and recs["split"]["bpd"] > 0
    assert "| annealed |" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "latent_activity.png").stat().st_size > 1000


def test_digits_classifier_script(tmp_path):
    from sdegen.metrics import load_digits_classifier

    out = tmp_path / "clf.safetensors"
    report = _load("digits_classifier").main(["--out", str(out), "--steps", "10", "--seed", "2"])
    assert report["path"] == str(out) and report["steps"] == 10 and report["test_count"] == 297
    meta = load_digits_classifier(out).metadata["training"]
    assert (meta["seed"], meta["test_accuracy"]) == (2, report["test_accuracy"])


# ---- peers and likelihood_speed: the harness is tested without the peers; the peers' parts
# run where they are installed (`pip install --no-deps k-diffusion==0.1.1.post1 diffusers`).


def _peers():
    return _load("peers")  # the module object likelihood_speed uses too


def _kdiff_or_skip():
    import pytest

    ks, _ = _peers().load_k_diffusion()
    if ks is None:
        pytest.skip("k-diffusion is not installed")
    return ks


def test_peers_fit_steps_is_the_largest_count_within_budget():
    import torch

    peers = _peers()
    like = torch.zeros(4, 2)

    def runner(cost):  # a sampler whose counted NFE for n steps is cost(n)
        return lambda n: lambda z, seed: (z, cost(n))

    heun = runner(lambda n: 2 * n - 1)
    assert [peers.fit_steps(heun, b, like) for b in (1, 2, 5, 10, 20)] == [1, 1, 3, 5, 10]
    assert peers.fit_steps(runner(lambda n: n), 7, like) == 7
    assert peers.fit_steps(runner(lambda n: 10 * n + 1), 5, like) is None
    assert peers.fit_steps(runner(lambda n: 10 * n + 1), 50, like) == 4


def test_peers_ddpm_setup_is_diffusers_published_schedule():
    import torch

    peers = _peers()
    sde = peers.make_sde("ddpm")
    # diffusers' "linear" beta_schedule: a float32 linspace; alphas_cumprod its cumprod of 1 - beta
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float32).double()
    alphas_cumprod = torch.cumprod(1 - betas, 0)
    i = torch.tensor([0, 1, 17, 500, 998, 999])
    t = peers.diffusers_time(17, 3, torch.zeros(3))
    assert torch.equal(t, torch.full((3,), 18 / 1000))
    a2 = sde.alpha((i + 1).double() / 1000) ** 2
    assert torch.allclose(a2, alphas_cumprod[i], rtol=1e-12, atol=0)
    assert (sde.t_min, sde.T) == (1e-3, 1.0)
    wide = peers.make_sde("ddpm", 0.1)  # the model's longer interval: the same process
    ts = torch.linspace(1e-3, 1, 7)
    assert wide.t_min == 1e-4 and torch.allclose(wide.alpha(ts), sde.alpha(ts), rtol=1e-14)


def test_peers_diffusers_mapping_checked_against_diffusers():
    import pytest

    diffusers = pytest.importorskip("diffusers")
    peers = _peers()
    out = peers.check_diffusers_mapping(diffusers, peers.make_sde("ddpm"))
    assert out["betas_max_abs"] == 0 and out["cumprod64_max_rel"] < 1e-12
    assert out["alphas_cumprod_max_rel"] < 1e-5  # diffusers' own float32 product


def test_peers_k_denoiser_is_the_posterior_mean_in_ve_variables():
    import torch

    from sdegen.models import GaussianScore
    from sdegen.solvers import CountingModel

    peers = _peers()
    mu, c = torch.tensor([0.5, -1.0]), 0.3
    for setup in ("vp", "edm", "ddpm"):
        sde = peers.make_sde(setup)
        model = GaussianScore(mu, c * torch.eye(2), sde)
        counted = CountingModel(model)
        den = peers.KDenoiser(counted, sde)
        x = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))
        for s in (0.05, 1.0, 30.0):
            # x_ve = x0 + s eps: E[x0 | x_ve] = mu + c / (c + s^2) (x_ve - mu)
            want = mu + c / (c + s**2) * (x - mu)
            assert torch.allclose(den(x, torch.full((5,), s)), want, atol=1e-10), (setup, s)
        assert counted.nfe == 3


def test_peers_verdict_is_paired_and_computed():
    peers = _peers()

    def rec(lib, name, b, runs):
        return {
            "mixture": "m",
            "setup": "s",
            "lib": lib,
            "sampler": name,
            "nfe_budget": b,
            "nfe": b,
            "frechet": sum(runs) / len(runs),
            "frechet_runs": runs,
        }

    result = {
        "noise_floor": {"m/s": {"frechet": 0.01}},
        "records": [
            rec("sdegen", "a", 5, [1.0, 2.0, 3.0]),
            rec("sdegen", "b", 5, [4.0, 4.0, 4.0]),
            rec("k-diffusion", "c", 5, [1.1, 2.1, 3.1]),  # worse by 0.1 on every seed
            rec("sdegen", "a", 10, [1.0, 2.0, 3.0]),
            rec("diffusers", "d", 10, [0.5, 3.0, 1.0]),
            {**rec("diffusers", "e", 10, [1.0]), "skipped": "nfe too small"},
        ],
    }
    v5, v10 = peers.verdicts(result)
    assert (v5["sdegen"], v5["peer"], v5["sdegen_lower"], v5["significant"]) == (
        "a",
        "k-diffusion:c",
        True,
        True,
    )
    assert (v10["peer"], v10["sdegen_lower"], v10["significant"]) == ("diffusers:d", False, False)
    # one named sdegen sampler against the best peer (benchmarks/defaults.py: the default)
    (b5,) = peers.verdicts(result, sampler="b")
    assert (b5["sdegen"], b5["sdegen_lower"], b5["ratio"]) == ("b", False, 4.0 / 2.1)
    assert "flow" not in b5  # no distances recorded: no comparison by them
    # by the distance to the exact flow, each side's nearest sampler, paired over seeds
    for r, d in zip(result["records"][:3], ([0.3, 0.2, 0.4], [0.1, 0.1, 0.1], [0.2, 0.3, 0.5])):
        r["flow_distance_runs"], r["flow_distance"] = d, sum(d) / 3
    f5 = peers.verdicts(result)[0]["flow"]
    assert (f5["sdegen"], f5["peer"], f5["significant"]) == ("b", "k-diffusion:c", True)
    assert f5["ratio"] == pytest.approx(0.1 / (1.0 / 3))
    assert peers.verdicts(result, sampler="a")[0]["flow"]["ratio"] == pytest.approx(0.9 / 1.0)


def test_peers_distance_to_the_exact_flow_only_for_ode_samplers():
    import torch

    peers = _peers()
    det = peers.deterministic
    assert det("sdegen", "unipc") and det("sdegen", "unipc+opt") and det("sdegen", "dpmpp_3m")
    assert det("sdegen", "ddim")  # eta 0 by default: the flow's map
    assert not det("sdegen", "pc") and not det("sdegen", "dpmpp_sde")
    assert det("k-diffusion", "lms") and not det("k-diffusion", "dpmpp_2m_sde")
    assert det("diffusers", "DDIM")
    x = torch.zeros(4, 3)
    assert peers.flow_distance(x + 2.0, x) == pytest.approx(12**0.5)  # RMS of |x - flow|


def test_peers_ill_conditioned_mixtures():
    import torch

    peers = _peers()
    sde = peers.make_sde("ddpm")
    assert set(peers.TUNED_ON).isdisjoint(peers.HELD_OUT)
    for name, dim, cond in (("gmm16c4s1", 16, 1e4), ("gmm32c3s1", 32, 1e3)):
        m = peers.make_mixture(name, sde)
        ev = m.evals  # per component, in [1/cond, 1]
        assert m.event_shape == (dim,) and float(ev.max()) <= 1.0 and float(ev.min()) >= 1 / cond
        assert float((ev.max(-1).values / ev.min(-1).values).max()) > cond / 3
    digits = peers.make_mixture("digits64", sde)
    assert digits.event_shape == (64,) and digits.means.shape == (10, 64)
    # the old name keeps its mixture: condition number 100 drawn as before
    g = torch.Generator().manual_seed(0)
    torch.rand(8, generator=g, dtype=torch.float64)
    torch.randn(8, 16, generator=g, dtype=torch.float64)
    torch.randn(8, 16, 16, generator=g, dtype=torch.float64)
    lam = 10 ** (-2 * torch.rand(8, 16, generator=g, dtype=torch.float64))
    ev = peers.make_mixture("gmm16", sde).evals
    torch.testing.assert_close(ev, lam.sort(-1).values, rtol=1e-10, atol=0)


def test_defaults_benchmark_smoke(tmp_path):
    import json

    _kdiff_or_skip()
    defaults = _load("defaults")
    defaults.main(
        ["--tables", "ring/edm", "--nfe", "5", "--seeds", "2", "--floor-sets", "1", "--n", "100",
         "--out", str(tmp_path)]
    )  # fmt: skip
    result = json.loads((tmp_path / "results.json").read_text())
    libs = {(r["lib"], r["sampler"]) for r in result["records"]}
    assert ("sdegen", defaults.DEFAULT) in libs and ("k-diffusion", "lms") in libs
    (v,) = result["default_verdicts"]
    assert v["sdegen"] == defaults.DEFAULT and v["nfe"] == 5 and v["ratio"] > 0
    table = (tmp_path / "table.md").read_text()
    assert "| ring | edm | tuned on |" in table and "The default is lower" in table
    # the exact flow: solved to well below any sampler's distance from it
    flow = result["exact_flow"]["ring/edm"]
    assert flow["half_steps_distance"] < 1e-3 and len(flow["frechet_runs"]) == 2
    recs = {(r["lib"], r["sampler"]): r for r in result["records"] if "skipped" not in r}
    assert recs["sdegen", defaults.DEFAULT]["flow_distance"] > 10 * flow["half_steps_distance"]
    assert "flow_distance" not in recs["k-diffusion", "dpmpp_sde"]  # draws fresh noise
    assert "flow_distance" in recs["k-diffusion", "lms"]
    assert v["flow"]["sdegen"] == defaults.DEFAULT and v["flow"]["peer"] != "k-diffusion:dpmpp_sde"
    assert "nearer the exact flow than every peer ODE sampler in" in table


def test_peers_benchmark_smoke_sdegen_side(tmp_path):
    import json

    _peers().main(
        [
            "--n",
            "200",
            "--nfe",
            "5",
            "--seeds",
            "2",
            "--floor-sets",
            "2",
            "--tables",
            "ring/edm",
            "--methods",
            "dpmpp_2m",
            "heun",
            "--tuned",
            "unipc",
            "--pilot-batch",
            "32",
            "--kdiff",
            "--diffusers",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "results.json").read_text())
    recs = {r["sampler"]: r for r in result["records"]}
    assert set(recs) == {"dpmpp_2m", "heun", "unipc+opt"} and recs["heun"]["nfe"] == 4
    assert len(recs["dpmpp_2m"]["frechet_runs"]) == 2
    # a tuned grid costs exactly the budget per sample, and its one-off pilot is on record
    tuned = recs["unipc+opt"]
    assert tuned["nfe"] == 5 and tuned["pilot_batch"] == 32 and tuned["pilot_nfe"] > 5
    assert len(tuned["grid"]) == 5
    assert result["meta"]["n"] == {"ring/edm": 200}
    table = (tmp_path / "table.md").read_text()
    assert "| sdegen:dpmpp_2m | " in table and table.count("**") == 2  # one best per column
    assert (tmp_path / "fid_vs_nfe.png").stat().st_size > 1000


def test_peers_benchmark_smoke_with_peers(tmp_path):
    import json

    import pytest

    _kdiff_or_skip()
    pytest.importorskip("diffusers")
    _peers().main(
        [
            "--n",
            "100",
            "--nfe",
            "5",
            "--seeds",
            "1",
            "--floor-sets",
            "1",
            "--tables",
            "ring/ddpm",
            "--methods",
            "ddim",
            "--tuned",
            "--kdiff",
            "euler",
            "heun",
            "dpmpp_2m_sde",
            "--diffusers",
            "DDIM",
            "DPMSolverMultistep-2M",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "results.json").read_text())
    nfe = {(r["lib"], r["sampler"]): r["nfe"] for r in result["records"]}
    # counted, within the budget: heun is 2 per step but 1 for its last (Euler) step to 0
    assert nfe == {
        ("sdegen", "ddim"): 5,
        ("k-diffusion", "euler"): 5,
        ("k-diffusion", "heun"): 5,
        ("k-diffusion", "dpmpp_2m_sde"): 5,
        ("diffusers", "DDIM"): 5,
        ("diffusers", "DPMSolverMultistep-2M"): 5,
    }
    assert result["meta"]["diffusers"] and result["meta"]["k-diffusion"]
    assert "ring/ddpm" in result["diffusers_mapping"]
    assert "sdegen's best is" in (tmp_path / "table.md").read_text()


def test_peers_k_diffusion_euler_is_sdegen_ddim_on_the_karras_grid():
    # Euler in the VE variables is DDIM (both step x0 exactly in log-SNR), and k-diffusion's last
    # step to sigma = 0 is sdegen's final denoise: the adapter must reproduce sdegen's samples.
    import torch

    import sdegen
    from sdegen.solvers import CountingModel

    ks = _kdiff_or_skip()
    peers = _peers()
    for setup in ("vp", "edm"):
        sde = peers.make_sde(setup)
        model = peers.make_mixture("ring", sde)
        z = sde.prior_sample(
            (64, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64
        )
        ours = sdegen.sample(model, sde, (64, 2), method="ddim", schedule="karras", nfe=6, noise=z)
        s_min, s_max = peers.ve_sigmas(sde)
        counted = CountingModel(model)
        a_T = sde.alpha(torch.full((1,), sde.T))
        x = ks.sample_euler(
            peers.KDenoiser(counted, sde),
            z / a_T,
            ks.get_sigmas_karras(6, s_min, s_max),
            disable=True,
        )
        assert counted.nfe == ours.nfe == 6
        assert torch.allclose(x, ours.x, atol=1e-8), (setup, float((x - ours.x).abs().max()))


def test_likelihood_speed_smoke(tmp_path):
    import json

    ks, _ = _peers().load_k_diffusion()
    bench = _load("likelihood_speed")
    bench.main(
        [
            "--n",
            "8",
            "--tols",
            "1e-4",
            "--repeats",
            "1",
            "--mixtures",
            "ring",
            "--setups",
            "vp",
            "--out",
            str(tmp_path),
        ]
    )
    result = json.loads((tmp_path / "results.json").read_text())
    recs = {r["solver"]: r for r in result["records"]}
    assert recs["sdegen:exact"]["mean_abs_ode_err"] < 1e-3  # exact trace, tol 1e-4
    assert recs["sdegen:exact"]["nfe"] > 0 and recs["sdegen:exact"]["seconds"] > 0
    # the two Hutchinson estimators see the same probe signs (as the script's docstring says)
    import torch

    from sdegen.divergence import probes_like

    x = torch.zeros(8, 2)
    ours = probes_like(x, 1, "rademacher", torch.Generator().manual_seed(0))[0]
    torch.manual_seed(0)
    assert torch.equal(ours, torch.randint_like(x, 2) * 2 - 1)
    if ks is not None:
        kd = recs["k-diffusion:hutchinson"]
        assert kd["nfe"] == kd["fevals_reported"]  # our count agrees with k-diffusion's own
        assert "time_ratio" in recs["sdegen:hutchinson"]
    assert "| 1e-04 | sdegen:exact |" in (tmp_path / "table.md").read_text()


def test_likelihood_speed_nfe_at_equal_error_interpolates_in_log_log():
    import math

    import pytest

    bench = _load("likelihood_speed")
    # on a power law NFE = 10 err^(-1/4) the log-log interpolation is exact
    pts = [(10 * e**-0.25, e) for e in (1e-1, 1e-3, 1e-5)]
    assert bench.nfe_at_error(pts, 1e-4) == pytest.approx(10 * 1e-4**-0.25, rel=1e-12)
    assert bench.nfe_at_error(pts, 1e-6) is None and bench.nfe_at_error(pts, 1.0) is None
    # a looser tolerance that happened to land lower does not count against a later point:
    # the curve is the least error reached at or below each NFE
    noisy = [(30, 1e-2), (40, 2e-2), (60, 1e-4)]
    assert bench.nfe_at_error(noisy, 1e-3) == pytest.approx(math.sqrt(30 * 60), rel=1e-12)
    levels = [10**-1.5, 1e-2, 10**-2.5, 1e-3, 10**-3.5]
    assert bench.error_levels(2e-4, 5e-2) == pytest.approx(levels)
    rows = bench.equal_error(
        [
            dict(mixture="m", setup="s", solver=name, nfe=n, mean_abs_ode_err=e)
            for name, curve in (("sdegen:exact", pts), (bench.KD, [(2 * n, e) for n, e in pts]))
            for n, e in curve
        ]
    )
    assert rows and all(r["nfe_ratio"] == pytest.approx(0.5) for r in rows)


def test_likelihood_speed_k_diffusion_density_in_x_variables():
    # In 1-D a Rademacher probe squares to 1, so k-diffusion's Hutchinson trace is exact and its
    # log-likelihood, converted from x_ve = x / alpha, must hit the exact PF-ODE value.
    import torch

    from sdegen.models import GaussianMixtureScore
    from sdegen.solvers import log_likelihood

    ks = _kdiff_or_skip()
    bench = _load("likelihood_speed")
    for setup in ("vp", "edm"):
        sde = bench.peers.make_sde(setup)
        model = GaussianMixtureScore(
            torch.tensor([0.3, 0.7]),
            torch.tensor([[-1.0], [1.5]]),
            torch.tensor([[[0.2]], [[0.05]]]),
            bench.wide_sde(setup),
        )
        x = torch.linspace(-2, 2, 7)[:, None]
        targets = bench.pf_ode_targets(model, sde, x)
        kd = bench.run_kdiff(ks, model, sde, x, 1e-8, seed=0, repeats=1)
        assert torch.allclose(kd["log_prob"], targets["k-diffusion"], atol=1e-5), setup
        ours = log_likelihood(model, sde, x, rtol=1e-8, atol=1e-8).log_prob
        assert torch.allclose(ours, targets["sdegen"], atol=1e-5), setup


def test_nfe_fid_benchmark_smoke(tmp_path):
    # tiny: 3 training steps, 32 digits samples, NFE 5 only, two samplers, its own classifier
    bench = _load("nfe_fid")
    clf = tmp_path / "clf.safetensors"
    _load("digits_classifier").main(["--out", str(clf), "--steps", "10"])
    args = ["--nfe", "5", "--sdes", "vp", "--methods", "dpmpp_2m", "heun", "--mixtures", "ring"]
    args += ["--mixture-n", "200", "--seeds", "2", "--floor-sets", "2", "--n", "32"]
    args += ["--train-steps", "3", "--classifier", str(clf), "--cache", str(tmp_path / "c")]
    args += ["--out", str(tmp_path / "out")]
    result = bench.main(args)
    # counted NFE, denoising step included: dpmpp_2m 4 + 1; Heun 2N - 1 + 1 <= 5 gives N = 2
    for part in ("analytic", "digits"):
        nfe = {r["method"]: r["nfe"] for r in result[part]["records"]}
        assert nfe == {"dpmpp_2m": 5, "heun": 4}, part
    assert {tuple(r["nfe_runs"]) for r in result["analytic"]["records"]} == {(5, 5), (4, 4)}
    digits = result["digits"]
    assert {r["n"] for r in digits["records"]} == {32} and digits["noise_floor"]["n"] == 32
    assert digits["noise_floor"]["n_test"] == 297 and digits["noise_floor"]["n_train_ref"] == 1468
    assert digits["noise_floor"]["fid_test"] > 0 and result["analytic"]["noise_floor"]["ring/vp"]
    training = digits["training"]["vp"]
    assert training["trained_now"] and training["config"]["steps"] == 3
    out = tmp_path / "out"
    for name in ("results.json", "table.md", "analytic_ring.png", "digits_fid_test.png"):
        assert (out / name).stat().st_size > 200, name
    assert "| dpmpp_2m | **" in (out / "table.md").read_text()
    # a digits-only rerun loads the cached model (same weights: the same FIDs) and keeps (a)
    again = bench.main(args + ["--parts", "digits"])
    assert not again["digits"]["training"]["vp"]["trained_now"]
    assert [r["fid_test"] for r in again["digits"]["records"]] == [
        r["fid_test"] for r in digits["records"]
    ]
    assert again["analytic"]["records"] == result["analytic"]["records"]


def test_dit_benchmark_smoke(tmp_path):
    # tiny: 3 training steps of a narrow U-Net and a one-block DiT, 20 samples at NFE 3, scored
    # by an untrained digits CNN (the pipeline is under test here, not the numbers)
    from sdegen.metrics import DigitsClassifier, DigitsTraining, save_digits_classifier

    bench = _load("dit")
    clf = tmp_path / "clf.safetensors"
    save_digits_classifier(DigitsClassifier(), DigitsTraining(0, 0, 1, 0.0, 0.0, 297, 0.0), clf)
    args = ["--steps", "3", "--n", "20", "--nfe", "3", "--splits", "2", "--loss-draws", "1"]
    args += ["--unet-channels", "8", "--dit-hidden", "16", "--dit-depth", "1"]
    result = bench.main(args + ["--classifier", str(clf), "--out", str(tmp_path / "out")])
    recs = {r["network"]: r for r in result["records"]}
    assert set(recs) == {"unet", "dit"}
    for r in recs.values():
        assert r["nfe"] == 3 and r["n"] == 20 and r["steps"] == 3 and r["test_loss_rows"] == 297
        assert r["fid"] > 0 and 1 <= r["inception_score"] <= 10 and r["seconds_per_step"] > 0
    assert recs["dit"]["params"]["depth"] == 1 and recs["unet"]["params"]["channels"] == 8
    table = (tmp_path / "out" / "table.md").read_text()
    assert f"| {recs['dit']['parameters']:,} |" in table and "(floor)" in table
    for name in ("train_loss.png", "samples_unet.png", "samples_dit.png"):
        assert (tmp_path / "out" / name).stat().st_size > 500, name
    bench.main(["--replot", "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "table.md").read_text() == table


def test_text_benchmark_smoke(tmp_path):
    # tiny: 3 training steps, one sample per prompt at NFE 3, its own classifier
    bench = _load("text")
    clf = tmp_path / "clf.safetensors"
    _load("digits_classifier").main(["--out", str(clf), "--steps", "10"])
    args = ["--steps", "3", "--n-per-prompt", "1", "--nfe", "3", "--classifier", str(clf)]
    bench.main(args + ["--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs")])
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    want = [(m, w) for m in ("pixel", "latent") for w in bench.WEIGHTS]
    assert [(r["model"], r["guidance"]) for r in result["records"]] == want
    for r in result["records"]:
        assert r["nfe"] == 3 and r["batch_factor"] == 2 and r["n"] == 100
        for key in ("digit", "thickness", "size", "slant"):
            assert 0 <= r[f"{key}_accuracy"] <= 1
    models = result["meta"]["models"]
    assert models["pixel"]["train_steps"] == models["latent"]["train_steps"] == 3
    assert models["latent"]["latent_shape"] == [2, 4, 4] and result["meta"]["prompts"] == 100
    assert "| latent | 4 |" in (tmp_path / "out" / "table.md").read_text()
    assert (tmp_path / "out" / "grid_latent_w2.png").stat().st_size > 500


def test_gan_benchmark_smoke(tmp_path):
    import math

    import torch

    from sdegen.data import toy_sample

    bench = _load("gan")
    # the coverage metric: true samples cover all 8 modes with HQ near 1 - exp(-9/2); samples
    # of one mode cover one
    true = toy_sample("8gaussians", 4000, generator=torch.Generator().manual_seed(5))
    cov = bench.coverage(true)
    assert cov["modes"] == 8 and abs(cov["high_quality"] - (1 - math.exp(-4.5))) < 0.006
    one = bench.centres()[3] + 0.1 * torch.randn(500, 2, generator=torch.Generator())
    assert bench.coverage(one)["modes"] == 1 and bench.coverage(one)["shares"][3] == 1.0
    names = ["nonsaturating, alternating", "WGAN clip 0.01, n_critic 5"]
    result = bench.main(["--quick", "--variants", *names, "--out", str(tmp_path)])
    recs = {r["variant"]: r for r in result["records"]}
    assert set(recs) == set(names)
    assert recs[names[0]]["updates"] == 30 and recs[names[1]]["updates"] == 90  # 15 x (n_c + 1)
    floor = result["meta"]["noise_floor"]
    assert floor["modes"] == 8 and abs(floor["high_quality"][0] - 0.9889) < 0.02
    table = (tmp_path / "table.md").read_text()
    assert "WGAN clip" in table and "exact 0.9889" in table
    assert (tmp_path / "samples.png").stat().st_size > 1000
    bench.main(["--replot", "--out", str(tmp_path)])
    assert (tmp_path / "table.md").read_text() == table


def test_langevin_benchmark_smoke(tmp_path):
    bench = _load("langevin")
    argv = ["--n", "200", "--nfe", "10", "--sdes", "ve", "--seeds", "1", "--floor-sets", "2"]
    bench.main([*argv, "--out", str(tmp_path)])
    result = json.loads((tmp_path / "results.json").read_text())
    recs = {r["variant"]: r for r in result["records"]}
    # counted NFE: 9 levels of K = 1 or 3 levels of K = 3, plus the denoise; pc: 4 x 2 + 1
    assert recs["annealed_langevin"]["nfe"] == recs["annealed_langevin K=3"]["nfe"] == 10
    assert recs["annealed_langevin K=3"]["steps"] == 3 and recs["pc"]["nfe"] == 9
    # NCSN's eps = 2e-5 at sigma_L = 0.01 is VE's own setting
    assert abs(recs["annealed_langevin NCSN eps"]["options"]["eps"] - 2e-5) < 1e-8
    table = (tmp_path / "table.md").read_text()
    assert "| annealed_langevin |" in table and "noise floor" in table
    assert (tmp_path / "sw_vs_nfe.png").stat().st_size > 1000
    bench.main(["--replot", "--out", str(tmp_path)])
    assert (tmp_path / "table.md").read_text() == table


def test_inverse_benchmark_smoke(tmp_path):
    # tiny: 4 digits restored at NFE 3, one Gaussian observation with 4 samples, scored by an
    # untrained digits CNN (the pipeline is under test here, not the numbers)
    import math

    from sdegen.metrics import DigitsClassifier, DigitsTraining, save_digits_classifier

    bench = _load("inverse")
    clf = tmp_path / "clf.safetensors"
    save_digits_classifier(DigitsClassifier(), DigitsTraining(0, 0, 1, 0.0, 0.0, 297, 0.0), clf)
    args = ["--nfe", "3", "--sigma-y", "0", "0.1", "--images", "4", "--post-images", "1"]
    args += ["--n-post", "4", "--classifier", str(clf), "--out", str(tmp_path)]
    result = bench.main(args)
    labels = [label for label, _, _ in bench.METHODS]
    recs = result["digits"]["records"]
    assert [r["method"] for r in recs if r["sigma_y"] == 0.1] == [
        "pseudo-inverse", "Gaussian posterior mean", *labels
    ]  # fmt: skip
    for r in recs:
        sampled = r["method"] in labels
        assert r["nfe"] == (3 if sampled else 0) and math.isfinite(r["psnr"])
        assert r["nfe_backward"] == (48 if r["method"] == "moment" else 3 if sampled else 0)
    gau = result["gaussian"]["records"]
    assert len(gau) == 2 * (len(labels) + 1) and all(r["rms_error"] > 0 for r in gau)
    table = (tmp_path / "table.md").read_text()
    assert "| 0.1 | pigdm | 3 | 3 |" in table
    for name in ("examples.png", "psnr_vs_nfe.png"):
        assert (tmp_path / name).stat().st_size > 1000
    bench.main(["--replot", "--out", str(tmp_path)])
    assert (tmp_path / "table.md").read_text() == table


def test_latent_benchmark_smoke(tmp_path):
    # tiny: 4 training steps of each model, 20 samples at NFE 4, bits/dim of 2 test images at
    # rtol 1e-2, scored by an untrained digits CNN (the pipeline is under test, not the numbers)
    import pytest

    from sdegen.metrics import DigitsClassifier, DigitsTraining, save_digits_classifier

    bench = _load("latent")
    clf = tmp_path / "clf.safetensors"
    save_digits_classifier(DigitsClassifier(), DigitsTraining(0, 0, 1, 0.0, 0.0, 297, 0.0), clf)
    out = tmp_path / "out"
    result = bench.main(["--quick", "--classifier", str(clf), "--out", str(out)])
    recs = {r["kind"]: r for r in result["records"]}
    assert set(recs) == {"pixel", "latent"}
    for r in recs.values():
        assert r["steps"] == 4 and r["n_bpd"] == 2 and r["bpd"] > 0
        assert [(s["nfe"], s["n"]) for s in r["samples"]] == [(4, 20)]
    lat = recs["latent"]
    parts = lat["reconstruction_bpd"] + lat["prior_bpd"] + lat["entropy_bpd"]
    assert parts == pytest.approx(lat["bpd"], rel=1e-9)
    assert result["meta"]["latent_shape"] == [2, 4, 4] and result["autoencoder"]["rate_bits"] > 0
    table = (out / "table.md").read_text()
    assert "| latent |" in table and "| pixel |" in table
    for name in ("fid_vs_nfe.png", "samples_pixel_nfe4.png", "samples_latent_nfe4.png"):
        assert (out / name).stat().st_size > 500, name
    bench.main(["--replot", "--out", str(out)])
    assert (out / "table.md").read_text() == table


def test_ddpm_benchmark_smoke(tmp_path):
    # tiny: 4 training steps of each model on N = 50 steps, 32 samples at NFE 4 and 8, the bound
    # on 2 test images, scored by an untrained digits CNN (the pipeline is under test)
    from sdegen.metrics import DigitsClassifier, DigitsTraining, save_digits_classifier

    bench = _load("ddpm")
    clf = tmp_path / "clf.safetensors"
    save_digits_classifier(DigitsClassifier(), DigitsTraining(0, 0, 1, 0.0, 0.0, 297, 0.0), clf)
    out = tmp_path / "out"
    result = bench.main(["--quick", "--classifier", str(clf), "--out", str(out)])
    assert {(r["model"], r["variance"]) for r in result["bpd"]} == {
        v for v in bench.VARIANTS if v[1] != "analytic"
    }
    assert all(r["n"] == 2 and r["bpd"] > 0 for r in result["bpd"])
    cells = {(r["model"], r["variance"], r["nfe"]) for r in result["fid"]}
    assert cells == {(m, v, n) for m, v in bench.VARIANTS for n in (4, 8)}  # counted NFE
    analytic = [r for r in result["fid"] if r["variance"] == "analytic"]
    assert [r["nfe_gamma"] for r in analytic] == [3, 7]  # one batch at each step's start
    table = (out / "table.md").read_text()
    assert "| learned | learned |" in table and "| discrete | analytic |" in table
    for name in ("fid_vs_nfe.png", "samples_learned_learned_nfe8.png"):
        assert (out / name).stat().st_size > 500, name
    bench.main(["--replot", "--out", str(out)])
    assert (out / "table.md").read_text() == table


def test_overhead_benchmark_smoke(tmp_path):
    import pytest

    bench = _load("overhead")
    if _load("_peers_adapters").load_k_diffusion()[0] is None:
        pytest.skip("k-diffusion is not installed")
    result = bench.main(["--nfe", "10", "--repeats", "2", "--out", str(tmp_path)])
    for r in result["records"]:  # the same denoiser calls on both sides, counted
        assert abs(r["calls_sdegen"] - r["calls_k_diffusion"]) <= 1, r
        assert r["ratio"] > 0 and r["us_per_call_sdegen"] > 0
    assert {r["method"] for r in result["records"]} == set(bench.PAIRS)
    # every fixed-grid method of METHODS is measured, against k-diffusion or a stand-in
    assert set(bench.PAIRS) == set(bench.fixed_grid_methods())
    assert all(r["ratio_iqr"][0] <= r["ratio_iqr"][1] for r in result["records"])
    assert "| dpmpp_2m | sample_dpmpp_2m | same |" in (tmp_path / "table.md").read_text()
    # the machine's load during the run is recorded with the numbers
    assert len(result["meta"]["load_average"]) == 2 and result["meta"]["wall_s"] > 0
    assert "load average" in (tmp_path / "table.md").read_text()


def test_grid_choice_benchmark_smoke(tmp_path):
    bench = _load("grid_choice")
    result = bench.main(["--quick", "--seeds", "1", "--out", str(tmp_path)])
    rows = result["summary"]
    assert {r["role"] for r in rows} == {"tuning", "held out"}
    for r in result["records"]:  # the ratio is the one the record's two grids give
        assert r["ratio"] == pytest.approx(sum(r["log_snr_jump"]) / sum(r["karras"]))
        assert len(r["karras"]) == len(r["log_snr_jump"]) == 1
    for r in rows:
        assert 0 <= r["won"] <= r["cells"] and r["min"] <= r["geo_mean"] <= r["max"]
    table = (tmp_path / "table.md").read_text()
    assert "| heun | **log_snr_jump** |" in table
    assert (tmp_path / "ratio.png").stat().st_size > 500
    bench.main(["--replot", "--out", str(tmp_path)])
    assert (tmp_path / "table.md").read_text() == table
