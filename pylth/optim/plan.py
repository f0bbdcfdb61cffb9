"""MaskedAdam's launch plan: what a step hands the native kernel, kept from one step to the next.

Checking 300+ tensors and building the kernel's table in Python used to cost more than the kernel.
A plan is built after the full checks and keeps the kernel's two host tables (pylth.ops.adam: one row
per tensor of addresses and sizes, one of step constants); each step then confirms, tensor by tensor,
that nothing the table was built from changed (cheap attribute reads: addresses, shapes, dtypes,
contiguity, which state tensors and grads are there), gathers the grads' addresses, and rewrites only
the grad column and the constants. Any difference sends the optimizer back to a fresh build with the
full checks, so bad input fails as it always did. The kernel reads both tables during its call (the
CUDA launcher copies them into its launches' arguments), so the next step may rewrite them.
"""
from __future__ import annotations

import operator
from typing import NamedTuple, Optional

import torch

from pylth.ops.adam import _MASK_DTYPES, CONSTANT_COUNT, GRAD_COLUMN, adam_table, runs_natively

__all__ = ["DeviceBatch", "PlannedTensor", "StepPlan", "StepWork", "runs_fused"]

_F32 = torch.float32


def runs_fused(param: torch.Tensor, grad: torch.Tensor) -> bool:
    """Whether the kernel can take this param (moments share its layout: zeros_like preserves it)."""
    return param.dtype == _F32 and param.is_contiguous() and grad.is_contiguous()


class PlannedTensor(NamedTuple):
    """A kernel-bound param and its state as the plan saw them: what every step re-reads and compares."""

    param: torch.Tensor
    shape: torch.Size
    device_index: int  # param.get_device(): -1 on the CPU
    param_address: int
    exp_avg: torch.Tensor
    exp_avg_address: int
    exp_avg_sq: torch.Tensor
    exp_avg_sq_address: int
    mask: Optional[torch.Tensor]
    mask_address: int  # 0: no mask


class DeviceBatch:
    """The kernel-bound params of one device, in param-group order, and the kernel's tables for them."""

    def __init__(self, device: torch.device, params: list, groups: list, states: list):
        self.device = device
        self.group_runs = []  # (group index, first, end): consecutive entries of one group
        for k, gi in enumerate(groups):
            if self.group_runs and self.group_runs[-1][0] == gi:
                self.group_runs[-1][2] = k + 1
            else:
                self.group_runs.append([gi, k, k + 1])
        exp_avgs, exp_avg_sqs = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        masks = [s.get("mask") for s in states]
        self.table = adam_table(params, [p.grad for p in params], exp_avgs, exp_avg_sqs, masks)
        # What every step re-reads and compares: the table's tensors and the addresses it holds.
        self.entries = [PlannedTensor(p, p.shape, p.get_device(), pp, m, mp, v, vp, mask, kp)
                        for p, m, v, mask, (pp, _, mp, vp, kp, _) in zip(params, exp_avgs, exp_avg_sqs, masks,
                                                                           self.table.tolist())]
        self.constants = torch.empty((len(params), CONSTANT_COUNT), dtype=torch.float64)
        # numpy views of the tables' host memory: the cheapest writes from Python.
        self._grad_addresses = self.table.numpy()[:, GRAD_COLUMN]
        self._constant_rows = self.constants.numpy()

    def write_step(self, grad_addresses: list, steps: list, constants_of) -> None:
        """This step's grad addresses and constants into the tables; ``steps[k]``: entry k's steps so far,
        ``constants_of(group index, step)``: the 8 adam_step_constants."""
        self._grad_addresses[:] = grad_addresses
        rows = self._constant_rows
        for gi, first, end in self.group_runs:
            run = steps[first:end]
            if run.count(run[0]) == len(run):  # the usual case: the group's params share a step count
                rows[first:end] = constants_of(gi, run[0] + 1)
            else:
                for k, step in enumerate(run, first):
                    rows[k] = constants_of(gi, step + 1)


class StepWork(NamedTuple):
    """One step's gathered inputs: per batch its grads' addresses and steps so far; the reference params."""

    states: list  # every stepped param's state, to count the step in
    batches: list  # (DeviceBatch, grad addresses, steps)
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
        grad_addresses, steps = [], []
        # Unpacked in PlannedTensor's field order: tuple unpacking is the cheapest read of 300+ entries.
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
            grad_addresses.append(g.data_ptr())
            steps.append(state["step"])
            states.append(state)
        return batch, grad_addresses, steps


class _Stale(Exception):
    """A planned tensor changed since the plan was built."""
