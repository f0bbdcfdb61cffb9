"""Gradients of the sparse-weight conv and linear (pylth.ops.sparse_conv) at the cost of the kept weights.

For y = sparse_conv2d(x, weight, bias, stride, padding) and dL/dy = ``grad_out``:

- ``sparse_conv2d_grad_input`` is dL/dx: the forward kernel on the transposed weight. The inputs
  x[s*i + a, s*j + b] of one stride phase (a, b) receive from the kept (co, kh, kw) with
  kh = a + padding (mod s), kw likewise, each at the fixed shift dy[i + (a + padding - kh) / s]: a
  stride-1 conv of dy whose s*s*Ci output channels are the phases' planes, interleaved into dL/dx
  afterwards. A stride-2 backward thus runs as four quarter-size convs, not as one over a dy with zeros
  inserted; every kept weight lands in exactly one phase, so it costs what the forward costs.
- ``sparse_conv2d_grad_weight`` is dL/d values, at the kept entries only: per kept weight one dot
  product of dy[:, co] with the inputs its offset pairs with the outputs, over batch x output positions
  (csrc/sparse_conv_grad_tile.h; it needs the weight's structure, not its values).
- ``sparse_conv2d_backward`` is both: on the CPU one pass over the batch, a group of images at a time,
  builds the group's dy and x slabs once and runs the input gradient's tiles and the weight gradient's
  dot products on them while they are in cache (dy is read from memory once for both).
- ``sparse_linear_grad_input`` / ``sparse_linear_grad_weight``: the same for the linear.

The transposed weight's structure (its taps, and which forward entry each of its entries is) depends on
the mask and the input size only: it is built once per input size and kept with the weight (shared by
``weight.with_values``). The values are gathered from ``weight.values`` at every call, so a weight whose
values an optimizer updates in place is read as it is now. None of these functions is differentiable.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from pylth.ops.checks import check_tensor
from pylth.ops.dispatch import REFERENCE, backend
from pylth.ops.sparse_conv import (SparseWeight, _check_input, _check_int, _check_weight, _launch_cuda,
                                   _output_size, sparse_conv2d, sparse_linear)
from pylth.ops.sparse_cpu_plan import PLAN_CACHE_SIZE, conv_plan, launch_backward, launch_linear

__all__ = ["sparse_conv2d_backward", "sparse_conv2d_grad_input", "sparse_conv2d_grad_input_reference", "sparse_conv2d_grad_weight",
           "sparse_conv2d_grad_weight_reference", "sparse_linear_grad_input", "sparse_linear_grad_weight",
           "sparse_linear_grad_weight_reference"]


@torch.no_grad()
def sparse_conv2d_grad_input(grad_out: torch.Tensor, weight: SparseWeight, input_shape, stride: int = 1,
                             padding: int = 0) -> torch.Tensor:
    """dL/dx of ``sparse_conv2d(x, weight, bias, stride, padding)`` for x of ``input_shape``
    (N, Ci, H, W) and dL/dy = ``grad_out`` [N, Co, Ho, Wo] float32: what
    ``torch.nn.grad.conv2d_input`` computes with ``weight.to_dense()``."""
    _check_weight(weight, "weight", ndim=4)
    stride = _check_int(stride, "stride", minimum=1)
    padding = _check_int(padding, "padding", minimum=0)
    n, ci, h, w = _check_input_shape(input_shape, weight)
    grad_out = _check_grad_out(grad_out, weight, (n, weight.shape[0], *_output_size(h, w, weight, stride, padding,
                                                                                  "input_shape")))
    if grad_out.device.type == "cpu":
        return _cpu_backward(None, grad_out, weight, (n, ci, h, w), stride, padding, True, False)[0]
    transposed = _conv_transposed(weight, h, w, stride, padding)
    phases = sparse_conv2d(grad_out, transposed.weight.with_values(weight.values[transposed.order]), None, 1,
                           transposed.padding)
    return _from_phases(phases, (n, ci, h, w), stride)


@torch.no_grad()
def sparse_conv2d_grad_weight(x: torch.Tensor, grad_out: torch.Tensor, weight: SparseWeight, stride: int = 1,
                              padding: int = 0) -> torch.Tensor:
    """dL/d values (float32 [nnz], in entry order) of ``sparse_conv2d(x, weight, bias, stride, padding)``
    for dL/dy = ``grad_out``: torch.nn.grad.conv2d_weight's result at the kept entries. ``weight`` may be
    a structure without values."""
    _check_weight(weight, "weight", ndim=4, values=False)
    stride = _check_int(stride, "stride", minimum=1)
    padding = _check_int(padding, "padding", minimum=0)
    x, grad_out = _check_x_and_grad_out(x, grad_out, weight, stride, padding)
    if x.device.type == "cpu":
        return _cpu_backward(x, grad_out, weight, tuple(x.shape), stride, padding, False, True)[1]
    if weight.nnz == 0 or x.shape[0] == 0:
        return torch.zeros(weight.nnz, dtype=torch.float32, device=x.device)
    if backend("sparse_conv2d_grad_weight", x.device) == REFERENCE:
        return sparse_conv2d_grad_weight_reference(x, grad_out, weight, stride, padding)
    grad = torch.empty(weight.nnz, dtype=torch.float32, device=x.device)
    _launch_cuda(x, weight, None, grad_out, stride, padding, kernel="sparse_conv2d_grad_weight", values=grad)
    return grad


@torch.no_grad()
def sparse_conv2d_backward(x: torch.Tensor, grad_out: torch.Tensor, weight: SparseWeight, stride: int = 1,
                           padding: int = 0, input_grad: bool = True, weight_grad: bool = True,
                           bias_grad: bool = False) -> tuple:
    """(dL/dx, dL/d values, dL/d bias), each None unless asked for, of ``sparse_conv2d(x, weight, bias,
    stride, padding)`` for dL/dy = ``grad_out``: on the CPU in one pass over the batch (dy and x are read
    from memory once for all three), elsewhere as ``sparse_conv2d_grad_input``,
    ``sparse_conv2d_grad_weight`` and a sum over dy."""
    _check_weight(weight, "weight", ndim=4, values=input_grad)
    stride = _check_int(stride, "stride", minimum=1)
    padding = _check_int(padding, "padding", minimum=0)
    x, grad_out = _check_x_and_grad_out(x, grad_out, weight, stride, padding)
    if x.device.type == "cpu":
        return _cpu_backward(x, grad_out, weight, tuple(x.shape), stride, padding, input_grad, weight_grad,
                             bias_grad)
    return (sparse_conv2d_grad_input(grad_out, weight, tuple(x.shape), stride, padding) if input_grad else None,
            sparse_conv2d_grad_weight(x, grad_out, weight, stride, padding) if weight_grad else None,
            grad_out.sum((0, 2, 3)) if bias_grad else None)


def _cpu_backward(x, grad_out, weight: SparseWeight, input_shape: tuple, stride: int, padding: int,
                  input_grad: bool, weight_grad: bool, bias_grad: bool = False) -> tuple:
    """csrc/sparse_conv.h's one-pass backward (x may be None without the weight gradient)."""
    backend("sparse_conv2d_backward", grad_out.device)  # a missing or stale native module raises here
    n, ci, h, w = input_shape
    if n == 0:
        return (torch.zeros(input_shape) if input_grad else None, torch.zeros(weight.nnz) if weight_grad else None,
                torch.zeros(weight.shape[0]) if bias_grad else None)
    plan = conv_plan(weight, h, w, stride, padding)
    grad_values = torch.empty(weight.nnz) if weight_grad else None
    grad_bias = torch.empty(weight.shape[0]) if bias_grad else None
    phases = transposed = transposed_plan = None
    if input_grad:
        transposed = _conv_transposed(weight, h, w, stride, padding)
        transposed_plan = conv_plan(transposed.weight, *plan.out_shape, 1, transposed.padding)
        phases = torch.empty((n, transposed.weight.shape[0], *transposed_plan.out_shape))
    if input_grad or weight_grad or bias_grad:
        launch_backward(x if x is not None else grad_out, grad_out, weight, plan, grad_values, transposed,
                        transposed_plan, phases, grad_bias)
    return (_from_phases(phases, input_shape, stride) if input_grad else None), grad_values, grad_bias


def _from_phases(phases: torch.Tensor, input_shape: tuple, stride: int) -> torch.Tensor:
    """dL/dx from the transposed conv's output: per stride phase (a, b) the plane of x[:, :, a::s, b::s]."""
    n, ci, h, w = input_shape
    if stride == 1:
        return phases if phases.shape[2:] == (h, w) else phases[:, :, :h, :w].contiguous()
    # One strided copy per phase (a, b) into x[:, :, a::s, b::s] (a 6-D permute was 1.7x slower).
    grad_x = torch.empty((n, ci, h, w), dtype=torch.float32, device=phases.device)
    planes = phases.view(n, stride, stride, ci, *phases.shape[2:])
    for a in range(min(stride, h)):
        for b in range(min(stride, w)):
            grad_x[:, :, a::stride, b::stride] = planes[:, a, b, :, :-(-(h - a) // stride), :-(-(w - b) // stride)]
    return grad_x


@torch.no_grad()
def sparse_linear_grad_input(grad_out: torch.Tensor, weight: SparseWeight) -> torch.Tensor:
    """dL/dx [..., I] of ``sparse_linear(x, weight, bias)`` for dL/dy = ``grad_out`` [..., O]:
    ``grad_out @ weight.to_dense()``, as the sparse linear of the transposed weight."""
    _check_weight(weight, "weight", ndim=2)
    grad_out = _check_grad_out(grad_out, weight, None)
    transposed = _linear_transposed(weight)
    return sparse_linear(grad_out, transposed.weight.with_values(weight.values[transposed.order]))


@torch.no_grad()
def sparse_linear_grad_weight(x: torch.Tensor, grad_out: torch.Tensor, weight: SparseWeight) -> torch.Tensor:
    """dL/d values (float32 [nnz], in entry order) of ``sparse_linear(x, weight, bias)`` for dL/dy =
    ``grad_out`` [..., O]: ``grad_out^T x`` at the kept entries. ``weight`` may be a structure."""
    _check_weight(weight, "weight", ndim=2, values=False)
    o, i = weight.shape
    x = _check_input(x, "x", weight, ndim=None, channels=i, channel_dim=-1)
    rows = x.reshape(-1, i)
    grad_rows = _check_grad_out(grad_out, weight, (*x.shape[:-1], o)).reshape(-1, o)
    b = rows.shape[0]
    if weight.nnz == 0 or b == 0:
        return torch.zeros(weight.nnz, dtype=torch.float32, device=x.device)
    if backend("sparse_linear_grad_weight", x.device) == REFERENCE:
        return sparse_linear_grad_weight_reference(rows, grad_rows, weight)
    grad = torch.empty(weight.nnz, dtype=torch.float32, device=x.device)
    if x.device.type == "cpu":
        launch_linear("sparse_linear_grad_weight", rows, weight, grad, None, grad_rows)
    else:  # the conv's kernel on the transposed batch, a 1 x B image of I channels
        xt = rows.t().reshape(1, i, 1, b).contiguous()
        grad_t = grad_rows.t().reshape(1, o, 1, b).contiguous()
        _launch_cuda(xt, weight, None, grad_t, 1, 0, kernel="sparse_conv2d_grad_weight", values=grad)
    return grad


def sparse_conv2d_grad_input_reference(grad_out, weight: SparseWeight, input_shape, stride: int = 1,
                                       padding: int = 0) -> torch.Tensor:
    """Pure torch (the masked dense weight); no argument checks."""
    return torch.nn.grad.conv2d_input(tuple(input_shape), weight.to_dense(), grad_out, stride, padding)


def sparse_conv2d_grad_weight_reference(x, grad_out, weight: SparseWeight, stride: int = 1,
                                        padding: int = 0) -> torch.Tensor:
    """Pure torch (the dense weight gradient, read at the kept entries): the fallback for CUDA tensors
    when pylth was built without CUDA. No argument checks."""
    return _at_kept(torch.nn.grad.conv2d_weight(x, weight.shape, grad_out, stride, padding), weight)


def sparse_linear_grad_weight_reference(x, grad_out, weight: SparseWeight) -> torch.Tensor:
    """Pure torch (grad_out^T x at the kept entries); no argument checks."""
    return _at_kept(grad_out.reshape(-1, weight.shape[0]).t() @ x.reshape(-1, weight.shape[1]), weight)


def _at_kept(dense: torch.Tensor, weight: SparseWeight) -> torch.Tensor:
    return dense.reshape(weight.shape[0], -1)[weight.channels(), weight.taps.long()].contiguous()


class _Transposed(NamedTuple):
    """The input gradient's weight: a structure (no values) whose entry j is the forward weight's entry
    ``order[j]`` (``order32``: the same as int32, for the native backward), and the padding of its
    stride-1 conv over dy."""

    weight: SparseWeight
    order: torch.Tensor
    padding: int
    order32: torch.Tensor


def _phase_shifts(size: int, stride: int, padding: int, device) -> tuple:
    """Per kernel tap k of one dimension: the stride phase a = (k - padding) mod stride of the inputs it
    reaches, and the shift d = (a + padding - k) / stride at which input s*i + a reads dy[i + d]."""
    k = torch.arange(size, device=device)
    phase = (k - padding) % stride
    return phase, (phase + padding - k) // stride


def _conv_transposed(weight: SparseWeight, h: int, w: int, stride: int, padding: int) -> _Transposed:
    """The input gradient's weight for inputs of h x w: [s*s*Ci, Co, KH', KW'], row (a*s + b)*Ci + ci
    holding the kept (co, kh, kw) of phase (a, b), tap (co, d_h + P, d_w + P) for a stride-1 conv of
    padding P over dy. P is the least padding whose output covers every phase plane (Hh x Wh, Hh =
    ceil(H / s)) and reads nothing but dy and zeros."""
    key = (h, w, stride, padding)
    if key in weight._transposed:
        return weight._transposed[key]
    co, ci, kh, kw = weight.shape
    ho, wo = _output_size(h, w, weight, stride, padding, "x")
    phase_h, shift_h = _phase_shifts(kh, stride, padding, weight.device)
    phase_w, shift_w = _phase_shifts(kw, stride, padding, weight.device)
    hh, wh = -(-h // stride), -(-w // stride)
    low_h, high_h, low_w, high_w = (int(t) for t in (shift_h.min(), shift_h.max(), shift_w.min(), shift_w.max()))
    pad = max(0, -low_h, -low_w, hh - ho + high_h, wh - wo + high_w)
    kh_t, kw_t = pad + high_h + 1, pad + high_w + 1
    taps = weight.taps.long()
    r, q = taps // kw % kh, taps % kw
    rows = (phase_h[r] * stride + phase_w[q]) * ci + taps // (kh * kw)
    taps_t = (weight.channels() * kh_t + shift_h[r] + pad) * kw_t + shift_w[q] + pad
    return _cached(weight, key, _regrouped(rows, taps_t, (stride * stride * ci, co, kh_t, kw_t), pad))


def _linear_transposed(weight: SparseWeight) -> _Transposed:
    """W^T [I, O]: per input feature, the output features that keep it."""
    if "linear" in weight._transposed:
        return weight._transposed["linear"]
    o, i = weight.shape
    return _cached(weight, "linear", _regrouped(weight.taps.long(), weight.channels(), (i, o), 0))


def _regrouped(rows: torch.Tensor, taps: torch.Tensor, shape: tuple, padding: int) -> _Transposed:
    """The structure of ``shape`` whose entries are the forward's, entry k in row ``rows[k]`` at tap
    ``taps[k]`` (sorted by row, then tap, as compress_weight sorts)."""
    order = torch.argsort(rows * math.prod(shape[1:]) + taps)
    row_ptr = torch.zeros(shape[0] + 1, dtype=torch.int64, device=rows.device)
    row_ptr[1:] = torch.bincount(rows, minlength=shape[0]).cumsum(0)
    return _Transposed(SparseWeight(shape, row_ptr, taps[order].to(torch.int32).contiguous(), None), order, padding,
                       order.to(torch.int32))


def _cached(weight: SparseWeight, key, transposed: _Transposed) -> _Transposed:
    if len(weight._transposed) >= PLAN_CACHE_SIZE:
        weight._transposed.pop(next(iter(weight._transposed)))
    weight._transposed[key] = transposed
    return transposed


def _check_input_shape(input_shape, weight: SparseWeight) -> tuple:
    if (not isinstance(input_shape, (tuple, list, torch.Size)) or len(input_shape) != 4
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in input_shape)):
        raise ValueError(f"input_shape must be 4 non-negative ints (N, Ci, H, W), got {input_shape!r}")
    if input_shape[1] != weight.shape[1]:
        raise ValueError(f"input_shape has {input_shape[1]} channels but weight has {weight.shape[1]} input channels")
    return tuple(input_shape)


def _check_x_and_grad_out(x, grad_out, weight: SparseWeight, stride: int, padding: int) -> tuple:
    """x and dL/dy of the conv, contiguous, their shapes checked against each other."""
    x = _check_input(x, "x", weight, ndim=4, channels=weight.shape[1], channel_dim=1)
    n, _, h, w = x.shape
    shape = (n, weight.shape[0], *_output_size(h, w, weight, stride, padding, "x"))
    return x, _check_grad_out(grad_out, weight, shape)


def _check_grad_out(grad_out, weight: SparseWeight, shape) -> torch.Tensor:
    """grad_out as a contiguous float32 tensor on weight's device, of ``shape`` (None: [..., O])."""
    check_tensor(grad_out, "grad_out", dtypes=(torch.float32,), device=weight.device, contiguous=False)
    if shape is None:
        if grad_out.ndim == 0 or grad_out.shape[-1] != weight.shape[0]:
            raise ValueError(f"grad_out must have shape [..., {weight.shape[0]}], got {tuple(grad_out.shape)}")
    elif tuple(grad_out.shape) != tuple(shape):
        raise ValueError(f"grad_out has shape {tuple(grad_out.shape)} but the output has shape {tuple(shape)}")
    return grad_out.contiguous()
