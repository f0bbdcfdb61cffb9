"""Pruning strategies of Algorithm 1 and its controls, and compute_masks over a model.

Every strategy has the signature ``(weights, masks, group_index, *, prune_ratio, increment, cap,
seed, names) -> list[BoolTensor]`` where ``group_index[i]`` is the module (block) number of tensor i
in forward order and ``names`` label errors.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from pylth.pruning.groups import module_groups, prunable_parameters
from pylth.pruning.masks import global_magnitude_masks, magnitude_masks


def layerwise_ratios(group_index, prune_ratio: float, increment: float, cap: float) -> list[float]:
    """``min(p + j * q, cap)`` for tensor in module j (never below 0)."""
    return [min(max(prune_ratio + j * increment, 0.0), cap) for j in group_index]


def layerwise(weights, masks, group_index, *, prune_ratio, increment, cap, seed, names):
    return magnitude_masks(weights, layerwise_ratios(group_index, prune_ratio, increment, cap), masks, names=names)


def uniform(weights, masks, group_index, *, prune_ratio, increment, cap, seed, names):
    return magnitude_masks(weights, [prune_ratio] * len(weights), masks, names=names)


def global_(weights, masks, group_index, *, prune_ratio, increment, cap, seed, names):
    return global_magnitude_masks(weights, prune_ratio, masks, names=names)


def random(weights, masks, group_index, *, prune_ratio, increment, cap, seed, names):
    """Prune as many entries as layerwise would, chosen uniformly at random (seeded, device-independent)."""
    gen = torch.Generator().manual_seed(seed)
    scores = [torch.rand(w.shape, generator=gen).to(w.device) for w in weights]
    return magnitude_masks(scores, layerwise_ratios(group_index, prune_ratio, increment, cap), masks, names=names)


STRATEGIES = {"layerwise": layerwise, "uniform": uniform, "global": global_, "random": random}


def _check_fraction(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def compute_masks(model: nn.Module, strategy: str, prune_ratio: float, increment: float = 0.01,
                  cap: float = 0.95, masks=None, seed: int = 0, per_tensor: bool = False, blocks=None) -> dict:
    """New masks ``{parameter name: bool tensor}`` after one pruning step of ``strategy``; module j is
    the j-th block of ``module_groups(model, blocks=blocks)``.

    The prunable tensors are the keys of ``masks`` (current masks, True = active) or, when ``masks``
    is None, ``prunable_parameters(model)`` with everything active. Keys come back in forward order.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
    prune_ratio = _check_fraction(prune_ratio, "prune_ratio")
    cap = _check_fraction(cap, "cap")
    if isinstance(increment, bool) or not isinstance(increment, (int, float)) or not math.isfinite(increment):
        raise ValueError(f"increment must be a finite number, got {increment!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    params = dict(model.named_parameters())
    if masks is None:
        names = [n for n, _ in prunable_parameters(model)]
        current = None
    else:
        if not isinstance(masks, dict):
            raise TypeError(f"masks must be a dict of name -> bool tensor, got {type(masks).__name__}")
        unknown = [n for n in masks if n not in params]
        if unknown:
            raise ValueError(f"masks has keys that are not parameters of the model: {unknown[:3]}")
        names = [n for n in params if n in masks]
        current = [masks[n] for n in names]
    if not names:
        raise ValueError("the model has no prunable parameters")
    group_of = {}
    for j, (_, members) in enumerate(module_groups(model, names, per_tensor=per_tensor, blocks=blocks)):
        for n in members:
            group_of[n] = j
    weights = [params[n] for n in names]
    new = STRATEGIES[strategy](weights, current, [group_of[n] for n in names], prune_ratio=prune_ratio,
                               increment=float(increment), cap=cap, seed=seed, names=names)
    return OrderedDict(zip(names, new))
