"""FID and KID of generated samples against the training set, on clean-fid's formulas.

``FidEvaluator`` scores models. Features come from Inception-v3 (pylth.evaluation.inception: the
weights bundled by pylth[inception], or clean-fid's file given as a local path; nothing is ever
downloaded) or from a small classifier trained on the data set's labels (pylth.evaluation.classifier),
cached; pylth.evaluation.features says which. Every result names its features: ``fid_features`` is
"inception" or "classifier" and ``fid_weights`` identifies the file; FIDs of different features,
sample counts, samplers or reference sets are not comparable. Reference statistics of the training set
are computed once per (data set, features) and cached in ``cache_dir``.

Samples are generated in blocks of ``sample_batch_size``, block j from its own seed (seed, j), so the samples
do not depend on how the blocks are spread over processes: under torch.distributed each rank samples
a contiguous share of the blocks and extracts their features, rank 0 gathers them and computes the
scores, and every rank returns the same result, equal to a one-process run's.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch
from cleanfid.fid import kernel_distance
from scipy import linalg
from tqdm.auto import tqdm

from pylth.ddpm.data import dataset_key, images_and_labels
from pylth.ddpm.finite import first_nonfinite
from pylth.ddpm.samplers import make_sampler, sample_blocks
from pylth.ddpm.schedule import NoiseSchedule
from pylth.evaluation.classifier import TRAIN_STEPS
from pylth.evaluation.config import EvalConfig
from pylth.evaluation.features import batched_features, feature_extractor
from pylth.foundations import distributed as D
from pylth.foundations.environment import Environment

KID_REFERENCE_SIZE = 10000  # reference features kept for KID


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr(sqrtm(S1 S2)), with clean-fid's safeguards.

    Our own rather than clean-fid's: that one passes ``disp=`` to scipy.linalg.sqrtm, which newer scipy
    removed. Classifier features have dead (constant) units, so singular covariances are expected: when
    the square root of the product is not finite, ``eps`` is added to both diagonals and it is retried.
    Rounding leaves a tiny imaginary part, dropped; a large one (not covariances) is a ValueError.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mu1 and mu2 must be vectors of one length, got shapes {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (len(mu1), len(mu1)) or sigma2.shape != sigma1.shape:
        raise ValueError(f"sigma1 and sigma2 must be {len(mu1)}x{len(mu1)}, got {sigma1.shape} and {sigma2.shape}")
    with warnings.catch_warnings():
        # Singular products are handled below; scipy's warning about them would only be noise.
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        covmean = linalg.sqrtm(sigma1 @ sigma2)  # no disp=: old and new scipy both take this call
        if not np.isfinite(covmean).all():
            offset = np.eye(len(mu1)) * eps
            covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm(sigma1 @ sigma2) has an imaginary part up to {np.abs(covmean.imag).max():.3g}: "
                             "sigma1 and sigma2 must be covariance matrices")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid_from_features(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, D]."""
    return frechet_distance(*_stats(feats_a), *_stats(feats_b))


def kid_from_features(feats_a: np.ndarray, feats_b: np.ndarray, seed: int = 0) -> float:
    """Kernel inception distance (clean-fid's unbiased estimate over random subsets), seeded."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        return float(kernel_distance(np.asarray(feats_a, np.float64), np.asarray(feats_b, np.float64)))
    finally:
        np.random.set_state(saved)


def _stats(feats: np.ndarray):
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


REFERENCE_CHUNK = 2000  # reference images whose features are kept on disk together while the set is extracted


def reference_statistics(dataset_name: str, dataset, extract, cache_dir: str, batch_size: int = 256,
                         progress: bool = True) -> dict:
    """mu, sigma and up to KID_REFERENCE_SIZE features of the whole data set (no flips), cached.

    The features are extracted in chunks of REFERENCE_CHUNK images, each kept in the cache as it is
    done: Inception on a CPU takes hours for 60,000 images, and an interrupted extraction resumes at
    its first missing chunk. The chunks are removed once the statistics are written."""
    path = os.path.join(cache_dir, f"ref-{dataset_key(dataset_name, dataset)}-{extract.id}.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            return {k: f[k] for k in f.files}
    images, _ = images_and_labels(dataset)
    os.makedirs(cache_dir, exist_ok=True)
    chunks = [f"{path[:-len('.npz')]}.part{i:04d}.npy" for i in range(-(-len(images) // REFERENCE_CHUNK))]
    with tqdm(total=len(images), desc=f"FID reference ({extract.kind} features)", unit="img",
              disable=not progress) as bar:
        for i, chunk in enumerate(chunks):
            if not os.path.exists(chunk):
                block = images[i * REFERENCE_CHUNK:(i + 1) * REFERENCE_CHUNK]
                tmp = f"{chunk}.{os.getpid()}.tmp.npy"
                np.save(tmp, batched_features(extract, block, batch_size))
                os.replace(tmp, chunk)
            bar.update(min(REFERENCE_CHUNK, len(images) - i * REFERENCE_CHUNK))
    feats = np.concatenate([np.load(c) for c in chunks]) if chunks else np.zeros((0, extract.dim), np.float32)
    mu, sigma = _stats(feats)
    keep = np.random.default_rng(0).permutation(len(feats))[:KID_REFERENCE_SIZE]
    stats = dict(mu=mu, sigma=sigma, feats=feats[np.sort(keep)].astype(np.float32))
    tmp = path + f".{os.getpid()}.tmp.npz"
    np.savez(tmp, **stats)
    os.replace(tmp, path)
    for chunk in chunks:
        os.remove(chunk)
    return stats


class FidEvaluator:
    """FID and KID of a model's samples against a training set's reference statistics, measured the
    same way at every call: built once from the evaluation settings, the data set, the device and the
    noise schedule, it keeps its sampler, its feature extractor and the reference statistics.

    The extractor (``features``: given, or the one ``config.fid_features`` picks, with a label
    classifier trained for ``classifier_steps`` when none is cached) and the statistics are made at
    the first score, so a run with nothing left to score trains no classifier, and a model with
    non-finite weights is refused before any of it. Under torch.distributed every rank builds one and
    calls ``score`` alike; sampling is shared out (see the module docstring)."""

    def __init__(self, config: EvalConfig, dataset_name: str, dataset, device, schedule: NoiseSchedule, *,
                 features=None, environment: Environment = Environment(), classifier_steps: int = TRAIN_STEPS,
                 progress: bool = True):
        if not isinstance(config.fid_samples, int) or config.fid_samples < 2:
            raise ValueError(f"FID needs num_samples >= 2 (a covariance): fid_samples is {config.fid_samples!r}")
        self.config, self.dataset_name, self.dataset = config, dataset_name, dataset
        self.device = torch.device(device)
        self.sampler = make_sampler(config.sampler, schedule, config.sample_steps, eta=config.eta)
        # the settings' own cache and weights, else the environment's ($PYLTH_CACHE_DIR, $PYLTH_INCEPTION_PATH)
        self.cache_dir = config.cache_dir or environment.cache_dir
        self.inception_path = config.inception_path or environment.inception_path
        self.image_shape = tuple(dataset[0][0].shape)
        self.classifier_steps, self.progress = classifier_steps, progress
        self._features = features
        self._reference: dict | None = None  # rank 0's; the other ranks score nothing
        self._referenced = False  # on every rank alike: the reference is a collective step

    @property
    def features(self):
        """The feature extractor (InceptionFeatures, ClassifierFeatures or the one given)."""
        if self._features is None:
            with D.fail_together("loading the FID feature extractor"):
                self._features = feature_extractor(
                    self.dataset_name, self.dataset, fid_features=self.config.fid_features,
                    inception_path=self.inception_path, cache_dir=self.cache_dir, device=self.device,
                    classifier_steps=self.classifier_steps)
        return self._features

    def reference(self) -> dict | None:
        """The data set's mu, sigma and KID features (rank 0; None on the others), cached on disk."""
        if not self._referenced:
            features = self.features
            with D.fail_together("FID reference statistics"):
                if D.is_main():
                    self._reference = reference_statistics(self.dataset_name, self.dataset, features, self.cache_dir,
                                                           self.config.sample_batch_size, progress=self.progress)
            self._referenced = True
        return self._reference

    def score(self, model, *, seed: int, return_samples: bool | int = False) -> dict:
        """dict(fid, kid, fid_features, fid_weights, num_samples[, samples]) of ``config.fid_samples``
        samples of ``model`` (``model(x_t, t)`` is its noise prediction) drawn from ``seed``.
        fid_features says which features ("inception" or "classifier"), fid_weights which file made
        them (source:file:sha1=...), so FIDs from different weights can be told apart.
        ``return_samples``: True for all the samples, an int n for the first n. Every rank returns the
        same dict."""
        num_samples, batch_size = self.config.fid_samples, self.config.sample_batch_size
        keep = num_samples if return_samples is True else int(return_samples)
        if keep < 0:
            raise ValueError(f"return_samples must be a bool or an int >= 0, got {return_samples!r}")
        if isinstance(model, torch.nn.Module):
            bad = first_nonfinite(model.named_parameters())
            if bad is not None:
                raise ValueError(f"the model's weights hold NaN or infinity ({bad}): no FID is computed from them")
        ref, extract = self.reference(), self.features
        blocks = D.shard(-(-num_samples // batch_size))
        samples = sample_blocks(model, self.sampler, num_samples, self.image_shape, blocks, batch_size=batch_size,
                                seed=seed, device=self.device, progress=self.progress and D.is_main(),
                                desc="FID samples")
        feats = batched_features(extract, samples, batch_size, progress=self.progress and D.is_main(),
                                 desc=f"FID features ({extract.kind})")
        feats = D.all_gather_rows(torch.from_numpy(feats)).numpy()
        result = None
        with D.fail_together("FID"):
            if D.is_main():
                if not np.isfinite(feats).all():
                    bad = int((~np.isfinite(feats).all(axis=1)).sum())
                    raise ValueError(f"{bad} of the {len(feats)} samples for FID have non-finite features (the "
                                     "model's outputs overflow): no FID is computed from them")
                mu, sigma = _stats(feats)
                result = dict(fid=frechet_distance(mu, sigma, ref["mu"], ref["sigma"]),
                              kid=kid_from_features(feats, ref["feats"], seed=seed),
                              fid_features=extract.kind, fid_weights=extract.weights, num_samples=num_samples)
        result = D.broadcast_object(result)
        if keep:
            first = blocks.start * batch_size  # this rank's samples are [first, first + len(samples))
            result["samples"] = D.all_gather_rows(samples[:max(0, min(keep - first, len(samples)))])
        return result
