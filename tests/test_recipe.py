"""EDM's training recipe in sdegen's own terms: the "edm" parametrization (preconditioning), the
log-normal noise-level sampling, the "edm" loss weighting, and the per-SDE `recipe` config key.

Each checked against an independent computation: the preconditioned denoiser against Karras et
al.'s formula written out here, the unit variance of the network's input and target by
simulation, the sampler's moments against the truncated normal's closed form, the weighting
against lambda(sigma) applied to the denoiser's error.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sdegen
from sdegen.assembly import build_model, from_dict, load_data, make_trainer
from sdegen.assembly.config import (
    EDM_RECIPE,
    SHARED_RECIPE,
    TrainConfig,
    recipe_keys,
    run_sigma_data,
)
from sdegen.models import MLP, from_x0_eps
from sdegen.sde import EDMSDE, VESDE, VPSDE, SubVPSDE
from sdegen.training import dsm_loss
from sdegen.training.losses import sample_times, times_from_uniform

SDE_MAKERS = {
    "vp": VPSDE,
    "subvp": SubVPSDE,
    "ve": VESDE,
    "edm": EDMSDE,
    "edm_narrow": lambda: EDMSDE(sigma_min=0.5, sigma_max=5.0),  # truncation matters here
}


class Recorder(nn.Module):
    """A fixed random MLP that keeps its last input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.mlp = MLP(dim, hidden=16, depth=2)
        self.last: torch.Tensor | None = None

    def forward(self, x, c_noise):
        self.last = x
        return self.mlp(x, c_noise)


def _times(sde, n: int) -> torch.Tensor:
    # spread over the SDE's log-SNR range, ends included
    lo, hi = sde.half_log_snr_range()
    return sde.t_of_half_log_snr(torch.linspace(lo, hi, n, dtype=torch.float64))


@pytest.mark.parametrize("name", ["vp", "ve", "edm", "subvp"])
@pytest.mark.parametrize("sd", [0.5, 1.3])
def test_edm_denoiser_is_karras_formula(name, sd):
    sde = SDE_MAKERS[name]()
    net = Recorder(3)
    model = sdegen.ScoreModel(net, sde, "edm", sigma_data=sd)
    t = _times(sde, 7)
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(0)) * 3
    d = model.denoise(x, t)
    # Karras et al. 2022, Table 1, in the variables of x / alpha (VE sigma = sigma / alpha)
    a, s = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    sig = s / a
    x_ve = x / a
    c_skip = sd**2 / (sig**2 + sd**2)
    c_out = sig * sd / torch.sqrt(sig**2 + sd**2)
    c_in = 1 / torch.sqrt(sig**2 + sd**2)
    f = net.mlp(c_in * x_ve, sde.half_log_snr(t))
    torch.testing.assert_close(net.last, c_in * x_ve)
    torch.testing.assert_close(d, c_skip * x_ve + c_out * f)
    # eps and score follow from the denoiser as for every parametrization
    torch.testing.assert_close(model.eps(x, t), (x - a * d) / s)


def test_edm_with_unit_sigma_data_is_negated_v():
    # module docstring of sdegen.models.base: with sigma_data = 1, F = -v
    class Neg(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x, c):
            return -self.inner(x, c)

    sde = VPSDE()
    net = Recorder(2)
    t = _times(sde, 5)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    edm = sdegen.ScoreModel(net, sde, "edm", sigma_data=1.0)
    v = sdegen.ScoreModel(Neg(net), sde, "v", sigma_data=1.0)
    torch.testing.assert_close(edm.denoise(x, t), v.denoise(x, t))


@pytest.mark.parametrize("name", ["vp", "ve", "edm"])
def test_edm_input_and_target_have_unit_variance_on_gaussian_data(name):
    # data N(0, sd^2): c_in x / alpha and the target (x0 - c_skip x / alpha) / c_out have
    # variance 1 at every noise level (Karras et al. 2022, Appendix B.6), by simulation
    sde, sd, n = SDE_MAKERS[name](), 0.5, 40_000
    g = torch.Generator().manual_seed(0)
    net = Recorder(1)
    model = sdegen.ScoreModel(net, sde, "edm", sigma_data=sd)
    for t in _times(sde, 5):
        tt = t.expand(n)
        x0 = sd * torch.randn(n, 1, generator=g)
        eps = torch.randn(n, 1, generator=g)
        x = sde.perturb(x0, tt, eps)
        model.denoise(x, tt)
        target = from_x0_eps("edm", x0, eps, sde.alpha(tt), sde.sigma(tt), sigma_data=sd)
        for what in (net.last, target):
            assert abs(float(what.var()) - 1) < 0.04, (float(t), float(what.var()))


def _truncated_moments(mu: float, sd: float, a: float, b: float) -> tuple[float, float]:
    # mean and std of N(mu, sd^2) truncated to [a, b], closed form
    al, be = (a - mu) / sd, (b - mu) / sd
    phi = lambda z: math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)  # noqa: E731
    Phi = lambda z: 0.5 * (1 + math.erf(z / math.sqrt(2)))  # noqa: E731
    Z = Phi(be) - Phi(al)
    mean = mu + sd * (phi(al) - phi(be)) / Z
    var = sd**2 * (1 + (al * phi(al) - be * phi(be)) / Z - ((phi(al) - phi(be)) / Z) ** 2)
    return mean, math.sqrt(var)


@pytest.mark.parametrize("name", ["vp", "ve", "edm", "edm_narrow"])
def test_lognormal_times_have_edms_moments(name):
    sde = SDE_MAKERS[name]()
    p_mean, p_std = -1.2, 1.2
    lo, hi = sde.half_log_snr_range()
    mean, std = _truncated_moments(p_mean, p_std, -hi, -lo)
    # derandomized: the quantiles u = (k + 1/2) / N give the moments to O(1/N)
    n = 20_000
    u = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    t = times_from_uniform(sde, u, time_sampling="lognormal", p_mean=p_mean, p_std=p_std)
    assert float(t.min()) >= sde.t_min and float(t.max()) <= sde.T
    log_s = torch.log(sde.sigma(t) / sde.alpha(t))
    assert abs(float(log_s.mean()) - mean) < 2e-3
    assert abs(float(log_s.std()) - std) < 2e-2 * std
    # random draws: within 4 standard errors
    t = sample_times(
        sde, n, time_sampling="lognormal", generator=torch.Generator().manual_seed(0)
    ).double()
    log_s = torch.log(sde.sigma(t) / sde.alpha(t))
    assert abs(float(log_s.mean()) - mean) < 4 * std / math.sqrt(n)


def test_lognormal_truncation_matters_on_a_narrow_range():
    # the closed form above is the truncated one: on sigma in [0.5, 5] both moments move
    sde = SDE_MAKERS["edm_narrow"]()
    lo, hi = sde.half_log_snr_range()
    mean, std = _truncated_moments(-1.2, 1.2, -hi, -lo)
    assert mean > -0.2 and std < 0.7


@pytest.mark.parametrize("parametrization", ["eps", "edm"])
def test_edm_weighting_is_lambda_sigma_on_the_denoiser_error(parametrization):
    sde, sd = EDMSDE(), 0.5
    model = sdegen.ScoreModel(Recorder(4), sde, parametrization, sigma_data=sd)
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(6, 4, generator=g) * sd
    t, noise = _times(sde, 6), torch.randn(6, 4, generator=g)
    loss = dsm_loss(model, x0, weighting="edm", t=t, noise=noise, reduce=False, sigma_data=sd)
    s = sde.sigma(t) / sde.alpha(t)
    lam = (s**2 + sd**2) / (s * sd) ** 2  # Karras et al. 2022, Table 1
    d = model.denoise(sde.perturb(x0, t, noise), t)
    torch.testing.assert_close(loss, lam * ((d - x0) ** 2).mean(dim=1))
    if parametrization == "edm":  # lambda c_out^2 = 1: the loss is the MSE of F
        f = model(sde.perturb(x0, t, noise), t)
        target = from_x0_eps("edm", x0, noise, sde.alpha(t), sde.sigma(t), sigma_data=sd)
        torch.testing.assert_close(loss, ((f - target) ** 2).mean(dim=1))
    # sigma_data defaults to the model's
    torch.testing.assert_close(
        loss, dsm_loss(model, x0, weighting="edm", t=t, noise=noise, reduce=False)
    )


def _keys(cfg) -> tuple[str, str, str]:
    return (cfg.parametrization, cfg.weighting, cfg.time_sampling)


EDM = ("edm", "edm", "lognormal")
SHARED = ("v", "simple", "continuous")


def test_recipe_auto_gives_edm_its_recipe_and_images_theirs():
    assert tuple(EDM_RECIPE.values()) == EDM and tuple(SHARED_RECIPE.values()) == SHARED
    edm = from_dict({"sde": "edm"})
    assert _keys(edm) == EDM and run_sigma_data(edm) == 0.5
    for sde in ("vp", "subvp", "ve"):
        toy = from_dict({"sde": sde})  # vectors keep the shared keys
        assert _keys(toy) == SHARED and run_sigma_data(toy) == 1.0
        for data in ("digits", "mnist:somewhere", "cifar10:somewhere"):  # images: EDM's
            assert _keys(from_dict({"sde": sde, "data": data})) == EDM
    for sde in ("vp_cosine", "ddpm"):  # not measured with EDM's recipe: shared everywhere
        assert _keys(from_dict({"sde": sde, "data": "digits"})) == SHARED
    shared = from_dict({"sde": "edm", "recipe": "shared"})
    assert _keys(shared) == SHARED
    assert _keys(from_dict({"sde": "vp", "data": "digits", "recipe": "shared"})) == SHARED
    given = from_dict({"sde": "edm", "parametrization": "eps"})  # a given key wins
    assert (given.parametrization, given.weighting) == ("eps", "edm")
    # DSM in data space only: other objectives and latent runs keep the shared keys
    assert from_dict({"sde": "edm", "objective": "ssm"}).weighting == "simple"
    assert _keys(from_dict({"sde": "vp", "data": "digits", "latent": "kl"})) == SHARED
    assert from_dict(edm.to_dict()) == edm  # a run folder's config.json loads unchanged
    # one rule whatever builds the config: Python, a file's mapping, the function itself
    for sde, data in (("edm", "toy:moons"), ("vp", "digits"), ("ve", "toy:moons")):
        cfg = TrainConfig(sde=sde, data=data)
        assert cfg == from_dict({"sde": sde, "data": data})
        assert _keys(cfg) == tuple(recipe_keys(sde, data, "dsm", "none", "auto").values())
    # "auto" given explicitly is the same as not given
    assert from_dict({"sde": "ve", "data": "digits", "weighting": "auto"}) == from_dict(
        {"sde": "ve", "data": "digits"}
    )


def test_recipe_auto_builds_and_trains_the_edm_run(tmp_path):
    cfg = from_dict({"sde": "edm", "steps": 3, "batch_size": 16, "n_train": 64, "log_every": 1})
    data = load_data(cfg.data, n_train=cfg.n_train, seed=0)
    model = build_model(cfg, data.event_shape)
    assert model.parametrization == "edm" and model.sigma_data == 0.5
    trainer = make_trainer(cfg, data, model, tmp_path, progress=False)
    history = trainer.fit(cfg.steps)
    assert len(history) == 3 and all(math.isfinite(h["loss"]) for h in history)
    # the default VP model is today's: v-prediction, input scaled with sigma_data 1
    vp = build_model(from_dict({}), data.event_shape)
    assert (vp.parametrization, vp.sigma_data) == ("v", 1.0)


def test_bad_recipe_inputs_are_refused():
    sde = EDMSDE()
    with pytest.raises(ValueError, match="sigma_data"):
        sdegen.ScoreModel(Recorder(2), sde, "edm", sigma_data=None)
    with pytest.raises(ValueError, match="importance_sampling"):
        times_from_uniform(sde, torch.rand(3), time_sampling="lognormal", importance_sampling=True)
    with pytest.raises(ValueError, match="p_std"):
        times_from_uniform(sde, torch.rand(3), time_sampling="lognormal", p_std=0.0)
    with pytest.raises(ValueError, match="p_mean"):
        times_from_uniform(sde, torch.rand(3), time_sampling="lognormal", p_mean=math.nan)
    model = sdegen.ScoreModel(Recorder(2), sde, "eps")
    x0 = torch.randn(3, 2)
    with pytest.raises(ValueError, match="likelihood"):
        dsm_loss(model, x0, weighting="likelihood", time_sampling="lognormal")
    with pytest.raises(ValueError, match="sigma_data"):
        dsm_loss(model, x0, weighting="edm", sigma_data=-1.0)
    with pytest.raises(ValueError, match="parametrization"):
        sdegen.models.to_x0_eps("edm", x0, x0, torch.ones(3), torch.ones(3))
    for key, value in (("recipe", "nope"), ("sigma_data", 0), ("p_std", -1.0)):
        with pytest.raises(ValueError, match=key):
            from_dict({key: value})
    # the recipe keys name "auto" among the accepted values, and refuse a wrong name in the
    # config, before any model is built
    for key in ("parametrization", "weighting", "time_sampling"):
        with pytest.raises(ValueError, match=f"config key {key} must be one of auto, .*'nope'"):
            from_dict({key: "nope"})


def test_recipe_benchmark_smoke(tmp_path):
    # tiny: 3 training steps per run, 32 samples, NFE 5, its own classifier
    from sdegen.assembly import harness

    root = harness.CHECKOUT_BENCHMARKS
    clf = tmp_path / "clf.safetensors"
    harness.load_script(root / "digits_classifier.py").main(["--out", str(clf), "--steps", "5"])
    bench = harness.load_script(root / "recipe.py")
    args = ["--runs", "vp", "vp-shared", "edm-shared", "edm", "--steps", "3"]
    args += ["--batch-size", "16"]
    args += ["--methods", "dpmpp_2m", "--nfe", "5", "--n", "32", "--floor-sets", "2"]
    args += ["--classifier", str(clf), "--cache", str(tmp_path / "c"), "--out", str(tmp_path)]
    result = bench.main(args)
    keys = {r: c["config"]["parametrization"] for r, c in result["training"].items()}
    assert keys == {"vp": "edm", "vp-shared": "v", "edm-shared": "v", "edm": "edm"}
    assert {r["nfe"] for r in result["records"]} == {5} and len(result["records"]) == 4
    ratios = bench.ratios(result)  # max/min over vp and the EDM run of each recipe
    fid = {r["run"]: r["fid_test"] for r in result["records"]}
    assert ratios["auto"][("dpmpp_2m", 5)] == max(fid["vp"], fid["edm"]) / min(
        fid["vp"], fid["edm"]
    )
    assert "max/min FID, shared" in (tmp_path / "table.md").read_text()
    # --bpd adds a column (its PF-ODE solve of untrained models takes minutes: not run here)
    for k, t in enumerate(result["training"].values()):
        t["bpd"] = {"bits_per_dim": 2.5 + k, "nll_nats_sem": 0.1, "nfe": 50}
    table = bench.markdown(result)
    assert "| bits/dim |" in table and "| 5.500 |" in table


def test_recipe_toy_benchmark_smoke(tmp_path):
    from sdegen.assembly import harness

    bench = harness.load_script(harness.CHECKOUT_BENCHMARKS / "recipe_toy.py")
    args = ["--sdes", "vp", "--steps", "5", "--n", "64", "--nfe", "5", "--n-test", "16"]
    result = bench.main([*args, "--out", str(tmp_path)])
    recs = {r["recipe"]: r for r in result["records"]}
    assert set(recs) == {"shared", "edm"}
    assert recs["shared"]["config"]["parametrization"] == "v"
    assert recs["edm"]["config"]["parametrization"] == "edm"
    assert all(r["nfe"] > 0 and r["nll_nats_sem"] > 0 for r in recs.values())
    assert "| vp | edm / edm / lognormal |" in (tmp_path / "table.md").read_text()
