"""Every sampler's output, trajectory and NFE pinned to values recorded before the one-loop
refactor (issue 11, item 3), so that reorganising the solvers cannot change a result.

The expected values live in tests/data/solver_regression.pt. They were made by the code before
the refactor with

    python -m tests.test_solver_regression --write

and must only be rewritten when a result is meant to change (say why in the commit).

Cases: every method in METHODS with its default options plus option variants, on VP, VE and
EDM, with and without the final denoising step, in float64 (and float32 with the defaults), on
the analytic mixture of tests/conftest.py; inpainting cases check that the model's own draws
(replacement noise) stay interleaved with the sampler's in the same order.

Comparison: bit-equal (torch.equal) on the platform that recorded the data (torch version and
CPU capability are stored with it). Elsewhere, vectorised exp/log and BLAS kernels may round
the last bit differently, so there float64 is compared to rtol 1e-12 and float32 to 1e-5. NFE
counts are compared exactly everywhere.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import sdegen
from sdegen.sde import EDMSDE, VESDE, VPSDE

from .conftest import mixture

DATA = Path(__file__).parent / "data" / "solver_regression.pt"

SDES = {"vp": VPSDE, "ve": VESDE, "edm": EDMSDE}

# (method, options): every method once with its defaults, then the variants.
DEFAULTS = [
    "euler_maruyama", "reverse_diffusion", "ancestral", "pc",
    "torchsde_euler", "torchsde_milstein", "torchsde_srk", "torchsde_reversible_heun",
    "dopri5", "euler", "rk4", "heun",
    "ddim", "dpmpp_2m", "dpmpp_3m", "dpmpp_sde", "unipc", "dpmpp_2s", "dpmpp_3s",
    "dpm_adaptive", "edm_sde",
]  # fmt: skip
VARIANTS = [
    ("ddim", {"eta": 1.0}),
    ("ddim", {"eta": 0.5}),
    ("dpmpp_3m", {"order": 2}),
    ("dpmpp_3m", {"order": 4}),
    ("dpmpp_3m", {"eta": 0.5}),
    ("dpmpp_3m", {"lower_order_final": False}),
    ("dpmpp_2m", {"lower_order_final": False}),
    ("dpmpp_sde", {"order": 1}),
    ("unipc", {"order": 2}),
    ("unipc", {"order": 1, "lower_order_final": False}),
    ("dpmpp_2s", {"r": 0.3}),
    ("pc", {"corrector_steps": 2}),
    ("pc", {"corrector_steps": 0, "predictor": "euler_maruyama"}),
    ("pc", {"predictor": "ancestral", "snr": 0.1}),
    ("ancestral", {"variance": "forward"}),
    ("edm_sde", {"churn": 0.0}),
    ("edm_sde", {"churn": 10.0, "s_tmin": 0.0, "s_tmax": 1e9, "s_noise": 1.0}),
    ("dopri5", {"rtol": 1e-3, "atol": 1e-3}),
    ("dpm_adaptive", {"rtol": 1e-3, "atol": 1e-3, "h_init": 0.2, "safety": 0.8}),
]
ADAPTIVE = {"dopri5", "dpm_adaptive"}
SHAPE = (4, 2)


def _steps(method: str) -> dict:
    if method in ADAPTIVE:
        return {}
    return {"steps": 8 if method.startswith("torchsde") else 5}


def _cases() -> list[tuple[str, dict]]:
    """(case name, keyword arguments of sdegen.sample besides model, sde and shape)."""
    cases = []
    runs = [(m, {}) for m in DEFAULTS] + VARIANTS
    for sde_name in SDES:
        for method, options in runs:
            opt = ",".join(f"{k}={v}" for k, v in options.items())
            for denoise_final in (True, False):
                kw = dict(method=method, dtype=torch.float64, denoise_final=denoise_final)
                name = f"{sde_name}/{method}[{opt}]/f64/denoise={denoise_final}"
                cases.append((name, {"sde": sde_name, **_steps(method), **options, **kw}))
            if not options:
                kw = dict(method=method, dtype=torch.float32)
                cases.append(
                    (f"{sde_name}/{method}[]/f32", {"sde": sde_name, **_steps(method), **kw})
                )
        # multistep methods lower their order on the last steps only below 15 steps
        for method in ("dpmpp_3m", "unipc"):
            kw = dict(method=method, steps=16, dtype=torch.float64)
            cases.append((f"{sde_name}/{method}[steps=16]/f64", {"sde": sde_name, **kw}))
        # a user-given grid, and a non-default named one
        for method in ("heun", "dpmpp_2m", "euler"):
            kw = dict(method=method, schedule="uniform", steps=4, dtype=torch.float64)
            cases.append((f"{sde_name}/{method}[uniform]/f64", {"sde": sde_name, **kw}))
    # inpainting: the replacement noise comes from the sampler's generator, between its draws
    for method in ("euler_maruyama", "pc", "ddim", "dpmpp_sde", "edm_sde", "euler"):
        for inpaint in ("replace", "moment"):
            kw = dict(method=method, steps=4, dtype=torch.float64, inpaint=inpaint, mask="first")
            if method == "ddim":
                kw["eta"] = 1.0
            cases.append((f"vp/{method}[inpaint={inpaint}]/f64", {"sde": "vp", **kw}))
    return cases


def _run(kwargs: dict):
    kwargs = dict(kwargs)
    sde = SDES[kwargs.pop("sde")]()
    if kwargs.pop("mask", None):
        mask = torch.zeros(SHAPE, dtype=torch.bool)
        mask[:, 0] = True
        kwargs.update(known=torch.full(SHAPE, 0.7, dtype=torch.float64), mask=mask)
    return sdegen.sample(
        mixture(sde),
        sde,
        SHAPE,
        generator=torch.Generator().manual_seed(11),
        return_trajectory=True,
        **kwargs,
    )


def _platform() -> str:
    return f"torch {torch.__version__.split('+')[0]} cpu {torch.backends.cpu.get_cpu_capability()}"


def _record() -> dict:
    out = {"platform": _platform(), "cases": {}}
    for name, kwargs in _cases():
        r = _run(kwargs)
        assert torch.equal(r.x, r.trajectory[-1]), name
        out["cases"][name] = {
            "trajectory": r.trajectory,
            "ts": r.ts,
            "nfe": r.nfe,
            "nfe_backward": r.nfe_backward,
        }
    return out


@pytest.fixture(scope="module")
def expected() -> dict:
    if not DATA.exists():
        pytest.fail(f"{DATA} is missing: run python -m tests.test_solver_regression --write")
    return torch.load(DATA, weights_only=True)


def test_every_case_is_recorded(expected):
    assert sorted(expected["cases"]) == sorted(name for name, _ in _cases())


def _same(got: torch.Tensor, want: torch.Tensor, exact: bool, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, what
    if exact:
        diff = (got - want).abs().max().item()
        assert torch.equal(got, want), f"{what}: not bit-equal, max |diff| {diff:.3g}"
    else:
        rtol = 1e-12 if want.dtype == torch.float64 else 1e-5
        torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * 1e-3, msg=what)


@pytest.mark.parametrize("name, kwargs", _cases(), ids=[name for name, _ in _cases()])
def test_sample_reproduces_the_recorded_result(name, kwargs, expected):
    want = expected["cases"][name]
    r = _run(kwargs)
    assert (r.nfe, r.nfe_backward) == (want["nfe"], want["nfe_backward"]), name
    exact = expected["platform"] == _platform()
    _same(r.ts, want["ts"], exact, f"{name} ts")
    _same(r.x, want["trajectory"][-1], exact, f"{name} x")
    _same(r.trajectory, want["trajectory"], exact, f"{name} trajectory")


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.test_solver_regression --write")
    DATA.parent.mkdir(exist_ok=True)
    torch.save(_record(), DATA)
    print(f"wrote {len(_cases())} cases to {DATA}")
