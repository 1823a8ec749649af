"""SDEdit (sample from x_init perturbed to t_start) and linear inverse problems y = A x + sigma_y n
(sdegen.solvers.inverse), against closed forms on Gaussian data: the PF-ODE's linear flow map,
the Gaussian posterior p(x | y), and autograd for every operator's adjoint."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.nn import functional as F

import sdegen
from sdegen.models import GaussianScore
from sdegen.sde import VESDE, VPSDE
from sdegen.solvers.inverse import (
    Blur,
    Downsample,
    Grayscale,
    Inpaint,
    LinearOperator,
    Matrix,
    posterior_guidance_variance,
)

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gaussian(D: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = _gen(seed)
    A = torch.randn(D, D, dtype=F64, generator=g)
    return 0.3 * torch.randn(D, dtype=F64, generator=g), A @ A.T / D + 0.1 * torch.eye(D)


# ---------------------------------------------------------------- operators

_MASK = torch.tensor([[[True, False, True], [False, True, True]]])
OPERATORS = {
    "inpaint": (lambda: Inpaint(_MASK), (1, 2, 3)),
    "inpaint_per_example": (
        lambda: Inpaint(torch.stack([_MASK, _MASK.flip(-1), _MASK]), per_example=True),
        (1, 2, 3),
    ),
    "downsample": (lambda: Downsample(2), (2, 4, 6)),
    "grayscale": (lambda: Grayscale(3), (3, 2, 3)),
    "blur": (lambda: Blur.gaussian(3, 0.8), (2, 3, 4)),
    "blur_5": (lambda: Blur(0.1 * torch.randn(5, 5, generator=_gen(3)) + _spike(5)), (1, 4, 3)),
    "matrix": (lambda: Matrix(torch.randn(4, 6, generator=_gen(2))), (6,)),
}


def _spike(k: int) -> torch.Tensor:
    e = torch.zeros(k, k)
    e[k // 2, k // 2] = 1.0
    return e


def _dense(op: LinearOperator, event: tuple[int, ...]) -> torch.Tensor:
    """A as an (m, D) matrix, from A applied to the unit vectors."""
    D = math.prod(event)
    return op(torch.eye(D, dtype=F64).reshape(D, *event)).reshape(D, -1).T


@pytest.mark.parametrize("name", list(OPERATORS))
def test_adjoint_is_the_autograd_transpose_and_solves_match_dense_algebra(name):
    make, event = OPERATORS[name]
    op = make()
    g = _gen(1)
    x = torch.randn(3, *event, dtype=F64, generator=g, requires_grad=True)
    Ax = op(x)
    y = torch.randn(Ax.shape, dtype=F64, generator=g)
    (vjp,) = torch.autograd.grad((Ax * y).sum(), x)
    torch.testing.assert_close(op.adjoint(y), vjp, rtol=1e-12, atol=1e-12)
    # <A x, y> = <x, A^T y>
    torch.testing.assert_close((Ax * y).sum(), (x * op.adjoint(y)).sum(), rtol=1e-12, atol=0)
    x = x.detach()
    if name == "inpaint_per_example":
        return  # a different A per example: the dense checks below are for one A
    A = _dense(op, event)
    torch.testing.assert_close(Ax.detach().reshape(3, -1), x.reshape(3, -1) @ A.T)
    # (r2 A A^T + s2 I)^-1 y, r2 per example, against a dense solve; closed forms against the
    # generic eigendecomposition
    r2 = torch.tensor([0.3, 1.0, 2.0], dtype=F64)
    G = A @ A.T
    for s2 in (0.0, 0.05):
        got = op.gram_solve(y, r2, s2).reshape(3, -1)
        for b in range(3):
            want = torch.linalg.solve(r2[b] * G + s2 * torch.eye(len(G)), y.reshape(3, -1)[b])
            torch.testing.assert_close(got[b], want, rtol=1e-8, atol=1e-8)
        generic = LinearOperator.gram_solve(op, y, r2, s2).reshape(3, -1)
        torch.testing.assert_close(got, generic, rtol=1e-8, atol=1e-8)
    # the pseudo-inverse: A A^+ y = y (full row rank), A^+ y = pinv(A) y, and the projection
    # lands on A x = y
    torch.testing.assert_close(op.pinv(y).reshape(3, -1), y.reshape(3, -1) @ torch.linalg.pinv(A).T)
    torch.testing.assert_close(op(op.project(x, y)), y)


def test_solves_of_a_rank_deficient_operator_are_pseudo_inverses():
    """A without full row rank: (r2 A A^T + s2 I)^+ and A^+ as torch.linalg.pinv gives them
    (directions A cannot reach get 0 when s2 = 0 and 1 / s2 otherwise)."""
    A = torch.randn(3, 5, dtype=F64, generator=_gen(4))
    A = torch.cat([A, A[:1] - 2 * A[2:3]])  # rank 3, 4 observations
    op, y = Matrix(A), torch.randn(2, 4, dtype=F64, generator=_gen(5))
    for s2 in (0.0, 0.1):
        want = y @ torch.linalg.pinv(0.7 * A @ A.T + s2 * torch.eye(4, dtype=F64)).T
        torch.testing.assert_close(op.gram_solve(y, 0.7, s2), want)
    torch.testing.assert_close(op.pinv(y), y @ torch.linalg.pinv(A).T)


@given(
    factor=st.sampled_from([2, 3]),
    c=st.integers(1, 3),
    hw=st.tuples(st.integers(1, 3), st.integers(1, 3)),
)
def test_downsample_is_the_block_mean_and_its_pinv_repeats(factor, c, hw):
    h, w = hw[0] * factor, hw[1] * factor
    x = torch.randn(2, c, h, w, dtype=F64, generator=_gen(h * w + c))
    y = Downsample(factor)(x)
    blocks = x.reshape(2, c, hw[0], factor, hw[1], factor)
    torch.testing.assert_close(y, blocks.mean((3, 5)))
    up = Downsample(factor).pinv(y)
    torch.testing.assert_close(up[..., ::factor, ::factor], y)
    torch.testing.assert_close(up, y.repeat_interleave(factor, 2).repeat_interleave(factor, 3))


def test_operator_errors():
    x = torch.zeros(2, 1, 5, 4)
    with pytest.raises(ValueError, match="divisible by 2"):
        Downsample(2)(x)
    with pytest.raises(ValueError, match="factor must be an integer >= 2"):
        Downsample(1)
    with pytest.raises(ValueError, match="acts on images"):
        Downsample(2)(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="channels=3"):
        Grayscale()(x)
    with pytest.raises(ValueError, match="size must be odd"):
        Blur(torch.ones(2, 2))
    with pytest.raises(ValueError, match="non-finite"):
        Blur(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="bool tensor"):
        Inpaint(torch.ones(3))
    with pytest.raises(ValueError, match="at least one entry"):
        Inpaint(torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="same number of entries"):
        Inpaint(torch.tensor([[True, True], [True, False]]), per_example=True)
    with pytest.raises(ValueError, match=r"mask has shape \(3,\)"):
        Inpaint(torch.ones(3, dtype=torch.bool))(torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"needs x of shape \(B, 3\)"):
        Matrix(torch.ones(2, 3))(torch.zeros(2, 4))


# ---------------------------------------------------------------- posterior sampling


def _posterior(mu, C, A, y, sigma_y):
    """Closed form of x | y for x ~ N(mu, C), y = A x + sigma_y n."""
    S = A @ C @ A.T + sigma_y**2 * torch.eye(A.shape[0], dtype=F64)
    K = C @ A.T @ torch.linalg.inv(S)
    return mu + K @ (y - A @ mu), C - K @ A @ C


def _solve(op, event, sde, sigma_y, *, n, seed=0, **kw):
    """Sample the posterior of one observation of a random Gaussian; (sample mean, sample cov,
    exact mean, exact cov, prior mean, result)."""
    D = math.prod(event)
    mu, C = _gaussian(D, seed)
    model = GaussianScore(mu, C, sde, event_shape=event)
    A = _dense(op, event)
    g = _gen(seed + 1)
    x_true = mu + torch.linalg.cholesky(C) @ torch.randn(D, dtype=F64, generator=g)
    y = A @ x_true + sigma_y * torch.randn(A.shape[0], dtype=F64, generator=g)
    m, c = _posterior(mu, C, A, y, sigma_y)
    y_obs = y.reshape(op(torch.zeros(1, *event, dtype=F64)).shape)
    r = sdegen.sample(
        model, sde, (n, *event), operator=op, y_obs=y_obs, sigma_y=sigma_y,
        generator=_gen(seed + 2), dtype=F64, **kw,
    )  # fmt: skip
    xf = r.x.reshape(n, D)
    return xf.mean(0), torch.cov(xf.T), m, c, mu, r


CASES = {
    "inpaint": (lambda: Inpaint(torch.tensor([[True, False, False], [False, True, True]])), (2, 3)),
    "downsample": (lambda: Downsample(2), (1, 2, 4)),
    "grayscale": (lambda: Grayscale(2), (2, 2, 2)),
    "blur": (lambda: Blur.gaussian(3, 0.6), (1, 2, 3)),
}


@pytest.mark.parametrize("sigma_y", [0.0, 0.3])
@pytest.mark.parametrize("name", list(CASES))
def test_moment_guidance_samples_the_exact_gaussian_posterior(name, sigma_y):
    """Mean and covariance of p(x | y) for inpainting, 2x downsampling, grayscale and blur, with
    and without observation noise, against the closed form: 1000 samples of dpmpp_2m at 24 steps
    on VP. Tolerance 5 s.e. + 0.02 on the mean, 5 s.e. + 0.03 on the covariance (its sampling
    error at n = 1000; the ODE's own error at 24 steps is below 0.01 in both)."""
    make, event = CASES[name]
    op = make()
    n = 1000
    mean, cov, m, c, _, r = _solve(
        op, event, VPSDE(), sigma_y, n=n, method="dpmpp_2m", steps=24, inverse="moment"
    )
    obs = op(torch.zeros(1, *event)).numel()
    assert (r.nfe, r.nfe_backward) == (25, 25 * obs)  # one VJP per observed value
    se = (c.diag().clamp_min(0) / n).sqrt()
    assert bool(((mean - m).abs() < 5 * se + 0.02).all()), (mean - m).abs().max()
    scale = float(c.diag().max())
    assert float((cov - c).abs().max()) < 5 * scale * math.sqrt(2 / n) + 0.03
    if sigma_y == 0 and name != "blur":  # projected onto A x = y (= A m, m the exact mean)
        want = (_dense(op, event) @ m).expand(n, -1)
        torch.testing.assert_close(op(r.x).reshape(n, -1), want, rtol=1e-12, atol=1e-12)


def test_moment_on_ve_and_the_inpaint_path_of_known_and_mask():
    """On VE too; and known=/mask= is operator=Inpaint with y the known entries: same draws."""
    op, event = CASES["downsample"][0](), (1, 2, 4)
    mean, cov, m, c, _, _ = _solve(
        op, event, VESDE(), 0.1, n=600, method="euler_maruyama", steps=60, inverse="moment"
    )
    se = (c.diag() / 600).sqrt()
    # VE's prior N(0, sigma_max^2) ignores the data mean: a few % of shrinkage on top
    assert bool(((mean - m).abs() < 5 * se + 0.03 * m.abs() + 0.02).all())
    sde = VPSDE()
    mu, C = _gaussian(4, 3)
    model = GaussianScore(mu, C, sde)
    mask = torch.tensor([True, False, True, False])
    known = torch.tensor([0.5, float("nan"), -1.0, float("nan")], dtype=F64)
    kw = dict(steps=5, method="euler_maruyama", dtype=F64, return_trajectory=True)
    for how in ("replace", "moment", "pigdm", "dps"):
        a = sdegen.sample(
            model, sde, (7, 4), known=known, mask=mask, inverse=how, generator=_gen(), **kw
        )
        b = sdegen.sample(
            model, sde, (7, 4), operator=Inpaint(mask), y_obs=known[mask], inverse=how,
            generator=_gen(), **kw,
        )  # fmt: skip
        assert torch.equal(a.trajectory, b.trajectory) and a.nfe_backward == b.nfe_backward
        assert bool((a.x[:, mask] == known[mask]).all())  # observed entries held exactly


@pytest.mark.parametrize("sde_name", ["vp", pytest.param("ve", marks=pytest.mark.slow)])
def test_pigdm_and_dps_land_near_the_posterior_mean(sde_name):
    """They are approximations (PiGDM takes Var[x0 | x_t] = r_t^2 I, DPS the likelihood of the
    point estimate D(x_t) with a normalised step), so their bias is measured, not zero: 2x
    downsampling of a 16-D Gaussian, sigma_y = 0, dpmpp_2m at 30 steps, 600 samples. Measured
    when written (max over the 16 entries of |mean - exact posterior mean|; the posterior mean
    lies 0.78 from the prior mean; VP, VE within 0.01 of each other): moment 0.04 (its sampling
    error), PiGDM 0.12, DPS at zeta = 3 0.18, at the default zeta = 1 0.26-0.27. Asserted: moment
    within 0.08, PiGDM within a quarter of the shift, DPS within 0.35 (zeta = 3) and half
    (zeta = 1) of it, in that order; one VJP per evaluation."""
    sde = VPSDE() if sde_name == "vp" else VESDE()
    op, event = Downsample(2), (1, 4, 4)
    errs = {}
    for how, scale in (("moment", None), ("pigdm", None), ("dps", 3.0), ("dps", 1.0)):
        mean, _, m, _, mu, r = _solve(
            op, event, sde, 0.0, n=600, method="dpmpp_2m", steps=30, inverse=how,
            inverse_scale=scale,
        )  # fmt: skip
        if how != "moment":
            assert r.nfe_backward == r.nfe == 31
        errs[how, scale] = float((mean - m).abs().max())
        shift = float((m - mu).abs().max())
    assert shift > 0.5
    assert errs["moment", None] < 0.08
    assert errs["pigdm", None] < 0.25 * shift and errs["dps", 3.0] < 0.35 * shift
    assert errs["dps", 1.0] < 0.5 * shift
    assert errs["moment", None] < errs["pigdm", None] < errs["dps", 1.0]


def test_pigdm_variance_is_the_unit_gaussian_posterior_variance():
    """r_t^2 = Var[x0 | x_t] for x0 ~ N(0, 1): the exact GaussianScore's Tweedie variance."""
    for sde in (VPSDE(), VESDE()):
        t = torch.tensor([0.05, 0.3, 0.9], dtype=F64) * sde.T
        model = GaussianScore(torch.zeros(1), torch.eye(1), sde)
        x = torch.zeros(3, 1, dtype=F64, requires_grad=True)
        (dD,) = torch.autograd.grad(model.denoise(x, t).sum(), x)
        tweedie = sde.sigma(t) ** 2 / sde.alpha(t) * dD[:, 0]
        torch.testing.assert_close(posterior_guidance_variance(sde, t), tweedie)


def test_inverse_errors():
    sde = VPSDE()
    model = GaussianScore(torch.zeros(4), torch.eye(4), sde, event_shape=(1, 2, 2))
    y = torch.zeros(1, 1, 1, 1)
    ok = dict(steps=2, operator=Downsample(2), y_obs=y)
    with pytest.raises(ValueError, match="unknown inverse method 'ddrm'"):
        sdegen.sample(model, sde, (3, 1, 2, 2), inverse="ddrm", **ok)
    with pytest.raises(ValueError, match="'replace' works for an Inpaint operator"):
        sdegen.sample(model, sde, (3, 1, 2, 2), inverse="replace", **ok)
    with pytest.raises(ValueError, match="sigma_y must be >= 0"):
        sdegen.sample(model, sde, (3, 1, 2, 2), sigma_y=-1.0, **ok)
    with pytest.raises(ValueError, match="inverse_scale must be >= 0 .0: no pull"):
        sdegen.sample(model, sde, (3, 1, 2, 2), inverse_scale=-0.5, **ok)
    with pytest.raises(ValueError, match=r"Downsample observes \(3, 1, 1, 1\)"):
        sdegen.sample(
            model, sde, (3, 1, 2, 2), steps=2, operator=Downsample(2), y_obs=torch.zeros(2)
        )
    with pytest.raises(ValueError, match="y_obs holds 1 non-finite"):
        sdegen.sample(model, sde, (3, 1, 2, 2), steps=2, operator=Downsample(2), y_obs=y / 0)
    with pytest.raises(TypeError, match="operator must be a sdegen LinearOperator"):
        sdegen.sample(model, sde, (3, 1, 2, 2), steps=2, operator=lambda x: x, y_obs=y)
    with pytest.raises(ValueError, match="needs both operator"):
        sdegen.sample(model, sde, (3, 1, 2, 2), steps=2, operator=Downsample(2))
    with pytest.raises(ValueError, match="sigma_y, inverse given without an observation"):
        sdegen.sample(model, sde, (3, 1, 2, 2), steps=2, sigma_y=0.1, inverse="dps")
    mask = torch.ones(1, 2, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="not both"):
        sdegen.sample(model, sde, (3, 1, 2, 2), known=torch.zeros(1, 2, 2), mask=mask, **ok)
    with pytest.raises(ValueError, match="or its old name inpaint"):
        sdegen.sample(
            model, sde, (3, 1, 2, 2), steps=2, known=torch.zeros(1, 2, 2), mask=mask,
            inpaint="moment", inverse="moment",
        )  # fmt: skip


# ---------------------------------------------------------------- SDEdit


def _flow_gain(model: GaussianScore, sde, t0: float) -> torch.Tensor:
    """The exact map of the PF-ODE from t0 to t_min followed by the final denoiser, for Gaussian
    data N(mu, U diag(l) U^T): out = mu + U diag(k) U^T (x_t0 - alpha_t0 mu) with
    k = alpha_m l / v_m * sqrt(v_m / v_0), v = alpha^2 l + sigma^2 (the flow keeps each
    eigen-coordinate's standardised value; the denoiser is the posterior mean)."""
    ts = torch.tensor([t0, sde.t_min], dtype=F64)
    a, s = sde.alpha(ts), sde.sigma(ts)
    lam, U = model.evals[0], model.evecs[0]
    v0, vm = a[0] ** 2 * lam + s[0] ** 2, a[1] ** 2 * lam + s[1] ** 2
    k = a[1] * lam / vm * (vm / v0).sqrt()
    return U @ torch.diag(k) @ U.T


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_sdedit_pf_ode_is_the_closed_form_linear_map(sde_name):
    """From x_init perturbed to t_start, Heun on the PF-ODE (60 steps) gives, sample by sample,
    the exact flow map of the Gaussian; the start is alpha x_init + sigma z with z the generator's
    first draw; the grid covers [t_min, t_start] and the NFE is counted."""
    sde = VPSDE() if sde_name == "vp" else VESDE()
    t0 = 0.4 * sde.T
    mu, C = _gaussian(3, 5)
    model = GaussianScore(mu, C, sde)
    x_init = torch.tensor([[1.0, -2.0, 0.5]], dtype=F64)
    n = 50
    r = sdegen.sample(
        model, sde, (n, 3), method="heun", steps=60, x_init=x_init, t_start=t0,
        generator=_gen(4), dtype=F64, return_trajectory=True,
    )  # fmt: skip
    assert float(r.ts[0]) == t0 and float(r.ts[-1]) == sde.t_min and len(r.ts) == 61
    assert r.nfe == 2 * 60 - 1 + 1
    z = torch.randn(n, 3, generator=_gen(4), dtype=F64)
    tt = torch.tensor([t0], dtype=F64)
    start = sde.alpha(tt) * x_init + sde.sigma(tt) * z
    torch.testing.assert_close(r.trajectory[0], start, rtol=0, atol=1e-14)
    want = mu + (start - sde.alpha(tt) * mu) @ _flow_gain(model, sde, t0).T
    torch.testing.assert_close(r.x, want, rtol=0, atol=2e-3 * float(want.abs().max()))


def test_sdedit_from_t_max_samples_the_data_and_from_small_t_stays_near_the_input():
    """t_start = T with the exact score: the reverse SDE samples N(mu, C) whatever x_init (2000
    samples, euler_maruyama at 100 steps; mean and covariance to 5 s.e.). A small t_start keeps
    the output near x_init: at t_start = 0.02 (VP, sigma = 0.077) the mean distance is < 0.3
    (4 sigma; from t_start = T it is about 1)."""
    sde = VPSDE()
    mu, C = _gaussian(2, 6)
    model = GaussianScore(mu, C, sde)
    x_init = torch.tensor([[3.0, -3.0]], dtype=F64)
    n = 2000
    r = sdegen.sample(
        model, sde, (n, 2), method="euler_maruyama", steps=100, x_init=x_init, t_start=sde.T,
        generator=_gen(8), dtype=F64,
    )  # fmt: skip
    se = (C.diag() / n).sqrt()
    assert bool(((r.x.mean(0) - mu).abs() < 5 * se).all())
    assert float((torch.cov(r.x.T) - C).abs().max()) < 5 * float(C.diag().max()) * math.sqrt(2 / n)
    x_init = mu[None] + torch.tensor([[0.4, -0.3]], dtype=F64)
    for method in ("euler_maruyama", "dpmpp_2m", "dopri5"):
        steps = {} if method == "dopri5" else {"steps": 10}
        r = sdegen.sample(
            model, sde, (200, 2), method=method, x_init=x_init, t_start=0.02,
            generator=_gen(9), dtype=F64, **steps,
        )  # fmt: skip
        assert float((r.x - x_init).norm(dim=1).mean()) < 0.3, method


@pytest.mark.parametrize("schedule", ["uniform", "log_snr", "karras"])
def test_sdedit_grids_cover_t_min_to_t_start(schedule):
    sde = VPSDE()
    model = GaussianScore(torch.zeros(2), torch.eye(2), sde)
    kw = dict(x_init=torch.zeros(4, 2), t_start=0.3, schedule=schedule, generator=_gen())
    r = sdegen.sample(model, sde, (4, 2), method="dpmpp_2m", nfe=9, **kw)
    assert r.nfe == 9 and len(r.ts) == 9 and float(r.ts[0]) == 0.3
    assert float(r.ts[-1]) == sde.t_min and bool((r.ts[1:] < r.ts[:-1]).all())
    # the same noise levels as the full grid would place on [t_min, 0.3], named by log-SNR
    if schedule == "log_snr":
        lam = sde.half_log_snr(r.ts)
        torch.testing.assert_close(lam[1:] - lam[:-1], (lam[1] - lam[0]).expand(8))


def test_sdedit_errors():
    sde = VPSDE()
    model = GaussianScore(torch.zeros(2), torch.eye(2), sde)
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"t_start must lie in \(t_min, T\]"):
        sdegen.sample(model, sde, (4, 2), steps=2, x_init=x, t_start=1.5)
    with pytest.raises(ValueError, match=r"t_start must lie in \(t_min, T\]"):
        sdegen.sample(model, sde, (4, 2), steps=2, x_init=x, t_start=sde.t_min)
    with pytest.raises(ValueError, match="t_start must be finite"):
        sdegen.sample(model, sde, (4, 2), steps=2, x_init=x, t_start=float("nan"))
    with pytest.raises(ValueError, match="x_init needs t_start"):
        sdegen.sample(model, sde, (4, 2), steps=2, x_init=x)
    with pytest.raises(ValueError, match="t_start needs x_init"):
        sdegen.sample(model, sde, (4, 2), steps=2, t_start=0.5)
    with pytest.raises(ValueError, match=r"x_init must have shape \(4, 2\) or \(1, 2\)"):
        sdegen.sample(model, sde, (4, 2), steps=2, x_init=torch.zeros(3, 2), t_start=0.5)
    with pytest.raises(ValueError, match="x_init holds 1 non-finite"):
        bad = x.clone()
        bad[0, 0] = float("inf")
        sdegen.sample(model, sde, (4, 2), steps=2, x_init=bad, t_start=0.5)
    with pytest.raises(ValueError, match="not both"):
        sdegen.sample(model, sde, (4, 2), steps=2, x_init=x, t_start=0.5, noise=x)
    with pytest.raises(ValueError, match="the grid must run from T = 0.5"):
        sdegen.sample(model, sde, (4, 2), x_init=x, t_start=0.5, schedule=torch.tensor([1.0, 1e-3]))


def test_cli_sample_edits_an_input_with_init_and_t_start(tmp_path, monkeypatch, capsys):
    """`sdegen sample --init FILE.pt --t-start T`: a small t_start keeps the samples near the
    input; one example's tensor is broadcast to --n; each flag alone is refused."""
    import numpy as np

    from sdegen.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text(
        "import torch\nfrom sdegen.models import GaussianScore\nfrom sdegen.sde import VPSDE\n"
        "def gaussian():\n    sde = VPSDE()\n"
        "    return GaussianScore(torch.zeros(2), torch.eye(2), sde), sde\n"
    )
    torch.save(torch.tensor([1.5, -1.0]), tmp_path / "x.pt")
    argv = ["sample", "--model", "mine.py:gaussian", "--shape", "2", "--n", "50", "--quiet"]
    assert main([*argv, "--steps", "8", "--init", "x.pt", "--t-start", "0.02", "--out", "e"]) == 0
    x = torch.from_numpy(np.load(tmp_path / "e.npz")["x"])
    assert x.shape == (50, 2)
    assert float((x - torch.tensor([1.5, -1.0])).norm(dim=1).mean()) < 0.3
    assert main([*argv, "--steps", "8", "--t-start", "0.5"]) == 2
    assert "needs both --init FILE.pt and --t-start" in capsys.readouterr().err


_IMAGE_FACTORY = """
import torch
from sdegen.models import GaussianScore
from sdegen.sde import VPSDE


def image():  # 4x4 one-channel "images" with correlated pixels
    sde = VPSDE()
    cov = 0.5 * torch.eye(16, dtype=torch.float64) + 0.5
    return GaussianScore(torch.zeros(16), cov, sde, event_shape=(1, 4, 4)), sde
"""


def test_cli_sample_solves_inverse_problems_with_observe(tmp_path, monkeypatch, capsys):
    """`sdegen sample --observe FILE --operator SPEC | --mask FILE`: the same samples as
    sdegen.sample with the operator; one observation stands for the batch, N observations are
    split with the batches (--seeds, --batch); the observation is held exactly."""
    import numpy as np

    from sdegen.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.py").write_text(_IMAGE_FACTORY)
    argv = ["sample", "--model", "mine.py:image", "--shape", "1,4,4", "--nfe", "10", "--quiet"]
    low = torch.tensor([[[0.8, -0.4], [0.1, 1.2]]], dtype=torch.float64)  # one (1, 2, 2)
    torch.save(low, tmp_path / "low.pt")
    sr = [*argv, "--n", "6", "--observe", "low.pt", "--operator", "downsample:2"]
    assert main([*sr, "--inverse", "pigdm", "--out", "sr"]) == 0
    out = capsys.readouterr().out
    assert "observed by downsample:2 (pigdm, 10 VJPs each)" in out
    z = np.load(tmp_path / "sr.npz")
    x = torch.from_numpy(z["x"])
    assert str(z["inverse_problem"]) == "downsample:2" and float(z["nfe_backward"]) == 10
    model, sde = GaussianScore(torch.zeros(16), 0.5 * torch.eye(16, dtype=F64) + 0.5, VPSDE(),
                               event_shape=(1, 4, 4)), VPSDE()  # fmt: skip
    ref = sdegen.sample(model, sde, (6, 1, 4, 4), nfe=10, operator=Downsample(2), y_obs=low[None],
                        inverse="pigdm", generator=torch.Generator().manual_seed(0))  # fmt: skip
    torch.testing.assert_close(x, ref.x.to(x.dtype))
    torch.testing.assert_close(F.avg_pool2d(x, 2), low.expand(6, 1, 2, 2).to(x.dtype))
    # inpainting from the .npz just written (6 different images) and a 0/1 .npy mask, in
    # batches of 4 and 2: each batch gets its own rows, the observed half is kept exactly
    mask = np.zeros((1, 4, 4), dtype=np.float32)
    mask[:, :2] = 1
    np.save(tmp_path / "mask.npy", mask)
    ip = [*argv, "--seeds", "0-5", "--batch", "4", "--observe", "sr.npz", "--mask", "mask.npy"]
    assert main([*ip, "--out", "ip"]) == 0
    assert "observed by inpaint (replace, 0 VJPs each)" in capsys.readouterr().out
    xi = torch.from_numpy(np.load(tmp_path / "ip.npz")["x"])
    assert torch.equal(xi[:, :, :2], x[:, :, :2]) and not torch.equal(xi[:, :, 2:], x[:, :, 2:])
    (tmp_path / "junk.pt").write_text("not a tensor")
    np.save(tmp_path / "mask5.npy", np.ones((5, 5), dtype=bool))
    torch.save({"a": low}, tmp_path / "dict.pt")
    for extra, message in [
        (["--observe", "low.pt"], "--observe needs exactly one of --mask FILE"),
        (["--mask", "mask.npy"], "--mask needs --observe FILE"),
        (["--inverse", "dps", "--sigma-y", "0.1"], "--sigma-y, --inverse need --observe"),
        (["--observe", "missing.pt", "--mask", "mask.npy"], "--observe missing.pt: no such file"),
        (["--observe", "junk.pt", "--mask", "mask.npy"], "could not be read as a tensor"),
        (["--observe", "dict.pt", "--mask", "mask.npy"], "must hold one tensor, got dict"),
        (["--observe", "low.pt", "--mask", "low.pt"], "must be bool or hold only 0 and 1"),
        (["--observe", "low.pt", "--mask", "mask.npy"], "--observe low.pt has shape (1, 2, 2)"),
        (["--observe", "sr.npz", "--mask", "mask5.npy"], "--mask mask5.npy has shape (5, 5)"),
        (["--observe", "low.pt", "--operator", "zoom:2"], "expected one of downsample:K"),
        (["--observe", "low.pt", "--operator", "downsample:3"], "--operator downsample:3: Down"),
        (["--observe", "low.pt", "--operator", "grayscale"], "of 2 or more channels"),
        (["--observe", "low.pt", "--operator", "blur:3,0.5"], "observes (1, 4, 4) of each"),
        (["--observe", "low.pt", "--operator", "blur:4,0.5"], "size must be odd"),
        (
            ["--observe", "low.pt", "--operator", "downsample:2", "--inverse-scale", "-1"],
            "inverse_scale must be >= 0",
        ),  # fmt: skip
        (
            ["--observe", "low.pt", "--operator", "downsample:2", "--inverse", "replace"],
            "'replace' works for an Inpaint operator",
        ),  # fmt: skip
    ]:
        assert main([*argv, *extra]) == 2, extra
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (extra, err)
