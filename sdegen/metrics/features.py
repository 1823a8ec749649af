"""Feature extractors for FID/KID: "raw" (data space), "digits" (our 8x8 classifier) and
"inception" (the pool3 features of the FID InceptionV3 network, from a local TorchScript file).

Each entry of `FEATURES` builds a callable ``x (B, *D) -> (B, F)`` returning float64 features on
x's device; `get_features(name, **kw)` picks one by name. Images are expected on the package's
data scale, [-1, 1] (`sdegen.data`).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor
from torch.nn import functional as F

from .._utils import check_choice, check_tensor_finite

__all__ = [
    "FeatureFn",
    "FEATURES",
    "get_features",
    "raw_features",
    "digits_features",
    "inception_features",
    "load_inception",
    "INCEPTION_SHA256",
]

FeatureFn = Callable[[Tensor], Tensor]

INCEPTION_FILE = "inception-2015-12-05.pt"
_INCEPTION_HELP = (
    f"the FID network is not downloaded: pass path= or set SDEGEN_INCEPTION to a local copy of "
    f"{INCEPTION_FILE}, the TorchScript InceptionV3 (pool3, 2048 features) of StyleGAN2-ADA "
    "(nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt, "
    "also used by clean-fid); pytorch-fid's pt_inception-2015-12-05-6726825d.pth is a state "
    "dict of its own InceptionV3 class and cannot be loaded here"
)


# SHA-256 of the published inception-2015-12-05.pt. Not pinned: this package does not have a
# digest it can vouch for, so loading needs the digest of the user's copy (sha256= or the env
# var SDEGEN_INCEPTION_SHA256) or an explicit trusted=True. Set it to the published hex digest
# to make the default load check against it.
INCEPTION_SHA256: str | None = None


def _batches(x: Tensor, batch_size: int):
    for a in range(0, x.shape[0], batch_size):
        yield x[a : a + batch_size]


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def _check_input(x: Tensor) -> None:
    check_tensor_finite("x", x)
    if x.is_complex():
        raise ValueError(f"x must be real, got a {x.dtype} tensor")
    if x.ndim < 2 or x.shape[0] == 0 or x[:1].numel() == 0:
        raise ValueError(f"x must have shape (B, *D) with B >= 1, D nonempty; got {tuple(x.shape)}")


def raw_features() -> FeatureFn:
    """Identity features: x (B, *D) -> x flattened to (B, prod(D)), float64. For
    low-dimensional data, where the Gaussian fit of the data themselves is meaningful."""

    def extract(x: Tensor) -> Tensor:
        _check_input(x)
        return x.detach().reshape(x.shape[0], -1).to(torch.float64)

    return extract


def digits_features(
    path: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 2048,
) -> FeatureFn:
    """Penultimate-layer features (64 by default) of the 8x8 digits classifier.

    The weights are read once, from `path` or the cache (`default_digits_classifier_path()`);
    a missing file raises FileNotFoundError naming it and the command that creates it
    (``python benchmarks/digits_classifier.py``). Returns ``x (B, 1, 8, 8) in [-1, 1] ->
    (B, hidden)`` float64 on x's device, computed on `device` (default: x's device) in
    batches of `batch_size`, without gradients.
    """
    from .digits import load_digits_classifier

    batch_size = _check_batch_size(batch_size)
    model = load_digits_classifier(path)

    @torch.no_grad()
    def extract(x: Tensor) -> Tensor:
        _check_input(x)
        dev = torch.device(device) if device is not None else x.device
        net = model.to(dev)
        out = [net.features(b.to(dev)).to(torch.float64) for b in _batches(x, batch_size)]
        return torch.cat(out).to(x.device)

    return extract


def _inception_path(path: str | os.PathLike[str] | None) -> Path:
    if path is None:
        env = os.environ.get("SDEGEN_INCEPTION")
        if not env:
            raise FileNotFoundError(f"no InceptionV3 file given; {_INCEPTION_HELP}")
        path = env
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"InceptionV3 file not found: {p}; {_INCEPTION_HELP}")
    return p


def _check_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    if not isinstance(sha256, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", sha256.strip()):
        raise ValueError(f"sha256 must be a SHA-256 hex digest of 64 characters, got {sha256!r}")
    return sha256.strip().lower()


def load_inception(
    path: str | os.PathLike[str] | None = None,
    *,
    sha256: str | None = None,
    trusted: bool = False,
) -> torch.jit.ScriptModule:
    """The TorchScript FID network from `path` or the env var SDEGEN_INCEPTION, in eval mode.

    A TorchScript file holds code that runs when it is loaded, so the file's SHA-256 is checked
    before loading and a mismatch is refused. The expected digest is `sha256`, else the env var
    SDEGEN_INCEPTION_SHA256, else `INCEPTION_SHA256` (the published file's digest; not pinned in
    this version, so one of the first two, or trusted=True, is needed). Check your copy's
    digest (``sha256sum inception-2015-12-05.pt``) against the one its source publishes.

    Args:
        path: the TorchScript file; None reads SDEGEN_INCEPTION.
        sha256: the expected SHA-256 hex digest of the file.
        trusted: load the file without a digest check, for a file you trust.
    Raises:
        FileNotFoundError: no path given or no file there, saying which file is needed.
        ValueError: the file's SHA-256 is not the expected one (naming the file, the expected
            and the actual digest), no digest to check against, or the file is not a
            TorchScript archive.
    """
    expected = _check_sha256(sha256 or os.environ.get("SDEGEN_INCEPTION_SHA256") or None)
    expected = expected or INCEPTION_SHA256
    if not isinstance(trusted, bool):
        raise TypeError(f"trusted must be True or False, got {trusted!r}")
    p = _inception_path(path)
    data = p.read_bytes()  # hashed and loaded from the same bytes: no swap in between
    actual = hashlib.sha256(data).hexdigest()
    if not trusted and expected is None:
        raise ValueError(
            f"refusing to load {p} (SHA-256 {actual}): a TorchScript file runs code when loaded "
            "and no digest to check it against is known; pass sha256='<expected hex digest>' "
            "(or set SDEGEN_INCEPTION_SHA256) after checking this one against the file's "
            "source, or trusted=True to load a file you trust"
        )
    if not trusted and actual != expected:
        raise ValueError(
            f"refusing to load {p}: its SHA-256 is {actual}, expected {expected}; a TorchScript "
            "file runs code when loaded; pass trusted=True only for a file you trust"
        )
    try:
        with warnings.catch_warnings():
            # the network exists only as TorchScript; torch's advice to move to torch.export
            # is for authors of models, not for loading a published file
            warnings.filterwarnings("ignore", "`torch.jit.load` is deprecated", DeprecationWarning)
            net = torch.jit.load(io.BytesIO(data), map_location="cpu")
    except (RuntimeError, ValueError) as err:
        raise ValueError(
            f"{p} is not a TorchScript file ({type(err).__name__}: {err}); {_INCEPTION_HELP}"
        ) from err
    return net.eval()


def inception_pixels(b: Tensor, resize: int | None = None) -> Tensor:
    """Images b (B, C, H, W), C 1 or 3, as the Inception network takes them: uint8 RGB, from
    floats in [-1, 1] (256 levels) or uint8, bilinearly resized to resize x resize first when
    given (grey images repeated over the 3 channels)."""
    from ..data import to_levels

    if b.dtype != torch.uint8:
        if resize is not None:
            b = F.interpolate(b.to(torch.float32), size=(resize, resize), mode="bilinear")
        b = to_levels(b, 256).to(torch.uint8)
    elif resize is not None:
        size = (resize, resize)
        b = F.interpolate(b.float(), size=size, mode="bilinear").round().to(torch.uint8)
    return b.expand(-1, 3, -1, -1) if b.shape[1] == 1 else b


def inception_features(
    path: str | os.PathLike[str] | None = None,
    *,
    device: torch.device | str | None = None,
    batch_size: int = 64,
    resize: int | None = None,
    sha256: str | None = None,
    trusted: bool = False,
) -> FeatureFn:
    """Pool3 features (2048) of the FID InceptionV3 (Heusel et al. 2017) from a local file.

    The file is StyleGAN2-ADA's TorchScript ``inception-2015-12-05.pt`` (a translation of the
    TensorFlow graph used for the original FID; clean-fid loads the same file), given as `path`
    or by the env var SDEGEN_INCEPTION; it is never downloaded. It is called the way
    StyleGAN2-ADA's metrics call it: ``net(images, return_features=True)`` on uint8 NCHW
    images with 3 channels and values 0..255, resized inside the network to 299x299.

    So each image x (B, C, H, W), C in {1, 3}, values in [-1, 1] is mapped to its 256-level
    pixel values with `sdegen.data.to_levels` (the inverse of the package's bin centres;
    values outside [-1, 1] clip), grey images are repeated to 3 channels, and, only when
    `resize` is given, resized bilinearly to resize x resize before quantizing (for a network
    that does not resize itself). uint8 inputs are taken as pixel values as they are.

    sha256, trusted: the file's expected SHA-256, or trusted=True to skip the check; see
    `load_inception`, which refuses a file whose digest does not match.

    Returns:
        ``x -> (B, F)`` float64 features on x's device, computed on `device` (default: x's
        device) in batches of `batch_size`, without gradients.
    """

    batch_size = _check_batch_size(batch_size)
    if resize is not None and (
        isinstance(resize, bool) or not isinstance(resize, int) or resize < 1
    ):
        raise ValueError(f"resize must be None or an integer >= 1, got {resize!r}")
    net = load_inception(path, sha256=sha256, trusted=trusted)

    def to_pixels(b: Tensor) -> Tensor:
        return inception_pixels(b, resize)

    @torch.no_grad()
    def extract(x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] not in (1, 3) or x.shape[0] == 0:
            raise ValueError(
                f"x must be images of shape (B, C, H, W) with C in (1, 3), got {tuple(x.shape)}"
            )
        check_tensor_finite("x", x)
        dev = torch.device(device) if device is not None else x.device
        model = net.to(dev)
        out = []
        for b in _batches(x, batch_size):
            f = model(to_pixels(b.to(dev)).contiguous(), return_features=True)
            out.append(f.reshape(f.shape[0], -1).to(torch.float64))
        return torch.cat(out).to(x.device)

    return extract


FEATURES: dict[str, Callable[..., FeatureFn]] = {
    "raw": raw_features,
    "digits": digits_features,
    "inception": inception_features,
}


def get_features(name: str, **kwargs) -> FeatureFn:
    """The feature extractor `name` in `FEATURES` built with `kwargs`: a callable
    ``x (B, *D) -> (B, F)`` of float64 features."""
    check_choice("features", name, FEATURES)
    return FEATURES[name](**kwargs)
