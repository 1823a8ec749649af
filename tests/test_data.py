"""Data layer: toy densities against their closed forms, dequantization, image loaders."""

from __future__ import annotations

import dataclasses
import gzip
import math
import pickle
import re
import struct

import numpy as np
import pytest
import torch

from sdegen.data import (
    TOY_DATASETS,
    TOY_LOG_PROB_DATASETS,
    ImageData,
    bin_width,
    dequantize,
    load_cifar10,
    load_digits,
    load_mnist,
    to_centres,
    to_levels,
    toy_log_prob,
    toy_sample,
)
from sdegen.models.density import bits_per_dim


def esc(path) -> str:
    """A path as a literal regular expression for pytest.raises(match=...)."""
    return re.escape(str(path))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grid(lim: float = 6.0, h: float = 0.02) -> tuple[torch.Tensor, float]:
    """Midpoints (M, 2) of a square grid over [-lim, lim]^2 and the cell area."""
    c = torch.arange(-lim + h / 2, lim, h, dtype=torch.float64)
    xx, yy = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1), h * h


# --------------------------------------------------------------------------- toy samplers


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_shape_finite_scale(name):
    x = toy_sample(name, 4000, generator=gen(0))
    assert x.shape == (4000, 2) and x.dtype == torch.float32
    assert bool(torch.isfinite(x).all())
    assert float(x.abs().max()) < 6.0  # roughly [-4, 4] plus noise tails
    std = x.std(dim=0)
    assert bool(((std > 0.5) & (std < 3.0)).all()), std
    assert float(x.mean(dim=0).abs().max()) < 1.0


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_seeded(name):
    a = toy_sample(name, 500, generator=gen(7))
    b = toy_sample(name, 500, generator=gen(7))
    c = toy_sample(name, 500, generator=gen(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    d = toy_sample(name, 500, generator=gen(7), dtype=torch.float64)
    assert d.dtype == torch.float64 and torch.equal(d.to(torch.float32), a)


def test_toy_global_rng_is_torch():
    torch.manual_seed(3)
    a = toy_sample("moons", 10)
    torch.manual_seed(3)
    assert torch.equal(a, toy_sample("moons", 10))


def test_toy_bad_arguments():
    with pytest.raises(ValueError, match="unknown toy dataset 'nope'.*8gaussians.*rings"):
        toy_sample("nope", 10)
    for n in (0, -3, 2.5, True):
        with pytest.raises(
            ValueError, match=r"^n \(the number of samples\) must be an integer >= 1"
        ):
            toy_sample("moons", n)
    with pytest.raises(TypeError, match="dtype"):
        toy_sample("moons", 3, dtype=torch.int64)
    with pytest.raises(ValueError, match="unknown toy dataset"):
        toy_log_prob("nope", torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"shape \(batch, 2\)"):
        toy_log_prob("8gaussians", torch.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        toy_log_prob("rings", torch.full((1, 2), math.nan))


@pytest.mark.parametrize("name", sorted(set(TOY_DATASETS) - set(TOY_LOG_PROB_DATASETS)))
def test_toy_log_prob_without_closed_form(name):
    msg = f"toy dataset '{name}' has no closed-form density; ones that do: 8gaussians"
    with pytest.raises(ValueError, match=msg):
        toy_log_prob(name, torch.zeros(4, 2))


@pytest.mark.parametrize("name", TOY_LOG_PROB_DATASETS)
def test_toy_log_prob_normalized_and_matches_sampler(name):
    pts, area = grid()
    lp = toy_log_prob(name, pts)
    assert lp.shape == (pts.shape[0],) and lp.dtype == torch.float64
    p = lp.exp()
    assert abs(float(p.sum() * area) - 1.0) < 0.01
    # Samples land where the density is positive, and E_samples[log p] = int p log p.
    x = toy_sample(name, 20000, generator=gen(1), dtype=torch.float64)
    lpx = toy_log_prob(name, x)
    assert bool(torch.isfinite(lpx).all())
    neg_entropy = float(torch.where(p > 0, p * lp, torch.zeros_like(p)).sum() * area)
    se = float(lpx.std()) / math.sqrt(x.shape[0])
    assert abs(float(lpx.mean()) - neg_entropy) < 4 * se + 1e-3, (float(lpx.mean()), neg_entropy)


def test_checkerboard_support():
    for dtype in (torch.float32, torch.float64):
        x = toy_sample("checkerboard", 20000, generator=gen(2), dtype=dtype)
        lp = toy_log_prob("checkerboard", x)
        assert bool((lp == -math.log(32.0)).all())  # every sample on a black square
        s = torch.floor(x.double() / 2)  # and by the parity rule directly (ties have mass 0)
        assert bool((torch.remainder(s.sum(1), 2) == 0).all()) and bool((x.abs() <= 4).all())
    pts = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-3.0, 3.0], [-3.0, -3.0], [5.0, 0.0]])
    lp = toy_log_prob("checkerboard", pts)
    expected = torch.tensor([-math.log(32.0), -math.inf, -math.inf, -math.log(32.0), -math.inf])
    assert torch.equal(lp, expected)
    # every point of the 8 black squares, boundaries included, has the density
    edges = torch.tensor([[-4.0, -4.0], [4.0, 2.0], [2.0, 2.0], [0.0, 0.0]])
    assert bool(torch.isfinite(toy_log_prob("checkerboard", edges)).all())


def test_8gaussians_moments():
    n = 40000
    x = toy_sample("8gaussians", n, generator=gen(3), dtype=torch.float64)
    # centres at radius 2 sqrt(2): cov = (R^2 / 2 + s^2) I = (4 + 1/8) I, mean 0
    var = 4.0 + 1.0 / 8.0
    assert float(x.mean(0).abs().max()) < 4 * math.sqrt(var / n)
    cov = torch.cov(x.T)
    se = math.sqrt(2.0) * var / math.sqrt(n)  # rough standard error of a variance estimate
    assert torch.allclose(cov, var * torch.eye(2, dtype=torch.float64), atol=5 * se)
    lp = toy_log_prob("8gaussians", x)
    assert bool(torch.isfinite(lp).all())
    # at a centre: log(1/8 * N(0; 0, s^2 I)) plus negligible terms from the other centres
    s2 = 1.0 / 8.0
    centre = torch.tensor([[2.0 * math.sqrt(2.0), 0.0]], dtype=torch.float64)
    expected = -math.log(8.0) - math.log(2 * math.pi * s2)
    assert abs(float(toy_log_prob("8gaussians", centre)) - expected) < 1e-6


# --------------------------------------------------------------------------- quantize


@pytest.mark.parametrize("levels", [2, 17, 256, 1024])
def test_centres_round_trip(levels):
    k = torch.arange(levels)
    for dtype in (torch.float32, torch.float64):
        c = to_centres(k, levels, dtype=dtype)
        assert c.dtype == dtype and bool((c.abs() < 1).all())
        assert torch.equal(to_levels(c, levels), k)
        exact = -1.0 + (k.double() + 0.5) * (2.0 / levels)
        assert torch.allclose(c.double(), exact, rtol=0, atol=1e-7)
    assert bin_width(levels) == 2.0 / levels
    assert to_levels(torch.tensor([-5.0, 5.0]), levels).tolist() == [0, levels - 1]
    assert to_levels(c, levels).dtype == torch.int64


@pytest.mark.parametrize("levels", [2, 17, 256])
def test_dequantize_stays_in_bin(levels):
    k = torch.randint(0, levels, (64, 32), generator=gen(4))
    x = to_centres(k, levels)
    w = bin_width(levels)
    u = dequantize(x, w, generator=gen(5))
    assert u.dtype == torch.float32 and u.shape == x.shape
    assert float((u - x).abs().max()) <= w / 2 * (1 + 1e-6)
    assert (to_levels(u, levels) == k).float().mean() > 0.999
    assert torch.equal(u, dequantize(x, w, generator=gen(5)))
    noise = (u - x).double() / w  # U(-1/2, 1/2): mean 0, variance 1/12
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.var()) - 1 / 12) < 0.01


def test_bin_width_gives_bits_per_dim():
    d = 3 * 8 * 8
    for bits in (1, 5, 8):
        log_prob = torch.full((4,), -d * math.log(2.0), dtype=torch.float64)  # U([-1, 1]^D)
        bpd = bits_per_dim(log_prob, d, bin_width(2**bits))
        assert torch.allclose(bpd, torch.full_like(bpd, float(bits)), rtol=0, atol=1e-12)


def test_quantize_validation():
    for bad in (1, 0, -4):
        with pytest.raises(ValueError, match="levels must be an integer >= 2"):
            bin_width(bad)
    for bad in (2.5, True, "256"):  # one integer check for the package: ValueError
        with pytest.raises(ValueError, match="levels must be an integer >= 2"):
            to_centres(torch.arange(2), bad)
    for bad in (0.0, -1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match="bin_width"):
            dequantize(torch.zeros(3), bad)
    with pytest.raises(TypeError, match="integer tensor"):
        to_centres(torch.zeros(3), 4)
    with pytest.raises(ValueError, match=r"levels in 0\.\.3.*got values in 0\.\.4"):
        to_centres(torch.tensor([0, 4]), 4)
    with pytest.raises(ValueError, match="x holds 1 non-finite"):
        to_levels(torch.tensor([0.0, math.nan]), 4)
    with pytest.raises(TypeError, match="to_centres"):
        dequantize(torch.arange(3), 0.5)


# --------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return {s: load_digits(s) for s in ("train", "test", "all")}


def test_digits(digits):
    train, test, full = digits["train"], digits["test"], digits["all"]
    assert train.x.shape == (1500, 1, 8, 8) and test.x.shape == (297, 1, 8, 8)
    assert full.x.shape == (1797, 1, 8, 8) and len(full) == 1797 and full.num_dims == 64
    for d in (train, test, full):
        assert d.x.dtype == torch.float32 and d.y.dtype == torch.int64
        assert bool((d.x.abs() < 1).all())
        assert d.levels == 17 and d.bin_width == 2 / 17 and d.name == "digits"
        assert d.num_classes == 10 and set(d.y.tolist()) == set(range(10))
    centres = to_centres(torch.arange(17), 17)
    assert torch.equal(torch.unique(full.x), centres)  # exactly the 17 bin centres
    perm = torch.randperm(1797, generator=torch.Generator().manual_seed(0))
    assert torch.equal(train.x, full.x[perm[:1500]]) and torch.equal(test.y, full.y[perm[-297:]])
    assert not set(perm[:1500].tolist()) & set(perm[-297:].tolist())
    again = load_digits("test")
    assert torch.equal(again.x, test.x) and torch.equal(again.y, test.y)
    with pytest.raises(dataclasses.FrozenInstanceError):
        train.levels = 3
    u = dequantize(train.x, train.bin_width, generator=gen(0))
    assert torch.equal(to_levels(u, 17), to_levels(train.x, 17))


def test_digits_bad_split():
    with pytest.raises(ValueError, match="'train', 'test', 'all', got 'val'"):
        load_digits("val")


def test_image_data_checks_shapes():
    with pytest.raises(ValueError, match=r"y must be a tensor of shape \(2,\)"):
        ImageData(torch.zeros(2, 1, 3, 3), torch.zeros(3), 4, 0.5, "t", 2)


# --------------------------------------------------------------------------- MNIST


def write_idx(path, arr: np.ndarray, *, gz: bool = False, magic: int | None = None) -> None:
    magic = 0x800 | arr.ndim if magic is None else magic
    raw = struct.pack(f">{1 + arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


@pytest.fixture
def mnist_dir(tmp_path):
    rng = np.random.default_rng(0)
    data = {}
    for prefix, gz, n in (("train", False, 5), ("t10k", True, 3)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        ext = ".gz" if gz else ""
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{ext}", images, gz=gz)
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz=gz)
        data["train" if prefix == "train" else "test"] = (images, labels)
    return tmp_path, data


def test_mnist_round_trip(mnist_dir):
    root, data = mnist_dir
    for split in ("train", "test"):  # plain and gzipped
        images, labels = data[split]
        d = load_mnist(str(root), split)
        assert d.x.shape == (len(images), 1, 28, 28) and d.x.dtype == torch.float32
        assert d.levels == 256 and d.bin_width == 2 / 256 and d.name == "mnist"
        assert torch.equal(to_levels(d.x, 256), torch.from_numpy(images[:, None]).long())
        assert torch.equal(d.x, to_centres(torch.from_numpy(images[:, None]), 256))
        assert d.y.tolist() == labels.tolist() and d.y.dtype == torch.int64


def test_mnist_torchvision_layout(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    write_idx(raw / "t10k-images-idx3-ubyte", np.zeros((2, 28, 28), np.uint8))
    write_idx(raw / "t10k-labels-idx1-ubyte", np.array([3, 4], np.uint8))
    assert load_mnist(tmp_path, "test").y.tolist() == [3, 4]


def test_mnist_missing(tmp_path, mnist_dir):
    root, _ = mnist_dir
    with pytest.raises(FileNotFoundError, match="MNIST folder not found: .*nowhere"):
        load_mnist(tmp_path / "nowhere")
    (root / "train-labels-idx1-ubyte").unlink()
    path = esc(root / "train-labels-idx1-ubyte")
    with pytest.raises(FileNotFoundError, match=f"{path}\\(.gz\\); expected the IDX files"):
        load_mnist(root, "train")
    with pytest.raises(ValueError, match="'train', 'test', got 'all'"):
        load_mnist(root, "all")


def test_mnist_corrupt(mnist_dir):
    root, data = mnist_dir
    images, labels = data["train"]
    img, lab = root / "train-images-idx3-ubyte", root / "train-labels-idx1-ubyte"
    write_idx(lab, labels, magic=0x803)  # wrong magic
    with pytest.raises(ValueError, match=f"{esc(lab)}: bad magic number 0x00000803.*0x00000801"):
        load_mnist(root)
    write_idx(lab, labels)
    img.write_bytes(img.read_bytes()[:-7])  # truncated
    with pytest.raises(ValueError, match=f"{esc(img)}: .*truncated or corrupt"):
        load_mnist(root)
    img.write_bytes(b"\x00\x00")  # shorter than a header
    with pytest.raises(ValueError, match=f"{esc(img)}: 2 bytes, too short"):
        load_mnist(root)
    write_idx(img, images[:4])  # counts disagree
    with pytest.raises(ValueError, match="4 images but .* 5 labels"):
        load_mnist(root)
    gz = root / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(b"this is not gzip data at all")
    with pytest.raises(ValueError, match=f"{esc(gz)}: not a valid gzip file"):
        load_mnist(root, "test")


# --------------------------------------------------------------------------- CIFAR-10

BATCH_SIZES = {"data_batch_1": 2, "data_batch_2": 1, "data_batch_3": 3, "data_batch_4": 1}
BATCH_SIZES.update({"data_batch_5": 2, "test_batch": 2})


@pytest.fixture
def cifar_dir(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    data = {}
    for i, (name, n) in enumerate(BATCH_SIZES.items()):
        arr = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        batch = {b"batch_label": name.encode(), b"data": arr, b"labels": labels}
        raw = pickle.dumps(batch, protocol=(2, 4, 5)[i % 3])  # every array pickle format
        if i % 3 == 0:  # the real files were written with numpy 1 (numpy.core.multiarray)
            raw = raw.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
            assert b"numpy.core.multiarray" in raw
        (folder / name).write_bytes(raw)
        data[name] = (arr, labels)
    return tmp_path, folder, data


def test_cifar_round_trip(cifar_dir):
    root, folder, data = cifar_dir
    train_names = [f"data_batch_{i}" for i in range(1, 6)]
    for where in (root, folder):
        for split, names in (("train", train_names), ("test", ["test_batch"])):
            d = load_cifar10(where, split)
            arr = np.concatenate([data[n][0] for n in names]).reshape(-1, 3, 32, 32)
            assert d.x.shape == (sum(BATCH_SIZES[n] for n in names), 3, 32, 32)
            assert torch.equal(to_levels(d.x, 256), torch.from_numpy(arr).long())
            assert d.y.tolist() == sum((data[n][1] for n in names), [])
            assert d.levels == 256 and d.name == "cifar10" and d.x.dtype == torch.float32


def test_cifar_missing(tmp_path, cifar_dir):
    root, folder, _ = cifar_dir
    with pytest.raises(FileNotFoundError, match="CIFAR-10 folder not found: .*nowhere"):
        load_cifar10(tmp_path / "nowhere")
    (folder / "data_batch_3").unlink()
    with pytest.raises(FileNotFoundError, match=f"{esc(folder / 'data_batch_3')}; expected"):
        load_cifar10(root, "train")
    assert len(load_cifar10(root, "test")) == 2


FORBIDDEN = {
    # protocol-0 opcodes: GLOBAL module\nname, MARK, STRING arg, TUPLE, REDUCE, STOP
    "os.system": b"cos\nsystem\n(S'echo unsafe'\ntR.",
    "builtins.eval": b"cbuiltins\neval\n(S'1 + 1'\ntR.",
    "dict-with-getattr": b"(dp0\nS'data'\ncbuiltins\ngetattr\n(S'x'\nS'y'\ntRs.",
}


@pytest.mark.parametrize("payload", list(FORBIDDEN.values()), ids=list(FORBIDDEN))
def test_cifar_forbidden_global(cifar_dir, payload):
    root, folder, _ = cifar_dir
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(ValueError, match=f"{esc(folder / 'test_batch')}: .*forbidden global"):
        load_cifar10(root, "test")


def _batch(data: np.ndarray, labels: list[int]) -> bytes:
    return pickle.dumps({b"data": data, b"labels": labels})


CORRUPT = {
    "garbage": (b"\x89PNG garbage bytes \x00\x01", "not a readable CIFAR-10 batch"),
    "truncated": (None, "not a readable CIFAR-10 batch"),
    "not-a-dict": (pickle.dumps([1, 2]), "unpickled a list"),
    "no-labels": (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8)}), "dict has keys b'data'"),
    "bad-shape": (_batch(np.zeros((1, 99), np.uint8), [0]), r"uint8 \(1, 99\)"),
    "few-labels": (_batch(np.zeros((2, 3072), np.uint8), [0]), "2 integers"),
    "label-10": (_batch(np.zeros((1, 3072), np.uint8), [10]), "outside 0..9"),
}


@pytest.mark.parametrize("content, match", list(CORRUPT.values()), ids=list(CORRUPT))
def test_cifar_corrupt(cifar_dir, content, match):
    root, folder, _ = cifar_dir
    path = folder / "test_batch"
    path.write_bytes(path.read_bytes()[:100] if content is None else content)
    with pytest.raises(ValueError, match=f"{esc(path)}: .*{match}"):
        load_cifar10(root, "test")
