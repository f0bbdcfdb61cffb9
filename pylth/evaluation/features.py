"""FID's features: which kind a run uses (``resolve_fid_features``: Inception where its weights are
found, else a label classifier) and the extractor of that kind."""
from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from pylth.evaluation.classifier import TRAIN_STEPS, ClassifierFeatures
from pylth.evaluation.inception import BUNDLED_SHA1, INSTALL_HINT, InceptionFeatures, find_weights
from pylth.foundations.environment import DEFAULT_CACHE_DIR

FID_FEATURES = ("auto", "inception", "classifier")
# auto picks classifier features here: 8x8 digits upsampled to 299 x 299 make Inception FID slow on a
# CPU and of little meaning.
CLASSIFIER_BY_DEFAULT = ("digits",)


def resolve_fid_features(dataset_name: str, fid_features: str = "auto", inception_path=None) -> str:
    """"inception" or "classifier": what ``fid_features`` asks for, "auto" resolved.

    auto: Inception where weights are found (``inception_path``, or the bundled file), except on the
    data sets of CLASSIFIER_BY_DEFAULT without an explicit path. Asking for "inception" without weights
    is a FileNotFoundError that says how to install them."""
    if fid_features not in FID_FEATURES:
        raise ValueError(f"fid_features must be one of {', '.join(FID_FEATURES)}, got {fid_features!r}")
    if fid_features == "classifier":
        return fid_features
    if fid_features == "auto" and dataset_name in CLASSIFIER_BY_DEFAULT and not inception_path:
        return "classifier"
    weights = find_weights(inception_path)
    if weights is None and fid_features == "inception":
        raise FileNotFoundError(f"Inception FID needs the Inception weights, and none are installed: {INSTALL_HINT}")
    return "inception" if weights is not None else "classifier"


def feature_extractor(dataset_name: str, dataset, *, fid_features: str = "auto", inception_path=None,
                      cache_dir=None, device="cpu", classifier_steps: int = TRAIN_STEPS,
                      bundled_sha1: str = BUNDLED_SHA1):
    """The features ``resolve_fid_features`` picks: InceptionFeatures (the bundled weights checked
    against ``bundled_sha1``) or ClassifierFeatures (whose label classifier, when none is cached,
    trains for ``classifier_steps``)."""
    if resolve_fid_features(dataset_name, fid_features, inception_path) == "inception":
        return InceptionFeatures(find_weights(inception_path), torch.device(device), bundled_sha1)
    return ClassifierFeatures(dataset_name, dataset, cache_dir or DEFAULT_CACHE_DIR, torch.device(device),
                              steps=classifier_steps)


def batched_features(extract, images, batch_size: int, *, progress: bool = False,
                     desc: str = "FID features") -> np.ndarray:
    """The features of ``images`` extracted ``batch_size`` at a time, as one [N, dim] array.
    ``progress``: a bar per image (Inception on a CPU takes about 0.12 s an image)."""
    parts = []
    with tqdm(total=len(images), desc=desc, unit="img", disable=not progress, leave=False) as bar:
        for i in range(0, len(images), batch_size):
            parts.append(extract(images[i:i + batch_size]))
            bar.update(len(parts[-1]))
    return np.concatenate(parts) if parts else np.zeros((0, extract.dim), np.float32)
