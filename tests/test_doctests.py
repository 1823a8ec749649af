"""The `>>>` examples in the docstrings of the public entry points run, and print what they show.

Modules are listed by name rather than collected with --doctest-modules, which would import
every module of the package (the CLI and optional back ends included); add a module here when
its docstrings gain examples. A listed module must hold at least one example.

Examples run as a user runs them: torch's default dtype float32 (the suite's is float64), and
the global random state of the test restored afterwards.
"""

from __future__ import annotations

import doctest
import importlib
import io

import pytest
import torch

MODULES = [
    "sdegen.sde.base",
    "sdegen.sde.vp",
    "sdegen.sde.discrete",
    "sdegen.models.learned_variance",
    "sdegen.solvers.ancestral_learned",
    "sdegen.training.vlb",
    "sdegen.models.score_model",
    "sdegen.models.base",
    "sdegen.models.analytic",
    "sdegen.models.density",
    "sdegen.models.distribution",
    "sdegen.solvers.sampling",
    "sdegen.solvers.inverse",
    "sdegen.solvers.langevin",
    "sdegen.models.flows.realnvp",
    "sdegen.models.flows.ffjord",
    "sdegen.models.vae",
    "sdegen.models.autoencoder",
    "sdegen.models.latent",
    "sdegen.models.gan",
    "sdegen.score_density",
    "sdegen.random",
    "sdegen.assembly.harness",
    "sdegen.assembly.config",
    "sdegen.models.dit",
    "sdegen.metrics.inception_score",
]

FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module, name) if t.examples]
    assert tests, f"{name} is listed in MODULES but has no docstring examples"
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=FLAGS)
    default = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.set_default_dtype(torch.float32)
        try:
            for test in tests:
                runner.run(test, out=out.write)
        finally:
            torch.set_default_dtype(default)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} failing example(s) in {name}:\n{out.getvalue()}"
