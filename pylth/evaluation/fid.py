"""FID and KID of generated samples against the training set, on clean-fid's formulas.

Features come from Inception-v3 (pylth.evaluation.inception: the weights bundled by pylth[inception],
or clean-fid's file given as a local path; nothing is ever downloaded) or from a small classifier
trained on the data set's labels (pylth.evaluation.classifier), cached; pylth.evaluation.features'
resolve_fid_features says which. Every result
names its features: ``fid_features`` is "inception" or "classifier" and ``fid_weights`` identifies the
file; FIDs of different features, sample counts, samplers or reference sets are not comparable.
Reference statistics of the training set are computed once per (data set, features) and cached in
``cache_dir``.

Samples are generated in blocks of ``batch_size``, block j from its own seed (seed, j), so the samples
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
from pylth.evaluation.features import batched_features, default_cache_dir, feature_extractor
from pylth.foundations import distributed as D

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


def evaluate_fid(model, diffusion, dataset_name: str, dataset, num_samples: int, *, sampler: str = "ddim",
                 steps: int | None = 100, seed: int = 0, device="cpu", fid_features: str = "auto",
                 inception_path=None, cache_dir=None, batch_size: int = 256, eta: float = 0.0,
                 progress: bool = True, return_samples: bool = False) -> dict:
    """FID and KID of ``num_samples`` samples of ``model`` against ``dataset`` (the training set);
    ``model(x_t, t)`` is its noise prediction.

    Returns dict(fid, kid, fid_features, fid_weights, num_samples[, samples]): fid_features says which
    features ("inception" or "classifier", see resolve_fid_features), fid_weights which file made them
    (source:file:sha1=...), so FIDs from different weights can be told apart.
    ``return_samples``: True for all the samples, an int n for the first n. Under torch.distributed
    every rank must call this; sampling is shared out (see the module docstring) and every rank
    returns the same dict."""
    if not isinstance(num_samples, int) or num_samples < 2:
        raise ValueError(f"num_samples must be an int >= 2 (FID needs a covariance), got {num_samples!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    keep = num_samples if return_samples is True else int(return_samples)
    if keep < 0:
        raise ValueError(f"return_samples must be a bool or an int >= 0, got {return_samples!r}")
    if isinstance(model, torch.nn.Module):
        bad = first_nonfinite(model.named_parameters())
        if bad is not None:
            raise ValueError(f"the model's weights hold NaN or infinity ({bad}): no FID is computed from them")
    cache_dir = cache_dir or default_cache_dir()
    with D.fail_together("loading the FID feature extractor"):
        extract = feature_extractor(dataset_name, dataset, fid_features=fid_features, inception_path=inception_path,
                                    cache_dir=cache_dir, device=device)
    ref = None
    with D.fail_together("FID reference statistics"):
        if D.is_main():  # cached after the first time; only rank 0 scores
            ref = reference_statistics(dataset_name, dataset, extract, cache_dir, batch_size, progress=progress)
    image_shape = tuple(dataset[0][0].shape)
    blocks = D.shard(-(-num_samples // batch_size))
    samples = sample_blocks(model, make_sampler(sampler, diffusion, steps, eta=eta), num_samples, image_shape,
                            blocks, batch_size=batch_size, seed=seed, device=torch.device(device),
                            progress=progress and D.is_main(), desc="FID samples")
    feats = D.all_gather_rows(torch.from_numpy(batched_features(extract, samples, batch_size))).numpy()
    result = None
    with D.fail_together("FID"):
        if D.is_main():
            if not np.isfinite(feats).all():
                bad = int((~np.isfinite(feats).all(axis=1)).sum())
                raise ValueError(f"{bad} of the {len(feats)} samples for FID have non-finite features (the model's "
                                 "outputs overflow): no FID is computed from them")
            mu, sigma = _stats(feats)
            result = dict(fid=frechet_distance(mu, sigma, ref["mu"], ref["sigma"]),
                          kid=kid_from_features(feats, ref["feats"], seed=seed),
                          fid_features=extract.kind, fid_weights=extract.weights, num_samples=num_samples)
    result = D.broadcast_object(result)
    if keep:
        first = blocks.start * batch_size  # this rank's samples are [first, first + len(samples))
        result["samples"] = D.all_gather_rows(samples[:max(0, min(keep - first, len(samples)))])
    return result
