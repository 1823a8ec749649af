"""A data set's likelihood under a trained score model: the numbers `sdegen likelihood`, the
quickstart and the benchmarks report (NLL in nats, bits/dim, the true density's NLL)."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch

from .. import solvers
from .._progress import Progress
from ..data import dequantize
from ..models import VQVAE, KLAutoencoder
from ..models.density import bits_per_dim
from ..random import PerExampleGenerator, rand
from .harness import map_batches
from .latent import latent_density
from .tables import Data

# `trace="auto"`: the exact divergence costs D vector-Jacobian products per evaluation; above
# this many dimensions a Hutchinson estimate is used instead.
EXACT_TRACE_MAX_DIM = 16


def resolve_trace(trace: str, data: Data) -> str:
    """ "auto": the exact divergence up to EXACT_TRACE_MAX_DIM dimensions, else Hutchinson."""
    if trace != "auto":
        return trace
    return "exact" if math.prod(data.event_shape) <= EXACT_TRACE_MAX_DIM else "hutchinson"


def evaluate_likelihood(
    model,
    data: Data,
    x: torch.Tensor,
    *,
    trace: str,
    rtol: float,
    atol: float,
    batch: int,
    seed: int,
    probes: int = 1,
    progress: Progress | None = None,
    autoencoder: KLAutoencoder | VQVAE | None = None,
    seeds: list[int] | None = None,
) -> dict[str, Any]:
    """NLL (nats) and, for discrete data, bits/dim of x under the PF-ODE, in float64.

    The model is copied to float64; the caller's model is left as it is. With fewer than two
    examples the standard error is None (JSON null), not NaN. `progress.update(k)` is called
    after each batch of k examples. With the `autoencoder` of a latent run (the model then
    lives on its latents) the number is the latent-diffusion bound (`LatentDiffusion.bound`:
    decoder term + latent PF-ODE log-likelihood + encoder entropy, one posterior draw per
    image, no dequantization: the decoder is discretized), and "kind" says "bound".

    Randomness (dequantization, Hutchinson probes, the bound's posterior draws) comes from one
    generator seeded by `seed`, or with `seeds` (one per example of x) from example k's own
    seed: each example's number is then the same in whichever batch it lies, and under torchrun
    the batches are split over the processes (`harness.map_batches`), every process calling
    this with the same arguments, and getting the same numbers as one process would.
    """
    trace = resolve_trace(trace, data)
    model = copy.deepcopy(model)
    if isinstance(model, torch.nn.Module):
        model = model.double()
    g: torch.Generator | PerExampleGenerator = (
        torch.Generator(x.device).manual_seed(seed)
        if seeds is None
        else PerExampleGenerator(seeds, x.device)
    )
    x = x.double()
    density = None
    if autoencoder is not None:
        density = latent_density(copy.deepcopy(autoencoder).double(), model, model.sde)
    elif data.bin_width is not None:  # uniform dequantization, explicit
        x = dequantize(x, data.bin_width, uniform=rand(x.shape, g, dtype=x.dtype, device=x.device))
    settings: dict[str, Any] = dict(trace=trace, probes=probes, rtol=rtol, atol=atol)

    def one(rows: slice, gen) -> tuple[torch.Tensor, int, int, torch.Tensor | None]:
        chunk, part = x[rows], None
        if density is not None:
            bound = density.bound(chunk, generator=gen, **settings)
            part = torch.stack([bound.reconstruction, bound.prior, bound.entropy]).detach()
            logp, counts = bound.log_prob.detach(), (bound.nfe, bound.nfe_backward)
        else:
            res = solvers.log_likelihood(model, model.sde, chunk, generator=gen, **settings)
            logp, counts = res.log_prob, (res.nfe, res.nfe_backward)
        if progress is not None:
            progress.update(len(chunk))
        return logp, counts[0], counts[1], part

    batches = map_batches(one, x.shape[0], batch, g)
    logp = torch.cat([b[0] for b in batches]).to(x.device)
    nfe, nfe_b = sum(b[1] for b in batches), sum(b[2] for b in batches)
    parts = [b[3] for b in batches if b[3] is not None]
    n = x.shape[0]
    out: dict[str, Any] = {
        "kind": "ode" if density is None else "bound",
        "n": n,
        "nll_nats": float(-logp.mean()),
        "nll_nats_sem": float(logp.std() / n**0.5) if n > 1 else None,
        "nfe": nfe,
        "nfe_backward": nfe_b,
        "trace": trace,
        "probes": probes if trace == "hutchinson" else None,
        "rtol": rtol,
        "atol": atol,
        "seed": seed,
    }
    if data.bin_width is not None:
        D = int(np.prod(data.event_shape))
        out["bits_per_dim"] = float(bits_per_dim(logp, D, data.bin_width).mean())
        out["bin_width"] = data.bin_width
    if parts:  # the bound's three parts, nats per image
        means = torch.cat(parts, dim=1).mean(dim=1)
        out["bound_parts_nats"] = dict(
            zip(("reconstruction", "prior", "entropy"), map(float, means))
        )
    if data.true_log_prob is not None:
        out["true_nll_nats"] = float(-data.true_log_prob(x).mean())
    return out
