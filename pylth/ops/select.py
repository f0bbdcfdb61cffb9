"""Exact magnitude selection over many tensors at once: validation, dispatch, pure-torch reference.

For each tensor i and ratio r_i, the ``k = floor(r_i * n_active + 0.5)`` active entries (mask True)
with the smallest ``|w|`` are pruned; ties at the threshold go to the lower flat index, so exactly
``k`` are pruned and every backend returns the same masks. ``-0.0`` ranks as ``0.0``. Global mode
ranks all tensors as one concatenated tensor. Inf or NaN weights raise ValueError naming the tensor.
The result is a new list of bool masks (True = kept); inputs are never modified.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from pylth.ops.checks import check_same_length, check_tensor, check_tensor_list
from pylth.ops.dispatch import REFERENCE, backend, launch, pack_table
from pylth.ops.native import require_native

# Flat indices travel in 33 bits of the 64-bit ranking key.
MAX_ENTRIES = 2**33 - 1
KERNEL = "select"
# The kernel's table (csrc/select.h): one row per tensor, the addresses of its weights, of its mask (0:
# none) and of its output mask, and its element count.
TABLE_WIDTH = 4

__all__ = ["magnitude_select", "magnitude_select_global", "reference_select"]


def magnitude_select(weights, ratios, masks=None, *, names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Per tensor i, prune ``ratios[i]`` of its active entries; returns the new bool masks."""
    weights, masks, names = _check(weights, masks, names)
    ratios = _check_ratios(ratios, len(weights))
    return _dispatch(weights, masks, names, ratios, global_mode=False)


def magnitude_select_global(weights, ratio, masks=None, *, names: Sequence[str] | None = None) -> list[torch.Tensor]:
    """Prune ``ratio`` of the active entries of all tensors ranked together; returns the new masks."""
    weights, masks, names = _check(weights, masks, names)
    (ratio,) = _check_ratios([ratio], 1, name="ratio")
    return _dispatch(weights, masks, names, [ratio], global_mode=True)


def reference_select(weights, ratios, masks, global_mode: bool, names=None) -> list[torch.Tensor]:
    """Pure-torch oracle and fallback: a stable sort of the active magnitudes (no argument checks)."""
    for i, w in enumerate(weights):
        if not bool(torch.isfinite(w).all()):
            raise ValueError(f"{names[i] if names else f'weights[{i}]'} has non-finite values (inf or NaN)")
    flat_w = [w.reshape(-1).abs() for w in weights]
    flat_m = [torch.ones_like(w, dtype=torch.bool) if m is None else m.reshape(-1) for w, m in zip(flat_w, masks)]
    if global_mode:
        kept = _reference_one(torch.cat(flat_w), torch.cat(flat_m), ratios[0])
        return [part.reshape(w.shape) for part, w in zip(kept.split([f.numel() for f in flat_w]), weights)]
    return [_reference_one(a, m, r).reshape(w.shape) for a, m, r, w in zip(flat_w, flat_m, ratios, weights)]


def _reference_one(magnitude: torch.Tensor, mask: torch.Tensor, ratio: float) -> torch.Tensor:
    active = mask.nonzero().reshape(-1)
    k = math.floor(ratio * active.numel() + 0.5)
    order = torch.sort(magnitude[active], stable=True).indices
    kept = mask.clone()
    kept[active[order[:k]]] = False
    return kept


def _check(weights, masks, names):
    weights = check_tensor_list(weights, "weights")
    device = weights[0].device
    for i, w in enumerate(weights):
        check_tensor(w, f"weights[{i}]", dtypes=(torch.float32,), device=device)
    if sum(w.numel() for w in weights) > MAX_ENTRIES:
        raise ValueError(f"weights hold more than {MAX_ENTRIES} entries in total")
    if masks is None:
        masks = [None] * len(weights)
    else:
        masks = check_tensor_list(masks, "masks")
        check_same_length(weights, "weights", masks, "masks")
        for i, (m, w) in enumerate(zip(masks, weights)):
            check_tensor(m, f"masks[{i}]", dtypes=(torch.bool,), device=device, shape=w.shape)
    if names is None:
        names = [f"weights[{i}]" for i in range(len(weights))]
    else:
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise TypeError(f"names must be a list or tuple of str, got {type(names).__name__}")
        check_same_length(weights, "weights", names, "names")
    return weights, masks, names


def _check_ratios(ratios, count: int, name: str = "ratios") -> list[float]:
    if isinstance(ratios, torch.Tensor):
        ratios = ratios.tolist()
    if not isinstance(ratios, (list, tuple)):
        raise TypeError(f"{name} must be a sequence of floats, got {type(ratios).__name__}")
    if len(ratios) != count:
        raise ValueError(f"{name} has {len(ratios)} entries but weights has {count}")
    out = []
    for r in ratios:
        if isinstance(r, bool) or not isinstance(r, (int, float)):
            raise TypeError(f"{name} must hold floats, got {type(r).__name__}")
        if not 0.0 <= float(r) <= 1.0:  # also rejects NaN
            raise ValueError(f"{name} must lie in [0, 1], got {r}")
        out.append(float(r))
    return out


def _dispatch(weights, masks, names, ratios, global_mode: bool) -> list[torch.Tensor]:
    device = weights[0].device
    if backend(KERNEL, device) == REFERENCE:
        return reference_select(weights, ratios, masks, global_mode, names)
    outs = [torch.empty(w.shape, dtype=torch.bool, device=device) for w in weights]
    rows = [(w.data_ptr(), 0 if m is None else m.data_ptr(), o.data_ptr(), w.numel())
            for w, m, o in zip(weights, masks, outs)]
    ratio_values = torch.tensor(ratios, dtype=torch.float64)
    if device.type == "cpu":
        bad = launch(KERNEL, device, pack_table(rows, TABLE_WIDTH), ratio_values.data_ptr(), global_mode, True)
    else:
        bad = _launch_cuda(weights, rows, ratio_values.to(device), global_mode)
    if bad >= 0:
        raise ValueError(f"{names[bad]} has non-finite values (inf or NaN)")
    return outs


def _launch_cuda(weights, rows, ratios: torch.Tensor, global_mode: bool) -> int:
    """The CUDA launches over ``rows``; the first segment with a non-finite weight, or -1 (waits for the kernels)."""
    device = weights[0].device
    native = require_native()
    chunk_start = [0]
    for w in weights:
        chunk_start.append(chunk_start[-1] + -(-w.numel() // native.SELECT_CUDA_CHUNK))
    bad = torch.zeros(len(weights), dtype=torch.int32, device=device)
    if chunk_start[-1] > 0:
        # The kernels find each chunk's segment in the offsets that follow the table (csrc/select.h).
        table = pack_table(rows, TABLE_WIDTH, device, trailer=chunk_start)
        groups = 1 if global_mode else len(weights)
        words = native.select_cuda_workspace_words(len(weights), groups, chunk_start[-1])
        workspace = torch.zeros(words, dtype=torch.int64, device=device)
        launch(KERNEL, device, table, ratios.data_ptr(), workspace.data_ptr(), bad.data_ptr(), chunk_start[-1],
               global_mode)
    flagged = bad.nonzero()
    return int(flagged[0]) if flagged.numel() else -1
