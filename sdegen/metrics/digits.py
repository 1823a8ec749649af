"""A small CNN classifier of the bundled 8x8 digits: the feature network of the "digits" FID.

The classifier is trained by this repository (``python benchmarks/digits_classifier.py``, which
calls `train_digits_classifier`) on the TRAIN split of `sdegen.data.load_digits` only, and
evaluated on its 297-image TEST split. Inputs are images of shape (B, 1, 8, 8) on the package's
data scale: the 17 grey levels at the bin centres -1 + (k + 0.5) * 2/17 in [-1, 1]
(`sdegen.data.quantize`). Training adds the uniform dequantization noise of one bin and random
one-pixel shifts, so continuous-valued samples of a generative model are in its input domain
(measured at 1000 steps, seeds 0-2: held-out accuracy 0.993, 0.997, 0.997 with the shifts,
0.987, 0.990, 0.990 without; with Gaussian pixel noise of std 0.3 added to the test images,
0.970, 0.970, 0.963 with and 0.960, 0.956, 0.960 without).

Weights live in one safetensors file whose metadata (key "sdegen") holds JSON with the
architecture config, the training seed and steps, and the held-out test accuracy. Default
location: ``$SDEGEN_CACHE/digits_classifier.safetensors``, where SDEGEN_CACHE defaults to
``~/.cache/sdegen``; every function also takes an explicit ``path``.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn
from torch.nn import functional as F

from .._utils import check_int

__all__ = [
    "DigitsClassifier",
    "DigitsTraining",
    "default_digits_classifier_path",
    "train_digits_classifier",
    "save_digits_classifier",
    "load_digits_classifier",
    "ensure_digits_classifier",
]

FILE_NAME = "digits_classifier.safetensors"
SCRIPT = "python benchmarks/digits_classifier.py"
_FORMAT = "sdegen.digits_classifier/1"
_META_KEY = "sdegen"
_BACKGROUND = -1.0 + 1.0 / 17  # bin centre of grey level 0, the digits' background
DEFAULT_STEPS = 1000


class DigitsClassifier(nn.Module):
    """CNN for (B, 1, 8, 8) digits in [-1, 1]: two 3x3 conv layers, 2x2 max-pool, a hidden
    fully connected layer of `hidden` units (the FID features) and 10 logits.

    Float32 parameters whatever torch's default dtype; inputs of any float dtype are cast.
    """

    metadata: dict  # config and training record, set by load_digits_classifier

    def __init__(self, channels: int = 32, hidden: int = 64) -> None:
        super().__init__()
        for name, v in (("channels", channels), ("hidden", hidden)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        self.config = {"channels": channels, "hidden": hidden}
        f32 = torch.float32
        self.conv1 = nn.Conv2d(1, channels, 3, padding=1, dtype=f32)
        self.conv2 = nn.Conv2d(channels, 2 * channels, 3, padding=1, dtype=f32)
        self.fc = nn.Linear(2 * channels * 16, hidden, dtype=f32)
        self.head = nn.Linear(hidden, 10, dtype=f32)

    def _check(self, x: Tensor) -> Tensor:
        if not torch.is_tensor(x) or x.ndim != 4 or tuple(x.shape[1:]) != (1, 8, 8):
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must be digits of shape (B, 1, 8, 8) in [-1, 1], got {got}")
        return x.to(self.conv1.weight.dtype)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations (after ReLU): x (B, 1, 8, 8) -> (B, hidden), float32."""
        h = F.relu(self.conv1(self._check(x)))
        h = F.max_pool2d(F.relu(self.conv2(h)), 2)  # (B, 2C, 4, 4)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: Tensor) -> Tensor:
        """Class logits: x (B, 1, 8, 8) -> (B, 10)."""
        return self.head(self.features(x))


@dataclass(frozen=True)
class DigitsTraining:
    """What `train_digits_classifier` did: seed, steps, batch size, accuracies on the train
    split (1500 images, clean) and the held-out test split (297 images), and seconds taken."""

    seed: int
    steps: int
    batch_size: int
    train_accuracy: float
    test_accuracy: float
    test_count: int
    seconds: float


def default_digits_classifier_path() -> Path:
    """The classifier's cache file: ``$SDEGEN_CACHE/digits_classifier.safetensors``, where the
    env var SDEGEN_CACHE defaults to ``~/.cache/sdegen``."""
    root = os.environ.get("SDEGEN_CACHE") or os.path.join("~", ".cache", "sdegen")
    return Path(root).expanduser() / FILE_NAME


def _resolve(path: str | os.PathLike[str] | None) -> Path:
    return default_digits_classifier_path() if path is None else Path(path).expanduser()


def _shift(x: Tensor, g: torch.Generator) -> Tensor:
    """Each image translated by (dy, dx) in {-1, 0, 1}^2, uncovered pixels set to background."""
    b = x.shape[0]
    padded = F.pad(x, (1, 1, 1, 1), value=_BACKGROUND)  # (B, 1, 10, 10)
    off = torch.randint(0, 3, (2, b), generator=g)
    rows = (off[0, :, None] + torch.arange(8))[:, :, None]  # (B, 8, 1)
    cols = (off[1, :, None] + torch.arange(8))[:, None, :]  # (B, 1, 8)
    return padded[torch.arange(b)[:, None, None], 0, rows, cols].unsqueeze(1)


@torch.no_grad()
def _accuracy(model: DigitsClassifier, x: Tensor, y: Tensor) -> float:
    return float((model(x).argmax(dim=1) == y).double().mean())


def train_digits_classifier(
    *,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    batch_size: int = 128,
    lr: float = 3e-3,
    channels: int = 32,
    hidden: int = 64,
) -> tuple[DigitsClassifier, DigitsTraining]:
    """Train `DigitsClassifier` on the digits TRAIN split; deterministic given `seed` (CPU).

    Adam with a cosine-decayed learning rate, minibatches drawn with replacement; each input
    gets a random one-pixel shift and uniform dequantization noise of one bin (2/17). Torch's
    global RNG is left untouched (initialisation runs under ``torch.random.fork_rng``).

    Returns:
        the trained model (eval mode, CPU, float32) and a `DigitsTraining` record whose
        `test_accuracy` is measured on the 297 held-out TEST images, never trained on.
    """
    from ..data import load_digits  # data sets are needed only to train

    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    steps, batch_size = check_int("steps", steps, 1), check_int("batch_size", batch_size, 1)
    start = time.perf_counter()
    train, test = load_digits("train"), load_digits("test")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DigitsClassifier(channels, hidden)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: 0.5 * (1 + math.cos(math.pi * k / steps))
    )
    x_train, y_train = train.x.float(), train.y
    half_bin = 0.5 * train.bin_width
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(train), (batch_size,), generator=g)
        xb = _shift(x_train[idx], g)
        xb = xb + (2 * torch.rand(xb.shape, generator=g, dtype=xb.dtype) - 1) * half_bin
        loss = F.cross_entropy(model(xb), y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    record = DigitsTraining(
        seed=seed,
        steps=steps,
        batch_size=batch_size,
        train_accuracy=_accuracy(model, x_train, y_train),
        test_accuracy=_accuracy(model, test.x.float(), test.y),
        test_count=len(test),
        seconds=time.perf_counter() - start,
    )
    return model, record


def save_digits_classifier(
    model: DigitsClassifier, training: DigitsTraining, path: str | os.PathLike[str] | None = None
) -> Path:
    """Write weights + metadata to `path` (default: `default_digits_classifier_path()`)
    atomically: a temporary file in the same folder is renamed over the target with os.replace,
    so a reader never sees a partial file. Returns the path written."""
    path = _resolve(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": _FORMAT, "config": model.config, "training": asdict(training)}
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        save_file(tensors, tmp, metadata={_META_KEY: json.dumps(meta)})
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_digits_classifier(
    path: str | os.PathLike[str] | None = None, *, device: torch.device | str | None = None
) -> DigitsClassifier:
    """The trained classifier from `path` (default: `default_digits_classifier_path()`), in
    eval mode; its metadata dict (config, training record) is on ``model.metadata``.

    Raises:
        FileNotFoundError: naming the file and the command that creates it.
        ValueError: when the file is not a digits classifier written by this package.
    """
    path = _resolve(path)
    if not path.is_file():
        where = "" if path == default_digits_classifier_path() else f" --out {path}"
        raise FileNotFoundError(
            f"digits classifier weights not found: {path}; create them with `{SCRIPT}{where}` "
            "(trains on the bundled 8x8 digits in about a minute on CPU), or set SDEGEN_CACHE "
            f"to the folder holding {FILE_NAME}"
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(_META_KEY, "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            raise ValueError(f"metadata key {_META_KEY!r} lacks format {_FORMAT!r}")
        model = DigitsClassifier(**meta["config"])
        model.load_state_dict(tensors)
    except (SafetensorError, ValueError, KeyError, TypeError, RuntimeError, OSError) as err:
        raise ValueError(
            f"{path} is not a digits classifier saved by sdegen ({type(err).__name__}: {err}); "
            f"recreate it with `{SCRIPT} --out {path}`"
        ) from err
    model.metadata = meta
    return model.eval().to(device) if device is not None else model.eval()


def ensure_digits_classifier(
    path: str | os.PathLike[str] | None = None,
    *,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    verbose: bool = True,
) -> Path:
    """The classifier's file, trained and saved first if it is missing (what benchmarks call
    before using the "digits" features). An existing file is used as it is. Returns its path."""
    path = _resolve(path)
    if path.is_file():
        return path
    if verbose:
        print(f"digits classifier missing at {path}; training it ({steps} steps)", flush=True)
    model, record = train_digits_classifier(seed=seed, steps=steps)
    save_digits_classifier(model, record, path)
    if verbose:
        print(f"saved {path}: test accuracy {record.test_accuracy:.4f}", flush=True)
    return path
