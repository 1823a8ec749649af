"""One seed per example (sdegen.random) and the split of the examples over processes.

Each example's draws come from its own seed, so a sample is the same in a batch of six, in
batches of two and four, and alone (brute force, every method whose examples do not share
anything); the batches are aligned to example indices, so `sdegen sample` and
`sdegen likelihood` under torchrun with two CPU processes write what one process writes, bit
for bit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import sdegen
from sdegen.assembly import Data, evaluate_likelihood, harness
from sdegen.cli import main
from sdegen.divergence import probes_like
from sdegen.random import PerExampleGenerator, rand, randint, randn
from sdegen.solvers import METHODS, langevin, log_likelihood

from ._ddp import run_torchrun
from .conftest import mixture

# Methods whose examples interact by design, so an example depends on its batch: adaptive steps
# chosen by an error norm over the batch, and pc's Langevin step size from batch-mean norms
# (Song et al.'s code). Under torchrun their batches are the same for any number of processes,
# so they too come out bit-identical there (the torchrun test samples with pc).
BATCH_COUPLED = {"dopri5", "dpm_adaptive", "pc"}
SEEDS = [10, 11, 12, 13, 14, 15]


def _in_batches(draw, seeds, sizes):
    """draw(PerExampleGenerator of a batch's seeds) for consecutive batches of `sizes`, joined."""
    out, k = [], 0
    for size in sizes:
        out.append(draw(PerExampleGenerator(seeds[k : k + size])))
        k += size
    return torch.cat(out)


# ---- the random source ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "draw",
    [
        lambda shape, g, **kw: randn(shape, g, **kw),
        lambda shape, g, **kw: rand(shape, g, dtype=torch.float32, **kw),
        lambda shape, g, **kw: randint(0, 2, shape, g, **kw),
    ],
    ids=["randn", "rand", "randint"],
)
def test_row_i_is_seed_i_own_stream(draw):
    six = draw((6, 3, 2), PerExampleGenerator(SEEDS))
    # independently: each row from a torch.Generator seeded by its seed alone
    for i, s in enumerate(SEEDS):
        assert torch.equal(six[i], draw((3, 2), torch.Generator().manual_seed(s)))
    assert torch.equal(six, _in_batches(lambda g: draw((len(g), 3, 2), g), SEEDS, [2, 4]))
    # batch along dim 1 (Hutchinson probes are (K, B, *D)): the same rows, transposed
    along_1 = draw((3, 6, 2), PerExampleGenerator(SEEDS), batch_dim=1)
    assert torch.equal(along_1, six.transpose(0, 1))


def test_a_torch_generator_draws_as_torch_does():
    for fn, ref in [(randn, torch.randn), (rand, torch.rand)]:
        got = fn((4, 3), torch.Generator().manual_seed(7), dtype=torch.float32)
        want = ref((4, 3), generator=torch.Generator().manual_seed(7), dtype=torch.float32)
        assert torch.equal(got, want)
    got = randint(0, 5, (4, 3), torch.Generator().manual_seed(7))
    assert torch.equal(got, torch.randint(0, 5, (4, 3), generator=torch.Generator().manual_seed(7)))


@given(st.lists(st.integers(1, 3), min_size=1, max_size=5), st.integers(1, 3))
def test_any_batching_and_view_continues_each_stream(sizes, draws):
    seeds = list(range(100, 100 + sum(sizes)))
    whole = PerExampleGenerator(seeds)
    ref = [randn((len(seeds), 2), whole) for _ in range(draws)]
    parts = [PerExampleGenerator(seeds)[k : k + n] for k, n in zip(np.cumsum([0, *sizes]), sizes)]
    for d in range(draws):
        assert torch.equal(torch.cat([randn((len(p), 2), p) for p in parts]), ref[d])


def test_probes_are_per_example():
    x = torch.zeros(6, 3)
    for noise in ("rademacher", "gaussian"):
        all_ = probes_like(x, 2, noise, PerExampleGenerator(SEEDS))
        parts = [probes_like(x[:2], 2, noise, PerExampleGenerator(SEEDS[:2]))]
        parts.append(probes_like(x[2:], 2, noise, PerExampleGenerator(SEEDS[2:])))
        assert all_.shape == (2, 6, 3) and torch.equal(all_, torch.cat(parts, dim=1))


@pytest.mark.parametrize(
    "seeds, match",
    [
        ([0, -1], r"seeds\[1\] must be an integer in 0..2\*\*63 - 1, got -1"),
        ([0, 1.5], r"seeds\[1\] must be an integer"),
        ([True], r"seeds\[0\] must be an integer"),
        ([2**63], r"seeds\[0\] must be an integer"),
        ([3, 4, 3], r"seeds\[0\] and seeds\[2\] are both 3"),
        ([], "at least one seed"),
        (torch.zeros(2, 2, dtype=torch.long), "1-D integer tensor"),
        (torch.tensor([0.0, 1.0]), "1-D integer tensor"),
    ],
)
def test_bad_seeds_are_refused(seeds, match):
    with pytest.raises(ValueError, match=match):
        PerExampleGenerator(seeds)


def test_bad_sources_and_sizes_are_refused():
    with pytest.raises(TypeError, match="seeds must be a sequence"):
        PerExampleGenerator("0-9")
    with pytest.raises(TypeError, match="generator must be a torch.Generator, a sdegen.random"):
        randn((2, 2), 0)
    with pytest.raises(ValueError, match="holds 4 seeds .* has 6 examples along dim 0"):
        randn((6, 2), PerExampleGenerator(range(4)))
    sde = sdegen.VPSDE()
    with pytest.raises(ValueError, match="holds 4 seeds"):
        sdegen.sample(mixture(sde), sde, (6, 2), generator=PerExampleGenerator(range(4)))


# ---- every sampler: batch-invariant samples ---------------------------------------------------


@pytest.mark.parametrize("method", [m for m in METHODS if m not in BATCH_COUPLED])
def test_samples_do_not_depend_on_the_batch(method):
    sde = sdegen.VPSDE()
    model = mixture(sde, 3)  # exact score, float64: treats every example on its own
    kw = {"schedule": "uniform"} if method.startswith("torchsde_") else {}

    def draw(g):
        shape = (len(g), 3)
        return sdegen.sample(model, sde, shape, method=method, steps=3, generator=g, **kw).x

    six = draw(PerExampleGenerator(SEEDS))
    assert torch.isfinite(six).all() and six.shape == (6, 3)
    assert torch.equal(six, _in_batches(draw, SEEDS, [2, 4]))
    assert torch.equal(six, _in_batches(draw, SEEDS, [1] * 6))
    if METHODS[method].stochastic:  # another seed, another sample
        assert not torch.equal(six[:1], draw(PerExampleGenerator([99])))


def test_edit_inpainting_and_mala_draws_are_per_example():
    sde = sdegen.VPSDE()
    model = mixture(sde, 3)
    x_init = torch.linspace(-1, 1, 18).reshape(6, 3)
    mask = torch.tensor([True, False, True]).expand(6, 3)

    def edit(rows, g):
        return sdegen.sample(model, sde, (len(g), 3), method="ddim", steps=3, x_init=x_init[rows],
                             t_start=0.5, generator=g).x  # fmt: skip

    def inpaint(rows, g):
        return sdegen.sample(model, sde, (len(g), 3), method="ddim", steps=3, known=x_init[rows],
                             mask=mask[rows], generator=g).x  # fmt: skip

    def mala(rows, g):
        res = langevin(lambda x: model.score(x, torch.full((len(x),), 0.5)), x_init[rows], 0.1, 3,
                       metropolis=True, log_prob=lambda x: model.log_prob(x, torch.full(
                           (len(x),), 0.5)), generator=g)  # fmt: skip
        return res.x

    for fn in (edit, inpaint, mala):
        six = fn(slice(0, 6), PerExampleGenerator(SEEDS))
        two_four = [fn(slice(0, 2), PerExampleGenerator(SEEDS[:2]))]
        two_four.append(fn(slice(2, 6), PerExampleGenerator(SEEDS[2:])))
        assert torch.equal(six, torch.cat(two_four)), fn.__name__
    # the harness cuts sample()'s per-example arguments (here x_init, known, mask) to each batch
    kw = dict(method="ddim", steps=3, batch_size=4)
    cases = [(edit, dict(x_init=x_init, t_start=0.5)), (inpaint, dict(known=x_init, mask=mask))]
    for fn, rows in cases:
        gen = PerExampleGenerator(SEEDS)
        x, _ = harness.sample_batches(model, sde, (6, 3), generator=gen, **kw, **rows)
        assert torch.equal(x, fn(slice(0, 6), PerExampleGenerator(SEEDS)))


def _gaussian(sde):
    cov = torch.tensor([[0.6, 0.2], [0.2, 0.3]])
    return sdegen.GaussianScore(torch.tensor([0.5, -1.0]), cov, sde)


def test_exact_trace_needs_no_randomness():
    sde = sdegen.VPSDE()
    model, x = _gaussian(sde), torch.tensor([[0.3, -0.2], [1.0, 0.5]])
    a = log_likelihood(model, sde, x, rtol=1e-3, atol=1e-3, generator=PerExampleGenerator([1, 2]))
    b = log_likelihood(model, sde, x, rtol=1e-3, atol=1e-3)
    assert torch.equal(a.log_prob, b.log_prob)


# ---- the split over processes -----------------------------------------------------------------


@given(st.integers(0, 40), st.integers(1, 7), st.integers(1, 5))
def test_batches_are_aligned_and_dealt_round_robin(n, batch, world):
    one = harness.batch_slices(n, batch)
    assert [(s.start, s.stop) for s in one] == [(k, min(k + batch, n)) for k in range(0, n, batch)]
    dealt = [harness.batch_slices(n, batch, r, world) for r in range(world)]
    # every batch once, the same batches whatever the number of processes, j to process j % world
    assert sorted(s.start for part in dealt for s in part) == [s.start for s in one]
    for r, part in enumerate(dealt):
        assert all((s.start // batch) % world == r for s in part)


def test_a_plain_generator_runs_the_batches_in_order_as_one_loop():
    sde = sdegen.VPSDE()
    model = mixture(sde)
    g = torch.Generator().manual_seed(3)
    kw = dict(method="ddim", steps=3, eta=1.0)
    x, _ = harness.sample_batches(model, sde, (5, 2), batch_size=2, generator=g, **kw)
    g = torch.Generator().manual_seed(3)
    ref = [sdegen.sample(model, sde, (b, 2), generator=g, **kw).x for b in (2, 2, 1)]
    assert torch.equal(x, torch.cat(ref))
    # labels as a list are cut to each batch's rows like a tensor's
    y = [0, 1, 1, 0, 1]
    g = torch.Generator().manual_seed(3)
    x, _ = harness.sample_batches(model, sde, (5, 2), batch_size=2, y=y, generator=g, **kw)
    g = torch.Generator().manual_seed(3)
    ref = [sdegen.sample(model, sde, (len(y[i : i + 2]), 2), y=torch.tensor(y[i : i + 2]),
                         generator=g, **kw).x for i in (0, 2, 4)]  # fmt: skip
    assert torch.equal(x, torch.cat(ref))
    with pytest.raises(ValueError, match="holds 4 seeds for 5 examples"):
        harness.map_batches(lambda rows, g: None, 5, 2, PerExampleGenerator(range(4)))


def test_likelihood_with_one_generator_is_the_loop_it_was():
    sde = sdegen.VPSDE()
    model = _gaussian(sde)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    data = Data("gauss", x, x, bin_width=0.5)
    settings = dict(trace="hutchinson", probes=1, rtol=1e-3, atol=1e-3)
    out = evaluate_likelihood(model, data, x, batch=2, seed=4, **settings)
    g = torch.Generator().manual_seed(4)  # dequantization first, then each batch's probes
    xd = sdegen.data.dequantize(x, 0.5, generator=g)
    logp = torch.cat([log_likelihood(model, sde, c, generator=g, **settings).log_prob
                      for c in xd.split(2)])  # fmt: skip
    assert out["nll_nats"] == float(-logp.mean())
    seeded = evaluate_likelihood(model, data, x, batch=2, seed=4, seeds=range(5), **settings)
    assert seeded["nll_nats"] != out["nll_nats"] and np.isfinite(seeded["nll_nats"])


def test_cli_seed_options_are_checked(tmp_path, capsys):
    (tmp_path / "mine.py").write_text(_FACTORY)
    base = ["sample", "--model", str(tmp_path / "mine.py:mix"), "--shape", "2", "--quiet"]
    for bad, msg in [
        ("5-3", "must run from low to high"),
        ("a", "must be seeds >= 0 and ranges"),
        ("1,0-2", "lists a seed twice"),
        ("-4", "must be seeds >= 0"),
    ]:
        with pytest.raises(SystemExit):
            main([*base, "--seeds", bad])
        assert msg in capsys.readouterr().err
    assert main([*base, "--seeds", "0-3", "--n", "5"]) == 2
    assert "--n asks for 5 samples but --seeds lists only 4 seeds" in capsys.readouterr().err
    assert main([*base, "--batch", "2"]) == 2
    assert "--batch goes with --seeds" in capsys.readouterr().err
    # --n takes the first seeds; sample k is seed k's, alone or in a batch (here of 2)
    run = [*base, "--method", "euler_maruyama", "--steps", "3"]
    assert main([*run, "--seeds", "5-9", "--n", "3", "--batch", "2", "--out", f"{tmp_path}/a"]) == 0
    assert main([*run, "--seeds", "6", "--out", str(tmp_path / "b")]) == 0
    a, b = np.load(tmp_path / "a.npz"), np.load(tmp_path / "b.npz")
    assert a["seeds"].tolist() == [5, 6, 7] and a["nfe_batches"].tolist() == [4, 4]
    assert np.array_equal(a["x"][1], b["x"][0])


# ---- two processes under torchrun write what one process writes ------------------------------

_FACTORY = """
import torch
from sdegen import GaussianMixtureScore
from sdegen.sde import VPSDE


def mix():
    sde = VPSDE()
    f64 = dict(dtype=torch.float64)
    covs = torch.stack([0.2 * torch.eye(2, **f64), 0.3 * torch.eye(2, **f64)])
    means = torch.tensor([[-1.0, 0.5], [1.5, -0.5]], **f64)
    return GaussianMixtureScore(torch.tensor([0.4, 0.6], **f64), means, covs, sde), sde
"""

# the commands: pc (its examples share a step size: only aligned batches make 1 and 2
# processes agree) and a Hutchinson likelihood; 10 examples in batches of 4 (2 + 1 batches)
_SAMPLE = ["sample", "--model", "mine.py:mix", "--shape", "2", "--seeds", "0-9", "--batch", "4",
           "--method", "pc", "--steps", "4", "--quiet", "--out", "x"]  # fmt: skip
_LIKELIHOOD = ["likelihood", "--model", "mine.py:mix", "--data", "toy:8gaussians", "--seeds",
               "0-9", "--batch", "4", "--trace", "hutchinson", "--rtol", "1e-3", "--atol", "1e-3",
               "--quiet"]  # fmt: skip

_DRIVER = f"""
import os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})  # this checkout's sdegen
os.chdir(sys.argv[1])
from sdegen.cli import main
sys.exit(main({_SAMPLE!r}) or main({_LIKELIHOOD!r}))
"""


def _run_here(folder: Path) -> None:
    """Both commands in this process, as a user runs them (float32 default dtype, 1 thread)."""
    cwd, dtype = os.getcwd(), torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    os.chdir(folder)
    try:
        assert main(_SAMPLE) == 0 and main(_LIKELIHOOD) == 0
    finally:
        os.chdir(cwd)
        torch.set_default_dtype(dtype)


@pytest.mark.xdist_group("ddp")
def test_two_processes_write_what_one_writes(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    for d in (one, two):
        d.mkdir()
        (d / "mine.py").write_text(_FACTORY)
    (tmp_path / "driver.py").write_text(_DRIVER)
    run_torchrun(str(tmp_path / "driver.py"), str(two), nproc=2)
    _run_here(one)
    a, b = np.load(one / "x.npz"), np.load(two / "x.npz")
    assert a["x"].shape == (10, 2) and np.isfinite(a["x"]).all()
    assert a.files == b.files
    for k in a.files:
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k
    la, lb = (json.loads((d / "likelihood-test-n10.json").read_text()) for d in (one, two))
    la.pop("seconds"), lb.pop("seconds")
    assert la == lb and la["n"] == 10 and la["seeds"] == "0-9" and np.isfinite(la["nll_nats"])


def test_leave_distributed_leaves_the_group_once(tmp_path):
    # a one-process gloo group: leave_distributed leaves it (after the monitored barrier), and is
    # a no-op when no group was joined (every run without torchrun) or when it was left already
    import torch.distributed as dist

    from sdegen.training import leave_distributed

    leave_distributed()
    dist.init_process_group(
        "gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1
    )
    assert dist.is_initialized()
    leave_distributed(timeout_s=10)
    assert not dist.is_initialized()
    leave_distributed()


_LEAVE_DRIVER = f"""
import atexit, os, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})  # this checkout's sdegen
import torch.distributed as dist
from sdegen.training import init_distributed

out = sys.argv[1]
rank = os.environ["RANK"]
# registered first, so it runs last at exit: after sdegen's own exit handler
atexit.register(lambda: open(f"{{out}}/rank{{rank}}", "w").write(str(dist.is_initialized())))
assert init_distributed("cpu") == (int(rank), 2)
assert init_distributed("cpu") == (int(rank), 2)  # a second command joins nothing new
"""


@pytest.mark.xdist_group("ddp")
def test_processes_leave_the_group_at_exit(tmp_path):
    # under torchrun each process joins once and, at exit, leaves the group (a barrier, then
    # destroy_process_group) before the interpreter tears gloo down
    (tmp_path / "driver.py").write_text(_LEAVE_DRIVER)
    run_torchrun(str(tmp_path / "driver.py"), str(tmp_path), nproc=2)
    assert [(tmp_path / f"rank{r}").read_text() for r in (0, 1)] == ["False", "False"]
