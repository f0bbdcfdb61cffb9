"""Masks on a model's parameters (name -> bool tensor, True = kept): checking, applying, verifying.
Training and the lottery both use these; neither imports them from the other."""
from __future__ import annotations

import torch
from torch import nn


def checked_masks(model: nn.Module, masks: dict | None) -> dict:
    """``masks`` moved to their parameters' devices, after checking that each names a parameter of
    ``model`` and is a bool tensor of its shape ({} for None)."""
    if masks is None:
        return {}
    if not isinstance(masks, dict):
        raise TypeError(f"masks must be a dict name -> bool tensor, got {type(masks).__name__}")
    params = dict(model.named_parameters())
    out = {}
    for name, mask in masks.items():
        if name not in params:
            raise ValueError(f"masks has {name!r}, which is not a parameter of the model")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != params[name].shape:
            raise ValueError(f"masks[{name!r}] must be a bool tensor of shape {tuple(params[name].shape)}")
        out[name] = mask.to(params[name].device)
    return out


@torch.no_grad()
def apply_masks(model: nn.Module, masks: dict | None) -> None:
    """Zero the masked-out entries of ``model``'s parameters (select, so NaN becomes 0 too)."""
    params = dict(model.named_parameters())
    for name, mask in (masks or {}).items():
        params[name].masked_fill_(~mask.to(params[name].device), 0)


@torch.no_grad()
def check_masked_zero(model: nn.Module, masks: dict | None) -> None:
    """Raise RuntimeError unless every masked-out parameter entry is exactly 0."""
    params = dict(model.named_parameters())
    for name, mask in (masks or {}).items():
        p = params[name]
        if bool((p.masked_select(~mask.to(p.device)) != 0).any()):
            raise RuntimeError(f"masked entries of {name} are not zero")
