"""MaskedAdam's launch plan: what a step hands the native kernel, kept from one step to the next.

Checking 300+ tensors and building their pointer lists in Python used to cost more than the kernel.
A plan is built after the full checks and keeps the pointer lists; each step then confirms, tensor by
tensor, that nothing they were built from changed (cheap attribute reads: pointers, shapes, dtypes,
contiguity, which state tensors and grads are there) and gathers the grads' pointers. Any difference
sends the optimizer back to a fresh build with the full checks, so bad input fails as it always did.
"""
from __future__ import annotations

import operator
from typing import NamedTuple, Optional

import torch

from pylth.ops.adam import _MASK_DTYPES, runs_natively

__all__ = ["DeviceBatch", "StepPlan", "StepWork", "runs_fused"]

_F32 = torch.float32


def runs_fused(param: torch.Tensor, grad: torch.Tensor) -> bool:
    """Whether the kernel can take this param (moments share its layout: zeros_like preserves it)."""
    return param.dtype == _F32 and param.is_contiguous() and grad.is_contiguous()


class DeviceBatch:
    """The kernel-bound params of one device, in param-group order, with the pointers the kernel takes."""

    def __init__(self, device: torch.device, params: list, groups: list, states: list):
        self.device = device
        self.group_runs = []  # (group index, first, end): consecutive entries of one group
        for k, gi in enumerate(groups):
            if self.group_runs and self.group_runs[-1][0] == gi:
                self.group_runs[-1][2] = k + 1
            else:
                self.group_runs.append([gi, k, k + 1])
        self.param_ptrs = [p.data_ptr() for p in params]
        self.exp_avg_ptrs = [s["exp_avg"].data_ptr() for s in states]
        self.exp_avg_sq_ptrs = [s["exp_avg_sq"].data_ptr() for s in states]
        masks = [s.get("mask") for s in states]
        self.mask_ptrs = [0 if m is None else m.data_ptr() for m in masks]
        self.numels = [p.numel() for p in params]
        # What every step re-reads and compares, one tuple per param.
        self.entries = [
            (p, p.shape, p.get_device(), pp, s["exp_avg"], mp, s["exp_avg_sq"], vp, m, kp)
            for p, s, m, pp, mp, vp, kp in zip(params, states, masks, self.param_ptrs, self.exp_avg_ptrs,
                                               self.exp_avg_sq_ptrs, self.mask_ptrs)
        ]


class StepWork(NamedTuple):
    """One step's gathered inputs: per batch its grads' pointers and steps so far; the reference params."""

    states: list  # every stepped param's state, to count the step in
    batches: list  # (DeviceBatch, grad_ptrs, steps)
    reference: list  # (param, grad, exp_avg, exp_avg_sq, mask, state, group index)


class StepPlan:
    """Built from an optimizer whose params with grads all passed its checks (see MaskedAdam._build_plan)."""

    def __init__(self, param_groups: list, state_map, batches: list, reference: list, gradless: list):
        self.param_groups = param_groups
        self.group_params = [tuple(g["params"]) for g in param_groups]
        self.state_map = state_map
        self.batches = batches
        self.reference = reference  # (param, group index) of params the kernel cannot take
        self.gradless = gradless  # params without a grad: still skipped while it stays None

    def gather(self, param_groups: list, state_map) -> Optional[StepWork]:
        """This step's inputs, or None when anything the plan was built from changed."""
        if param_groups is not self.param_groups or state_map is not self.state_map:
            return None
        if len(param_groups) != len(self.group_params) or not all(
                len(g["params"]) == len(params) and all(map(operator.is_, g["params"], params))
                for g, params in zip(param_groups, self.group_params)):
            return None
        for p in self.gradless:
            if p.grad is not None:
                return None
        states = []
        try:
            batches = [self._gather_batch(b, state_map, states) for b in self.batches]
            reference = []
            for p, gi in self.reference:
                g = p.grad
                # On the reference path for its layout, or (CUDA params in a build without CUDA) its device.
                if g is None or g.is_sparse or torch.is_complex(p) or (runs_fused(p, g) and runs_natively(p.device)):
                    return None
                state = state_map[p]
                reference.append((p, g, state["exp_avg"], state["exp_avg_sq"], state.get("mask"), state, gi))
                states.append(state)
        except (KeyError, _Stale):  # a state entry gone, or a tensor that no longer matches
            return None
        return StepWork(states, batches, reference)

    @staticmethod
    def _gather_batch(batch: DeviceBatch, state_map, states: list) -> tuple:
        grad_ptrs, steps = [], []
        for p, shape, dev, pp, m, mp, v, vp, mask, kp in batch.entries:
            g = p.grad
            state = state_map[p]
            # Every read that the kernel's memory safety and the plan's pointers rest on. The grad setter
            # checks shape and device, but `grad.data = ...` and a param's grad_dtype get around it. The
            # same object at the same address is not enough for the state tensors either: `.data =`,
            # set_() and resize_() change a tensor's shape and dtype in place, and a freed block's
            # address comes back for the next allocation.
            if not (g is not None and g.dtype is _F32 and g.is_contiguous() and g.shape == shape
                    and g.get_device() == dev
                    and p.data_ptr() == pp and p.dtype is _F32 and p.is_contiguous() and p.shape == shape
                    and state["exp_avg"] is m and m.data_ptr() == mp
                    and m.dtype is _F32 and m.is_contiguous() and m.shape == shape
                    and state["exp_avg_sq"] is v and v.data_ptr() == vp
                    and v.dtype is _F32 and v.is_contiguous() and v.shape == shape
                    and state.get("mask") is mask
                    and (mask is None or (mask.data_ptr() == kp and mask.dtype in _MASK_DTYPES
                                          and mask.is_contiguous() and mask.shape == shape))):
                raise _Stale
            grad_ptrs.append(g.data_ptr())
            steps.append(state["step"])
            states.append(state)
        return batch, grad_ptrs, steps


class _Stale(Exception):
    """A planned tensor changed since the plan was built."""
