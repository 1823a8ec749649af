"""GAN variants and alternating updates: each loss and its gradient against hand-derived formulas
on a linear critic, the optimal discriminator D* = (1 - s) p_data / (p_data + p_g) reached by
training, weight clipping, spectral normalisation against torch.linalg.matrix_norm(ord=2), and
the Trainer's alternating mode (n_critic counted, per-player learning rates, bit-exact resume)."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sdegen.models import GAN, MLP, ScoreModel
from sdegen.sde import VPSDE
from sdegen.training import Player, Trainer, adversarial_loss, density_loss, score_matching
from sdegen.training import trainer as trainer_module


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear_gan(objective: str, **kw) -> GAN:
    """G(z) = A z + c (latent 2 -> 2), D(x) = w . x + b, with fixed, non-trivial values."""
    g, d = nn.Linear(2, 2), nn.Linear(2, 1)
    with torch.no_grad():
        g.weight.copy_(torch.tensor([[0.8, -0.3], [0.2, 1.1]]))
        g.bias.copy_(torch.tensor([0.5, -0.4]))
        d.weight.copy_(torch.tensor([[0.7, -1.3]]))
        d.bias.copy_(torch.tensor([0.2]))
    return GAN(g, d, (2,), 2, objective, **kw)


OBJECTIVE_CASES = [
    ("nonsaturating", {}),
    ("nonsaturating", {"label_smoothing": 0.1}),
    ("saturating", {}),
    ("saturating", {"label_smoothing": 0.25}),
    ("wgan-clip", {}),
    ("wgan-gp", {"gp_weight": 3.0}),
]


@pytest.mark.parametrize("objective, kw", OBJECTIVE_CASES)
def test_losses_and_gradients_match_hand_computed_formulas(objective, kw):
    model = linear_gan(objective, **kw)
    g, d = model.generator_net, model.discriminator_net
    x = torch.randn(7, 2, generator=gen(0))
    z = torch.randn(7, 2, generator=gen(1))  # what model.noise draws first from gen(1)
    w, b = d.weight.detach()[0], d.bias.detach()[0]
    fake = z @ g.weight.detach().T + g.bias.detach()
    d_r, d_f = x @ w + b, fake @ w + b
    sig = torch.sigmoid
    s = kw.get("label_smoothing", 0.0)

    # the discriminator's loss and its gradient in (w, b)
    if objective in ("nonsaturating", "saturating"):
        want = ((1 - s) * F.softplus(-d_r) + s * F.softplus(d_r)).mean() + F.softplus(d_f).mean()
        coef_r = -(1 - s) * sig(-d_r) + s * sig(d_r)  # dloss/dd_r per example (times B)
        coef_f = sig(d_f)
    else:
        want = d_f.mean() - d_r.mean()
        coef_r, coef_f = -torch.ones(7), torch.ones(7)
    want_w = (coef_r[:, None] * x).mean(0) + (coef_f[:, None] * fake).mean(0)
    want_b = coef_r.mean() + coef_f.mean()
    if objective == "wgan-gp":  # a linear critic's input gradient is w everywhere
        lam, norm = kw["gp_weight"], w.norm()
        want = want + lam * (norm - 1) ** 2
        want_w = want_w + lam * 2 * (norm - 1) * w / norm
    loss = model.discriminator_loss(x, gen(1))
    got_w, got_b = torch.autograd.grad(loss, [d.weight, d.bias])
    torch.testing.assert_close(loss, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got_w[0], want_w, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got_b[0], want_b, atol=1e-12, rtol=1e-12)

    # the generator's loss and its gradient in (A, c): d loss / d fake_i = coef_i w / B
    if objective == "nonsaturating":
        want, coef = F.softplus(-d_f).mean(), -sig(-d_f)
    elif objective == "saturating":
        want, coef = torch.log1p(-sig(d_f)).mean(), -sig(d_f)
    else:
        want, coef = -d_f.mean(), -torch.ones(7)
    loss = model.generator_loss(7, gen(1))
    got_a, got_c = torch.autograd.grad(loss, [g.weight, g.bias])
    torch.testing.assert_close(loss, want, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got_c, coef.mean() * w, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(got_a, w[:, None] * (coef[:, None] * z).mean(0), atol=1e-12, rtol=0)


def test_saturating_generator_gradient_vanishes_where_the_nonsaturating_one_does_not():
    """With D(G(z)) around -15 (fakes confidently rejected), the minimax generator's gradient is
    sigmoid(D) ~ 3e-7 times the non-saturating one's (Goodfellow et al. 2014, section 3)."""
    grads = {}
    for objective in ("saturating", "nonsaturating"):
        model = linear_gan(objective)
        with torch.no_grad():
            model.discriminator_net.bias.fill_(-15.0)
        loss = model.generator_loss(64, gen(2))
        (grads[objective],) = torch.autograd.grad(loss, [model.generator_net.bias])
    ratio = grads["saturating"].norm() / grads["nonsaturating"].norm()
    assert 1e-8 < float(ratio) < 1e-5
    assert float(grads["nonsaturating"].norm()) > 0.5  # about |w| = 1.48


@pytest.mark.parametrize("objective", ["saturating", "wgan-clip"])
def test_combined_loss_gives_each_player_its_own_gradient(objective):
    torch.manual_seed(0)
    model = GAN.mlp(3, latent_dim=2, hidden=16, objective=objective, spectral_norm=True)
    x = torch.randn(6, 3, generator=gen(0))
    d_params = model.player_parameters("discriminator")
    g_params = model.player_parameters("generator")
    model.eval()  # no power-iteration update between the three evaluations
    combined = model.loss(x, gen(9))
    got = torch.autograd.grad(combined, d_params + g_params)
    want = torch.autograd.grad(model.discriminator_loss(x, gen(9)), d_params)
    want += torch.autograd.grad(model.generator_loss(6, gen(9)), g_params)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_training_the_discriminator_reaches_its_optimum(smoothing):
    """p_data = N(1, 1), p_g = N(-1, 1) (a fixed generator z - 1): a flexible discriminator
    trained on its loss approaches D*(x) = (1 - s) p_data / (p_data + p_g) = (1 - s) sigmoid(2x)
    (Goodfellow et al. 2014, Prop. 1; with one-sided smoothing s, Salimans et al. 2016)."""
    torch.manual_seed(0)
    g = nn.Linear(1, 1)
    with torch.no_grad():
        g.weight.fill_(1.0)
        g.bias.fill_(-1.0)
    d = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    model = GAN(g, d, (1,), 1, "nonsaturating", label_smoothing=smoothing)
    opt = torch.optim.Adam(model.player_parameters("discriminator"), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 200)
    for step in range(200):
        x = 1 + torch.randn(1024, 1, generator=gen(2 * step))
        loss = model.discriminator_loss(x, gen(2 * step + 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    grid = torch.linspace(-2, 2, 41)[:, None]
    with torch.no_grad():
        got = torch.sigmoid(model.critic(grid))
    want = (1 - smoothing) * torch.sigmoid(2 * grid[:, 0])
    assert float((got - want).abs().max()) < 0.03
    # and the smoothed optimum is told apart from the plain one
    other = (1 - (0.1 - smoothing)) * torch.sigmoid(2 * grid[:, 0])
    assert float((got - other).abs()[grid[:, 0] > 1].min()) > 0.04


def _toy_data(n: int = 512) -> torch.Tensor:
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    return centres[torch.arange(n) % 2] + 0.3 * torch.randn(n, 2, generator=gen(0))


@pytest.mark.parametrize("alternating", [True, False])
def test_weight_clipping_keeps_every_critic_parameter_in_bounds(alternating):
    torch.manual_seed(0)
    c = 0.01
    model = GAN.mlp(2, latent_dim=2, hidden=16, objective="wgan-clip", clip_value=c)
    assert max(float(p.detach().abs().max()) for p in model.discriminator_net.parameters()) > 10 * c
    players = {"discriminator": Player(steps=5), "generator": Player()} if alternating else None
    objective = adversarial_loss() if alternating else density_loss()
    Trainer(
        model, objective, _toy_data(), batch_size=64, lr=5e-3, players=players, progress=False
    ).fit(3)
    critic = torch.cat([p.detach().flatten() for p in model.player_parameters("discriminator")])
    assert float(critic.abs().max()) <= c
    assert int((critic.abs() == c).sum()) > critic.numel() // 4  # the clip was active
    generator = torch.cat([p.detach().flatten() for p in model.player_parameters("generator")])
    assert float(generator.abs().max()) > 10 * c  # the generator is never clipped


def _sn_layers(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


@pytest.mark.parametrize("builder", ["mlp", "dcgan"])
def test_spectral_norm_gives_unit_largest_singular_value(builder):
    torch.manual_seed(0)
    if builder == "mlp":
        model = GAN.mlp(2, latent_dim=2, hidden=16, spectral_norm=True)
        x = torch.randn(32, 2, generator=gen(0))
    else:
        model = GAN.dcgan((1, 8, 8), latent_dim=4, hidden=4, spectral_norm=True)
        x = torch.randn(8, 1, 8, 8, generator=gen(0))
    layers = _sn_layers(model.discriminator_net)
    assert len(layers) == 3 and all(hasattr(m, "parametrizations") for m in layers)
    # training steps, then a few more training-mode forwards (power iteration) at fixed weights
    Trainer(model, density_loss(), x.repeat(4, *[1] * (x.ndim - 1)), batch_size=16,
            lr=1e-2, progress=False).fit(3)  # fmt: skip
    model.train()
    with torch.no_grad():
        for _ in range(30):
            model.critic(x)
    raw_sigmas = []
    for m in layers:
        w = m.weight.detach().reshape(m.weight.shape[0], -1)
        sigma = float(torch.linalg.matrix_norm(w, ord=2))
        assert abs(sigma - 1) < 1e-3, sigma
        raw = m.parametrizations.weight.original.detach().reshape(w.shape)
        raw_sigmas.append(float(torch.linalg.matrix_norm(raw, ord=2)))
        torch.testing.assert_close(w, raw / raw_sigmas[-1], rtol=1e-3, atol=1e-6)  # W / sigma(W)
    assert max(abs(s - 1) for s in raw_sigmas) > 0.1  # the raw weights were not unit already
    # without it, the same builder's layers are plain
    plain = GAN.mlp(2, latent_dim=2, hidden=16)
    assert not any(hasattr(m, "parametrizations") for m in _sn_layers(plain.discriminator_net))


def _counting(objective):
    calls = []

    def wrapped(model, x, rnd, player):
        calls.append(player)
        return objective(model, x, rnd, player)

    return wrapped, calls


def test_n_critic_five_makes_exactly_five_critic_updates_per_generator_update():
    torch.manual_seed(0)
    model = GAN.mlp(2, latent_dim=2, hidden=16, objective="wgan-gp")
    objective, calls = _counting(adversarial_loss())
    players = {"discriminator": Player(steps=5), "generator": Player(steps=1)}
    trainer = Trainer(model, objective, _toy_data(), batch_size=64, players=players, progress=False)
    history = trainer.fit(4)
    assert calls == (["discriminator"] * 5 + ["generator"]) * 4
    state = trainer.optimizer.state  # Adam's per-parameter step counts = optimizer steps taken
    for name, want in (("discriminator", 20), ("generator", 4)):
        counts = {int(state[p]["step"]) for p in model.player_parameters(name)}
        assert counts == {want}, (name, counts)
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert {"loss_discriminator", "loss_generator", "grad_norm_generator"} <= set(history[-1])


def test_each_player_steps_with_its_own_learning_rate():
    """Adam's first step moves every parameter by lr * g / (|g| + eps) = lr in size: one round
    moves each player's parameters by exactly its own rate (two-time-scale rule)."""
    torch.manual_seed(0)
    model = GAN.mlp(2, latent_dim=2, hidden=16)
    before = {n: [p.detach().clone() for p in model.player_parameters(n)] for n in model.players}
    lrs = {"discriminator": 4e-3, "generator": 1e-3}
    players = {n: Player(lr=lr, betas=(0.0, 0.9)) for n, lr in lrs.items()}
    trainer = Trainer(model, adversarial_loss(), _toy_data(), batch_size=64, players=players,
                      ema_decay=None, grad_clip=None, progress=False)  # fmt: skip
    trainer.fit(1)
    for name, lr in lrs.items():
        moved = torch.cat(
            [(p.detach() - q).abs().flatten()
             for p, q in zip(model.player_parameters(name), before[name])]
        )  # fmt: skip
        moved = moved[moved > 0]
        assert moved.numel() > 0.9 * sum(q.numel() for q in before[name])
        # |step| = lr |g| / (|g| + eps) <= lr, near lr for most gradients (eps = 1e-8)
        assert float(moved.max()) <= lr * (1 + 1e-9)
        assert abs(float(moved.median()) / lr - 1) < 2e-3
    groups = {g["player"]: g for g in trainer.optimizer.param_groups}
    assert groups["generator"]["betas"] == (0.0, 0.9) and groups["generator"]["lr"] == 1e-3


def _alternating_trainer(run_dir, seed: int = 3) -> Trainer:
    torch.manual_seed(0)
    model = GAN.mlp(2, latent_dim=2, hidden=16, objective="nonsaturating", spectral_norm=True,
                    label_smoothing=0.1)  # fmt: skip
    players = {
        "discriminator": Player(steps=2, lr=4e-3, betas=(0.0, 0.9)),
        "generator": Player(lr=1e-3, betas=(0.5, 0.99)),
    }
    return Trainer(model, adversarial_loss(), _toy_data(), batch_size=64, players=players,
                   warmup=3, seed=seed, run_dir=run_dir, ckpt_every=3, progress=False)  # fmt: skip


def test_alternating_resume_repeats_the_uninterrupted_run_bit_for_bit(tmp_path):
    a = _alternating_trainer(tmp_path / "a")
    history_a = a.fit(6)
    b = _alternating_trainer(tmp_path / "b")
    b.fit(3)
    del b  # "killed" after its step-3 checkpoint; a new process rebuilds and resumes
    c = _alternating_trainer(tmp_path / "b")
    assert c.resume() and c.step == 3
    history_c = c.fit(6)
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in history_a[3:]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in history_c]
    for key, value in a.model.state_dict().items():  # weights and spectral-norm vectors
        assert torch.equal(value, c.model.state_dict()[key]), key
    for key, value in a.eval_model.state_dict().items():
        assert torch.equal(value, c.eval_model.state_dict()[key]), key
    sa, sc = a.optimizer.state_dict(), c.optimizer.state_dict()
    for pid, state in sa["state"].items():  # both players' Adam moments and step counts
        for k, v in state.items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(sc["state"][pid][k]))
    # a different seed gives a different run (the comparison above could fail)
    other = _alternating_trainer(tmp_path / "other", seed=4)
    other.fit(6)
    assert not torch.equal(other.model.generator_net[0].weight, a.model.generator_net[0].weight)


def _trainer_kwargs(**kw):
    model = GAN.mlp(2, latent_dim=2, hidden=8)
    base = {"batch_size": 16, "progress": False}
    players = {"discriminator": Player(steps=2), "generator": Player()}
    return model, {**base, "players": kw.pop("players", players), **kw}


V, T = ValueError, TypeError
BAD = [
    (lambda: GAN.mlp(2, objective="minimax"), V, "unknown objective 'minimax'"),
    (lambda: GAN.mlp(2, objective="wgan-clip", clip_value=0.0), V, "clip_value must be > 0"),
    (lambda: GAN.mlp(2, label_smoothing=0.5), V, "label_smoothing must be in [0, 0.5), got 0.5"),
    (lambda: GAN.mlp(2, label_smoothing=-0.1), V, "label_smoothing must be >= 0"),
    (lambda: GAN.mlp(2, objective="wgan-gp", label_smoothing=0.1), V, "a logistic objective"),
    (lambda: GAN.mlp(2, spectral_norm="yes"), T, "spectral_norm must be a bool, got 'yes'"),
    (lambda: GAN.dcgan((1, 8, 8), spectral_norm=1), T, "spectral_norm must be a bool, got 1"),
    (lambda: GAN.mlp(2).player_loss("critic", torch.zeros(3, 2)), V, "unknown player 'critic'"),
    (lambda: GAN.mlp(2).player_parameters("gen"), V, "unknown player 'gen'"),
    (lambda: GAN.mlp(2).after_step("critic"), V, "unknown player 'critic'"),
    (lambda: Player(steps=0), V, "steps must be an integer >= 1, got 0"),
    (lambda: Player(lr=-1.0), V, "lr must be > 0, got -1.0"),
    (lambda: Player(betas=(1.0, 0.9)), V, "betas must be two numbers in [0, 1), got (1.0, 0.9)"),
    (lambda: Player(weight_decay=math.nan), V, "weight_decay must be finite"),
]


@pytest.mark.parametrize("make, error, message", BAD)
def test_bad_gan_and_player_arguments_are_named(make, error, message):
    with pytest.raises(error, match=re.escape(message)):
        make()


class _Shared(GAN):
    def player_parameters(self, player):
        return list(self.parameters())  # both players claim everything


def test_trainer_refuses_bad_players(monkeypatch):
    data = _toy_data(64)
    model, kw = _trainer_kwargs(players={"discriminator": Player()})
    with pytest.raises(ValueError, match=re.escape("each of the model's players")):
        Trainer(model, adversarial_loss(), data, **kw)
    model, kw = _trainer_kwargs(players={"discriminator": 5, "generator": Player()})
    with pytest.raises(TypeError, match=re.escape("players['discriminator'] must be a Player")):
        Trainer(model, adversarial_loss(), data, **kw)
    model, kw = _trainer_kwargs(labels=torch.zeros(64, dtype=torch.long))
    with pytest.raises(ValueError, match="takes no labels"):
        Trainer(model, adversarial_loss(), data, **kw)
    _, kw = _trainer_kwargs()
    score = ScoreModel(MLP(2, hidden=8, depth=1), VPSDE())
    with pytest.raises(TypeError, match="needs a model with `players`.*got ScoreModel"):
        Trainer(score, score_matching(), data, **kw)
    shared = _Shared(nn.Linear(2, 2), nn.Linear(2, 1), (2,), 2)
    with pytest.raises(ValueError, match="'discriminator' and 'generator' share a parameter"):
        Trainer(shared, adversarial_loss(), data, **_trainer_kwargs()[1])
    # under torchrun (two processes), alternating updates are refused by name
    monkeypatch.setattr(trainer_module, "init_distributed", lambda device: (0, 2))
    model, kw = _trainer_kwargs()
    with pytest.raises(ValueError, match="runs on one process, got 2"):
        Trainer(model, adversarial_loss(), data, **kw)
