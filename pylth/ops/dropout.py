"""Keyed dropout: the mask of each element is a function of (key, the row's index in the global batch,
the element's index in its row), csrc/dropout.h's counter hash, instead of a draw from a generator.

So the rows of a batch split over N processes (rank r holding global rows r, r + N, ...: ``row_offset``
r, ``row_stride`` N) get the masks they get in one process, a resumed run the masks of an
uninterrupted one, and the backward pass regenerates the mask from the key instead of storing it
(dropout is linear: its backward is the same op on the gradient). ``keyed_dropout`` is autograd-aware;
``keyed_dropout_reference`` computes the same bits in plain torch (the test oracle, and the fallback
where the extension has no kernel: CPU tensors other than float32, CUDA without pylth's CUDA build).

A kept element is ``x * scale`` with ``scale = 1 / (1 - p)``, a dropped one +0 (a select: a dropped
NaN gives 0, where ``x * mask`` would give NaN). ``threshold = round(p * 2^32)``: an element is kept
when its 32 hash bits are >= it, so the keep rate is 1 - p to within 2^-32.
"""
from __future__ import annotations

import torch

from pylth.ops.checks import check_tensor
from pylth.ops.dispatch import NATIVE, backend, launch, pack_table
from pylth.ops.native import warn_fallback

__all__ = ["dropout_mask_reference", "keyed_dropout", "keyed_dropout_reference", "stream_key"]

KERNEL = "dropout"
TABLE_WIDTH = 2  # csrc/dropout.h: rows input and output, columns (address, element count)
# csrc/dropout.h's DropoutDtype codes; the CPU kernel takes float32 only.
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}
MASK32, MASK64 = (1 << 32) - 1, (1 << 64) - 1
GOLDEN64, GOLDEN32 = 0x9E3779B97F4A7C15, 0x9E3779B9
MAX_PER_ROW = MASK32  # element indices travel in 32 bits


def _mix64(z: int) -> int:
    """splitmix64's finaliser on a Python int (csrc/dropout.h: mix64)."""
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
    return z ^ (z >> 31)


def stream_key(*parts: int) -> int:
    """A 64-bit dropout key from integers (the trainer's: seed, iteration, layer): distinct tuples give
    unrelated keys."""
    z = 0
    for part in parts:
        z = _mix64(((z ^ (int(part) & MASK64)) + GOLDEN64) & MASK64)
    return z


def row_key(key: int, global_row: int) -> int:
    """The 32-bit key of a global row (csrc/dropout.h: dropout_row_key)."""
    z = _mix64((key + (global_row + 1) * GOLDEN64) & MASK64)
    return (z ^ (z >> 32)) & MASK32


def threshold(p: float) -> int:
    """The 32-bit cut: an element is kept when its hash bits are >= it."""
    return min(int(round(p * 2.0**32)), MASK32)


def _mul32(a: torch.Tensor, b: int) -> torch.Tensor:
    """(a * b) mod 2^32 for int64 ``a`` in [0, 2^32) and a 32-bit constant ``b``, without int64 overflow:
    the constant in 16-bit halves."""
    low, high = b & 0xFFFF, b >> 16
    return (a * low + (((a * high) & 0xFFFF) << 16)) & MASK32


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def dropout_mask_reference(rows: int, per_row: int, p: float, key: int, row_offset: int = 0, row_stride: int = 1,
                           device=None) -> torch.Tensor:
    """The bool keep-mask [rows, per_row] that keyed dropout applies; plain torch."""
    keys = torch.tensor([row_key(key, row_offset + r * row_stride) for r in range(rows)], dtype=torch.int64,
                        device=device)
    elements = _mul32(torch.arange(per_row, dtype=torch.int64, device=device), GOLDEN32)
    return _lowbias32(keys[:, None] ^ elements[None, :]) >= threshold(p)


def keyed_dropout_reference(x: torch.Tensor, p: float, key: int, row_offset: int = 0, row_stride: int = 1):
    """What ``keyed_dropout`` computes, in plain torch (no autograd Function, no argument checks)."""
    rows = x.shape[0]
    keep = dropout_mask_reference(rows, x.numel() // max(rows, 1), p, key, row_offset, row_stride, x.device)
    return torch.where(keep.view(x.shape), x * (1.0 / (1.0 - p)), torch.zeros((), dtype=x.dtype, device=x.device))


def _check(x, p, key, row_offset, row_stride) -> None:
    check_tensor(x, "x", contiguous=False)
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
    if x.ndim < 1:
        raise ValueError("x must have a batch dimension (its rows), got a 0-d tensor")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"p must be a number in [0, 1), got {p!r}")
    if isinstance(key, bool) or not isinstance(key, int) or not 0 <= key <= MASK64:
        raise ValueError(f"key must be an int in [0, 2^64), got {key!r}")
    if isinstance(row_offset, bool) or not isinstance(row_offset, int) or row_offset < 0:
        raise ValueError(f"row_offset must be an int >= 0, got {row_offset!r}")
    if isinstance(row_stride, bool) or not isinstance(row_stride, int) or row_stride < 1:
        raise ValueError(f"row_stride must be an int >= 1, got {row_stride!r}")
    per_row = x[0].numel() if x.shape[0] else 0
    if per_row > MAX_PER_ROW:
        raise ValueError(f"x holds {per_row} elements per row; keyed dropout indexes them in 32 bits (< 2^32)")
    if row_offset + max(x.shape[0] - 1, 0) * row_stride >= 2**63:
        raise ValueError("row_offset + (rows - 1) * row_stride must be < 2^63")


def _apply(x: torch.Tensor, p: float, key: int, row_offset: int, row_stride: int) -> torch.Tensor:
    """The dropped-out copy of ``x`` (native kernel, or the reference where there is none)."""
    x = x.contiguous()  # element indices are those of the logical (contiguous) layout, whatever x's strides
    if x.numel() == 0:
        return x.clone()
    native = backend(KERNEL, x.device) == NATIVE
    if native and x.device.type == "cpu" and x.dtype != torch.float32:
        warn_fallback(KERNEL, f"no CPU kernel for {x.dtype}")
        native = False
    if native and x.dtype not in DTYPE_CODES:
        warn_fallback(KERNEL, f"no kernel for {x.dtype}")
        native = False
    if not native:
        return keyed_dropout_reference(x, p, key, row_offset, row_stride)
    out = torch.empty_like(x)
    table = pack_table([(x.data_ptr(), x.numel()), (out.data_ptr(), out.numel())], TABLE_WIDTH)
    launch(KERNEL, x.device, table, x.shape[0], x.numel() // x.shape[0], key, row_offset, row_stride, threshold(p),
           1.0 / (1.0 - p), DTYPE_CODES[x.dtype])
    return out


class _KeyedDropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, p, key, row_offset, row_stride):
        ctx.args = (p, key, row_offset, row_stride)  # all the backward needs: the mask comes back from the key
        return _apply(x, p, key, row_offset, row_stride)

    @staticmethod
    def backward(ctx, grad):
        # Linear in x: the gradient goes through the same mask and scale (and so does a double backward).
        return _KeyedDropout.apply(grad, *ctx.args), None, None, None, None


def keyed_dropout(x: torch.Tensor, p: float, key: int, *, row_offset: int = 0, row_stride: int = 1) -> torch.Tensor:
    """Dropout of ``x`` [rows, ...] with rate ``p`` whose mask comes from ``key`` (an int in [0, 2^64)) and
    each row's global index ``row_offset + row * row_stride``; differentiable, storing no mask. Always
    drops (a module decides whether it is training)."""
    _check(x, p, key, row_offset, row_stride)
    if p == 0:
        return x
    return _KeyedDropout.apply(x, float(p), key, row_offset, row_stride)
