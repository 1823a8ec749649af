"""Image data sets as bin centres in [-1, 1]: scikit-learn's 8x8 digits, MNIST and CIFAR-10.

Nothing is downloaded: digits ship with scikit-learn, and MNIST / CIFAR-10 are read from local
files the user points to. Pixels with `levels` grey values become the bin centres of
`sdegen.data.quantize` (c_k = -1 + (k + 0.5) * 2 / levels), so `dequantize(data.x,
data.bin_width)` gives continuous training data and `bits_per_dim(log_prob, data.num_dims,
data.bin_width)` the usual bits per dimension.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .quantize import bin_width as _bin_width
from .quantize import to_centres

__all__ = ["ImageData", "load_digits", "load_mnist", "load_cifar10"]


@dataclass(frozen=True, eq=False)
class ImageData:
    """An image data set: x (N, C, H, W) float32 bin centres in [-1, 1], y (N,) int64 labels,
    the number of grey `levels` per channel, its `bin_width` (2 / levels), a `name` and
    `num_classes`."""

    x: Tensor
    y: Tensor
    levels: int
    bin_width: float
    name: str
    num_classes: int

    def __post_init__(self) -> None:
        if not torch.is_tensor(self.x) or self.x.ndim != 4:
            raise ValueError(f"x must be a tensor of shape (N, C, H, W), got {_shape(self.x)}")
        if not torch.is_tensor(self.y) or self.y.shape != (self.x.shape[0],):
            raise ValueError(
                f"y must be a tensor of shape ({self.x.shape[0]},) to match x, got {_shape(self.y)}"
            )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_dims(self) -> int:
        """C * H * W, the `num_dims` to pass to `bits_per_dim`."""
        return int(np.prod(self.x.shape[1:]))


def _shape(t: object) -> object:
    return tuple(t.shape) if torch.is_tensor(t) else type(t).__name__


def _check_split(split: str, choices: tuple[str, ...]) -> str:
    if split not in choices:
        raise ValueError(f"split must be one of {', '.join(map(repr, choices))}, got {split!r}")
    return split


def _make(k: np.ndarray, labels: np.ndarray, levels: int, name: str, classes: int) -> ImageData:
    """ImageData from integer pixels k (N, C, H, W) and labels (N,), checking label range."""
    y = torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64))
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= classes):
        raise ValueError(f"{name} labels must be in 0..{classes - 1}")
    x = torch.empty(k.shape, dtype=torch.float32)
    for a in range(0, k.shape[0], 10000):  # chunks keep the int32 scratch of to_centres small
        x[a : a + 10000] = to_centres(torch.from_numpy(np.array(k[a : a + 10000])), levels)
    return ImageData(x, y, levels, _bin_width(levels), name, classes)


# --------------------------------------------------------------------------- digits


def load_digits(split: str = "train") -> ImageData:
    """scikit-learn's bundled 8x8 digits (values 0..16, so 17 levels) as x (N, 1, 8, 8).

    The split is fixed: a permutation of the 1797 images from torch.Generator().manual_seed(0);
    its first 1500 entries are "train" and its last 297 "test" (both in permuted order);
    "all" returns the 1797 images in scikit-learn's order. Labels 0..9.
    """
    _check_split(split, ("train", "test", "all"))
    from sklearn.datasets import load_digits as _sklearn_digits

    bunch = _sklearn_digits()
    k = np.rint(bunch.images).astype(np.int64)[:, None]  # (1797, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    if split != "all":
        perm = torch.randperm(k.shape[0], generator=torch.Generator().manual_seed(0)).numpy()
        idx = perm[:1500] if split == "train" else perm[-297:]
        k, labels = k[idx], labels[idx]
    return _make(k, labels, 17, "digits", 10)


# --------------------------------------------------------------------------- MNIST

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MNIST_HINT = "expected the IDX files from the MNIST distribution"


def _find_idx(folder: Path, base: str) -> Path:
    for name in (base, base + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"MNIST IDX file not found: {folder / base}(.gz); {_MNIST_HINT}")


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an IDX file (magic 0x0000080<ndim>, big-endian uint32 dims)."""
    kind = f"an IDX file of unsigned bytes with {ndim} dims (magic 0x{0x800 | ndim:08x})"
    raw = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: not a valid gzip file ({err}); expected {kind}") from err
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise ValueError(f"{path}: {len(raw)} bytes, too short for the header of {kind}")
    header = np.frombuffer(raw, dtype=">u4", count=1 + ndim)
    if int(header[0]) != 0x800 | ndim:
        raise ValueError(f"{path}: bad magic number 0x{int(header[0]):08x}; expected {kind}")
    dims = tuple(int(d) for d in header[1:])
    size = head + int(np.prod(dims, dtype=np.int64))
    if len(raw) != size:
        raise ValueError(
            f"{path}: {len(raw)} bytes, but its header (dims {dims}) needs {size}; "
            f"the file is truncated or corrupt; expected {kind}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(dims)


def load_mnist(root: str | os.PathLike[str], split: str = "train") -> ImageData:
    """MNIST from the IDX files in the folder `root` as x (N, 1, 28, 28), 256 levels.

    Reads train-images-idx3-ubyte / train-labels-idx1-ubyte ("train") or t10k-images-idx3-ubyte
    / t10k-labels-idx1-ubyte ("test"), each plain or gzipped (.gz), from `root` or, failing
    that, from torchvision's layout root/MNIST/raw. The image size comes from the IDX header, so
    Fashion-MNIST / KMNIST files load the same way. Missing files raise FileNotFoundError and
    corrupt ones ValueError, both naming the path.
    """
    _check_split(split, ("train", "test"))
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"MNIST folder not found: {root}; {_MNIST_HINT} "
            f"({', '.join(_MNIST_FILES['train'] + _MNIST_FILES['test'])}, optionally .gz)"
        )
    images_base, labels_base = _MNIST_FILES[split]
    folder = root
    if not any((root / f).is_file() for f in (images_base, images_base + ".gz")):
        if (root / "MNIST" / "raw" / images_base).is_file() or (
            root / "MNIST" / "raw" / (images_base + ".gz")
        ).is_file():
            folder = root / "MNIST" / "raw"
    images_path = _find_idx(folder, images_base)
    labels_path = _find_idx(folder, labels_base)
    images = _read_idx(images_path, 3)
    labels = _read_idx(labels_path, 1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels; expected matching MNIST IDX files"
        )
    if labels.size and labels.max() > 9:
        raise ValueError(f"{labels_path}: labels must be digits 0..9, got {int(labels.max())}")
    return _make(images[:, None], labels, 256, "mnist", 10)


# --------------------------------------------------------------------------- CIFAR-10

_CIFAR_DIR = "cifar-10-batches-py"
_CIFAR_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_CIFAR_HINT = (
    "expected the CIFAR-10 python-version batches data_batch_1..data_batch_5 and test_batch "
    "(cifar-10-python.tar.gz, extracted)"
)
_CIFAR_FORMAT = "a pickled dict with b'data' (N, 3072) uint8 and b'labels' (N ints in 0..9)"


def _latin1_encode(obj: object, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """The one use of _codecs.encode in protocol-2 pickles of bytes, restricted to latin-1."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only for str with latin1")
    return obj.encode("latin1")


@lru_cache(maxsize=1)
def _allowed_globals() -> dict[tuple[str, str], object]:
    """The globals a CIFAR-10 batch may reference: numpy array reconstruction only."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy < 2
        from numpy.core import multiarray, numeric  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], object] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for pkg in ("numpy.core", "numpy._core"):
        allowed[(f"{pkg}.multiarray", "_reconstruct")] = multiarray._reconstruct
        if hasattr(numeric, "_frombuffer"):  # numpy's protocol-5 array pickles
            allowed[(f"{pkg}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """An Unpickler that resolves only the globals of `_allowed_globals` (no code execution)."""

    def find_class(self, module: str, name: str) -> object:
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(
                f"forbidden global {module}.{name}: a CIFAR-10 batch may only reference "
                "numpy array reconstruction"
            )
        return obj


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(data (n, 3072) uint8, labels (n,) int64) of one CIFAR-10 python batch."""
    raw = path.read_bytes()
    try:
        obj = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any failure inside pickle on a corrupt or hostile file
        raise ValueError(
            f"{path}: not a readable CIFAR-10 batch ({type(err).__name__}: {err}); "
            f"expected {_CIFAR_FORMAT}"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: unpickled a {type(obj).__name__}; expected {_CIFAR_FORMAT}")
    entries = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in entries or "labels" not in entries:
        keys = ", ".join(sorted(map(repr, obj)))
        raise ValueError(f"{path}: dict has keys {keys}; expected {_CIFAR_FORMAT}")
    data, labels = entries["data"], entries["labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2) or (
        data.shape[1] != 3072
    ):
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise ValueError(f"{path}: b'data' is {got}; expected {_CIFAR_FORMAT}")
    try:
        labels = np.asarray(labels)
    except Exception:
        labels = np.empty(0, dtype=object)
    if labels.shape != (data.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{path}: b'labels' is not {data.shape[0]} integers; expected {_CIFAR_FORMAT}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{path}: labels outside 0..9; expected {_CIFAR_FORMAT}")
    return data, labels.astype(np.int64)


def load_cifar10(root: str | os.PathLike[str], split: str = "train") -> ImageData:
    """CIFAR-10 from the python-version batches as x (N, 3, 32, 32), 256 levels, labels 0..9.

    `root` is the extracted folder cifar-10-batches-py or its parent. "train" reads
    data_batch_1..data_batch_5 (50000 images), "test" reads test_batch (10000). The pickles are
    read with a restricted unpickler that only allows numpy array reconstruction; any other
    global, a corrupt file or unexpected contents raise ValueError naming the path.
    """
    _check_split(split, ("train", "test"))
    root = Path(root).expanduser()
    folder = root / _CIFAR_DIR if (root / _CIFAR_DIR).is_dir() else root
    if not folder.is_dir():
        raise FileNotFoundError(f"CIFAR-10 folder not found: {root}; {_CIFAR_HINT}")
    paths = [folder / name for name in _CIFAR_FILES[split]]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"CIFAR-10 batch file not found: {path}; {_CIFAR_HINT}")
    batches = [_read_cifar_batch(path) for path in paths]
    data = np.concatenate([d for d, _ in batches]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([y for _, y in batches])
    return _make(data, labels, 256, "cifar10", 10)
