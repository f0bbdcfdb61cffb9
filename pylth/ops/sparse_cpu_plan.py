"""The CPU sparse kernels' plans (csrc/sparse_conv.h): how one input size is read, where each kept
weight's input lies, and the tables that launch the forward and the one-pass backward.

A plan depends on the weight's structure (its kept positions) and the input size only, so it is built
on the first call for each size and kept with the structure (``SparseWeight._plans``); the values are
read at every call. The vector dimension runs along output rows: a 1x1 conv of stride 1 without
padding reads its input planes in place (the plane as one row); every other conv reads each plane from
a slab, the plane inside zero borders with its rows split into stride column phases, so that each kept
weight's inputs for an output row are contiguous. At the sparsities worth training sparse the slabs'
cost (one copy of the input) outweighs the lanes a narrow row leaves empty: every width uses rows.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple

import torch

from pylth.ops.checks import INT32_MAX
from pylth.ops.dispatch import launch, pack_table

# Floats of slack past the slabs and in a mask row (csrc/sparse_conv.h kSlabSlack), and per kept weight
# in the weight gradient's accumulators (kGradAccFloats): enough for the widest vectors (16 floats).
SLACK = 16
GRAD_ACC_FLOATS = 16
# The kernels take a group of images at a time into their workspace: about this many bytes of slabs
# (at least one image), so that they stay in the L2 cache from being written to being read.
WORKSPACE_BYTES = 1 << 19
_workspace_bytes = WORKSPACE_BYTES  # the budget in force (workspace_budget)
PLAN_CACHE_SIZE = 8  # input geometries whose plans a weight keeps


class CpuPlan(NamedTuple):
    """One input size's plan: the plan row's fields but the image count and group (fields[0] and
    fields[-1], set per call)."""

    fields: list
    offsets: torch.Tensor  # int32 [nnz], entry order
    image_floats: int  # one image's slabs
    direct: bool
    out_shape: tuple  # (Ho, Wo)
    rows: dict  # (n, group) -> the plan row, built once: a training step calls with the same sizes

    def slab_floats(self, group: int) -> int:
        return 0 if self.direct else group * self.image_floats + SLACK

    def row(self, n: int, group: int) -> torch.Tensor:
        row = self.rows.get((n, group))
        if row is None:
            if len(self.rows) >= PLAN_CACHE_SIZE:
                self.rows.pop(next(iter(self.rows)))
            row = self.rows[n, group] = torch.tensor([n, *self.fields[1:-1], group], dtype=torch.int64)
        return row


def group_size(n: int, image_floats: int) -> int:
    """Images whose slabs (``image_floats`` each; 0: none, read in place) the workspace holds at a time."""
    return max(n, 1) if image_floats == 0 else max(1, min(n, _workspace_bytes // 4 // image_floats))


@contextlib.contextmanager
def workspace_budget(nbytes: int) -> Iterator[None]:
    """The kernels' workspace budget is about ``nbytes`` inside the block (1: one image per group, which
    moves every group's slabs and accumulators on: what the tests use to check the group walk)."""
    global _workspace_bytes
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 1:
        raise ValueError(f"workspace_budget: nbytes must be a positive int, got {nbytes!r}")
    before, _workspace_bytes = _workspace_bytes, nbytes
    try:
        yield
    finally:
        _workspace_bytes = before


def conv_plan(weight, h: int, w: int, stride: int, pad: int) -> CpuPlan:
    """The plan of ``weight`` (a SparseWeight [Co, Ci, KH, KW]) over inputs of h x w, cached with it."""
    key = (h, w, stride, pad)
    plan = weight._plans.get(key)
    if plan is None:
        plan = _conv_plan(weight, h, w, stride, pad)
        if len(weight._plans) >= PLAN_CACHE_SIZE:
            weight._plans.pop(next(iter(weight._plans)))
        weight._plans[key] = plan
    return plan


def _conv_plan(weight, h: int, w: int, stride: int, pad: int) -> CpuPlan:
    co, ci, kh_size, kw_size = weight.shape
    ho, wo = (h + 2 * pad - kh_size) // stride + 1, (w + 2 * pad - kw_size) // stride + 1
    taps = weight.taps.long()
    c, kh, kw = taps // (kh_size * kw_size), taps // kw_size % kh_size, taps % kw_size
    if kh_size == kw_size == 1 and stride == 1 and pad == 0 and h * w >= SLACK:
        direct, plane_floats, pitch = True, h * w, w
        rows = (1, h * w, 0, 0)  # unit rows, row length, input and output row strides
        within = torch.zeros_like(taps)
    else:  # column phase kw % stride, row stride * oy + kh, column ox + kw // stride
        direct, pitch = False, -(-(w + 2 * pad) // stride)
        plane_floats = stride * (h + 2 * pad) * pitch
        rows = (ho, wo, stride * pitch, wo)
        within = ((kw % stride) * (h + 2 * pad) + kh) * pitch + kw // stride
    if ci * plane_floats > INT32_MAX:
        raise ValueError(f"x is too large: one image's {ci} channels of {h}x{w} exceed the kernel's 32-bit input "
                         f"offsets")
    layout = (pad, pad, stride, h + 2 * pad, pitch)  # pads, column phases, slab rows and pitch
    fields = [0, ci, h, w, co, *rows, ho * wo, co * ho * wo, int(direct), plane_floats, *layout, 0]
    return CpuPlan(fields, (c * plane_floats + within).to(torch.int32), ci * plane_floats, direct, (ho, wo), {})


def linear_plan(weight, batch: int):
    """(pitch, int32 offsets) of the linear over ``batch`` rows: x^T's rows are pitch floats apart."""
    pitch = -(-batch // SLACK) * SLACK
    key = ("linear", pitch)
    offsets = weight._plans.get(key)
    if offsets is None:
        if weight.shape[1] * pitch > INT32_MAX:
            raise ValueError(f"x is too large: {weight.shape[1]} features of {batch} rows exceed the kernel's 32-bit "
                             f"input offsets")
        offsets = (weight.taps.long() * pitch).to(torch.int32)
        if len(weight._plans) >= PLAN_CACHE_SIZE:
            weight._plans.pop(next(iter(weight._plans)))
        weight._plans[key] = offsets
    return pitch, offsets


def _row(t) -> tuple:
    return (0, 0) if t is None else (t.data_ptr(), t.numel())


def launch_forward(x, weight, plan: CpuPlan, values, bias, out) -> None:
    """csrc/sparse_conv.h's forward: ``out`` = the conv of ``x`` (contiguous) with ``weight``'s structure
    holding ``values``."""
    n = x.shape[0]
    group = group_size(n, 0 if plan.direct else plan.image_floats)
    workspace = None if plan.direct else torch.empty(plan.slab_floats(group))
    plan_row = plan.row(n, group)
    table = pack_table([_row(x), _row(workspace), _row(out), _row(weight.row_ptr), _row(plan.offsets), _row(values),
                        _row(bias), _row(plan_row)], 2)
    launch("sparse_conv2d", x.device, table)


def launch_backward(x, grad_out, weight, plan: CpuPlan, grad_values, transposed, transposed_plan: CpuPlan | None,
                    grad_input, grad_bias) -> None:
    """csrc/sparse_conv.h's one-pass backward: dL/d values into ``grad_values``, the conv of dy with the
    ``transposed`` weight (pylth.ops.sparse_grad; ``transposed_plan``) into ``grad_input`` and dL/d bias
    into ``grad_bias`` (each None when not wanted). ``x`` is only read for the weight gradient."""
    n = grad_out.shape[0]
    wants_weight, wants_input = grad_values is not None, grad_input is not None
    # Stride 1 reads x in place (csrc/sparse_conv.cpp: fused), without x's slabs.
    fused = (wants_weight and wants_input and transposed.weight.shape[0] == weight.shape[1]
             and transposed_plan.out_shape == tuple(x.shape[2:]))
    image = plan.image_floats if wants_weight and not fused and not plan.direct else 0
    image += transposed_plan.image_floats if wants_input and not transposed_plan.direct else 0
    group = group_size(n, image)
    floats = plan.slab_floats(group) if wants_weight and not fused else 0
    keep = [plan.row(n, group)]  # tensors the table points into, alive until the launch returns
    t_rows = [(0, 0)] * 4
    if wants_input:
        keep.append(transposed_plan.row(n, group))
        floats += transposed_plan.slab_floats(group) + weight.nnz
        t_rows = [_row(transposed.weight.row_ptr), _row(transposed_plan.offsets), _row(transposed.order32),
                  _row(keep[1])]
    if wants_weight:
        floats += GRAD_ACC_FLOATS * (weight.nnz + 1)
    if grad_bias is not None:
        floats += n * weight.shape[0]
    workspace = torch.empty(floats) if floats else None
    table = pack_table([_row(x if wants_weight else None), _row(grad_out), _row(workspace), _row(grad_values),
                        _row(weight.row_ptr), _row(plan.offsets), _row(keep[0]), _row(grad_input),
                        _row(weight.values if wants_input else None), *t_rows, _row(grad_bias)], 2)
    launch("sparse_conv2d_backward", grad_out.device, table)


def launch_linear(kernel: str, rows, weight, values, bias, out) -> None:
    """``kernel`` (the linear forward, or its weight gradient with dy as ``out`` and the gradient as
    ``values``) on x ``rows`` [B, I]."""
    b, i = rows.shape
    pitch, offsets = linear_plan(weight, b)
    floats = (i + weight.shape[0]) * pitch + SLACK
    if kernel.endswith("grad_weight"):
        floats += GRAD_ACC_FLOATS * (offsets.numel() + 1)
    workspace = torch.empty(floats)
    table = pack_table([_row(rows), _row(workspace), _row(out), _row(weight.row_ptr), _row(offsets), _row(values),
                        _row(bias)], 2)
    launch(kernel, rows.device, table, b, i, weight.shape[0])
