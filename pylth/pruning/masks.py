"""Magnitude masks for lists of tensors: the pruning-level face of pylth.ops.select."""
from __future__ import annotations

from typing import Sequence

import torch

from pylth.ops.select import magnitude_select, magnitude_select_global


def _as_fp32(weights) -> list:
    if isinstance(weights, torch.Tensor) or not isinstance(weights, (list, tuple)):
        raise TypeError(f"weights must be a list or tuple of tensors, got {type(weights).__name__}")
    return [w.detach().float().contiguous() if isinstance(w, torch.Tensor) else w for w in weights]


def magnitude_masks(weights, ratios, masks=None, *, names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Per tensor i, prune ``ratios[i]`` of its active entries (mask True; ``masks=None``: all active).

    ``k = floor(r * n_active + 0.5)`` entries with the smallest ``|w|`` are pruned, ties to the lower
    flat index. Returns new bool masks, True = kept. ``names`` only labels errors.
    """
    return magnitude_select(_as_fp32(weights), ratios, masks, names=names)


def global_magnitude_masks(weights, ratio, masks=None, *, names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Prune ``ratio`` of all active entries, ranked across every tensor as one."""
    return magnitude_select_global(_as_fp32(weights), ratio, masks, names=names)
