"""One contract test per protocol, parametrized over every implementation (zuko's test_flows.py is
the model): every SDE, every sampler on every SDE, every density model.

Each case is small (batch 8, a few steps, 2-D data) so the whole file runs in well under a
minute on one core. The parameters are read from the library's own tables at collection time
(tests/conftest.py's SDE_FACTORIES, sdegen.solvers.METHODS, the subclasses of DensityModel), so
a new SDE, sampler or density model is tested here as soon as it exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from torch import Tensor, nn

import sdegen
from sdegen.models import (
    FFJORD,
    GAN,
    MLP,
    VAE,
    KLAutoencoder,
    LatentDiffusion,
    RealNVP,
    RealNVPImage,
    ScoreModel,
)
from sdegen.models.density import LOG_PROB_KINDS, DensityModel, bits_per_dim
from sdegen.protocols import SDE, ScoreModelLike, ScoreModelWithSDE
from sdegen.score_density import ScoreSDEDensity
from sdegen.sde import VPSDE
from sdegen.solvers import METHODS, steps_for_nfe

from .conftest import SDE_FACTORIES, mixture

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _times(sde, n: int = 33) -> Tensor:
    """n increasing times inside [t_min, T], off the knots k/N of a discrete (DDPM) schedule."""
    u = (torch.arange(n, dtype=F64) + 0.37) / n
    return sde.t_min + u * (sde.T - sde.t_min)


# ---- SDE: kernel, f and g^2 against alpha and sigma, log-SNR, prior --------------------------


@pytest.fixture(params=list(SDE_FACTORIES))
def any_sde(request):
    return SDE_FACTORIES[request.param]()


def test_sde_implements_the_protocol(any_sde):
    assert isinstance(any_sde, SDE)
    assert 0 <= any_sde.t_min < any_sde.T
    assert isinstance(mixture(any_sde), ScoreModelWithSDE)


def test_sde_kernel_is_perturbs_distribution(any_sde):
    sde, n = any_sde, 4096
    x0 = torch.tensor([1.5, -0.5], dtype=F64)
    for t in (sde.t_min, 0.5 * (sde.t_min + sde.T), sde.T):
        tb = torch.full((n,), t, dtype=F64)
        mean, std = sde.marginal(x0.expand(n, 2), tb)
        alpha, sigma = sde.alpha(tb[:1]), sde.sigma(tb[:1])
        torch.testing.assert_close(mean, alpha * x0.expand(n, 2), rtol=1e-12, atol=0)
        torch.testing.assert_close(std, sigma.expand(n), rtol=1e-12, atol=0)
        noise = torch.randn(n, 2, generator=_gen(0), dtype=F64)
        xt = sde.perturb(x0.expand(n, 2), tb, noise)
        assert xt.shape == (n, 2) and xt.dtype == F64
        # the draws' statistics: mean within 5 standard errors, std within 5 %
        se = 5 * float(sigma) / math.sqrt(n)
        assert (xt.mean(0) - alpha * x0).abs().max() < se, f"t={t:g}"
        torch.testing.assert_close(xt.std(0), sigma.expand(2), rtol=0.05, atol=0)


def _d_dt(fn: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """Elementwise d fn(t)/dt by autograd; zero where fn does not depend on t."""
    tt = t.detach().requires_grad_(True)
    y = fn(tt)
    if not y.requires_grad:
        return torch.zeros_like(t)
    return torch.autograd.grad(y.sum(), tt)[0]


def test_sde_f_and_g2_follow_from_alpha_and_sigma(any_sde):
    """f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2, by autograd through alpha, sigma."""
    sde = any_sde
    t = _times(sde)
    dlog_alpha = _d_dt(lambda s: torch.log(sde.alpha(s)), t)
    dsigma2 = _d_dt(lambda s: sde.sigma(s) ** 2, t)
    f, g2, sigma2 = sde.f(t), sde.g2(t), sde.sigma(t) ** 2
    scale = dsigma2.abs() + 2 * f.abs() * sigma2  # size of the terms g^2 is made of
    torch.testing.assert_close(f, dlog_alpha, rtol=1e-6, atol=1e-9)
    assert ((g2 - (dsigma2 - 2 * f * sigma2)).abs() <= 1e-6 * scale + 1e-12).all()
    assert (g2 > 0).all()
    x = torch.randn(t.shape[0], 3, generator=_gen(1), dtype=F64)
    torch.testing.assert_close(sde.drift(x, t), f[:, None] * x, rtol=1e-12, atol=0)
    torch.testing.assert_close(sde.diffusion(t) ** 2, g2, rtol=1e-10, atol=0)


def test_sde_transition_composes_the_kernels(any_sde):
    sde = any_sde
    t = _times(sde)
    s = sde.t_min + 0.5 * (t - sde.t_min)
    a, std = sde.transition(s, t)
    torch.testing.assert_close(a * sde.alpha(s), sde.alpha(t), rtol=1e-9, atol=0)
    torch.testing.assert_close(
        std**2 + (a * sde.sigma(s)) ** 2, sde.sigma(t) ** 2, rtol=1e-9, atol=1e-15
    )


def test_sde_log_snr_and_its_inverse(any_sde):
    sde = any_sde
    t = _times(sde)
    lam = sde.half_log_snr(t)
    torch.testing.assert_close(lam, torch.log(sde.alpha(t) / sde.sigma(t)), rtol=1e-9, atol=1e-9)
    assert (lam[1:] < lam[:-1]).all(), "log-SNR must decrease in t"
    torch.testing.assert_close(sde.t_of_half_log_snr(lam), t, rtol=1e-7, atol=1e-9 * sde.T)
    lo, hi = sde.half_log_snr_range()
    ends = sde.half_log_snr(torch.tensor([sde.T, sde.t_min], dtype=F64))
    assert lo == pytest.approx(float(ends[0]), rel=1e-12) and lo < hi
    assert hi == pytest.approx(float(ends[1]), rel=1e-12)


def test_sde_prior(any_sde):
    sde = any_sde
    z = sde.prior_sample((4096, 2), generator=_gen(2), dtype=F64)
    assert z.shape == (4096, 2) and z.dtype == F64
    assert torch.equal(z, sde.prior_sample((4096, 2), generator=_gen(2), dtype=F64))
    assert sde.prior_sample((3, 1, 2, 2), generator=_gen(2)).dtype == torch.float32
    torch.testing.assert_close(z.std(), torch.tensor(sde.prior_std, dtype=F64), rtol=0.05, atol=0)
    normal = torch.distributions.Normal(0.0, sde.prior_std)
    torch.testing.assert_close(sde.prior_log_prob(z), normal.log_prob(z).sum(1), rtol=1e-12, atol=0)
    img = z[:8].reshape(2, 1, 2, 4)
    torch.testing.assert_close(
        sde.prior_log_prob(img), normal.log_prob(img).sum((1, 2, 3)), rtol=1e-12, atol=0
    )
    # the prior stands in for p_T: for data of unit scale, p_T has std sqrt(alpha^2 + sigma^2)
    T = torch.tensor([sde.T], dtype=F64)
    p_T_std = float(torch.sqrt(sde.alpha(T) ** 2 + sde.sigma(T) ** 2))
    assert sde.prior_std == pytest.approx(p_T_std, rel=0.02)


# ---- sampler x SDE: shapes, dtypes, counted NFE, randomness only from the generator ----------


class ProtocolOnly:
    """The score-model protocol and nothing else (no .sde, no nn.Module), as a user's
    analytic score would be: every solver must work with it."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def score(self, x: Tensor, t: Tensor) -> Tensor:
        return self._inner.score(x, t)

    def denoise(self, x: Tensor, t: Tensor) -> Tensor:
        return self._inner.denoise(x, t)

    def eps(self, x: Tensor, t: Tensor) -> Tensor:
        return self._inner.eps(x, t)


BUDGET = 12  # network evaluations per sample: a few steps of every method


def _budgeted_steps(method: str) -> int | None:
    """steps_for_nfe(method, BUDGET), or None for an adaptive method (it has no step cost)."""
    try:
        return steps_for_nfe(method, BUDGET)
    except ValueError as err:
        if "adaptive" in str(err):
            return None
        raise


def _predicted_nfe(method: str, steps: int) -> int:
    """The cost steps_for_nfe assigns to `steps` steps and the final denoising: the smallest
    budget it fills with that many steps."""
    for n in range(1, 100 * (steps + 1)):
        try:
            if steps_for_nfe(method, n) >= steps:
                return n
        except ValueError:  # one step does not fit in n evaluations
            continue
    raise AssertionError(f"no budget up to {100 * (steps + 1)} buys {steps} steps of {method}")


def _stochastic(method: str) -> bool:
    """Whether the method draws noise with its default options, by its spec: every "sde"
    method, and an "ode" one whose `eta` is > 0 (DDIM, DPM-Solver++(3M))."""
    spec = METHODS[method]
    return spec.kind == "sde" or float(getattr(spec, "options", {}).get("eta", 0.0)) > 0


@pytest.mark.parametrize("sde_name", list(SDE_FACTORIES))
@pytest.mark.parametrize("method", list(METHODS))
def test_sampler_contract(method, sde_name):
    sde = SDE_FACTORIES[sde_name]()
    model = ProtocolOnly(mixture(sde))
    assert isinstance(model, ScoreModelLike)
    steps = _budgeted_steps(method)
    kw = {} if steps is None else {"nfe": BUDGET}
    shape = (8, 2)

    def run(seed: int, **extra):
        r = sdegen.sample(model, sde, shape, method=method, generator=_gen(seed), **kw, **extra)
        assert r.x.shape == shape, f"{method} on {sde_name}: shape {tuple(r.x.shape)}"
        assert bool(torch.isfinite(r.x).all()), f"{method} on {sde_name}: non-finite samples"
        return r

    a = run(0, dtype=F64)
    assert a.x.dtype == F64
    if steps is None:
        assert a.nfe > 0
    else:
        assert len(a.ts) == steps + 1
        assert a.nfe == _predicted_nfe(method, steps) <= BUDGET
    assert run(0, dtype=torch.float32).x.dtype == torch.float32
    # the generator is the only source of randomness: same seed, same samples, bit for bit
    b = run(0, dtype=F64)
    assert torch.equal(a.x, b.x) and a.nfe == b.nfe
    assert not torch.equal(a.x, run(1, dtype=F64).x)
    # given the prior draw, only stochastic methods still use the generator
    noise = sde.prior_sample(shape, generator=_gen(5), dtype=F64)
    c, d = run(6, noise=noise), run(7, noise=noise)
    assert torch.equal(c.x, d.x) != _stochastic(method), (
        f"{method} is {'stochastic' if _stochastic(method) else 'deterministic'} by its spec, "
        "but its samples from one prior draw "
        f"{'do not depend' if torch.equal(c.x, d.x) else 'depend'} on the generator"
    )


# ---- density models: log_prob, sample, gradients, normalisation ------------------------------


@dataclass(frozen=True)
class DensityCase:
    build: Callable[[], DensityModel]
    data: Callable[[int, torch.Generator], Tensor]
    # grid half-width and points per axis for the 2-D quadrature of exp(log_prob); None: skip
    # (an estimate or a bound does not integrate to one, an image model is not 2-D)
    grid: tuple[float, int] | None = None
    # tolerance of that quadrature: exact flows to the grid error, ODE densities also to the
    # solver tolerance
    grid_tol: float = 0.0
    log_prob_options: dict = field(default_factory=dict)
    # False where log_prob is piecewise constant in x (a discretized decoder)
    x_differentiable: bool = True


def _points(n: int, g: torch.Generator) -> Tensor:
    return 0.8 * torch.randn(n, 2, generator=g, dtype=F64)


def _unit_box(shape: tuple[int, ...]) -> Callable[[int, torch.Generator], Tensor]:
    return lambda n, g: 2 * torch.rand(n, *shape, generator=g, dtype=F64) - 1


def _initialised(model: DensityModel, shape: tuple[int, ...]) -> DensityModel:
    """The model after Glow's data-dependent ActNorm initialisation on a first batch (its state
    from the first training step on): until then the first log_prob call changes the model."""
    model.log_prob(torch.randn(64, *shape, generator=_gen(9), dtype=F64))
    return model


def _score_sde_analytic() -> ScoreSDEDensity:
    sde = VPSDE()
    return ScoreSDEDensity(mixture(sde), sde, (2,), rtol=1e-6, atol=1e-6)


def _score_sde_mlp() -> ScoreSDEDensity:
    sde = VPSDE()
    net = MLP(2, hidden=16, depth=1, embed_dim=8)
    return ScoreSDEDensity(ScoreModel(net, sde), sde, (2,))


def _latent_diffusion() -> LatentDiffusion:
    # a linear KL autoencoder (2 -> 2 latent dims) and a PF-ODE prior on its latents
    ae = KLAutoencoder(nn.Linear(2, 4), nn.Linear(2, 2), (2,), (2,))
    sde = VPSDE()
    net = MLP(2, hidden=16, depth=1, embed_dim=8)
    return LatentDiffusion(ae, ScoreSDEDensity(ScoreModel(net, sde), sde, (2,)))


DENSITY_CASES = {
    "RealNVP": DensityCase(
        lambda: RealNVP(2, num_layers=4, hidden=16, zero_init=False), _points, (9.0, 181), 1e-4
    ),
    "RealNVP-glow": DensityCase(
        lambda: _initialised(RealNVP(2, 3, 16, actnorm=True, inv_conv=True, zero_init=False), (2,)),
        _points,
        (9.0, 181),
        1e-4,
    ),
    "RealNVPImage": DensityCase(
        lambda: _initialised(
            RealNVPImage((1, 4, 4), num_scales=1, blocks_per_scale=1, hidden=4), (1, 4, 4)
        ),
        _unit_box((1, 4, 4)),
    ),
    "FFJORD": DensityCase(
        lambda: FFJORD(2, hidden_dims=(16,), activation="tanh", rtol=1e-6, atol=1e-6),
        _points,
        (7.0, 51),
        1e-4,
    ),
    "VAE": DensityCase(lambda: VAE.mlp(2, latent_dim=2, hidden=16, depth=1), _points),
    "VAE-discretized-conv": DensityCase(
        lambda: VAE.conv((1, 4, 4), latent_dim=2, hidden=2, likelihood="discretized", levels=17),
        _unit_box((1, 4, 4)),
        log_prob_options={"k": 16},
        x_differentiable=False,
    ),
    "GAN": DensityCase(lambda: GAN.mlp(2, latent_dim=2, hidden=16, depth=1), _points),
    "ScoreSDEDensity": DensityCase(
        _score_sde_analytic, _points, (6.0, 41), 1e-4, {"differentiable": True}
    ),
    "ScoreSDEDensity-mlp": DensityCase(
        _score_sde_mlp, _points, log_prob_options={"differentiable": True}
    ),
    "KLAutoencoder": DensityCase(
        lambda: KLAutoencoder(nn.Linear(2, 4), nn.Linear(2, 2), (2,), (2,)), _points
    ),
    "LatentDiffusion": DensityCase(
        _latent_diffusion, _points, log_prob_options={"differentiable": True}
    ),
}


def _subclasses(cls: type) -> set[type]:
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _subclasses(sub)
    return out


def test_every_density_model_is_in_the_contract():
    public = {c for c in _subclasses(DensityModel) if c.__module__.startswith("sdegen.")}
    public = {c for c in public if not c.__name__.startswith("_")}
    covered = {type(case.build()) for case in DENSITY_CASES.values()}
    missing = sorted(c.__name__ for c in public - covered)
    assert not missing, f"density models without a contract case in DENSITY_CASES: {missing}"


@pytest.fixture(params=list(DENSITY_CASES))
def density_case(request) -> tuple[DensityModel, DensityCase]:
    torch.manual_seed(0)  # parameter initialisation
    case = DENSITY_CASES[request.param]
    return case.build(), case


def test_density_sample(density_case):
    model, case = density_case
    assert isinstance(model, DensityModel) and model.log_prob_kind in LOG_PROB_KINDS
    x = model.sample(5, generator=_gen(0))
    assert x.shape == (5, *model.event_shape)
    assert bool(torch.isfinite(x).all())
    assert torch.equal(x, model.sample(5, generator=_gen(0)))
    assert not torch.equal(x, model.sample(5, generator=_gen(1)))


def test_density_log_prob(density_case):
    model, case = density_case
    x = case.data(8, _gen(1))
    if model.log_prob_kind == "none":  # a GAN: samples only, and says so
        for call in (
            lambda: model.log_prob(x),
            lambda: model.sample_and_log_prob(3),
            lambda: model.bits_per_dim(x, 2 / 256),
        ):
            with pytest.raises(TypeError, match="defines no density"):
                call()
        return
    torch.manual_seed(3)  # estimates draw from the global generator when given none
    lp = model.log_prob(x, **case.log_prob_options)
    assert lp.shape == (8,) and lp.dtype == x.dtype
    assert bool(torch.isfinite(lp).all())
    # bits/dim is log_prob with the dequantization offset
    torch.manual_seed(3)
    kw = {"k": case.log_prob_options["k"]} if "k" in case.log_prob_options else {}
    bpd = model.bits_per_dim(x, 2 / 17, **kw)
    torch.testing.assert_close(bpd, bits_per_dim(lp, math.prod(model.event_shape), 2 / 17))


def test_density_gradients_reach_x_and_every_parameter(density_case):
    model, case = density_case
    if model.log_prob_kind == "none":
        pytest.skip("a GAN has no log_prob to differentiate")
    params = dict(model.named_parameters())
    assert params or case.x_differentiable, "nothing to differentiate"
    x = case.data(4, _gen(2)).requires_grad_(case.x_differentiable)
    model.log_prob(x, **case.log_prob_options).sum().backward()
    if case.x_differentiable:
        assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    for name, p in params.items():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert bool(torch.isfinite(p.grad).all()), f"non-finite gradient in {name}"


@pytest.mark.parametrize("name", [n for n, c in DENSITY_CASES.items() if c.grid is not None])
def test_density_integrates_to_one(name):
    """Midpoint quadrature of exp(log_prob) over a square grid holding nearly all the mass."""
    torch.manual_seed(0)
    case = DENSITY_CASES[name]
    model = case.build()
    assert model.log_prob_kind in ("exact", "ode") and model.event_shape == (2,)
    half, n = case.grid
    h = 2 * half / n
    axis = -half + h * (torch.arange(n, dtype=F64) + 0.5)
    grid = torch.cartesian_prod(axis, axis)
    with torch.no_grad():
        mass = float(model.log_prob(grid).exp().sum()) * h * h
        inside = (model.sample(2000, generator=_gen(4)).abs() < half).all(1).double().mean()
    assert float(inside) > 0.999, "the grid must hold the model's samples"
    assert mass == pytest.approx(1.0, abs=case.grid_tol)


def test_density_sample_and_log_prob_agree(density_case):
    model, case = density_case
    if model.log_prob_kind not in ("exact", "ode"):
        pytest.skip(f"log_prob is {model.log_prob_kind!r}: not a deterministic density")
    x, lp = model.sample_and_log_prob(6, generator=_gen(3))
    assert x.shape == (6, *model.event_shape) and lp.shape == (6,)
    tol = 1e-9 if model.log_prob_kind == "exact" else 1e-3
    torch.testing.assert_close(lp.detach(), model.log_prob(x.detach()).detach(), rtol=0, atol=tol)


def test_vae_bound_is_labelled_and_is_a_bound():
    """The ELBO is reported as a bound (elbo_kind, docstring) and stays below the exact log p of
    a linear-Gaussian VAE (probabilistic PCA); log_prob says it is an estimate."""
    torch.manual_seed(0)
    W = torch.tensor([[1.0, 0.0], [0.5, 0.8], [0.0, 0.3]], dtype=F64)
    b = torch.tensor([0.1, -0.2, 0.3], dtype=F64)
    model = VAE.linear_gaussian(W, b, noise_std=0.5)
    assert model.elbo_kind == "bound" and model.log_prob_kind == "estimate"
    assert "lower bound" in VAE.elbo.__doc__ and "estimate" in VAE.log_prob.__doc__
    x = torch.randn(16, 3, generator=_gen(5), dtype=F64)
    exact = torch.distributions.MultivariateNormal(b, W @ W.T + 0.25 * torch.eye(3)).log_prob(x)
    with torch.no_grad():
        elbo = torch.stack([model.elbo(x, generator=_gen(s)) for s in range(200)]).mean(0)
        iw = model.log_prob(x, k=2000, generator=_gen(6))
    assert (elbo < exact).all()
    # log of a k-sample mean: below log p in expectation (Jensen), above the ELBO
    assert float((iw - exact).mean()) < 0.02 and float(iw.mean()) > float(elbo.mean())
