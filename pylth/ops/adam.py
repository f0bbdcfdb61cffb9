"""Fused masked Adam/AdamW: argument checks, the kernel's tables, dispatch, and the pure-torch reference.

One call updates many tensors in place. For tensor i with mask ``masks[i]`` (bool, or None for no
mask): where the mask is True the param and moments get exactly torch.optim.Adam's update (AdamW's
when ``decoupled``) for the gradient there; where it is False param, exp_avg and exp_avg_sq end as
exactly 0, whatever the gradient holds (NaN included).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch

from pylth.ops.checks import check_same_length, check_tensor, check_tensor_list
from pylth.ops.dispatch import NATIVE, backend, launch, pack_table

__all__ = ["AdamHyper", "CONSTANT_COUNT", "GRAD_COLUMN", "TABLE_COLUMNS", "TABLE_WIDTH", "adam_constants_table",
           "adam_step_constants", "adam_table", "check_masked_adam_arguments", "launch_masked_adam_", "masked_adam_",
           "masked_adam_reference_", "runs_natively"]

KERNEL = "masked_adam"
# The kernel's table (csrc/adam.h): one row per tensor, the data addresses of param, grad, exp_avg and
# exp_avg_sq, the mask's (0: no mask), and the element count. Only the grad column changes from one
# MaskedAdam step to the next.
TABLE_COLUMNS = ("param", "grad", "exp_avg", "exp_avg_sq", "mask", "numel")
TABLE_WIDTH = len(TABLE_COLUMNS)
GRAD_COLUMN = TABLE_COLUMNS.index("grad")
# The second table: adam_step_constants, one row of 8 float64 per tensor.
CONSTANT_COUNT = 8


class AdamHyper(NamedTuple):
    """Hyper-parameters of one tensor's step; ``step`` counts this step (1 on the first)."""

    lr: float
    beta1: float
    beta2: float
    eps: float
    weight_decay: float
    decoupled: bool
    step: int


def adam_step_constants(h: AdamHyper) -> tuple:
    """The 8 per-tensor constants csrc/adam.h expects, in double as torch computes its scalars."""
    bias_correction1 = 1.0 - h.beta1**h.step
    bias_correction2 = 1.0 - h.beta2**h.step
    l2 = 0.0 if h.decoupled else h.weight_decay
    decay = 1.0 - h.lr * h.weight_decay if h.decoupled else 1.0
    return (h.beta2, 1.0 - h.beta1, 1.0 - h.beta2, h.lr / bias_correction1, math.sqrt(bias_correction2),
            h.eps, l2, decay)


_MASK_DTYPES = (torch.bool, torch.uint8)


def _tensor_ok(p, g, m, v, mask, hyper) -> bool:
    """Cheap test of everything _check_tensor_at words as an error (a step checks hundreds of tensors)."""
    f32, dev, shape = torch.float32, p.device, p.shape
    return (
        isinstance(p, torch.Tensor) and isinstance(g, torch.Tensor) and isinstance(m, torch.Tensor)
        and isinstance(v, torch.Tensor) and isinstance(hyper, AdamHyper) and hyper.step >= 1
        and p.dtype == f32 and g.dtype == f32 and m.dtype == f32 and v.dtype == f32
        and g.device == dev and m.device == dev and v.device == dev
        and g.shape == shape and m.shape == shape and v.shape == shape
        and p.is_contiguous() and g.is_contiguous() and m.is_contiguous() and v.is_contiguous()
        and (mask is None or (isinstance(mask, torch.Tensor) and mask.dtype in _MASK_DTYPES
                              and mask.device == dev and mask.shape == shape and mask.is_contiguous()))
    )


def _check_tensor_at(i, params, grads, exp_avgs, exp_avg_sqs, masks, hypers) -> None:
    """Raise the error that names what is wrong with entry i."""
    p = check_tensor(params[i], f"params[{i}]", dtypes=(torch.float32,))
    for name, seq in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs)):
        check_tensor(seq[i], f"{name}[{i}]", dtypes=(torch.float32,), device=p.device, shape=p.shape)
    if masks[i] is not None:
        check_tensor(masks[i], f"masks[{i}]", dtypes=_MASK_DTYPES, device=p.device, shape=p.shape)
    if not isinstance(hypers[i], AdamHyper):
        raise TypeError(f"hypers[{i}] must be an AdamHyper, got {type(hypers[i]).__name__}")
    if hypers[i].step < 1:
        raise ValueError(f"hypers[{i}].step must be >= 1, got {hypers[i].step}")


def check_masked_adam_arguments(params, grads, exp_avgs, exp_avg_sqs, masks, hypers) -> None:
    """Raise the TypeError/ValueError naming the first argument masked_adam_ cannot take."""
    check_tensor_list(params, "params", allow_empty=True)
    for name, seq in (("grads", grads), ("exp_avgs", exp_avgs), ("exp_avg_sqs", exp_avg_sqs),
                      ("masks", masks), ("hypers", hypers)):
        if isinstance(seq, torch.Tensor) or not isinstance(seq, (list, tuple)):
            raise TypeError(f"{name} must be a list or tuple, got {type(seq).__name__}")
        check_same_length(params, "params", seq, name)
    for i, entry in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs, masks, hypers)):
        if not _tensor_ok(*entry):
            _check_tensor_at(i, params, grads, exp_avgs, exp_avg_sqs, masks, hypers)


def masked_adam_(
    params: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    exp_avgs: Sequence[torch.Tensor],
    exp_avg_sqs: Sequence[torch.Tensor],
    masks: Sequence[Optional[torch.Tensor]],
    hypers: Sequence[AdamHyper],
) -> None:
    """One in-place masked Adam step over all tensors: one native call per device.

    Every tensor must be float32 and contiguous, grads/moments/masks of the param's shape and device;
    masks are bool (or uint8) or None. CUDA tensors use the reference (warning once) when pylth was
    built without CUDA.
    """
    check_masked_adam_arguments(params, grads, exp_avgs, exp_avg_sqs, masks, hypers)
    by_device: dict = {}
    for i, p in enumerate(params):
        by_device.setdefault(p.device, []).append(i)
    for device, idx in by_device.items():
        entries = [[seq[i] for i in idx] for seq in (params, grads, exp_avgs, exp_avg_sqs, masks, hypers)]
        if not runs_natively(device):
            masked_adam_reference_(*entries)
            continue
        launch_masked_adam_(device, adam_table(*entries[:5]), adam_constants_table(entries[5]))


def runs_natively(device: torch.device) -> bool:
    """Whether tensors on ``device`` take the native kernel; False (warning once) for CUDA tensors when
    pylth was built without CUDA. Other device types are a ValueError."""
    return backend(KERNEL, device) == NATIVE


def adam_table(params, grads, exp_avgs, exp_avg_sqs, masks) -> torch.Tensor:
    """The kernel's host table of tensors that passed check_masked_adam_arguments (columns: TABLE_WIDTH)."""
    return pack_table([(p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), 0 if k is None else k.data_ptr(),
                        p.numel()) for p, g, m, v, k in zip(params, grads, exp_avgs, exp_avg_sqs, masks)],
                      TABLE_WIDTH)


def adam_constants_table(hypers) -> torch.Tensor:
    """The kernel's float64 host table of adam_step_constants, one row per tensor (repeated hypers computed once)."""
    unique = {h: adam_step_constants(h) for h in set(hypers)}
    rows = [unique[h] for h in hypers]
    return torch.tensor(rows, dtype=torch.float64).reshape(len(rows), CONSTANT_COUNT)


def launch_masked_adam_(device: torch.device, table: torch.Tensor, constants: torch.Tensor) -> None:
    """The native step over ``table`` (adam_table) and ``constants`` (adam_constants_table), both on the
    host, for tensors on ``device`` that passed check_masked_adam_arguments and runs_natively. The one
    launch path of masked_adam_ and MaskedAdam; it checks no tensor itself: a stale address corrupts
    memory."""
    launch(KERNEL, device, table, constants.data_ptr())


@torch.no_grad()
def masked_adam_reference_(params, grads, exp_avgs, exp_avg_sqs, masks, hypers) -> None:
    """Pure-torch masked Adam with masked_adam_'s semantics (any float dtype, any layout): the test
    oracle for the kernels and the fallback where no kernel applies. Written as torch.optim.Adam's
    single-tensor step on ``where(mask, grad, 0)`` followed by zeroing the masked entries."""
    for p, g, m, v, mask, h in zip(params, grads, exp_avgs, exp_avg_sqs, masks, hypers):
        if mask is not None:
            keep = mask.to(torch.bool)
            g = torch.where(keep, g, torch.zeros((), dtype=g.dtype, device=g.device))
        if h.weight_decay != 0 and not h.decoupled:
            g = g.add(p, alpha=h.weight_decay)
        if h.decoupled:
            p.mul_(1 - h.lr * h.weight_decay)
        m.lerp_(g, 1 - h.beta1)
        v.mul_(h.beta2).addcmul_(g, g, value=1 - h.beta2)
        bias_correction1 = 1 - h.beta1**h.step
        bias_correction2_sqrt = math.sqrt(1 - h.beta2**h.step)
        denom = (v.sqrt() / bias_correction2_sqrt).add_(h.eps)
        p.addcdiv_(m, denom, value=-h.lr / bias_correction1)
        if mask is not None:
            for t in (p, m, v):
                t.masked_fill_(~keep, 0)
