"""Foreign-model adapters (sdegen.models.adapters): equivalence with diffusers' own schedulers,
with the score model an adapter was built from, and the contract with every sampler and the
likelihood."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sdegen
from sdegen.models import (
    MLP,
    ConditionTable,
    DiffusersModel,
    EDMModel,
    KDiffusionModel,
    ScoreModel,
    ScoreSDEModel,
    diffusers_betas,
    from_diffusers,
)
from sdegen.sde import EDMSDE, VESDE, VPSDE
from sdegen.solvers import METHODS

N_STEPS = 10


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


def tiny_unet(diffusers, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
        layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=8, **kwargs,
    ).eval()  # fmt: skip


@pytest.fixture(scope="module")
def unet64(diffusers):
    return tiny_unet(diffusers).double()


def noise_like(shape=(2, 1, 8, 8)) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


class Calls(nn.Module):
    """Counts the calls of the network it wraps (the NFE as the network sees it)."""

    def __init__(self, net) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, *args, **kwargs):
        self.calls += 1
        return self.net(*args, **kwargs)


# ---- diffusers: the same samples as diffusers' own scheduler loops ----------------------------


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_matches_diffusers_ddim_scheduler(diffusers, unet64, prediction_type):
    # "trailing" timesteps 999, 899, ..., 99 step by exactly num_train // N (DDIMScheduler's
    # prev_timestep), and the last step goes to alpha_bar = 1 (set_alpha_to_one): that is
    # sdegen's ddim on the grid of their times from T = 1 to t_min = t(99), then x0 at t_min.
    sched = diffusers.DDIMScheduler(
        clip_sample=False, timestep_spacing="trailing", prediction_type=prediction_type
    )
    sched.set_timesteps(N_STEPS)
    # diffusers keeps its tables in float32; float64 tables from its own betas make its loop
    # a float64 computation, so both sides agree to rounding.
    sched.alphas_cumprod = torch.cumprod(1 - sched.betas.double(), 0)
    noise = noise_like()
    x = noise.clone()
    with torch.no_grad():
        for tau in sched.timesteps:
            x = sched.step(unet64(x, tau).sample, tau, x, eta=0.0).prev_sample

    ts = from_diffusers(unet64, sched.config)[0].times(sched.timesteps)
    model, sde = from_diffusers(unet64, sched.config, t_min=float(ts[-1]))
    res = sdegen.sample(model, sde, noise.shape, method="ddim", schedule=ts, noise=noise)
    assert res.nfe == N_STEPS
    scale = x.abs().max().item()
    assert (res.x - x).abs().max().item() <= 1e-11 * max(scale, 1.0)


@pytest.mark.parametrize("final_sigmas_type", ["sigma_min", "zero"])
def test_dpmpp_2m_matches_diffusers_dpm_solver(diffusers, unet64, final_sigmas_type):
    # DPMSolverMultistepScheduler (dpmsolver++, order 2, trailing timesteps 999..99) ends with a
    # first-order step from timestep 99 either to timestep 0's noise level ("sigma_min"; the
    # grid gets sde.t_min appended, sdegen's lower_order_final makes that step first order, and
    # no final denoise) or to sigma = 0 ("zero": that step returns the x0 estimate, which is
    # sdegen's final denoise at t_min = t(99); every grid step before it is second order, so
    # lower_order_final=False). diffusers computes these steps in float32 (it casts the sample
    # and its sigmas), so the agreement is float32's.
    sched = diffusers.DPMSolverMultistepScheduler(
        algorithm_type="dpmsolver++", solver_order=2, timestep_spacing="trailing",
        final_sigmas_type=final_sigmas_type, lower_order_final=True,
    )  # fmt: skip
    sched.set_timesteps(N_STEPS)
    noise = noise_like()
    x = noise.clone()
    with torch.no_grad():
        for tau in sched.timesteps:
            x = sched.step(unet64(x, tau).sample, tau, x).prev_sample

    model, sde = from_diffusers(unet64, sched.config)
    ts = model.times(sched.timesteps)
    if final_sigmas_type == "sigma_min":
        ts = torch.cat([ts, ts.new_tensor([sde.t_min])])
        options = {"denoise_final": False, "lower_order_final": True}
    else:
        model, sde = from_diffusers(unet64, sched.config, t_min=float(ts[-1]))
        options = {"denoise_final": True, "lower_order_final": False}
    res = sdegen.sample(
        model, sde, noise.shape, method="dpmpp_2m", schedule=ts, noise=noise, **options
    )
    assert res.nfe == N_STEPS
    scale = x.abs().max().item()
    assert (res.x - x).abs().max().item() <= 1e-6 * max(scale, 1.0)


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_betas_and_timesteps_match_diffusers(diffusers, schedule):
    cfg = dict(beta_schedule=schedule, beta_start=0.00085, beta_end=0.012)
    sched = diffusers.DDPMScheduler(**cfg)
    assert torch.equal(diffusers_betas(schedule, 1000, 0.00085, 0.012), sched.betas.double())
    model, sde = from_diffusers(nn.Identity(), sched.config)
    t = model.times(torch.tensor([0, 499, 999]))
    # the SDE's kernel at a timestep's time is DDPM's q(x_i | x0), and the network sees i
    abar = torch.cumprod(1 - sched.betas.double(), 0)[[0, 499, 999]]
    assert torch.allclose(sde.alpha(t) ** 2, abar, rtol=1e-12)
    assert torch.allclose(sde.timestep(t), torch.tensor([0.0, 499, 999], dtype=torch.float64))


def test_diffusers_adapter_errors(diffusers):
    net = tiny_unet(diffusers)
    with pytest.raises(ValueError, match="prediction_type 'eps'.*epsilon, v_prediction, sample"):
        from_diffusers(net, {"prediction_type": "eps"})
    with pytest.raises(ValueError, match="beta_schedule 'cosine'.*squaredcos_cap_v2"):
        from_diffusers(net, {"beta_schedule": "cosine"})
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        from_diffusers(net, {"rescale_betas_zero_snr": True})
    with pytest.raises(TypeError, match="scheduler_config"):
        from_diffusers(net, "ddim")
    with pytest.raises(TypeError, match="discrete VPSDE"):
        DiffusersModel(net, VPSDE(), "epsilon")
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)
    model, _ = from_diffusers(lambda x, t: x.repeat(1, 3, 1, 1), {})
    with pytest.raises(ValueError, match=r"shape of x \(2, 1, 8, 8\), got \(2, 3, 8, 8\)"):
        model.eps(x, t)
    model, _ = from_diffusers(lambda x, t: (x,), {})
    with pytest.raises(TypeError, match="tensor or an object with a .sample tensor, got tuple"):
        model.eps(x, t)
    model, _ = from_diffusers(net, {})
    with pytest.raises(ValueError, match="unconditional"):
        model.eps(x, t, torch.tensor([0, 1]))


def test_diffusers_dtype_labels_cond_and_learned_variance(diffusers):
    # a float32 network with float64 x: the network runs in float32, the result is float64
    net = tiny_unet(diffusers, num_class_embeds=3).float()
    model, _ = from_diffusers(net, {})
    assert model.num_classes == 3
    x, t, y = (
        torch.randn(2, 1, 8, 8, dtype=torch.float64),
        torch.full((2,), 0.3),
        torch.tensor([0, 2]),
    )
    out = model.eps(x, t, y)
    assert out.dtype == torch.float64
    with torch.no_grad():
        ref = net(x.float(), torch.full((2,), 299.0), class_labels=y).sample
    assert torch.allclose(out.float(), ref, atol=1e-5)
    # cond is bound once; a learned-variance network's variance half is dropped
    seen = {}

    def learned(x, timestep, scale):
        seen["scale"] = scale
        return torch.cat([scale * x, torch.zeros_like(x)], dim=1)

    model, _ = from_diffusers(learned, {"variance_type": "learned_range"}, cond={"scale": 2.0})
    assert torch.equal(model.eps(x, t), 2 * x) and seen["scale"] == 2.0
    assert isinstance(model, DiffusersModel)


# ---- k-diffusion, EDM and score_sde networks built from a ScoreModel: the same samples ------


@pytest.fixture(scope="module")
def vp_score_model():
    torch.manual_seed(0)
    return ScoreModel(MLP(2, hidden=16, depth=2).double(), VPSDE(), "eps").eval()


def samples(model, sde, method="dpmpp_2m"):
    noise = sde.prior_sample(
        (4, 2), generator=torch.Generator().manual_seed(2), dtype=torch.float64
    )
    return sdegen.sample(model, sde, (4, 2), method=method, nfe=8, noise=noise).x


def test_k_diffusion_denoiser_reproduces_the_score_model(vp_score_model):
    sm, sde = vp_score_model, vp_score_model.sde

    def denoiser(x_ve, sigma_ve):  # D(x, sigma) in VE terms, as k-diffusion's wrappers
        t = sde.t_of_half_log_snr(-torch.log(sigma_ve))
        return sm.denoise(sde.alpha(t)[:, None] * x_ve, t)

    model = KDiffusionModel(denoiser, sde)
    for method in ("dpmpp_2m", "heun"):
        assert torch.allclose(samples(model, sde, method), samples(sm, sde, method), atol=1e-9)


def test_edm_preconditioned_network_reproduces_the_denoiser(vp_score_model):
    sm, sde, sd = vp_score_model, vp_score_model.sde, 0.5

    def raw(x_in, c_noise):  # F such that c_skip x + c_out F(c_in x, c_noise) is sm's denoiser
        s = torch.exp(4 * c_noise)[:, None]
        x_ve = x_in * (s**2 + sd**2).sqrt()
        t = sde.t_of_half_log_snr(-torch.log(s[:, 0]))
        d = sm.denoise(sde.alpha(t)[:, None] * x_ve, t)
        return (d - sd**2 / (s**2 + sd**2) * x_ve) / (s * sd / (s**2 + sd**2).sqrt())

    model = EDMModel(raw, sde, sigma_data=sd)
    # the adapter's sigma_data (0.5) places its default grid for data of std 0.5, the score
    # model's (1) for unit-variance data: compared on the same grid
    noise = sde.prior_sample((4, 2), generator=torch.Generator().manual_seed(2))
    ref = sdegen.sample(sm, sde, (4, 2), method="dpmpp_2m", nfe=8, noise=noise)
    ours = sdegen.sample(model, sde, (4, 2), method="dpmpp_2m", schedule=ref.ts, noise=noise)
    assert torch.allclose(ours.x, ref.x, atol=1e-9)


def test_score_sde_networks_reproduce_the_score_model(vp_score_model):
    sm, sde = vp_score_model, vp_score_model.sde
    model = ScoreSDEModel(lambda x, c: sm.score(x, c / 999), sde)  # score_sde's t * 999
    assert torch.allclose(samples(model, sde), samples(sm, sde), atol=1e-9)
    eps_net = ScoreSDEModel(lambda x, c: sm.eps(x, c), sde, "eps", time_scale=1.0)
    assert torch.allclose(samples(eps_net, sde), samples(sm, sde), atol=1e-9)
    ve = VESDE(0.01, 50.0)
    torch.manual_seed(0)
    sm_ve = ScoreModel(MLP(2, hidden=16, depth=2).double(), ve, "eps")
    ncsn = ScoreSDEModel(  # NCSN++ sees sigma(t) itself
        lambda x, sigma: sm_ve.score(x, ve.t_of_half_log_snr(-torch.log(sigma))), ve,
        time_input="sigma",
    )  # fmt: skip
    assert torch.allclose(samples(ncsn, ve), samples(sm_ve, ve), atol=1e-7)
    with pytest.raises(ValueError, match="time_input 'log_snr'.*t, sigma"):
        ScoreSDEModel(nn.Identity(), sde, time_input="log_snr")


# ---- every sampler and the likelihood on a diffusers UNet and a k-diffusion denoiser --------


class KDenoiser(nn.Module):
    """A k-diffusion-style denoiser D(x, sigma) on 2-D points with EDM's skip connection."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mlp = MLP(2, hidden=16, depth=2)

    def forward(self, x, sigma):
        c_skip = 1 / (sigma**2 + 1)
        c_out = sigma / (sigma**2 + 1).sqrt()
        return c_skip[:, None] * x + c_out[:, None] * self.mlp(
            x / (sigma**2 + 1).sqrt()[:, None], sigma.log() / 4
        )


def adapter_case(name, diffusers_mod=None):
    if name == "diffusers":
        net = Calls(tiny_unet(diffusers_mod).float())
        model, sde = from_diffusers(net, diffusers_mod.DDIMScheduler().config)
        return net, model, sde, (2, 1, 8, 8)
    net = Calls(KDenoiser())
    return net, KDiffusionModel(net, EDMSDE(0.002, 80.0)), EDMSDE(0.002, 80.0), (3, 2)


@pytest.fixture(params=["diffusers", "k_diffusion"])
def case(request):
    mod = request.getfixturevalue("diffusers") if request.param == "diffusers" else None
    return adapter_case(request.param, mod)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_sampler_runs_the_adapters(case, method):
    net, model, sde, shape = case
    m = METHODS[method]
    kwargs = (
        {"rtol": 1e-2, "atol": 1e-2}
        if m.adaptive
        else {"nfe": 12 if method == "torchsde_srk" else 6}
    )
    res = sdegen.sample(
        model, sde, shape, method=method, generator=torch.Generator().manual_seed(0), **kwargs
    )
    assert res.x.shape == shape and bool(torch.isfinite(res.x).all())
    assert net.calls == res.nfe  # one network call per counted evaluation
    if not m.adaptive:
        assert res.nfe <= kwargs["nfe"]


@pytest.mark.parametrize("trace", ["hutchinson", "exact"])
def test_likelihood_runs_the_adapters(case, trace):
    net, model, sde, shape = case
    x = torch.randn(
        (1,) + shape[1:], generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    res = sdegen.log_likelihood(
        model,
        sde,
        x,
        trace=trace,
        method="rk4",
        options={"step_size": (sde.T - sde.t_min) / 2},
        generator=torch.Generator().manual_seed(4),
    )
    assert res.log_prob.shape == (1,) and bool(torch.isfinite(res.log_prob).all())
    assert res.nfe > 0 and net.calls >= res.nfe


class _ClassNet(torch.nn.Module):
    """A class-conditional eps network whose embedding has a row for 'no class' at index K,
    as networks trained with label dropout have; an index of -1 fails inside it."""

    def __init__(self, k: int = 3) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(k + 1, 2)

    def forward(self, x, t, class_labels=None):
        return 0.1 * x + self.embed(class_labels)


def test_classifier_free_guidance_maps_the_null_label_to_the_networks_own():
    import sdegen
    from sdegen.models import EDMModel
    from sdegen.sde import EDMSDE

    sde = EDMSDE()
    net = _ClassNet().double()
    model = EDMModel(net, sde, num_classes=3, null_label=3)
    res = sdegen.sample(model, sde, (6, 2), y=1, guidance=2.0, nfe=6, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert res.batch_factor == 2 and bool(torch.isfinite(res.x).all())
    # the unconditional half reads the network's own null row: w = 0 equals calling it with 3
    seen = []
    net.register_forward_hook(lambda m, args, kw, out: seen.append(kw["class_labels"].clone()),
                              with_kwargs=True)  # fmt: skip
    sdegen.sample(model, sde, (6, 2), y=1, guidance=2.0, nfe=2, dtype=torch.float64)
    assert set(torch.cat(seen).tolist()) == {1, 3}
    no_null = EDMModel(net, sde, num_classes=3)
    with pytest.raises(ValueError, match="pass null_label="):
        sdegen.sample(no_null, sde, (6, 2), y=1, guidance=2.0, nfe=6, dtype=torch.float64)
    with pytest.raises(ValueError, match="null_label must be an integer >= 0"):
        EDMModel(net, sde, num_classes=3, null_label=-1)


def test_the_data_scale_a_foreign_network_carries_places_the_default_grid():
    # a k-diffusion Denoiser (or EDM's EDMPrecond) holds the sigma_data it was trained with; the
    # adapter calls it as .net, and the default grid is placed for data of that std
    from sdegen.models import data_std
    from sdegen.solvers import get_schedule

    class Denoiser(torch.nn.Module):
        sigma_data = 0.5

        def forward(self, x, sigma):
            return x / (1 + sigma[:, None] ** 2)

    sde = EDMSDE(0.002, 80.0)
    model = KDiffusionModel(Denoiser(), sde)
    assert data_std(model) == 0.5
    res = sdegen.sample(model, sde, (3, 2), nfe=6, generator=torch.Generator().manual_seed(0))
    want = get_schedule(sde, "log_snr_jump", 5, denoise_final=True, data_std=0.5,
                        start_per_level=1.0)  # fmt: skip
    assert torch.equal(res.ts, want)
    assert data_std(KDiffusionModel(lambda x, sigma: x, sde)) == 1.0  # none carried: unit data
    model.data_std = 0.25  # set on the adapter, it wins
    assert data_std(model) == 0.25


# ---- per-example conditions (text embeddings) as ConditionTables: guidance and likelihood --------


def tiny_text_unet(diffusers) -> nn.Module:
    torch.manual_seed(0)
    return diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
        norm_num_groups=4, attention_head_dim=2,
    ).eval().double()  # fmt: skip


def test_a_condition_table_guides_a_text_conditional_unet_as_stable_diffusion_does(diffusers):
    from sdegen.solvers.guidance import guided_model

    unet = tiny_text_unet(diffusers)
    g = torch.Generator().manual_seed(2)
    emb = torch.randn(3, 5, 8, generator=g, dtype=torch.float64)  # 3 prompts, 5 tokens, width 8
    empty = torch.randn(5, 8, generator=g, dtype=torch.float64)  # the empty prompt's embedding
    table = ConditionTable(emb, null=empty)
    model, sde = from_diffusers(unet, {}, cond={"encoder_hidden_states": table})
    assert model.num_classes == 3
    x, t, y, w = noise_like((4, 1, 8, 8)), torch.full((4,), 0.4), torch.tensor([2, 0, 1, 2]), 3.0

    def net_eps(ctx):
        with torch.no_grad():
            return unet(x, torch.full((4,), 399.0, dtype=torch.float64),
                        encoder_hidden_states=ctx).sample  # fmt: skip

    cond_eps, null_eps = net_eps(emb[y]), net_eps(empty.expand(4, 5, 8))
    # each example reads its own row; NULL_LABEL reads the null row
    torch.testing.assert_close(model.eps(x, t, y), cond_eps, rtol=0, atol=1e-12)
    mixed = model.eps(x, t, torch.tensor([2, -1, 1, -1]))
    torch.testing.assert_close(mixed[::2], cond_eps[::2], rtol=0, atol=1e-12)
    torch.testing.assert_close(mixed[1::2], null_eps[1::2], rtol=0, atol=1e-12)
    # classifier-free guidance doubles the batch: the rows follow it, the null half reads `empty`
    guided = guided_model(model, sde, 4, y=y, guidance=w)
    want = w * cond_eps + (1 - w) * null_eps
    torch.testing.assert_close(guided.eps(x, t), want, rtol=0, atol=1e-10)
    res = sdegen.sample(model, sde, (4, 1, 8, 8), y=y, guidance=w, nfe=4, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert res.nfe == 4 and res.batch_factor == 2 and bool(torch.isfinite(res.x).all())
    # the rows are buffers: they follow the model's dtype and device
    assert model.float().tables["encoder_hidden_states"].rows.dtype == torch.float32


def test_condition_tables_reach_the_likelihood_and_refuse_bad_input():
    from sdegen.solvers.guidance import Conditioned

    sde = VPSDE()
    seen = []

    def net(x, c, shift):  # eps = 0.5 x + shift: each example's shift is its row
        seen.append(shift)
        return 0.5 * x + shift

    rows = torch.tensor([[0.0, 1.0], [2.0, -1.0]], dtype=torch.float64)
    model = ScoreSDEModel(net, sde, "eps", cond={"shift": ConditionTable(rows)})
    x, y = noise_like((3, 2)), torch.tensor([1, 0, 1])
    fixed = {"method": "rk4", "options": {"step_size": (sde.T - sde.t_min) / 4}}  # per example
    ll = sdegen.log_likelihood(Conditioned(model, sde, y), sde, x, **fixed)
    assert ll.log_prob.shape == (3,) and bool(torch.isfinite(ll.log_prob).all())
    assert all(torch.equal(s, rows[y]) for s in seen if s.shape[0] == 3)
    # the condition is per example: the first example's log-density moves with its row only
    y2 = torch.tensor([0, 0, 1])
    ll2 = sdegen.log_likelihood(Conditioned(model, sde, y2), sde, x, **fixed)
    assert abs(float(ll2.log_prob[0] - ll.log_prob[0])) > 1e-3
    torch.testing.assert_close(ll2.log_prob[1:], ll.log_prob[1:], rtol=0, atol=1e-12)
    t = torch.full((3,), 0.5)
    with pytest.raises(ValueError, match="takes y, indices .3,. into its ConditionTables of 2"):
        model.eps(x, t)  # no null rows: y = None has no meaning
    with_null = ScoreSDEModel(net, sde, "eps", cond={"shift": ConditionTable(rows, null=-rows[0])})
    nulls = torch.full((3,), -1)
    torch.testing.assert_close(with_null.eps(x, t), with_null.eps(x, t, nulls), rtol=0, atol=0)
    with pytest.raises(ValueError, match="cond's keys must be keyword names, got 1"):
        ScoreSDEModel(net, sde, cond={1: rows})
    with pytest.raises(ValueError, match="give every ConditionTable a null row"):
        model.eps(x, t, torch.tensor([0, -1, 1]))
    with pytest.raises(ValueError, match="label 2 is out of range; expected 0..1"):
        model.eps(x, t, torch.tensor([0, 2, 1]))
    with pytest.raises(ValueError, match="same rows, got .'a': 2, 'b': 3."):
        ScoreSDEModel(
            net, sde, cond={"a": ConditionTable(rows), "b": ConditionTable(rows[:1].repeat(3, 1))}
        )
    with pytest.raises(ValueError, match="leave num_classes and null_label unset"):
        ScoreSDEModel(net, sde, cond={"a": ConditionTable(rows)}, num_classes=5)
    with pytest.raises(ValueError, match=r"shape of one row \(2,\), got shape \(3,\)"):
        ConditionTable(rows, null=torch.zeros(3))
    with pytest.raises(ValueError, match="rows hold NaN"):
        ConditionTable(torch.tensor([[float("nan")]]))
    with pytest.raises(
        ValueError, match=r"tensor \(K >= 1, ...\) of conditions, got shape \(0, 2\)"
    ):
        ConditionTable(torch.zeros(0, 2))


def test_a_failing_call_names_a_cond_tensor_of_another_batch():
    sde = VPSDE()

    def net(x, c, shift):
        return x + shift  # shift of batch 2 cannot broadcast against 4 examples

    model = ScoreSDEModel(net, sde, "eps", cond={"shift": torch.zeros(2, 2)})
    t = torch.full((2,), 0.5)
    assert model.eps(torch.ones(2, 2), t).shape == (2, 2)  # its own batch works
    with pytest.raises(ValueError, match=r"another batch size \{'shift': 2\}.*ConditionTable"):
        model.eps(torch.ones(4, 2), torch.full((4,), 0.5))
    # an error with no such tensor in cond is the network's own, unchanged
    bad = ScoreSDEModel(lambda x, c: x @ torch.ones(3, 3), sde)
    with pytest.raises(RuntimeError, match="cannot be multiplied"):
        bad.eps(torch.ones(2, 2), t)


def test_condition_tables_inside_a_dict_value_reach_an_sdxl_style_unet(diffusers):
    from sdegen.solvers.guidance import guided_model

    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, block_out_channels=(8, 16),
        layers_per_block=1, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=8,
        norm_num_groups=4, attention_head_dim=2, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=6 + 6 * 4,
    ).eval().double()  # fmt: skip
    g = torch.Generator().manual_seed(1)
    emb, pooled = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((2, 5, 8), (2, 6)))
    ids = torch.tensor([[8.0, 8, 0, 0, 8, 8], [8, 8, 1, 1, 8, 8]], dtype=torch.float64)
    null_emb, null_pooled = torch.zeros(5, 8, dtype=torch.float64), torch.zeros(6).double()
    cond = {
        "encoder_hidden_states": ConditionTable(emb, null=null_emb),
        "added_cond_kwargs": {
            "text_embeds": ConditionTable(pooled, null=null_pooled),
            "time_ids": ConditionTable(ids, null=ids[0]),
        },  # fmt: skip
    }
    model, sde = from_diffusers(unet, {}, cond=cond)
    x, t, y, w = noise_like((2, 1, 8, 8)), torch.full((2,), 0.3), torch.tensor([1, 0]), 4.0

    def net_eps(e, p, i):
        with torch.no_grad():
            c = torch.full((2,), 299.0, dtype=torch.float64)
            extra = {"text_embeds": p, "time_ids": i}
            return unet(x, c, encoder_hidden_states=e, added_cond_kwargs=extra).sample

    cond_eps = net_eps(emb[y], pooled[y], ids[y])
    null_eps = net_eps(null_emb.expand(2, 5, 8), null_pooled.expand(2, 6), ids[[0, 0]])
    torch.testing.assert_close(model.eps(x, t, y), cond_eps, rtol=0, atol=1e-12)
    guided = guided_model(model, sde, 2, y=y, guidance=w)
    torch.testing.assert_close(guided.eps(x, t), w * cond_eps + (1 - w) * null_eps, rtol=0,
                               atol=1e-10)  # fmt: skip
    assert set(model.tables) == {"encoder_hidden_states", "added_cond_kwargs/text_embeds",
                                 "added_cond_kwargs/time_ids"}  # fmt: skip
