"""GroupNorm followed by SiLU in one native pass (fp32, CPU): what ``F.silu(F.group_norm(x, groups,
weight, bias, eps))`` computes, reading and writing the activations once instead of three times
(csrc/group_norm_silu.cpp), and differentiable: when gradients are wanted the forward keeps each
group's mean and 1/std and the sigmoid (as much memory as torch's unfused pair keeps), and the backward
(csrc/group_norm_silu_backward.cpp) computes dx, d weight and d bias in two passes over each group
while it is in cache, instead of torch's separate SiLU and GroupNorm backward passes. The sparse U-Net runs its GroupNorm-SiLU pairs through it: with the convs
sparse, these passes are a large share of the step. On CUDA tensors it is torch's two ops (there the
convs stay dense by default and the pair is a small share). Once differentiable (no double backward).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from pylth.ops.checks import check_tensor
from pylth.ops.dispatch import backend, launch, pack_table

__all__ = ["group_norm_silu", "group_norm_silu_reference"]


def group_norm_silu(x: torch.Tensor, num_groups: int, weight: torch.Tensor | None = None,
                    bias: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """silu(group_norm(x)) for float32 x [N, C, *] (C a multiple of ``num_groups``); weight and bias [C].
    Differentiable in x, weight and bias."""
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
    tracked = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, weight, bias))
    if tracked:
        return _GroupNormSiLU.apply(x, weight, bias, num_groups, float(eps))
    return _forward(x.contiguous(), num_groups, _plain(weight), _plain(bias), float(eps), saves=False)[0]


def group_norm_silu_reference(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5) -> torch.Tensor:
    """Pure torch; no argument checks."""
    return F.silu(F.group_norm(x, num_groups, weight, bias, eps))


def _plain(t):
    return None if t is None else t.detach().contiguous()


def _row(t) -> tuple:
    return (0, 0) if t is None else (t.data_ptr(), t.numel())


def _forward(x, num_groups: int, weight, bias, eps: float, saves: bool) -> tuple:
    """(y, the groups' mean less their first value, 1 / std, sigmoid of the normalised x), the last three
    None unless ``saves`` (what the backward reads)."""
    n, c = x.shape[:2]
    out = torch.empty_like(x)
    mean, rstd, sig = (torch.empty(n * num_groups), torch.empty(n * num_groups), torch.empty_like(x)) if saves \
        else (None, None, None)
    table = pack_table([_row(x), _row(weight), _row(bias), _row(out), _row(mean), _row(rstd), _row(sig)], 2)
    launch("group_norm_silu", x.device, table, n, c, math.prod(x.shape[2:]), num_groups, eps)
    return out, mean, rstd, sig


class _GroupNormSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, num_groups: int, eps: float):
        x, weight, bias = x.contiguous(), _plain(weight), _plain(bias)
        out, mean, rstd, sig = _forward(x, num_groups, weight, bias, eps, saves=True)
        ctx.save_for_backward(x, weight, bias, mean, rstd, sig)
        ctx.num_groups = num_groups
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, bias, mean, rstd, sig = ctx.saved_tensors
        needs_x, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        n, c = x.shape[:2]
        hw = math.prod(x.shape[2:])
        grad_out = grad_out.contiguous()
        grad_x = torch.empty_like(x)
        grad_weight = torch.empty(c) if needs_weight else None
        grad_bias = torch.empty(c) if needs_bias else None
        threads = torch.get_num_threads()
        workspace = torch.empty(2 * n * c + threads * (c // ctx.num_groups) * hw + 1)
        table = pack_table([_row(x), _row(grad_out), _row(weight), _row(bias), _row(mean), _row(rstd), _row(sig), _row(grad_x),
                            _row(grad_weight), _row(grad_bias), _row(workspace)], 2)
        launch("group_norm_silu_backward", x.device, table, n, c, hw, ctx.num_groups)
        return (grad_x if needs_x else None), grad_weight, grad_bias, None, None
