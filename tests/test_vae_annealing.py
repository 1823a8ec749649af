"""KL annealing (Bowman et al. 2016; cyclical: Fu et al. 2019) and free bits (Kingma et al. 2016)
for the VAE: the schedule's values against its formula, the free-bits gradient against autograd
of the plain KL, the training loss against -ELBO, and the ELBO/log_prob unchanged by both.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sdegen.models import VAE, KLSchedule, free_bits_kl
from sdegen.training import StepRandom, Trainer, annealed_vae_loss, density_loss


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- the schedule ------------------------------------------------------------------------------


def test_linear_schedule_values():
    s = KLSchedule(beta=0.5, warmup=200)
    assert [s(k) for k in (0, 1, 50, 100, 199, 200, 10_000)] == [
        0.0,
        0.5 / 200,
        0.125,
        0.25,
        0.5 * 199 / 200,
        0.5,
        0.5,
    ]
    assert KLSchedule(beta=2.0)(0) == 2.0  # no warm-up: the target from the first step


def test_cyclical_schedule_values():
    # Fu et al.'s shape: M = 4 cycles over 400 steps, rising over R = 0.5 of each cycle
    s = KLSchedule(beta=1.0, warmup=50, period=100)
    values = [s(k) for k in range(400)]
    for cycle in range(4):
        chunk = values[100 * cycle : 100 * (cycle + 1)]
        assert chunk[:50] == [k / 50 for k in range(50)]
        assert chunk[50:] == [1.0] * 50


@given(
    beta=st.floats(0, 10),
    warmup=st.integers(0, 50),
    extra=st.integers(0, 50),
    step=st.integers(0, 10_000),
)
def test_schedule_formula_and_range(beta, warmup, extra, step):
    period = max(warmup, 1) + extra
    s = KLSchedule(beta=beta, warmup=warmup, period=period)
    tau = step % period
    want = beta if warmup == 0 else beta * min(1.0, tau / warmup)
    assert s(step) == want
    assert 0.0 <= s(step) <= beta
    # the one-shot schedule is the cyclical one's first cycle
    assert KLSchedule(beta=beta, warmup=warmup)(tau) == want


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"beta": -1.0}, "beta"),
        ({"beta": math.nan}, "beta"),
        ({"warmup": -1}, "warmup"),
        ({"warmup": 1.5}, "warmup"),
        ({"warmup": 10, "period": 5}, "period"),
        ({"period": 0}, "period"),
    ],
)
def test_schedule_refuses_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        KLSchedule(**kwargs)


def test_schedule_refuses_bad_step():
    with pytest.raises((ValueError, TypeError), match="step"):
        KLSchedule(warmup=3)(-1)


# ---- free bits ---------------------------------------------------------------------------------


def _kl_per_dim(mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per element, written independently of the VAE."""
    p = torch.distributions.Normal(mu, log_sigma.exp())
    return torch.distributions.kl_divergence(p, torch.distributions.Normal(0.0, 1.0))


def test_free_bits_gradient_is_zero_below_lambda_and_the_kl_gradient_above():
    g = gen(0)
    # dims 0, 2 near the prior (KL well below lambda = 0.5), dims 1, 3 far from it
    mu = torch.randn(16, 4, generator=g) * torch.tensor([0.05, 2.0, 0.05, 1.5])
    mu.requires_grad_(True)
    log_sigma = (0.02 * torch.randn(16, 4, generator=g)).requires_grad_(True)
    kl = _kl_per_dim(mu, log_sigma)
    lam = 0.5
    below = kl.mean(0) < lam
    assert below.tolist() == [True, False, True, False]
    fb_grads = torch.autograd.grad(free_bits_kl(kl, lam), (mu, log_sigma), retain_graph=True)
    kl_grads = torch.autograd.grad(kl.mean(0).sum(), (mu, log_sigma))
    for fb, full in zip(fb_grads, kl_grads):
        assert torch.equal(fb[:, below], torch.zeros_like(fb[:, below]))
        torch.testing.assert_close(fb[:, ~below], full[:, ~below], rtol=0, atol=1e-15)
        assert full[:, below].abs().max() > 0  # the plain KL does pull these dims
    # the value: lambda for each dim below, the batch-mean KL above
    want = lam * int(below.sum()) + float(kl.mean(0)[~below].sum())
    assert float(free_bits_kl(kl, lam)) == pytest.approx(want, rel=1e-14)


def test_free_bits_groups_clamp_the_group_sum():
    kl = torch.tensor([[0.1, 0.2, 3.0, 0.0], [0.3, 0.2, 1.0, 0.0]])  # dim means .2 .2 2 0
    assert float(free_bits_kl(kl, 0.5, groups=2)) == pytest.approx(0.5 + 2.0)  # sums .4, 2
    assert float(free_bits_kl(kl, 0.5, groups=1)) == pytest.approx(2.4)
    assert float(free_bits_kl(kl, 0.5)) == pytest.approx(0.5 + 0.5 + 2.0 + 0.5)
    assert float(free_bits_kl(kl, 0.0)) == pytest.approx(float(kl.sum(1).mean()))
    with pytest.raises(ValueError, match="groups"):
        free_bits_kl(kl, 0.5, groups=3)
    with pytest.raises(ValueError, match="free_bits"):
        free_bits_kl(kl, -0.1)
    with pytest.raises(ValueError, match="kl"):
        free_bits_kl(kl[0], 0.5)


# ---- the VAE's loss ----------------------------------------------------------------------------


def _vae(**kwargs) -> VAE:
    torch.manual_seed(0)
    return VAE.mlp(5, latent_dim=4, hidden=16, **kwargs)


def test_loss_is_minus_the_elbo_exactly_with_beta_one_and_no_free_bits():
    vae = _vae()
    x = torch.randn(12, 5, generator=gen(1))
    loss = vae.loss(x, gen(2))
    assert torch.equal(loss, -vae.elbo(x, gen(2)).mean())
    assert torch.equal(vae.loss(x, gen(2), beta=1.0), loss)


def test_loss_with_beta_and_free_bits_against_its_terms():
    vae = _vae(free_bits=0.3, free_bits_groups=2)
    x = torch.randn(12, 5, generator=gen(1))
    rec, kl = vae.elbo_terms(x, gen(2), per_dim=True)
    # independent KL per dimension from the encoder's output
    mu, log_sigma = vae.encode(x)
    torch.testing.assert_close(kl, _kl_per_dim(mu, log_sigma), rtol=1e-12, atol=1e-14)
    groups = kl.mean(0).reshape(2, 2).sum(1)
    want = -rec.mean() + 0.25 * groups.clamp_min(0.3).sum()
    torch.testing.assert_close(vae.loss(x, gen(2), beta=0.25), want, rtol=1e-14, atol=0)
    # summed per-dim KL is elbo_terms' KL
    torch.testing.assert_close(kl.sum(1), vae.elbo_terms(x, gen(2))[1], rtol=1e-14, atol=0)


def test_annealing_and_free_bits_leave_the_elbo_and_log_prob_unchanged():
    plain = _vae()
    other = _vae(beta=0.1, free_bits=2.0)  # same weights (same seed), other training loss
    x = torch.randn(6, 5, generator=gen(3))
    assert torch.equal(plain.elbo(x, gen(4)), other.elbo(x, gen(4)))
    assert torch.equal(plain.log_prob(x, k=50, generator=gen(5)), other.log_prob(x, 50, gen(5)))
    # while the training losses differ
    assert not torch.isclose(other.loss(x, gen(4)), plain.loss(x, gen(4)))


def test_vae_refuses_bad_free_bits():
    with pytest.raises(ValueError, match="free_bits"):
        _vae(free_bits=-1.0)
    with pytest.raises(ValueError, match="free_bits_groups"):
        _vae(free_bits=1.0, free_bits_groups=3)
    with pytest.raises(ValueError, match="beta"):
        _vae().loss(torch.zeros(2, 5), beta=-0.5)


def test_latent_activity_is_the_variance_of_the_encoder_means():
    vae = _vae()
    x = torch.randn(40, 5, generator=gen(6))
    mu = vae.encode(x)[0]
    want = ((mu - mu.mean(0)) ** 2).mean(0)
    torch.testing.assert_close(vae.latent_activity(x), want, rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="2 examples"):
        vae.latent_activity(x[:1])


# ---- the annealed objective --------------------------------------------------------------------


def test_annealed_objective_uses_the_step_of_its_random_source():
    vae = _vae(free_bits=0.1)
    x = torch.randn(8, 5, generator=gen(7))
    schedule = KLSchedule(beta=1.0, warmup=10)
    objective = annealed_vae_loss(schedule)
    for step in (0, 3, 10, 25):
        rnd = StepRandom(0, step, 0, 1, len(x))
        rnd.step = step  # what the Trainer's StepRandom carries
        want = vae.loss(x, gen(1), beta=schedule(step))
        rnd.generator = gen(1)
        assert torch.equal(objective(vae, x, rnd), want)


def test_annealed_objective_refuses_a_source_without_step_and_a_non_vae():
    objective = annealed_vae_loss(KLSchedule(warmup=5))
    x = torch.randn(4, 5)

    class NoStep:
        generator = None

    with pytest.raises(TypeError, match="step=lambda: trainer.step"):
        objective(_vae(), x, NoStep())
    with pytest.raises(TypeError, match="step must be a callable"):
        annealed_vae_loss(KLSchedule(), step=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="VAE"):
        objective(torch.nn.Linear(5, 5), x, NoStep())
    with pytest.raises(TypeError, match="KLSchedule"):
        annealed_vae_loss(lambda step: 1.0)  # type: ignore[arg-type]


class RecordingSchedule(KLSchedule):
    """A KLSchedule that records the steps it is asked about."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seen: list[int] = []

    def __call__(self, step: int) -> float:
        self.seen.append(step)
        return super().__call__(step)


def test_trainer_steps_through_the_schedule_and_resumes_it(tmp_path):
    data = torch.randn(64, 5, generator=gen(8))

    def trainer_for(schedule: KLSchedule) -> Trainer:
        vae = _vae()
        # the Trainer's StepRandom carries the step: no step= needed
        objective = annealed_vae_loss(schedule)
        trainer = Trainer(
            vae,
            objective,
            data,
            batch_size=16,
            progress=False,
            ema_decay=None,
            run_dir=tmp_path,
            ckpt_every=3,
        )
        return trainer

    schedule = RecordingSchedule(beta=1.0, warmup=4)
    trainer = trainer_for(schedule)
    # the first step's loss is the reconstruction term alone (beta = schedule(0) = 0)
    x0 = trainer._batch(0)[0]
    with torch.no_grad():
        want = float(trainer.model.loss(x0, StepRandom(0, 0, 0, 1, 16).generator, beta=0.0))
    assert trainer.train_step()["loss"] == pytest.approx(want, rel=1e-12)
    trainer.fit(3)
    assert schedule.seen == [0, 1, 2]
    # a resumed run continues the schedule at the checkpoint's step
    resumed_schedule = RecordingSchedule(beta=1.0, warmup=4)
    resumed = trainer_for(resumed_schedule)
    assert resumed.resume() and resumed.step == 3
    resumed.fit(5)
    assert resumed_schedule.seen == [3, 4]


def test_plain_trainer_path_is_unchanged():
    # density_loss still trains the VAE on the negative ELBO (beta = model.beta)
    data = torch.randn(64, 5, generator=gen(9))
    vae = _vae()
    trainer = Trainer(vae, density_loss(), data, batch_size=16, progress=False, ema_decay=None)
    x0 = trainer._batch(0)[0]
    want = float(-vae.elbo(x0, StepRandom(0, 0, 0, 1, 16).generator).mean())
    assert trainer.train_step()["loss"] == pytest.approx(want, rel=1e-12)
