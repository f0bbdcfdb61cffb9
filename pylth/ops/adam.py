"""Fused masked Adam/AdamW: argument checks, CPU/CUDA dispatch, and the pure-torch reference.

One call updates many tensors in place. For tensor i with mask ``masks[i]`` (bool, or None for no
mask): where the mask is True the param and moments get exactly torch.optim.Adam's update (AdamW's
when ``decoupled``) for the gradient there; where it is False param, exp_avg and exp_avg_sq end as
exactly 0, whatever the gradient holds (NaN included).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence

import torch

from pylth.ops.checks import check_same_length, check_tensor, check_tensor_list, cuda_stream
from pylth.ops.native import has_native_cuda, require_native, warn_fallback

__all__ = ["AdamHyper", "adam_step_constants", "check_masked_adam_arguments", "launch_masked_adam_", "masked_adam_",
           "masked_adam_reference_", "runs_natively"]


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
    constants_cache: dict = {}
    for device, idx in by_device.items():
        if not runs_natively(device):
            masked_adam_reference_(*([seq[i] for i in idx] for seq in (params, grads, exp_avgs, exp_avg_sqs,
                                                                          masks, hypers)))
            continue
        consts = []
        for i in idx:
            h = hypers[i]
            if h not in constants_cache:
                constants_cache[h] = adam_step_constants(h)
            consts.extend(constants_cache[h])
        launch_masked_adam_(
            device,
            [params[i].data_ptr() for i in idx],
            [grads[i].data_ptr() for i in idx],
            [exp_avgs[i].data_ptr() for i in idx],
            [exp_avg_sqs[i].data_ptr() for i in idx],
            [0 if masks[i] is None else masks[i].data_ptr() for i in idx],
            [params[i].numel() for i in idx],
            consts,
        )


def runs_natively(device: torch.device) -> bool:
    """Whether tensors on ``device`` take the native kernel; False (warning once) for CUDA tensors when
    pylth was built without CUDA. Other device types are a ValueError."""
    if device.type == "cuda" and not has_native_cuda():
        warn_fallback("masked_adam_", "pylth was built without CUDA")
        return False
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"params on {device} are not supported: use CPU or CUDA tensors")
    return True


def launch_masked_adam_(device: torch.device, param_ptrs: list, grad_ptrs: list, exp_avg_ptrs: list,
                        exp_avg_sq_ptrs: list, mask_ptrs: list, numels: list, consts: list) -> None:
    """The native step on prepared lists (data pointers, 0 for no mask; numels; 8 adam_step_constants per
    tensor) of tensors on ``device`` that passed check_masked_adam_arguments and runs_natively. The one
    launch path of masked_adam_ and MaskedAdam; it checks nothing itself: a stale pointer corrupts memory."""
    native = require_native()
    args = (param_ptrs, grad_ptrs, exp_avg_ptrs, exp_avg_sq_ptrs, mask_ptrs, numels, consts)
    if device.type == "cpu":
        native.masked_adam_cpu(*args, torch.get_num_threads())
    else:
        with torch.cuda.device(device):
            native.masked_adam_cuda(*args, cuda_stream(device))


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
