"""Random draws with one seed per example, so that an example's noise does not depend on the
batch it is drawn in (nor on how many processes share the work).

`PerExampleGenerator(seeds)` holds one torch.Generator per example, seeded by that example's
seed, as EDM's `StackedRandomGenerator` does (Karras et al. 2022, generate.py): a draw of shape
(B, *D) takes row i from generator i, so example i's noise is the same whether it is sampled
alone, in a batch of six, or in another process. `randn`, `rand` and `randint` accept either it
or a plain torch.Generator (None: torch's global one, one stream for the whole batch, exactly
as torch.randn); every noise draw of the samplers, the prior and the likelihood's probes goes
through them. This module imports only torch: the lowest layer (`sde`) uses it.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

__all__ = ["PerExampleGenerator", "RandomSource", "rand", "randint", "randn"]

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds


class PerExampleGenerator:
    """One torch.Generator per example, each seeded by its example's seed (EDM's
    StackedRandomGenerator).

    Args:
        seeds: one integer seed per example, in 0..2**63 - 1, all different (two examples with
            one seed would be the same example): a sequence of ints, a range, or a 1-D integer
            tensor or array.
        device: where the generators live and draw (then moved to the requested device).
    Draws of shape (B, *D) (or with the batch along `batch_dim`) need B == len(self); row i
    comes from generator i. Indexing (`g[2:5]`, `g[[0, 3]]`) gives a view on the same
    generators, so a batch of examples continues each example's own stream.

    Example:
        >>> import torch
        >>> from sdegen.random import PerExampleGenerator, randn
        >>> six = randn((6, 3), PerExampleGenerator(range(6)))
        >>> two, four = PerExampleGenerator(range(2)), PerExampleGenerator(range(2, 6))
        >>> bool((torch.cat([randn((2, 3), two), randn((4, 3), four)]) == six).all())
        True
    """

    def __init__(self, seeds, device: torch.device | str = "cpu") -> None:
        values = _check_seeds(seeds)
        self.device = torch.device(device)
        self._seeds = values
        self._gens: list[torch.Generator | None] = [None] * len(values)
        self._index = list(range(len(values)))

    @property
    def seeds(self) -> list[int]:
        """The seeds of the examples, in batch order."""
        return [self._seeds[i] for i in self._index]

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        s = self.seeds
        shown = ", ".join(map(str, s[:4])) + (", ..." if len(s) > 4 else "")
        return f"PerExampleGenerator([{shown}] ({len(s)} examples), device={self.device})"

    def __getitem__(self, index: int | slice | Iterable[int]) -> PerExampleGenerator:
        if isinstance(index, slice):
            picked = self._index[index]
        elif isinstance(index, numbers.Integral) and not isinstance(index, bool):
            picked = [self._index[int(index)]]
        elif isinstance(index, Iterable):
            picked = [self._index[int(i)] for i in index]
        else:
            raise TypeError(f"index examples by an int, a slice or ints, got {index!r}")
        view = object.__new__(PerExampleGenerator)
        view.device, view._seeds, view._gens, view._index = (
            self.device, self._seeds, self._gens, picked,
        )  # fmt: skip
        return view

    def generator(self, i: int) -> torch.Generator:
        """Example i's generator (made on first use, so an unused example costs nothing)."""
        k = self._index[i]
        gen = self._gens[k]
        if gen is None:
            gen = self._gens[k] = torch.Generator(self.device).manual_seed(self._seeds[k])
        return gen

    def _rows(
        self,
        draw: Callable[[tuple[int, ...], torch.Generator], Tensor],
        shape: tuple[int, ...],
        batch_dim: int,
        device,
    ) -> Tensor:
        if not 0 <= batch_dim < len(shape):
            raise ValueError(f"batch_dim {batch_dim} is not a dim of shape {shape}")
        if shape[batch_dim] != len(self):
            raise ValueError(
                f"the per-example generator holds {len(self)} seeds (one per example), but the "
                f"draw of shape {shape} has {shape[batch_dim]} examples along dim {batch_dim}"
            )
        row = shape[:batch_dim] + shape[batch_dim + 1 :]
        out = torch.stack([draw(row, self.generator(i)) for i in range(len(self))], batch_dim)
        return out if device is None else out.to(device)


# What every function that draws noise takes as `generator`.
RandomSource = torch.Generator | PerExampleGenerator | None


def _check_source(generator) -> None:
    if generator is not None and not isinstance(generator, (torch.Generator, PerExampleGenerator)):
        raise TypeError(
            "generator must be a torch.Generator, a sdegen.random.PerExampleGenerator or None, "
            f"got {type(generator).__name__}"
        )


def _draw(torch_draw, shape, generator: RandomSource, device, batch_dim: int, **kw) -> Tensor:
    """torch_draw(shape, generator=, device=, **kw) from a torch.Generator or None, or row by row
    from a PerExampleGenerator (each example from its own generator)."""
    _check_source(generator)
    shape = tuple(shape)
    if not isinstance(generator, PerExampleGenerator):
        return torch_draw(shape, generator=generator, device=device, **kw)
    return generator._rows(
        lambda row, g: torch_draw(row, generator=g, device=g.device, **kw),
        shape, batch_dim, device,
    )  # fmt: skip


def randn(
    shape: tuple[int, ...],
    generator: RandomSource = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    batch_dim: int = 0,
) -> Tensor:
    """N(0, I) of `shape`: torch.randn itself for a torch.Generator or None; for a
    PerExampleGenerator, the slice along `batch_dim` (B examples) of example i from its own
    generator."""
    return _draw(torch.randn, shape, generator, device, batch_dim, dtype=dtype)


def rand(
    shape: tuple[int, ...],
    generator: RandomSource = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    batch_dim: int = 0,
) -> Tensor:
    """U[0, 1) of `shape`, drawn as `randn` draws (torch.rand, or per example)."""
    return _draw(torch.rand, shape, generator, device, batch_dim, dtype=dtype)


def randint(
    low: int,
    high: int,
    shape: tuple[int, ...],
    generator: RandomSource = None,
    *,
    device: torch.device | str | None = None,
    batch_dim: int = 0,
) -> Tensor:
    """Integers uniform in [low, high) (int64) of `shape`, drawn as `randn` draws."""
    return _draw(
        lambda size, **kw: torch.randint(low, high, size, **kw), shape, generator, device,
        batch_dim,
    )  # fmt: skip


def _check_seeds(seeds) -> list[int]:
    """`seeds` as a list of ints, or ValueError/TypeError naming the bad one."""
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__len__"):
        raise TypeError(
            f"seeds must be a sequence of integers (a list, range, or 1-D integer tensor), got "
            f"{type(seeds).__name__}"
        )
    if torch.is_tensor(seeds):
        if seeds.ndim != 1 or seeds.is_floating_point() or seeds.is_complex():
            raise ValueError(
                f"seeds must be a 1-D integer tensor, got {seeds.dtype} of shape "
                f"{tuple(seeds.shape)}"
            )
        seeds = seeds.tolist()
    values: list[int] = []
    for i, s in enumerate(seeds):
        if (
            isinstance(s, bool)
            or not isinstance(s, numbers.Integral)
            or not 0 <= int(s) <= SEED_MAX
        ):
            raise ValueError(f"seeds[{i}] must be an integer in 0..2**63 - 1, got {s!r}")
        values.append(int(s))
    if not values:
        raise ValueError("seeds must hold at least one seed (one per example)")
    if len(set(values)) < len(values):
        first: dict[int, int] = {}
        for i, s in enumerate(values):
            if s in first:
                raise ValueError(
                    f"seeds[{first[s]}] and seeds[{i}] are both {s}: two examples with one seed "
                    "would be the same example; give every example its own seed"
                )
            first[s] = i
    return values
