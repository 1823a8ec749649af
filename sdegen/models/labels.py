"""Class labels for conditional models: the reserved null label, checks, and the embedding.

Labels are integer tensors of shape (B,) with values in [0, num_classes), or NULL_LABEL (-1) for
"no condition". One network trained with labels randomly replaced by NULL_LABEL (label dropout,
Ho & Salimans 2022) is both the conditional and the unconditional model that classifier-free
guidance combines.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

NULL_LABEL = -1


def check_labels(y, batch: int, num_classes: int | None, *, allow_null: bool = True) -> Tensor:
    """Validate class labels and return them as an int64 tensor of shape (batch,).

    Args:
        y: an integer tensor of shape (batch,).
        batch: the batch size the labels must match.
        num_classes: the number of classes of the model; None for an unconditional model, which
            takes no labels at all.
        allow_null: accept NULL_LABEL (-1) entries.
    Raises:
        ValueError naming what was expected and what arrived.
    """
    if num_classes is None:
        raise ValueError(
            "labels y were given to an unconditional model (built without num_classes); "
            "pass y=None, or build the network with num_classes"
        )
    if not torch.is_tensor(y):
        raise ValueError(f"labels y must be an integer tensor of shape ({batch},), got {y!r}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels y must have an integer dtype, got {y.dtype}")
    if tuple(y.shape) != (batch,):
        raise ValueError(f"labels y must have shape ({batch},), got {tuple(y.shape)}")
    lo = NULL_LABEL if allow_null else 0
    bad = (y < lo) | (y >= num_classes)
    if bool(bad.any()):
        value = int(y[bad][0])
        allowed = f"0..{num_classes - 1}" + (
            f" or the null label {NULL_LABEL}" if allow_null else ""
        )
        raise ValueError(f"label {value} is out of range; expected {allowed}")
    return y.long()


def check_condition(model, y, batch: int) -> Tensor:
    """The condition y checked for `model`: by the model's own `check_condition(y, batch)` where
    it has one (text-conditional networks take token ids (batch, L) or table indices), else as
    class labels of its `num_classes` (check_labels)."""
    check = getattr(model, "check_condition", None)
    if callable(check):
        return check(y, batch)
    return check_labels(y, batch, getattr(model, "num_classes", None))


def null_like(y: Tensor) -> Tensor:
    """The null condition for every example of y: NULL_LABEL rows of y's shape (for token ids,
    a row starting with NULL_LABEL is the null caption)."""
    return torch.full_like(y, NULL_LABEL)


def drop_condition(y: Tensor, drop: Tensor) -> Tensor:
    """y with the examples where the bool `drop` (B,) is True replaced by the null condition
    (label dropout, Ho & Salimans 2022); y is labels (B,) or token ids (B, L)."""
    return torch.where(drop.reshape(-1, *([1] * (y.ndim - 1))), NULL_LABEL, y)


def labels_like(y, batch: int, device=None) -> Tensor | None:
    """An int, a list or tuple of ints, or a tensor, as labels of shape (batch,); an int labels
    the whole batch. A list's length and values are checked where the labels are used."""
    if y is None:
        return y
    if torch.is_tensor(y):
        return y.to(device) if device is not None else y
    if isinstance(y, (list, tuple)) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in y
    ):
        return torch.tensor(y, dtype=torch.long, device=device).reshape(len(y))
    if isinstance(y, bool) or not isinstance(y, int):
        raise ValueError(
            f"labels y must be an int, a list of {batch} ints or an integer tensor of shape "
            f"({batch},), got {y!r}"
        )
    return torch.full((batch,), y, dtype=torch.long, device=device)


class LabelEmbedding(nn.Module):
    """A learned embedding of class labels, with one extra row for NULL_LABEL.

    Maps y of shape (B,), values in [-1, num_classes), to (B, dim); y = None embeds the whole
    batch as unconditional. As in ADM (Dhariwal & Nichol 2021), networks add it to their
    noise-level embedding.
    """

    def __init__(self, num_classes: int, dim: int) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, dim)

    def forward(self, y: Tensor | None, batch: int, device) -> Tensor:
        if y is None:
            idx = torch.full((batch,), self.num_classes, dtype=torch.long, device=device)
        else:
            y = check_labels(y, batch, self.num_classes)
            idx = torch.where(y == NULL_LABEL, self.num_classes, y)
        return self.table(idx)
