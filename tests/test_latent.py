"""Latent diffusion: the pixel likelihood bound against the exact log p(x) of a linear-Gaussian
model (tight at the exact posterior, below it otherwise, by the closed-form KL gap), sampling
through every kind of sampler and SDE, and training the prior with the autoencoder frozen."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sdegen
from sdegen.data import load_digits
from sdegen.models import VQVAE, KLAutoencoder, LatentDiffusion, UNet
from sdegen.models.density import DensityModel, bits_per_dim
from sdegen.score_density import ScoreSDEDensity
from sdegen.training import StepRandom, Trainer, density_loss, score_matching
from sdegen.training.objectives import latent_score_matching


class _ExactGaussian(DensityModel):
    """N(0, std^2 I) on vectors of size dim, with its exact log-density (a latent prior whose
    log_prob has no solver error, to isolate the bound's own terms)."""

    log_prob_kind = "exact"

    def __init__(self, dim: int, std: float) -> None:
        super().__init__()
        self.event_shape, self.std = (dim,), std

    def log_prob(self, x):
        return torch.distributions.Normal(0.0, self.std).log_prob(x).sum(1)


def _linear_gaussian(scale: float):
    """x = W z + b + sigma eps, z ~ N(0, I_2) in 3 dims, W with orthogonal columns; the KL
    autoencoder with the exact posterior as encoder, latent_scale `scale`; and log p(x)."""
    W = torch.tensor([[1.0, 0.5], [2.0, -0.25], [0.0, 1.0]])  # W^T W diagonal
    b, s2 = torch.tensor([0.5, -1.0, 0.25]), 0.3**2
    d, q = W.shape
    ae = KLAutoencoder(nn.Linear(d, 2 * q), nn.Linear(q, d), (d,), (q,), decoder_scale=0.3)
    M = W.T @ W + s2 * torch.eye(q)
    assert torch.count_nonzero(M - torch.diag(torch.diag(M))) == 0
    with torch.no_grad():
        ae.decoder.weight.copy_(W)
        ae.decoder.bias.copy_(b)
        P = torch.linalg.solve(M, W.T)
        ae.encoder.weight.copy_(torch.cat([P, torch.zeros(q, d)]))
        ae.encoder.bias.copy_(torch.cat([-P @ b, 0.5 * torch.log(s2 / torch.diag(M))]))
        ae.latent_scale.fill_(scale)
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + s2 * torch.eye(d))
    return ae, marginal, M, P, s2


def test_bound_is_exact_at_the_exact_posterior_through_the_latent_pf_ode():
    """With q the exact posterior and the exact latent score (PF-ODE prior), every draw of the
    bound equals log p(x), whatever the latent scale: the three parts add up to it. (The PF-ODE
    density is p_{t_min}, N(0, 4 alpha^2 + sigma^2) at t_min, which the prior term matches to
    the ODE tolerance and the prior's mismatch at T, 4 alpha(T)^2 ~ 2e-4 in variance.)"""
    ae, marginal, *_ = _linear_gaussian(scale=2.0)
    sde = sdegen.VPSDE()
    score = sdegen.GaussianScore(torch.zeros(2), 4.0 * torch.eye(2), sde)
    ldm = LatentDiffusion(ae, ScoreSDEDensity(score, sde, (2,)))
    x = marginal.sample((4,))
    g = torch.Generator().manual_seed(0)
    b = ldm.bound(x, generator=g, rtol=1e-5, atol=1e-5)
    assert (b.kind, b.prior_kind, b.samples) == ("bound", "ode", 1)
    assert torch.allclose(b.log_prob, b.reconstruction + b.prior + b.entropy, atol=1e-12)
    t0 = torch.tensor([sde.t_min])
    v = float(4 * sde.alpha(t0) ** 2 + sde.sigma(t0) ** 2)
    mean, std = ae.posterior(x)
    z_s = 2.0 * (mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0)))
    p_t_min = torch.distributions.Normal(0.0, v**0.5).log_prob(z_s).sum(1)
    assert torch.allclose(b.prior, p_t_min, atol=1e-3)
    assert torch.allclose(b.log_prob, marginal.log_prob(x), atol=1e-3)


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_bound_is_below_log_p_by_the_kl_to_the_exact_posterior(scale):
    """An encoder off the exact posterior: the bound's expectation is log p(x) - KL(q || p(z|x)),
    computed in closed form; the bound never exceeds log p(x)."""
    ae, marginal, M, P, s2 = _linear_gaussian(scale)
    with torch.no_grad():  # a worse encoder: shifted mean, wider std
        ae.encoder.bias += torch.tensor([0.3, -0.2, 0.4, 0.2])
    ldm = LatentDiffusion(ae, _ExactGaussian(2, scale))
    x = marginal.sample((3,)).repeat_interleave(2000, dim=0)  # 2000 draws per point, batched
    mean, std = ae.posterior(x)
    exact = torch.distributions.Normal(x @ P.T - P @ ae.decoder.bias, (s2 / torch.diag(M)) ** 0.5)
    gap = torch.distributions.kl_divergence(torch.distributions.Normal(mean, std), exact).sum(1)
    b = ldm.bound(x, generator=torch.Generator().manual_seed(1))

    def per_point(v):  # mean over each point's 2000 draws
        return v.reshape(3, 2000).mean(1)

    want = per_point(marginal.log_prob(x) - gap)
    assert bool((gap > 0.05).all())
    se = b.log_prob.reshape(3, 2000).std(1) / 2000**0.5
    assert bool(((per_point(b.log_prob) - want).abs() < 4 * se).all())
    assert bool((per_point(b.log_prob) < per_point(marginal.log_prob(x))).all())
    bpd = ldm.bits_per_dim(x, 0.1, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(bpd, bits_per_dim(b.log_prob, 3, 0.1), atol=1e-12)
    # the parts: the entropy is the Gaussian's in the rescaled coordinates
    h = (0.5 * math.log(2 * math.pi * math.e) + torch.log(scale * std)).sum(1)
    assert torch.allclose(per_point(b.entropy), per_point(h), atol=0.05)


def _tiny_ldm(sde, autoencoder=None):
    torch.manual_seed(0)
    ae = autoencoder or KLAutoencoder.conv((1, 8, 8), latent_channels=2, hidden=8)
    net = UNet(in_channels=ae.latent_shape[0], channels=8, channel_mult=(1,), attention_levels=())
    prior = ScoreSDEDensity(sdegen.ScoreModel(net, sde), sde, ae.latent_shape)
    return LatentDiffusion(ae, prior)


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
@pytest.mark.parametrize("method", ["euler_maruyama", "dpmpp_2m"])
def test_sampling_decodes_latents_with_any_sde_and_sampler(sde_name, method):
    sde = sdegen.VPSDE() if sde_name == "vp" else sdegen.VESDE()
    ldm = _tiny_ldm(sde)
    x = ldm.sample(3, generator=torch.Generator().manual_seed(0), mean=True, method=method, nfe=4)
    assert x.shape == (3, 1, 8, 8) and bool(torch.isfinite(x).all())
    # the same draw by hand: the sampler on the latent score model, then decode
    res = sdegen.sample(
        ldm.prior.model,
        sde,
        (3, *ldm.latent_shape),
        method=method,
        nfe=4,
        generator=torch.Generator().manual_seed(0),
        denoise_final=False,
    )
    assert res.nfe == 4
    assert torch.allclose(ldm.decode(res.x), x, atol=1e-10)


def test_vq_latent_diffusion_samples_but_has_no_bound():
    vq = VQVAE.conv((1, 8, 8), num_codes=8, code_dim=2, hidden=8)
    ldm = _tiny_ldm(sdegen.VPSDE(), vq)
    x = ldm.sample(2, method="ddim", nfe=3)
    assert x.shape == (2, 1, 8, 8)
    # decoded latents are quantized: they are decodings of codebook entries
    z = ldm.prior.sample(2, generator=torch.Generator().manual_seed(0), method="ddim", nfe=3)
    idx = vq.quantize(z / vq.latent_scale).indices
    assert torch.allclose(ldm.decode(z), vq.decode_indices(idx))
    with pytest.raises(TypeError, match="Gaussian posterior"):
        ldm.log_prob(x)


def test_training_the_prior_leaves_the_autoencoder_frozen():
    ldm = _tiny_ldm(sdegen.VPSDE())
    x = load_digits("train").x[:64].double()
    ldm.autoencoder.fit_latent_scale(x)
    ae_before = {k: v.clone() for k, v in ldm.autoencoder.state_dict().items()}
    prior_before = {k: v.clone() for k, v in ldm.prior.state_dict().items()}
    Trainer(ldm, density_loss(2 / 17), x, batch_size=32, ema_decay=0.9, progress=False).fit(3)
    assert all(torch.equal(v, ae_before[k]) for k, v in ldm.autoencoder.state_dict().items())
    assert not all(torch.equal(v, prior_before[k]) for k, v in ldm.prior.state_dict().items())
    assert not ldm.autoencoder.training and ldm.prior.training
    # the loss is the prior's on the rescaled posterior draws
    g1, g2 = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    noise = torch.randn((8, *ldm.latent_shape), generator=g2)
    z = ldm.autoencoder.encode_latents(x[:8], noise) * ldm.autoencoder.latent_scale
    assert float(ldm.loss(x[:8], g1).detach()) == pytest.approx(
        float(ldm.prior.loss(z, g2).detach()), rel=1e-12
    )


def test_latent_diffusion_errors():
    ae = KLAutoencoder.conv((1, 8, 8), latent_channels=2, hidden=8)
    with pytest.raises(ValueError, match=r"latent_shape \(2, 4, 4\)"):
        LatentDiffusion(ae, _ExactGaussian(3, 1.0))
    with pytest.raises(TypeError, match="autoencoder must be"):
        LatentDiffusion(nn.Linear(2, 2), _ExactGaussian(2, 1.0))  # type: ignore[arg-type]
    disc = KLAutoencoder.conv((1, 8, 8), hidden=8, likelihood="discretized", levels=17)
    sde = sdegen.VPSDE()
    ldm = LatentDiffusion(
        disc,
        ScoreSDEDensity(
            sdegen.GaussianScore(torch.zeros(32), torch.eye(32), sde, event_shape=(2, 4, 4)),
            sde,
            (2, 4, 4),
        ),
    )
    with pytest.raises(ValueError, match="bin_width must be 2 / levels"):
        ldm.bits_per_dim(torch.zeros(1, 1, 8, 8), 2 / 256)


def test_latent_score_matching_is_dsm_on_rescaled_posterior_draws():
    torch.manual_seed(0)
    ae = KLAutoencoder.conv((1, 8, 8), latent_channels=2, hidden=8)
    ae.latent_scale.fill_(1.7)
    sde = sdegen.VPSDE()
    net = UNet(2, channels=8, channel_mult=(1,), attention_levels=())
    model = sdegen.ScoreModel(net, sde)
    x = load_digits("train").x[:8].double()
    loss = latent_score_matching(ae)(model, x, StepRandom(3, 5, 0, 1, 8))
    rnd = StepRandom(3, 5, 0, 1, 8)  # the same draws, in the objective's order
    z = 1.7 * ae.encode_latents(x, rnd.randn(*ae.latent_shape, dtype=torch.float64))
    want = score_matching("simple")(model, z.detach(), rnd)
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
    loss.backward()
    assert all(p.grad is None for p in ae.parameters())
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(TypeError, match="autoencoder must be a KLAutoencoder or VQVAE"):
        latent_score_matching(nn.Linear(2, 2))


def test_sample_draws_the_decoder_noise_and_the_bound_is_differentiable():
    ae, marginal, *_ = _linear_gaussian(scale=2.0)
    sde = sdegen.VPSDE()
    score = sdegen.GaussianScore(torch.zeros(2), 4.0 * torch.eye(2), sde)
    ldm = LatentDiffusion(ae, ScoreSDEDensity(score, sde, (2,)))
    kw = {"method": "ddim", "nfe": 5}
    x = ldm.sample(4, generator=torch.Generator().manual_seed(2), **kw)
    g = torch.Generator().manual_seed(2)  # by hand: latents, decoder mean, Gaussian noise
    z = ldm.prior.sample(4, generator=g, **kw).double() / 2.0
    out = ae.decode(z)
    want = out + 0.3 * torch.randn(out.shape, generator=g)
    assert torch.allclose(x, want, atol=1e-12)
    assert torch.allclose(
        ldm.sample(4, generator=torch.Generator().manual_seed(2), mean=True, **kw), out
    )
    # log_prob (the bound) is differentiable in x and in the autoencoder's parameters
    xs = marginal.sample((3,)).requires_grad_(True)
    ldm.log_prob(
        xs, generator=torch.Generator().manual_seed(0), rtol=1e-4, atol=1e-4
    ).sum().backward()
    assert xs.grad is not None and bool(torch.isfinite(xs.grad).all())
    assert all(p.grad is not None for p in ae.parameters())
