"""Trainable sparse-weight Conv2d and Linear: autograd through the sparse kernels, with the compact kept
values as the weight.

``sparse_conv2d_trainable(x, values, weight, bias, stride, padding)`` is ``F.conv2d(x, W, bias, stride,
padding)`` for the masked dense weight W whose kept entries (the structure ``weight``, a SparseWeight
from compress_weight; its own values, if any, are not read) hold ``values``, differentiable in x,
values and bias. The backward costs what the kept weights cost (pylth.ops.sparse_grad): dL/dx is the
forward kernel on the transposed weight, dL/d values one dot product per kept weight, dL/d bias the sum
over dy, all three in one pass on the CPU. ``values`` is meant to be an nn.Parameter that any torch optimizer updates in place: each
call reads it as it is then (only the structure's plans are cached), and its gradient and optimizer
state hold one entry per kept weight. ``sparse_linear_trainable`` is the same for Linear. Once
differentiable (no double backward).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
from torch.autograd.function import once_differentiable

from pylth.ops.checks import check_tensor
from pylth.ops.sparse_conv import SparseWeight, _check_weight, sparse_conv2d, sparse_linear
from pylth.ops.sparse_grad import (_cpu_backward, sparse_conv2d_backward, sparse_linear_grad_input,
                                   sparse_linear_grad_weight)

__all__ = ["sparse_conv2d_trainable", "sparse_linear_trainable"]


def sparse_conv2d_trainable(x: torch.Tensor, values: torch.Tensor, weight: SparseWeight,
                            bias: torch.Tensor | None = None, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """``F.conv2d(x, W, bias, stride, padding)``, W the masked dense weight of structure ``weight`` with
    ``values`` (float32 [weight.nnz], entry order) at its kept entries; differentiable in x, values, bias."""
    _check_weight(weight, "weight", ndim=4, values=False)
    _check_values(values, weight)
    return _SparseOp.apply(x, values, bias, weight, _CONV, (stride, padding))


def sparse_linear_trainable(x: torch.Tensor, values: torch.Tensor, weight: SparseWeight,
                            bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, W, bias)``, W the masked dense weight of structure ``weight`` with ``values`` at its
    kept entries; differentiable in x, values, bias."""
    _check_weight(weight, "weight", ndim=2, values=False)
    _check_values(values, weight)
    return _SparseOp.apply(x, values, bias, weight, _LINEAR, ())


class _Kernels(NamedTuple):
    """One kind of layer: its forward and its backward, each taking the geometry's extra arguments after
    the weight; the backward returns (dL/dx, dL/d values, dL/d bias), None where not asked for."""

    forward: Callable
    backward: Callable  # (x, grad_out, weight, *geometry, input_grad, weight_grad, bias_grad)


def _conv_backward(x, grad_out, weight, stride: int, padding: int, input_grad: bool, weight_grad: bool,
                   bias_grad: bool) -> tuple:
    # The forward checked x, the weight and the geometry; grad_out comes from autograd with y's shape.
    if x.device.type == "cpu":
        return _cpu_backward(x, grad_out, weight, tuple(x.shape), stride, padding, input_grad, weight_grad, bias_grad)
    return sparse_conv2d_backward(x, grad_out, weight, stride, padding, input_grad, weight_grad, bias_grad)


def _linear_backward(x, grad_out, weight, input_grad: bool, weight_grad: bool, bias_grad: bool) -> tuple:
    return (sparse_linear_grad_input(grad_out, weight) if input_grad else None,
            sparse_linear_grad_weight(x, grad_out, weight) if weight_grad else None,
            grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if bias_grad else None)


_CONV = _Kernels(sparse_conv2d, _conv_backward)
_LINEAR = _Kernels(sparse_linear, _linear_backward)


class _SparseOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, values, bias, weight, kernels: _Kernels, geometry: tuple):
        out = kernels.forward(x, weight.with_values(values), bias, *geometry)  # checks x, bias and the geometry
        ctx.save_for_backward(x.contiguous(), values)
        ctx.weight, ctx.kernels, ctx.geometry = weight, kernels, geometry
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, values = ctx.saved_tensors
        weight, kernels, geometry = ctx.weight.with_values(values), ctx.kernels, ctx.geometry
        grad_out = grad_out.contiguous()
        needs_x, needs_values, needs_bias = ctx.needs_input_grad[:3]
        grad_x, grad_values, grad_bias = kernels.backward(x, grad_out, weight, *geometry, needs_x, needs_values,
                                                          needs_bias)
        return grad_x, grad_values, grad_bias, None, None, None


def _check_values(values, weight: SparseWeight) -> None:
    check_tensor(values, "values", dtypes=(torch.float32,), device=weight.device, shape=(weight.nnz,))
