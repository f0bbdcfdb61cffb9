"""Offline image data sets as torch Datasets of (image C x H x W in [-1, 1], label).

Nothing downloads unless ``download=True``. Formats: scikit-learn's bundled 8x8 ``digits``; MNIST and
Fashion-MNIST IDX files (``.gz`` or raw); the CIFAR-10/100 python pickle batches; a folder of images
(one sub-folder per class, or none). A missing or corrupt file raises an error naming the file and
the folder it was looked for in.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct

import numpy as np
import torch
from torch.utils.data import Dataset

from pylth.ddpm.presets import DATASET_PRESETS, FOLDER_UNET_PRESET
from pylth.foundations.environment import DEFAULT_DATA_ROOT

DATASETS = tuple(DATASET_PRESETS)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
_IDX = {"mnist": "MNIST/raw", "fashion-mnist": "FashionMNIST/raw"}  # torchvision's download layout
DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 pixels in [0, 255] as the float images in [-1, 1] that the models see."""
    return images.float() / 127.5 - 1.0


def _area_weights(source: int, size: int) -> torch.Tensor:
    """[size, source]: output pixel i is the mean of the input it covers, [i, i + 1) * source / size,
    each input pixel weighed by the length of its overlap (exact area averaging, any factor)."""
    scale = source / size
    start = torch.arange(size, dtype=torch.float64)[:, None] * scale
    pixel = torch.arange(source, dtype=torch.float64)[None, :]
    overlap = (torch.minimum(start + scale, pixel + 1) - torch.maximum(start, pixel)).clamp_min(0)
    return overlap / scale


def _bilinear_weights(source: int, size: int) -> torch.Tensor:
    """[size, source]: linear interpolation between the two nearest input pixel centres (half-pixel
    centres, clamped at the edges: PIL's and torch's align_corners=False convention)."""
    centre = ((torch.arange(size, dtype=torch.float64) + 0.5) * source / size - 0.5).clamp(0, source - 1)
    low = centre.floor().long()
    high = (low + 1).clamp_max(source - 1)
    frac = centre - low
    weights = torch.zeros(size, source, dtype=torch.float64)
    weights[torch.arange(size), low] += 1 - frac
    weights[torch.arange(size), high] += frac
    return weights


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images [N, C, H, W] (square) as size x size uint8 images: area averaging when shrinking,
    bilinear interpolation when enlarging, rounded to the nearest pixel value."""
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"image_size must be a positive int, got {size!r}")
    source = images.shape[-1]
    if images.shape[-2] != source:
        raise ValueError(f"images must be square to resize, got {images.shape[-2]}x{source}")
    if size == source:
        return images
    weights = (_area_weights if size < source else _bilinear_weights)(source, size).float()
    out = torch.empty(*images.shape[:-2], size, size, dtype=torch.uint8)
    for start in range(0, images.shape[0], 4096):  # bounded memory for 60,000-image sets
        block = weights @ images[start:start + 4096].float() @ weights.T
        out[start:start + 4096] = block.round_().clamp_(0, 255).to(torch.uint8)
    return out


class ImageDataset(Dataset):
    """uint8 images [N, C, H, W] and int labels; optional random horizontal flips. ``native_size``:
    the side the files hold, when the images were resized from it (``resize_images``)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, num_classes: int, hflip: bool = False,
                 native_size: int | None = None):
        self.images, self.labels, self.num_classes, self.hflip = images, labels, num_classes, hflip
        self.native_size = native_size

    def resized(self, size: int | None) -> "ImageDataset":
        """This data set with its images at size x size (itself when they already are, or size is None)."""
        if size is None or size == self.images.shape[-1]:
            return self
        return ImageDataset(resize_images(self.images, size), self.labels, self.num_classes, self.hflip,
                            native_size=self.native_size or self.images.shape[-1])

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i):
        x = to_model_range(self.images[i])
        if self.hflip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.labels[i])

    def __getitems__(self, indices):
        """``[self[i] for i in indices]``, converted and flipped as one batch: the DataLoader calls this
        for every training batch, where per-image tensor ops cost ten times the batch's own work.
        The flip draws are the per-image ones in the same order, so the items are identical."""
        index = torch.as_tensor(indices, dtype=torch.long)
        x = to_model_range(self.images[index])
        if self.hflip:
            flip = torch.rand(len(index)) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        return list(zip(x.unbind(0), self.labels[index].tolist()))


def without_flips(dataset) -> tuple[Dataset, bool]:
    """(``dataset`` without its random flips, whether it had them). The trainer flips each row of the
    global batch itself, from the step's seed (pylth.ddpm.trainer.step.iteration_flips): flips drawn
    here come from each process's generator and would differ between one process and N."""
    if isinstance(dataset, ImageDataset) and dataset.hflip:
        return ImageDataset(dataset.images, dataset.labels, dataset.num_classes, native_size=dataset.native_size), True
    return dataset, False


def images_and_labels(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every image of ``dataset`` (float, in [-1, 1]) and its label, as two tensors: an ImageDataset's
    straight from its tensors (no flips), any other data set item by item."""
    images = getattr(dataset, "images", None)
    if isinstance(images, torch.Tensor):
        return to_model_range(images), dataset.labels.long()
    pairs = [dataset[i] for i in range(len(dataset))]
    return torch.stack([p[0] for p in pairs]), torch.tensor([p[1] for p in pairs], dtype=torch.long)


def dataset_key(name: str, dataset) -> str:
    """What cache files of ``dataset`` are named by: its name, its image side when resized, and a hash of
    its images (a resized set never reads the cache of its native size, nor of another size)."""
    native = getattr(dataset, "native_size", None)
    size = f"-{dataset.images.shape[-1]}px" if native else ""
    return f"{name}{size}-{dataset_fingerprint(dataset)}"


def dataset_fingerprint(dataset) -> str:
    """A short hash of the data set's images (its length when it does not expose them)."""
    images = getattr(dataset, "images", None)
    h = hashlib.sha1(str(len(dataset)).encode())
    if isinstance(images, torch.Tensor):
        h.update(images.contiguous().numpy())  # the buffer itself, not a bytes copy of the whole data set
    return h.hexdigest()[:10]


def default_root(name: str) -> str:
    """Where a data set is looked for without a root (--data-root, or $PYLTH_DATA_ROOT which the
    commands pass as one): ~/.cache/pylth/data (Fashion-MNIST: Debian's
    /usr/share/datasets/fashion-mnist when it exists)."""
    if name == "fashion-mnist" and os.path.isdir(DEBIAN_FASHION_MNIST):
        return DEBIAN_FASHION_MNIST
    return DEFAULT_DATA_ROOT


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")


def dataset_info(name: str, root: str | None = None, dataset: ImageDataset | None = None,
                 image_size: int | None = None) -> dict:
    """image_shape (C, H, W), num_classes and the U-Net preset for ``name`` (a folder: from its files,
    or from ``dataset`` when the caller has loaded it already, so they are not all read twice), with
    the side ``image_size`` when the images are resized to it."""
    _check_name(name)
    preset = DATASET_PRESETS[name]
    if preset.image_shape is not None:  # a named data set has the U-Net preset of its own name
        info = dict(image_shape=preset.image_shape, num_classes=preset.num_classes, preset=name)
    else:
        ds = load_dataset("folder", root) if dataset is None else dataset
        shape = tuple(ds.images.shape[1:])
        info = dict(image_shape=shape, num_classes=ds.num_classes, preset=FOLDER_UNET_PRESET,
                    model_overrides=dict(in_channels=shape[0], image_size=shape[1]))
    if image_size is not None:
        channels = info["image_shape"][0]
        info["image_shape"] = (channels, image_size, image_size)
        if "model_overrides" in info:
            info["model_overrides"] = dict(in_channels=channels, image_size=image_size)
    return info


def load_dataset(name: str, root: str | None = None, download: bool = False, train: bool = True,
                 image_size: int | None = None) -> ImageDataset:
    """The ``train`` (or test) split of data set ``name`` read from ``root``, its images resized to
    ``image_size`` x ``image_size`` when given (``resize_images``)."""
    _check_name(name)
    if image_size is not None and (not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 1):
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    return _load_native(name, root, download, train).resized(image_size)


def _load_native(name: str, root: str | None, download: bool, train: bool) -> ImageDataset:
    if name == "digits":
        return _digits(train)
    if name == "folder":
        if root is None:
            raise ValueError("dataset 'folder' needs root (--data-root) pointing at a folder of images")
        return _image_folder(root)
    root = default_root(name) if root is None else root
    if download:
        _download(name, root)
    if name in _IDX:
        return _idx_dataset(name, root, train)
    return _cifar(name, root, train)


def _digits(train: bool) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    # No official split: every fifth image is the test set.
    keep = np.arange(len(bunch.target)) % 5 != 0 if train else np.arange(len(bunch.target)) % 5 == 0
    images = np.round(bunch.images[keep] * (255.0 / 16.0)).astype(np.uint8)[:, None]
    return ImageDataset(torch.from_numpy(images), torch.from_numpy(bunch.target[keep].astype(np.int64)), 10)


def _find(folders: list[str], filenames: list[str], what: str) -> str:
    for folder in folders:
        for filename in filenames:
            path = os.path.join(folder, filename)
            if os.path.isfile(path):
                return path
    raise FileNotFoundError(
        f"{what}: none of {', '.join(filenames)} found in {', '.join(folders)} "
        "(pass --data-root DIR, or --download to fetch it)")


def _read_idx(path: str, expected_dims: int) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
        zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
        if zero != 0 or dtype_code != 0x08 or ndim != expected_dims:
            raise ValueError(f"bad IDX header (expected unsigned bytes with {expected_dims} dimensions)")
        shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
        body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
        if body.size != int(np.prod(shape)):
            raise ValueError(f"IDX header promises {int(np.prod(shape))} values but the file holds {body.size}")
    except (OSError, EOFError, struct.error, ValueError) as exc:
        raise ValueError(f"corrupt IDX file {path} in {os.path.dirname(path)}: {exc}") from None
    return body.reshape(shape)


def _idx_dataset(name: str, root: str, train: bool) -> ImageDataset:
    prefix = "train" if train else "t10k"
    folders = [root, os.path.join(root, name), os.path.join(root, _IDX[name])]
    files = {}
    for kind, dims in (("images-idx3-ubyte", 3), ("labels-idx1-ubyte", 1)):
        base = f"{prefix}-{kind}"
        files[kind] = _read_idx(_find(folders, [base, base + ".gz"], f"{name} {kind.split('-')[0]}"), dims)
    images, labels = files["images-idx3-ubyte"], files["labels-idx1-ubyte"]
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{name} in {root}: {images.shape[0]} images but {labels.shape[0]} labels")
    return ImageDataset(torch.from_numpy(images.copy())[:, None], torch.from_numpy(labels.astype(np.int64)), 10)


def _cifar(name: str, root: str, train: bool) -> ImageDataset:
    sub, batches, label_key, classes = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"],
                    b"labels", 10),
        "cifar100": ("cifar-100-python", ["train" if train else "test"], b"fine_labels", 100),
    }[name]
    folders = [os.path.join(root, sub), root]
    folder = next((f for f in folders if os.path.isfile(os.path.join(f, batches[0]))), folders[0])
    images, labels = [], []
    for batch in batches:
        path = os.path.join(folder, batch)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{name}: file {batch} not found in {folder} "
                                    "(pass --data-root DIR, or --download to fetch it)")
        try:
            with open(path, "rb") as f:
                entry = pickle.load(f, encoding="bytes")
            data = np.asarray(entry[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            lab = np.asarray(entry[label_key], dtype=np.int64)
            if lab.shape[0] != data.shape[0]:
                raise ValueError(f"{data.shape[0]} images but {lab.shape[0]} labels")
        except Exception as exc:  # any unpickling/shape failure means the file is not a CIFAR batch
            raise ValueError(f"corrupt {name} batch file {batch} in {folder}: {exc}") from None
        images.append(data)
        labels.append(lab)
    return ImageDataset(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)),
                        classes, hflip=train)


def _image_folder(root: str) -> ImageDataset:
    from PIL import Image

    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root} does not exist")
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    entries = [(os.path.join(root, c, f), i) for i, c in enumerate(classes)
               for f in sorted(os.listdir(os.path.join(root, c)))] if classes else \
        [(os.path.join(root, f), 0) for f in sorted(os.listdir(root))]
    entries = [(p, y) for p, y in entries if p.lower().endswith(_IMAGE_SUFFIXES)]
    if not entries:
        raise FileNotFoundError(f"no images ({', '.join(_IMAGE_SUFFIXES)}) found in {root}")
    images = []
    for path, _ in entries:
        try:
            with Image.open(path) as im:
                mode = "L" if im.mode in ("L", "1", "I;16", "I") else "RGB"
                arr = np.asarray(im.convert(mode))
        except OSError as exc:
            raise ValueError(f"corrupt image {os.path.basename(path)} in {os.path.dirname(path)}: {exc}") from None
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        if images and arr.shape != images[0].shape:
            raise ValueError(f"image {os.path.basename(path)} in {os.path.dirname(path)} has shape {arr.shape}, "
                             f"but the first image has {images[0].shape}; all images must match")
        if arr.shape[1] != arr.shape[2]:
            raise ValueError(f"image {path} is not square ({arr.shape[1]}x{arr.shape[2]})")
        images.append(arr)
    labels = torch.tensor([y for _, y in entries], dtype=torch.int64)
    return ImageDataset(torch.from_numpy(np.stack(images)), labels, max(len(classes), 1))


def _download(name: str, root: str) -> None:
    import torchvision.datasets as tvd

    cls = {"mnist": tvd.MNIST, "fashion-mnist": tvd.FashionMNIST, "cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]
    for train in (True, False):
        cls(root, train=train, download=True)
