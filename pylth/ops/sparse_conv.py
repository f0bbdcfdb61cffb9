"""Sparse-weight Conv2d and Linear forward in fp32: compress a masked weight once, call it many times.

``compress_weight(weight, mask)`` keeps, per output channel, the entries where ``mask`` is True (CSR:
``row_ptr``, ``taps`` = flat index into the channel's [Ci, KH, KW] block, ``values``).
``sparse_conv2d(x, w, bias, stride, padding)`` and ``sparse_linear(x, w, bias)`` then compute what
``F.conv2d`` / ``F.linear`` compute with the masked dense weight, at the cost of the kept entries:
csrc/sparse_conv.cpp and sparse_linear.cpp on the CPU (the kernels of csrc/sparse_conv_builds.cpp: AVX2/FMA
when the CPU has it; OpenMP), csrc/sparse_conv.cu on CUDA.
They are forward-only (no autograd; pylth.ops.sparse_train differentiates them, with the gradients of
pylth.ops.sparse_grad). Activations stay dense NCHW; a non-contiguous ``x`` is made contiguous first.
On the CPU the kernel reads the input in a layout chosen per input size (pylth.ops.sparse_cpu_plan,
csrc/sparse_conv.h); that plan is computed on the first call for each size and kept with the weight.

The kernels win where few weights are kept; at high density the dense op can be faster, so callers
choose per layer (bench/test_bench_sparse.py measures where the crossover lies).
"""
from __future__ import annotations

import math
import torch
import torch.nn.functional as F

from pylth.ops.checks import INT32_MAX, check_tensor
from pylth.ops.dispatch import REFERENCE, backend, launch, pack_table
from pylth.ops.sparse_cpu_plan import conv_plan, launch_forward, launch_linear

__all__ = ["SparseWeight", "compress_weight", "sparse_conv2d", "sparse_conv2d_reference", "sparse_linear",
           "sparse_linear_reference"]

CUDA_GRID_LIMIT = 65535  # images and output channels each index one grid dimension


class SparseWeight:
    """A conv weight [Co, Ci, KH, KW] or linear weight [O, I] reduced to its kept entries, per output
    channel: ``values[row_ptr[c]:row_ptr[c+1]]`` at ``taps`` (``ci * KH * KW + kh * KW + kw``, for a
    linear weight the input index; increasing). The taps describe the mask completely, so transposed
    forms (for a backward pass) derive from them. Build it with ``compress_weight``.

    ``values`` may be None: the weight is then a structure only (the trainable path of
    pylth.ops.sparse_train keeps the values elsewhere, as a Parameter), and ``with_values`` gives a
    weight with values that shares its cached plans, which depend on the structure alone."""

    __slots__ = ("shape", "row_ptr", "taps", "values", "_plans", "_transposed")

    def __init__(self, shape: tuple, row_ptr: torch.Tensor, taps: torch.Tensor, values: torch.Tensor | None):
        self.shape = tuple(int(s) for s in shape)
        self.row_ptr, self.taps, self.values = row_ptr, taps, values
        self._plans: dict = {}  # (h, w, stride, padding) -> sparse_cpu_plan.CpuPlan, CPU only
        self._transposed: dict = {}  # (h, w, stride, padding) -> the input gradient's weight (ops.sparse_grad)

    @property
    def device(self) -> torch.device:
        return self.taps.device

    @property
    def nnz(self) -> int:
        return self.taps.numel()

    @property
    def density(self) -> float:
        """Kept entries over all entries of the dense weight."""
        return self.nnz / math.prod(self.shape)

    @property
    def kernel_size(self) -> tuple:
        return self.shape[2:] if len(self.shape) == 4 else (1, 1)

    def with_values(self, values: torch.Tensor | None) -> "SparseWeight":
        """The same structure with ``values`` (one per kept entry, in entry order; None: a structure
        only), sharing this weight's cached plans."""
        weight = SparseWeight(self.shape, self.row_ptr, self.taps, values)
        weight._plans, weight._transposed = self._plans, self._transposed
        return weight

    def channels(self) -> torch.Tensor:
        """The output channel (row) of each kept entry, int64 in entry order."""
        return torch.repeat_interleave(torch.arange(self.shape[0], device=self.device), self.row_ptr.diff())

    def to(self, device) -> "SparseWeight":
        values = None if self.values is None else self.values.to(device)
        return SparseWeight(self.shape, self.row_ptr.to(device), self.taps.to(device), values)

    def to_dense(self) -> torch.Tensor:
        """The masked dense weight (zeros where nothing is kept), in the original shape."""
        _check_values(self, "weight")
        dense = torch.zeros((self.shape[0], math.prod(self.shape[1:])), dtype=torch.float32, device=self.device)
        dense[self.channels(), self.taps.long()] = self.values
        return dense.reshape(self.shape)


def compress_weight(weight: torch.Tensor, mask: torch.Tensor | None = None) -> SparseWeight:
    """The kept entries of a float32 conv weight [Co, Ci, KH, KW] or linear weight [O, I]: where the
    bool ``mask`` is True (a kept weight may be 0), or where ``weight != 0`` without a mask."""
    check_tensor(weight, "weight", dtypes=(torch.float32,), contiguous=False)
    if weight.ndim not in (2, 4) or weight.numel() == 0:
        raise ValueError(f"weight must be a non-empty conv [Co, Ci, KH, KW] or linear [O, I] weight, "
                         f"got shape {tuple(weight.shape)}")
    if mask is None:
        mask = weight != 0
    else:
        check_tensor(mask, "mask", dtypes=(torch.bool,), device=weight.device, shape=weight.shape, contiguous=False)
    co = weight.shape[0]
    per_channel = weight.numel() // co
    if per_channel > INT32_MAX:
        raise ValueError(f"weight has {per_channel} entries per output channel; at most {INT32_MAX} are supported")
    keep = mask.reshape(co, per_channel)
    channels, taps = keep.nonzero(as_tuple=True)  # row-major: by channel, then increasing tap
    row_ptr = torch.zeros(co + 1, dtype=torch.int64, device=weight.device)
    row_ptr[1:] = keep.sum(dim=1).cumsum(0)
    values = weight.detach().reshape(co, per_channel)[channels, taps].contiguous()
    return SparseWeight(weight.shape, row_ptr, taps.to(torch.int32).contiguous(), values)


def sparse_conv2d(x: torch.Tensor, weight: SparseWeight, bias: torch.Tensor | None = None, stride: int = 1,
                  padding: int = 0) -> torch.Tensor:
    """``F.conv2d(x, weight.to_dense(), bias, stride, padding)`` at the cost of the kept weights:
    x [N, Ci, H, W] float32, square ``stride`` >= 1 and ``padding`` >= 0 (no dilation, no groups)."""
    _check_weight(weight, "weight", ndim=4)
    co, ci = weight.shape[:2]
    stride = _check_int(stride, "stride", minimum=1)
    padding = _check_int(padding, "padding", minimum=0)
    x = _check_input(x, "x", weight, ndim=4, channels=ci, channel_dim=1)
    _check_bias(bias, weight)
    n, _, h, w = x.shape
    ho, wo = _output_size(h, w, weight, stride, padding, "x")
    if backend("sparse_conv2d", x.device) == REFERENCE:
        return sparse_conv2d_reference(x, weight, bias, stride, padding)
    out = torch.empty((n, co, ho, wo), dtype=torch.float32, device=x.device)
    if x.device.type == "cuda":
        _launch_cuda(x, weight, bias, out, stride, padding)
    elif n > 0:
        launch_forward(x, weight, conv_plan(weight, h, w, stride, padding), weight.values, bias, out)
    return out


def sparse_linear(x: torch.Tensor, weight: SparseWeight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight.to_dense(), bias)`` at the cost of the kept weights: x [..., I] float32.

    It runs as a 1x1 convolution of the transposed batch: the vector dimension is the batch."""
    _check_weight(weight, "weight", ndim=2)
    o, i = weight.shape
    x = _check_input(x, "x", weight, ndim=None, channels=i, channel_dim=-1)
    _check_bias(bias, weight)
    lead = x.shape[:-1]
    rows = x.reshape(-1, i)
    b = rows.shape[0]
    if backend("sparse_linear", x.device) == REFERENCE:
        return sparse_linear_reference(x, weight, bias)
    if x.device.type == "cpu":
        out = torch.empty((b, o), dtype=torch.float32)
        if b > 0:
            launch_linear("sparse_linear", rows, weight, weight.values, bias, out)
        return out.reshape(*lead, o)
    # CUDA: the conv kernel on the transposed batch, a 1 x B image of I channels.
    xt = rows.t().reshape(1, i, 1, b).contiguous()
    out = torch.empty((1, o, 1, b), dtype=torch.float32, device=x.device)
    if b > 0:
        _launch_cuda(xt, weight, bias, out, 1, 0)
    return out[0, :, 0, :].t().contiguous().reshape(*lead, o)


def sparse_conv2d_reference(x, weight: SparseWeight, bias=None, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """Pure torch (the masked dense weight and F.conv2d): the fallback for CUDA tensors when pylth was
    built without CUDA. No argument checks."""
    return F.conv2d(x, weight.to_dense(), bias, stride, padding)


def sparse_linear_reference(x, weight: SparseWeight, bias=None) -> torch.Tensor:
    """Pure torch (the masked dense weight and F.linear); no argument checks."""
    return F.linear(x, weight.to_dense(), bias)


def _launch_cuda(x, weight: SparseWeight, bias, out, stride: int, pad: int, kernel: str = "sparse_conv2d",
                 values=None) -> None:
    """``kernel`` (the forward, or the weight gradient with dy as ``out`` and the gradient as ``values``;
    ``values`` defaults to the weight's) on CUDA tensors: the kernels read the taps and pad implicitly."""
    n, ci, h, w = x.shape
    co = weight.shape[0]
    kh, kw = weight.kernel_size
    if n > CUDA_GRID_LIMIT or co > CUDA_GRID_LIMIT or ci * h * w > INT32_MAX:
        raise ValueError(f"x of shape {tuple(x.shape)} with {co} output channels exceeds the CUDA kernel's limits "
                         f"(at most {CUDA_GRID_LIMIT} images and output channels, {INT32_MAX} values per image)")
    values = weight.values if values is None else values
    table = pack_table([
        (x.data_ptr(), x.numel()),
        (out.data_ptr(), out.numel()),
        (weight.row_ptr.data_ptr(), weight.row_ptr.numel()),
        (weight.taps.data_ptr(), weight.taps.numel()),
        (values.data_ptr(), values.numel()),
        (0, 0) if bias is None else (bias.data_ptr(), bias.numel()),
    ], 2)
    launch(kernel, x.device, table, n, ci, h, w, co, out.shape[2], out.shape[3], kh, kw, stride, pad)


def _output_size(h: int, w: int, weight: SparseWeight, stride: int, padding: int, name: str) -> tuple:
    """(Ho, Wo) of the conv over an input of h x w named ``name``; ValueError if it is smaller than the kernel."""
    kh, kw = weight.kernel_size
    if h + 2 * padding < kh or w + 2 * padding < kw:
        raise ValueError(f"{name} of spatial size {h}x{w} with padding {padding} is smaller than the {kh}x{kw} kernel")
    return (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1


def _check_weight(weight, name: str, ndim: int, values: bool = True) -> None:
    """A SparseWeight of ``ndim`` dimensions, holding values unless ``values`` is False (a structure)."""
    if not isinstance(weight, SparseWeight):
        raise TypeError(f"{name} must be a SparseWeight (from compress_weight), got {type(weight).__name__}")
    if len(weight.shape) != ndim:
        kind = "conv [Co, Ci, KH, KW]" if ndim == 4 else "linear [O, I]"
        raise ValueError(f"{name} must be a compressed {kind} weight, got shape {weight.shape}")
    if values:
        _check_values(weight, name)


def _check_values(weight: SparseWeight, name: str) -> None:
    if weight.values is None:
        raise ValueError(f"{name} is a structure without values: give it values with {name}.with_values(values)")


def _check_int(value, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_input(x, name: str, weight: SparseWeight, ndim, channels: int, channel_dim: int) -> torch.Tensor:
    check_tensor(x, name, dtypes=(torch.float32,), contiguous=False)
    if x.device != weight.device:
        raise ValueError(f"{name} is on {x.device} but weight is on {weight.device}")
    if (ndim is not None and x.ndim != ndim) or x.ndim == 0 or x.shape[channel_dim] != channels:
        want = f"[N, {channels}, H, W]" if ndim == 4 else f"[..., {channels}]"
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if x.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"{name} requires grad, but these sparse kernels are forward-only: call them under "
                         f"torch.no_grad(), or train through pylth.ops.sparse_train")
    return x.contiguous()


def _check_bias(bias, weight: SparseWeight) -> None:
    if bias is None:
        return
    check_tensor(bias, "bias", dtypes=(torch.float32,), device=weight.device, shape=(weight.shape[0],))
    if bias.requires_grad and torch.is_grad_enabled():
        raise ValueError("bias requires grad, but these sparse kernels are forward-only: call them under "
                         "torch.no_grad(), or train through pylth.ops.sparse_train")
