"""The numpy float64 oracle of Kornblith et al. 2019's CKA, with pylth's zero-median rule: pairwise
differences (an exact zero diagonal), np.median, explicit centring. Shared by tests/test_cka.py and
bench/test_bench_cka.py (bench/conftest.py puts this folder on sys.path)."""
import math

import numpy as np


def np_sq_distances(x):
    x = np.asarray(x, dtype=np.float64)
    diff = x[:, None, :] - x[None, :, :]
    return (diff * diff).sum(-1)


def np_gram_sq_distances(x):
    """The same from the Gram matrix: O(n^2) memory instead of O(n^2 d), for large inputs (benchmarks)."""
    x = np.asarray(x, dtype=np.float64)
    gram = x @ x.T
    sq_norms = np.diag(gram)
    d2 = np.maximum(sq_norms[:, None] + sq_norms[None, :] - 2 * gram, 0)
    np.fill_diagonal(d2, 0)
    return d2


def np_rbf_kernel(x, threshold, sq_distances=np_sq_distances):
    d2 = sq_distances(x)
    median = np.median(d2)
    if median == 0:
        positive = d2[d2 > 0]
        if positive.size == 0:
            return None
        median = np.median(positive)
    return np.exp(-d2 / (2 * threshold**2 * median))


def np_center(k, unbiased):
    k = k.copy()
    n = k.shape[0]
    if unbiased:  # Kornblith et al.'s form of the U-statistic of Song et al. 2012
        np.fill_diagonal(k, 0)
        means = k.sum(0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        k -= means[:, None]
        k -= means[None, :]
        np.fill_diagonal(k, 0)
    else:
        means = k.mean(0)
        means -= means.mean() / 2
        k -= means[:, None]
        k -= means[None, :]
    return k


def np_cka_from_kernels(k, l, unbiased):
    if k is None or l is None:
        return math.nan
    kc, lc = np_center(k, unbiased), np_center(l, unbiased)
    return float((kc * lc).sum() / (np.linalg.norm(kc) * np.linalg.norm(lc)))


def np_rbf_cka(x, y, threshold, unbiased, sq_distances=np_sq_distances):
    return np_cka_from_kernels(np_rbf_kernel(x, threshold, sq_distances), np_rbf_kernel(y, threshold, sq_distances),
                               unbiased)


def np_linear_cka_features(x, y):
    """Biased linear CKA in feature space: ||Y'X||^2 / (||X'X|| ||Y'Y||) on column-centred X, Y."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(0)
    y = y - y.mean(0)
    return float(np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))
