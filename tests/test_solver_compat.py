"""Names the solvers had before the one fixed-grid loop keep working: module aliases silently,
old function forms and moved helpers with a DeprecationWarning, and with the same results."""

from __future__ import annotations

import importlib

import pytest
import torch

import sdegen
from sdegen.sde import VPSDE
from sdegen.solvers import METHODS, get_schedule

from .conftest import mixture


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def test_the_sample_module_is_an_alias_of_sampling_and_the_function_is_unshadowed():
    module = importlib.import_module("sdegen.solvers.sample")
    assert module is importlib.import_module("sdegen.solvers.sampling")
    from sdegen.solvers.sample import METHODS as methods
    from sdegen.solvers.sample import sample

    assert sample is sdegen.sample is sdegen.solvers.sample and methods is METHODS


def test_result_types_still_import_from_counting():
    from sdegen.solvers import counting, results

    assert counting.SolveResult is results.SolveResult is sdegen.solvers.SolveResult
    assert counting.LikelihoodResult is results.LikelihoodResult


# (module, old function, METHODS name, options)
OLD_FUNCTIONS = [
    ("reverse_sde", "euler_maruyama", "euler_maruyama", {}),
    ("reverse_sde", "reverse_diffusion", "reverse_diffusion", {}),
    ("reverse_sde", "ancestral", "ancestral", {"variance": "forward"}),
    ("reverse_sde", "pc", "pc", {"corrector_steps": 2}),
    ("exponential", "ddim", "ddim", {"eta": 0.5}),
    ("exponential", "dpmpp_2m", "dpmpp_2m", {}),
    ("pf_ode", "euler", "euler", {}),
    ("pf_ode", "rk4", "rk4", {}),
    ("pf_ode", "heun", "heun", {}),
    ("dpm", "dpmpp_3m", "dpmpp_3m", {"eta": 0.3}),
    ("dpm", "dpmpp_sde", "dpmpp_sde", {}),
    ("dpm", "unipc", "unipc", {"order": 3}),
    ("dpm", "dpmpp_2s", "dpmpp_2s", {}),
    ("dpm", "dpmpp_3s", "dpmpp_3s", {}),
    ("dpm", "dpm_adaptive", "dpm_adaptive", {"rtol": 1e-3}),
    ("dpm", "edm_sde", "edm_sde", {}),
]


@pytest.mark.parametrize("module, name, method, options", OLD_FUNCTIONS)
def test_old_function_forms_warn_and_give_the_same_samples(module, name, method, options):
    with pytest.warns(DeprecationWarning, match=rf"\.{name} is deprecated"):
        fn = getattr(importlib.import_module(f"sdegen.solvers.{module}"), name)
    sde = VPSDE()
    model = mixture(sde)
    m = METHODS[method]
    ts = get_schedule(sde, "uniform", 1) if m.adaptive else get_schedule(sde, m.schedule, 4)
    noise = sde.prior_sample((6, 2), generator=_gen(1), dtype=torch.float64)
    states = []
    x = fn(model, sde, noise, ts, generator=_gen(2), record=states.append, **options)
    kw = {} if m.adaptive else {"schedule": ts}
    r = sdegen.sample(
        model, sde, noise.shape, method=method, noise=noise, generator=_gen(2),
        denoise_final=False, return_trajectory=True, **kw, **options,
    )  # fmt: skip
    assert torch.equal(x, r.x)
    assert torch.equal(torch.stack(states), r.trajectory[1:])
    # noise_final=True (now add_noise_last) is the run that a final denoising step follows
    if m.last_step_noise:
        # ... and in which the jump to zero noise is the lower-order final step
        final = {"lower_order_final": False} if "lower_order_final" in m.options else {}
        x = fn(model, sde, noise, ts, generator=_gen(2), noise_final=True, **options, **final)
        r = sdegen.sample(
            model, sde, noise.shape, method=method, noise=noise, generator=_gen(2),
            return_trajectory=True, **kw, **options,
        )  # fmt: skip
        assert torch.equal(x, r.trajectory[-2])


def test_method_fn_is_the_old_function_form():
    sde = VPSDE()
    model = mixture(sde)
    ts = get_schedule(sde, "log_snr", 3)
    noise = sde.prior_sample((4, 2), generator=_gen(3), dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match="Method.fn is deprecated"):
        fn = METHODS["dpmpp_2m"].fn
    r = sdegen.sample(model, sde, noise.shape, method="dpmpp_2m", noise=noise, schedule=ts,
                      denoise_final=False)  # fmt: skip
    assert torch.equal(fn(model, sde, noise, ts), r.x)


@pytest.mark.parametrize(
    "old, cls, options",
    [
        ("euler_maruyama_step", "EulerMaruyama", ()),
        ("reverse_diffusion_step", "ReverseDiffusion", ()),
        ("ancestral_step", "Ancestral", ("forward",)),
    ],
)
def test_old_reverse_sde_step_functions_are_the_classes_predict(old, cls, options):
    from sdegen.solvers import reverse_sde

    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated"):
        step = getattr(reverse_sde, old)
    sde = VPSDE()
    model = mixture(sde)
    x = torch.randn(5, 2, generator=_gen(4))
    z = torch.randn(5, 2, generator=_gen(5))
    ts = torch.tensor([0.6, 0.5], dtype=torch.float64)
    kwargs = {"variance": options[0]} if options else {}
    new = getattr(reverse_sde, cls)(model, sde, ts, **kwargs).predict(x, 0.6, 0.5, z)[0]
    assert torch.equal(step(model, sde, x, 0.6, 0.5, z, *options), new)


def test_moved_helpers_resolve_from_dpm_with_a_warning():
    from sdegen.solvers import dpm, exp_quadrature

    for old, new in [
        ("exp_weights", exp_quadrature.exp_weights),
        ("exp_step", exp_quadrature.exp_step),
        ("_Path", exp_quadrature.LogSNRSchedule),
    ]:
        with pytest.warns(DeprecationWarning, match=f"dpm.{old} is deprecated"):
            assert getattr(dpm, old) is new


@pytest.mark.parametrize("module", ["dpm", "exponential", "pf_ode", "reverse_sde"])
def test_unknown_names_still_raise_attribute_error(module):
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        _ = importlib.import_module(f"sdegen.solvers.{module}").nope
