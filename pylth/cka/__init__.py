"""Centered kernel alignment (Kornblith et al. 2019) between the layers of two networks.

``rbf_cka`` / ``linear_cka`` take two lists of row matrices (``xs[i]`` is n_i x d_i, ``ys[i]`` is
n_i x e_i) and return one float64 CKA per pair, all pairs in one native call; ``weight_rows`` turns a
conv or linear weight into its row matrix. ``python -m pylth.cka RUN_A RUN_B`` compares two tickets.
"""
from __future__ import annotations

import torch

from pylth.ops.cka import cka


def rbf_cka(xs, ys, threshold: float = 1.0, unbiased: bool = False) -> torch.Tensor:
    """RBF-kernel CKA per pair; bandwidth sigma^2 = threshold^2 * median squared distance.

    NaN for a pair whose rows are all identical (no bandwidth). ``unbiased`` uses the HSIC estimator
    of Song et al. 2012 and needs at least 4 rows.
    """
    return cka(xs, ys, kernel="rbf", threshold=threshold, unbiased=unbiased)


def linear_cka(xs, ys, unbiased: bool = False) -> torch.Tensor:
    """Linear-kernel CKA per pair (NaN where a side is constant across rows)."""
    return cka(xs, ys, kernel="linear", unbiased=unbiased)


def weight_rows(weight: torch.Tensor) -> torch.Tensor:
    """A conv or linear weight as its row matrix: out_channels x fan_in (a view when possible)."""
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 2:
        raise ValueError(f"weight must have at least 2 dimensions (out x in ...), got shape {tuple(weight.shape)}")
    return weight.reshape(weight.shape[0], -1)


__all__ = ["rbf_cka", "linear_cka", "weight_rows"]
