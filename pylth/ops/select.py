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

from pylth.ops.checks import check_same_length, check_tensor, check_tensor_list, cuda_stream
from pylth.ops.native import has_native_cuda, native, require_native, warn_fallback

# Flat indices travel in 33 bits of the 64-bit ranking key.
MAX_ENTRIES = 2**33 - 1

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
    if device.type == "cpu":
        require_native()  # a missing or stale native module is an error, never a silent slow path
        return _run_cpu(weights, masks, names, ratios, global_mode)
    if device.type == "cuda" and has_native_cuda():
        return _run_cuda(weights, masks, names, ratios, global_mode)
    warn_fallback("magnitude_select", f"no native kernel for {device.type}")
    return reference_select(weights, ratios, masks, global_mode, names)


def _run_cpu(weights, masks, names, ratios, global_mode: bool) -> list[torch.Tensor]:
    outs = [torch.empty(w.shape, dtype=torch.bool) for w in weights]
    args = (
        [w.data_ptr() for w in weights],
        [0 if m is None else m.data_ptr() for m in masks],
        [o.data_ptr() for o in outs],
        [w.numel() for w in weights],
    )
    if global_mode:
        bad = native.select_global_cpu(*args, ratios[0])
    else:
        bad = native.select_segments_cpu(*args, ratios)
    if bad >= 0:
        raise ValueError(f"{names[bad]} has non-finite values (inf or NaN)")
    return outs


def _run_cuda(weights, masks, names, ratios, global_mode: bool) -> list[torch.Tensor]:
    device = weights[0].device
    chunk = native.SELECT_CUDA_CHUNK
    outs = [torch.empty(w.shape, dtype=torch.bool, device=device) for w in weights]
    chunk_start = [0]
    for w in weights:
        chunk_start.append(chunk_start[-1] + -(-w.numel() // chunk))
    table = []
    for w, m, o in zip(weights, masks, outs):
        table += [w.data_ptr(), 0 if m is None else m.data_ptr(), o.data_ptr(), w.numel()]
    meta = torch.tensor(table + chunk_start, dtype=torch.int64).to(device)
    groups = 1 if global_mode else len(weights)
    ratio_t = torch.tensor(ratios, dtype=torch.float64).to(device)
    words = native.select_cuda_workspace_words(len(weights), groups, chunk_start[-1])
    workspace = torch.zeros(words, dtype=torch.int64, device=device)
    bad = torch.zeros(len(weights), dtype=torch.int32, device=device)
    if chunk_start[-1] > 0:
        with torch.cuda.device(device):  # the launches go to the current device: make it the weights'
            native.select_cuda(
                meta.data_ptr(), ratio_t.data_ptr(), workspace.data_ptr(), bad.data_ptr(),
                len(weights), chunk_start[-1], global_mode, cuda_stream(device),
            )
    flagged = bad.nonzero()
    if flagged.numel():
        raise ValueError(f"{names[int(flagged[0])]} has non-finite values (inf or NaN)")
    return outs
