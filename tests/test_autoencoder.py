"""Autoencoders for latent diffusion: the VQ-VAE's quantizer against brute force, autograd and
hand-computed EMA averages; the KL autoencoder's objective against probabilistic PCA's closed
form (Tipping & Bishop 1999); both trained by the one Trainer on the digits."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sdegen.data import load_digits
from sdegen.models import VQVAE, KLAutoencoder, VectorQuantizer
from sdegen.models.autoencoder import codebook_usage, psnr
from sdegen.training import Trainer, density_loss

# ---------------------------------------------------------------- codebook usage and PSNR


@given(st.integers(1, 12), st.integers(0, 20), st.integers(1, 5))
def test_perplexity_of_a_uniform_assignment_over_k_codes_is_k(k, extra, repeats):
    K = k + extra
    used = torch.randperm(K, generator=torch.Generator().manual_seed(K))[:k]
    perplexity, usage = codebook_usage(used.repeat(repeats), K)
    assert float(perplexity) == pytest.approx(k, rel=1e-12)
    assert float(usage) == pytest.approx(k / K, rel=1e-12)


def test_perplexity_of_a_skewed_assignment_is_exp_entropy():
    idx = torch.tensor([0, 0, 0, 1])  # p = (3/4, 1/4)
    perplexity, _ = codebook_usage(idx, 4)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert float(perplexity) == pytest.approx(math.exp(h), rel=1e-12)


def test_psnr_closed_form_and_errors():
    assert psnr(4.0) == pytest.approx(0.0)  # rms error equal to the range [-1, 1]
    assert psnr(0.0) == math.inf
    assert psnr(1e-2, peak_to_peak=1.0) == pytest.approx(20.0)
    with pytest.raises(ValueError, match="mse"):
        psnr(-1.0)
    with pytest.raises(ValueError, match="indices must lie in 0..3"):
        codebook_usage(torch.tensor([4]), 4)


# ---------------------------------------------------------------- the quantizer


@settings(max_examples=30)
@given(st.integers(1, 9), st.integers(1, 4), st.integers(0, 1000))
def test_quantization_is_the_exact_nearest_neighbour(K, D, seed):
    torch.manual_seed(seed)
    vq = VectorQuantizer(K, D).eval()
    z_e = torch.randn(3, D, 2, 2)
    q = vq(z_e)
    e = vq.codebook
    for b in range(3):
        for i in range(2):
            for j in range(2):
                d2 = [float(((z_e[b, :, i, j] - e[k]) ** 2).sum()) for k in range(K)]
                k_best = min(range(K), key=d2.__getitem__)
                assert int(q.indices[b, i, j]) == k_best
                assert torch.allclose(q.z_q[b, :, i, j], e[k_best], rtol=0, atol=1e-14)


def test_straight_through_gradient_is_the_identity():
    torch.manual_seed(0)
    vq = VectorQuantizer(5, 3).eval()
    z_e = torch.randn(2, 3, 2, 2, requires_grad=True)
    w = torch.randn(2, 3, 2, 2)
    (g,) = torch.autograd.grad((vq(z_e).z_q * w).sum(), z_e)
    assert torch.equal(g, w)


def test_commitment_and_codebook_loss_by_hand():
    vq = VectorQuantizer(2, 2, update="loss").eval()
    with torch.no_grad():
        vq.codebook.copy_(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    z_e = torch.tensor([[0.1, 0.2], [0.9, 0.6], [2.0, 0.0]]).T.reshape(1, 2, 3)  # (B, D, S)
    q = vq(z_e.clone().requires_grad_())
    # nearest codes 0, 1, 1: squared errors .01+.04, .01+.16, 1+1 over 6 elements
    want = (0.05 + 0.17 + 2.0) / 6
    assert q.indices.tolist() == [[0, 1, 1]]
    assert float(q.commitment.detach()) == pytest.approx(want, rel=1e-12)
    assert float(q.codebook_loss.detach()) == pytest.approx(want, rel=1e-12)
    (g,) = torch.autograd.grad(q.codebook_loss, vq.codebook)  # d/de of sum (e - z)^2 / 6
    by_hand = torch.tensor([[-0.1, -0.2], [2 * 1.0 - 0.9 - 2.0, 2 * 1.0 - 0.6 - 0.0]]) * 2 / 6
    assert torch.allclose(g, by_hand, atol=1e-12)


def test_ema_update_equals_hand_computed_running_averages():
    decay, eps = 0.9, 1e-3
    vq = VectorQuantizer(3, 2, update="ema", decay=decay, epsilon=eps)
    e0 = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 9.0]])
    vq.codebook.copy_(e0)
    vq.ema_sum.copy_(e0)
    batches = [
        [(0.5, 0.0), (-0.5, 1.0), (3.0, 1.0)],  # codes 0, 0, 1
        [(4.5, -1.0), (0.2, 0.2), (5.0, 0.0), (4.0, 2.0)],  # codes 1, 0, 1, 1
    ]
    N, m = [1.0, 1.0, 1.0], [list(map(float, r)) for r in e0.tolist()]
    for rows in batches:
        codes = [0 if x * x + y * y < (x - 4) ** 2 + y * y else 1 for x, y in rows]
        for k in range(3):
            mine = [r for r, c in zip(rows, codes) if c == k]
            N[k] = decay * N[k] + (1 - decay) * len(mine)
            for d in range(2):
                m[k][d] = decay * m[k][d] + (1 - decay) * sum(r[d] for r in mine)
        n = sum(N)
        want = [[m[k][d] / ((N[k] + eps) / (n + 3 * eps) * n) for d in range(2)] for k in range(3)]
        z_e = torch.tensor(rows).T[None]  # (1, 2, S)
        q = vq(z_e)
        assert q.indices.tolist() == [codes]
        assert torch.allclose(vq.ema_count, torch.tensor(N), rtol=1e-12)
        assert torch.allclose(vq.codebook, torch.tensor(want), rtol=1e-12)
    # unused code: m and N decay alike, so only the smoothing moves it, a little
    assert torch.allclose(vq.codebook[2], e0[2], rtol=1e-2)


def test_ema_update_only_in_training_mode_and_dead_codes_restart():
    torch.manual_seed(1)
    vq = VectorQuantizer(4, 2, restart_threshold=0.995)  # N_k = 0.99 after one step
    vq.codebook.mul_(100.0)  # every code far away ...
    vq.codebook[0] = 0.0  # ... but one: the others go unused
    vq.ema_sum.copy_(vq.codebook)
    z_e = torch.randn(1, 2, 8)
    before = vq.codebook.clone()
    vq.eval()(z_e)
    assert torch.equal(vq.codebook, before)
    vq.train()(z_e, generator=torch.Generator().manual_seed(0))
    rows = z_e[0].T
    for k in (1, 2, 3):  # restarted at encoder outputs of the batch, counts reset to 1
        assert any(torch.equal(vq.codebook[k], r) for r in rows)
        assert float(vq.ema_count[k]) == 1.0
    assert float(vq(z_e).usage) > 0.25


def test_quantizer_errors():
    with pytest.raises(ValueError, match="update"):
        VectorQuantizer(4, 2, update="kmeans")
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(4, 2, decay=1.0)
    with pytest.raises(ValueError, match=r"z_e must have shape \(batch, 2, ...\)"):
        VectorQuantizer(4, 2)(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="non-finite"):
        VectorQuantizer(4, 2)(torch.full((1, 2, 3), math.nan))


# ---------------------------------------------------------------- VQ-VAE


def test_vqvae_loss_and_gradients_reach_encoder_decoder_and_codebook():
    torch.manual_seed(0)
    for update in ("ema", "loss"):
        vq = VQVAE.conv((1, 8, 8), num_codes=8, code_dim=3, hidden=8, update=update, beta=0.5)
        x = torch.rand(4, 1, 8, 8) * 2 - 1
        vq.eval()  # no EMA step, so the hand-made loss sees the same codebook
        x_hat, q = vq(x)
        want = ((x_hat - x) ** 2).mean() + 0.5 * q.commitment
        if update == "loss":
            want = want + q.codebook_loss
        loss = vq.loss(x)
        assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-12)
        loss.backward()
        for name, p in vq.named_parameters():
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), name
        assert vq.decode_latents(vq.encode_latents(x)).shape == x.shape
        assert torch.allclose(vq.decode_latents(vq.encode_latents(x)), x_hat)


# ---------------------------------------------------------------- KL autoencoder


@torch.no_grad()
def test_kl_autoencoder_shapes_rate_and_latent_scale():
    torch.manual_seed(0)
    ae = KLAutoencoder.conv((1, 8, 8), latent_channels=4, hidden=8, beta=1e-3)
    assert ae.latent_shape == (4, 4, 4)
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    mean, std = ae.posterior(x)
    assert mean.shape == std.shape == (16, 4, 4, 4) and bool((std > 0).all())
    # rate = KL(N(mean, std^2) || N(0, 1)), against torch.distributions
    q = torch.distributions.Normal(mean, std)
    kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum((1, 2, 3))
    stats = ae.evaluate(x)
    assert stats["rate_nats"] == pytest.approx(float(kl.mean()), rel=1e-10)
    assert stats["rate_bits"] == pytest.approx(float(kl.mean()) / math.log(2), rel=1e-10)
    mse = float(((ae.decode_latents(mean) - x) ** 2).mean())
    assert stats["mse"] == pytest.approx(mse) and stats["psnr"] == pytest.approx(psnr(mse))
    # the loss is -(rec - beta KL) for the same draw
    rec, kl2 = ae.elbo_terms(x, torch.Generator().manual_seed(3))
    loss = ae.loss(x, torch.Generator().manual_seed(3))
    assert float(loss) == pytest.approx(float(-(rec - 1e-3 * kl2).mean()), rel=1e-12)
    # fitted scale: the rescaled latents (same draws) have unit std
    s = ae.fit_latent_scale(x, generator=torch.Generator().manual_seed(5))
    noise = torch.randn(mean.shape, generator=torch.Generator().manual_seed(5))
    assert float(ae.latent_scale) == s
    assert float((s * ae.encode_latents(x, noise)).std()) == pytest.approx(1.0, rel=1e-10)


def test_autoencoder_errors():
    with pytest.raises(ValueError, match="divisible by 2\\^downsample = 4"):
        KLAutoencoder.conv((1, 6, 6), downsample=2)
    with pytest.raises(ValueError, match="latent_shape"):
        KLAutoencoder(nn.Linear(4, 4), nn.Linear(2, 4), (4,), (0,))
    ae = KLAutoencoder.conv((1, 8, 8), hidden=8)
    with pytest.raises(ValueError, match=r"z must have shape \(batch, \*latent_shape"):
        ae.decode_latents(torch.zeros(2, 3, 4, 4))
    with pytest.raises(ValueError, match="noise must have shape"):
        ae.encode_latents(torch.zeros(2, 1, 8, 8), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        VQVAE.conv((1, 8, 8), hidden=8).encode_latents(torch.zeros(2, 8, 8))


# ---------------------------------------------------------------- PPCA closed form


def _ppca_optimum(x: torch.Tensor, q: int) -> tuple[float, torch.Tensor]:
    """Tipping & Bishop (1999), Eq. (16)-(17): the maximum of the mean log-likelihood,
    -1/2 (d log 2 pi + sum_{j<=q} log l_j + (d - q) log s2 + d), s2 the mean discarded
    eigenvalue of the sample covariance, and the top-q principal directions."""
    d = x.shape[1]
    c = x - x.mean(0)
    lam, U = torch.linalg.eigh(c.T @ c / x.shape[0])
    lam, U = lam.flip(0), U.flip(1)
    s2 = float(lam[q:].mean())
    top = float(torch.log(lam[:q]).sum())
    return -0.5 * (d * math.log(2 * math.pi) + top + (d - q) * math.log(s2) + d), U[:, :q]


def test_linear_kl_autoencoder_at_the_ppca_solution_attains_the_ppca_likelihood():
    """With W = U_q (L_q - s2 I)^(1/2), b the mean, decoder std sqrt(s2) and the exact posterior
    as encoder, the ELBO's expectation is the PPCA maximum: checked on a large sample of
    (x, z) draws of the package's one-sample ELBO (analytic KL)."""
    g = torch.Generator().manual_seed(0)
    d, q, n = 5, 2, 4000
    A = (
        torch.diag(torch.tensor([3.0, 2.0, 0.6, 0.5, 0.4]))
        @ torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    )
    x = torch.randn(n, d, generator=g) @ A.T + torch.tensor([1.0, -1.0, 0.0, 0.5, 2.0])
    best, U = _ppca_optimum(x, q)
    c = x - x.mean(0)
    lam = torch.linalg.eigvalsh(c.T @ c / n).flip(0)
    s2 = float(lam[q:].mean())
    W = U * torch.sqrt(lam[:q] - s2)
    ae = KLAutoencoder(nn.Linear(d, 2 * q), nn.Linear(q, d), (d,), (q,), decoder_scale=s2**0.5)
    M = W.T @ W + s2 * torch.eye(q)  # diagonal: W's columns are orthogonal
    with torch.no_grad():
        ae.decoder.weight.copy_(W)
        ae.decoder.bias.copy_(x.mean(0))
        P = torch.linalg.solve(M, W.T)
        ae.encoder.weight.copy_(torch.cat([P, torch.zeros(q, d)]))
        ae.encoder.bias.copy_(torch.cat([-P @ x.mean(0), 0.5 * torch.log(s2 / torch.diag(M))]))
    elbo = torch.cat([ae.elbo(x, g) for _ in range(25)]).detach()
    assert float(elbo.mean()) == pytest.approx(best, abs=4 * float(elbo.std()) / len(elbo) ** 0.5)


def test_training_a_linear_kl_autoencoder_reaches_the_ppca_optimum():
    """Adam on the negative ELBO (beta = 1) of a linear autoencoder on Gaussian data, with the
    decoder's isotropic std fixed at PPCA's maximum-likelihood value (a learned per-pixel scale
    would make it factor analysis, whose optimum lies higher): the ELBO climbs to the PPCA
    maximum, not above it, and the decoder spans the top principal subspace."""
    g = torch.Generator().manual_seed(1)
    d, q, n = 4, 2, 512
    A = (
        torch.diag(torch.tensor([2.0, 1.5, 0.4, 0.3]))
        @ torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    )
    x = torch.randn(n, d, generator=g) @ A.T
    best, U = _ppca_optimum(x, q)
    c = x - x.mean(0)
    s2 = float(torch.linalg.eigvalsh(c.T @ c / n)[: d - q].mean())
    torch.manual_seed(0)
    ae = KLAutoencoder(nn.Linear(d, 2 * q), nn.Linear(q, d), (d,), (q,), decoder_scale=s2**0.5)
    ae.beta = 1.0
    opt = torch.optim.Adam(ae.parameters(), lr=5e-2)
    for _ in range(300):  # full batch; the one Trainer is exercised on the digits below
        opt.zero_grad()
        ae.loss(x, g).backward()
        opt.step()
    with torch.no_grad():
        elbo = torch.cat([ae.elbo(x, g) for _ in range(40)])
    se = float(elbo.std()) / len(elbo) ** 0.5
    assert float(elbo.mean()) <= best + 4 * se
    assert float(elbo.mean()) == pytest.approx(best, abs=0.01 * abs(best))
    Q, _ = torch.linalg.qr(ae.decoder.weight.detach())
    cosines = torch.linalg.svdvals(U.T @ Q)  # cosines of the principal angles
    assert float(cosines.min()) > 0.999


# ---------------------------------------------------------------- the Trainer on the digits


@pytest.mark.parametrize("kind", ["kl", "vq"])
def test_autoencoders_train_a_few_steps_with_the_trainer(kind):
    data = load_digits("train")
    x = data.x[:256].double()
    torch.manual_seed(0)
    model = (
        KLAutoencoder.conv((1, 8, 8), latent_channels=2, hidden=8)
        if kind == "kl"
        else VQVAE.conv((1, 8, 8), num_codes=16, code_dim=2, hidden=8, restart_threshold=0.5)
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    history = Trainer(
        model, density_loss(), x, batch_size=64, lr=2e-3, ema_decay=0.99, progress=False
    ).fit(8)
    assert len(history) == 8 and all(math.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any("encoder" in k for k in changed) and any("decoder" in k for k in changed)
    if kind == "vq":
        assert "quantizer.codebook" in changed  # EMA updates in the training step


@pytest.mark.slow
def test_autoencoders_learn_the_digits():
    """400 steps (float32): the KL autoencoder reconstructs the held-out digits at PSNR > 18 dB
    (rms error < 0.25 on [-1, 1]); the VQ-VAE above 15 dB with most codes in use."""
    train, test = load_digits("train"), load_digits("test")
    torch.manual_seed(0)
    ae = KLAutoencoder.conv((1, 8, 8), latent_channels=2, hidden=32, beta=1e-3).float()
    Trainer(ae, density_loss(), train.x, batch_size=64, lr=2e-3, progress=False).fit(400)
    stats = ae.evaluate(test.x)
    assert stats["psnr"] > 18.0, stats
    vq = VQVAE.conv((1, 8, 8), num_codes=32, code_dim=4, hidden=32, restart_threshold=0.5)
    vq = vq.float()
    Trainer(vq, density_loss(), train.x, batch_size=64, lr=2e-3, progress=False).fit(400)
    stats = vq.evaluate(test.x)
    assert stats["psnr"] > 15.0 and stats["usage"] > 0.5, stats
