"""GroupNorm followed by SiLU in one native pass (fp32, CPU, inference): what
``F.silu(F.group_norm(x, groups, weight, bias, eps))`` computes, reading and writing the activations
once instead of three times (csrc/group_norm_silu.cpp). The sparse U-Net runs its GroupNorm-SiLU pairs
through it: with the convs sparse, these passes are a large share of the forward. On CUDA tensors it
is torch's two ops (there the convs stay dense by default and the pair is a small share). No autograd.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pylth.ops.checks import check_tensor
from pylth.ops.dispatch import backend, launch, pack_table

__all__ = ["group_norm_silu", "group_norm_silu_reference"]


def group_norm_silu(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """silu(group_norm(x)) for float32 x [N, C, *] (C a multiple of ``num_groups``); weight and bias [C]."""
    check_tensor(x, "x", dtypes=(torch.float32,), contiguous=False)
    if x.ndim < 2:
        raise ValueError(f"x must have a batch and a channel dimension, got shape {tuple(x.shape)}")
    c = x.shape[1]
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1 or c % num_groups:
        raise ValueError(f"num_groups must be a positive int dividing the {c} channels of x, got {num_groups!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
        raise ValueError(f"eps must be a number >= 0, got {eps!r}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t is not None:
            check_tensor(t, name, dtypes=(torch.float32,), device=x.device, shape=(c,), contiguous=False)
    if x.device.type != "cpu":
        return group_norm_silu_reference(x, num_groups, weight, bias, eps)
    backend("group_norm_silu", x.device)  # a missing or stale native module raises here
    x = x.contiguous()
    weight = None if weight is None else weight.detach().contiguous()
    bias = None if bias is None else bias.detach().contiguous()
    out = torch.empty_like(x)
    rows = [(t.data_ptr(), c) if t is not None else (0, 0) for t in (weight, bias)]
    table = pack_table([(x.data_ptr(), x.numel()), *rows, (out.data_ptr(), out.numel())], 2)
    launch("group_norm_silu", x.device, table, x.shape[0], c, math.prod(x.shape[2:]), num_groups, float(eps))
    return out


def group_norm_silu_reference(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """Pure torch; no argument checks."""
    return F.silu(F.group_norm(x, num_groups, weight, bias, eps))
